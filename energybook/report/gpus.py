"""One workload on two GPUs: what the roofline says a GPU's bandwidth, matmul rate and power cap should change,
against what changed.

The inputs are the engine benchmark's runs (``benchmarks/engine_targets.py``, one ``engine_targets.json`` per
GPU, under ``benchmarks/results/`` and ``benchmarks/results/<gpu>/``): the four corners of Llama 3.2 1B's grid
with the lean engine, each with its tokens/J, power, time, batch and clocks, and the GPU's own measured peaks
(a device-to-device copy and an 8192^3 bf16 matmul) and power limit.

For each corner the roofline (:mod:`energybook.model.roofline`) is evaluated on each GPU's measured peaks at its
power limit, with the batch and waves that GPU ran. Its ratio between two GPUs is the physics' prediction of the
ratio of tokens/J, under two assumptions that the page tests: both GPUs run at their power limit, and the engine
reaches the same fraction of each GPU's roofline. :func:`what_if` carries the same prediction to GPUs that were
never measured, given only their bandwidth, matmul rate and power limit relative to a measured one; its numbers
are predictions and are labelled so.

Used in :doc:`/book/gpus`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from energybook.model import roofline as RL
from energybook.model.architecture import load as load_architecture
from energybook.report.provenance import Source

#: The corners of the grid that ``benchmarks/engine_targets.py`` measures, as (n_in, n_out).
CORNERS = ((64, 256), (64, 4096), (4096, 64), (4096, 4096))
#: The measurements of each corner that a comparison keeps (units in the names, or tokens/J).
CORNER_FIELDS = ("tokens_per_j", "power_w", "duration_s", "energy_j", "batch", "waves", "prefill_s", "decode_s",
                 "sm_clock_mhz", "temperature_c")


@dataclass(frozen=True)
class GpuRun:
    """One engine benchmark run on one GPU: its measured peaks and the four corners of one model.

    Attributes:
        gpu: The GPU's name as NVML reports it.
        uuid: The board's UUID.
        engine: The engine measured (``"lean"``).
        model: The model of the corners.
        commit: The energybook commit that measured it.
        date: When it started (UTC, ISO 8601).
        power_limit_w: The power limit NVML reported (watts).
        copy_bytes_s: Measured device-to-device copy bandwidth, bytes read + written (bytes/s).
        matmul_flops_s: Measured bf16 matmul rate, 8192^3 (FLOP/s).
        n_req: Requests per corner.
        corners: One row per corner: ``n_in``, ``n_out`` and :data:`CORNER_FIELDS`.
        file: The file it was read from.
    """

    gpu: str
    uuid: str
    engine: str
    model: str
    commit: str
    date: str
    power_limit_w: float
    copy_bytes_s: float
    matmul_flops_s: float
    n_req: int
    corners: pd.DataFrame = field(repr=False)
    file: str = ""

    @property
    def source(self) -> Source:
        """The run's GPU, UUID and engine, for :func:`energybook.report.provenance.source_line`."""
        return Source(self.model, self.gpu, self.uuid, self.engine)

    @property
    def spec(self) -> RL.GpuSpec:
        """The roofline's GPU: the measured peaks at the measured power limit."""
        return RL.GpuSpec(name=self.gpu, peak_flops=self.matmul_flops_s, bandwidth_bytes_s=self.copy_bytes_s,
                          power_cap_w=self.power_limit_w,
                          source=f"measured by benchmarks/engine_targets.py on {self.uuid} ({self.date})")

    @property
    def label(self) -> str:
        """A short name for tables and legends: ``"H100 (GPU-b8cceecb)"``."""
        short = self.gpu.replace("NVIDIA ", "").split()[0]
        return f"{short} ({self.uuid[:12]})"


def read_run(path: str | Path, engine: str = "lean") -> GpuRun:
    """One ``engine_targets.json`` as a :class:`GpuRun` of ``engine``'s corners.

    Raises:
        ValueError: a file without the engine's corners, its peaks or its GPU, naming what is missing and the
            command that writes a complete one.
    """
    path = Path(path)
    d = json.loads(path.read_text())
    rec = (d.get("engines") or {}).get(engine) or {}
    corners = rec.get("corners") or {}
    peaks = d.get("peaks") or {}
    env = d.get("environment") or {}
    missing = [k for k, v in ((f"engines.{engine}.corners", corners), ("peaks.copy_Bps", peaks.get("copy_Bps")),
                              ("peaks.matmul_flops", peaks.get("matmul_flops")), ("gpu_uuid", d.get("gpu_uuid")),
                              ("environment.power_limit_w", env.get("power_limit_w"))) if not v]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)}; rerun `python -m benchmarks.engine_targets --engines "
                         f"{engine} --out DIR` on the GPU")
    rows = []
    for key, c in corners.items():
        n_in, n_out = (int(x) for x in key.split("x"))
        rows.append(dict(n_in=n_in, n_out=n_out, **{k: c.get(k, np.nan) for k in CORNER_FIELDS}))
    table = pd.DataFrame(rows).sort_values(["n_in", "n_out"]).reset_index(drop=True)
    return GpuRun(gpu=str(d["gpu"]), uuid=str(d["gpu_uuid"]), engine=engine, model=str(d.get("model", "?")),
                  commit=str(d.get("commit", "")), date=str(env.get("date", "")),
                  power_limit_w=float(env["power_limit_w"]), copy_bytes_s=float(peaks["copy_Bps"]),
                  matmul_flops_s=float(peaks["matmul_flops"]), n_req=int((d.get("protocol") or {}).get("n_req", 1000)),
                  corners=table, file=str(path))


def find_runs(results: str | Path, engine: str = "lean") -> list[GpuRun]:
    """Every engine benchmark run under ``results`` (its ``engine_targets.json`` and those of its sub-folders, one
    per GPU) that has ``engine``'s corners and peaks, ordered by GPU name and date."""
    root = Path(results)
    runs = []
    for path in sorted(root.glob("engine_targets.json")) + sorted(root.glob("*/engine_targets.json")):
        try:
            runs.append(read_run(path, engine))
        except ValueError:
            continue
    return sorted(runs, key=lambda r: (r.gpu, r.date))


def roofline_corners(run: GpuRun) -> pd.DataFrame:
    """The roofline of each of ``run``'s corners on its own GPU, with the batch and waves it ran.

    Columns: ``n_in``, ``n_out``, ``bound_s`` (roofline time, seconds), ``bound_tokens_per_j`` (at the power
    limit), ``memory_share`` (the share of the roofline time in memory-bound steps), ``measured_s``,
    ``fraction`` (roofline time over measured time: the share of the roofline the engine reached).
    """
    arch = load_architecture(run.model)
    spec = run.spec
    rows = []
    for r in run.corners.itertuples():
        b = RL.point_bound(arch, int(r.n_in), int(r.n_out), spec, n_req=run.n_req, batch=int(r.batch),
                           waves=int(r.waves)).total
        rows.append(dict(n_in=int(r.n_in), n_out=int(r.n_out), bound_s=b.time_s, bound_tokens_per_j=b.tokens_per_j,
                         memory_share=1 - b.compute_bound_s / b.time_s, measured_s=float(r.duration_s),
                         fraction=b.time_s / float(r.duration_s)))
    return pd.DataFrame(rows)


def compare(a: GpuRun, b: GpuRun) -> pd.DataFrame:
    """Corner by corner, ``b`` against ``a``: measured tokens/J and its ratio, against the roofline's ratio.

    Columns: ``n_in``, ``n_out``; ``tokens_per_j_a``, ``tokens_per_j_b``, ``power_w_a``, ``power_w_b`` (measured);
    ``measured_ratio`` (b over a); ``predicted_ratio`` (the roofline's tokens/J at each power limit, b over a);
    ``bandwidth_ratio`` and ``matmul_ratio`` (the measured peaks, b over a: what a purely memory-bound or a purely
    compute-bound point would gain); ``fraction_a``, ``fraction_b`` (each GPU's share of its own roofline);
    ``speed_ratio`` (a's time over b's) and ``power_ratio`` (a's mean power over b's): their product is the measured
    ratio, so the table shows whether a change came through speed or through power.

    Raises:
        ValueError: when the two runs are of different models or have no corner in common.
    """
    if a.model != b.model:
        raise ValueError(f"the runs measured different models ({a.model}, {b.model}); compare one model")
    ra, rb = roofline_corners(a), roofline_corners(b)
    ca = a.corners.merge(ra, on=["n_in", "n_out"])
    cb = b.corners.merge(rb, on=["n_in", "n_out"])
    m = ca.merge(cb, on=["n_in", "n_out"], suffixes=("_a", "_b"))
    if m.empty:
        raise ValueError(f"{a.file} and {b.file} share no corner")
    out = pd.DataFrame({"n_in": m["n_in"], "n_out": m["n_out"],
                        "tokens_per_j_a": m["tokens_per_j_a"], "tokens_per_j_b": m["tokens_per_j_b"],
                        "power_w_a": m["power_w_a"], "power_w_b": m["power_w_b"],
                        "measured_ratio": m["tokens_per_j_b"] / m["tokens_per_j_a"],
                        "predicted_ratio": m["bound_tokens_per_j_b"] / m["bound_tokens_per_j_a"],
                        "bandwidth_ratio": b.copy_bytes_s / a.copy_bytes_s,
                        "matmul_ratio": b.matmul_flops_s / a.matmul_flops_s,
                        "memory_share_a": m["memory_share_a"],
                        "fraction_a": m["fraction_a"], "fraction_b": m["fraction_b"],
                        "speed_ratio": m["duration_s_a"] / m["duration_s_b"],
                        "power_ratio": m["power_w_a"] / m["power_w_b"]})
    out.attrs.update(a=a.label, b=b.label, sources=[a.source, b.source])
    return out


def what_if(run: GpuRun, bandwidth: float = 1.0, matmul: float = 1.0, power: float = 1.0) -> pd.DataFrame:
    """Predicted tokens/J at ``run``'s corners on a GPU with ``bandwidth``, ``matmul`` and ``power`` times
    ``run``'s measured copy bandwidth, matmul rate and power limit, and the same memory.

    The prediction keeps the batch and waves that ``run`` measured and assumes the engine reaches the same share of
    the new GPU's roofline as it reached of ``run``'s, at the new power limit: ``tokens_per_j = measured x
    (roofline tokens/J on the new GPU) / (roofline tokens/J on the measured one)``. It is a prediction, not a
    measurement; a GPU that does not reach its power limit (a small batch on a large GPU) would do better than it
    says, one whose kernels reach a smaller share of its peaks worse.

    Columns: ``n_in``, ``n_out``, ``measured_tokens_per_j``, ``predicted_tokens_per_j``, ``ratio``.

    Raises:
        ValueError: a non-positive multiplier.
    """
    for name, value in (("bandwidth", bandwidth), ("matmul", matmul), ("power", power)):
        if not (value > 0 and np.isfinite(value)):
            raise ValueError(f"{name} must be a positive multiplier, got {value!r}")
    other = GpuRun(gpu=f"{run.gpu} x (bandwidth {bandwidth:g}, matmul {matmul:g}, power {power:g})",
                   uuid="predicted", engine=run.engine, model=run.model, commit=run.commit, date=run.date,
                   power_limit_w=run.power_limit_w * power, copy_bytes_s=run.copy_bytes_s * bandwidth,
                   matmul_flops_s=run.matmul_flops_s * matmul, n_req=run.n_req, corners=run.corners, file="")
    base, new = roofline_corners(run), roofline_corners(other)
    ratio = new["bound_tokens_per_j"].to_numpy() / base["bound_tokens_per_j"].to_numpy()
    return pd.DataFrame({"n_in": base["n_in"], "n_out": base["n_out"],
                         "measured_tokens_per_j": run.corners["tokens_per_j"].to_numpy(),
                         "predicted_tokens_per_j": run.corners["tokens_per_j"].to_numpy() * ratio, "ratio": ratio})


def sensitivity(run: GpuRun, multipliers=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0)) -> pd.DataFrame:
    """:func:`what_if`'s ratio at each corner when one of bandwidth, matmul rate or power limit alone is scaled.

    Columns: ``knob`` (``"bandwidth"``, ``"matmul"``, ``"power"``), ``multiplier``, ``n_in``, ``n_out``, ``ratio``.
    """
    rows = []
    for knob in ("bandwidth", "matmul", "power"):
        for x in multipliers:
            t = what_if(run, **{knob: float(x)})
            rows += [dict(knob=knob, multiplier=float(x), n_in=int(r.n_in), n_out=int(r.n_out), ratio=float(r.ratio))
                     for r in t.itertuples()]
    return pd.DataFrame(rows)


def settings_differences(a: GpuRun, b: GpuRun) -> dict[str, tuple[Any, Any]]:
    """The engine settings and versions that differ between the two runs' files (besides the GPU): what else
    changed between them. Keys name the setting; values are (a's, b's)."""
    def flat(path: str) -> dict[str, Any]:
        d = json.loads(Path(path).read_text())
        settings = ((d.get("engines") or {}).get(a.engine) or {}).get("settings") or {}
        env = d.get("environment") or {}
        keep = {f"engine.{k}": v for k, v in settings.items() if not isinstance(v, (dict, list)) and k != "build_s"}
        keep.update({k: env.get(k) for k in ("driver", "torch", "cuda", "transformers")})
        keep["commit"] = d.get("commit")
        return keep

    fa, fb = flat(a.file), flat(b.file)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
