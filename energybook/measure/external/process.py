"""The process-group runner: an engine's benchmark command run and measured as one window of the meter.

:func:`measure_command` starts the command in its own session and process group, tees its output (each
line with its arrival time) to a log, and reads the meter over exactly the command's lifetime. It never
waits unbounded:

* **Time limit.** Every command has one (:data:`DEFAULT_TIMEOUT_S`, an hour, unless told otherwise). On a
  timeout or ``KeyboardInterrupt`` the whole group (the engine's workers included) gets SIGTERM, then
  SIGKILL after :data:`KILL_GRACE_S`. Processes the command leaves behind after a normal exit are stopped
  the same way, so they cannot heat the next point's window.
* **The log.** A log that cannot be opened or written (a full disk, a folder without write permission)
  stops the command and its group at once, with the operating system's own message; the command is not
  left to block on its full output pipes until the time limit.
* **The pipes.** The output readers are waited for at most :data:`READER_JOIN_S`, so a process that escaped
  the group and holds the pipes cannot hang the sweep.

Engine modules name their executables' packages in :data:`PACKAGES`, for the message when one is missing.

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from energybook.measure.engines import EngineUnavailable

logger = logging.getLogger(__name__)

PACKAGES: dict[str, tuple[str, str]] = {}
"""Executable -> (engine name, pip package), filled in by the engine modules (``trtllm-bench``, ``vllm``)."""
TAIL_LINES = 20  # lines of stderr quoted in an error
DEFAULT_TIMEOUT_S = 3600.0
MAX_TIMEOUT_S = 365 * 24 * 3600.0
"""Longest time limit per command (seconds: a year)."""
"""Time limit of one engine command unless told otherwise (seconds); the CLI's ``--timeout`` default."""
KILL_GRACE_S = 5.0
"""Seconds between SIGTERM and SIGKILL when a command's process group is stopped."""
READER_JOIN_S = 5.0
"""Seconds to wait for the output readers after the command ended (a process outside its group may hold the pipes)."""
WAIT_SLICE_S = 0.25
"""Seconds between two looks at the log while the command runs (the exit itself is seen within 50 ms)."""


class CommandFailed(RuntimeError):
    """The engine's benchmark command exited non-zero, timed out or lost its log; :attr:`run` keeps all its output."""

    def __init__(self, message: str, run: CommandRun):
        super().__init__(message)
        self.run = run


def installed_version(package: str) -> str | None:
    """The installed version of the pip package ``package`` (``importlib.metadata``), or ``None`` if it is absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def timeout_option():
    """The ``timeout_s`` field of an external engine's settings (``--timeout``): one flag for both plugins."""
    from energybook.measure.settings import option

    return option(DEFAULT_TIMEOUT_S, "time limit per external command (seconds), then it is stopped",
                  flag="--timeout", low=1e-3, high=MAX_TIMEOUT_S)


def check_timeout(timeout_s: float) -> float:
    """``timeout_s`` as a float if it is a positive, finite number of seconds.

    Raises:
        ValueError: ``None``, zero, negative, infinite or not a number (there is no unbounded run).
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive, finite number of seconds (got {timeout_s!r}); "
                         f"the default is {DEFAULT_TIMEOUT_S:g} s (--timeout)")
    return float(timeout_s)
# ----- running and measuring a command ---------------------------------------------------------


@dataclass
class CommandRun:
    """One measured run of an external command.

    Attributes:
        cmd: The command and its arguments.
        returncode: Exit status (negative: killed by that signal; ``None``: timed out and killed).
        stdout: Everything the command wrote to standard output.
        stderr: Everything the command wrote to standard error.
        t0: Window start, just before the process started (``time.perf_counter`` seconds).
        t1: Window end, just after the process exited (``time.perf_counter`` seconds).
        reading: The meter's reading of [t0, t1] (a :class:`energybook.measure.meter.Reading`), or ``None``
            if the meter could not be read.
        lines: ``(arrival time in perf_counter seconds, "stdout" or "stderr", text)`` for every line.
        log_path: File the output was teed to, if any.
        timed_out: Whether the command was killed for running past its time limit.
        output_complete: Whether the output was read to its end (``False``: a process outside the command's
            process group still held the pipes after :data:`READER_JOIN_S`).
        log_error: Why writing the log failed (the ``OSError``'s message), if it did; the command was then stopped.
    """

    cmd: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    t0: float
    t1: float
    reading: object | None = None
    lines: list[tuple[float, str, str]] = field(default_factory=list, repr=False)
    log_path: Path | None = None
    timed_out: bool = False
    output_complete: bool = True
    log_error: str | None = None

    @property
    def command_line(self) -> str:
        """The command as one shell-quoted string (for provenance)."""
        return shlex.join(self.cmd)

    @property
    def duration_s(self) -> float:
        """Wall time of the process window (seconds)."""
        return self.t1 - self.t0

    @property
    def ok(self) -> bool:
        """Whether the command exited with status 0."""
        return self.returncode == 0

    def stderr_tail(self, n: int = TAIL_LINES) -> str:
        """The last ``n`` lines of standard error (or of standard output when stderr is empty)."""
        text = self.stderr if self.stderr.strip() else self.stdout
        return "\n".join(text.rstrip().splitlines()[-n:])

    def last_time_of(self, pattern: str) -> float | None:
        """Arrival time (perf_counter seconds) of the last output line matching the regex ``pattern``."""
        rx = re.compile(pattern)
        hits = [t for t, _, text in self.lines if rx.search(text)]
        return hits[-1] if hits else None


def _missing(executable: str, path: str | None) -> EngineUnavailable:
    engine, package = PACKAGES.get(executable, (executable, None))
    how = f"install it with `pip install {package}`" if package else "install it"
    return EngineUnavailable(
        f"`{executable}` was not found on PATH, so {engine} cannot be measured here: {how} (in this "
        f"environment, on a machine with an NVIDIA GPU), or pass the executable's full path. energybook's own "
        f"torch engine (`--engine torch`) needs neither TensorRT-LLM nor vLLM."
        + (f" PATH searched: {path}" if path else ""))


class _Tee:
    """Reads a process's stdout and stderr in two threads, keeping every line with its arrival time.

    A failed write of the log closes it, keeps the error in :attr:`log_error` and sets :attr:`failed`; the
    readers go on draining the pipes, so the command never blocks on them.
    """

    def __init__(self, log: IO[str] | None):
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.log = log
        self.threads: list[threading.Thread] = []
        self.log_error: OSError | None = None
        self.failed = threading.Event()

    def _pump(self, stream: IO[str], name: str) -> None:
        sink = self.out if name == "stdout" else self.err
        for text in iter(stream.readline, ""):
            t = time.perf_counter()
            with self.lock:
                sink.append(text)
                self.lines.append((t, name, text.rstrip("\n")))
                if self.log is not None:  # None once closed: a line that arrives later is kept, not logged
                    try:
                        self.log.write(text if name == "stdout" else f"[stderr] {text}")
                        self.log.flush()
                    except OSError as exc:  # a full disk, say: the caller stops the command at once
                        self.log_error, log, self.log = exc, self.log, None
                        with contextlib.suppress(OSError):
                            log.close()
                        self.failed.set()
        stream.close()

    def start(self, proc: subprocess.Popen) -> None:
        self.threads = [threading.Thread(target=self._pump, args=(proc.stdout, "stdout"), daemon=True),
                        threading.Thread(target=self._pump, args=(proc.stderr, "stderr"), daemon=True)]
        for t in self.threads:
            t.start()

    def join(self, limit_s: float) -> bool:
        """Wait at most ``limit_s`` in all for the readers; whether both reached the end of their stream."""
        deadline = time.monotonic() + limit_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def close(self) -> None:
        with self.lock:
            log, self.log = self.log, None
        if log is not None:
            with contextlib.suppress(OSError):  # a failure of the last flush was already seen, or is moot now
                log.close()

    def snapshot(self) -> tuple[str, str, list[tuple[float, str, str]]]:
        with self.lock:
            return "".join(self.out), "".join(self.err), sorted(self.lines)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the command's process group (the command leads it: ``start_new_session``)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        elif proc.poll() is None:  # pragma: no cover - no process groups (Windows): the direct child only
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def _live_members(pgid: int) -> bool | None:
    """Whether process group ``pgid`` has a member that has not exited, from ``/proc`` (``None``: no ``/proc``).

    ``killpg(pgid, 0)`` also counts zombies: orphans that exited but wait for init to reap them, which in some
    containers happens late or never.
    """
    root = Path("/proc")
    if not (root / "self" / "stat").is_file():
        return None
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of the command's group is still running (exited zombies do not count)."""
    if not hasattr(os, "killpg"):  # pragma: no cover
        return proc.poll() is None
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member runs as another user: still there
        return True
    live = _live_members(proc.pid)
    return True if live is None else live


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the whole process group, then SIGKILL to what is left after ``grace_s``; reaps the command."""
    _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while (proc.poll() is None or _group_alive(proc)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:  # also when a second Ctrl-C cuts the grace short
        if proc.poll() is None or _group_alive(proc):
            _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)


def _open_log(log_path: Path, cmd: list[str]) -> IO[str]:
    """The log, opened and headed with the command line (flushed, so a full disk shows before anything runs).

    Raises:
        OSError: the log cannot be created or written; the message names the command, the file and the cause.
    """
    log = None
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - the tee closes it
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
    except OSError as exc:
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
        raise OSError(exc.errno, f"cannot write the log of {cmd[0]} at {log_path} ({exc}), so it was not run: "
                                 "free space on that disk or make the folder writable, then rerun to resume") from exc
    return log


def _wait(proc: subprocess.Popen, tee: _Tee, timeout_s: float) -> str:
    """Wait for the command: ``"exit"``, ``"timeout"`` (past ``timeout_s``) or ``"log"`` (its log failed)."""
    deadline = time.monotonic() + timeout_s
    while not tee.failed.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        try:
            proc.wait(timeout=min(WAIT_SLICE_S, left))
            return "exit"
        except subprocess.TimeoutExpired:
            continue
    return "log"


def _failure(run: CommandRun, timeout_s: float) -> str:
    """Why the command failed, what to do and where its output is (the message of :class:`CommandFailed`)."""
    where = f" The full output is in {run.log_path}." if run.log_path and not run.log_error else ""
    if run.log_error:
        why = (f"was stopped with its whole process group after {run.duration_s:.1f} s: writing its log "
               f"{run.log_path} failed ({run.log_error}). Free space on that disk or make the folder writable, "
               "then rerun to resume.")
    elif run.timed_out:
        why = (f"timed out: it exceeded its time limit of {timeout_s:g} s and was stopped with its whole process "
               f"group. If the engine needs longer at this point, raise --timeout (timeout_s); otherwise check "
               f"the engine (a hang, a stuck GPU, a download waiting for credentials).")
    else:
        why = f"exited with status {run.returncode}."
    return f"{run.command_line} {why}{where} Last lines of its output:\n{run.stderr_tail()}"


def measure_command(cmd: list[str], meter, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S, log_path: str | Path | None = None,
                    check: bool = True) -> CommandRun:
    """Run an external command and measure the GPU energy of exactly that run.

    The meter window opens (:meth:`Meter.now`, which synchronises first) just before the process
    starts and closes just after it exits. Standard output and error are kept in full, with each
    line's arrival time, and teed to ``log_path`` as they arrive. ``PYTHONUNBUFFERED=1`` is set so
    that a Python engine's lines arrive when they are written.

    The command runs in a new session (``start_new_session=True``), so it and every process it starts share
    one process group. Past ``timeout_s``, when its log cannot be written, or on ``KeyboardInterrupt`` (which
    then propagates), the whole group is stopped: SIGTERM, then SIGKILL after :data:`KILL_GRACE_S`. Members
    still running after a normal exit are stopped the same way (with a warning). The output readers are waited
    for at most :data:`READER_JOIN_S`, so a process that escaped the group and holds the pipes cannot hang the
    sweep.

    Args:
        cmd: The command and its arguments; ``cmd[0]`` is looked up on ``PATH`` (of ``env`` if given).
        meter: A started :class:`energybook.measure.meter.Meter` (or any object with ``now()`` and
            ``reading(t0, t1)``).
        cwd: Working directory of the command.
        env: Environment of the command (default: this process's environment).
        timeout_s: Stop the command after this many seconds (positive and finite; default an hour).
        log_path: File to tee the output to (created with its parent folders; overwritten).
        check: Raise :class:`CommandFailed` on a non-zero exit or a timeout (a failed log raises always).

    Returns:
        The run, with its output and the meter's reading of its window.

    Raises:
        ValueError: ``timeout_s`` is not a positive, finite number of seconds.
        EngineUnavailable: ``cmd[0]`` is not installed; the message names the package to install.
        OSError: The log cannot be created or written before the command starts (nothing ran).
        CommandFailed: The command exited non-zero or timed out (``check``), or its log failed while it ran;
            ``.run`` keeps its output, and the ``OSError`` of a failed log is its ``__cause__``.
    """
    timeout_s = check_timeout(timeout_s)
    cmd = [str(c) for c in cmd]
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PYTHONUNBUFFERED", "1")
    search_path = run_env.get("PATH")
    exe = shutil.which(cmd[0], path=search_path)
    if exe is None:
        raise _missing(cmd[0], search_path)
    log_path = None if log_path is None else Path(log_path)
    tee = _Tee(None if log_path is None else _open_log(log_path, cmd))
    logger.info("running: %s", shlex.join(cmd))
    try:
        t0 = meter.now()
        try:
            proc = subprocess.Popen([exe, *cmd[1:]], cwd=cwd, env=run_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                    start_new_session=True)
        except FileNotFoundError:  # vanished between which() and Popen
            raise _missing(cmd[0], search_path) from None
        tee.start(proc)
        try:
            outcome = _wait(proc, tee, timeout_s)
        except BaseException:  # KeyboardInterrupt (the command no longer shares our terminal's group), or worse
            logger.error("interrupted: stopping the process group of %s", cmd[0])
            _stop_group(proc, KILL_GRACE_S)
            raise
        if outcome == "timeout":
            logger.error("%s exceeded its time limit of %g s: stopping its process group", cmd[0], timeout_s)
        elif outcome == "log":
            logger.error("writing the log %s failed (%s): stopping the process group of %s", log_path,
                         tee.log_error, cmd[0])
        if outcome != "exit":
            _stop_group(proc, KILL_GRACE_S)
        t1 = meter.now()
        if outcome == "exit" and _group_alive(proc):
            logger.warning("%s exited but left processes of its group running; stopping them", cmd[0])
            _stop_group(proc, KILL_GRACE_S)
        complete = tee.join(READER_JOIN_S)
        if not complete:
            logger.warning("the output of %s is still held open %g s after it ended (a process outside its "
                           "process group); the output kept may be incomplete", cmd[0], READER_JOIN_S)
    finally:
        tee.close()
    reading = None
    try:
        reading = meter.reading(t0, t1)
    except Exception as exc:  # noqa: BLE001 - keep the output; say why there is no energy
        logger.error("the meter could not read the window of %s: %s", cmd[0], exc)
    out, err, lines = tee.snapshot()
    timed_out = outcome == "timeout"
    run = CommandRun(cmd, None if timed_out else proc.returncode, out, err, t0, t1, reading, lines, log_path,
                     timed_out, complete, None if tee.log_error is None else str(tee.log_error))
    if tee.log_error is not None:
        raise CommandFailed(_failure(run, timeout_s), run) from tee.log_error
    if check and (timed_out or proc.returncode != 0):
        raise CommandFailed(_failure(run, timeout_s), run)
    return run
