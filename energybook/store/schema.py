"""The results file's schema: its columns (:class:`Row`), the type and range of every cell, its file names,
and the checks of one row against the file's sidecar (:class:`RowChecker`).

A cell is refused when it is not of its column's type (non-negative integers, finite numbers,
``True``/``False``), when it is impossible (energy or duration not positive, a negative power, energy per
token or time), or when a text cell holds a control character (a newline in a model's name would split the
row and strand the file). The writer (:mod:`~energybook.store.writer`) and the loader
(:mod:`~energybook.store.loader`) apply the same checks.

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import numbers
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The schema the writer writes (sidecar key ``schema``).
SCHEMA = "energybook.measured/2"
#: The first schema: files without the :data:`SCHEMA2_COLUMNS`; they load, but are not appended to.
SCHEMA1 = "energybook.measured/1"
_SCHEMA_PREFIX = "energybook.measured/"


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
#: Every row has them; other cells may be empty (missing). A point without its energy or time is not a point.
_REQUIRED = {"model", "n_in", "n_out", "rep", "energy_j", "duration_s"}
_POSITIVE = {"n_in", "n_out", "n_req", "energy_j", "duration_s"}
#: Real columns that cannot be negative (temperatures can, in Celsius).
_NON_NEGATIVE = {"energy_j_power500", "energy_j_power100", "j_per_token", "tokens_per_j", "power_w",
                 "prefill_energy_j", "prefill_s", "decode_energy_j", "decode_s", "window_s", "sm_clock_mhz",
                 "power_limit_w"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Provenance keys that are also cells of every row.
_ROW_FIELDS = ("model", "gpu", "gpu_uuid")
_PART = re.compile(r"^(?P<stem>.+)\.part-(?P<rank>[0-9]+)$")
_UINT = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_HEADER = ",".join(COLUMNS) + "\n"


class DataError(ValueError):
    """A results file or its sidecar is missing, corrupt, or not real measurements."""


class LockedError(DataError):
    """Another writer holds a results file's lock (a sweep is writing it)."""

def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sidecar_path(csv_path: Path) -> Path:
    """The provenance sidecar of a results CSV (same name, ``.json``)."""
    return Path(csv_path).with_suffix(".json")


def lock_path(csv_path: Path) -> Path:
    """The lock file of a results CSV: ``.<name>.lock`` beside it (``.grid.csv.lock``)."""
    p = Path(csv_path)
    return p.with_name(f".{p.name}.lock")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _point_key(key: tuple[int, int, int]) -> str:
    """The point log's name of a key: ``"NINxNOUT#REP"``."""
    return "{}x{}#{}".format(*key)


def row_key(row: dict[str, Any]) -> tuple[int, int, int]:
    """The key (n_in, n_out, rep) of a row."""
    return tuple(int(row[k]) for k in KEY)


def part_of(path: Path) -> Path | None:
    """The results file a part file of a torchrun sweep belongs to (``grid.part-1.csv`` -> ``grid.csv``), or
    None when ``path`` is not a part file."""
    path = Path(path)
    m = _PART.match(path.stem)
    return path.with_name(m.group("stem") + path.suffix) if m else None


def protocol_problem(prov: dict[str, Any], key: tuple[int, int, int]) -> str | None:
    """Why a key is not a point of a sidecar's protocol (None when it is, or the protocol does not say).

    The protocol's points are ``pairs`` (when given) or every ``n_in`` by ``n_out``, for reps below ``repeats``.
    """
    proto = prov.get("protocol")
    if not isinstance(proto, dict):
        return None
    n_in, n_out, rep = key
    pairs = proto.get("pairs")
    if isinstance(pairs, list) and pairs:
        if [n_in, n_out] not in [list(p) for p in pairs]:
            return f"(n_in, n_out) = ({n_in}, {n_out}) is not one of its pairs"
    elif isinstance(proto.get("n_in"), list) and isinstance(proto.get("n_out"), list):
        if n_in not in proto["n_in"] or n_out not in proto["n_out"]:
            return f"n_in {n_in} or n_out {n_out} is not in its n_in {proto['n_in']} and n_out {proto['n_out']}"
    if isinstance(proto.get("repeats"), int) and rep >= proto["repeats"]:
        return f"rep {rep} is not below its repeats {proto['repeats']}"
    return None



def _fmt(value: Any, column: str | None = None) -> str:
    """A value as a CSV cell: ``None`` and NaN empty, floats rounded to 6 decimals, integral floats of
    integer columns as integers, numpy scalars as Python numbers."""
    if value is None:
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return ""
        if column in _INT and v.is_integer():
            return str(int(v))
        return repr(round(v, 6))
    return str(value)


def _cell_problem(column: str, text: str) -> str | None:
    """Why a CSV cell is not a valid value of its column (None when it is)."""
    if text == "":
        return "a value is required" if column in _REQUIRED else None
    if column in _INT:
        if not _UINT.fullmatch(text):
            return "not a non-negative integer"
        if column in _POSITIVE and int(text) == 0:
            return "must be positive"
    elif column == "tokens_match":
        if text not in ("True", "False"):
            return "not True or False"
    elif column in _STR:
        if _CONTROL.search(text):
            return "contains a control character (a newline, tab or the like): write it without"
    elif not _DECIMAL.fullmatch(text):
        return "not a finite number" if text.lower().lstrip("+-") in ("inf", "infinity", "nan") else "not a number"
    elif not math.isfinite(float(text)):
        return "not a finite number"
    elif column in _POSITIVE and float(text) <= 0:
        return "must be positive (a measured point takes energy and time)"
    elif column in _NON_NEGATIVE and float(text) < 0:
        return "must not be negative"
    return None


def shown(text: Any) -> str:
    """A value as an error message shows it: as is, or as its ``repr`` when it holds control characters (so
    every message stays one line)."""
    text = str(text)
    return repr(text) if _CONTROL.search(text) else text


def check_names(path: Path, provenance: dict[str, Any]) -> None:
    """Refuse a provenance whose model, GPU or GPU UUID (cells of every row) holds a control character.

    Raises:
        DataError: naming the value and what to do.
    """
    for key in _ROW_FIELDS:
        value = provenance.get(key)
        if value is not None and _CONTROL.search(str(value)):
            raise DataError(f"{path}: the {key} {str(value)!r} contains a control character (a newline, tab or the "
                            f"like), which would split its rows and strand the file: name it without control "
                            "characters")


def _schema_of(prov: dict[str, Any]) -> str:
    return str(prov.get("schema", SCHEMA1))


def _uuids(prov: dict[str, Any]) -> set[str]:
    """GPU UUIDs a sidecar lists: its own, every run's and every point's (a file may be resumed on another
    board)."""
    found = {prov.get("gpu_uuid")}
    found |= {r.get("gpu_uuid") for r in prov.get("runs") or [] if isinstance(r, dict)}
    points = prov.get("points")
    if isinstance(points, dict):
        found |= {p.get("gpu_uuid") for p in points.values() if isinstance(p, dict)}
    return {str(u) for u in found if u}


def _repair(path: Path) -> str:
    side = sidecar_path(path)
    return (f"to repair: restore both {path.name} and {side.name} from git (`git restore {path} {side}`), or "
            "move both aside and remeasure")


def _decode(path: Path, data: bytes) -> tuple[list[str], bool]:
    """The lines of a CSV's bytes (without line ends), and whether the last line is complete."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); {_repair(path)}") from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()
    return lines, complete


def _header(path: Path, line: str, schema: str) -> list[str]:
    """The columns of a header line, checked: every column the schema has, no unknown or repeated ones."""
    cols = next(csv.reader([line])) if line else []
    required = COLUMNS if schema == SCHEMA else [c for c in COLUMNS if c not in SCHEMA2_COLUMNS]
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataError(f"{path}: columns {missing} are missing; this is not an energybook results file (or an "
                        "older schema): move it aside and rerun the sweep")
    unknown = [c for c in cols if c not in COLUMNS]
    repeated = sorted({c for c in cols if cols.count(c) > 1})
    if unknown or repeated:
        raise DataError(f"{path}: columns {unknown or repeated} are {'unknown' if unknown else 'repeated'}; this "
                        "is not an energybook results file: move it aside and rerun the sweep")
    return cols


class RowChecker:
    """Checks the rows of one file against its sidecar: complete lines, cell types, unique keys, and
    model, GPU and GPU UUID equal to the sidecar's.

    Args:
        path: The CSV (for messages).
        header: Its columns.
        prov: Its sidecar.
        seen: Keys already in the file (key -> (line, row)); new rows are added to it.
    """

    def __init__(self, path: Path, header: list[str], prov: dict[str, Any],
                 seen: dict[tuple[int, int, int], tuple[int, dict[str, str]]] | None = None):
        self.path, self.header = path, header
        self.model = prov.get("model")
        self.gpu = prov.get("gpu")
        self.uuids = _uuids(prov)
        self.seen = {} if seen is None else seen

    def problem(self, row: dict[str, str]) -> tuple[str, str] | None:
        """The first bad cell of a row as (``column=value``, why), or None."""
        for c in self.header:
            why = _cell_problem(c, row[c])
            if why:
                return f"{c}={shown(row[c])}", why
        if self.model is not None and row["model"] != str(self.model):
            return f"model={shown(row['model'])}", f"the sidecar's model is {self.model!r}"
        if self.gpu is not None and row.get("gpu") and row["gpu"] != str(self.gpu):
            return f"gpu={row['gpu']}", f"the sidecar's GPU is {self.gpu!r}"
        if self.uuids and row.get("gpu_uuid") and row["gpu_uuid"] not in self.uuids:
            return f"gpu_uuid={row['gpu_uuid']}", f"the sidecar lists GPUs {sorted(self.uuids)}"
        return None

    def line(self, number: int, text: str) -> tuple[tuple[int, int, int], dict[str, str]]:
        """Check one data line; returns its key and row.

        Raises:
            DataError: an empty or incomplete line, a bad cell, or a key already seen.
        """
        where = f"{self.path}:{number}"
        if text == "":
            raise DataError(f"{where} is an empty line; results files have none")
        cells = next(csv.reader([text]))
        if len(cells) != len(self.header):
            raise DataError(f"{where} has {len(cells)} fields where the header has {len(self.header)}: an "
                            "incomplete or glued line")
        row = dict(zip(self.header, cells))
        bad = self.problem(row)
        if bad:
            raise DataError(f"{where} {bad[0]}: {bad[1]}")
        key = row_key(row)
        if key in self.seen:
            first, other = self.seen[key]
            how = "with other values" if other != row else "identically"
            raise DataError(f"{where} repeats the point n_in={key[0]}, n_out={key[1]}, rep={key[2]} of line {first} "
                            f"{how}: every point is measured once per rep (duplicates are never averaged)")
        self.seen[key] = (number, row)
        return key, row



def pending_path(csv_path: Path) -> Path:
    """The sidecar a merge writes before it replaces the CSV (``.<stem>.json.pending``); the next writer
    installs it when the CSV matches it (the merge was cut short after replacing the CSV), else removes it."""
    side = sidecar_path(csv_path)
    return side.with_name(f".{side.name}.pending")
