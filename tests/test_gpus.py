"""The GPU chapter's machinery: engine benchmark runs read per GPU, the roofline's ratio between two GPUs, and
predictions for GPUs nobody measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from energybook.report import gpus

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def runs():
    found = gpus.find_runs(RESULTS)
    return {("H200" if "H200" in r.gpu else "H100"): r for r in found}


def test_the_committed_runs_are_one_per_gpu_with_their_peaks(runs):
    assert set(runs) == {"H100", "H200"}
    for run in runs.values():
        assert run.uuid.startswith("GPU-") and run.engine == "lean" and run.model == "Llama-3.2-1B"
        assert 1e12 < run.copy_bytes_s < 1e13 and 1e14 < run.matmul_flops_s < 1e16
        assert sorted(zip(run.corners["n_in"], run.corners["n_out"])) == sorted(gpus.CORNERS)


def test_speed_times_power_is_the_measured_ratio(runs):
    t = gpus.compare(runs["H100"], runs["H200"])
    assert np.allclose(t["speed_ratio"] * t["power_ratio"], t["measured_ratio"], rtol=1e-3)
    assert t.attrs["sources"][0].uuid == runs["H100"].uuid


def test_the_roofline_follows_bandwidth_where_decode_dominates(runs):
    h100 = runs["H100"]
    memory = gpus.what_if(h100, bandwidth=2.0).set_index(["n_in", "n_out"])["ratio"]
    compute = gpus.what_if(h100, matmul=2.0).set_index(["n_in", "n_out"])["ratio"]
    assert memory[(64, 4096)] > 1.9 and compute[(64, 4096)] < 1.05
    assert compute[(4096, 64)] > memory[(4096, 64)]
    assert np.allclose(gpus.what_if(h100)["ratio"], 1.0)
    assert np.allclose(gpus.what_if(h100, power=0.5)["ratio"], 2.0)


def test_a_multiplier_must_be_positive(runs):
    with pytest.raises(ValueError, match="bandwidth must be a positive multiplier"):
        gpus.what_if(runs["H100"], bandwidth=0)


def test_a_file_without_peaks_is_refused_with_the_command(tmp_path):
    d = json.loads((RESULTS / "engine_targets.json").read_text())
    del d["peaks"]
    path = tmp_path / "engine_targets.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"peaks.copy_Bps.*benchmarks.engine_targets"):
        gpus.read_run(path)
    assert gpus.find_runs(tmp_path) == []


def test_two_models_are_not_compared(runs):
    other = gpus.GpuRun(**{**runs["H200"].__dict__, "model": "OPT-1.3B"})
    with pytest.raises(ValueError, match="different models"):
        gpus.compare(runs["H100"], other)


def test_the_settings_that_differ_are_named(runs):
    diffs = gpus.settings_differences(runs["H100"], runs["H200"])
    assert diffs["commit"] == (runs["H100"].commit, runs["H200"].commit)
    assert "driver" not in diffs  # the same driver on both boards
