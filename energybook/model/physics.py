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
at it.

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
written by ``scripts/calibrate.py``).

Used in :doc:`/book/physics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from energybook.model import batch as B
from energybook.model import complexity as C
from energybook.model.architecture import Architecture
from energybook.model.batch import HF_PROFILE, EngineProfile
from energybook.model.physics_fit import (  # noqa: F401  (the model's names, importable from here)
    COMBINES,
    OVERHEADS,
    PARAM_NAMES,
    PARAM_UNITS,
    SMOOTH_P,
    START,
    WEIGHTS,
    Calibration,
    CalibrationFit,
    Observation,
    PhaseEnergy,
    PhysicsParams,
    balanced_batch,
    batch_limit,
    calibrate,
    calibrated_gpus,
    load_calibration,
    memory_for_batches,
    observations,
    phase_energy,
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

# ----- prediction -----------------------------------------------------------------------------
#: z of the two-sided 95% normal interval.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Prediction:
    """The predicted energy of a workload of ``n_req`` requests of (n_in, n_out).

    The interval ``[*_low, *_high]`` is an approximate 95% prediction interval for a model outside the
    calibration set: in log space, the prediction +- 1.96 sqrt(s_param^2 + s_model^2), where ``s_param`` is the
    standard deviation of log energy over parameter sets drawn from lmfit's covariance and ``s_model`` the
    calibration's ``model_error_log`` (rms leave-one-model-out error). It does not cover other engines, other
    power limits, or other GPUs.

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
        return d


def _profile(calibration: Calibration) -> EngineProfile:
    """The profile of the engine a calibration measured (an unnamed engine: the ``hf`` engine of the shipped grids).

    Raises:
        ValueError: for an engine without a profile.
    """
    return B.profile_for(calibration.engine) if calibration.engine else HF_PROFILE


def schedule(arch: Architecture, n_in: int, n_out: int, calibration: Calibration, batch: int | None = None,
             max_batch: int = 1024, n_req: int = 1000) -> tuple[int, int]:
    """(batch, waves) the engine would use: ``batch`` as given, else the KV-memory rule of the calibration's engine
    (:func:`energybook.model.batch.profile_for`) under ``max_batch``.

    Raises:
        ValueError: for non-positive values or when not even one request fits.
    """
    C.check_positive(n_in=n_in, n_out=n_out, n_req=n_req)
    if batch is not None:
        C.check_positive(batch=batch)
        return balanced_batch(n_req, min(n_req, batch))
    C.check_positive(max_batch=max_batch)
    limit = batch_limit(arch, n_in, n_out, calibration.memory_bytes, max_batch, _profile(calibration))
    return balanced_batch(n_req, min(n_req, max_batch, limit))


def predict(arch: Architecture, n_in: int, n_out: int, batch: int | None = None, max_batch: int = 1024,
            n_req: int = 1000, calibration: Calibration | None = None, samples: int = 200) -> Prediction:
    """The energy of ``n_req`` requests of (n_in, n_out) on a calibrated GPU, with an interval.

    Args:
        arch: Any architecture (:func:`energybook.model.architecture.load`).
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        batch: Requests per wave; None: the engine's KV-memory rule under ``max_batch``.
        max_batch: The engine's batch cap (requests), used when ``batch`` is None.
        n_req: Requests.
        calibration: The GPU's calibration (default :func:`load_calibration` of ``"h100"``).
        samples: Parameter sets drawn for the interval (0: the interval holds the model error only).

    Raises:
        ValueError: for non-positive lengths or batches, or when not even one request fits.
    """
    cal = calibration if calibration is not None else load_calibration()
    b, waves = schedule(arch, n_in, n_out, cal, batch, max_batch, n_req)
    counts = pass_counts(arch, n_in, n_out, n_req, b, waves, _profile(cal))
    e = phase_energy(counts, cal.params, cal.combine, cal.overhead)
    s_par = 0.0
    draws = [phase_energy(counts, p, cal.combine, cal.overhead).energy_j for p in cal.sample_params(samples)] \
        if samples else []
    if draws:
        s_par = float(np.std(np.log(draws)))
    half = Z95 * math.hypot(s_par, cal.model_error_log)
    return Prediction(model=arch.name, gpu=cal.gpu, n_in=n_in, n_out=n_out, n_req=n_req, batch=counts.max_wave,
                      waves=waves, energy_j=e.energy_j, duration_s=e.duration_s,
                      prefill_energy_j=e.prefill_energy_j, decode_energy_j=e.decode_energy_j,
                      prefill_s=e.prefill_s, decode_s=e.decode_s, energy_low_j=e.energy_j * math.exp(-half),
                      energy_high_j=e.energy_j * math.exp(half))
