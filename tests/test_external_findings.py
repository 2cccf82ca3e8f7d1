"""Findings of issue #21 (item 9) on the external engines, each pinned by a test that failed before its fix.

* A report whose duration physics forbids (shorter than the meter's window resolution, or an impossible output
  throughput) is refused with a one-line error; it never becomes a row (it gave a 0 J row).
* A log that cannot be written stops the command and its process group at once, with the real cause (it hung the
  sweep for the whole time limit, then reported a timeout).
* A hung engine is killed at its time limit: ``test_external.test_hung_engine_is_killed_with_its_whole_process_group``.

Nothing here runs TensorRT-LLM or vLLM: stand-in programs print the documented report formats.
"""

import errno
import sys
import time

import pytest

from energybook.measure import external as X
from energybook.measure import runner
from energybook.measure.meter import SimulatedMeter
from energybook.store import results as R
from tests.test_external import FakeMeter, gone, hung_engine, kill_if_alive, stop_hung_engine
from tests.test_external_engines import engine_of, spoilable  # noqa: F401 - spoilable: a fixture

# ----- durations and throughputs that physics forbids -----------------------------------------


@pytest.mark.parametrize("engine, figures", [("trtllm", {"total_latency_ms": 1e-6}), ("vllm", {"elapsed_time": 1e-9})])
def test_a_duration_below_the_meters_resolution_is_refused(tmp_path, spoilable, engine, figures):  # noqa: F811
    spoilable(**figures)
    with pytest.raises(X.ReportError) as err:
        engine_of(engine, tmp_path / "ws").run_point(FakeMeter(), n_in=16, n_out=8, n_req=20)
    msg = str(err.value)
    assert "\n" not in msg  # one line
    assert msg.startswith(f"{engine} at n_in=16 n_out=8 n_req=20") and "1e-09 s" in msg  # the engine, the value
    assert "0.1 s" in msg and "n_req" in msg  # the meter's resolution, and what to do


def test_the_meters_own_update_period_is_the_resolution(tmp_path, spoilable):  # noqa: F811
    class SlowMeter(FakeMeter):
        update_period_s = 0.5

    # the stand-in reports 0.3 s: enough for a 0.1 s counter, not for one updated every 0.5 s
    engine_of("vllm", tmp_path / "a").run_point(FakeMeter(), 16, 8, 20)
    with pytest.raises(X.ReportError, match="0.3 s, shorter than the meter's window resolution of 0.5 s"):
        engine_of("vllm", tmp_path / "b").run_point(SlowMeter(), 16, 8, 20)


def test_an_impossible_output_throughput_is_refused():
    # 4096000 output tokens in 0.2 s (2e7 tokens/s): the counts match the point, the duration is above 0.1 s
    n_in, n_out, n_req, d = 128, 4096, 1000, 0.2
    report = X.VllmReport(d, n_req, n_req * (n_in + n_out), n_req / d, n_req * (n_in + n_out) / d,
                          n_req * n_in, n_req * n_out)
    with pytest.raises(X.ReportError, match="output tokens/s") as err:
        X.check_report("vllm", report, n_in, n_out, n_req)
    assert "2.05e+07" in str(err.value) and "\n" not in str(err.value)
    X.check_report("vllm", X.VllmReport(20.0, n_req, report.total_num_tokens, 1, 1, n_req * n_in, n_req * n_out),
                   n_in, n_out, n_req)  # the same counts over 20 s are fine


def test_a_too_short_report_never_becomes_a_row(tmp_path, spoilable):  # noqa: F811
    spoilable(elapsed_time=1e-9)
    out = tmp_path / "res" / "vllm.csv"
    with pytest.raises(X.ReportError, match="window resolution"):
        runner.run_sweep("org/model", n_in=[16], n_out=[8], n_req=4, device="cpu", meter=SimulatedMeter(),
                         allow_test_data=True, engine="vllm", workspace=tmp_path, cooldown_s=0, progress=False,
                         output=out)
    with R.ResultsFile(out) as rf:
        assert rf.rows() == []


# ----- a log that cannot be written -----------------------------------------------------------


class _FullDisk:
    """A log file whose writes after the first (the command line) fail as on a full disk."""

    def __init__(self, path):
        self.f, self.writes = open(path, "w", encoding="utf-8"), 0  # noqa: SIM115 - closed in close()

    def write(self, text):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(text)

    def flush(self):
        self.f.flush()

    def close(self):
        self.f.close()


def _runner_module():
    """The module whose globals measure_command reads (the package or its process-group runner)."""
    return sys.modules[X.measure_command.__module__]


def test_a_log_that_fails_mid_run_stops_the_group_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(_runner_module(), "open", lambda path, *a, **k: _FullDisk(path), raising=False)
    log = tmp_path / "logs" / "run.log"
    error, elapsed = stop_hung_engine(tmp_path, log, timeout_s=8)  # its worker must be gone too
    assert elapsed < 4, f"took {elapsed:.1f} s: waited for the time limit"
    msg = str(error)
    assert "No space left on device" in msg and str(log) in msg and "time limit" not in msg
    assert isinstance(error.__cause__, OSError) and not error.run.timed_out
    assert "loading the model..." in error.run.stdout  # the output is kept


def test_an_unwritable_log_fails_at_once(tmp_path):
    exe, pidfile = hung_engine(tmp_path), tmp_path / "worker.pid"
    pid = None
    t = time.perf_counter()
    try:
        with pytest.raises((OSError, X.CommandFailed), match="No space left on device"):
            X.measure_command([str(exe), str(pidfile)], FakeMeter(), timeout_s=8, log_path="/dev/full")
        assert time.perf_counter() - t < 4, "waited for the time limit"
    finally:
        if pidfile.is_file() and pidfile.read_text().strip():
            pid = int(pidfile.read_text())
            assert gone(pid)
        kill_if_alive(pid)
