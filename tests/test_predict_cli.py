"""`energybook predict` and `energybook advise`: the JSON contract, the text output, bad inputs, no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from energybook import cli
from energybook.model import architecture as A
from energybook.model import physics as P
from energybook.report import advise as ADV

KEYS = {"j_per_token", "tokens_per_j", "j_per_request", "duration_s", "power_w", "j_per_token_low",
        "j_per_token_high"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "energybook", *args], capture_output=True, text=True)


def test_predict_json_contract():
    proc = _run("predict", "--model", "Llama-3.2-1B", "--n-in", "512", "--n-out", "256", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert isinstance(out, dict) and KEYS <= set(out)
    for k in KEYS:
        assert isinstance(out[k], float) and out[k] > 0, k
    assert out["j_per_token_low"] < out["j_per_token"] < out["j_per_token_high"]
    assert out["tokens_per_j"] == pytest.approx(1 / out["j_per_token"])
    assert out["warnings"] == [] and proc.stderr == ""  # inside the calibrated range: no warning


def test_predict_a_config_file_with_a_fixed_batch(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(A.hf_config("Qwen2-1.5B"), num_hidden_layers=4)))
    assert cli.main(["predict", "--model", str(cfg), "--n-in", "100", "--n-out", "50", "--batch", "10",
                     "--n-req", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["batch"], out["waves"], out["n_req"]) == (10, 3, 30)


def test_predict_text_output(capsys):
    assert cli.main(["predict", "--model", "OPT-1.3B", "--n-in", "64", "--n-out", "128", "--max-batch", "256"]) == 0
    out = capsys.readouterr().out
    for word in ("per output token", "per total token", "per request", "tokens per joule", "time", "mean power",
                 "interval", "batch 250 in 4 wave(s)"):
        assert word in out


@pytest.mark.parametrize("args, message", [
    (["predict", "--model", "nope", "--n-in", "8", "--n-out", "8"], "unknown model 'nope'"),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "-8", "--n-out", "8"], "n_in must be a positive"),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8", "--gpu", "a100"],
     "no calibration for GPU 'a100' with engine 'hf'; calibrations: --gpu nvidia-h100-80gb-hbm3 --engine hf"),
    (["advise", "--model", "Llama-3.2-1B", "--workload", "missing.csv"], "missing.csv"),
    (["advise", "--model", "Llama-3.2-1B", "--workload", "n_in~abc"], "cannot read the workload"),
    (["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=-5,n_out=3"], "positive integer"),
])
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("energybook: error:") and message in err and "\n" not in err


def test_advise_on_a_spec_with_a_plot(tmp_path, capsys):
    png = tmp_path / "advice.png"
    assert cli.main(["advise", "--model", "Qwen2-1.5B", "--workload", "n_in=512,n_out<=2048,n_req=500",
                     "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "500 requests" in out and "output cap 1024" in out and "answer quality" in out
    assert "fewest joules per request" in out and "joules per output token" not in out
    assert png.is_file() and png.stat().st_size > 1000


def test_advise_on_a_csv(tmp_path):
    csv = tmp_path / "w.csv"
    csv.write_text("n_in,n_out\n" + "\n".join(f"{64 * (1 + i % 4)},{32 * (1 + i % 7)}" for i in range(50)) + "\n")
    workload = ADV.parse_workload(csv)
    assert workload.n_req == 50 and workload.weight.sum() == pytest.approx(1)
    advice = ADV.advise(A.load("Llama-3.2-1B"), workload, P.load_calibration())
    frame = advice.to_frame()
    assert set(frame["kind"]) == {"output cap", "as given"}  # no truncation unless max_truncation allows it
    cap = next(o for o in advice.options if o.kind == "output cap" and o.cap == 64)
    assert 0 < cap.energy_j_per_request < advice.baseline.energy_j_per_request  # a cap lowers the energy per request
    assert cap.saving_j_total == pytest.approx(cap.saving_j_per_request * 50)
    assert advice.best.energy_j_per_request <= advice.baseline.energy_j_per_request
    assert any("n_out 32 is outside the calibrated output lengths" in w for w in advice.warnings)
    truncated = ADV.advise(A.load("Llama-3.2-1B"), workload, P.load_calibration(), max_truncation=0.5)
    assert {o.kind for o in truncated.options} == {"output cap", "prompt truncation"}


def test_workload_spec_forms():
    w = ADV.parse_workload("n_in=64..1024, n_out=128")
    assert w.n_in.min() >= 64 and w.n_in.max() <= 1024 and set(w.n_out) == {128} and w.n_req == 1000
    assert len(ADV.parse_workload("n_in<=4,n_out=1").n_in) == 4
    with pytest.raises(ValueError, match="lacks"):
        ADV.parse_workload("n_in=5")
    with pytest.raises(ValueError, match="1 <= low <= high"):
        ADV.parse_workload("n_in=9..3,n_out=1")


def test_bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks column"):
        ADV.parse_workload(bad)
    bad.write_text("n_in,n_out\n1,0\n")
    with pytest.raises(ValueError, match="positive integer"):
        ADV.parse_workload(bad)


def test_predict_and_advise_need_no_torch(tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers', 'pynvml'}:\n"
        "            raise ImportError(f'blocked {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from energybook import cli\n"
        "assert cli.main(['predict', '--model', 'Llama-3.2-1B', '--n-in', '64', '--n-out', '64', '--json']) == 0\n"
        "assert cli.main(['advise', '--model', 'OPT-1.3B', '--workload', 'n_in=64,n_out<=256']) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
