"""`energybook predict` refuses what cannot run (memory, an explicit --batch included; positions beyond the
model's limit) with exit status 2 and one line, and warns, on stderr and in the JSON, when a request lies outside
the range the calibration's grids covered (issue 24, item 5). No GPU needed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from energybook import cli
from energybook.model import architecture as A
from energybook.model import physics as P

CAL = P.load_calibration("h100")
AVAILABLE = f"{CAL.memory_bytes:.4g} bytes available"  # 8.438e+10


@pytest.fixture
def config_70b(tmp_path):
    """A Llama-3.1-70B-shaped configuration (80 layers, width 8192): 70.6e9 parameters, 141 GB of bf16 weights."""
    cfg = dict(A.hf_config("Llama-3.1-8B"), hidden_size=8192, num_hidden_layers=80, intermediate_size=28672,
               num_attention_heads=64, num_key_value_heads=8)
    path = tmp_path / "llama-70b" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    return path


def _refused(args: list[str], capsys) -> str:
    assert cli.main(["predict", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.startswith("energybook: error: ") and "\n" not in err
    return err


# -- memory ---------------------------------------------------------------------------------------------


def test_a_70b_model_at_an_explicit_batch_is_refused_naming_the_bytes(config_70b, capsys):
    err = _refused(["--model", str(config_70b), "--n-in", "512", "--n-out", "256", "--batch", "64"], capsys)
    arch = A.load(config_70b)
    assert 70e9 < arch.num_params < 71e9
    need = P.memory_needed(arch, 512, 256, 63, CAL)  # 1000 requests in balanced waves of 63
    assert f"needs {need['needed_bytes']:.4g} bytes of GPU memory" in err
    assert f"weights {need['weights_bytes']:.4g}" in err and need["weights_bytes"] > CAL.memory_bytes
    assert AVAILABLE in err and "NVIDIA H100 80GB HBM3" in err
    assert "batch 64 (waves of 63 requests)" in err
    assert "the weights alone (1.411e+11 bytes) do not fit: no batch fits" in err


def test_an_8b_model_at_batch_1024_and_n_in_16384_is_refused_with_the_largest_batch(capsys):
    err = _refused(["--model", "Llama-3.1-8B", "--n-in", "16384", "--n-out", "256", "--batch", "1024"], capsys)
    arch = A.load("Llama-3.1-8B")
    need = P.memory_needed(arch, 16384, 256, 1000, CAL)
    assert need["cache_bytes"] > 2e12  # about 2 TB of KV cache
    assert f"needs {need['needed_bytes']:.4g} bytes" in err and "2.395e+12" in err
    assert AVAILABLE in err and "the largest batch that fits is 26" in err


def test_the_largest_batch_that_fits_runs_and_one_more_is_refused():
    arch = A.load("Llama-3.1-8B")
    pred = P.predict(arch, 16384, 256, batch=26, n_req=26, calibration=CAL, samples=0)
    assert pred.batch == 26
    assert P.memory_needed(arch, 16384, 256, 26, CAL)["needed_bytes"] <= CAL.memory_bytes
    with pytest.raises(P.Refused, match="the largest batch that fits is 26"):
        P.predict(arch, 16384, 256, batch=27, n_req=27, calibration=CAL, samples=0)
    # the engine's rule (no batch given) stays inside memory on its own
    assert P.predict(arch, 16384, 256, n_req=1000, calibration=CAL, samples=0).batch <= 26


def test_not_even_one_request_is_refused_by_the_library_too():
    arch = A.load("Llama-3.1-8B")  # 131072 positions; 600000 tokens of KV cache are some 79 GB
    with pytest.raises(P.Refused) as info:
        P.predict(arch, 600000, 1000, calibration=CAL, samples=0)
    message = str(info.value)
    assert "at batch 1 " in message and AVAILABLE in message
    assert "not even one request fits at these lengths" in message
    assert isinstance(info.value, ValueError)  # the CLI's usage errors (exit 2)


# -- positions -------------------------------------------------------------------------------------------


def test_opt_beyond_its_2048_positions_is_refused(capsys):
    err = _refused(["--model", "OPT-1.3B", "--n-in", "2000", "--n-out", "100"], capsys)
    assert err == ("energybook: error: n_in + n_out = 2100 is beyond OPT-1.3B's 2048 positions "
                   "(max_position_embeddings 2048): the model cannot run it; keep n_in + n_out at most 2048")
    assert cli.main(["predict", "--model", "OPT-1.3B", "--n-in", "2000", "--n-out", "48", "--json"]) == 0  # 2048


def test_the_library_refuses_positions_when_strict_and_warns_otherwise():
    arch = A.load("OPT-1.3B")
    with pytest.raises(P.Refused, match="beyond OPT-1.3B's 2048 positions"):
        P.predict(arch, 4096, 64, calibration=CAL, samples=0, strict=True)
    pred = P.predict(arch, 4096, 64, calibration=CAL, samples=0)  # the grids' extended positions: a warning
    assert any("n_in + n_out = 4160 is beyond OPT-1.3B's 2048 positions" in w for w in pred.warnings)


def test_advise_refuses_a_workload_beyond_the_positions(capsys):
    assert cli.main(["advise", "--model", "OPT-1.3B", "--workload", "n_in=1024,n_out=2048"]) == 2
    err = capsys.readouterr().err.strip()
    assert "n_in + n_out = 3072 is beyond OPT-1.3B's 2048 positions" in err and "\n" not in err


# -- warnings ---------------------------------------------------------------------------------------------


def _warned(args: list[str], capsys) -> tuple[list[str], list[str]]:
    """(stderr warning lines, the JSON's warnings) of a prediction that runs."""
    assert cli.main(["predict", *args, "--json"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert all(line.startswith("energybook: warning: ") for line in lines)
    out = json.loads(captured.out)
    assert [line.removeprefix("energybook: warning: ") for line in lines] == out["warnings"]
    return lines, out["warnings"]


def test_inside_the_calibrated_range_there_is_no_warning(capsys):
    lines, warnings = _warned(["--model", "Llama-3.2-1B", "--n-in", "512", "--n-out", "256"], capsys)
    assert lines == [] and warnings == []


def test_a_batch_outside_the_calibrated_batches_is_warned(capsys):
    _, warnings = _warned(["--model", "Llama-3.2-1B", "--n-in", "512", "--n-out", "256", "--batch", "8"], capsys)
    assert "batch 8 is outside the calibrated batches 44..1000 (requests per wave)" in warnings


def test_a_larger_model_is_warned_with_its_size(capsys):
    _, warnings = _warned(["--model", "Llama-3.1-8B", "--n-in", "512", "--n-out", "256"], capsys)
    assert ("Llama-3.1-8B has 8.03e+09 parameters, outside the calibrated model sizes 1.236e+09..1.544e+09 "
            "(Llama-3.2-1B, OPT-1.3B, Qwen2-1.5B)") in warnings


def test_lengths_outside_the_grids_are_warned(capsys):
    _, warnings = _warned(["--model", "Qwen2-1.5B", "--n-in", "32", "--n-out", "8192"], capsys)
    assert "n_in 32 is outside the calibrated prompt lengths 64..4096 tokens" in warnings
    assert "n_out 8192 is outside the calibrated output lengths 64..4096 tokens" in warnings


def test_a_predicted_power_outside_the_measured_powers_is_warned():
    arch = A.load("Llama-3.2-1B")
    pred = P.predict(arch, 512, 256, calibration=CAL, samples=0)
    assert pred.warnings == () and 602 < pred.power_w < 697
    narrow = dataclasses.replace(CAL, calibrated_range=dict(CAL.calibrated_range, power_w=[690.0, 697.0]))
    pred = P.predict(arch, 512, 256, calibration=narrow, samples=0)
    assert pred.warnings == (f"the predicted mean power {pred.power_w:.0f} W is outside the measured mean powers "
                             "690..697 W of the calibration grids",)
    assert pred.to_dict()["warnings"] == list(pred.warnings)


def test_a_calibration_without_a_range_says_so():
    bare = dataclasses.replace(CAL, calibrated_range={})
    pred = P.predict(A.load("Llama-3.2-1B"), 512, 256, calibration=bare, samples=0)
    assert pred.warnings == ("the calibration of h100 records no calibrated range: whether this request lies inside "
                             "what its grids covered is unknown",)


def test_the_calibrated_range_is_what_the_grids_cover():
    rng = CAL.calibrated_range
    sizes = [A.load(m).num_params for m in rng["models"]]
    assert rng["num_params"] == [min(sizes), max(sizes)]
    assert rng["batch"] == [44, 1000] and rng["n_in"] == [64, 4096] and rng["n_out"] == [64, 4096]
    assert pytest.approx(602.2, abs=0.1) == rng["power_w"][0] and pytest.approx(697.3, abs=0.1) == rng["power_w"][1]


def test_the_stored_range_is_recomputed_from_the_committed_grids():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data" / "measured"
    if not root.is_dir():
        pytest.skip("not in a checkout")
    from energybook.report.analysis import measured_table

    table = measured_table(root, gpu=CAL.gpu_name)
    models = sorted(set(table["model"]))
    assert P.calibrated_range([(A.load(m), table[table["model"] == m]) for m in models]) == CAL.calibrated_range
