"""The writer's lock of a results file: an exclusive, non-blocking ``flock`` on a sibling lock file
(``.<name>.csv.lock``) that says who holds it.

The lock vanishes with its process, so a lock file left by a killed sweep is harmless. A second writer, in
another process or the same one, gets a :class:`~energybook.store.schema.LockedError` naming the holder. A
lock that cannot be taken or written (a file system without ``flock``, no space left) is released and its
handle closed before the :class:`~energybook.store.schema.DataError` is raised.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from energybook.store.schema import DataError, LockedError, _utc

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS: files can be read, not written
    fcntl = None


class FileLock:
    """The exclusive lock of one results file.

    Args:
        path: The lock file (``.<name>.csv.lock``).
        target: The results file it guards (for messages).
    """

    def __init__(self, path: Path, target: Path):
        self.path, self.target = Path(path), Path(target)
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self.fd is not None

    def acquire(self) -> None:
        """Take the lock (non-blocking) and write who holds it into the lock file.

        Raises:
            LockedError: another writer holds it.
            DataError: the lock file cannot be created, locked or written (its handle is closed then).
        """
        if self.fd is not None:
            return
        if fcntl is None:  # pragma: no cover
            raise DataError(f"writing {self.target} needs file locks (fcntl), which this platform lacks: measure on "
                            "Linux")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._open_locked()
        except OSError as exc:
            raise DataError(self._cannot("create", exc)) from None
        info = {"pid": os.getpid(), "host": platform.node(), "started_at": _utc(), "command": " ".join(sys.argv),
                "file": str(self.target)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as exc:
            os.close(fd)  # closing releases the flock
            raise DataError(self._cannot("write", exc)) from None
        self.fd = fd

    def _cannot(self, what: str, exc: OSError) -> str:
        return (f"cannot {what} the lock file {self.path} ({exc.strerror or exc}): free space on its file system "
                "(or fix its permissions) and run again; nothing was written")

    def _open_locked(self) -> int:
        """Open and lock the lock file, retrying when its previous holder removed it meanwhile."""
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DataError(f"cannot lock {self.path} ({exc}): measure into a folder on a local file "
                                    "system that supports flock") from None
                raise LockedError(self._locked_message(holder)) from None
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            except OSError:
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)
        # pragma: no cover - twenty writers racing
        raise LockedError(f"could not lock {self.target}: its lock file {self.path} keeps changing; is another "
                          "sweep starting? Try again")

    def _locked_message(self, holder: dict[str, Any]) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started_at', '?')}"
               if holder else "a writer that has not yet said who it is")
        if holder.get("command"):
            who += f", running `{holder['command']}`"
        if holder.get("pid") == os.getpid() and holder.get("host") == platform.node():
            who += "; that is this process: another ResultsFile object of this file is still open, close it first"
        return (f"{self.target} is being written by another sweep ({who}): wait for it to finish, or if no sweep is "
                f"running, find and stop the process holding {self.path} (`fuser -v {self.path}`). The lock is an "
                "flock, which vanishes with its process: a lock file left by a killed sweep is harmless and never "
                "blocks a new one")

    def release(self) -> None:
        """Release the lock, removing the lock file (while still holding it; a waiter retries on a fresh one)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    """Who holds a lock, as its holder wrote it into the lock file ({} when not readable yet)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
