"""Writing a results file: :class:`ResultsFile`, one writer at a time, point by point.

* **one writer**: :meth:`ResultsFile.start` takes the file's lock (:mod:`~energybook.store.lock`), held
  until :meth:`ResultsFile.close`;
* **whole, atomic appends**: each row rewrites the CSV as a temporary file (fsynced, then ``os.replace``), so
  the CSV always holds complete rows; then the sidecar is replaced the same way. A kill between the two leaves
  one complete row after the recorded state, which the next :meth:`~ResultsFile.start` records (marked
  ``recovered`` in the point log) when it is what that append can have left
  (:func:`~energybook.store.loader.tail_rows`); anything more is refused;
* **no re-blessing**: an edited value, a truncated line, a deleted or added row is refused with what differs
  and how to repair it; the checksum is never recomputed over a changed file;
* **nothing absurd**: names with control characters, non-finite or non-positive energies and durations,
  negative powers are refused before anything is written (:mod:`~energybook.store.schema`);
* it never overwrites a ``.json`` that is not an energybook sidecar, and it does not append to a schema-1 file
  (measured before the :data:`~energybook.store.schema.SCHEMA2_COLUMNS` existed).

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook.store.loader import parse, read_sidecar, recorded_size, tail_rows, what_differs
from energybook.store.lock import FileLock
from energybook.store.schema import (
    _HEADER,
    _SCHEMA_PREFIX,
    COLUMNS,
    KEY,
    SCHEMA,
    SCHEMA1,
    SCHEMA2_COLUMNS,
    DataError,
    Row,
    RowChecker,
    _fmt,
    _point_key,
    _repair,
    _sha,
    _utc,
    check_names,
    lock_path,
    pending_path,
    row_key,
    sidecar_path,
)

logger = logging.getLogger(__name__)

#: Sidecar keys that describe a file's content, not the run that measured it (the writer keeps them).
BOOKKEEPING = ("points", "runs", "sha256", "size", "rows", "schema", "measuring_minutes")
#: Sidecar keys every run of a file must share (a resume with another value is refused).
IDENTITY = ("model", "protocol", "test_data", "gpu", "engine_settings")


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
        self._lock = FileLock(self.lock_file, self.path)
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
        return self._lock.held

    def lock(self) -> None:
        """Take the file's lock without starting a run (held until :meth:`close`), e.g. to merge into it.

        Raises:
            LockedError: another writer holds it.
            DataError: the lock file cannot be created or written.
        """
        self._lock.acquire()

    def close(self) -> None:
        """Release the file's lock (removing the lock file); a closed file can be started again."""
        self._state = None
        self._lock.release()

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
        return {row_key(r) for r in self.rows()}

    def provenance(self) -> dict[str, Any]:
        """The sidecar as a dict (empty when absent).

        Raises:
            DataError: the sidecar is not a JSON object.
        """
        return read_sidecar(self.path)

    # -- writing -------------------------------------------------------------------------------------------

    def start(self, provenance: dict[str, Any]) -> None:
        """Lock the file and create it, or reopen it for a sweep, recording this run in the sidecar.

        Refuses a model, GPU or GPU UUID with a control character before anything is written. Takes the
        lock (held until :meth:`close`), finishes or undoes a merge cut short, removes temporary files
        orphaned by an interrupted write, then accepts an existing CSV only as what its sidecar records
        plus what one append interrupted between the CSV and the sidecar leaves (one complete, well-typed
        row of the protocol with a new key, of the last run's GPU, :func:`~energybook.store.loader.tail_rows`):
        it is recorded and marked ``recovered`` in the point log. The lock is released again when this raises.

        Args:
            provenance: What runs, where and how (model, GPU, protocol, ...); merged into the sidecar,
                and its ``started_at``, ``command``, ``gpu_uuid`` and ``host`` appended to ``runs``.

        Raises:
            LockedError: another writer holds the file.
            DataError: a name holds a control character; the lock file cannot be written (no space left);
                ``<stem>.json`` exists and is not an energybook sidecar; the file was measured with
                schema 1 or an unknown schema; it holds a run with another model, protocol, test-data flag,
                GPU or engine settings; or it differs from what its sidecar records (edited, truncated, rows
                deleted or added, or a CSV without its sidecar or the reverse).
        """
        check_names(self.path, provenance)
        self._lock.acquire()
        try:
            finish_pending(self.path)
            self._remove_orphans()
            old = self._own_sidecar()
            if old:
                for key in IDENTITY:
                    if key in old and key in provenance and old[key] != provenance[key]:
                        raise DataError(f"{self.path} holds a run with another {key} ({old[key]!r} vs "
                                        f"{provenance[key]!r}): give another --output or move the file aside")
                boards, uuid = file_gpus(old), provenance.get("gpu_uuid")
                if uuid and boards and uuid not in boards:
                    raise DataError(f"{self.path} holds measurements of {', '.join(sorted(boards))}, and this run "
                                    f"is on {uuid}: a file holds one GPU. Let the sweep name its own file (no "
                                    f"--output: {gpu_file(self.path, uuid).name}), or give another --output")
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
        prefixes = (f".{self.path.name}.", f".{self.sidecar.name}.", f".{pending_path(self.path).name}.")
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
        size = recorded_size(data, prov)
        if _sha(data) == recorded:
            head, tail = data, b""
        elif size is not None and len(data) > size and _sha(data[:size]) == recorded:
            head, tail = data[:size], data[size:]
        else:
            raise DataError(f"{self.path} differs from what its sidecar records (sha256 {_sha(data)[:12]}... vs "
                            f"{str(recorded)[:12]}...): {what_differs(self.path, data, prov)}. A changed file is "
                            f"never re-blessed by recomputing its checksum; {_repair(self.path)}")
        try:
            header, _, check = parse(self.path, head, prov)
        except DataError as exc:
            raise DataError(f"{exc} (found when reopening it for a sweep)") from None
        if header != COLUMNS:
            raise DataError(f"{self.path}'s columns are not those this energybook writes, in its order: measure "
                            "into a new file (give another --output)")
        if tail:
            self._recover(head, tail, prov, check)
            data = head + tail
        return len(data), _sha(data), set(check.seen)

    def _recover(self, head: bytes, tail: bytes, prov: dict[str, Any], check: RowChecker) -> None:
        """Record the complete rows after the recorded state (an append interrupted before its sidecar
        was written) in ``prov``, marking them ``recovered`` in the point log."""
        try:
            new = tail_rows(self.path, head.count(b"\n") + 1, tail, check, prov)
        except DataError as exc:
            raise DataError(f"{self.path} has bytes after the state its sidecar records that an interrupted append "
                            f"cannot have left ({exc}). A changed file is never re-blessed by recomputing its "
                            f"checksum; {_repair(self.path)}") from None
        points = prov.setdefault("points", {})
        now = _utc()
        for key, row in new:
            points[_point_key(key)] = {"started_at": row.get("started_at") or None,
                                       "finished_at": row.get("finished_at") or None,
                                       "gpu_uuid": row.get("gpu_uuid") or None, "recovered": now}
        logger.warning("%s: recorded %d complete row(s) appended after its sidecar was last written (an "
                       "interrupted append): %s", self.path, len(new), ", ".join(_point_key(k) for k, _ in new))

    def annotate(self, **facts: Any) -> None:
        """Record facts of this run in the sidecar (e.g. a sampled sweep's ``sample_plan``), replacing the same keys;
        the rows, their checksum and the point log are left as they are.

        Raises:
            RuntimeError: :meth:`start` was not called (or the file was closed).
            ValueError: a key the sidecar's bookkeeping owns.
        """
        state = self._state
        if not self._lock.held or state is None:
            raise RuntimeError(f"annotate {self.path} without its lock: call start() first")
        owned = {*BOOKKEEPING, *IDENTITY, "gpu_uuid"}
        if owned & set(facts):
            raise ValueError(f"annotate cannot change {sorted(owned & set(facts))}: the sidecar's own keys")
        state.prov = dict(state.prov, **facts)
        _write_sidecar(self.sidecar, state.prov)

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
            ValueError: unknown columns, a bad or impossible value (energy or duration not positive, a negative
                power, a control character), a point already in the file, or a model, GPU or GPU UUID other than
                the sidecar's.
            DataError: the CSV changed on disk since this writer last wrote it.
        """
        state = self._state
        if not self._lock.held or state is None:
            raise RuntimeError(f"append to {self.path} without its lock: call start() first (and append before "
                               "close())")
        if isinstance(row, Row):
            row = row.to_dict()
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}")
        cells = {c: _fmt(row.get(c), c) for c in COLUMNS}
        bad = RowChecker(self.path, COLUMNS, state.prov).problem(cells)
        if bad:
            raise ValueError(f"cannot append to {self.path}: {bad[0]}: {bad[1]}")
        key = row_key(cells)
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



def file_gpus(prov: dict[str, Any]) -> list[str]:
    """The UUIDs of the GPUs a sidecar records (its runs', its point log's and its own), each once, in the order
    the runs used them."""
    found = [r.get("gpu_uuid") for r in prov.get("runs") or [] if isinstance(r, dict)]
    found += [i.get("gpu_uuid") for i in (prov.get("points") or {}).values() if isinstance(i, dict)]
    found.append(prov.get("gpu_uuid"))
    return list(dict.fromkeys(str(u) for u in found if u is not None and str(u).strip() and str(u) != "nan"))


def gpu_file(path: Path, uuid: str | None) -> Path:
    """The results file of GPU ``uuid`` for the default ``path`` (one file per GPU): ``path`` itself when it does not
    exist yet or already holds this GPU's measurements, else ``<stem>-<first 8 hex digits of the UUID>.csv`` beside
    it (``sampled.csv`` -> ``sampled-add1dd35.csv``)."""
    path = Path(path)
    if not uuid or not path.exists():
        return path
    boards = file_gpus(read_sidecar(path))
    if not boards or uuid in boards:
        return path
    short = str(uuid).removeprefix("GPU-")[:8]
    return path.with_name(f"{path.stem}-{short}{path.suffix}")


def finish_pending(path: Path) -> None:
    """Finish or undo a merge cut short (only under the file's lock): install its pending sidecar when the
    CSV matches it (the CSV was replaced), else remove it (the CSV was not)."""
    pending = pending_path(path)
    if not pending.exists():
        return
    try:
        prov = json.loads(pending.read_text())
    except (OSError, ValueError):
        prov = {}
    if isinstance(prov, dict) and path.exists() and prov.get("sha256") == _sha(path.read_bytes()):
        os.replace(pending, sidecar_path(path))
        _fsync_dir(path.parent)
        logger.warning("%s: finished a merge cut short (installed its sidecar)", path)
    else:
        pending.unlink()
        logger.warning("%s: removed the sidecar of a merge cut short before it replaced the CSV", path)


def commit(path: Path, data: bytes, prov: dict[str, Any]) -> None:
    """Replace a locked results file's CSV and sidecar by ``data`` and ``prov`` (whose checksum, size and row
    count are filled in), so that a kill at any moment leaves the old file or the new one.

    The new sidecar is written first as a pending file (:func:`~energybook.store.schema.pending_path`), then
    the CSV is replaced, then the pending sidecar installed; the next writer finishes or undoes an interrupted
    commit (:func:`finish_pending`).
    """
    prov = dict(prov, schema=SCHEMA, sha256=_sha(data), size=len(data), rows=max(data.count(b"\n") - 1, 0))
    pending = pending_path(path)
    _write_sidecar(pending, prov)
    _atomic_write(path, data)
    os.replace(pending, sidecar_path(path))
    _fsync_dir(path.parent)
