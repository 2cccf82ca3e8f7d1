"""Tests of the external engines, TensorRT-LLM's trtllm-bench and vLLM's `vllm bench throughput`: their data sets,
commands and report parsers (on hand-written format samples), and whole grid points through stand-in programs
(neither engine is installed here); the meter is faked."""

import json
import math
import os
from pathlib import Path

import pytest

from energybook.measure import external as X
from energybook.store.workspace import PathError
from tests.test_external import POWER_W, FakeMeter, fake_executable

FIXTURES = Path(__file__).parent / "fixtures" / "external"


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


def test_trtllm_point_through_a_stand_in(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "trtllm-bench", FAKE_TRTLLM.replace("SHORT", "0"))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    meter = FakeMeter()
    eng = X.TrtllmBenchEngine("org/m", tmp_path / "ws")
    point = eng.run_point(meter, n_in=16, n_out=8, n_req=20)
    row = point.row()
    assert point.window == "bench" and row["duration_s"] == pytest.approx(0.5)
    assert row["duration_s_process"] > 0.8 and row["energy_j_process"] > row["energy_j"]
    assert row["energy_j"] == pytest.approx(POWER_W * 0.5)
    assert row["engine_duration_s"] == 0.5 and row["engine_requests"] == 20
    assert row["tokens_match"] is True
    assert row["tokens_out"] == 160 and row["j_per_token"] == pytest.approx(50 / row["tokens_out"])
    assert row["tokens_per_j"] == pytest.approx(row["tokens_out"] / 50)
    assert row["command"].startswith("trtllm-bench --model org/m") and "--engine_dir" in row["command"]
    assert (tmp_path / "ws" / "org-m" / "logs" / "in16_out8_req20.log").is_file()
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


# ----- reports are checked before anything is recorded ----------------------------------------

# Stand-ins whose report can be spoiled: FAKE_OVERRIDE (JSON in the environment) replaces figures of the report.
FAKE_TRTLLM_REPORT = """
import json, os, sys, time
args = sys.argv[1:]
get = lambda k: args[args.index(k) + 1]
rows = [json.loads(l) for l in open(get("--dataset"))]
n = len(rows)
fig = {"num_requests": n, "avg_input_length": sum(len(r["input_ids"]) for r in rows) / n,
       "avg_output_length": sum(r["output_tokens"] for r in rows) / n, "total_latency_ms": 300.0}
fig.update(json.loads(os.environ.get("FAKE_OVERRIDE", "{}")))
time.sleep(0.4)
print("[TRT-LLM] [I] Benchmark done. Reporting results...", flush=True)
perf = {"total_latency_ms": fig["total_latency_ms"], "request_throughput_req_s": 1.0,
        "system_output_throughput_tok_s": 1.0}
json.dump({"performance": perf, "request_info": {k: fig[k] for k in ("num_requests", "avg_input_length",
          "avg_output_length")}}, open(get("--report_json"), "w"))
"""

FAKE_VLLM_REPORT = """
import json, os, sys, time
args = sys.argv[1:]
get = lambda k: args[args.index(k) + 1]
n, i, o = int(get("--num-prompts")), int(get("--input-len")), int(get("--output-len"))
fig = {"num_requests": n, "elapsed_time": 0.3, "prompt": n * i, "output": n * o}
fig.update(json.loads(os.environ.get("FAKE_OVERRIDE", "{}")))
time.sleep(0.4)
if not fig.get("no_end_line"):
    print(f"Throughput: 1.00 requests/s, 1.00 total tokens/s, 1.00 output tokens/s", flush=True)
print(f"Total num prompt tokens:  {fig['prompt']}")
print(f"Total num output tokens:  {fig['output']}")
json.dump({"elapsed_time": fig["elapsed_time"], "num_requests": fig["num_requests"],
           "total_num_tokens": fig["prompt"] + fig["output"], "requests_per_second": 1.0, "tokens_per_second": 1.0},
          open(get("--output-json"), "w"))
"""


@pytest.fixture()
def spoilable(tmp_path, monkeypatch):
    """Stand-in trtllm-bench and vllm on PATH; returns a function that makes them report the given figures."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "trtllm-bench", FAKE_TRTLLM_REPORT)
    fake_executable(bindir, "vllm", FAKE_VLLM_REPORT)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_OVERRIDE", raising=False)
    return lambda **fig: monkeypatch.setenv("FAKE_OVERRIDE", json.dumps(fig))


def engine_of(name: str, ws: Path):
    return X.TrtllmBenchEngine("org/m", ws) if name == "trtllm" else X.VllmBenchEngine("org/m", ws)


# (engine, figures the engine reports, what the message must name); the point asked for is 16 in, 8 out, 20 requests
BAD_REPORTS = [
    ("trtllm", {"avg_output_length": 0}, "0 output tokens"),
    ("vllm", {"output": 0}, "0 output tokens"),
    ("trtllm", {"num_requests": 10}, "10 requests, not the 20 asked for"),
    ("vllm", {"num_requests": 10}, "10 requests, not the 20 asked for"),
    ("trtllm", {"avg_output_length": 7}, "140 output tokens, not the 160 asked for"),
    ("trtllm", {"avg_input_length": 15.5}, "310 input tokens, not the 320 asked for"),
    ("vllm", {"output": 150}, "150 output tokens, not the 160 asked for"),
    ("vllm", {"prompt": 318}, "318 input tokens, not the 320 asked for"),
    ("trtllm", {"total_latency_ms": -300.0}, "duration of the timed run is -0.3 s"),
    ("trtllm", {"total_latency_ms": 0.0}, "duration of the timed run is 0.0 s"),
    ("vllm", {"elapsed_time": -0.3}, "duration of the timed run is -0.3 s"),
    ("vllm", {"elapsed_time": math.nan}, "duration of the timed run is nan s"),
]


@pytest.mark.parametrize("engine, figures, named", BAD_REPORTS)
def test_a_report_that_contradicts_the_point_is_refused(tmp_path, spoilable, engine, figures, named):
    spoilable(**figures)
    eng = engine_of(engine, tmp_path / "ws")
    with pytest.raises(RuntimeError) as err:  # not a row
        eng.run_point(FakeMeter(), n_in=16, n_out=8, n_req=20)
    msg = str(err.value)
    assert isinstance(err.value, X.ReportError)
    assert msg.startswith(f"{engine} at n_in=16 n_out=8 n_req=20") and named in msg  # engine, point, bad figure
    log = tmp_path / "ws" / "org-m" / "logs" / "in16_out8_req20.log"
    assert f"full output is in the log file {log}" in msg and log.is_file()
    assert err.value.engine == engine and err.value.point == (16, 8, 20) and len(err.value.problems) >= 1
    assert err.value.run is not None and err.value.report is not None


@pytest.mark.parametrize("engine", ["trtllm", "vllm"])
def test_the_same_stand_ins_unspoiled_give_a_point(tmp_path, spoilable, engine):
    point = engine_of(engine, tmp_path / "ws").run_point(FakeMeter(), n_in=16, n_out=8, n_req=20)
    assert point.tokens_match and point.tokens_out == 160 and point.window == "bench"


@pytest.mark.parametrize("engine", ["trtllm", "vllm"])
def test_a_missing_report_is_a_report_error_naming_the_log(tmp_path, monkeypatch, engine):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "trtllm-bench" if engine == "trtllm" else "vllm", "print('all went well, I promise')\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(X.ReportError, match="could not be read") as err:
        engine_of(engine, tmp_path / "ws").run_point(FakeMeter(), 16, 8, 20)
    assert "in16_out8_req20.log" in str(err.value) and err.value.report is None


def test_a_refused_report_never_becomes_a_row_of_the_sweep(tmp_path, spoilable):
    from energybook.measure import runner
    from energybook.measure.meter import SimulatedMeter
    from energybook.store import results as R

    spoilable(num_requests=2)  # half of the 4 asked for
    out = tmp_path / "res" / "vllm.csv"
    with pytest.raises(RuntimeError, match="2 requests, not the 4 asked for"):  # a ReportError
        runner.run_sweep("org/model", n_in=[16], n_out=[8], n_req=4, device="cpu", meter=SimulatedMeter(),
                         allow_test_data=True, engine="vllm", workspace=tmp_path, cooldown_s=0, progress=False,
                         output=out)
    with R.ResultsFile(out) as rf:
        assert rf.rows() == []


def test_check_report_on_the_format_samples():
    trt = X.parse_trtllm_report_json(FIXTURES / "trtllm_report.json")  # 1000 requests of 128 in, 256 out
    X.check_report("trtllm", trt, 128, 256, 1000)
    with pytest.raises(X.ReportError, match="1000 requests, not the 999"):
        X.check_report("trtllm", trt, 128, 256, 999)
    with pytest.raises(X.ReportError, match="128000 input tokens, not the 127000"):
        X.check_report("trtllm", trt, 127, 256, 1000)
    stdout = (FIXTURES / "vllm_throughput_stdout.txt").read_text()
    X.check_report("vllm", X.parse_vllm_output(stdout, FIXTURES / "vllm_throughput.json"), 128, 256, 1000)
    with pytest.raises(X.ReportError, match="256000 output tokens, not the 255000"):
        X.check_report("vllm", X.parse_vllm_output(stdout, FIXTURES / "vllm_throughput.json"), 128, 255, 1000)
    # without the JSON the requests are derived from the rounded throughputs: checked within the tolerance
    fallback = X.parse_vllm_output(stdout)
    assert "num_requests" in fallback.derived
    X.check_report("vllm", fallback, 128, 256, 1000)
    with pytest.raises(X.ReportError, match="derived from its rounded throughputs"):
        X.check_report("vllm", fallback, 128, 256, 900)
    # a Throughput line alone gives no duration: nothing can be recorded from it
    only_line = X.parse_vllm_output("Throughput: 50.00 requests/s, 19200.00 total tokens/s, 12800.00 output tokens/s")
    with pytest.raises(X.ReportError, match="duration"):
        X.check_report("vllm", only_line, 128, 256, 1000)


# ----- paths cannot leave the workspace -------------------------------------------------------

FAKE_TRTLLM_BUILD = """
import pathlib, sys
a = sys.argv
if "build" in a:
    folder = pathlib.Path(a[a.index("--workspace") + 1]) / a[a.index("--model") + 1] / "tp_1_pp_1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    sys.exit(0)
"""


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_trtllm_model_names_that_leave_the_workspace_are_refused(tmp_path):
    ws = tmp_path / "a" / "b" / "ws"
    for model in ("../../x", "../../../../x", "/abs/checkpoint"):
        with pytest.raises(PathError, match="outside the engine's workspace") as err:
            X.TrtllmBenchEngine(model, ws)
        assert isinstance(err.value, ValueError) and "model_path" in str(err.value)
    assert files_under(tmp_path) == set()  # nothing written anywhere
    # an engine built elsewhere may be named explicitly; then nothing is built for the model
    eng = X.TrtllmBenchEngine("../../x", ws, engine_dir=tmp_path / "prebuilt")
    assert eng.folder == ws / "x"
    with pytest.raises(FileNotFoundError, match="no built engine"):
        eng.build(FakeMeter())


def test_trtllm_files_are_in_the_models_slugged_folder(tmp_path, spoilable):
    fake_executable(tmp_path / "bin", "trtllm-bench", FAKE_TRTLLM_BUILD + FAKE_TRTLLM_REPORT)
    ws = tmp_path / "ws"
    before = files_under(tmp_path)
    engines = [X.TrtllmBenchEngine(m, ws) for m in ("org/model", "org/other")]
    for eng in engines:
        assert eng.build(FakeMeter()) is not None and eng.build(FakeMeter()) is None  # built once
        eng.run_point(FakeMeter(), 16, 8, 20)
    assert engines[0].folder == ws / "org-model" and engines[0].engine_dir == ws / "org-model/org/model/tp_1_pp_1"
    new = files_under(tmp_path) - before
    assert new and all(p.is_relative_to(ws) for p in new)
    for eng in engines:  # two models at the same point keep separate data sets, reports and logs
        for part in ("datasets/in16_out8_req20.jsonl", "reports/in16_out8_req20.json", "logs/in16_out8_req20.log",
                     "logs/build.log"):
            assert (eng.folder / part).is_file()


def test_vllm_model_name_with_dots_stays_inside(tmp_path, spoilable):
    ws = tmp_path / "a" / "b" / "ws"
    before = files_under(tmp_path)
    point = X.VllmBenchEngine("../../x", ws).run_point(FakeMeter(), 16, 8, 20)
    new = files_under(tmp_path) - before
    assert new == {ws / "x" / "reports" / "in16_out8_req20.json", ws / "x" / "logs" / "in16_out8_req20.log"}
    assert "--model ../../x" in point.command  # vLLM reads the model from there; nothing is written there


def test_a_build_that_leaves_no_engine_says_where_to_look(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "trtllm-bench", "print('ENGINE SAVED: /somewhere/else')\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(FileNotFoundError, match="ENGINE SAVED"):
        X.TrtllmBenchEngine("org/m", tmp_path / "ws").build(FakeMeter())


# ----- rows give the runner what it reads -----------------------------------------------------


@pytest.mark.parametrize("end_line, window", [(True, "bench"), (False, "process")])
def test_row_gives_the_runner_what_it_reads(tmp_path, spoilable, end_line, window):
    from energybook.measure.runner import make_row

    if not end_line:
        spoilable(no_end_line=True)
    point = X.VllmBenchEngine("org/m", tmp_path / "ws").run_point(FakeMeter(), 16, 8, 20)
    details = point.row()
    assert details["window"] == window and type(details["tokens_match"]) is bool and details["tokens_match"]
    assert details["tokens_out"] == 160
    expected_s = 0.3 if window == "bench" else point.run.duration_s
    assert point.reading.duration_s == pytest.approx(expected_s)
    # exactly as the runner's command loop builds its row
    row = make_row("org/m", 16, 8, 20, 0, "external", point.reading, {"gpu": "test"}, engine="vllm",
                   tokens_out=details["tokens_out"], window_kind=details.get("window"),
                   tokens_match=details.get("tokens_match"))
    assert (row.window_kind, row.tokens_match, row.tokens_out) == (window, True, 160)
    assert row.j_per_token == pytest.approx(point.reading.energy_j / 160)
