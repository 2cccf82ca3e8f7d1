"""Measured results on disk: one tidy CSV per (GPU, model, protocol) run plus a provenance sidecar.

Layout: ``data/measured/<gpu-slug>/<model>/<name>.csv`` with ``<name>.json`` beside it. The CSV
holds one row per measured point (columns :data:`COLUMNS`, one vocabulary with the book); the
sidecar records what ran, where, when and how (GPU name and UUID, driver, CUDA, torch,
transformers and energybook versions, engine settings, dtype, weights kind, meter method, the
protocol, start and end time of every point, the command that regenerates the file), the sha256,
byte size and row count of the CSV, and its ``schema``.

Writing (:class:`ResultsFile`):

* **one writer**: :meth:`ResultsFile.start` takes an exclusive, non-blocking ``flock`` on a sibling
  lock file (``.<name>.csv.lock``) held until :meth:`ResultsFile.close`; a second writer, in another
  process or the same one, gets a :class:`LockedError` naming the holder. The lock vanishes with its
  process, so a lock file left by a killed sweep is harmless;
* **whole, atomic appends**: each row rewrites the CSV as a temporary file (fsynced, then
  ``os.replace``), so the CSV always holds complete rows; then the sidecar is replaced the same way.
  A kill between the two leaves complete rows after the recorded state, which the next
  :meth:`~ResultsFile.start` records (marked ``recovered`` in the point log);
* **no re-blessing**: :meth:`~ResultsFile.start` accepts an existing CSV only as the recorded state
  (its sha256) plus complete, well-typed rows with new keys. An edited value, a truncated line or a
  deleted row is refused with what differs and how to repair it; the checksum is never recomputed
  over a changed file;
* it never overwrites a ``.json`` that is not an energybook sidecar, and it does not append to a
  schema-1 file (measured before the :data:`SCHEMA2_COLUMNS` existed): those load, but are not resumed.

Reading (:func:`load_measured`): the sha256 against the sidecar, the row count against the sidecar
and its point log, unique keys (n_in, n_out, rep), every row's model, GPU and GPU UUID against the
sidecar, and every cell's type; an error names the file and the first bad line and cell
(``file:line column=value``). It refuses data that were not measured on a real GPU (simulated
meter, CPU device) unless ``allow_test_data=True`` is passed (tests only).

Used in :doc:`/book/experiment` and :doc:`/book/status`.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import io
import json
import logging
import math
import numbers
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS: files can be read, not written
    fcntl = None

logger = logging.getLogger(__name__)

#: The schema this module writes (sidecar key ``schema``).
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
_REQUIRED = {"model", "n_in", "n_out", "rep"}  # every row has them; other cells may be empty (missing)
_POSITIVE = {"n_in", "n_out", "n_req"}
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


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes | str) -> None:
    """Write a whole file atomically: a temporary file beside it (``.<name>.*.tmp``), fsynced, then
    ``os.replace``; readers see the old file or the new one, never a part."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_sidecar(path: Path, prov: dict[str, Any]) -> None:
    """Replace a sidecar (atomically) with ``prov``."""
    _atomic_write(path, json.dumps(prov, indent=1, default=str) + "\n")


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
    elif column not in _STR:
        if _DECIMAL.fullmatch(text):
            if not math.isfinite(float(text)):
                return "not a finite number"
        elif text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
            return "not a finite number"
        else:
            return "not a number"
    return None


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


class _RowChecker:
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
                return f"{c}={row[c]}", why
        if self.model is not None and row["model"] != str(self.model):
            return f"model={row['model']}", f"the sidecar's model is {self.model!r}"
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
        key = tuple(int(row[k]) for k in KEY)
        if key in self.seen:
            first, other = self.seen[key]
            how = "with other values" if other != row else "identically"
            raise DataError(f"{where} repeats the point n_in={key[0]}, n_out={key[1]}, rep={key[2]} of line {first} "
                            f"{how}: every point is measured once per rep (duplicates are never averaged)")
        self.seen[key] = (number, row)
        return key, row


def _check_counts(path: Path, prov: dict[str, Any], keys: list[tuple[int, int, int]]) -> None:
    """The number of rows against the sidecar's ``rows`` and the point log's keys (when there is one)."""
    recorded = prov.get("rows")
    if recorded is not None and recorded != len(keys):
        raise DataError(f"{path} has {len(keys)} rows where its sidecar records {recorded}; {_repair(path)}")
    points = prov.get("points")
    if isinstance(points, dict):
        have = {_point_key(k) for k in keys}
        if len(points) != len(keys) or set(points) != have:
            missing, unlogged = sorted(set(points) - have), sorted(have - set(points))
            raise DataError(f"{path} has {len(keys)} rows where its sidecar's point log has {len(points)} points "
                            f"(logged but not in the CSV: {missing[:5] or 'none'}; in the CSV but not logged: "
                            f"{unlogged[:5] or 'none'}); {_repair(path)}")


def _parse(path: Path, data: bytes, prov: dict[str, Any]) -> tuple[list[str], list[dict[str, str]], _RowChecker]:
    """Check a whole CSV's content (already known to match its checksum) against its sidecar.

    Returns:
        Its columns, its rows (strings) and the checker (holding the keys seen).
    """
    lines, complete = _decode(path, data)
    if not lines:
        raise DataError(f"{path} is empty; {_repair(path)}")
    header = _header(path, lines[0], _schema_of(prov))
    if not complete and len(lines) > 1:
        raise DataError(f"{path}:{len(lines)} is incomplete (no line end); {_repair(path)}")
    check = _RowChecker(path, header, prov)
    rows = [check.line(i, text)[1] for i, text in enumerate(lines[1:], start=2)]
    _check_counts(path, prov, list(check.seen))
    return header, rows, check


def _tail_rows(path: Path, first: int, tail: bytes, check: _RowChecker) -> list[tuple[tuple[int, int, int], dict]]:
    """Check the bytes after a file's recorded state (starting at line ``first``): complete, well-typed rows
    with new keys; returns their keys and rows."""
    lines, complete = _decode(path, tail)
    if not complete:
        raise DataError(f"{path}:{first + len(lines) - 1} is incomplete (no line end)")
    return [check.line(n, text) for n, text in enumerate(lines, start=first)]


def _recorded_size(data: bytes, prov: dict[str, Any]) -> int | None:
    """The byte size of the recorded content: the sidecar's ``size``, or (a sidecar written before it was
    recorded) the header plus ``rows`` lines."""
    if isinstance(prov.get("size"), int):
        return prov["size"]
    if not isinstance(prov.get("rows"), int):
        return None
    end = -1
    for _ in range(prov["rows"] + 1):
        end = data.find(b"\n", end + 1)
        if end < 0:
            return None
    return end + 1


def _what_differs(path: Path, data: bytes, prov: dict[str, Any]) -> str:
    """A description of how a CSV differs from what its sidecar records."""
    size = _recorded_size(data, prov)
    sized = [f"{len(data)} bytes where {size} are recorded"] if size is not None and len(data) != size else []
    try:
        lines, complete = _decode(path, data)
    except DataError:
        return "; ".join(sized + ["it is not UTF-8 text"])
    facts = []
    if not complete and lines:
        facts.append(f"line {len(lines)} is incomplete (no line end: the file was truncated or edited)")
    body = [t for t in lines[1:] if t]
    if isinstance(prov.get("rows"), int) and len(body) != prov["rows"]:
        facts.append(f"{len(body)} rows where {prov['rows']} are recorded")
    header = next(csv.reader([lines[0]])) if lines and lines[0] else []
    keys = []
    for text in body:
        row = dict(zip(header, next(csv.reader([text]))))
        try:
            keys.append(_point_key(tuple(int(row[k]) for k in KEY)))
        except (KeyError, ValueError):
            pass
    points = prov.get("points")
    if isinstance(points, dict) and points:
        gone, new = sorted(set(points) - set(keys)), sorted(set(keys) - set(points))
        if gone:
            facts.append(f"points {gone[:5]} of the point log are not in the CSV (deleted rows or edited keys)")
        if new:
            facts.append(f"points {new[:5]} are not in the point log")
    if not facts:
        facts.append("the same rows and points, but other bytes: a value was edited")
    return "; ".join(sized + facts)


@dataclass
class _State:
    """What a started :class:`ResultsFile` knows it wrote: the CSV's bytes' size and sha256, its keys,
    and the sidecar."""

    size: int
    sha256: str
    keys: set[tuple[int, int, int]]
    prov: dict[str, Any]


class ResultsFile:
    """A results CSV and its sidecar, written point by point by one writer at a time.

    :meth:`start` locks the file, checks what is there, and records the run; :meth:`append` adds one
    finished point; :meth:`close` (or leaving a ``with`` block) releases the lock::

        with ResultsFile(path) as rf:
            rf.start(provenance)
            for row in rows:
                rf.append(row, {"gpu_uuid": uuid})

    Args:
        path: The CSV path; its sidecar is the same name with ``.json``, its lock file ``.<name>.lock``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.sidecar = sidecar_path(self.path)
        self.lock_file = lock_path(self.path)
        self._lock_fd: int | None = None
        self._state: _State | None = None

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    @property
    def locked(self) -> bool:
        """Whether this object holds the file's lock (between :meth:`start` and :meth:`close`)."""
        return self._lock_fd is not None

    # -- the lock ------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        """Take the exclusive lock (non-blocking) and write who holds it into the lock file.

        Raises:
            LockedError: another writer holds it.
        """
        if self._lock_fd is not None:
            return
        if fcntl is None:  # pragma: no cover
            raise DataError(f"writing {self.path} needs file locks (fcntl), which this platform lacks: measure on "
                            "Linux")
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DataError(f"cannot lock {self.lock_file} ({exc}): measure into a folder on a local file "
                                    "system that supports flock") from None
                raise LockedError(self._locked_message(holder)) from None
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - twenty writers racing
            raise LockedError(f"could not lock {self.path}: its lock file {self.lock_file} keeps changing; is "
                              "another sweep starting? Try again")
        info = {"pid": os.getpid(), "host": platform.node(), "started_at": _utc(),
                "command": " ".join(sys.argv), "file": str(self.path)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._lock_fd = fd

    def _locked_message(self, holder: dict[str, Any]) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started_at', '?')}"
               if holder else "a writer that has not yet said who it is")
        if holder.get("command"):
            who += f", running `{holder['command']}`"
        if holder.get("pid") == os.getpid() and holder.get("host") == platform.node():
            who += "; that is this process: another ResultsFile object of this file is still open, close it first"
        return (f"{self.path} is being written by another sweep ({who}): wait for it to finish, or if no sweep is "
                f"running, find and stop the process holding {self.lock_file} (`fuser -v {self.lock_file}`). The "
                "lock is an flock, which vanishes with its process: a lock file left by a killed sweep is harmless "
                "and never blocks a new one")

    def close(self) -> None:
        """Release the file's lock (removing the lock file); a closed file can be started again."""
        fd, self._lock_fd, self._state = self._lock_fd, None, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.lock_file)):
                os.unlink(self.lock_file)  # while still holding it; a waiter then retries on a fresh file
        except OSError:
            pass
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    # -- reading -------------------------------------------------------------------------------------------

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
        if self._state is not None:
            return set(self._state.keys)
        return {tuple(int(r[k]) for k in KEY) for r in self.rows()}

    def provenance(self) -> dict[str, Any]:
        """The sidecar as a dict (empty when absent).

        Raises:
            DataError: the sidecar is not a JSON object.
        """
        if not self.sidecar.exists():
            return {}
        try:
            prov = json.loads(self.sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.sidecar} is not valid JSON ({exc}); restore it from git or rerun the sweep "
                            "into a new file") from None
        if not isinstance(prov, dict):
            raise DataError(f"{self.sidecar} is not a JSON object; restore it from git or rerun the sweep into a "
                            "new file")
        return prov

    # -- writing -------------------------------------------------------------------------------------------

    def start(self, provenance: dict[str, Any]) -> None:
        """Lock the file and create it, or reopen it for a sweep, recording this run in the sidecar.

        Takes the lock (held until :meth:`close`), removes temporary files orphaned by an interrupted
        write, then accepts an existing CSV only as what its sidecar records plus complete, well-typed
        rows with new keys (an append interrupted between the CSV and the sidecar): those are recorded
        and marked ``recovered`` in the point log. The lock is released again when this raises.

        Args:
            provenance: What runs, where and how (model, GPU, protocol, ...); merged into the sidecar,
                and its ``started_at``, ``command``, ``gpu_uuid`` and ``host`` appended to ``runs``.

        Raises:
            LockedError: another writer holds the file.
            DataError: ``<stem>.json`` exists and is not an energybook sidecar; the file was measured with
                schema 1 or an unknown schema; it holds a run with another model, protocol, test-data flag
                or GPU; or it differs from what its sidecar records (edited, truncated, rows deleted, or a CSV
                without its sidecar or the reverse).
        """
        self._lock()
        try:
            self._remove_orphans()
            old = self._own_sidecar()
            if old:
                for key in ("model", "protocol", "test_data", "gpu"):
                    if key in old and key in provenance and old[key] != provenance[key]:
                        raise DataError(f"{self.path} holds a run with another {key} ({old[key]!r} vs "
                                        f"{provenance[key]!r}): give another --output or move the file aside")
                size, digest, keys = self._verify(old)
                runs = list(old.get("runs", []))
                merged = dict(old, **{k: v for k, v in provenance.items() if k != "points"})
                merged["points"] = old.get("points", {})
            else:
                size, digest, keys = self._create()
                runs = []
                merged = dict(provenance, points={})
            merged["runs"] = runs + [{k: provenance.get(k) for k in ("started_at", "command", "gpu_uuid", "host")}]
            merged.update(schema=SCHEMA, sha256=digest, size=size, rows=len(keys))
            _write_sidecar(self.sidecar, merged)
            self._state = _State(size, digest, keys, merged)
        except BaseException:
            self.close()
            raise

    def _remove_orphans(self) -> None:
        """Remove the temporary files (``.<name>.*.tmp``) of the CSV and the sidecar that an interrupted
        write left behind (only ever called under the lock, so no writer is using them)."""
        removed = []
        folder = self.path.parent
        if not folder.is_dir():
            return
        prefixes = (f".{self.path.name}.", f".{self.sidecar.name}.")
        for p in sorted(folder.iterdir()):
            if p.name.endswith(".tmp") and p.name.startswith(prefixes) and p.is_file():
                p.unlink()
                removed.append(p.name)
        if removed:
            logger.warning("%s: removed %d temporary file(s) left by an interrupted write: %s", self.path,
                           len(removed), ", ".join(removed))

    def _own_sidecar(self) -> dict[str, Any]:
        """The existing sidecar (empty when there is none), refused when it is not an energybook sidecar of
        the schema this module writes."""
        if not self.sidecar.exists():
            return {}
        try:
            prov = json.loads(self.sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            prov = None
        if not isinstance(prov, dict) or not str(prov.get("schema", "")).startswith(_SCHEMA_PREFIX):
            raise DataError(f"{self.sidecar} exists and is not an energybook provenance sidecar (no JSON object "
                            f"with a 'schema' of {SCHEMA!r}): the results file {self.path.name} would overwrite "
                            "it. Give another --output (its sidecar is the same name with .json), or, if it is "
                            "this file's sidecar and got corrupted, restore it from git")
        schema = prov["schema"]
        if schema == SCHEMA1:
            raise DataError(f"{self.path} was measured with schema 1 ({SCHEMA1}, before the columns "
                            f"{list(SCHEMA2_COLUMNS)} existed): it still loads, but a sweep does not append to "
                            "it. Measure into a new file (give another --output)")
        if schema != SCHEMA:
            raise DataError(f"{self.path} was written with schema {schema!r}, which this energybook (schema "
                            f"{SCHEMA!r}) does not know: update energybook, or measure into a new file (give "
                            "another --output)")
        return prov

    def _create(self) -> tuple[int, str, set]:
        """A new file: the header (or adopt a header-only CSV left by a start interrupted before its
        sidecar was written)."""
        if self.path.exists():
            data = self.path.read_bytes()
            if data != _HEADER.encode():
                raise DataError(f"{self.path} exists without its sidecar ({self.sidecar.name}): data without "
                                "provenance are never adopted. Restore the sidecar from git, or move the CSV aside "
                                "and measure again")
        else:
            _atomic_write(self.path, _HEADER)
        data = _HEADER.encode()
        return len(data), _sha(data), set()

    def _verify(self, prov: dict[str, Any]) -> tuple[int, str, set]:
        """Check an existing CSV against its sidecar; record complete rows appended after the recorded
        state. Returns the CSV's size, sha256 and keys.

        Raises:
            DataError: any other difference (never re-blessed).
        """
        if not self.path.exists():
            raise DataError(f"{self.path} is missing but its sidecar {self.sidecar.name} records "
                            f"{prov.get('rows', '?')} rows: restore the CSV from git, or move the sidecar aside "
                            "and measure again")
        data = self.path.read_bytes()
        recorded = prov.get("sha256")
        size = _recorded_size(data, prov)
        if _sha(data) == recorded:
            head, tail = data, b""
        elif size is not None and len(data) > size and _sha(data[:size]) == recorded:
            head, tail = data[:size], data[size:]
        else:
            raise DataError(f"{self.path} differs from what its sidecar records (sha256 {_sha(data)[:12]}... vs "
                            f"{str(recorded)[:12]}...): {_what_differs(self.path, data, prov)}. A changed file is "
                            f"never re-blessed by recomputing its checksum; {_repair(self.path)}")
        try:
            header, _, check = _parse(self.path, head, prov)
        except DataError as exc:
            raise DataError(f"{exc} (found when reopening it for a sweep)") from None
        if header != COLUMNS:
            raise DataError(f"{self.path}'s columns are not those this energybook writes, in its order: measure "
                            "into a new file (give another --output)")
        if tail:
            self._recover(head, tail, prov, check)
            data = head + tail
        return len(data), _sha(data), set(check.seen)

    def _recover(self, head: bytes, tail: bytes, prov: dict[str, Any], check: _RowChecker) -> None:
        """Record the complete rows after the recorded state (an append interrupted before its sidecar
        was written) in ``prov``, marking them ``recovered`` in the point log."""
        try:
            new = _tail_rows(self.path, head.count(b"\n") + 1, tail, check)
        except DataError as exc:
            raise DataError(f"{self.path} has bytes after the state its sidecar records that are not complete, "
                            f"well-typed rows with new points ({exc}). A changed file is never re-blessed by "
                            f"recomputing its checksum; {_repair(self.path)}") from None
        points = prov.setdefault("points", {})
        now = _utc()
        for key, row in new:
            points[_point_key(key)] = {"started_at": row.get("started_at") or None,
                                       "finished_at": row.get("finished_at") or None,
                                       "gpu_uuid": row.get("gpu_uuid") or None, "recovered": now}
        logger.warning("%s: recorded %d complete row(s) appended after its sidecar was last written (an "
                       "interrupted append): %s", self.path, len(new), ", ".join(_point_key(k) for k, _ in new))

    def append(self, row: Row | dict[str, Any], point_info: dict[str, Any] | None = None) -> None:
        """Append one finished point, then update the sidecar's checksum, size, row count and point log.

        The CSV is replaced atomically by its content plus one complete line (a temporary file, fsynced,
        then ``os.replace``), then the sidecar likewise. The point log keeps the row's start and finish
        times, plus ``point_info`` (e.g. the GPU UUID); its ``measuring_s`` (the point's share of the sweep's
        wall time) adds up in the sidecar's ``measuring_minutes``.

        Args:
            row: A :class:`Row`, or a dict of :data:`COLUMNS` (missing columns are written empty).
            point_info: Extra facts of the point for the sidecar's point log.

        Raises:
            RuntimeError: :meth:`start` was not called (or the file was closed): no lock is held.
            ValueError: unknown columns, a bad value, a point already in the file, or a model, GPU or GPU
                UUID other than the sidecar's.
            DataError: the CSV changed on disk since this writer last wrote it.
        """
        state = self._state
        if self._lock_fd is None or state is None:
            raise RuntimeError(f"append to {self.path} without its lock: call start() first (and append before "
                               "close())")
        if isinstance(row, Row):
            row = row.to_dict()
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}")
        cells = {c: _fmt(row.get(c), c) for c in COLUMNS}
        bad = _RowChecker(self.path, COLUMNS, state.prov).problem(cells)
        if bad:
            raise ValueError(f"cannot append to {self.path}: {bad[0]}: {bad[1]}")
        key = tuple(int(cells[k]) for k in KEY)
        if key in state.keys:
            raise ValueError(f"point {dict(zip(KEY, key))} is already in {self.path}")
        data = self.path.read_bytes() if self.path.exists() else b""
        if len(data) != state.size or _sha(data) != state.sha256:
            raise DataError(f"{self.path} changed on disk while this sweep held its lock (another program edited "
                            f"or replaced it); nothing was appended. {_repair(self.path)}")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([cells[c] for c in COLUMNS])
        data += buf.getvalue().encode("utf-8")
        _atomic_write(self.path, data)
        prov = dict(state.prov)
        prov["points"] = dict(prov.get("points", {}))
        prov["points"][_point_key(key)] = {"started_at": row.get("started_at"), "finished_at": row.get("finished_at"),
                                           **(point_info or {})}
        prov.update(sha256=_sha(data), size=len(data), rows=len(state.keys) + 1)
        if point_info and isinstance(point_info.get("measuring_s"), (int, float)):
            # GPU time the sweeps spent on this file, over every run (warm-ups, windows, cool-downs).
            prov["measuring_minutes"] = round(float(prov.get("measuring_minutes") or 0.0)
                                              + point_info["measuring_s"] / 60, 4)
        state.size, state.sha256 = len(data), prov["sha256"]
        state.keys.add(key)
        state.prov = prov
        _write_sidecar(self.sidecar, prov)


def _read_holder(fd: int) -> dict[str, Any]:
    """Who holds a lock, as its holder wrote it into the lock file ({} when not readable yet)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


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

    The checks, each a :class:`DataError` naming the file (and the line and cell, ``file:line
    column=value``, where one is at fault): the columns of the sidecar's schema; the CSV's sha256
    against the sidecar's; every line complete; every cell of its column's type (non-negative
    integers, finite numbers, ``True``/``False``; the model and the key never empty); keys (n_in, n_out,
    rep) unique (duplicates are never averaged); every row's ``model`` and ``gpu`` equal to the
    sidecar's, and its ``gpu_uuid`` one the sidecar lists (its own, a run's or a point's); the number of
    rows equal to the sidecar's ``rows`` and to the points of its point log.

    Args:
        path: A results CSV or a folder (searched recursively; the runs are concatenated).
        allow_test_data: Accept data from a simulated meter or the CPU (tests only).

    Returns:
        A :class:`MeasuredRun` for a file; a pandas DataFrame of all rows (with a ``source``
        column) for a folder.

    Raises:
        DataError: missing or foreign sidecar, checksum mismatch, missing columns, a bad row, or test data
            not allowed.
        FileNotFoundError: when nothing is at ``path``.
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        csvs = sorted(p for p in path.rglob("*.csv") if not p.name.startswith("."))
        for p in csvs:
            if not sidecar_path(p).exists():
                logger.warning("%s has no provenance sidecar (%s) and is not loaded: restore the sidecar from git, "
                               "or remeasure", p, sidecar_path(p).name)
        files = [p for p in csvs if sidecar_path(p).exists()]
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
    prov = ResultsFile(path).provenance()
    schema = _schema_of(prov)
    if schema not in (SCHEMA1, SCHEMA):
        raise DataError(f"{path} was written with schema {schema!r}, which this energybook (schema {SCHEMA!r}) "
                        "does not read: update energybook")
    data = path.read_bytes()
    lines, _ = _decode(path, data)
    _header(path, lines[0] if lines else "", schema)  # the columns first: a foreign file is named as such
    digest = _sha(data)
    if prov.get("sha256") != digest:
        recorded = str(prov.get("sha256"))
        size = _recorded_size(data, prov)
        tail_problem = None
        if size is not None and len(data) > size and _sha(data[:size]) == recorded:
            try:
                _, _, check = _parse(path, data[:size], prov)
                _tail_rows(path, data[:size].count(b"\n") + 1, data[size:], check)
            except DataError as exc:
                tail_problem = str(exc)
        if size is not None and len(data) > size and _sha(data[:size]) == recorded and tail_problem is None:
            why = ("rows were appended after the state its sidecar records: a sweep is writing it right now (load "
                   "it when it is done), or was interrupted between writing the CSV and its sidecar (rerun the "
                   "sweep's command: it records complete appended rows; the loader does not)")
        else:
            what = (f"the bytes after the state its sidecar records are not complete, well-typed rows with new "
                    f"points ({tail_problem})" if tail_problem else _what_differs(path, data, prov))
            why = (f"{what}: the file was edited or damaged; {_repair(path)} (a sweep rerun refuses it too: a "
                   "changed file is never re-blessed)")
        raise DataError(f"{path}: sha256 {digest[:12]}... does not match its sidecar ({recorded[:12]}...): {why}")
    _, rows, _ = _parse(path, data, prov)
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
