"""How long a sweep will take, from its plan: the roofline time of every group at a nominal GPU, plus the
protocol's warm-ups, minimum windows and cool-downs.

Two users of one estimate:

* the launcher (:mod:`energybook.measure.launch`) balances its ranks by it; only the ratios between units matter
  there;
* every sweep prints an ETA from it before it starts (:func:`eta`), at the datasheet limits of the GPU it runs on
  when :data:`DATASHEETS` knows it, else at the nominal GPU. The roofline is a lower bound: the three grids the
  ``hf`` engine measured on an H100 (Llama 3.2 1B, OPT 1.3B, Qwen2 1.5B) took :data:`ETA_FACTOR` times the
  estimate (1.8 to 2.5), so the ETA is a range, not a promise.

And one estimate from measured times: :func:`scale_measured` carries a measured prefill and decode from one GPU to
another by the ratio of their rooflines, both roofs (matrix-multiply rate and memory bandwidth) at once, and
:func:`lab_estimate` builds the small-GPU lab's time table from it.

Used in :doc:`/book/reproduce` and :doc:`/book/labs/small_gpu`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from energybook.measure.protocol import Group, SweepConfig
from energybook.model import architecture as A
from energybook.model import batch as BATCH
from energybook.model import roofline as RL
from energybook.model.batch import HF_PROFILE, EngineProfile

#: The GPU the planner prices work on: the H100 SXM's datasheet limits (bf16 dense tensor FLOP/s, HBM3
#: bytes/s, watts). Only the ratios between units matter to the plan.
NOMINAL_GPU = RL.GpuSpec("nominal GPU for planning", 989e12, 3.35e12, 700.0,
                         "NVIDIA H100 SXM datasheet (dense bf16, HBM3); used only to balance a launch")

@dataclass(frozen=True)
class Datasheet:
    """A GPU's limits as its maker's datasheet gives them (not measured here).

    Attributes:
        key: Short name (``"T4"``, ``"H100 SXM"``).
        spec: Dense 16-bit tensor-core rate (FLOP/s; no sparsity), memory bandwidth (bytes/s), board power (W), and
            the document they come from.
        memory_bytes: GPU memory (bytes).
        dtype: The 16-bit type the rate is for (``"bfloat16"``, or ``"float16"`` where the GPU has no bf16).
    """

    key: str
    spec: RL.GpuSpec
    memory_bytes: float
    dtype: str = "bfloat16"


def _sheet(key: str, name: str, tflops: float, gb_s: float, watts: float, memory_gb: float, source: str,
           dtype: str = "bfloat16") -> Datasheet:
    return Datasheet(key, RL.GpuSpec(name, tflops * 1e12, gb_s * 1e9, watts, "datasheet figures: " + source),
                     memory_gb * 1e9, dtype)


#: Datasheet figures of common GPUs: dense 16-bit tensor rate (half the "with sparsity" figure where the sheet gives
#: that one), memory bandwidth, maximum board power, memory. Figures, not measurements, and read where each source
#: says: spec pages that quote NVIDIA's datasheets, not the datasheets themselves. GPUs whose figures could not be
#: read (A10, RTX 4090) are left out rather than typed from memory.
DATASHEETS = {d.key: d for d in (
    _sheet("T4", "NVIDIA T4", 65, 320, 70, 16, "NVIDIA T4 (FP16 mixed precision; no bf16), as spec pages quote the "
           "datasheet (sysrqmts.com/en/gpus/nvidia/tesla/t4; networkoutlet.com, 'NVIDIA Tesla T4 16GB GPU')",
           "float16"),
    _sheet("L4", "NVIDIA L4", 121, 300, 72, 24, "NVIDIA L4 (FP16/BF16 tensor, 242 with sparsity; 300 GB/s; 72 W), as "
           "grokipedia.com/page/NVIDIA_L4_vs_L40S quotes the datasheet"),
    _sheet("A100 SXM", "NVIDIA A100 80GB SXM", 312, 2039, 400, 80, "NVIDIA A100 80GB SXM (BF16 tensor, dense), as "
           "glennklockwood.com/garden/processors/A100 quotes the A100 datasheet"),
    _sheet("H100 SXM", "NVIDIA H100 SXM", 989, 3350, 700, 80, "NVIDIA H100 SXM5 (dense BF16 tensor, HBM3), the "
           "figures of the shipped H100 calibration record"),
    _sheet("H200 SXM", "NVIDIA H200 SXM", 989, 4800, 700, 141, "NVIDIA H200 SXM (BF16 tensor 1979 with sparsity; "
           "4.8 TB/s; 700 W), as aiminingco.com/gpu/h200/specs and ai-hpc.github.io quote it"),
)}
#: NVML's names of the GPUs above (their boards' names), where they differ from the key.
_NAMES = {"TESLA T4": "T4", "NVIDIA L4": "L4",
          "NVIDIA A100-SXM4-80GB": "A100 SXM", "NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H200": "H200 SXM"}


def datasheet(gpu: str | None) -> Datasheet | None:
    """The :data:`DATASHEETS` entry of a GPU by its key or its NVML name (``"NVIDIA H100 80GB HBM3"``); None for one
    the table does not hold (a PCIe board, say: its limits differ from the SXM one's)."""
    if not gpu:
        return None
    text = str(gpu).strip()
    key = text if text in DATASHEETS else _NAMES.get(text.upper())
    return DATASHEETS.get(key) if key else None


#: The GPU memory the planner assumes (bytes: the H100's 80 GB) to estimate how many requests fit in a wave.
NOMINAL_MEMORY_BYTES = 80e9
#: Measured wall time over :func:`group_cost_s` for the three H100 grids of the ``hf`` engine (low, high).
ETA_FACTOR = (1.8, 2.5)


def nominal_batch_limit(arch: A.Architecture, n_in: int, n_out: int, max_batch: int,
                        memory_bytes: float = NOMINAL_MEMORY_BYTES, profile: EngineProfile = HF_PROFILE) -> int:
    """Requests of (n_in, n_out) that fit in a wave (at least 1, at most ``max_batch``): the engine's batch rule
    (:func:`energybook.model.batch.batch_limit`) with the free memory of a GPU of ``memory_bytes`` that holds the
    weights, the planner's stand-in for the engine's ``batch_limit``, which needs the GPU.

    Args:
        arch: The model.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request.
        max_batch: The protocol's batch cap (requests).
        memory_bytes: GPU memory (bytes).
        profile: The profile of the engine that will run the sweep
            (:func:`energybook.model.batch.profile_for` of its name).
    """
    free = memory_bytes - arch.num_params * arch.bytes_per_element
    return max(1, BATCH.batch_limit(arch, n_in, n_out, free, profile, max_batch))


def group_cost_s(arch: A.Architecture, g: Group, config: SweepConfig, spec: RL.GpuSpec = NOMINAL_GPU) -> float:
    """Estimated time of one group (seconds): the roofline of its warm-up and its generation at ``spec``, the
    minimum window of every point that is too short alone (measured again on its own) and the cool-downs.

    Args:
        arch: The model.
        g: The group (:func:`energybook.measure.protocol.plan`).
        config: The protocol.
        spec: The GPU the work is priced on.
    """
    prefill = RL.prefill_bound(arch, g.n_in, g.batch, spec).time_s

    def wave(n_out: int) -> float:
        return prefill + RL.decode_bound(arch, g.n_in, n_out, g.batch, spec).time_s

    n_max = max(g.n_outs)
    warm = wave(min(n_max, config.warmup_steps + 1))
    if config.mode == "full":
        return warm + max(config.min_window_s, g.waves * wave(n_max)) + config.cooldown_s
    cost = warm + wave(n_max) + config.cooldown_s
    for n in g.n_outs:
        if wave(n) < config.min_window_s:  # repeated alone, back to back, until the window is long enough
            cost += warm + max(config.min_window_s, wave(n)) + config.cooldown_s
    return cost


@dataclass(frozen=True)
class Eta:
    """The expected wall time of a sweep's remaining groups.

    Attributes:
        points: Points left to measure.
        groups: Groups they make.
        roofline_s: Sum of :func:`group_cost_s` (seconds): a lower bound at the nominal GPU.
        low_s: ``roofline_s`` times the low end of :data:`ETA_FACTOR` (seconds).
        high_s: ``roofline_s`` times the high end (seconds).
        at: The limits the roofline used (``"a nominal H100"``, or a GPU's datasheet).
    """

    points: int
    groups: int
    roofline_s: float
    low_s: float
    high_s: float
    at: str = "a nominal H100"

    def text(self) -> str:
        """One line for the terminal."""
        def minutes(s: float) -> str:
            return f"{s / 60:.0f}" if s >= 600 else f"{s / 60:.1f}"

        return (f"{self.points} points in {self.groups} groups: about {minutes(self.low_s)}-{minutes(self.high_s)} "
                f"minutes (roofline {minutes(self.roofline_s)} min at {self.at}, times {ETA_FACTOR[0]}-"
                f"{ETA_FACTOR[1]} as the hf engine's grids took)")


def eta(arch: A.Architecture, groups: list[Group], config: SweepConfig, spec: RL.GpuSpec | None = None) -> Eta:
    """The ETA of ``groups`` of ``arch`` under ``config`` at ``spec`` (default: the nominal H100; module docstring)."""
    spec = spec or NOMINAL_GPU
    roof = sum(group_cost_s(arch, g, config, spec) for g in groups)
    points = sum(len(g.n_outs) for g in groups)
    at = "a nominal H100" if spec is NOMINAL_GPU else f"the {spec.name}'s datasheet limits"
    return Eta(points, len(groups), roof, roof * ETA_FACTOR[0], roof * ETA_FACTOR[1], at)


# ----- from measured times ---------------------------------------------------------------------------------------


def scale_measured(arch: A.Architecture, n_in: int, n_out: int, batch: int, prefill_s: float, decode_s: float,
                   source: RL.GpuSpec, target: RL.GpuSpec) -> tuple[float, float]:
    """A wave's measured prefill and decode times on ``source``, carried to ``target`` (seconds).

    Each phase is multiplied by the ratio of its roofline times, target over source
    (:func:`~energybook.model.roofline.prefill_bound`, :func:`~energybook.model.roofline.decode_bound`): every step
    takes the longer of its FLOPs at the matrix-multiply rate and its bytes at the memory bandwidth, so a prefill is
    scaled mostly by the rates and a decode mostly by the bandwidths, as their steps are bound. It assumes the target
    reaches the same fraction of its limits as the source did.

    Args:
        arch: The model.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request.
        batch: Requests in the wave.
        prefill_s: The measured prefill of the wave (seconds).
        decode_s: Its measured decode to ``n_out`` (seconds).
        source: The GPU that measured them (its datasheet or measured limits).
        target: The GPU to estimate for.
    """
    pre = RL.prefill_bound(arch, n_in, batch, target).time_s / RL.prefill_bound(arch, n_in, batch, source).time_s
    dec = 1.0
    if n_out > 1:
        dec = (RL.decode_bound(arch, n_in, n_out, batch, target).time_s
               / RL.decode_bound(arch, n_in, n_out, batch, source).time_s)
    return prefill_s * pre, decode_s * dec


def lab_estimate(arch: A.Architecture, measured: pd.DataFrame, config: SweepConfig, build_s: float,
                 source: RL.GpuSpec | None = None, target: RL.GpuSpec | None = None) -> pd.DataFrame:
    """The seconds of a prefix-mode sweep of ``config`` by ``n_in``, from a measured grid (``measured``: one row per
    point with ``n_in``, ``n_out``, ``n_req``, ``prefill_s``, ``decode_s``, ``waves``), on ``target``.

    Per ``n_in``: one generation of a wave of ``config.n_req`` requests to the longest ``n_out`` (the measured
    prefill scaled to ``n_req`` requests, plus the measured decode of one wave, an upper bound when the measured
    waves were larger); the points whose window is shorter than ``min_window_s`` measured again; the warm-up's
    ``warmup_steps`` decode steps and the cool-down. With ``target``, prefill and decode are carried from ``source``
    by :func:`scale_measured`. The model's build (``build_s``) is one more row.

    Returns:
        Columns ``work (s)``, ``repeats (s)``, ``warm-up and cool-down (s)``, ``total (s)``; rows ``n_in``, then
        ``model build``.

    Raises:
        ValueError: a target without a source, or a length of ``config`` the grid lacks.
    """
    if target is not None and source is None:
        raise ValueError("a target GPU needs the source GPU that measured the grid")
    rows = []
    for n_in in config.n_in:
        g = measured[measured["n_in"] == n_in].set_index("n_out")
        missing = sorted(set(config.n_out) - set(g.index))
        if g.empty or missing:
            raise ValueError(f"the measured grid lacks n_in={n_in}" + (f", n_out={missing}" if missing else ""))
        prefill = float(g["prefill_s"].iloc[0]) * config.n_req / float(g["n_req"].iloc[0])
        decode = {n: float(g.loc[n, "decode_s"] / g.loc[n, "waves"]) for n in config.n_out}
        window = {}
        for n in config.n_out:
            p, d = prefill, decode[n]
            if target is not None:
                p, d = scale_measured(arch, n_in, n, config.n_req, p, d, source, target)
            window[n] = (p, d)
        first, last = min(config.n_out), max(config.n_out)
        step = window[first][1] / (first - 1) if first > 1 else window[last][1] / max(1, last - 1)
        repeats = 0.0
        for n in config.n_out:
            w = sum(window[n])
            if 0 < w < config.min_window_s:
                repeats += math.ceil(config.min_window_s / w) * w
        rows.append({"n_in": n_in, "work (s)": sum(window[last]), "repeats (s)": repeats,
                     "warm-up and cool-down (s)": config.warmup_steps * step + config.cooldown_s})
    table = pd.DataFrame(rows).set_index("n_in")
    table.loc["model build"] = [0.0, 0.0, build_s]
    table["total (s)"] = table.sum(axis=1)
    return table
