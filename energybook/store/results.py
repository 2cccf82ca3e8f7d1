"""Measured results on disk: one tidy CSV per (GPU, model, protocol) run plus a provenance sidecar.

Layout: ``data/measured/<gpu-slug>/<model>/<name>.csv`` with ``<name>.json`` beside it. The CSV
holds one row per measured point (columns :data:`COLUMNS`, one vocabulary with the book); the
sidecar records what ran, where, when and how (GPU name and UUID, driver, CUDA, torch,
transformers and energybook versions, engine settings, dtype, weights kind, meter method, the
protocol, start and end time of every point, the command that regenerates the file) and the
sha256 of the CSV.

Rows are appended atomically (temporary file + ``os.replace``), so a sweep killed at any moment
leaves a valid file that a rerun completes.

:func:`load_measured` refuses data that were not measured on a real GPU (simulated meter, CPU
device) unless ``allow_test_data=True`` is passed (tests only), and names the file and the fix
when a CSV or sidecar is corrupt.

Used in :doc:`/book/experiment` and :doc:`/book/status`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEMA = "energybook.measured/2"


@dataclass
class Row:
    """One measured point, as one row of a results CSV. Energies in joules, times in seconds, power in
    watts; lengths and counts in tokens. Fields left at ``None`` are written empty.

    Attributes:
        model: The model's name.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request.
        n_req: Requests of the point.
        batch: Requests per wave (``None`` for an external engine).
        waves: Waves needed for ``n_req`` requests.
        measured_waves: Waves actually run in the window (the rest are counted).
        rep: Repetition index.
        mode: ``prefix``, ``full``, ``prefix+repeat`` or ``external``.
        energy_j: Energy of the whole point by the energy counter (joules).
        energy_j_power500: The same by the study's 500 ms power trapezoid.
        energy_j_power100: The same by the 100 ms power trapezoid.
        duration_s: Time of the whole point (seconds).
        tokens_in: Prompt tokens of the point.
        tokens_out: Output tokens of the point.
        j_per_token: Joules per output token.
        tokens_per_j: Output tokens per joule.
        power_w: Mean power in the window (watts).
        prefill_energy_j: Energy of the prefills (joules).
        prefill_s: Time of the prefills (seconds).
        decode_energy_j: Energy of the decode steps (joules).
        decode_s: Time of the decode steps (seconds).
        window_s: Length of the measured window (seconds).
        repeats: Back-to-back repeats inside the window.
        ticks: Energy-counter updates inside the window.
        temperature_c: Mean GPU temperature (Celsius).
        temperature_max_c: Highest GPU temperature (Celsius).
        sm_clock_mhz: Mean SM clock (MHz).
        power_limit_w: Enforced power limit (watts).
        oom_retries: Times the batch was halved after running out of memory.
        gpu: The GPU's name.
        started_at: UTC start of the point's group.
        finished_at: UTC end of the point.
        gpu_uuid: The UUID of the GPU the meter read (verified against the engine's device).
        engine: The engine's registered name.
        window_kind: ``generation`` (marked by the engine), ``bench`` (an external engine's timed run) or
            ``process`` (a whole command).
        tokens_match: Whether the tokens and requests served equal those asked for.
        meter_method: ``counter`` or ``power100``.
        samples: Power samples inside the window.
        meter_wraps: Counter wrap-arounds inside the sweep so far.
        meter_errors: NVML read failures inside the window.
        throttle_reasons: NVML clock-event reasons seen in the window (``|``-separated).
    """

    model: str
    n_in: int
    n_out: int
    n_req: int
    batch: int | None
    waves: int | None
    measured_waves: int | None
    rep: int
    mode: str
    energy_j: float
    energy_j_power500: float
    energy_j_power100: float
    duration_s: float
    tokens_in: int
    tokens_out: int
    j_per_token: float
    tokens_per_j: float
    power_w: float
    prefill_energy_j: float | None = None
    prefill_s: float | None = None
    decode_energy_j: float | None = None
    decode_s: float | None = None
    window_s: float | None = None
    repeats: int | None = None
    ticks: int | None = None
    temperature_c: float | None = None
    temperature_max_c: float | None = None
    sm_clock_mhz: float | None = None
    power_limit_w: float | None = None
    oom_retries: int | None = None
    gpu: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # schema 2: the GPU's identity, the engine, and what the meter saw in the window
    gpu_uuid: str | None = None
    engine: str | None = None
    window_kind: str | None = None
    tokens_match: bool | None = None
    meter_method: str | None = None
    samples: int | None = None
    meter_wraps: int | None = None
    meter_errors: int | None = None
    throttle_reasons: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict of :data:`COLUMNS`."""
        return dataclasses.asdict(self)


#: Columns of a results CSV, in order (the fields of :class:`Row`).
COLUMNS = [f.name for f in dataclasses.fields(Row)]
#: Columns a schema-1 file (measured before they existed) may lack; they load as missing values.
SCHEMA2_COLUMNS = tuple(COLUMNS[COLUMNS.index("gpu_uuid"):])
KEY = ("n_in", "n_out", "rep")
_INT = {"n_in", "n_out", "n_req", "batch", "waves", "measured_waves", "rep", "tokens_in", "tokens_out", "repeats",
        "ticks", "oom_retries", "samples", "meter_wraps", "meter_errors"}
_STR = {"model", "mode", "gpu", "started_at", "finished_at", "gpu_uuid", "engine", "window_kind", "tokens_match",
        "meter_method", "throttle_reasons"}


class DataError(ValueError):
    """A results file or its sidecar is missing, corrupt, or not real measurements."""




def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sidecar_path(csv_path: Path) -> Path:
    """The provenance sidecar of a results CSV (same name, ``.json``)."""
    return Path(csv_path).with_suffix(".json")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(round(value, 6))
    return str(value)


class ResultsFile:
    """A results CSV and its sidecar, written point by point.

    Args:
        path: The CSV path; its sidecar is the same name with ``.json``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.sidecar = sidecar_path(self.path)

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file (and its lock)."""

    def rows(self) -> list[dict[str, str]]:
        """Rows written so far (strings), empty when the file does not exist yet."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in SCHEMA2_COLUMNS]
            if missing:
                raise DataError(f"{self.path}: columns {missing} are missing; this is not an energybook results "
                                "file (or an older schema): move it aside and rerun the sweep")
            return list(reader)

    def done(self) -> set[tuple[int, int, int]]:
        """Keys (n_in, n_out, rep) of the points already written."""
        return {tuple(int(r[k]) for k in KEY) for r in self.rows()}

    def provenance(self) -> dict[str, Any]:
        """The sidecar as a dict (empty when absent)."""
        if not self.sidecar.exists():
            return {}
        try:
            return json.loads(self.sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.sidecar} is not valid JSON ({exc}); restore it from git or rerun the sweep "
                            "into a new file") from None

    def start(self, provenance: dict[str, Any]) -> None:
        """Create or reopen the file for a sweep; repairs the checksum after an interrupted append.

        Raises:
            DataError: when an existing file was made with another model or protocol.
        """
        old = self.provenance()
        if old:
            for key in ("model", "protocol", "test_data"):
                if key in old and key in provenance and old[key] != provenance[key]:
                    raise DataError(f"{self.path} holds a run with another {key} ({old[key]!r} vs "
                                    f"{provenance[key]!r}): give another --output or move the file aside")
            runs = old.get("runs", [])
            merged = dict(old, **{k: v for k, v in provenance.items() if k != "points"})
            merged["points"] = old.get("points", {})
        else:
            runs = []
            merged = dict(provenance, points={})
        merged["runs"] = runs + [{k: provenance.get(k) for k in ("started_at", "command", "gpu_uuid", "host")}]
        merged["schema"] = SCHEMA
        if not self.path.exists():
            _atomic_write(self.path, ",".join(COLUMNS) + "\n")
        merged["sha256"] = sha256_file(self.path)
        merged["rows"] = len(self.rows())
        _atomic_write(self.sidecar, json.dumps(merged, indent=1, default=str) + "\n")

    def append(self, row: Row | dict[str, Any], point_info: dict[str, Any] | None = None) -> None:
        """Append one finished point (atomically), then update the sidecar's checksum and point log.

        The point log keeps the row's start and finish times, plus ``point_info`` (e.g. the GPU UUID).
        """
        if isinstance(row, Row):
            row = row.to_dict()
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}")
        key = tuple(int(row[k]) for k in KEY)
        if key in self.done():
            raise ValueError(f"point {dict(zip(KEY, key))} is already in {self.path}")
        text = self.path.read_text() if self.path.exists() else ",".join(COLUMNS) + "\n"
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_fmt(row.get(c)) for c in COLUMNS])
        _atomic_write(self.path, text + buf.getvalue())
        prov = self.provenance()
        prov.setdefault("points", {})["{}x{}#{}".format(*key)] = {
            "started_at": row.get("started_at"), "finished_at": row.get("finished_at"), **(point_info or {})}
        prov["sha256"] = sha256_file(self.path)
        prov["rows"] = prov.get("rows", 0) + 1
        _atomic_write(self.sidecar, json.dumps(prov, indent=1, default=str) + "\n")


@dataclass
class MeasuredRun:
    """A loaded results file.

    Attributes:
        data: One row per point (pandas DataFrame, columns :data:`COLUMNS`).
        provenance: The sidecar (dict).
        path: The CSV path.
    """

    data: Any
    provenance: dict[str, Any]
    path: Path

    @property
    def gpu(self) -> str:
        """GPU name the data were measured on."""
        return str(self.provenance.get("gpu", "?"))


def _is_test_data(prov: dict[str, Any]) -> str | None:
    if prov.get("test_data"):
        return "its provenance marks it as test data"
    if str(prov.get("device", "")).startswith("cpu"):
        return "it was run on the CPU"
    if "simulated" in str(prov.get("meter_method", "")) or "fake" in str(prov.get("meter_method", "")):
        return f"its meter was {prov.get('meter_method')!r}"
    return None


def load_measured(path: str | Path, allow_test_data: bool = False):
    """Load a results CSV, or every results CSV under a folder, checked against its sidecar.

    Args:
        path: A results CSV or a folder (searched recursively; the runs are concatenated).
        allow_test_data: Accept data from a simulated meter or the CPU (tests only).

    Returns:
        A :class:`MeasuredRun` for a file; a pandas DataFrame of all rows (with a ``source``
        column) for a folder.

    Raises:
        DataError: missing sidecar, checksum mismatch, missing columns, or test data not allowed.
        FileNotFoundError: when nothing is at ``path``.
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.csv") if sidecar_path(p).exists())
        if not files:
            raise FileNotFoundError(f"no results CSV with a sidecar under {path}")
        frames = []
        for f in files:
            run = load_measured(f, allow_test_data)
            frames.append(run.data.assign(source=str(f.relative_to(path))))
        return pd.concat(frames, ignore_index=True)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}; measure it with `energybook sweep` "
                                "or `energybook measure`")
    side = sidecar_path(path)
    if not side.exists():
        raise DataError(f"{path} has no provenance sidecar ({side.name}); data without provenance are not "
                        "loaded: restore the sidecar from git or remeasure")
    rf = ResultsFile(path)
    prov = rf.provenance()
    rows = rf.rows()  # checks the columns
    digest = sha256_file(path)
    if prov.get("sha256") != digest:
        recorded = str(prov.get("sha256"))[:12]
        raise DataError(f"{path}: sha256 {digest[:12]}... does not match its sidecar ({recorded}...): "
                        "the file was edited or a sweep was interrupted mid-write; rerun the sweep command to "
                        "finish it, or restore both files from git")
    reason = _is_test_data(prov)
    if reason and not allow_test_data:
        raise DataError(f"{path} is not a real GPU measurement ({reason}); pass allow_test_data=True only in tests")
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in COLUMNS:
        if c in _STR:
            continue
        df[c] = pd.to_numeric(df[c], errors="coerce")
        if c in _INT:
            df[c] = df[c].astype("Int64")
    return MeasuredRun(df, prov, path)
