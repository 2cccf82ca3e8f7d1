"""The dummy weights' distributions and the prompt kinds of the weight-sensitivity experiment (issue 13, item 5):
parsed and refused by name, drawn as asked, passed from the command line to the engine and recorded."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from energybook.measure import protocol as P

torch = pytest.importorskip("torch")
from energybook.measure import torch_engine as TE  # noqa: E402

from .tiny import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec, want", [("normal:0.02", ("normal", (0.02,))), ("zeros", ("zeros", ())),
                                        ("student_t:3:0.006", ("student_t", (3.0, 0.006)))])
def test_weight_inits_parse(spec, want):
    assert P.parse_weight_init(spec) == want


@pytest.mark.parametrize("spec", ["uniform", "normal", "normal:-1", "zeros:1", "student_t:2:0.02", "student_t:x:1",
                                  3])
def test_bad_weight_inits_are_refused_naming_the_forms(spec):
    with pytest.raises(ValueError, match="normal:STD, zeros or student_t:DF:STD"):
        P.parse_weight_init(spec)
    with pytest.raises(ValueError):
        P.SweepConfig(weight_init=spec)


def test_draws_have_the_asked_spread_and_tails():
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    normal = TE.init_dummy_(torch.empty(n), "normal:0.02", gen)
    heavy = TE.init_dummy_(torch.empty(n), "student_t:5:0.02", gen)
    assert float(normal.std()) == pytest.approx(0.02, rel=0.01) and float(heavy.std()) == pytest.approx(0.02, rel=0.05)

    def kurtosis(x):
        return float(((x - x.mean()) ** 4).mean() / x.var() ** 2)

    assert kurtosis(normal) == pytest.approx(3.0, abs=0.1) and kurtosis(heavy) > 5.0  # t(5): 9 in theory
    assert not TE.init_dummy_(torch.ones(10), "zeros", gen).any()


def test_repeated_prompts_are_one_token_and_random_ones_are_not():
    rep = TE.random_prompts(torch, 1000, 0, 16, 4, "cpu", "repeated")
    rnd = TE.random_prompts(torch, 1000, 0, 16, 4, "cpu")
    assert rep.shape == rnd.shape == (4, 16) and rep.unique().numel() == 1 and rnd.unique().numel() > 10
    with pytest.raises(ValueError, match="prompts"):
        TE.random_prompts(torch, 1000, 0, 16, 4, "cpu", "sorted")


def test_the_record_names_a_non_default_init_only():
    assert "weight_init" not in P.SweepConfig().to_record() and "prompts" not in P.SweepConfig().to_record()
    rec = P.SweepConfig(weight_init="zeros", prompts="repeated").to_record()
    assert rec["weight_init"] == "zeros" and rec["prompts"] == "repeated"
    assert P.SweepConfig.from_record(rec).weight_init == "zeros"


@pytest.mark.parametrize("engine", ["torch", "lean"])
def test_the_command_line_reaches_the_engine_and_the_sidecar(tmp_path, engine, capsys):
    """``energybook sweep --weight-init zeros --prompts repeated`` reaches the engine, and the sidecar records the
    kind in the protocol and in the engine's settings."""
    cfg = tiny_config(tmp_path)
    out = tmp_path / "ws" / "zeros.csv"
    cmd = [sys.executable, "-m", "energybook.cli", "sweep", "--model", str(cfg), "--engine", engine, "--device",
           "cpu", "--allow-test-data", "--n-in", "8", "--n-out", "4", "--n-req", "2", "--max-batch", "2",
           "--min-window", "0", "--cooldown", "0", "--no-progress", "--weight-init", "zeros", "--prompts", "repeated",
           "--data", str(tmp_path / "ws"), "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT),
                                                                               "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["protocol"]["weight_init"] == "zeros" and side["protocol"]["prompts"] == "repeated"
    assert side["engine"]["weight_init"] == "zeros" and side["engine"]["prompts"] == "repeated"
    from energybook import cli

    assert cli.main(["sweep", "--model", str(cfg), "--weight-init", "uniform", "--device", "cpu",
                     "--allow-test-data"]) == 2
    assert "weight_init 'uniform' is not one of normal:STD" in capsys.readouterr().err
