"""Tests of energybook.report.provenance (no GPU: results files are written by hand, marked as test data)."""

from __future__ import annotations

import json
import math

import pytest

from energybook.report import provenance as P
from energybook.store import results as R
from energybook.store.workspace import Workspace


def _write_run(folder, model="Llama-3.2-1B", test_data=True, points=((64, 64), (64, 128))):
    path = Workspace(folder).results_path("NVIDIA H100 80GB HBM3", model)
    rf = R.ResultsFile(path)
    rf.start({"model": model, "gpu": "NVIDIA H100 80GB HBM3", "driver": "580.0", "torch": "2.11", "cuda": "13.0",
              "transformers": "5.17", "energybook": "0.1.0", "meter_method": "counter", "weights": "dummy",
              "dtype": "bfloat16", "device": "cuda", "test_data": test_data, "started_at": "2026-03-01T10:00:00Z",
              "engine": {"engine": "torch", "max_batch": 1024, "attention": "sdpa"},
              "protocol": {"n_req": 1000, "max_batch": 1024, "mode": "prefix", "n_in": [64], "n_out": [64, 128]},
              "command": "energybook sweep --model " + model})
    for n_in, n_out in points:
        e = 1000.0 + n_out
        rf.append({"model": model, "n_in": n_in, "n_out": n_out, "rep": 0, "n_req": 1000, "batch": 1000,
                   "energy_j": e, "energy_j_power500": e * 1.02, "energy_j_power100": e * 0.99,
                   "duration_s": 5.0, "tokens_out": 1000 * n_out, "j_per_token": e / (1000 * n_out)})
    return path


def test_no_folder_gives_no_runs(tmp_path):
    assert P.result_files(tmp_path / "absent") == []
    assert P.measured_runs(tmp_path / "absent") == []
    assert P.measured_table([]).empty
    assert P.run_table([]).empty
    assert P.timeline_files(tmp_path / "absent") == []


def test_env_variable_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYBOOK_DATA", str(tmp_path))
    assert P.measured_dir() == tmp_path / "measured"
    assert P.measured_dir(tmp_path / "x") == tmp_path / "x"


def test_test_data_are_refused_unless_allowed(tmp_path):
    _write_run(tmp_path)
    with pytest.raises(R.DataError, match="not a real GPU measurement"):
        P.measured_runs(tmp_path)
    runs = P.measured_runs(tmp_path, allow_test_data=True)
    assert len(runs) == 1 and len(runs[0].data) == 2


def test_tables_from_sidecars(tmp_path):
    _write_run(tmp_path)
    _write_run(tmp_path, model="OPT-1.3B", points=((64, 64),))
    runs = P.measured_runs(tmp_path, allow_test_data=True)
    table = P.run_table(runs)
    assert list(table["model"]) == ["Llama-3.2-1B", "OPT-1.3B"]
    assert table["sha256 ok"].all()
    assert list(table["rows"]) == [2, 1]
    assert table.loc[0, "date"] == "2026-03-01"
    assert table.loc[0, "engine"] == "torch"
    env = P.environment_table(runs)
    assert env.loc["GPU"].tolist() == ["NVIDIA H100 80GB HBM3"] * 2
    assert env.loc["weights"].iloc[0] == "dummy"
    proto = P.protocol_table(runs)
    assert proto.loc["n_req"].iloc[0] == "1000"
    assert "energybook sweep" in proto.loc["command"].iloc[0]
    rows = P.measured_table(runs)
    assert len(rows) == 3 and "source" in rows


def test_checksum_mismatch_is_an_error(tmp_path):
    path = _write_run(tmp_path)
    path.write_text(path.read_text() + "\n")
    with pytest.raises(R.DataError, match="sha256"):
        P.measured_runs(tmp_path, allow_test_data=True)


def test_method_summary(tmp_path):
    _write_run(tmp_path)
    rows = P.measured_table(P.measured_runs(tmp_path, allow_test_data=True))
    s = P.method_summary(rows)
    assert math.isclose(s.loc["Llama-3.2-1B", ("power500", "mean (%)")], 2.0, rel_tol=1e-4)
    assert math.isclose(s.loc["Llama-3.2-1B", ("power100", "max (%)")], -1.0, rel_tol=1e-4)
    assert s.loc["Llama-3.2-1B", ("power500", "points")] == 2


def test_replay_meter_applies_the_integration_rules():
    # Constant 200 W: counter ticks every 0.1 s, power samples every 0.1 s.
    ts = [i * 0.1 for i in range(31)]
    m = P.replay_meter(ts, [200.0 * t * 1000 for t in ts], ts, [200.0] * len(ts))
    r = m.reading(0.55, 2.05, wait=False)
    assert math.isclose(r.energy_j, 300.0, rel_tol=1e-9)
    assert math.isclose(r.energy_j_power100, 300.0, rel_tol=1e-9)
    assert math.isclose(r.energy_j_power500, 300.0, rel_tol=1e-9)
    assert r.method == "counter"


def test_versions_lists_python_and_packages():
    v = P.versions(("numpy", "surely-not-a-package-xyz"))
    assert v.loc["surely-not-a-package-xyz", "version"] == "not installed"
    assert v.loc["python", "version"].count(".") == 2


def test_timeline_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run_timeline.json").write_text(json.dumps({"power_t": [0], "power_w": [1]}))
    (tmp_path / "a" / "bad_timeline.json").write_text("{")
    assert [p.name for p in P.timeline_files(tmp_path)] == ["run_timeline.json"]


def test_measuring_minutes_and_gpu_count():
    prov = {"gpu_uuid": "GPU-b", "runs": [{"gpu_uuid": "GPU-a"}, {"gpu_uuid": "GPU-b"}],
            "points": {"64x64#0": {"started_at": "2026-03-01T10:00:00Z", "finished_at": "2026-03-01T10:01:00Z"},
                       "64x128#0": {"started_at": "2026-03-01T10:00:00Z", "finished_at": "2026-03-01T10:03:00Z"},
                       "128x64#0": {"started_at": "2026-03-01T11:00:00Z", "finished_at": "2026-03-01T11:00:30Z",
                                    "gpu_uuid": "GPU-c"}}}
    # group 1: 10:00 -> 10:03 (3 min, the shorter point is inside it); group 2: 0.5 min; the hour between is not counted
    assert P.measuring_minutes(prov) == pytest.approx(3.5)
    assert P.gpu_count(prov) == 3
    assert math.isnan(P.measuring_minutes({"points": {"64x64#0": {"started_at": None}}}))
    assert P.gpu_count({}) == 0
