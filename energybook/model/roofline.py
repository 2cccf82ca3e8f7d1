"""The roofline: how fast a GPU can do a piece of inference work, and what that costs in joules.

A GPU has two limits that matter here: its peak arithmetic rate ``peak_flops`` (FLOP/s) and its
memory bandwidth ``bandwidth_bytes_s`` (bytes/s). A kernel that does ``F`` FLOPs and moves ``B``
bytes cannot finish sooner than either limit allows, so its time is bounded below by

    t >= max(F / peak_flops, B / bandwidth_bytes_s)        (seconds)

the *roofline* (Williams, Waterman and Patterson, 2009). Whichever term is larger names the bound:
``"compute"`` or ``"memory"``. A GPU held at its power cap ``P`` (watts) that ran at the roofline
would spend ``E = P t`` joules, so the roofline also gives an estimate of the energy and of the
output tokens per joule at the cap. It is an estimate, not a strict bound: a GPU that reached the
roofline at less than its cap would do better, and real kernels run slower than the roofline.

Here every step is counted with :mod:`energybook.model.complexity` (``exact`` counts: GQA, gated
FFNs, LM head, KV-cache traffic) and the steps are scheduled as the torch engine runs them:
``n_req`` requests in ``waves`` balanced waves of up to ``batch`` requests; each wave is prefilled
in chunks of at most ``prefill_tokens`` prompt tokens, then decoded ``n_out - 1`` steps, each step
reading the weights once for the whole wave.

Pure CPU: no GPU and no file is read here. The limits of a real GPU come in a :class:`GpuSpec`,
e.g. :meth:`GpuSpec.from_benchmark` on what ``benchmarks/hf_engine_speed.py`` measured (read with
:func:`energybook.report.bench.engine_benchmark` from the results folder its caller names).

Used in :doc:`/book/physics` and :doc:`/book/worked_example`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from energybook.model import complexity as C
from energybook.model.architecture import Architecture

logger = logging.getLogger(__name__)

BOUNDS = ("compute", "memory")


@dataclass(frozen=True)
class GpuSpec:
    """The limits of one GPU.

    Attributes:
        name: GPU name (e.g. ``"NVIDIA H100 80GB HBM3"``).
        peak_flops: Peak arithmetic rate (FLOP/s) of the precision used (bf16 tensor cores here).
        bandwidth_bytes_s: Memory bandwidth (bytes/s).
        power_cap_w: Power limit the GPU runs under (watts).
        source: Where the figures come from (a datasheet, or the benchmark that measured them).

    Used in :doc:`/book/physics` and :doc:`/book/worked_example`.
    """

    name: str
    peak_flops: float
    bandwidth_bytes_s: float
    power_cap_w: float
    source: str

    def __post_init__(self) -> None:
        for key in ("peak_flops", "bandwidth_bytes_s", "power_cap_w"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive finite number, got {value!r}")

    @property
    def ridge_intensity(self) -> float:
        """Arithmetic intensity (FLOPs per byte) above which work is compute-bound."""
        return self.peak_flops / self.bandwidth_bytes_s

    @classmethod
    def from_benchmark(cls, bench: dict[str, Any]) -> GpuSpec:
        """The limits measured by ``benchmarks/hf_engine_speed.py``, from the dict it saved.

        Reads ``peak_flops`` (FLOP/s, an 8192^3 bf16 matmul), ``peak_bw_Bps`` (bytes/s, a
        device-to-device copy, bytes read + written) and the power limit NVML reported
        (``device.power_limit_w``, watts).

        Args:
            bench: The JSON of ``benchmarks/results/bench_engine.json``, e.g. from
                :func:`energybook.report.bench.engine_benchmark` given the results folder.

        Raises:
            ValueError: when a field is missing.
        """
        device = bench.get("device") or {}
        missing = [k for k in ("peak_flops", "peak_bw_Bps") if k not in bench]
        if "power_limit_w" not in device:
            missing.append("device.power_limit_w")
        if missing:
            raise ValueError(f"the benchmark lacks {missing}; is it the hf engine's speed benchmark "
                             "(bench_engine.json)?")
        note = bench.get("peaks_note", "measured peaks")
        started = bench.get("started", "?")
        return cls(name=str(device.get("gpu", "?")), peak_flops=float(bench["peak_flops"]),
                   bandwidth_bytes_s=float(bench["peak_bw_Bps"]), power_cap_w=float(device["power_limit_w"]),
                   source=f"bench_engine.json (hf engine speed benchmark), {started}: {note}")


@dataclass(frozen=True)
class RooflinePoint:
    """The roofline of some work: one step, one phase, or a whole grid point.

    For a sum of steps the times are sums over the steps: ``time_s`` adds each step's
    ``max(compute, memory)``, so it is at least ``max(compute_s, memory_s)``.

    Attributes:
        flops: Floating-point operations (FLOPs).
        bytes: Bytes moved through GPU memory.
        compute_s: Time at the peak arithmetic rate alone, FLOPs / peak (seconds).
        memory_s: Time at the memory bandwidth alone, bytes / bandwidth (seconds).
        time_s: The roofline time, the sum over steps of the larger of the two (seconds).
        compute_bound_s: Part of ``time_s`` spent in compute-bound steps (seconds).
        tokens_out: Output tokens the work produces.
        power_w: Power assumed while it runs (watts; the GPU's cap).

    Used in :doc:`/book/physics` and :doc:`/book/worked_example`.
    """

    flops: float
    bytes: float
    compute_s: float
    memory_s: float
    time_s: float
    compute_bound_s: float
    tokens_out: int
    power_w: float

    @property
    def bound(self) -> str:
        """``"compute"`` when compute-bound steps take at least half the time, else ``"memory"``."""
        return "compute" if self.compute_bound_s >= 0.5 * self.time_s else "memory"

    @property
    def intensity(self) -> float:
        """Arithmetic intensity (FLOPs per byte)."""
        return self.flops / self.bytes if self.bytes else float("inf")

    @property
    def energy_j(self) -> float:
        """Energy at the assumed power for the roofline time (joules): ``power_w * time_s``."""
        return self.power_w * self.time_s

    @property
    def tokens_per_j(self) -> float:
        """Output tokens per joule at the roofline and the assumed power (nan without tokens)."""
        return self.tokens_out / self.energy_j if self.tokens_out and self.energy_j else float("nan")

    @property
    def j_per_token(self) -> float:
        """Joules per output token (nan without tokens)."""
        return self.energy_j / self.tokens_out if self.tokens_out else float("nan")

    def __add__(self, other: RooflinePoint) -> RooflinePoint:
        if not math.isclose(self.power_w, other.power_w):
            raise ValueError(f"cannot add work at {self.power_w} W to work at {other.power_w} W")
        return RooflinePoint(self.flops + other.flops, self.bytes + other.bytes, self.compute_s + other.compute_s,
                             self.memory_s + other.memory_s, self.time_s + other.time_s,
                             self.compute_bound_s + other.compute_bound_s, self.tokens_out + other.tokens_out,
                             self.power_w)


@dataclass(frozen=True)
class PointBound:
    """The roofline of one grid point, by phase.

    Attributes:
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        n_req: Requests.
        batch: Requests per wave (the largest wave).
        waves: Waves.
        prefill: All prefill chunks of all waves.
        decode: All decode steps of all waves.

    Used in :doc:`/book/physics` and :doc:`/book/worked_example`.
    """

    n_in: int
    n_out: int
    n_req: int
    batch: int
    waves: int
    prefill: RooflinePoint
    decode: RooflinePoint

    @property
    def total(self) -> RooflinePoint:
        """Prefill and decode together."""
        return self.prefill + self.decode


def step(cost: C.Cost, spec: GpuSpec, tokens_out: int = 0) -> RooflinePoint:
    """The roofline of one kernel or forward pass: ``max(FLOPs / peak, bytes / bandwidth)``.

    Args:
        cost: FLOPs and bytes of the step (:mod:`energybook.model.complexity`).
        spec: The GPU.
        tokens_out: Output tokens the step produces (one per request in a decode step).

    Used in :doc:`/book/physics` and :doc:`/book/worked_example`.
    """
    compute = cost.flops / spec.peak_flops
    memory = cost.bytes / spec.bandwidth_bytes_s
    time = max(compute, memory)
    return RooflinePoint(cost.flops, cost.bytes, compute, memory, time, time if compute >= memory else 0.0,
                         tokens_out, spec.power_cap_w)


def _from_arrays(flops: np.ndarray, nbytes: np.ndarray, spec: GpuSpec, tokens_out: int) -> RooflinePoint:
    compute = flops / spec.peak_flops
    memory = nbytes / spec.bandwidth_bytes_s
    time = np.maximum(compute, memory)
    return RooflinePoint(float(flops.sum()), float(nbytes.sum()), float(compute.sum()), float(memory.sum()),
                         float(time.sum()), float(time[compute >= memory].sum()), tokens_out, spec.power_cap_w)


def chunk_sizes(batch: int, n_in: int, prefill_tokens: int | None) -> list[int]:
    """Requests per prefill chunk: the torch engine prefills ``max(1, prefill_tokens // n_in)``
    requests at a time (all of them at once when ``prefill_tokens`` is None)."""
    C.check_positive(batch=batch, n_in=n_in)
    if prefill_tokens is None:
        return [batch]
    C.check_positive(prefill_tokens=prefill_tokens)
    chunk = max(1, prefill_tokens // n_in)
    sizes = [chunk] * (batch // chunk)
    if batch % chunk:
        sizes.append(batch % chunk)
    return sizes


def wave_sizes(n_req: int, waves: int) -> list[int]:
    """Requests per wave when ``n_req`` requests run in ``waves`` balanced waves (as the sweep's
    complete runs do: ``ceil(n_req / waves)`` each, the last one the remainder)."""
    C.check_positive(n_req=n_req, waves=waves)
    if waves > n_req:
        raise ValueError(f"{waves} waves for {n_req} requests leave a wave empty")
    size = math.ceil(n_req / waves)
    sizes = [size] * (waves - 1)
    sizes.append(n_req - sum(sizes))
    if sizes[-1] < 1:
        raise ValueError(f"{n_req} requests do not split into {waves} waves of {size}")
    return sizes


def prefill_bound(arch: Architecture, n_in: int, batch: int, spec: GpuSpec, prefill_tokens: int | None = 16384,
                  method: str = "exact") -> RooflinePoint:
    """The roofline of the prefill of one wave of ``batch`` requests, chunk by chunk.

    Each chunk reads the weights once (:func:`energybook.model.complexity.prefill`) and yields
    one output token per request.

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        batch: Requests in the wave.
        spec: The GPU.
        prefill_tokens: Prompt tokens per chunk (the engine's setting; None: one chunk).
        method: ``"exact"`` or ``"textbook"`` counts.
    """
    parts = [step(C.prefill(arch, n_in, b, method), spec, tokens_out=b) for b in chunk_sizes(batch, n_in,
                                                                                             prefill_tokens)]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _affine_pieces(arch: Architecture, first: int, last: int, method: str) -> list[tuple[int, int]]:
    """Context ranges on which a decode step's FLOPs and bytes are affine in the context."""
    window = arch.sliding_window if method == "exact" and arch.sliding_window else None
    if window is not None and first < window - 1 < last:
        return [(first, window - 1), (window - 1, last)]
    return [(first, last)]


def decode_costs(arch: Architecture, n_in: int, n_out: int, batch: int, method: str = "exact"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLOPs and bytes of every decode step of one wave: contexts n_in .. n_in + n_out - 2.

    A request's first output token comes from the prefill, so there are ``n_out - 1`` steps.
    Every count of :func:`energybook.model.complexity.decode_step` is affine in the context
    (piecewise, split at a sliding window), so each step is interpolated exactly between two
    calls.

    Returns:
        (contexts, flops, bytes): arrays of length ``n_out - 1`` (tokens, FLOPs, bytes).
    """
    C.check_positive(n_in=n_in, n_out=n_out, batch=batch)
    contexts = np.arange(n_in, n_in + n_out - 1)
    flops = np.zeros(len(contexts))
    nbytes = np.zeros(len(contexts))
    if not len(contexts):
        return contexts, flops, nbytes
    for a, b in _affine_pieces(arch, int(contexts[0]), int(contexts[-1]), method):
        ca, cb = C.decode_step(arch, a, batch, method), C.decode_step(arch, b, batch, method)
        sel = (contexts >= a) & (contexts <= b)
        frac = (contexts[sel] - a) / (b - a) if b > a else np.zeros(int(sel.sum()))
        flops[sel] = ca.flops + frac * (cb.flops - ca.flops)
        nbytes[sel] = ca.bytes + frac * (cb.bytes - ca.bytes)
    return contexts, flops, nbytes


def decode_bound(arch: Architecture, n_in: int, n_out: int, batch: int, spec: GpuSpec,
                 method: str = "exact") -> RooflinePoint:
    """The roofline of the ``n_out - 1`` decode steps of one wave of ``batch`` requests.

    Each step's time is ``max(FLOPs / peak, bytes / bandwidth)``; the steps are summed.

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        batch: Requests decoded together.
        spec: The GPU.
        method: ``"exact"`` or ``"textbook"`` counts.
    """
    _, flops, nbytes = decode_costs(arch, n_in, n_out, batch, method)
    return _from_arrays(flops, nbytes, spec, tokens_out=batch * (n_out - 1))


def point_bound(arch: Architecture, n_in: int, n_out: int, spec: GpuSpec, n_req: int = 1000,
                batch: int | None = None, waves: int | None = None, prefill_tokens: int | None = 16384,
                method: str = "exact") -> PointBound:
    """The roofline of a whole grid point: ``n_req`` requests of (n_in, n_out), wave by wave.

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        spec: The GPU.
        n_req: Requests (the study's protocol: 1000).
        batch: Requests per wave (a measured grid's ``batch`` column); ``n_req`` when None.
        waves: Waves (the ``waves`` column); ``ceil(n_req / batch)`` when None.
        prefill_tokens: Prompt tokens per prefill chunk (None: a wave's prefill in one chunk).
        method: ``"exact"`` or ``"textbook"`` counts.

    Returns:
        The prefill and decode rooflines, summed over the waves.

    Used in :doc:`/book/physics` and :doc:`/book/worked_example`.
    """
    C.check_positive(n_in=n_in, n_out=n_out, n_req=n_req)
    batch = n_req if batch is None else batch
    C.check_positive(batch=batch)
    waves = math.ceil(n_req / batch) if waves is None else waves
    sizes = wave_sizes(n_req, waves)
    if max(sizes) > batch:
        raise ValueError(f"{n_req} requests in {waves} waves need {max(sizes)} per wave, more than batch {batch}")
    prefill = decode = None
    cache: dict[int, tuple[RooflinePoint, RooflinePoint]] = {}
    for b in sizes:
        if b not in cache:
            cache[b] = (prefill_bound(arch, n_in, b, spec, prefill_tokens, method),
                        decode_bound(arch, n_in, n_out, b, spec, method))
        p, d = cache[b]
        prefill = p if prefill is None else prefill + p
        decode = d if decode is None else decode + d
    return PointBound(n_in, n_out, n_req, max(sizes), waves, prefill, decode)


def grid_bounds(arch: Architecture, points: pd.DataFrame, spec: GpuSpec, prefill_tokens: int | None = 16384,
                method: str = "exact") -> pd.DataFrame:
    """The roofline of every point of a table, with the batch and waves each point ran with.

    Args:
        arch: The architecture.
        points: One row per point with ``n_in``, ``n_out`` (tokens) and optionally ``n_req``,
            ``batch``, ``waves`` (a measured grid; defaults 1000 requests in one wave).
        spec: The GPU.
        prefill_tokens: Prompt tokens per prefill chunk.
        method: ``"exact"`` or ``"textbook"`` counts.

    Returns:
        One row per point: ``n_in``, ``n_out``, ``n_req``, ``batch``, ``waves``, ``prefill_s``,
        ``decode_s``, ``time_s`` (seconds), ``prefill_bound``, ``decode_bound`` (``"compute"``
        or ``"memory"``), ``energy_j`` (joules at the cap), ``tokens_per_j`` and ``j_per_token``
        (per output token), ``prefill_share`` (prefill's part of the time).

    Used in :doc:`/book/physics`.
    """
    missing = [c for c in ("n_in", "n_out") if c not in points.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}")
    rows = []
    for r in points.itertuples(index=False):
        n_req = int(getattr(r, "n_req", 1000))
        batch = int(getattr(r, "batch", n_req))
        waves = getattr(r, "waves", None)
        pb = point_bound(arch, int(r.n_in), int(r.n_out), spec, n_req=n_req, batch=batch,
                         waves=None if waves is None else int(waves), prefill_tokens=prefill_tokens, method=method)
        t = pb.total
        rows.append(dict(n_in=pb.n_in, n_out=pb.n_out, n_req=n_req, batch=pb.batch, waves=pb.waves,
                         prefill_s=pb.prefill.time_s, decode_s=pb.decode.time_s, time_s=t.time_s,
                         prefill_bound=pb.prefill.bound, decode_bound=pb.decode.bound, energy_j=t.energy_j,
                         tokens_per_j=n_req * pb.n_out / t.energy_j, j_per_token=t.energy_j / (n_req * pb.n_out),
                         prefill_share=pb.prefill.time_s / t.time_s))
    return pd.DataFrame(rows)


def measuring_bounds(arch: Architecture, points: pd.DataFrame, spec: GpuSpec, prefill_tokens: int | None = 16384,
                     method: str = "exact") -> pd.DataFrame:
    """The roofline of what a sweep in prefix mode measures: one wave per (n_in, batch) group.

    In prefix mode (the grids' default) the points of one prompt length and batch share one measured wave, run
    to the group's longest output; shorter outputs are read off its prefix, and the other waves of a point are
    not measured. The sum of ``time_s`` is the shortest time the sweep's measured windows can take on ``spec``.

    Args:
        arch: The architecture.
        points: One row per point with ``n_in``, ``n_out`` (tokens) and ``batch`` (requests per wave; 1000 when
            absent).
        spec: The GPU.
        prefill_tokens: Prompt tokens per prefill chunk.
        method: ``"exact"`` or ``"textbook"`` counts.

    Returns:
        One row per group, by ``n_in`` then ``batch``: ``n_in``, ``batch``, ``n_out`` (the group's longest, tokens),
        ``points``, ``prefill_s``, ``decode_s`` and ``time_s`` (seconds of one wave at the roofline).

    Used in :doc:`/book/comparison`.
    """
    missing = [c for c in ("n_in", "n_out") if c not in points.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}")
    table = points.assign(batch=points["batch"] if "batch" in points.columns else 1000)
    rows = []
    for (n_in, batch), g in table.groupby(["n_in", "batch"], sort=True):
        n_in, batch, n_out = int(n_in), int(batch), int(g["n_out"].max())
        pre = prefill_bound(arch, n_in, batch, spec, prefill_tokens, method)
        dec = decode_bound(arch, n_in, n_out, batch, spec, method)
        rows.append(dict(n_in=n_in, batch=batch, n_out=n_out, points=len(g), prefill_s=pre.time_s,
                         decode_s=dec.time_s, time_s=pre.time_s + dec.time_s))
    return pd.DataFrame(rows)
