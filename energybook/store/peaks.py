"""A GPU's measured peaks (:class:`Peaks`), kept beside the data: ``<data>/peaks/<gpu-uuid>.json``.

A peaks file describes one GPU, named by its UUID: copy bandwidth, bf16 matmul rate, idle power, power cap, SM
clock under load and memory size, with the provenance of the run that measured them (``energybook peaks``,
:func:`energybook.measure.peaks.measure_peaks`). Sweeps record which peaks file describes their GPU.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from energybook.store.schema import DataError
from energybook.store.workspace import Workspace, slug
from energybook.store.writer import _atomic_write

SCHEMA = "energybook.peaks/1"


@dataclass(frozen=True)
class Peaks:
    """What a model of one GPU needs, measured on it.

    Attributes:
        gpu: The GPU's name (NVML).
        gpu_uuid: Its UUID (NVML).
        copy_bytes_per_s: Device-to-device copy bandwidth, bytes read plus written per second.
        matmul_flops: bf16 matrix-product rate (FLOP/s) of ``matmul_n``-cubed products.
        idle_power_w: Mean power with nothing running (watts).
        power_limit_w: The enforced power cap (watts).
        sm_clock_mhz: Mean SM clock while the matrix products ran (MHz).
        matmul_power_w: Mean power while the matrix products ran (watts).
        copy_power_w: Mean power while the copies ran (watts).
        memory_bytes: Device memory (bytes).
        matmul_n: Side of the square matrices (elements).
        copy_bytes: Bytes of one copy's source.
        window_s: Seconds each rate was measured over (one NVML window per rate).
        provenance: Where, when and how (driver, library versions, commit, command, date).
    """

    gpu: str
    gpu_uuid: str
    copy_bytes_per_s: float
    matmul_flops: float
    idle_power_w: float
    power_limit_w: float
    sm_clock_mhz: float
    matmul_power_w: float
    copy_power_w: float
    memory_bytes: int
    matmul_n: int
    copy_bytes: int
    window_s: float
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("gpu", "gpu_uuid"):
                if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
                    raise ValueError(f"{f.name} must be a name on one line, got {value!r}")
            elif f.name != "provenance":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value <= 0:
                    raise ValueError(f"{f.name} must be a positive finite number, got {value!r}")

    def to_record(self) -> dict[str, Any]:
        """The JSON the peaks file holds."""
        return {"schema": SCHEMA, **dataclasses.asdict(self)}


def peaks_path(workspace: Workspace | str | Path | None, gpu_uuid: str) -> Path:
    """``<data>/peaks/<gpu-uuid>.json``."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    return ws.inside(ws.root / "peaks" / f"{slug(gpu_uuid)}.json")


def save_peaks(peaks: Peaks, workspace: Workspace | str | Path | None) -> Path:
    """Write ``peaks`` to its file (atomically; an older file of the same GPU is replaced). Returns the path."""
    path = peaks_path(workspace, peaks.gpu_uuid)
    _atomic_write(path, json.dumps(peaks.to_record(), indent=1, sort_keys=True) + "\n")
    return path


def load_peaks(path: str | Path) -> Peaks:
    """The peaks a file holds.

    Raises:
        DataError: the file is not a peaks file of this schema, or a value is missing or impossible (edited or
            corrupt); the message names the file and says to measure again with ``energybook peaks``.
    """
    path = Path(path)
    again = "measure them again with `energybook peaks` on that GPU"
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable peaks file ({exc}); {again}") from None
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        raise DataError(f"{path}: not an energybook peaks file (schema {SCHEMA}); {again}")
    names = {f.name for f in dataclasses.fields(Peaks)}
    missing = sorted(names - set(rec) - {"provenance"})
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)}; {again}")
    try:
        return Peaks(**{k: v for k, v in rec.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {exc}; {again}") from None


def find_peaks(workspace: Workspace | str | Path | None, gpu_uuid: str) -> Path | None:
    """The peaks file of this GPU in the workspace, or None."""
    path = peaks_path(workspace, gpu_uuid)
    return path if path.is_file() else None
