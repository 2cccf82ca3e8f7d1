"""The small-GPU lab's CPU path (energybook.measure.gpu_support.cpu_trial), as its page shows it: a small grid of
the hf engine in float32 on the CPU, timed, with no energy (NaN) and no file written. The model is a tiny random
configuration of Llama 3.2 1B (tests/tiny.py), so that it runs in CI in seconds."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from energybook.measure import gpu_support  # noqa: E402
from energybook.measure.protocol import SweepConfig  # noqa: E402

from .tiny import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    model = tiny_config(tmp_path_factory.mktemp("cfg"))
    return gpu_support.cpu_trial(model, n_in=(16, 32), n_out=(4, 8), n_req=3, max_batch=2)


def test_the_cpu_path_times_every_point_of_the_grid(trial):
    rows = trial.rows
    assert sorted(zip(rows["n_in"], rows["n_out"])) == [(16, 4), (16, 8), (32, 4), (32, 8)]
    assert (rows["n_req"] == 3).all() and (rows["batch"] == 2).all() and (rows["waves"] == 2).all()
    assert (rows["tokens_out"] == 3 * rows["n_out"]).all()
    assert (rows["prefill_s"] > 0).all() and (rows["decode_s"] > 0).all()
    assert (rows["duration_s"] == rows["prefill_s"] + rows["decode_s"]).all()
    for _, g in rows.groupby("n_in"):  # prefix mode: the shorter output is a checkpoint of the longer one's run
        assert g.set_index("n_out").loc[8, "decode_s"] >= g.set_index("n_out").loc[4, "decode_s"]
        assert g["prefill_s"].nunique() == 1


def test_the_cpu_path_has_no_energy_and_says_so(trial):
    assert trial.rows["energy_j"].map(math.isnan).all() and trial.rows["tokens_per_j"].map(math.isnan).all()
    assert "no energy meter" in trial.note and "NaN" in trial.note
    assert (trial.engine["dtype"], trial.engine["device"], trial.engine["decode_graphs"]) == ("float32", "cpu",
                                                                                             "False")
    assert trial.seconds > 0


def test_the_cpu_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYBOOK_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    gpu_support.cpu_trial(tiny_config(tmp_path), n_in=(8,), n_out=(2,), n_req=1, max_batch=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-Llama-3.2-1B.json"]


def test_the_cpu_path_refuses_what_it_does_not_run(tmp_path):
    model = tiny_config(tmp_path)
    with pytest.raises(ValueError, match="prefix or full"):
        gpu_support.cpu_trial(model, SweepConfig(n_in=(8,), n_out=(2,), n_req=1, mode="sampled"))
    with pytest.raises(ValueError, match="not both"):
        gpu_support.cpu_trial(model, SweepConfig(n_in=(8,), n_out=(2,)), n_req=1)
    with pytest.raises(ValueError, match="Llama-3.2-1B"):  # an unknown model: the shipped ones are named
        gpu_support.cpu_trial("No-Such-Model", n_in=(8,), n_out=(2,), n_req=1)
