"""Tests of energybook.measure.external's process-group runner (measure_command): real subprocesses, stand-ins
for the engines (which are not installed here), time limits and whole process groups stopped; the meter is faked.
The stand-ins and the fake meter here serve the other external-engine tests too."""

import _thread
import inspect
import math
import os
import shutil
import signal
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from energybook.measure import external as X
from energybook.measure.external import process
from energybook.measure.meter import Reading

POWER_W = 100.0


class FakeMeter:
    """Constant 100 W; records the windows it was asked for."""

    def __init__(self):
        self.windows = []

    def now(self):
        return time.perf_counter()

    def reading(self, t0, t1):
        self.windows.append((t0, t1))
        e = POWER_W * (t1 - t0)
        return Reading(t0, t1, e, e, e, "counter", ticks=1, samples=1)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def fake_executable(folder: Path, name: str, body: str) -> Path:
    """A stand-in engine command: a Python script named like the engine, made executable."""
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# ----- measure_command ------------------------------------------------------------------------


def test_window_covers_the_whole_process_and_output_is_kept(tmp_path):
    meter = FakeMeter()
    log = tmp_path / "logs" / "run.log"
    run = X.measure_command(py("""
        import sys, time
        print("hello from the engine", flush=True)
        time.sleep(0.3)
        print("a warning", file=sys.stderr, flush=True)
    """), meter, log_path=log)
    assert run.ok and run.returncode == 0
    assert run.duration_s >= 0.3
    assert run.reading.energy_j == pytest.approx(POWER_W * run.duration_s)
    assert meter.windows == [(run.t0, run.t1)]
    assert "hello from the engine" in run.stdout and "a warning" in run.stderr
    text = log.read_text()
    assert "hello from the engine" in text and "[stderr] a warning" in text and text.startswith("$ ")
    # lines arrive in order, inside the window, the sleep between them
    (ta, sa, _), (tb, sb, _) = run.lines
    assert (sa, sb) == ("stdout", "stderr") and run.t0 < ta < tb < run.t1 and tb - ta >= 0.25


def test_nonzero_exit_names_command_and_keeps_output(tmp_path):
    cmd = py("""
        import sys
        print("loaded the model")
        for i in range(30):
            print(f"trace line {i}", file=sys.stderr)
        print("CUDA out of memory", file=sys.stderr)
        sys.exit(3)
    """)
    with pytest.raises(X.CommandFailed) as err:
        X.measure_command(cmd, FakeMeter(), log_path=tmp_path / "fail.log")
    msg = str(err.value)
    assert "exited with status 3" in msg and sys.executable in msg and "CUDA out of memory" in msg
    assert "trace line 5" not in msg  # only the tail is quoted
    assert err.value.run.returncode == 3 and "loaded the model" in err.value.run.stdout
    assert "trace line 0" in err.value.run.stderr and "CUDA out of memory" in (tmp_path / "fail.log").read_text()
    assert err.value.run.reading is not None  # the energy of the failed run is kept too


def test_check_false_returns_the_failed_run():
    run = X.measure_command(py("import sys; sys.exit(2)"), FakeMeter(), check=False)
    assert run.returncode == 2 and not run.ok


def test_timeout_kills_and_says_so():
    t = time.perf_counter()
    with pytest.raises(X.CommandFailed, match="exceeded its time limit of 0.5 s") as err:
        X.measure_command(py("import time; time.sleep(30)"), FakeMeter(), timeout_s=0.5)
    assert time.perf_counter() - t < 10 and err.value.run.timed_out and err.value.run.returncode is None


@pytest.mark.parametrize("exe, package", [("trtllm-bench", "pip install tensorrt-llm"), ("vllm", "pip install vllm")])
def test_missing_engine_says_what_to_install(tmp_path, monkeypatch, exe, package):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: nothing is found
    meter = mock.Mock(wraps=FakeMeter())
    with pytest.raises(X.EngineUnavailable) as err:
        X.measure_command([exe, "--help"], meter)
    msg = str(err.value)
    assert package in msg and "torch engine" in msg and f"`{exe}`" in msg
    assert isinstance(err.value, RuntimeError)
    meter.now.assert_not_called()  # nothing was measured


def test_missing_engine_through_the_engine_classes(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(X.EngineUnavailable, match="pip install vllm"):
        X.VllmBenchEngine("m", tmp_path).run_point(FakeMeter(), 64, 64, 10)
    with pytest.raises(X.EngineUnavailable, match="pip install tensorrt-llm"):
        X.TrtllmBenchEngine("m", tmp_path).run_point(FakeMeter(), 64, 64, 10)


def test_real_meter_with_faked_nvml_measures_the_subprocess(monkeypatch):
    pynvml = pytest.importorskip("pynvml")
    from energybook.measure import meter as M

    nv = mock.create_autospec(pynvml, instance=False)
    watts = 250.0
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = lambda h: int(watts * 1000 * time.perf_counter())
    nv.nvmlDeviceGetPowerUsage.side_effect = lambda h: int(watts * 1000)
    nv.nvmlDeviceGetTemperature.return_value = 40
    nv.nvmlDeviceGetClockInfo.return_value = 1980
    monkeypatch.setattr(M, "_pynvml", lambda: nv)
    with M.Meter(index=0) as meter:
        run = X.measure_command(py("import time; time.sleep(0.4)"), meter)
    assert run.duration_s >= 0.4
    assert run.reading.energy_j == pytest.approx(watts * run.duration_s, rel=0.05)
    assert run.reading.method == "counter"
    nv.nvmlDeviceGetTotalEnergyConsumption.assert_called()


# ----- time limits: always one, and the whole process group goes ------------------------------


def test_timeout_defaults_to_an_hour_everywhere(tmp_path):
    assert X.DEFAULT_TIMEOUT_S == 3600
    for f in (X.measure_command, X.TrtllmBenchEngine, X.VllmBenchEngine):
        assert inspect.signature(f).parameters["timeout_s"].default == 3600
    assert X.TrtllmBenchEngine("org/m", tmp_path).timeout_s == 3600
    assert X.VllmBenchEngine("org/m", tmp_path).timeout_s == 3600


@pytest.mark.parametrize("bad", [None, 0, -1.0, math.nan, math.inf, True, "60"])
def test_unbounded_or_nonsense_timeouts_are_refused(tmp_path, bad):
    meter = mock.Mock(wraps=FakeMeter())
    with pytest.raises(ValueError, match="timeout_s must be a positive, finite number"):
        X.measure_command(py("print('ran')"), meter, timeout_s=bad)
    meter.now.assert_not_called()  # refused before anything ran
    with pytest.raises(ValueError, match="timeout_s"):
        X.TrtllmBenchEngine("org/m", tmp_path, timeout_s=bad)
    with pytest.raises(ValueError, match="timeout_s"):
        X.VllmBenchEngine("org/m", tmp_path, timeout_s=bad)


# A hung external engine: it starts a worker that inherits (and so holds open) its stdout and stderr, says where
# the worker is, then never finishes. GRANDCHILD_SESSION: the worker escapes into a session of its own.
HUNG_ENGINE = """
import subprocess, sys, time
worker = subprocess.Popen(["sleep", "60"], start_new_session=GRANDCHILD_SESSION)
open(sys.argv[1], "w").write(str(worker.pid))
print("loading the model...", flush=True)
time.sleep(EXIT_AFTER)
print("done", flush=True)
"""


def hung_engine(folder: Path, exit_after: float = 60, own_session: bool = False) -> Path:
    body = HUNG_ENGINE.replace("EXIT_AFTER", str(exit_after)).replace("GRANDCHILD_SESSION", str(own_session))
    return fake_executable(folder, "hung-engine", body)


def gone(pid: int, wait_s: float = 3.0) -> bool:
    """Whether process ``pid`` has exited within ``wait_s`` (an exited zombie counts: this container's init may never
    reap the orphans it adopts, and os.kill(pid, 0) succeeds on a zombie)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True  # vanished between the two looks
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def read_pid(path: Path, wait_s: float = 5.0) -> int:
    deadline = time.monotonic() + wait_s
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, "the stand-in never wrote its worker's pid"
        time.sleep(0.02)
    return int(path.read_text())


def kill_if_alive(pid: int | None) -> None:
    """Clean up the one worker this test started, should the code under test have left it running."""
    if pid is not None and not gone(pid, 0):
        os.kill(pid, signal.SIGKILL)


def stop_hung_engine(tmp_path: Path, log: Path, **kwargs) -> tuple[X.CommandFailed, float]:
    """Run the hung stand-in under measure_command (``kwargs`` go to it), which must raise CommandFailed and leave
    no worker behind: (the error, seconds it took)."""
    exe, pidfile = hung_engine(tmp_path), tmp_path / "worker.pid"
    pid = None
    t = time.perf_counter()
    try:
        with pytest.raises(X.CommandFailed) as err:
            X.measure_command([str(exe), str(pidfile)], FakeMeter(), log_path=log, **kwargs)
        elapsed = time.perf_counter() - t
        pid = read_pid(pidfile)
        assert gone(pid), "the engine's worker (its grandchild) outlived the stop"
    finally:
        kill_if_alive(pid)
    return err.value, elapsed


def test_hung_engine_is_killed_with_its_whole_process_group(tmp_path):
    exe, log = tmp_path / "hung-engine", tmp_path / "logs" / "hung.log"
    error, elapsed = stop_hung_engine(tmp_path, log, timeout_s=1)
    assert elapsed < 5, f"took {elapsed:.1f} s: the worker held the pipes open"
    msg = str(error)
    assert str(exe) in msg and "exceeded its time limit of 1 s" in msg  # the command, and that it ran past N s
    assert "--timeout" in msg and "check the engine" in msg and str(log) in msg  # what to do, and where to look
    assert "loading the model..." in msg  # the tail of its output
    run = error.run
    assert run.timed_out and run.returncode is None and run.reading is not None and run.output_complete


def test_keyboard_interrupt_stops_the_whole_process_group(tmp_path):
    exe, pidfile = hung_engine(tmp_path), tmp_path / "worker.pid"
    pid = None
    timer = threading.Timer(1.0, _thread.interrupt_main)  # Ctrl-C while the engine runs
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            X.measure_command([str(exe), str(pidfile)], FakeMeter(), timeout_s=30)
        pid = read_pid(pidfile)
        assert gone(pid), "the engine's worker outlived the interrupt"
    finally:
        timer.cancel()
        kill_if_alive(pid)


def test_processes_left_behind_after_a_normal_exit_are_stopped(tmp_path):
    exe, pidfile = hung_engine(tmp_path, exit_after=0.2), tmp_path / "worker.pid"
    pid = None
    t = time.perf_counter()
    try:
        run = X.measure_command([str(exe), str(pidfile)], FakeMeter(), timeout_s=30)
        pid = read_pid(pidfile)
        assert time.perf_counter() - t < 5 and gone(pid)
    finally:
        kill_if_alive(pid)
    assert run.ok and "done" in run.stdout and run.output_complete


def test_a_process_outside_the_group_holding_the_pipes_cannot_hang_us(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "READER_JOIN_S", 0.5)
    exe, pidfile = hung_engine(tmp_path, exit_after=0.2, own_session=True), tmp_path / "worker.pid"
    pid = None
    t = time.perf_counter()
    try:
        run = X.measure_command([str(exe), str(pidfile)], FakeMeter(), timeout_s=30, log_path=tmp_path / "r.log")
        assert time.perf_counter() - t < 5, "the readers waited for the escaped worker"
        pid = read_pid(pidfile)
    finally:
        kill_if_alive(pid)
    assert run.ok and not run.output_complete and "done" in run.stdout
