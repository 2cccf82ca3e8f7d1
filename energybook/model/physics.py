"""A physical, batch-aware energy model shared across models: calibrate once per GPU and engine, predict any model.

The architecture enters only through exact counts (the same conventions as :mod:`energybook.model.complexity`,
split here into the parts that run on different hardware paths). Every forward pass ``k`` of a workload (a prefill
chunk or a decode step of one wave) has

* matmul FLOPs ``F_mm`` (projections, FFN, LM head), attention FLOPs ``F_att`` (QK^T and AV);
* weight bytes ``W`` (every weight read once per pass), KV-cache bytes ``K`` (reads of the live context and the
  new token's write; the engine's flash varlen decode reads exactly the live keys, not the 256-token bucket), and
  other per-request bytes ``O`` (logits written, embedding rows gathered);
* elementwise bytes ``A``: the traffic of the unfused elementwise kernels that transformers' eager modules run
  between the products (:func:`elementwise_bytes_per_token`: RMSNorm's float32 round trip, the rotary embedding,
  the GQA key/value ``repeat_interleave`` of the prompt, the residual adds, the FFN activation) and the argmax's
  read of the logits;
* attention blocks ``N_blk``: the thread blocks of the flash varlen decode kernel, one per request, key/value head
  and layer (the query heads of a group share their key/value head's block);
* attention pairs ``N_pair``: the (query, key) pairs of every query head and layer, counted causally in a prompt
  (``n (n + 1) / 2`` per head and layer: flash attention skips the tiles above the diagonal) and as the live keys
  in a decode step (:func:`causal_pairs`);
* graph captures ``N_cap``: 1 on the first decode step of each context bucket of a wave (the engine's
  :class:`~energybook.model.batch.EngineProfile` gives the bucket edges: 256 tokens each for the ``hf`` engine),
  where the engine runs the step eagerly and captures the bucket's CUDA graph, else 0.

Its time (seconds) is

    busy_k = comb(F_mm / R_mm, (W + O) / B_w) + comb(F_att / R_att + N_pair / R_pair, K / B_kv) + A / B_el
             + N_blk * t_blk
    t_k    = busy_k + t_pass + N_cap * t_cap  [overhead "add"]   or   comb(busy_k, t_pass + N_cap * t_cap)  ["overlap"]

with ``R_mm``, ``R_att`` effective throughputs (FLOP/s), ``R_pair`` the rate of the attention work done once per
(query, key) pair and head whatever the head width (pairs/s: the online softmax's exponential, on the SFUs, and its
max, scale and sum; a rough estimate of an H100's exponential rate, 132 SMs x an assumed 16 per clock, is
3.9e12/s), ``B_w``, ``B_kv``, ``B_el``
effective bandwidths (bytes/s),
``t_blk`` the fixed time of one decode attention block (seconds: its prologue and epilogue, loading the query and
writing the normalised output, and its partly filled last key tile, spread over the SMs),
``t_pass`` a fixed cost of every forward pass (seconds: the graph launch or eager dispatch, the argmax and token
copy, the many small kernels of an unfused engine whose size the counts above do not follow), ``t_cap`` the fixed
cost of one graph capture with its eager warm-up step (seconds; the GPU mostly waits on the host, so it is charged
at ``P_oh`` like ``t_pass``) and ``comb`` one of

* ``"max"``: ``max(a, b)``, the roofline of each kernel class (a kernel waits on its slower resource);
* ``"smooth"``: ``(a^p + b^p)^(1/p)`` with p = :data:`SMOOTH_P`, a roofline with a rounded corner (near the ridge
  both resources are partly busy); unlike ``max`` every parameter keeps a gradient, so the covariance exists;
* ``"sum"``: ``a + b``, no overlap of compute and memory traffic.

``t_pass`` is one constant per pass, not per decoder layer: a per-layer cost ``L * t_layer`` fitted on two models
mispredicted the third (on the H100 grids the decode step at short context is 0.48-0.99 ms per layer across
Llama-3.2-1B, OPT-1.3B and Qwen2-1.5B, so no per-layer constant transfers).

The pair term is what makes head widths agree. A flash-attention tile does ``4 d_head`` tensor-core FLOPs per pair
and head but one exponential (plus a few FP32 operations) whatever ``d_head``; the torch engine's SDPA flash kernel
(FlashAttention-2) does not overlap the two. With FLOPs alone, the prompts' attention of Llama-3.2-1B and OPT-1.3B
(``d_head`` 64) ran about 1.4x slower per FLOP than Qwen2-1.5B's (128); the fitted ``R_pair`` comes out near the SFU
rate above. It hardly matters in decode, where attention waits on the KV reads.

The energy (joules) charges the busy part of each pass at ``P_busy`` and the rest at ``P_oh``:

    E = sum_k  P_busy * busy_k + P_oh * (t_k - busy_k)

so the mean power is ``P_oh + (P_busy - P_oh) u`` with ``u`` the busy fraction of the time; both powers are bounded
by the GPU's power cap. Most of our H100 grid runs at the 700 W cap (NVML reads ~690 W), and ``P_busy`` comes out
at it. That is form ``v1`` of the model (:mod:`energybook.model.form`), frozen first: it charges every kernel the
cap, a memory-bound batch-1 decode as much as a compute-bound prefill.

Form ``v2`` keeps the time and makes the power follow the work. While the kernels of pass ``k`` run, the GPU draws

    P_k = smin(P_s + (e_F (F_mm + F_att) + e_B (W + O + K + A)) / busy_k, P_max),   smin(a, b) = (a^-q + b^-q)^(-1/q)
    E   = sum_k  P_k * busy_k + P_oh * (t_k - busy_k)

with ``P_s`` a static power (watts: leakage, clocks and the board's floor, drawn whatever the kernels do),
``e_F`` the energy of one tensor FLOP (joules per FLOP: the datapath's switching), ``e_B`` the energy of one byte
moved to or from the device memory (joules per byte: the HBM access and the on-chip path to the SMs), ``P_max`` the
power cap (``busy_power_w`` of a v2 record, the calibration's ``power_cap_w``, not fitted) and q =
:data:`~energybook.model.physics_fit.POWER_SMOOTH_P`. The demand ``P_s + e_F x FLOP rate + e_B x byte rate`` is the
first-order power model of a CMOS chip (static plus activity-proportional dynamic power). Above the cap the GPU's
power controller lowers the clocks until it holds the cap, so the drawn power is the smaller of the two; the smooth
minimum rounds the corner, as passes mix kernels above and below it, and keeps every parameter's gradient. A
compute-bound prefill demands more than the cap and sits at it; a memory-bound small-batch decode, whose FLOP rate
is tiny, and the per-pass overhead (``P_oh``) fall below it. The fit (:func:`calibrate` with ``form="v2"``) adds
each grid row's measured mean power, energy / duration, to the four residuals. The committed H100 grids span
batches 44 to 1000 and mean powers of about 600 to 700 W: they barely constrain the low branch, so a prediction
there is an extrapolation, and the interval (:class:`Prediction`) widens there through the parameter draws and the
disagreement of the leave-one-model-out calibrations that a v2 record stores.

:attr:`PassCounts.activation_bytes` (the activation tensors written between a layer's products, once each) is counted
but not in the time: as a term ``A / B_act`` it raised the leave-one-model-out error. The elementwise bytes ``A``
above replace it: they follow the kernels the modules really run (an RMSNorm moves 36 bytes per element of the
hidden state, a fused LayerNorm 4), which differ 3.7x per token between OPT-1.3B and Qwen2-1.5B; with them the
matmul rate comes out near 500 TFLOP/s for all three models, where without them OPT's prefill ran 1.3x faster
per FLOP than Llama's and Qwen2's. The decode attention blocks make the step time of MHA (OPT, 32 key/value heads)
and GQA models (8 and 2) agree: per request and layer the block count differs 16x between OPT and Qwen2 while the
bytes per key differ 8x.

``F_mm`` is the unpadded count. GEMM quantisation was tried on the H100 grids and not kept (smooth/add, mean
leave-one-model-out MAPE 5.16% with the plain count): padding each product (q, k, v, o, gate, up, down as the
unfused HF modules run them, and the LM head) to whole 128x256 output tiles, with M the tokens of the pass, gave
5.20% (128x128: 5.20%, 64x128: 5.24%, 256x128: 5.37%); charging whole waves of 132 SMs
(``ceil(tiles / 132) * 132`` tiles) gave 10.71% (7.49% with 128x128 tiles), and 6.89% when a grid of fewer than
132 tiles keeps its tile count (split-K). A wave count charges Qwen2's 8960-wide FFN 41% more than its FLOPs at
batch 1000 (Llama's 8192-wide one 3%), and the measured steps show no such step; cuBLAS picks its tile and a
split-K or stream-K schedule per shape on Hopper, so a fixed tile and wave count is the wrong model of it.

The engine's batch rule. An engine runs ``n_req`` requests in balanced waves (``ceil(n_req / waves)``
each, as few waves as fit) of at most ``max_batch`` requests, the limit set by the KV cache that fits in the GPU
memory left after the weights (:func:`batch_limit`: the one rule of :mod:`energybook.model.batch` with the
engine's profile, the memory available ``memory_bytes`` a calibration value chosen to reproduce the measured
batches). Each wave is prefilled in chunks of at most the profile's ``prefill_tokens`` prompt tokens
(:func:`energybook.model.roofline.chunk_sizes`) and decoded ``n_out - 1`` steps. A calibration names its engine;
:func:`schedule` and :func:`predict` take that engine's profile (:func:`energybook.model.batch.profile_for`).

The parameters are per GPU and engine, shared across models. :func:`calibrate` fits them with lmfit (least squares
on the log of the measured prefill and decode energies and times, each phase's residual weighted by the square
root of its share of the workload's energy or time, so that a phase worth 0.1% of a workload, such as OPT-1.3B's
84-request prefills that stall on the allocator at low power, does not set the shared parameters: unweighted, those
few prefill times made 75% of the sum of squares and held ``P_busy`` 2% below the measured ~690 W of the capped
GPU); :func:`predict` gives the energy of any
(architecture, n_in, n_out, batch or max_batch, n_req) with an interval (see :class:`Prediction`).
:func:`load_calibration` reads a stored calibration from the package data (``energybook/resources/calibration/``,
written by ``scripts/calibrate.py``): the newest form's record of the (GPU, engine) unless ``form`` names another,
and refuses one fitted with another form of the model than the frozen one of its version that this code evaluates
(:mod:`energybook.model.form`: the record's ``form_hash``), or of a version it does not know.

:func:`predict` refuses what cannot run (:class:`Refused`): waves whose weights, KV cache and buffers do not fit
the GPU's memory, an explicit batch included (:func:`check_memory` names the bytes needed and available and the
largest batch that fits), and with ``strict`` (as ``energybook predict`` calls it) n_in + n_out beyond the model's
``max_position_embeddings``. It warns (:attr:`Prediction.warnings`) where a request lies outside what the
calibration's grids covered: batch, parameter count, n_in, n_out, predicted mean power
(:func:`request_warnings`, the record's ``calibrated_range``).

Used in :doc:`/book/physics`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from energybook.model import batch as B
from energybook.model import complexity as C
from energybook.model.architecture import Architecture
from energybook.model.batch import HF_PROFILE, EngineProfile
from energybook.model.form import FormMismatch, check_form  # noqa: F401
from energybook.model.physics_fit import (  # noqa: F401  (the model's names, importable from here)
    ALL_UNITS,
    COMBINES,
    DEFAULT_ENGINE,
    FORMS,
    GPU_ALIASES,
    OVERHEADS,
    PARAM_NAMES,
    PARAM_NAMES_V2,
    PARAM_UNITS,
    PARAM_UNITS_V2,
    POWER_SMOOTH_P,
    POWER_UNITS,
    SMOOTH_P,
    START,
    START_V2,
    WEIGHTS,
    Calibration,
    CalibrationFit,
    CalibrationNotFound,
    Observation,
    PhaseEnergy,
    PhysicsParams,
    StoredCalibration,
    balanced_batch,
    batch_limit,
    busy_power,
    calibrate,
    calibrated_gpus,
    calibrated_range,
    calibration_file_name,
    engine_key,
    find_calibration,
    gpu_key,
    memory_for_batches,
    observations,
    param_names,
    pass_times,
    peaks_reference,
    phase_energy,
    read_calibration,
    smooth_min,
    start_values,
    stored_calibrations,
)
from energybook.model.physics_passes import (  # noqa: F401
    NORM_BYTES,
    PassCounts,
    activation_bytes_per_token,
    attended_keys,
    causal_pairs,
    elementwise_bytes_per_token,
    pass_counts,
)

#: The ``hf`` torch engine's settings that the schedule depends on (from :data:`energybook.model.batch.HF_PROFILE`).
ENGINE_MEMORY_FRACTION = HF_PROFILE.memory_fraction
ENGINE_PREFILL_TOKENS = HF_PROFILE.prefill_tokens
ENGINE_CACHE_BUCKET = HF_PROFILE.bucket_max
#: Context bucket of the engine's decode CUDA graphs (tokens): one graph per bucket per wave.
ENGINE_GRAPH_BUCKET = HF_PROFILE.bucket_max



def load_calibration(gpu: str | None = None, path: str | Path | None = None,
                     engine: str | None = None, form: str | None = None) -> Calibration:
    """The stored calibration of a (GPU, engine), checked against the model form this code evaluates.

    A (GPU, engine) may have one record per model form (:data:`energybook.model.form.FORM_VERSIONS`):
    ``<gpu-slug>--<engine>.json`` for form v1, ``<gpu-slug>--<engine>--v2.json`` for v2. The newest form is picked
    unless ``form`` names one: ``load_calibration("h100")`` gives the v2 record (power that follows the work, the
    interval with the folds' disagreement), ``load_calibration("h100", form="v1")`` the frozen v1 record, which
    predicts as it always did.

    One calibration per (GPU, engine): ``energybook/resources/calibration/<gpu-slug>--<engine>.json``
    (:func:`energybook.model.physics_fit.stored_calibrations`). The GPU enters the record through its peaks (the
    record's ``peaks``: a measured peaks file or, for the H100 record fitted before any was measured, the datasheet),
    the engine through its profile (:func:`energybook.model.batch.profile_for`).

    Args:
        gpu: GPU name (``"NVIDIA H100 80GB HBM3"``), slug (``"nvidia-h100-80gb-hbm3"``) or short name (``"h100"``),
            case-insensitive; None: the one GPU calibrated for the engine.
        path: A calibration JSON to read instead of the shipped one.
        engine: ``"hf"`` (``"torch"`` names it too) or another engine with a calibration; None: ``"hf"``
            (:data:`energybook.model.physics_fit.DEFAULT_ENGINE`, the only engine calibrated so far).
        form: ``"v1"`` or ``"v2"``; None: the newest form calibrated for that (GPU, engine). Ignored with ``path``
            (the record names its form).

    Raises:
        CalibrationNotFound: (a ValueError) for an uncalibrated (GPU, engine) or form, or no GPU named while several
            are calibrated for the engine: the message lists the calibrations and the command that makes one.
        ValueError: for a malformed file.
        FormMismatch: for a calibration fitted with another form of the model (its ``form_hash`` differs from
            :func:`energybook.model.form.current_form`'s; the message names both), or of a form this code does
            not know. A record without a form is loaded as v1 with a logged warning.
    """
    cal = read_calibration(gpu, path, engine, form)
    check_form(cal, path if path is not None else f"the shipped calibration {Path(cal.file).name}")
    return cal


#: The parameters a GPU's measured peaks move in :func:`transfer`: rates with the copy bandwidth, with the matmul
#: rate, and times that shrink with the matmul rate; the powers follow the power cap. ``pass_overhead_s`` and
#: ``graph_capture_s`` (the host's launch and capture work) are kept.
TRANSFER_BANDWIDTH = ("weight_bytes_s", "kv_bytes_s", "elementwise_bytes_s")
TRANSFER_COMPUTE = ("matmul_flops_s", "attention_flops_s", "attention_pairs_s")
TRANSFER_COMPUTE_TIMES = ("attention_block_s",)
TRANSFER_POWERS = ("busy_power_w", "overhead_power_w", "static_power_w")


def transfer(calibration: Calibration, peaks: Any, peaks_file: str | Path | None = None) -> Calibration:
    """A calibration fitted on one GPU, moved to another by that GPU's measured peaks alone.

    The shared efficiency parameters keep their meaning; the GPU's rates are scaled by the ratio of the target's
    peaks to the calibration's (its record's ``peaks``): the bandwidths ``B_w``, ``B_kv``, ``B_el`` by the copy
    bandwidth, ``R_mm``, ``R_att``, ``R_pair`` (and ``t_blk`` inversely) by the bf16 matmul rate, ``P_busy`` and
    ``P_oh`` (and form v2's static power ``P_s``) by the power cap (and held under the new cap), the memory of the
    batch rule by the device memory; the per-pass and capture costs, host work, are kept, and so are form v2's
    energies per FLOP and per byte (no peak measures them). A form-v2 record's fold calibrations move alike. The
    result keeps the calibration's GPU and engine (what it was fitted on); the target GPU is in its
    ``provenance["transfer"]``. The covariance is scaled with the parameters. The interval still holds only the
    calibration's own errors, not the transfer's: the result says
    so in its ``transferred`` label (``"transferred from <calibration GPU> by peaks of <gpu uuid>"``), which
    ``energybook predict`` prints and puts in its JSON.

    Args:
        calibration: A calibration whose record names its peaks (``peaks``).
        peaks: The target GPU's :class:`energybook.store.peaks.Peaks` (:func:`energybook.store.peaks.load_peaks`).
        peaks_file: The peaks file (named in the label's record).

    Raises:
        ValueError: for a calibration without peaks.
    """
    ref = calibration.peaks or {}
    need = ("bandwidth_bytes_s", "matmul_flops", "power_cap_w")
    if not all(isinstance(ref.get(k), (int, float)) and ref[k] > 0 for k in need):
        raise ValueError(f"the calibration of {calibration.gpu_name or calibration.gpu} records no peaks "
                         f"({', '.join(need)}): it cannot be transferred; recalibrate it with scripts/calibrate.py")
    r_bw = float(peaks.copy_bytes_per_s) / float(ref["bandwidth_bytes_s"])
    r_mm = float(peaks.matmul_flops) / float(ref["matmul_flops"])
    r_pw = float(peaks.power_limit_w) / float(ref["power_cap_w"])
    r_mem = float(peaks.memory_bytes) / float(ref["memory_bytes"]) if ref.get("memory_bytes") else 1.0
    factor = {k: 1.0 for k in ALL_UNITS}
    factor.update({k: r_bw for k in TRANSFER_BANDWIDTH})
    factor.update({k: r_mm for k in TRANSFER_COMPUTE})
    factor.update({k: 1.0 / r_mm for k in TRANSFER_COMPUTE_TIMES})
    factor.update({k: r_pw for k in TRANSFER_POWERS})
    cap = float(peaks.power_limit_w)

    def moved(params: PhysicsParams) -> PhysicsParams:
        values = {k: getattr(params, k) for k in ALL_UNITS}
        values = {k: (v * factor[k] if v is not None else None) for k, v in values.items()}
        for k in TRANSFER_POWERS:
            if values[k] is not None:
                values[k] = min(values[k], cap)
        return PhysicsParams(**values)

    names = calibration.param_names
    scale = np.array([factor[k] for k in names])
    cov = np.asarray(calibration.covariance, dtype=float) * np.outer(scale, scale)
    folds = [dict(f, params={k: getattr(q, k) for k in names})
             for f, q in zip(calibration.folds, (moved(q) for q in calibration.fold_params()))]
    rng = dict(calibration.calibrated_range)
    if "power_w" in rng:
        rng["power_w"] = [v * r_pw for v in rng["power_w"]]
    source = calibration.gpu_name or calibration.gpu
    label = f"transferred from {source} by peaks of {peaks.gpu_uuid}"
    prov = dict(calibration.provenance, transfer=dict(
        label=label, peaks_file=None if peaks_file is None else str(peaks_file), target_gpu=peaks.gpu,
        target_gpu_uuid=peaks.gpu_uuid, reference_peaks_kind=ref.get("kind", "unknown"),
        ratios=dict(bandwidth=r_bw, matmul=r_mm, power_cap=r_pw, memory=r_mem)))
    return dataclasses.replace(
        calibration, params=moved(calibration.params), folds=folds,
        stderr={k: v * factor.get(k, 1.0) for k, v in calibration.stderr.items()}, covariance=cov,
        memory_bytes=calibration.memory_bytes * r_mem, power_cap_w=cap, calibrated_range=rng, provenance=prov,
        file=calibration.file, transferred=label)


def transfer_warnings(calibration: Calibration) -> list[str]:
    """What a transferred calibration's prediction cannot vouch for (empty for one as fitted)."""
    if not calibration.transferred:
        return []
    out = [f"{calibration.transferred}: rates scaled by the ratio of the peaks; the interval holds the "
           "calibration's own model error, not the transfer's (untested until that GPU is measured)"]
    ref = calibration.provenance.get("transfer", {}).get("reference_peaks_kind")
    if ref != "measured":
        out.append("the calibration's own peaks are datasheet figures, not measured ones: the ratios mix measured "
                   "and datasheet rates (a measured copy bandwidth or matmul rate is below the datasheet's)")
    return out


# ----- prediction -----------------------------------------------------------------------------
#: z of the two-sided 95% normal interval.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class EnergyInterval:
    """The energy of one workload's passes with its 95% interval and the interval's parts (see :class:`Prediction`).

    Attributes:
        energy_j: Modelled energy under the fitted parameters (joules).
        energy_low_j: Lower end of the 95% interval (joules).
        energy_high_j: Upper end (joules).
        s_param: Standard deviation of log energy over the parameter draws (0 without draws).
        s_model: The calibration's model error (rms log leave-one-model-out error).
        s_fold: Jackknife standard deviation of log energy over the calibration's fold calibrations (0 without).
        draws: Parameter sets drawn (every one used).
        fold_energy_j: The energy under each fold calibration (joules), in the record's order.
    """

    energy_j: float
    energy_low_j: float
    energy_high_j: float
    s_param: float
    s_model: float
    s_fold: float
    draws: int
    fold_energy_j: tuple[float, ...] = ()

    @property
    def half_width_log(self) -> float:
        """1.96 sqrt(s_param^2 + s_model^2 + s_fold^2): the interval's half width in log energy."""
        return Z95 * math.sqrt(self.s_param ** 2 + self.s_model ** 2 + self.s_fold ** 2)


def energy_interval(counts: PassCounts, calibration: Calibration, samples: int = 200,
                    energy_j: float | None = None) -> EnergyInterval:
    """The energy of ``counts`` under a calibration, with the 95% interval of :class:`Prediction`.

    Args:
        counts: The workload's passes (:func:`pass_counts`).
        calibration: The calibration (its draws, model error and, for form v2, its folds).
        samples: Parameter sets drawn (0: no parameter term).
        energy_j: The modelled energy when already computed (joules).
    """
    cal = calibration
    if energy_j is None:
        energy_j = phase_energy(counts, cal.params, cal.combine, cal.overhead).energy_j
    s_par = 0.0
    draws = cal.sample_params(samples) if samples else []
    if draws:
        s_par = float(np.std(np.log([phase_energy(counts, p, cal.combine, cal.overhead).energy_j for p in draws])))
    folds = tuple(phase_energy(counts, p, cal.combine, cal.overhead).energy_j for p in cal.fold_params())
    s_fold = 0.0
    if len(folds) > 1:
        logs = np.log(folds)
        s_fold = float(np.sqrt((len(logs) - 1) / len(logs) * np.sum((logs - logs.mean()) ** 2)))
    out = EnergyInterval(float(energy_j), 0.0, 0.0, s_par, float(cal.model_error_log), s_fold, len(draws), folds)
    half = out.half_width_log
    return dataclasses.replace(out, energy_low_j=float(energy_j) * math.exp(-half),
                               energy_high_j=float(energy_j) * math.exp(half))


@dataclass(frozen=True)
class Prediction:
    """The predicted energy of a workload of ``n_req`` requests of (n_in, n_out).

    The interval ``[energy_low_j, energy_high_j]`` is an approximate 95% prediction interval for a model outside
    the calibration set (:func:`energy_interval`): in log space, the prediction +- 1.96 sqrt(s_param^2 + s_model^2
    + s_fold^2), where

    * ``s_param`` is the standard deviation of log energy over ``samples`` parameter sets drawn around the fit
      (:meth:`~energybook.model.physics_fit.Calibration.sample_params`: log-normal with lmfit's standard errors
      and correlations, half-normal for a parameter at its bound 0; every draw is kept, none dropped or clipped);
    * ``s_model`` is the calibration's ``model_error_log``, the rms log error of its leave-one-model-out
      predictions on its own grids (a development error);
    * ``s_fold`` is the disagreement of the leave-one-model-out calibrations stored in a form-v2 record
      (:attr:`~energybook.model.physics_fit.Calibration.folds`): the jackknife standard deviation of their log
      energies, ``sqrt((n - 1) / n x sum (log E_i - mean)^2)`` over the n folds. Inside the grids the folds agree
      and it is small; off them (batch 1, an 8B model, a power far below the measured ones) they disagree and the
      interval widens. A form-v1 record stores no folds: its ``s_fold`` is 0.

    It does not cover other engines or other power limits, and for a calibration moved to another GPU
    (:func:`transfer`) it holds the calibration's own errors, not the transfer's. On the committed H100 grids the
    batches are 44 to 1000 and the measured mean powers 600 to 700 W: below that, the power (and so the energy)
    is an extrapolation, and :attr:`warnings` says so.

    Attributes:
        model: Architecture name.
        gpu: Calibration key.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        n_req: Requests.
        batch: Requests per wave (largest wave).
        waves: Waves.
        energy_j: Energy of the workload (joules).
        duration_s: Time of the workload (seconds).
        prefill_energy_j: Prefill energy (joules).
        decode_energy_j: Decode energy (joules).
        prefill_s: Prefill time (seconds).
        decode_s: Decode time (seconds).
        energy_low_j: Lower end of the interval on ``energy_j`` (joules).
        energy_high_j: Upper end (joules).
        warnings: Where the request lies outside what the calibration's grids covered (batch, model size,
            lengths, predicted power) or beyond the model's positions (:func:`request_warnings`); empty inside.
    """

    model: str
    gpu: str
    n_in: int
    n_out: int
    n_req: int
    batch: int
    waves: int
    energy_j: float
    duration_s: float
    prefill_energy_j: float
    decode_energy_j: float
    prefill_s: float
    decode_s: float
    energy_low_j: float
    energy_high_j: float
    warnings: tuple[str, ...] = ()

    @property
    def tokens_out(self) -> int:
        """Output tokens of the workload."""
        return self.n_req * self.n_out

    @property
    def j_per_token(self) -> float:
        """Joules per output token."""
        return self.energy_j / self.tokens_out

    @property
    def j_per_token_low(self) -> float:
        """Lower end of the interval on joules per output token."""
        return self.energy_low_j / self.tokens_out

    @property
    def j_per_token_high(self) -> float:
        """Upper end of the interval on joules per output token."""
        return self.energy_high_j / self.tokens_out

    @property
    def j_per_total_token(self) -> float:
        """Joules per token, prompt and output together."""
        return self.energy_j / (self.n_req * (self.n_in + self.n_out))

    @property
    def j_per_request(self) -> float:
        """Joules per request."""
        return self.energy_j / self.n_req

    @property
    def tokens_per_j(self) -> float:
        """Output tokens per joule."""
        return self.tokens_out / self.energy_j

    @property
    def power_w(self) -> float:
        """Mean power (watts)."""
        return self.energy_j / self.duration_s

    def to_dict(self) -> dict[str, Any]:
        """Fields and derived values as a flat JSON-ready dict (units in the names)."""
        d = dict(self.__dict__)
        for k in ("tokens_out", "j_per_token", "j_per_token_low", "j_per_token_high", "j_per_total_token",
                  "j_per_request", "tokens_per_j", "power_w"):
            d[k] = getattr(self, k)
        d["j_per_request_low"] = self.energy_low_j / self.n_req
        d["j_per_request_high"] = self.energy_high_j / self.n_req
        d["warnings"] = list(self.warnings)
        return d


def _profile(calibration: Calibration) -> EngineProfile:
    """The profile of the engine a calibration measured (an unnamed engine: the ``hf`` engine of the shipped grids).

    Raises:
        ValueError: for an engine without a profile.
    """
    return B.profile_for(calibration.engine) if calibration.engine else HF_PROFILE


#: The largest batch :func:`check_memory` considers (requests; the CLI's limit on --batch).
_LARGEST_BATCH = 10**7


class Refused(ValueError):
    """A request the model does not answer because it cannot run: it does not fit the GPU's memory, or it needs
    more positions than the model has. The message names the limit and the way out."""


def _largest_fitting(arch: Architecture, n_in: int, n_out: int, calibration: Calibration) -> int:
    """The largest batch whose KV cache and buffers fit beside the weights, by the engine's rule (0: none)."""
    return batch_limit(arch, n_in, n_out, calibration.memory_bytes, _LARGEST_BATCH, _profile(calibration))


def memory_needed(arch: Architecture, n_in: int, n_out: int, batch: int, calibration: Calibration) -> dict[str, float]:
    """The device memory a wave of ``batch`` requests of (n_in, n_out) needs by the engine's rule (bytes).

    Returns:
        ``weights_bytes``; ``cache_bytes`` (the requests' KV cache, logits, token ids and decode activations);
        ``fixed_bytes`` (one prefill chunk's activations, the LM head's scratch, the headroom); ``needed_bytes``
        = weights + (cache + fixed) / the share of the memory after the weights that the engine may use; and
        ``available_bytes``, the calibration's memory before the weights.
    """
    profile = _profile(calibration)
    weights = float(arch.num_params * arch.bytes_per_element)
    cache = float(batch * B.request_bytes(arch, n_in, n_out, profile))
    fixed = float(B.fixed_bytes(arch, n_in, profile, batch))
    return dict(weights_bytes=weights, cache_bytes=cache, fixed_bytes=fixed,
                needed_bytes=weights + (cache + fixed) / profile.memory_fraction,
                available_bytes=float(calibration.memory_bytes))


def check_memory(arch: Architecture, n_in: int, n_out: int, batch: int, calibration: Calibration,
                 requested: int | None = None) -> None:
    """Refuse a wave of ``batch`` requests that does not fit the calibrated GPU's memory (``requested``: the batch
    asked for, when the balanced waves are smaller).

    Raises:
        Refused: naming the bytes needed, the bytes available and the largest batch that fits.
    """
    largest = _largest_fitting(arch, n_in, n_out, calibration)
    if batch <= largest:
        return
    m = memory_needed(arch, n_in, n_out, batch, calibration)
    gpu = calibration.gpu_name or calibration.gpu
    if m["weights_bytes"] >= m["available_bytes"]:
        way = (f"the weights alone ({m['weights_bytes']:.4g} bytes) do not fit: no batch fits; use a GPU with more "
               "memory")
    elif largest == 0:
        way = "not even one request fits at these lengths: shorten the prompt or the output"
    else:
        way = f"the largest batch that fits is {largest}: use a batch of at most {largest}"
    asked = f"batch {batch}" if requested in (None, batch) else f"batch {requested} (waves of {batch} requests)"
    raise Refused(
        f"{arch.name} at {asked} with n_in {n_in} and n_out {n_out} needs {m['needed_bytes']:.4g} bytes of GPU "
        f"memory (weights {m['weights_bytes']:.4g} + KV cache and per-request buffers {m['cache_bytes']:.4g} + fixed "
        f"buffers {m['fixed_bytes']:.4g}, the engine using {_profile(calibration).memory_fraction:.0%} of what the "
        f"weights leave), but the {gpu} has {m['available_bytes']:.4g} bytes available; {way}")


def positions_beyond(arch: Architecture, n_in: int, n_out: int) -> str:
    """Why (n_in, n_out) needs more positions than the model has (its ``max_position_embeddings``), or ""."""
    limit = arch.max_position_embeddings
    if n_in + n_out <= limit:
        return ""
    return (f"n_in + n_out = {n_in + n_out} is beyond {arch.name}'s {limit} positions (max_position_embeddings "
            f"{limit}): the model cannot run it; keep n_in + n_out at most {limit}")


def schedule(arch: Architecture, n_in: int, n_out: int, calibration: Calibration, batch: int | None = None,
             max_batch: int = 1024, n_req: int = 1000) -> tuple[int, int]:
    """(batch, waves) the engine would use: ``batch`` as given, else the KV-memory rule of the calibration's engine
    (:func:`energybook.model.batch.profile_for`) under ``max_batch``.

    Raises:
        ValueError: for non-positive values.
        Refused: when the waves do not fit the GPU's memory (a given ``batch`` too large, or not even one request
            fits), naming the bytes needed and available and the largest batch that fits.
    """
    C.check_positive(n_in=n_in, n_out=n_out, n_req=n_req)
    if batch is not None:
        C.check_positive(batch=batch)
        b, waves = balanced_batch(n_req, min(n_req, batch))
        check_memory(arch, n_in, n_out, b, calibration, requested=batch)
        return b, waves
    C.check_positive(max_batch=max_batch)
    limit = batch_limit(arch, n_in, n_out, calibration.memory_bytes, max_batch, _profile(calibration))
    if limit < 1:
        check_memory(arch, n_in, n_out, 1, calibration)
    return balanced_batch(n_req, min(n_req, max_batch, limit))


def request_warnings(arch: Architecture, n_in: int, n_out: int, batch: int, power_w: float | None,
                     calibration: Calibration) -> list[str]:
    """Where a request lies outside what the calibration's grids covered (:attr:`Calibration.calibrated_range`):
    its batch, the model's parameter count, n_in, n_out, the predicted mean power; and positions beyond the
    model's limit. One sentence each; none inside the range."""
    out = []
    rng = calibration.calibrated_range
    if not rng:
        out.append(f"the calibration of {calibration.gpu} records no calibrated range: whether this request lies "
                   "inside what its grids covered is unknown")
    models = ", ".join(rng.get("models", [])) or "the calibration grids"

    def outside(key: str, value: float) -> tuple[float, float] | None:
        if key not in rng:
            return None
        low, high = rng[key]
        return (low, high) if not low <= value <= high else None

    if (r := outside("batch", batch)) is not None:
        out.append(f"batch {batch} is outside the calibrated batches {r[0]:g}..{r[1]:g} (requests per wave)")
    if (r := outside("num_params", arch.num_params)) is not None:
        out.append(f"{arch.name} has {arch.num_params:.4g} parameters, outside the calibrated model sizes "
                   f"{r[0]:.4g}..{r[1]:.4g} ({models})")
    if (r := outside("n_in", n_in)) is not None:
        out.append(f"n_in {n_in} is outside the calibrated prompt lengths {r[0]:g}..{r[1]:g} tokens")
    if (r := outside("n_out", n_out)) is not None:
        out.append(f"n_out {n_out} is outside the calibrated output lengths {r[0]:g}..{r[1]:g} tokens")
    if power_w is not None and (r := outside("power_w", power_w)) is not None:
        out.append(f"the predicted mean power {power_w:.0f} W is outside the measured mean powers "
                   f"{r[0]:.0f}..{r[1]:.0f} W of the calibration grids")
    if why := positions_beyond(arch, n_in, n_out):
        out.append(why)
    return out


def predict(arch: Architecture, n_in: int, n_out: int, batch: int | None = None, max_batch: int = 1024,
            n_req: int = 1000, calibration: Calibration | None = None, samples: int = 200,
            strict: bool = False) -> Prediction:
    """The energy of ``n_req`` requests of (n_in, n_out) on a calibrated GPU, with an interval.

    Args:
        arch: Any architecture (:func:`energybook.model.architecture.load`).
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        batch: Requests per wave; None: the engine's KV-memory rule under ``max_batch``.
        max_batch: The engine's batch cap (requests), used when ``batch`` is None.
        n_req: Requests.
        calibration: The (GPU, engine) calibration (default :func:`load_calibration`: the one ``hf`` GPU, its
            newest form).
        samples: Parameter sets drawn for the interval (0: the interval holds the model error and the folds'
            disagreement only).
        strict: Refuse n_in + n_out beyond the model's ``max_position_embeddings`` (``energybook predict`` does);
            False: predict it with a warning (the measuring engine extends a model's position table with dummy
            weights, so the grids hold such points, e.g. OPT-1.3B to 8192 positions, but a real checkpoint cannot
            run them).

    Returns:
        The prediction, with :attr:`Prediction.warnings` naming what lies outside the calibrated range.

    Raises:
        ValueError: for non-positive lengths or batches.
        Refused: when the waves do not fit the GPU's memory (an explicit ``batch`` included), or, with ``strict``,
            when n_in + n_out is beyond the model's positions.
    """
    cal = calibration if calibration is not None else load_calibration()
    if strict and (why := positions_beyond(arch, n_in, n_out)):
        raise Refused(why)
    b, waves = schedule(arch, n_in, n_out, cal, batch, max_batch, n_req)
    counts = pass_counts(arch, n_in, n_out, n_req, b, waves, _profile(cal))
    e = phase_energy(counts, cal.params, cal.combine, cal.overhead)
    interval = energy_interval(counts, cal, samples, e.energy_j)
    warnings = request_warnings(arch, n_in, n_out, counts.max_wave, e.energy_j / e.duration_s, cal) \
        + transfer_warnings(cal)
    return Prediction(model=arch.name, gpu=cal.gpu, n_in=n_in, n_out=n_out, n_req=n_req, batch=counts.max_wave,
                      waves=waves, energy_j=e.energy_j, duration_s=e.duration_s,
                      prefill_energy_j=e.prefill_energy_j, decode_energy_j=e.decode_energy_j,
                      prefill_s=e.prefill_s, decode_s=e.decode_s, energy_low_j=interval.energy_low_j,
                      energy_high_j=interval.energy_high_j, warnings=tuple(warnings))
