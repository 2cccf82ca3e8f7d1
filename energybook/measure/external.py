"""Measure external inference engines (TensorRT-LLM, vLLM) through their own benchmark commands.

energybook runs the engine's benchmark as a subprocess and measures the GPU energy of exactly that
run with :class:`energybook.measure.meter.Meter`: the window opens just before the process starts and closes
just after it exits (:func:`measure_command`). The engine's printed report is kept, parsed and
checked against the workload that was asked for.

* **TensorRT-LLM** (the SweetSpot study's engine, 0.21.0): :func:`write_trtllm_dataset` writes the
  synthetic requests (token ids, exactly ``n_in`` input and ``n_out`` output tokens each),
  :func:`trtllm_build_command` builds the engine once with the study's settings
  (:data:`STUDY_TRTLLM`: TP 1, PP 1, max sequence 8192, max batch size 1024, max tokens 8192) and
  :func:`trtllm_throughput_command` runs one grid point; :func:`parse_trtllm_report` reads the report.
* **vLLM**: :func:`vllm_throughput_command` runs ``vllm bench throughput`` on its random data set
  with fixed lengths (the benchmark sets ``ignore_eos``); :func:`parse_vllm_output` reads the JSON
  it writes and its printed ``Throughput:`` line.

:class:`TrtllmBenchEngine` and :class:`VllmBenchEngine` give the sweep one method per grid point,
``run_point(meter, n_in, n_out, n_req) -> ExternalRun``, and :meth:`ExternalRun.row` gives the same
columns as the torch engine's rows.

Two energy windows are recorded per point. The *process* window holds everything the command did:
start-up, weight loading, the engine's warm-up requests and the timed run. The *bench* window is the
engine's own timed run: it ends when the engine's end-of-run line arrives on its output (each line's
arrival time is recorded) and lasts the duration the engine reports. ``energy_j`` is the bench
window when it could be located, else the process window; the ``window`` column says which.

Safeguards, all checked before anything is recorded:

* **Time limit.** Every command has one (:data:`DEFAULT_TIMEOUT_S`, an hour, unless told otherwise; never
  unbounded). It runs in its own session and process group; on a timeout or ``KeyboardInterrupt`` the whole
  group (the engine's workers included) gets SIGTERM, then SIGKILL after :data:`KILL_GRACE_S`. Processes the
  command leaves behind after a normal exit are stopped the same way, so they cannot heat the next point's window.
* **Reports are checked** (:func:`check_report`): a report with no output tokens, another number of
  requests, token counts other than ``n_req * n_in`` / ``n_req * n_out``, or a duration that is not a
  positive number raises :class:`ReportError`; it never becomes a row.
* **Paths stay in the workspace.** Each engine's files (data sets, reports, logs, TensorRT-LLM's engine)
  go to ``<workspace_dir>/<model slug>/`` and are checked to lie inside ``workspace_dir``
  (:class:`energybook.store.workspace.PathError` otherwise), so ``--model ../../x`` cannot write elsewhere.

Neither engine is installed where this package was written and tested: these paths were exercised
with stand-in subprocesses that print the documented report formats, never with a real engine.

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from energybook.measure.engines import EngineUnavailable
from energybook.store.workspace import PathError, slug

logger = logging.getLogger(__name__)

# executable -> (engine name, pip package)
PACKAGES = {"trtllm-bench": ("TensorRT-LLM", "tensorrt-llm"), "vllm": ("vLLM", "vllm")}
TAIL_LINES = 20  # lines of stderr quoted in an error
DEFAULT_TIMEOUT_S = 3600.0
"""Time limit of one engine command unless told otherwise (seconds); the CLI's ``--timeout`` default."""
KILL_GRACE_S = 5.0
"""Seconds between SIGTERM and SIGKILL when a command's process group is stopped."""
READER_JOIN_S = 5.0
"""Seconds to wait for the output readers after the command ended (a process outside its group may hold the pipes)."""


class CommandFailed(RuntimeError):
    """The engine's benchmark command exited non-zero or timed out; :attr:`run` keeps all its output."""

    def __init__(self, message: str, run: CommandRun):
        super().__init__(message)
        self.run = run


class ReportError(RuntimeError):
    """The engine's report cannot be recorded: a figure contradicts the workload or is not a usable number.

    Attributes:
        engine: ``"trtllm"`` or ``"vllm"``.
        point: ``(n_in, n_out, n_req)`` asked for.
        problems: One sentence per bad figure.
        run: The measured command (its full output), when there was one.
        report: The parsed report, when it could be parsed.
    """

    def __init__(self, message: str, engine: str, point: tuple[int, int, int], problems: list[str],
                 run: CommandRun | None = None, report: TrtllmReport | VllmReport | None = None):
        super().__init__(message)
        self.engine, self.point, self.problems, self.run, self.report = engine, point, problems, run, report


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
    """Reads a process's stdout and stderr in two threads, keeping every line with its arrival time."""

    def __init__(self, log: IO[str] | None):
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.log = log
        self.threads: list[threading.Thread] = []

    def _pump(self, stream: IO[str], name: str) -> None:
        sink = self.out if name == "stdout" else self.err
        for text in iter(stream.readline, ""):
            t = time.perf_counter()
            with self.lock:
                sink.append(text)
                self.lines.append((t, name, text.rstrip("\n")))
                if self.log is not None:  # None once closed: a line that arrives later is kept, not logged
                    self.log.write(text if name == "stdout" else f"[stderr] {text}")
                    self.log.flush()
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


def measure_command(cmd: list[str], meter, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S, log_path: str | Path | None = None,
                    check: bool = True) -> CommandRun:
    """Run an external command and measure the GPU energy of exactly that run.

    The meter window opens (:meth:`Meter.now`, which synchronises first) just before the process
    starts and closes just after it exits. Standard output and error are kept in full, with each
    line's arrival time, and teed to ``log_path`` as they arrive. ``PYTHONUNBUFFERED=1`` is set so
    that a Python engine's lines arrive when they are written.

    The command runs in a new session (``start_new_session=True``), so it and every process it starts share
    one process group. Past ``timeout_s``, or on ``KeyboardInterrupt`` (which then propagates), the whole
    group is stopped: SIGTERM, then SIGKILL after :data:`KILL_GRACE_S`. Members still running after a normal
    exit are stopped the same way (with a warning). The output readers are waited for at most
    :data:`READER_JOIN_S`, so a process that escaped the group and holds the pipes cannot hang the sweep.

    Args:
        cmd: The command and its arguments; ``cmd[0]`` is looked up on ``PATH`` (of ``env`` if given).
        meter: A started :class:`energybook.measure.meter.Meter` (or any object with ``now()`` and
            ``reading(t0, t1)``).
        cwd: Working directory of the command.
        env: Environment of the command (default: this process's environment).
        timeout_s: Stop the command after this many seconds (positive and finite; default an hour).
        log_path: File to tee the output to (created with its parent folders; overwritten).
        check: Raise :class:`CommandFailed` on a non-zero exit or a timeout.

    Returns:
        The run, with its output and the meter's reading of its window.

    Raises:
        ValueError: ``timeout_s`` is not a positive, finite number of seconds.
        EngineUnavailable: ``cmd[0]`` is not installed; the message names the package to install.
        CommandFailed: The command exited non-zero or timed out (``check``); ``.run`` keeps its output.
    """
    timeout_s = check_timeout(timeout_s)
    cmd = [str(c) for c in cmd]
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PYTHONUNBUFFERED", "1")
    search_path = run_env.get("PATH")
    exe = shutil.which(cmd[0], path=search_path)
    if exe is None:
        raise _missing(cmd[0], search_path)
    log = None
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by tee.close below
        log.write(f"$ {shlex.join(cmd)}\n")
    tee = _Tee(log)
    timed_out = False
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
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            logger.error("%s exceeded its time limit of %g s: stopping its process group", cmd[0], timeout_s)
            _stop_group(proc, KILL_GRACE_S)
        except BaseException:  # KeyboardInterrupt (the command no longer shares our terminal's group), or worse
            logger.error("interrupted: stopping the process group of %s", cmd[0])
            _stop_group(proc, KILL_GRACE_S)
            raise
        t1 = meter.now()
        if not timed_out and _group_alive(proc):
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
    run = CommandRun(cmd, None if timed_out else proc.returncode, out, err, t0, t1, reading, lines, log_path,
                     timed_out, complete)
    if check and (timed_out or proc.returncode != 0):
        where = f" The full output is in {log_path}." if log_path else ""
        if timed_out:
            why = (f"timed out: it exceeded its time limit of {timeout_s:g} s and was stopped with its whole process "
                   f"group. If the engine needs longer at this point, raise --timeout (timeout_s); otherwise check "
                   f"the engine (a hang, a stuck GPU, a download waiting for credentials).")
        else:
            why = f"exited with status {proc.returncode}."
        raise CommandFailed(f"{run.command_line} {why}{where} Last lines of its output:\n{run.stderr_tail()}", run)
    return run


# ----- TensorRT-LLM: trtllm-bench --------------------------------------------------------------


def trtllm_version() -> str | None:
    """Installed TensorRT-LLM version (``importlib.metadata``), or ``None`` if it is not installed."""
    try:
        return importlib.metadata.version("tensorrt-llm")
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_version() -> str | None:
    """Installed vLLM version (``importlib.metadata``), or ``None`` if it is not installed."""
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None


def write_trtllm_dataset(path: str | Path, n_in: int, n_out: int, n_req: int, vocab_size: int = 32000,
                         low_id: int = 100, seed: int = 0) -> Path:
    """Write the synthetic workload in the JSON-lines format that ``trtllm-bench`` reads.

    One request per line: ``{"task_id": i, "input_ids": [n_in token ids], "output_tokens": n_out}``.
    Format: TensorRT-LLM docs, "Preparing a Dataset" in docs/source/performance/perf-benchmarking.md
    (https://nvidia.github.io/TensorRT-LLM/performance/perf-benchmarking.html): keys ``task_id``
    (unique), ``input_ids`` (list of ints; ``prompt`` must then be absent) and ``output_tokens`` (int);
    one complete JSON entry per line. The reader is ``create_dataset_from_stream`` in
    tensorrt_llm/bench/utils/data.py (it stops at the first empty line, so there are none). The
    study's own tool, ``prepare_dataset.py token-norm-dist --input-stdev 0 --output-stdev 0``
    (benchmarks/cpp/prepare_dataset.py), writes the same keys with random token ids.

    Token ids are drawn uniformly from ``[low_id, vocab_size)`` with a fixed seed; the default
    32000 lies inside the vocabulary of every model of the study, and ids below 100 (where the
    special tokens of most tokenizers sit) are avoided. ``trtllm-bench`` ends generation on EOS
    only when ``--eos_id`` is given (default -1: EOS disabled), so every request yields ``n_out`` tokens.

    Args:
        path: File to write (parent folders are created).
        n_in: Input tokens per request.
        n_out: Output tokens per request.
        n_req: Number of requests.
        vocab_size: Token ids stay below this.
        low_id: Token ids start at this.
        seed: Seed of the token ids.

    Returns:
        The path written.
    """
    if min(n_in, n_out, n_req) < 1:
        raise ValueError(f"n_in, n_out and n_req must be positive (got {n_in}, {n_out}, {n_req})")
    if not 0 <= low_id < vocab_size:
        raise ValueError(f"need 0 <= low_id < vocab_size (got {low_id}, {vocab_size})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_req):
            ids = [rng.randrange(low_id, vocab_size) for _ in range(n_in)]
            f.write(json.dumps({"task_id": i, "input_ids": ids, "output_tokens": n_out}, separators=(",", ":")))
            f.write("\n")
    return path


@dataclass(frozen=True)
class TrtllmSettings:
    """Engine build settings for ``trtllm-bench build``.

    Flag names as in tensorrt_llm/bench/build/build.py (``--tp_size``, ``--pp_size``, ``--max_seq_len``,
    ``--max_batch_size``, ``--max_num_tokens``, ``--quantization``, ``--no_weights_loading``) and the
    docs' "Other Build Modes" (``trtllm-bench ... build --max_seq_len 4096 --max_batch_size 1024
    --max_num_tokens 2048``). ``--max_batch_size`` and ``--max_num_tokens`` are one option group (both or
    neither) and exclude ``--dataset``; without ``--dataset``, ``--max_seq_len`` is required.

    Attributes:
        tp_size: Tensor-parallel shards.
        pp_size: Pipeline-parallel stages.
        max_seq_len: Longest request, prompt plus output (tokens).
        max_batch_size: Most requests the in-flight batcher schedules at once.
        max_num_tokens: Most tokens the batcher schedules in one iteration.
        quantization: ``None`` for the checkpoint's own dtype (the study did not state one), or e.g. ``"FP8"``.
        dummy_weights: Build with dummy weights (``--no_weights_loading True``): no checkpoint download;
            the engine's speed is that of the real one, its text is not.
    """

    tp_size: int = 1
    pp_size: int = 1
    max_seq_len: int = 8192
    max_batch_size: int = 1024
    max_num_tokens: int = 8192
    quantization: str | None = None
    dummy_weights: bool = False


STUDY_TRTLLM = TrtllmSettings()
"""The SweetSpot study's build: TP 1, PP 1, max sequence 8192, max batch size 1024, max tokens 8192."""


def _trtllm_global(model: str, model_path: str | Path | None, workspace: str | Path | None) -> list[str]:
    # Global options come before the sub-command (docs, "trtllm-bench" reference: --model/-m,
    # --model_path, --workspace/-w, --log_level).
    cmd = ["trtllm-bench", "--model", model]
    if model_path is not None:
        cmd += ["--model_path", str(model_path)]
    if workspace is not None:
        cmd += ["--workspace", str(workspace)]
    return cmd


def trtllm_build_command(model: str, model_path: str | Path | None = None, workspace: str | Path | None = None,
                         settings: TrtllmSettings = STUDY_TRTLLM) -> list[str]:
    """``trtllm-bench --model M [--model_path P] [--workspace W] build ...`` with explicit engine settings.

    Args:
        model: Hugging Face model name (used by trtllm-bench for its configuration and in the report).
        model_path: Local checkpoint folder, if the weights are not to be fetched by name.
        workspace: trtllm-bench's workspace (default ``/tmp``); the engine lands in
            :func:`trtllm_engine_dir` of it.
        settings: Build settings (default: the study's).
    """
    s = settings
    cmd = _trtllm_global(model, model_path, workspace) + [
        "build", "--tp_size", str(s.tp_size), "--pp_size", str(s.pp_size), "--max_seq_len", str(s.max_seq_len),
        "--max_batch_size", str(s.max_batch_size), "--max_num_tokens", str(s.max_num_tokens)]
    if s.quantization:
        cmd += ["--quantization", s.quantization]
    if s.dummy_weights:
        cmd += ["--no_weights_loading", "True"]
    return cmd


def trtllm_engine_dir(workspace: str | Path, model: str, settings: TrtllmSettings = STUDY_TRTLLM) -> Path:
    """Where ``trtllm-bench build`` saves the engine: ``WORKSPACE/MODEL/tp_T_pp_P`` (build.py)."""
    return Path(workspace, model, f"tp_{settings.tp_size}_pp_{settings.pp_size}")


def trtllm_throughput_command(model: str, dataset: str | Path, engine_dir: str | Path,
                              model_path: str | Path | None = None, workspace: str | Path | None = None,
                              backend: str | None = "tensorrt", report_json: str | Path | None = None,
                              extra: tuple[str, ...] = ()) -> list[str]:
    """``trtllm-bench --model M throughput --dataset D --engine_dir E --backend tensorrt [--report_json F]``.

    ``--backend tensorrt`` runs the built engine; it is said explicitly because TensorRT-LLM 1.0 made
    the PyTorch backend the default (NVIDIA/TensorRT-LLM issue #8223; 0.21.0 ran the TRT engine by
    default; issue #5450 shows this exact command form). Pass ``backend=None`` to leave it out.
    ``--report_json`` (tensorrt_llm/bench/benchmark/throughput.py) writes the report as JSON beside
    the printed one. EOS stays disabled (``--eos_id`` default -1), so each request yields its
    ``output_tokens``.
    """
    cmd = _trtllm_global(model, model_path, workspace) + [
        "throughput", "--dataset", str(dataset), "--engine_dir", str(engine_dir)]
    if backend:
        cmd += ["--backend", backend]
    if report_json is not None:
        cmd += ["--report_json", str(report_json)]
    return cmd + list(extra)


@dataclass
class TrtllmReport:
    """The figures ``trtllm-bench throughput`` reports.

    Attributes:
        num_requests: Requests completed.
        request_throughput_req_s: Requests per second.
        output_throughput_tok_s: Output tokens per second ("Total Output Throughput"; "Token
            Throughput" in 0.17-era reports).
        total_token_throughput_tok_s: Input plus output tokens per second (``nan`` if not reported).
        total_latency_ms: First request start to last request end (milliseconds).
        avg_input_length: Mean input tokens per request.
        avg_output_length: Mean output tokens per request.
        version: TensorRT-LLM version the report names, if any.
    """

    num_requests: int
    request_throughput_req_s: float
    output_throughput_tok_s: float
    total_token_throughput_tok_s: float
    total_latency_ms: float
    avg_input_length: float
    avg_output_length: float
    version: str | None = None

    @property
    def duration_s(self) -> float:
        """The engine's own duration of the timed run (seconds)."""
        return self.total_latency_ms / 1000.0

    @property
    def total_output_tokens(self) -> int:
        """Output tokens of the whole run: mean output length times requests."""
        return round(self.avg_output_length * self.num_requests)

    @property
    def total_input_tokens(self) -> int:
        """Input tokens of the whole run: mean input length times requests."""
        return round(self.avg_input_length * self.num_requests)

    def counts(self) -> dict[str, tuple[float | None, bool]]:
        """The counts :func:`check_report` checks: name -> (value or ``None`` if not reported, exact)."""
        n = self.num_requests
        return {"requests": (n, True), "output tokens": (self.avg_output_length * n, True),
                "input tokens": (self.avg_input_length * n if math.isfinite(self.avg_input_length) else None, True)}


# Labels of the printed report, from ReportUtility.report_statistics in
# tensorrt_llm/bench/dataclasses/reporting.py and the sample outputs in
# docs/source/performance/perf-benchmarking.md (0.17-era "Token Throughput (tokens/sec)").
_NUM = r"([-+0-9.eE]+|nan|inf)"
_TRT_LABELS = {
    "num_requests": [r"Number of requests:"],
    "request_throughput_req_s": [r"Request Throughput \(req/sec\):"],
    "output_throughput_tok_s": [r"Total Output Throughput \(tokens/sec\):", r"Token Throughput \(tokens/sec\):"],
    "total_token_throughput_tok_s": [r"Total Token Throughput \(tokens/sec\):"],
    "total_latency_ms": [r"Total Latency \(ms\):"],
    "avg_input_length": [r"Average Input Length \(tokens\):"],
    "avg_output_length": [r"Average Output Length \(tokens\):"],
}
_TRT_REQUIRED = ("num_requests", "request_throughput_req_s", "output_throughput_tok_s", "total_latency_ms",
                 "avg_output_length")


def _find_number(text: str, labels: list[str]) -> float | None:
    for label in labels:
        hits = re.findall(r"^\s*" + label + r"\s*" + _NUM + r"\s*$", text, flags=re.MULTILINE)
        if hits:
            return float(hits[-1])  # the last report in the output
    return None


def parse_trtllm_report(text: str) -> TrtllmReport:
    """Parse the report that ``trtllm-bench throughput`` prints (its last one, if several).

    Raises:
        ValueError: A required figure is missing; the message names it.
    """
    values = {k: _find_number(text, labels) for k, labels in _TRT_LABELS.items()}
    missing = [k for k in _TRT_REQUIRED if values[k] is None]
    if missing:
        raise ValueError(f"not a trtllm-bench throughput report: no {', '.join(missing)} "
                         "(expected lines such as 'Request Throughput (req/sec):' and 'Total Latency (ms):')")
    version = re.findall(r"^\s*TensorRT[- ]LLM Version:\s*(\S+)", text, flags=re.MULTILINE)
    nan = float("nan")
    return TrtllmReport(
        num_requests=int(values["num_requests"]),
        request_throughput_req_s=values["request_throughput_req_s"],
        output_throughput_tok_s=values["output_throughput_tok_s"],
        total_token_throughput_tok_s=nan if values["total_token_throughput_tok_s"] is None
        else values["total_token_throughput_tok_s"],
        total_latency_ms=values["total_latency_ms"],
        avg_input_length=nan if values["avg_input_length"] is None else values["avg_input_length"],
        avg_output_length=values["avg_output_length"],
        version=version[-1] if version else None,
    )


def parse_trtllm_report_json(source: str | Path | dict) -> TrtllmReport:
    """Parse the file ``trtllm-bench throughput --report_json F`` writes.

    Keys from ``ReportUtility.get_statistics_dict`` (tensorrt_llm/bench/dataclasses/reporting.py):
    ``engine.version``, ``request_info.{num_requests, avg_input_length, avg_output_length}``,
    ``performance.{total_latency_ms, request_throughput_req_s, system_output_throughput_tok_s,
    system_total_throughput_tok_s}``.
    """
    d = source if isinstance(source, dict) else json.loads(Path(source).read_text(encoding="utf-8"))
    try:
        req, perf = d["request_info"], d["performance"]
        return TrtllmReport(
            num_requests=int(req["num_requests"]),
            request_throughput_req_s=float(perf["request_throughput_req_s"]),
            output_throughput_tok_s=float(perf["system_output_throughput_tok_s"]),
            total_token_throughput_tok_s=float(perf.get("system_total_throughput_tok_s", float("nan"))),
            total_latency_ms=float(perf["total_latency_ms"]),
            avg_input_length=float(req.get("avg_input_length", float("nan"))),
            avg_output_length=float(req["avg_output_length"]),
            version=(d.get("engine") or {}).get("version"),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a trtllm-bench report JSON: missing {exc}") from None


# ----- vLLM: vllm bench throughput -------------------------------------------------------------


@dataclass(frozen=True)
class VllmSettings:
    """Engine settings passed to ``vllm bench throughput`` (vLLM's engine arguments).

    Attributes:
        load_format: ``"dummy"`` for random weights (no checkpoint download; speed as with real
            weights), ``None`` to load the checkpoint.
        max_num_seqs: Most sequences per iteration (the study's max_batch_size).
        max_num_batched_tokens: Most tokens per iteration (the study's max_num_tokens); ``None``: vLLM's default.
        max_model_len: Longest request (tokens); ``None``: the model's own.
        dtype: Weights and activations dtype; ``None``: vLLM's ``auto``.
        tensor_parallel_size: GPUs per model.
        extra: Further arguments, appended as given.
    """

    load_format: str | None = "dummy"
    max_num_seqs: int | None = 1024
    max_num_batched_tokens: int | None = 8192
    max_model_len: int | None = 8192
    dtype: str | None = None
    tensor_parallel_size: int = 1
    extra: tuple[str, ...] = ()


STUDY_VLLM = VllmSettings()
"""vLLM settings mirroring the study's TensorRT-LLM build (1024 sequences, 8192 tokens, 8192 max length)."""


def vllm_throughput_command(model: str, n_in: int, n_out: int, n_req: int, output_json: str | Path,
                            settings: VllmSettings = STUDY_VLLM, executable: str = "vllm") -> list[str]:
    """``vllm bench throughput --model M --dataset-name random --input-len n_in --output-len n_out ...``.

    From vllm/benchmarks/throughput.py: without a data set path the benchmark falls back to its
    random data set; ``--dataset-name random`` says so explicitly (its default is ``sharegpt``).
    ``--input-len``/``--output-len`` set the lengths (newer versions map them onto
    ``--random-input-len``/``--random-output-len``); ``--random-range-ratio`` is left at its default,
    which gives every request exactly these lengths (0.0 in current versions, symmetric range;
    1.0 in older ``benchmark_throughput.py``, range [ratio*len, len]). ``run_vllm`` sets
    ``SamplingParams(ignore_eos=True, max_tokens=expected_output_len)``, so EOS is ignored.

    Args:
        model: Hugging Face model name or local checkpoint folder.
        n_in: Input tokens per request.
        n_out: Output tokens per request.
        n_req: Number of requests (``--num-prompts``).
        output_json: File the benchmark writes its results to (``--output-json``).
        settings: Engine settings (default :data:`STUDY_VLLM`, dummy weights).
        executable: The ``vllm`` command.
    """
    s = settings
    cmd = [executable, "bench", "throughput", "--model", str(model), "--dataset-name", "random",
           "--input-len", str(n_in), "--output-len", str(n_out), "--num-prompts", str(n_req),
           "--output-json", str(output_json)]
    if s.load_format:
        cmd += ["--load-format", s.load_format]
    for flag, value in (("--max-num-seqs", s.max_num_seqs), ("--max-num-batched-tokens", s.max_num_batched_tokens),
                        ("--max-model-len", s.max_model_len), ("--dtype", s.dtype)):
        if value is not None:
            cmd += [flag, str(value)]
    if s.tensor_parallel_size != 1:
        cmd += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    return cmd + list(s.extra)


@dataclass
class VllmReport:
    """The figures ``vllm bench throughput`` reports.

    Attributes:
        elapsed_time_s: The engine's own duration of ``llm.generate`` over all requests (seconds).
        num_requests: Requests run.
        total_num_tokens: Prompt plus output tokens of all requests.
        requests_per_second: Requests per second.
        tokens_per_second: Prompt plus output tokens per second.
        total_prompt_tokens: Prompt tokens (printed "Total num prompt tokens:"; ``None`` if absent).
        total_output_tokens: Output tokens (printed "Total num output tokens:", else the JSON's total less the
            printed prompt tokens, else derived from the printed output tokens/s; ``None`` if none is there).
        derived: Names of the figures derived from throughputs that vLLM prints rounded to 2 decimals
            (approximate), rather than counted by vLLM.
    """

    elapsed_time_s: float
    num_requests: int
    total_num_tokens: int | None
    requests_per_second: float
    tokens_per_second: float
    total_prompt_tokens: int | None = None
    total_output_tokens: int | None = None
    derived: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        """The engine's own duration of the timed run (seconds)."""
        return self.elapsed_time_s

    def counts(self) -> dict[str, tuple[float | None, bool]]:
        """The counts :func:`check_report` checks: name -> (value or ``None`` if not reported, exact)."""
        return {"requests": (self.num_requests, "num_requests" not in self.derived),
                "output tokens": (self.total_output_tokens, "total_output_tokens" not in self.derived),
                "input tokens": (self.total_prompt_tokens, True),
                "input plus output tokens": (self.total_num_tokens, "total_num_tokens" not in self.derived)}


_VLLM_THROUGHPUT = re.compile(r"Throughput:\s*" + _NUM + r"\s*requests/s,\s*" + _NUM + r"\s*total tokens/s"
                              r"(?:,\s*" + _NUM + r"\s*output tokens/s)?")


def parse_vllm_output(stdout: str, output_json: str | Path | dict | None = None) -> VllmReport:
    """Parse ``vllm bench throughput``'s results: the ``--output-json`` file, else its printed lines.

    JSON keys (vllm/benchmarks/throughput.py, ``main``): ``elapsed_time``, ``num_requests``,
    ``total_num_tokens``, ``requests_per_second``, ``tokens_per_second``. Printed lines:
    ``Throughput: R requests/s, T total tokens/s, O output tokens/s``, ``Total num prompt tokens:  P``,
    ``Total num output tokens:  N``. Without the JSON, elapsed time and token totals are derived from
    the throughput line (rounded to 2 decimals by vLLM), so they are approximate.

    Raises:
        ValueError: Neither the JSON nor a ``Throughput:`` line is there.
    """
    prompt = re.findall(r"^\s*Total num prompt tokens:\s*(\d+)", stdout, flags=re.MULTILINE)
    output = re.findall(r"^\s*Total num output tokens:\s*(\d+)", stdout, flags=re.MULTILINE)
    tp = _VLLM_THROUGHPUT.findall(stdout)
    data = None
    if isinstance(output_json, dict):
        data = output_json
    elif output_json is not None and Path(output_json).is_file():
        data = json.loads(Path(output_json).read_text(encoding="utf-8"))
    n_prompt = int(prompt[-1]) if prompt else None
    n_output = int(output[-1]) if output else None
    if data is not None:
        try:
            rep = VllmReport(float(data["elapsed_time"]), int(data["num_requests"]), int(data["total_num_tokens"]),
                             float(data["requests_per_second"]), float(data["tokens_per_second"]), n_prompt, n_output)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a vllm bench throughput JSON: missing {exc}") from None
        if rep.total_output_tokens is None and n_prompt is not None:
            rep.total_output_tokens = rep.total_num_tokens - n_prompt  # both counted by vLLM
        elif rep.total_output_tokens is None and tp and tp[-1][2] and math.isfinite(rep.elapsed_time_s):
            rep.total_output_tokens = round(float(tp[-1][2]) * rep.elapsed_time_s)
            rep.derived = ("total_output_tokens",)
        return rep
    if not tp:
        raise ValueError("no vllm bench throughput results: no --output-json file and no "
                         "'Throughput: ... requests/s, ... total tokens/s' line in the output")
    rps, tps, ops = tp[-1]
    derived = ["elapsed_time_s", "num_requests"]
    total = n_prompt + n_output if n_prompt is not None and n_output is not None else None
    elapsed = total / float(tps) if total is not None and float(tps) > 0 else float("nan")
    n_req = round(float(rps) * elapsed) if math.isfinite(elapsed) else 0
    if n_output is None and ops and math.isfinite(elapsed):
        n_output = round(float(ops) * elapsed)
        derived.append("total_output_tokens")
    return VllmReport(elapsed, n_req, total, float(rps), float(tps), n_prompt, n_output, tuple(derived))


# ----- checking a report ---------------------------------------------------------------------

DERIVED_TOLERANCE = 0.01
"""Relative tolerance for counts derived from throughputs that vLLM rounds to 2 decimals (at least one unit)."""


def _expected_counts(n_in: int, n_out: int, n_req: int) -> dict[str, int]:
    return {"requests": n_req, "output tokens": n_req * n_out, "input tokens": n_req * n_in,
            "input plus output tokens": n_req * (n_in + n_out)}


def _matches(value: float, expected: int, exact: bool) -> bool:
    if not math.isfinite(value):
        return False
    if exact:
        return abs(value - expected) < 0.5  # an exact count (a mean length times requests may carry float noise)
    return abs(value - expected) <= max(1.0, DERIVED_TOLERANCE * expected)


def report_problems(report: TrtllmReport | VllmReport, n_in: int, n_out: int, n_req: int) -> list[str]:
    """What in ``report`` contradicts the workload asked for, one sentence per bad figure (empty: none).

    Checked: the duration is a positive, finite number of seconds; the output tokens are not zero; the
    requests, and the output, input and total tokens the engine reports (counts it does not report are
    skipped), equal ``n_req``, ``n_req * n_out``, ``n_req * n_in`` and ``n_req * (n_in + n_out)``; counts
    that vLLM's printed throughputs only approximate (:attr:`VllmReport.derived`) within
    :data:`DERIVED_TOLERANCE`.
    """
    problems = []
    d = report.duration_s
    if not (math.isfinite(d) and d > 0):
        problems.append(f"its duration of the timed run is {d!r} s, not a positive number of seconds")
    expected = _expected_counts(n_in, n_out, n_req)
    for name, (value, exact) in report.counts().items():
        if value is None:
            continue
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        if name == "output tokens" and math.isfinite(value) and value <= 0:
            problems.append(f"it reports {shown} output tokens: it generated nothing (asked for {expected[name]})")
        elif not _matches(value, expected[name], exact):
            about = "" if exact else " (derived from its rounded throughputs)"
            problems.append(f"it reports {shown} {name}{about}, not the {expected[name]} asked for")
    return problems


def check_report(engine: str, report: TrtllmReport | VllmReport, n_in: int, n_out: int, n_req: int,
                 run: CommandRun | None = None) -> None:
    """Raise :class:`ReportError` if ``report`` is not a faithful record of the point asked for.

    Args:
        engine: The engine's name (for the message).
        report: The parsed report.
        n_in: Input tokens per request asked for.
        n_out: Output tokens per request asked for.
        n_req: Requests asked for.
        run: The command that produced the report (its log file is named in the message).

    Raises:
        ReportError: :func:`report_problems` found any; the message names the engine, the point and each
            bad figure, and says where the engine's full output is.
    """
    problems = report_problems(report, n_in, n_out, n_req)
    if problems:
        raise _report_error(engine, (n_in, n_out, n_req), problems, run, report)


def _report_error(engine: str, point: tuple[int, int, int], problems: list[str], run: CommandRun | None,
                  report: TrtllmReport | VllmReport | None) -> ReportError:
    n_in, n_out, n_req = point
    log = run.log_path if run is not None else None
    where = (f"The engine's full output is in the log file {log}." if log
             else "The engine's full output is in the error's .run.")
    msg = (f"{engine} at n_in={n_in} n_out={n_out} n_req={n_req}: the engine's report cannot be recorded, so this "
           f"point was not: {'; '.join(problems)}. {where} Fix the engine's settings (or the grid) and rerun to "
           "resume; points finished before this one are kept.")
    return ReportError(msg, engine, point, problems, run, report)


def _parse(engine: str, point: tuple[int, int, int], run: CommandRun, parse) -> TrtllmReport | VllmReport:
    try:
        return parse()
    except ValueError as exc:  # no report, or not one we can read: nothing to record either
        raise _report_error(engine, point, [f"its report could not be read ({exc})"], run, None) from exc


# ----- one grid point -------------------------------------------------------------------------


@dataclass
class ExternalRun:
    """One grid point measured through an external engine's benchmark (its report already checked).

    Attributes:
        engine: ``"trtllm"`` or ``"vllm"``.
        version: The engine's installed version (``None`` if unknown).
        n_in: Input tokens per request.
        n_out: Output tokens per request asked for.
        n_req: Requests asked for.
        command: The full command line (shell-quoted).
        run: The measured process (output, exit status, process-window reading).
        report: The engine's parsed report (:class:`TrtllmReport` or :class:`VllmReport`).
        bench: The meter's reading of the engine's timed run (``None`` if it could not be located).
    """

    engine: str
    version: str | None
    n_in: int
    n_out: int
    n_req: int
    command: str
    run: CommandRun
    report: TrtllmReport | VllmReport
    bench: object | None = None

    @property
    def reading(self):
        """The reading the row uses: the bench window if located, else the whole process."""
        r = self.bench if self.bench is not None else self.run.reading
        if r is None:
            raise RuntimeError(f"no meter reading for {self.engine} at n_in={self.n_in} n_out={self.n_out}: "
                               "the meter failed (see the log); the engine's output is in .run")
        return r

    @property
    def window(self) -> str:
        """``"bench"`` (the engine's timed run) or ``"process"`` (the whole command)."""
        return "bench" if self.bench is not None else "process"

    @property
    def tokens_in_expected(self) -> int:
        """Input tokens asked for: ``n_req * n_in``."""
        return self.n_req * self.n_in

    @property
    def tokens_out_expected(self) -> int:
        """Output tokens asked for: ``n_req * n_out``."""
        return self.n_req * self.n_out

    @property
    def engine_tokens_out(self) -> int | None:
        """Output tokens the engine reports having generated (``None`` if it does not say)."""
        return self.report.total_output_tokens

    @property
    def engine_tokens_in(self) -> int | None:
        """Input tokens the engine reports (``None`` if it does not say)."""
        if isinstance(self.report, TrtllmReport):
            return self.report.total_input_tokens if math.isfinite(self.report.avg_input_length) else None
        return self.report.total_prompt_tokens

    @property
    def tokens_match(self) -> bool:
        """Whether the engine's requests and token counts equal what was asked for (unknown counts pass).

        Always ``True`` for a point that :class:`TrtllmBenchEngine` or :class:`VllmBenchEngine` returned: a
        mismatch raises :class:`ReportError` there.
        """
        return not report_problems(self.report, self.n_in, self.n_out, self.n_req)

    @property
    def tokens_out(self) -> int:
        """Output tokens the energy is divided by: the engine's exact count if reported, else ``n_req * n_out``."""
        exact = self.report.counts()["output tokens"][1]
        return self.engine_tokens_out if self.engine_tokens_out is not None and exact else self.tokens_out_expected

    @property
    def energy_j(self) -> float:
        """Energy of the row's window by the meter's main method (joules)."""
        return self.reading.energy_j

    @property
    def j_per_token(self) -> float:
        """Energy per output token (joules)."""
        return self.energy_j / self.tokens_out if self.tokens_out else float("nan")

    @property
    def tokens_per_j(self) -> float:
        """Output tokens per joule."""
        return self.tokens_out / self.energy_j if self.energy_j > 0 else float("nan")

    def row(self) -> dict:
        """One row of the sweep's table: the torch engine's columns plus the engine's own figures.

        The runner reads ``tokens_out``, ``window`` (``"bench"`` or ``"process"``) and ``tokens_match`` (a bool);
        the other keys go to the sidecar's point log.
        """
        r, p = self.reading, self.run.reading
        nan = float("nan")
        return {
            "engine": self.engine, "engine_version": self.version, "n_in": self.n_in, "n_out": self.n_out,
            "n_req": self.n_req, "tokens_in": self.tokens_in_expected, "tokens_out": self.tokens_out,
            "energy_j": r.energy_j, "energy_j_power100": r.energy_j_power100,
            "energy_j_power500": r.energy_j_power500, "duration_s": r.duration_s, "power_w": r.power_w,
            "j_per_token": self.j_per_token, "tokens_per_j": self.tokens_per_j, "meter_method": r.method,
            "window": self.window,
            "energy_j_process": p.energy_j if p is not None else nan,
            "duration_s_process": self.run.duration_s,
            "engine_duration_s": self.report.duration_s, "engine_requests": self.report.num_requests,
            "engine_tokens_in": self.engine_tokens_in, "engine_tokens_out": self.engine_tokens_out,
            "tokens_match": bool(self.tokens_match), "command": self.command,
        }


def _bench_window(run: CommandRun, meter, end_pattern: str, duration_s: float):
    """The meter's reading of the engine's timed run: ``duration_s`` ending when ``end_pattern`` arrived."""
    t_end = run.last_time_of(end_pattern)
    if t_end is None or not (duration_s > 0) or t_end - duration_s < run.t0:
        logger.warning("could not locate the engine's timed run in its output (end line %r); "
                       "using the whole process window", end_pattern)
        return None
    try:
        return meter.reading(t_end - duration_s, t_end)
    except Exception as exc:  # noqa: BLE001
        logger.warning("meter could not read the bench window (%s); using the whole process window", exc)
        return None


# ----- the engines' files ----------------------------------------------------------------------


def _workspace_dir(workspace_dir: str | Path | None, engine: str) -> Path:
    if workspace_dir is None:
        raise ValueError(f"the {engine} engine needs a workspace folder for its data sets, reports and logs "
                         "(the sweep passes <data>/.work/<engine>)")
    return Path(workspace_dir).expanduser().resolve()


def _inside(path: Path, root: Path, what: str, hint: str = "") -> Path:
    """``path`` if it lies inside ``root`` (after resolving ``..`` and links); :class:`PathError` otherwise."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise PathError(f"{what} {path} would lie outside the engine's workspace {root}"
                        + (f": {hint}" if hint else "")) from None
    return path


def _tag(n_in: int, n_out: int, n_req: int) -> str:
    return f"in{int(n_in)}_out{int(n_out)}_req{int(n_req)}"


class _Files:
    """An engine's files for one model: ``<workspace_dir>/<model slug>/{datasets,reports,logs}/``."""

    def _init_files(self, model: str, workspace_dir: str | Path | None) -> None:
        self.workspace_dir = _workspace_dir(workspace_dir, self.name)
        self.folder = _inside(self.workspace_dir / slug(model), self.workspace_dir, "the model's folder")

    def path(self, *parts: str) -> Path:
        """A file of this engine and model, checked to lie inside :attr:`workspace_dir`."""
        return _inside(self.folder.joinpath(*parts), self.workspace_dir, "the file")


class TrtllmBenchEngine(_Files):
    """TensorRT-LLM measured through ``trtllm-bench`` (the study's engine and protocol).

    Build the engine once with :meth:`build`, then :meth:`run_point` per grid point: it writes the
    point's data set, runs ``trtllm-bench throughput`` under the meter, checks the report and builds the point.

    Files: ``<workspace_dir>/<model slug>/`` holds ``datasets/``, ``reports/`` and ``logs/`` and is
    trtllm-bench's ``--workspace``, so the engine it builds lands in ``<that folder>/<model>/tp_T_pp_P``
    (``build.py`` derives it from ``--model`` itself); that folder must lie inside ``workspace_dir`` too.

    Args:
        model: Hugging Face model name (``--model``).
        workspace_dir: Folder for this engine's files (the sweep passes ``<data>/.work/trtllm``).
        model_path: Local checkpoint folder (``--model_path``), if any.
        settings: Build settings (default: the study's).
        engine_dir: An engine already built (anywhere; :meth:`build` then builds nothing). Default: where
            :meth:`build` puts it.
        timeout_s: Time limit per command (seconds; positive and finite).
        vocab_size: Synthetic token ids stay below this.
        executable: The ``trtllm-bench`` command (a name on PATH or a full path).

    Raises:
        ValueError: ``timeout_s`` is not a positive, finite number, or there is no ``workspace_dir``.
        energybook.store.workspace.PathError: the engine trtllm-bench would build for ``model`` (an absolute
            path, or one with ``..``) would lie outside ``workspace_dir``.
    """

    name = "trtllm"
    # Logged when the timed run ends: "Benchmark complete." (perf-benchmarking.md sample output) and, in newer
    # versions, "Benchmark done. Reporting results..." (throughput.py); the last such line ends the timed run.
    END_LINE = r"Benchmark (complete|done)"

    def __init__(self, model: str, workspace_dir: str | Path | None, model_path: str | Path | None = None,
                 settings: TrtllmSettings = STUDY_TRTLLM, engine_dir: str | Path | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, vocab_size: int = 32000, executable: str = "trtllm-bench"):
        self.timeout_s = check_timeout(timeout_s)
        self.model, self.model_path, self.settings = model, model_path, settings
        self._init_files(model, workspace_dir)
        self.workspace = self.folder  # trtllm-bench --workspace
        self.prebuilt = engine_dir is not None
        if self.prebuilt:
            self.engine_dir = Path(engine_dir)
        else:
            self.engine_dir = _inside(
                trtllm_engine_dir(self.workspace, model, settings), self.workspace_dir, "the engine trtllm-bench saves",
                f"trtllm-bench saves its engine in <workspace>/<model>/tp_T_pp_P, derived from --model {model!r}; "
                "name the model by its Hugging Face name (org/model) and give a local checkpoint as model_path "
                "(--model-path), or pass an engine already built as engine_dir")
        self.vocab_size, self.executable = vocab_size, executable
        self.build_run: CommandRun | None = None

    @property
    def version(self) -> str | None:
        """Installed TensorRT-LLM version, or ``None``."""
        return trtllm_version()

    def _cmd(self, cmd: list[str]) -> list[str]:
        return [self.executable, *cmd[1:]]

    def build_command(self) -> list[str]:
        """The ``trtllm-bench build`` command for this engine."""
        return self._cmd(trtllm_build_command(self.model, self.model_path, self.workspace, self.settings))

    def build(self, meter) -> CommandRun | None:
        """Build the engine (``trtllm-bench build``), measured like any command; skipped if it exists.

        Raises:
            FileNotFoundError: ``engine_dir`` was given but holds no engine (``config.json``), or the build
                finished without leaving one where trtllm-bench was expected to save it.
        """
        if (self.engine_dir / "config.json").is_file():
            logger.info("engine already built in %s", self.engine_dir)
            return None
        if self.prebuilt:
            raise FileNotFoundError(f"no built engine in {self.engine_dir} (no config.json): build it there, or "
                                    f"leave engine_dir (--engine-dir) out to let energybook build it in "
                                    f"{self.workspace_dir}")
        self.build_run = measure_command(self.build_command(), meter, timeout_s=self.timeout_s,
                                         log_path=self.path("logs", "build.log"))
        if not (self.engine_dir / "config.json").is_file():
            raise FileNotFoundError(f"trtllm-bench build finished but left no engine in {self.engine_dir}: this "
                                    "TensorRT-LLM version saves it elsewhere; find 'ENGINE SAVED' in "
                                    f"{self.build_run.log_path} and pass that folder as engine_dir (--engine-dir)")
        return self.build_run

    def describe(self) -> dict:
        """Engine name, version, settings and build command, for the sweep's provenance sidecar."""
        return {"engine": self.name, "engine_version": self.version, "model": self.model,
                "model_path": str(self.model_path) if self.model_path else None,
                "settings": asdict(self.settings), "engine_dir": str(self.engine_dir),
                "workspace": str(self.workspace), "timeout_s": self.timeout_s,
                "build_command": shlex.join(self.build_command())}

    def run_point(self, meter, n_in: int, n_out: int, n_req: int) -> ExternalRun:
        """Measure one grid point: write its data set, run ``trtllm-bench throughput``, check and parse the report.

        Raises:
            ValueError: ``n_in + n_out`` exceeds the engine's ``max_seq_len``.
            CommandFailed: the command exited non-zero or ran past ``timeout_s``.
            ReportError: the report is missing or contradicts the point (:func:`check_report`).
        """
        if n_in + n_out > self.settings.max_seq_len:
            raise ValueError(f"n_in + n_out = {n_in + n_out} exceeds the engine's max_seq_len "
                             f"{self.settings.max_seq_len}")
        tag = _tag(n_in, n_out, n_req)
        dataset = write_trtllm_dataset(self.path("datasets", f"{tag}.jsonl"), n_in, n_out, n_req,
                                       vocab_size=self.vocab_size)
        report_json = self.path("reports", f"{tag}.json")
        report_json.parent.mkdir(parents=True, exist_ok=True)
        report_json.unlink(missing_ok=True)
        cmd = self._cmd(trtllm_throughput_command(self.model, dataset, self.engine_dir, self.model_path,
                                                  self.workspace, report_json=report_json))
        run = measure_command(cmd, meter, timeout_s=self.timeout_s, log_path=self.path("logs", f"{tag}.log"))
        report = _parse(self.name, (n_in, n_out, n_req), run,
                        lambda: parse_trtllm_report_json(report_json) if report_json.is_file()
                        else parse_trtllm_report(run.stdout + "\n" + run.stderr))
        check_report(self.name, report, n_in, n_out, n_req, run)
        bench = _bench_window(run, meter, self.END_LINE, report.duration_s)
        return ExternalRun(self.name, self.version or report.version, n_in, n_out, n_req, run.command_line, run,
                           report, bench)


class VllmBenchEngine(_Files):
    """vLLM measured through ``vllm bench throughput`` on its random data set with fixed lengths.

    Files: ``<workspace_dir>/<model slug>/`` holds ``reports/`` and ``logs/``.

    Args:
        model: Hugging Face model name or local checkpoint folder.
        workspace_dir: Folder for this engine's files (the sweep passes ``<data>/.work/vllm``).
        settings: Engine settings (default :data:`STUDY_VLLM`: dummy weights, 1024 sequences).
        timeout_s: Time limit per command (seconds; positive and finite).
        executable: The ``vllm`` command (a name on PATH or a full path).

    Raises:
        ValueError: ``timeout_s`` is not a positive, finite number, or there is no ``workspace_dir``.
    """

    name = "vllm"
    END_LINE = r"^Throughput:"  # printed right after llm.generate returns (throughput.py, main)

    def __init__(self, model: str, workspace_dir: str | Path | None, settings: VllmSettings = STUDY_VLLM,
                 timeout_s: float = DEFAULT_TIMEOUT_S, executable: str = "vllm"):
        self.timeout_s = check_timeout(timeout_s)
        self.model, self.settings, self.executable = model, settings, executable
        self._init_files(model, workspace_dir)

    @property
    def version(self) -> str | None:
        """Installed vLLM version, or ``None``."""
        return vllm_version()

    def build(self, meter=None) -> None:
        """Nothing to build: vLLM loads the model in every ``vllm bench throughput`` run."""
        return None

    def describe(self) -> dict:
        """Engine name, version and settings, for the sweep's provenance sidecar."""
        return {"engine": self.name, "engine_version": self.version, "model": self.model,
                "settings": asdict(self.settings), "workspace": str(self.folder), "timeout_s": self.timeout_s}

    def run_point(self, meter, n_in: int, n_out: int, n_req: int) -> ExternalRun:
        """Measure one grid point with ``vllm bench throughput``, check and parse its results.

        Raises:
            CommandFailed: the command exited non-zero or ran past ``timeout_s``.
            ReportError: the results are missing or contradict the point (:func:`check_report`).
        """
        tag = _tag(n_in, n_out, n_req)
        out_json = self.path("reports", f"{tag}.json")
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.unlink(missing_ok=True)
        cmd = vllm_throughput_command(self.model, n_in, n_out, n_req, out_json, self.settings, self.executable)
        run = measure_command(cmd, meter, timeout_s=self.timeout_s, log_path=self.path("logs", f"{tag}.log"))
        report = _parse(self.name, (n_in, n_out, n_req), run, lambda: parse_vllm_output(run.stdout, out_json))
        check_report(self.name, report, n_in, n_out, n_req, run)
        bench = _bench_window(run, meter, self.END_LINE, report.duration_s)
        return ExternalRun(self.name, self.version, n_in, n_out, n_req, run.command_line, run, report, bench)
