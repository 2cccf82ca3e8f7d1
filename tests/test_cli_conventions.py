"""The command line by the conventions of Python tools: ``python -m energybook``, ``--version``, ``--json`` on
every command that prints results, exit statuses (2 usage, 1 runtime, 130 interrupted), defaults in ``--help``,
a quiet closed pipe, and install hints that work. No GPU needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import energybook
from energybook import cli

PACKAGE = Path(energybook.__file__).parent


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "energybook", *args], capture_output=True, text=True, timeout=120,
                          **kw)


# -- python -m energybook, --version --------------------------------------------------------------------


def test_python_m_energybook_prints_the_version():
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"energybook {energybook.__version__}"


def test_python_m_energybook_without_a_command_is_a_usage_error():
    proc = _run()
    assert proc.returncode == 2 and "usage: energybook" in proc.stderr and "Traceback" not in proc.stderr


# -- exit statuses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["counts", "--model", "Llama-9"], "unknown model 'Llama-9'"),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8", "--gpu", "a100"], "no calibration"),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "eight", "--n-out", "8"], "invalid int value"),
])
def test_usage_errors_exit_2_in_one_line(args, message):
    proc = _run(*args)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and message in err and "Traceback" not in err
    assert re.match(r"energybook( predict)?: error: ", err.splitlines()[-1])  # argparse names the sub-command


def test_a_missing_gpu_meter_is_a_runtime_error(monkeypatch, capsys):
    from energybook.measure import runner
    from energybook.measure.meter import MeterUnavailable

    def no_nvml(*a, **k):
        raise MeterUnavailable("no NVIDIA GPU visible (NVML failed to initialise): measure on a machine with one")

    monkeypatch.setattr(runner, "run_sweep", no_nvml)
    assert cli.main(["sweep", "--model", "Llama-3.2-1B"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "energybook: error: no NVIDIA GPU visible (NVML failed to initialise): measure on a machine with one"


def test_a_corrupt_results_file_is_a_runtime_error(monkeypatch, capsys):
    from energybook.measure import runner
    from energybook.store.results import DataError

    def corrupt(*a, **k):
        raise DataError("grid.csv:7 is incomplete (no line end)")

    monkeypatch.setattr(runner, "run_sweep", corrupt)
    assert cli.main(["sweep", "--model", "Llama-3.2-1B"]) == 1
    assert "grid.csv:7 is incomplete" in capsys.readouterr().err


def test_a_damaged_shipped_calibration_is_a_runtime_error(monkeypatch, tmp_path, capsys):
    from energybook import resources

    (tmp_path / "nvidia-h100-80gb-hbm3--hf.json").write_text("{not json")
    real = resources.path
    monkeypatch.setattr(resources, "path", lambda *parts: tmp_path.joinpath(*parts[1:]) if parts[:1] == (
        "calibration",) else real(*parts))
    assert cli.main(["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8"]) == 1
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "reinstall energybook" in err
    assert cli.main(["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8", "--gpu", "a100"]) == 2


def test_a_missing_workload_file_is_a_usage_error(capsys):
    assert cli.main(["advise", "--model", "Llama-3.2-1B", "--workload", "nowhere.csv"]) == 2
    assert "--workload nowhere.csv: no such file" in capsys.readouterr().err


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys):
    from energybook.model import architecture as A

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "available", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "energybook: interrupted."  # no resume hint: nothing was measured


def test_a_missing_gpu_package_names_the_install_that_works(monkeypatch, capsys):
    from energybook.measure import runner

    def no_torch(*a, **k):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(runner, "run_sweep", no_torch)
    assert cli.main(["sweep", "--model", "Llama-3.2-1B"]) == 1
    err = capsys.readouterr().err
    assert "No module named 'torch'" in err and 'pip install -e ".[gpu]"' in err and "\n" not in err.strip()


def test_install_hints_in_the_package_name_an_install_that_works():
    """energybook is not on a package index: ``pip install 'energybook[gpu]'`` fails; the extras install from a
    checkout (``pip install -e ".[gpu]"``)."""
    wrong = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"pip install\b.*energybook\[", line)]
    assert not wrong, f"install hints that name energybook on an index: {wrong}"


# -- a closed pipe ---------------------------------------------------------------------------------------


def test_a_closed_pipe_is_quiet():
    """``energybook models | head -0``: the reader is gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "energybook", "models"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.stderr == ""  # no traceback, no "Exception ignored"
    assert proc.returncode == cli.EXIT_BROKEN_PIPE == 141


# -- --json -------------------------------------------------------------------------------------------------


def _json(capsys, argv: list[str]) -> dict:
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)  # one document, nothing else on stdout


def test_models_json(capsys):
    out = _json(capsys, ["models", "--json"])
    by_name = {m["model"]: m for m in out["models"]}
    assert len(by_name) == 13 and "Llama-3.2-1B" in by_name
    m = by_name["Llama-3.2-1B"]
    assert {"params", "layers", "hidden_size", "heads", "kv_heads", "ffn", "kv_bytes_per_token", "dtype"} <= set(m)
    assert 1.0e9 < m["params"] < 1.6e9 and m["kv_bytes_per_token"] > 0


def test_counts_json_takes_model_as_an_option(capsys):
    out = _json(capsys, ["counts", "--model", "OPT-1.3B", "--n-in", "64", "--n-out", "128", "--batch", "4", "--json"])
    assert (out["model"], out["n_in"], out["n_out"], out["batch"]) == ("OPT-1.3B", 64, 128, 4)
    for method in ("exact", "textbook"):
        for part in ("prefill", "decode_step", "workload"):
            assert out[method][part]["flops"] > 0 and out[method][part]["bytes"] > 0
        assert out[method]["workload"]["flops"] > out[method]["prefill"]["flops"]


def test_counts_keeps_the_positional_model(capsys):
    assert cli.main(["counts", "OPT-1.3B"]) == 0
    assert "[exact] OPT-1.3B, batch 1, n_in 64, n_out 256" in capsys.readouterr().out
    assert cli.main(["counts", "OPT-1.3B", "--model", "Llama-3.2-1B"]) == 2
    assert "two models given" in capsys.readouterr().err
    assert cli.main(["counts"]) == 2
    assert "--model" in capsys.readouterr().err


def test_advise_json(capsys, tmp_path):
    out = _json(capsys, ["advise", "--model", "Qwen2-1.5B", "--workload", "n_in=512,n_out<=2048,n_req=500", "--json"])
    assert (out["model"], out["gpu"], out["n_req"]) == ("Qwen2-1.5B", "h100", 500)
    assert out["baseline"]["kind"] == "as given" and out["baseline"]["cap"] is None
    keys = {"kind", "cap", "label", "energy_j_per_request", "energy_j_total", "saving_j_per_request",
            "saving_j_total", "saving_pct", "output_tokens_cut_per_request", "output_cut_fraction",
            "prompt_tokens_truncated_per_request", "prompt_truncated_fraction", "requests_whole_fraction",
            "energy_j_per_output_token"}
    assert all(keys <= set(o) for o in [out["baseline"], *out["options"]])
    assert out["ranked_by"] == "energy_j_per_request" and out["warnings"] == [] and out["excluded"]
    assert out["limits"] == {"min_n_out": None, "max_truncation": 0.0, "quality_floor": 0.0}
    j = [o["energy_j_per_request"] for o in out["options"]]
    assert j == sorted(j) and out["best"] == out["options"][0]["label"]
    assert out["best"] in {o["label"] for o in [out["baseline"], *out["options"]]} and out["plot"] is None


def test_plan_json(capsys):
    out = _json(capsys, ["sweep", "--model", "Llama-3.2-1B", "OPT-1.3B", "--plan", "--ranks", "2", "--json",
                         "--n-in", "64", "128", "--n-out", "64"])
    assert (out["world_size"], out["by"], out["models"]) == (2, "model", ["Llama-3.2-1B", "OPT-1.3B"])
    assert [r["rank"] for r in out["ranks"]] == [0, 1]
    units = [u for r in out["ranks"] for u in r["units"]]
    assert sorted(u["model"] for u in units) == ["Llama-3.2-1B", "OPT-1.3B"]
    assert all(u["n_points"] == 2 and u["est_duration_s"] > 0 and u["file"] == "grid.csv" for u in units)


def test_sweep_json_goes_with_plan(capsys):
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "--json"]) == 2
    assert "--json goes with --plan" in capsys.readouterr().err


# -- --help ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, shown", [
    ("predict", ["(default: 1024)", "(default: hf)", "(default: the engine's KV-memory rule)"]),
    ("counts", ["(default: 64)", "(default: 256)"]),
    ("sweep", ["(default: 1000)", "(default: lean)", "(default: normal:0.02)"]),
])
def test_help_shows_the_defaults(command, shown, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(s in out for s in shown), out
    assert "(default: None)" not in out and "(default: False)" not in out
