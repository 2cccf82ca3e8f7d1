"""The part files of a torchrun sweep merged into their results file: :func:`absorb`.

Each rank of a launch that shares a model writes its own part file (``grid.part-<rank>.csv``, a complete
results file with its sidecar and lock) beside the model's ``grid.csv``. :func:`absorb` merges them:

* under the locks of the results file and of every part; a part still locked by a writer refuses the merge
  (:class:`~energybook.store.schema.LockedError`);
* **everything is checked before anything is written**: every part against its sidecar (an edited one is
  refused, never re-blessed; an interrupted append is recovered), every part's model, protocol, test-data flag
  and GPU against the results file's (or the first part's), and every point found twice with different
  values;
* the results file is then written **at once**: its CSV and sidecar replaced atomically through a pending
  sidecar (:func:`~energybook.store.writer.commit`), so a kill leaves the old file or the new one;
* rows are copied verbatim, each with its GPU and GPU UUID; each run of a part is added to the file's ``runs``
  and each point's log entry keeps its times and GPU UUID, plus its part file and host;
* the part files are removed only after the merged file is loaded and checked to hold every one of their rows.
  A merge cut short before removing them is finished by the next one (their points are then already there,
  identically); meanwhile the catalog counts each point once (:func:`~energybook.store.loader.count_once`).

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook.store.loader import load_measured
from energybook.store.schema import _HEADER, COLUMNS, DataError, _point_key, row_key, sidecar_path
from energybook.store.writer import BOOKKEEPING as _BOOKKEEPING
from energybook.store.writer import ResultsFile, commit, finish_pending

logger = logging.getLogger(__name__)

_RUN_KEYS = ("started_at", "command", "gpu_uuid", "host")
#: What every part must share with the results file.
_SAME = ("model", "protocol", "test_data", "gpu")


@dataclass
class Absorbed:
    """What :func:`absorb` did.

    Attributes:
        path: The results file.
        parts: The part files merged (and removed).
        merged: Points copied into the results file.
        already: Points of the parts the results file already held, identically.
        skipped: Part files left in place: without a sidecar and without rows (a start cut short).
    """

    path: Path
    parts: list[Path]
    merged: int = 0
    already: int = 0
    skipped: list[Path] = dataclasses.field(default_factory=list)


def _cells(row: dict[str, str]) -> dict[str, str]:
    return {c: row.get(c) or "" for c in COLUMNS}


def _verified(rf: ResultsFile) -> dict[str, Any]:
    """Check a locked results file against its sidecar and return the sidecar; an interrupted append is
    recovered (by starting the file as its own writer), any other difference refused (never re-blessed)."""
    finish_pending(rf.path)
    try:
        return load_measured(rf.path, allow_test_data=True).provenance
    except DataError:
        prov = rf.provenance()
        rf.start({k: v for k, v in prov.items() if k not in _BOOKKEEPING})
        return load_measured(rf.path, allow_test_data=True).provenance


def _unprovenanced(path: Path) -> bool:
    """Whether a CSV without its sidecar holds a header alone (True: a start cut short, which its next writer
    adopts); one with rows is refused."""
    if not path.exists() or sidecar_path(path).exists():
        return False
    if len(path.read_bytes().splitlines()) > 1:
        raise DataError(f"{path} has rows but no sidecar ({sidecar_path(path).name}): data without provenance "
                        "are never merged; restore the sidecar from git or move the file aside")
    return True


def _other(ref: dict[str, Any], prov: dict[str, Any]) -> str | None:
    """What differs between two sidecars' runs (``protocol (n_req: 1000 vs 20)``), or None."""
    for key in _SAME:
        if key in ref and key in prov and ref[key] != prov[key]:
            a, b = ref[key], prov[key]
            if isinstance(a, dict) and isinstance(b, dict):
                fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                return f"{key} ({', '.join(f'{k}: {a.get(k)!r} vs {b.get(k)!r}' for k in fields[:4])})"
            return f"{key} ({a!r} vs {b!r})"
    return None


def _refuse_other_runs(grid: Path, old: dict[str, Any], loaded: list) -> None:
    """Refuse parts whose model, protocol, test-data flag or GPU differ from the file's (or the first part's)."""
    ref, ref_prov = (grid, old) if old else (loaded[0][0], loaded[0][1])
    for p, prov, _ in loaded:
        what = _other(ref_prov, prov)
        if what:
            side = sidecar_path(p)
            raise DataError(f"{p} holds a run with another {what} than {ref.name}: nothing was merged. If "
                            f"{ref.name} has the settings you want, move the part aside (`mv {p} {p}.aside && mv "
                            f"{side} {side}.aside`) and rerun the sweep's command, which measures its points again; "
                            f"else move {ref.name} and its sidecar aside the same way")


def _new_rows(grid: Path, have: dict, loaded: list, out: Absorbed) -> list:
    """The rows of every part that the file lacks, per part; a point found twice with other values refuses."""
    seen: dict[tuple[int, int, int], tuple[Path, dict[str, str]]] = {}
    todo = []
    for p, prov, rows in loaded:
        new = []
        for row in rows:
            key, cells = row_key(row), _cells(row)
            where, first = (grid, have[key]) if key in have else seen.get(key, (None, None))
            if first is None:
                seen[key] = (p, cells)
                new.append(cells)
            elif first != cells:
                diff = sorted(c for c in COLUMNS if first[c] != cells[c])
                raise DataError(f"the point n_in={key[0]}, n_out={key[1]}, rep={key[2]} is in both {where} and {p} "
                                f"with other values ({', '.join(diff[:6])}): a point is measured once (duplicates "
                                "are never averaged); move one of the files aside")
            else:
                out.already += 1
        todo.append((p, prov, new))
    return todo


def _merged(old: dict[str, Any], todo: list) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The merged sidecar (before its checksum) and the rows to add."""
    prov = dict(old)
    runs = [r for r in old.get("runs") or [] if isinstance(r, dict)]
    recorded = {tuple(r.get(k) for k in _RUN_KEYS) for r in runs}
    points = dict(old.get("points") or {})
    minutes = old.get("measuring_minutes")
    added = []
    for p, part, new in todo:
        if not new:
            continue
        base = {k: v for k, v in part.items() if k not in _BOOKKEEPING}
        part_runs = [r for r in part.get("runs") or [] if isinstance(r, dict)] or [base]
        for run in part_runs:  # each run of the part becomes a run of the file (its GPU UUIDs become the file's)
            fields = tuple(run.get(k) for k in _RUN_KEYS)
            if fields not in recorded:
                runs.append(dict(zip(_RUN_KEYS, fields)))
                recorded.add(fields)
        prov.update(base, **{k: part_runs[-1].get(k) for k in _RUN_KEYS})
        hosts = {str(r["gpu_uuid"]): str(r["host"]) for r in reversed(part_runs) if r.get("gpu_uuid") and r.get("host")}
        log = part.get("points") or {}
        for cells in new:
            name = _point_key(row_key(cells))
            info = {k: v for k, v in (log.get(name) or {}).items() if k not in ("started_at", "finished_at")}
            info.setdefault("gpu_uuid", cells.get("gpu_uuid") or None)
            info["part"] = p.name
            if str(info.get("gpu_uuid")) in hosts:
                info["host"] = hosts[str(info["gpu_uuid"])]
            points[name] = {"started_at": cells["started_at"], "finished_at": cells["finished_at"], **info}
            if isinstance(info.get("measuring_s"), (int, float)):  # every rank's GPU time, summed
                minutes = float(minutes or 0.0) + info["measuring_s"] / 60
            added.append(cells)
    prov.update(runs=runs, points=points)
    if minutes is not None:
        prov["measuring_minutes"] = round(float(minutes), 4)
    return prov, added


def absorb(grid: str | Path, parts: Sequence[str | Path]) -> Absorbed:
    """Merge part files into their results file (module docstring), then remove them.

    Args:
        grid: The results CSV (``.../grid.csv``).
        parts: Its part files (``grid.part-<rank>.csv``), in rank order.

    Returns:
        What was merged.

    Raises:
        LockedError: the results file or a part is being written.
        DataError: a part or the results file differs from its sidecar, a part holds another model, protocol,
            test-data flag or GPU, a CSV without a sidecar has rows, or a point is found twice with different
            values. Nothing is written then.
    """
    grid = Path(grid)
    out = Absorbed(grid, [])
    held: list[ResultsFile] = []
    try:
        loaded = []
        for p in map(Path, parts):
            if _unprovenanced(p):
                out.skipped.append(p)
                continue
            rf = ResultsFile(p)
            rf.lock()  # held while the part is read and until it is removed
            held.append(rf)
            loaded.append((p, _verified(rf), rf.rows()))
        if not loaded:
            return out
        target = ResultsFile(grid)
        target.lock()
        held.append(target)
        finish_pending(grid)
        old = {} if _unprovenanced(grid) or not grid.exists() else _verified(target)
        _refuse_other_runs(grid, old, loaded)
        have = {row_key(r): _cells(r) for r in target.rows()} if old else {}
        prov, added = _merged(old, _new_rows(grid, have, loaded, out))
        if added:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows([cells[c] for c in COLUMNS] for cells in added)
            data = (grid.read_bytes() if old else _HEADER.encode()) + buf.getvalue().encode("utf-8")
            commit(grid, data, prov)
            out.merged = len(added)
        if grid.exists() and sidecar_path(grid).exists():
            load_measured(grid, allow_test_data=True)
        merged = {row_key(r): _cells(r) for r in target.rows()}
        for p, _, rows in loaded:
            lost = [row_key(r) for r in rows if merged.get(row_key(r)) != _cells(r)]
            if lost:  # pragma: no cover - would be a bug: the part is kept
                raise DataError(f"{grid} lacks points {lost[:5]} of {p} after merging: the part is kept")
        for p, _, _ in loaded:
            p.unlink()
            sidecar_path(p).unlink(missing_ok=True)
            out.parts.append(p)
    finally:
        for rf in held:
            rf.close()
    if out.parts:
        logger.info("%s: merged %d points from %d part files", grid, out.merged, len(out.parts))
    return out
