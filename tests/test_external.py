"""Tests of energybook.measure.external: the wrapper runs real subprocesses (stand-ins for the engines, which are
not installed here), the meter is faked, the parsers read hand-written format samples."""

import json
import os
import stat
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest

from energybook.measure import external as X
from energybook.measure.meter import Reading

FIXTURES = Path(__file__).parent / "fixtures" / "external"
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
    with pytest.raises(X.CommandFailed, match="timed out after 0.5 s") as err:
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
    monkeypatch.setattr(X.shutil, "which", lambda *a, **k: None)
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


# ----- TensorRT-LLM data set and commands -----------------------------------------------------


def test_trtllm_dataset_matches_the_documented_format(tmp_path):
    path = X.write_trtllm_dataset(tmp_path / "d" / "set.jsonl", n_in=37, n_out=11, n_req=25, vocab_size=500)
    raw = path.read_text()
    lines = raw.split("\n")
    assert lines[-1] == "" and "" not in lines[:-1]  # one entry per line, no blank line (the reader stops there)
    rows = [json.loads(line) for line in lines[:-1]]
    assert len(rows) == 25
    assert all(set(r) == {"task_id", "input_ids", "output_tokens"} for r in rows)  # no "prompt" beside input_ids
    assert all(len(r["input_ids"]) == 37 and r["output_tokens"] == 11 for r in rows)
    assert all(isinstance(i, int) and 100 <= i < 500 for r in rows for i in r["input_ids"])
    assert len({r["task_id"] for r in rows}) == 25
    assert len({tuple(r["input_ids"]) for r in rows}) > 1  # not one prompt repeated (no prefix caching)


def test_trtllm_dataset_is_reproducible_and_checks_arguments(tmp_path):
    a = X.write_trtllm_dataset(tmp_path / "a.jsonl", 8, 4, 3, seed=1).read_text()
    b = X.write_trtllm_dataset(tmp_path / "b.jsonl", 8, 4, 3, seed=1).read_text()
    c = X.write_trtllm_dataset(tmp_path / "c.jsonl", 8, 4, 3, seed=2).read_text()
    assert a == b != c
    with pytest.raises(ValueError):
        X.write_trtllm_dataset(tmp_path / "x.jsonl", 0, 4, 3)


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_trtllm_build_command_has_the_study_settings():
    cmd = X.trtllm_build_command("meta-llama/Llama-3.2-1B", model_path="/ckpt", workspace="/ws")
    assert cmd[:2] == ["trtllm-bench", "--model"] and cmd.index("--model_path") < cmd.index("build")
    assert cmd.index("--workspace") < cmd.index("build")
    assert {k: flag(cmd, k) for k in ("--tp_size", "--pp_size", "--max_seq_len", "--max_batch_size",
                                      "--max_num_tokens")} == {"--tp_size": "1", "--pp_size": "1",
                                                               "--max_seq_len": "8192", "--max_batch_size": "1024",
                                                               "--max_num_tokens": "8192"}
    assert "--dataset" not in cmd  # excluded by --max_batch_size/--max_num_tokens (build.py option groups)
    assert "--no_weights_loading" not in cmd and "--quantization" not in cmd
    dummy = X.trtllm_build_command("m", settings=X.TrtllmSettings(dummy_weights=True, quantization="FP8"))
    assert flag(dummy, "--no_weights_loading") == "True" and flag(dummy, "--quantization") == "FP8"
    assert X.trtllm_engine_dir("/ws", "org/m") == Path("/ws/org/m/tp_1_pp_1")


def test_trtllm_throughput_command():
    cmd = X.trtllm_throughput_command("org/m", "/d.jsonl", "/e", report_json="/r.json")
    assert cmd.index("--model") < cmd.index("throughput") < cmd.index("--dataset")
    assert flag(cmd, "--dataset") == "/d.jsonl" and flag(cmd, "--engine_dir") == "/e"
    assert flag(cmd, "--backend") == "tensorrt" and flag(cmd, "--report_json") == "/r.json"
    assert "--backend" not in X.trtllm_throughput_command("m", "d", "e", backend=None)


# ----- parsers on the format samples ----------------------------------------------------------


def test_parse_trtllm_report_current_labels():
    rep = X.parse_trtllm_report((FIXTURES / "trtllm_throughput_stdout.txt").read_text())
    assert rep.num_requests == 1000 and rep.version == "0.21.0"
    assert rep.request_throughput_req_s == 50.0 and rep.output_throughput_tok_s == 12800.0
    assert rep.total_token_throughput_tok_s == 19200.0
    assert rep.duration_s == 20.0 and rep.total_output_tokens == 256000 and rep.total_input_tokens == 128000


def test_parse_trtllm_report_017_labels():
    rep = X.parse_trtllm_report((FIXTURES / "trtllm_throughput_stdout_v017.txt").read_text())
    assert rep.output_throughput_tok_s == 12800.0 and rep.version == "0.17.0" and rep.duration_s == 20.0
    assert rep.total_token_throughput_tok_s != rep.total_token_throughput_tok_s  # nan: not in that format


def test_parse_trtllm_report_json_agrees_with_printed():
    a = X.parse_trtllm_report_json(FIXTURES / "trtllm_report.json")
    b = X.parse_trtllm_report((FIXTURES / "trtllm_throughput_stdout.txt").read_text())
    assert a == b


def test_parse_trtllm_report_rejects_other_text():
    with pytest.raises(ValueError, match="total_latency_ms"):
        X.parse_trtllm_report("Number of requests: 3\nRequest Throughput (req/sec): 1.0\n")
    with pytest.raises(ValueError):
        X.parse_trtllm_report_json({"performance": {}})


def test_parse_vllm_json_and_stdout():
    stdout = (FIXTURES / "vllm_throughput_stdout.txt").read_text()
    rep = X.parse_vllm_output(stdout, FIXTURES / "vllm_throughput.json")
    assert (rep.elapsed_time_s, rep.num_requests, rep.total_num_tokens) == (20.0, 1000, 384000)
    assert rep.requests_per_second == 50.0 and rep.tokens_per_second == 19200.0
    assert (rep.total_prompt_tokens, rep.total_output_tokens) == (128000, 256000)


def test_parse_vllm_stdout_fallback_without_json(tmp_path):
    stdout = (FIXTURES / "vllm_throughput_stdout.txt").read_text()
    rep = X.parse_vllm_output(stdout, tmp_path / "absent.json")
    assert rep.elapsed_time_s == pytest.approx(20.0) and rep.num_requests == 1000
    assert rep.total_output_tokens == 256000
    only_line = X.parse_vllm_output("Throughput: 50.00 requests/s, 19200.00 total tokens/s, 12800.00 output tokens/s")
    assert only_line.requests_per_second == 50.0 and only_line.total_output_tokens is None
    with pytest.raises(ValueError, match="Throughput"):
        X.parse_vllm_output("engine crashed\n")


def test_vllm_command_fixed_lengths_dummy_weights():
    cmd = X.vllm_throughput_command("org/m", 128, 256, 1000, "/o.json")
    assert cmd[:3] == ["vllm", "bench", "throughput"]
    assert flag(cmd, "--dataset-name") == "random"
    assert (flag(cmd, "--input-len"), flag(cmd, "--output-len"), flag(cmd, "--num-prompts")) == ("128", "256", "1000")
    assert flag(cmd, "--load-format") == "dummy" and flag(cmd, "--max-num-seqs") == "1024"
    assert flag(cmd, "--output-json") == "/o.json" and flag(cmd, "--max-num-batched-tokens") == "8192"
    assert "--random-range-ratio" not in cmd  # its default gives fixed lengths
    real = X.vllm_throughput_command("/ckpt", 64, 64, 10, "/o.json", X.VllmSettings(load_format=None))
    assert "--load-format" not in real


# ----- whole grid points through stand-in engines ---------------------------------------------

FAKE_TRTLLM = """
import json, sys, time
args = sys.argv[1:]
get = lambda k: args[args.index(k) + 1]
assert args.index("--model") < args.index("throughput") and get("--backend") == "tensorrt"
rows = [json.loads(l) for l in open(get("--dataset"))]
n = len(rows)
isl = sum(len(r["input_ids"]) for r in rows) / n
osl = sum(r["output_tokens"] for r in rows) / n - SHORT
print("[TRT-LLM] [I] Running warmup.", flush=True)
print("[TRT-LLM] [I] Benchmark complete.", flush=True)
print("[TRT-LLM] [I] Warmup done.", flush=True)
time.sleep(0.6)
print("[TRT-LLM] [I] Benchmark complete.", flush=True)
time.sleep(0.2)
perf = {"total_latency_ms": 500.0, "request_throughput_req_s": n / 0.5, "system_output_throughput_tok_s": n * osl / 0.5,
        "system_total_throughput_tok_s": n * (isl + osl) / 0.5}
json.dump({"engine": {"version": "0.21.0"}, "performance": perf,
           "request_info": {"num_requests": n, "avg_input_length": isl, "avg_output_length": osl}},
          open(get("--report_json"), "w"))
print("Total Latency (ms): 500.0")
"""


@pytest.mark.parametrize("short, match", [(0, True), (1, False)])
def test_trtllm_point_through_a_stand_in(tmp_path, monkeypatch, short, match):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "trtllm-bench", FAKE_TRTLLM.replace("SHORT", str(short)))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    meter = FakeMeter()
    eng = X.TrtllmBenchEngine("org/m", tmp_path / "ws")
    point = eng.run_point(meter, n_in=16, n_out=8, n_req=20)
    row = point.row()
    assert point.window == "bench" and row["duration_s"] == pytest.approx(0.5)
    assert row["duration_s_process"] > 0.8 and row["energy_j_process"] > row["energy_j"]
    assert row["energy_j"] == pytest.approx(POWER_W * 0.5)
    assert row["engine_duration_s"] == 0.5 and row["engine_requests"] == 20
    assert row["tokens_match"] is match
    assert row["tokens_out"] == (160 if match else 140) and row["j_per_token"] == pytest.approx(50 / row["tokens_out"])
    assert row["tokens_per_j"] == pytest.approx(row["tokens_out"] / 50)
    assert row["command"].startswith("trtllm-bench --model org/m") and "--engine_dir" in row["command"]
    assert (tmp_path / "ws" / "logs" / "in16_out8_req20.log").is_file()
    # the bench window ends at the last "Benchmark complete" line, not the warm-up one
    t_end = point.bench.t1
    assert t_end == point.run.last_time_of(eng.END_LINE) and t_end - point.run.t0 > 0.5


FAKE_VLLM = """
import json, sys, time
args = sys.argv[1:]
get = lambda k: args[args.index(k) + 1]
assert args[:2] == ["bench", "throughput"] and get("--dataset-name") == "random"
n, i, o = int(get("--num-prompts")), int(get("--input-len")), int(get("--output-len"))
time.sleep(0.5)
print(f"Throughput: {n / 0.4:.2f} requests/s, {n * (i + o) / 0.4:.2f} total tokens/s, "
      f"{n * o / 0.4:.2f} output tokens/s", flush=True)
print(f"Total num prompt tokens:  {n * i}")
print(f"Total num output tokens:  {n * o}")
json.dump({"elapsed_time": 0.4, "num_requests": n, "total_num_tokens": n * (i + o), "requests_per_second": n / 0.4,
           "tokens_per_second": n * (i + o) / 0.4}, open(get("--output-json"), "w"))
"""


def test_vllm_point_through_a_stand_in(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "vllm", FAKE_VLLM)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    point = X.VllmBenchEngine("org/m", tmp_path / "w").run_point(FakeMeter(), n_in=32, n_out=64, n_req=10)
    row = point.row()
    assert point.window == "bench" and row["duration_s"] == pytest.approx(0.4)
    assert row["tokens_match"] is True and row["tokens_out"] == 640 and row["engine_tokens_in"] == 320
    assert row["energy_j"] == pytest.approx(40.0) and row["j_per_token"] == pytest.approx(40.0 / 640)
    assert row["engine"] == "vllm" and "--load-format dummy" in row["command"]


def test_failed_engine_run_raises_with_its_log(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "vllm", "import sys\nprint('ValueError: max_model_len too small', file=sys.stderr)\n"
                                    "sys.exit(1)\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(X.CommandFailed, match="max_model_len too small") as err:
        X.VllmBenchEngine("org/m", tmp_path / "w").run_point(FakeMeter(), 32, 64, 10)
    assert "vllm bench throughput" in str(err.value) and "logs" in str(err.value)


def test_versions_are_none_when_not_installed():
    # neither engine is installed in the test environment; the functions must say so, not guess
    assert X.trtllm_version() is None and X.vllm_version() is None
