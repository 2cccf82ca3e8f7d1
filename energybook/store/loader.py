"""Reading a results file: :func:`load_measured`, and the checks of a CSV against its sidecar that the
writer shares (:func:`parse`, :func:`tail_rows`, :func:`what_differs`).

The checks, each a :class:`~energybook.store.schema.DataError` naming the file (and the line and cell,
``file:line column=value``, where one is at fault): the sha256 against the sidecar, the row count against the
sidecar and its point log, unique keys (n_in, n_out, rep), every row's model, GPU and GPU UUID against the
sidecar, and every cell's type and range. Data not measured on a real GPU (simulated meter, CPU device) are
refused unless ``allow_test_data=True`` is passed (tests only).

Bytes after the state a sidecar records are at most one complete row (the one append a crash can leave
unrecorded, :func:`tail_rows`): a point of the protocol, of the GPU of the file's last run, finished after
that run started.

Used in :doc:`/book/experiment` and :doc:`/book/status`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook.store.schema import (
    _INT,
    _STR,
    COLUMNS,
    KEY,
    SCHEMA,
    SCHEMA1,
    DataError,
    RowChecker,
    _decode,
    _header,
    _point_key,
    _repair,
    _schema_of,
    _sha,
    part_of,
    pending_path,
    protocol_problem,
    sidecar_path,
)

logger = logging.getLogger(__name__)


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


def parse(path: Path, data: bytes, prov: dict[str, Any]) -> tuple[list[str], list[dict[str, str]], RowChecker]:
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
    check = RowChecker(path, header, prov)
    rows = [check.line(i, text)[1] for i, text in enumerate(lines[1:], start=2)]
    _check_counts(path, prov, list(check.seen))
    return header, rows, check


def tail_rows(path: Path, first: int, tail: bytes, check: RowChecker,
              prov: dict[str, Any]) -> list[tuple[tuple[int, int, int], dict]]:
    """Check the bytes after a file's recorded state (starting at line ``first``): what one interrupted append
    leaves, one complete, well-typed row with a new key, a point of the protocol, measured on the GPU of the
    sidecar's last run and finished after that run started. Returns its key and row (none for no bytes).

    Raises:
        DataError: anything else (rows appended by hand or by another program).
    """
    lines, complete = _decode(path, tail)
    if not complete:
        raise DataError(f"{path}:{first + len(lines) - 1} is incomplete (no line end)")
    if len(lines) > 1:
        raise DataError(f"{path} has {len(lines)} rows after the state its sidecar records, where an interrupted "
                        "append leaves at most one: rows were added by hand or by another program")
    runs = [r for r in prov.get("runs") or [] if isinstance(r, dict)]
    last = runs[-1] if runs else {}
    found = []
    for n, text in enumerate(lines, start=first):
        key, row = check.line(n, text)
        where, point = f"{path}:{n}", _point_key(key)
        why = protocol_problem(prov, key)
        if why:
            raise DataError(f"{where} {point} is not a point of its protocol ({why})")
        if last.get("gpu_uuid") and row.get("gpu_uuid") and row["gpu_uuid"] != str(last["gpu_uuid"]):
            raise DataError(f"{where} {point} was measured on {row['gpu_uuid']}, not on the GPU of the file's last "
                            f"run ({last['gpu_uuid']}), the only run that can have left a row unrecorded")
        if last.get("started_at") and row.get("finished_at") and row["finished_at"] < str(last["started_at"]):
            raise DataError(f"{where} {point} finished at {row['finished_at']}, before the file's last run started "
                            f"({last['started_at']}), the only run that can have left a row unrecorded")
        found.append((key, row))
    return found


def recorded_size(data: bytes, prov: dict[str, Any]) -> int | None:
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


def what_differs(path: Path, data: bytes, prov: dict[str, Any]) -> str:
    """A description of how a CSV differs from what its sidecar records."""
    size = recorded_size(data, prov)
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

    @property
    def engine(self) -> str:
        """The engine's folder name (``hf``, ``lean``, ``trtllm``...; :func:`energybook.store.workspace.engine_slug`)
        from the sidecar, ``"?"`` when it records none."""
        from energybook.store.workspace import engine_slug, sidecar_engine

        name = sidecar_engine(self.provenance)
        return engine_slug(name) if name else "?"


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of a results CSV as a dict (empty when absent).

    Raises:
        DataError: the sidecar is not a JSON object.
    """
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        prov = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{side} is not valid JSON ({exc}); restore it from git or rerun the sweep into a new "
                        "file") from None
    if not isinstance(prov, dict):
        raise DataError(f"{side} is not a JSON object; restore it from git or rerun the sweep into a new file")
    return prov


def count_once(runs: list[MeasuredRun]) -> list[MeasuredRun]:
    """The runs with each point counted once: a part file's rows that its results file (or a part of lower
    rank) already holds are dropped, with a warning. They are left by a merge cut short after writing the
    results file, before removing the part; rerunning the sweep's command finishes it.

    Args:
        runs: Loaded runs (results files and part files, in any order).
    """
    by_path = {r.path: r for r in runs}
    seen: dict[Path, set] = {}
    out = []
    for run in sorted(runs, key=lambda r: (part_of(r.path) is not None, str(r.path))):
        grid = part_of(run.path)
        if grid is None:
            out.append(run)
            continue
        have = seen.setdefault(grid, set(map(tuple, by_path[grid].data[list(KEY)].to_numpy().tolist()))
                               if grid in by_path else set())
        keys = [tuple(k) for k in run.data[list(KEY)].to_numpy().tolist()]
        dup = [k in have for k in keys]
        if any(dup):
            logger.warning("%s: %d point(s) already in %s are not counted twice (a merge cut short): rerun the "
                           "sweep's command to finish it", run.path, sum(dup), grid.name)
            run = dataclasses.replace(run, data=run.data[[not d for d in dup]].reset_index(drop=True))
        have.update(keys)
        out.append(run)
    order = {r.path: i for i, r in enumerate(runs)}
    return sorted(out, key=lambda r: order[r.path])


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
    integers, finite numbers, ``True``/``False``; the model, the key, the energy and the duration never
    empty; energy and duration positive, powers, energies and times never negative; no control character in
    a text); keys (n_in, n_out, rep) unique (duplicates are never averaged); every row's ``model`` and
    ``gpu`` equal to the sidecar's, and its ``gpu_uuid`` one the sidecar lists (its own, a run's or a
    point's); the number of rows equal to the sidecar's ``rows`` and to the points of its point log. A
    folder's part files count each point once (:func:`count_once`).

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
        runs = count_once([load_measured(f, allow_test_data) for f in files])
        return pd.concat([r.data.assign(source=str(r.path.relative_to(path))) for r in runs], ignore_index=True)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}; measure it with `energybook sweep` "
                                "or `energybook measure`")
    side = sidecar_path(path)
    if not side.exists():
        raise DataError(f"{path} has no provenance sidecar ({side.name}); data without provenance are not "
                        "loaded: restore the sidecar from git or remeasure")
    prov = read_sidecar(path)
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
        size = recorded_size(data, prov)
        tail_problem = None
        if size is not None and len(data) > size and _sha(data[:size]) == recorded:
            try:
                _, _, check = parse(path, data[:size], prov)
                tail_rows(path, data[:size].count(b"\n") + 1, data[size:], check, prov)
            except DataError as exc:
                tail_problem = str(exc)
        if pending_path(path).exists():
            why = ("a merge of part files was interrupted: rerun the sweep's command, which finishes it (the "
                   "loader does not)")
        elif size is not None and len(data) > size and _sha(data[:size]) == recorded and tail_problem is None:
            why = ("rows were appended after the state its sidecar records: a sweep is writing it right now (load "
                   "it when it is done), or was interrupted between writing the CSV and its sidecar (rerun the "
                   "sweep's command: it records complete appended rows; the loader does not)")
        else:
            what = (f"the bytes after the state its sidecar records are not what an interrupted append leaves "
                    f"({tail_problem})" if tail_problem else what_differs(path, data, prov))
            why = (f"{what}: the file was edited or damaged; {_repair(path)} (a sweep rerun refuses it too: a "
                   "changed file is never re-blessed)")
        raise DataError(f"{path}: sha256 {digest[:12]}... does not match its sidecar ({recorded[:12]}...): {why}")
    _, rows, _ = parse(path, data, prov)
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
