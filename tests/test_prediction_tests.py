"""The physical model's test on data its frozen form never saw: which files count, and how errors are summarised."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from energybook.model import form as F
from energybook.model import physics as P
from energybook.report import prediction_tests as T

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
BENCH = ROOT / "benchmarks" / "results"
H100_HF = DATA / "measured" / "nvidia-h100-80gb-hbm3" / "hf"


@pytest.fixture(scope="module")
def cal():
    return P.load_calibration()


def test_development_grids_are_never_test_data(cal):
    files = {s.file for s in T.unseen_files(cal, DATA, BENCH)}
    assert not files & {p for p, _, _ in F.DEVELOPED_ON}
    # More files of a development model on the calibration's GPU (its full-protocol checks) are not tests either.
    assert not any(f.startswith("data/measured/nvidia-h100-80gb-hbm3/hf/Llama-3.2-1B/") for f in files)


def test_another_gpu_is_reached_by_measured_peaks_and_says_whose(cal):
    other = [s for s in T.unseen_files(cal, DATA, BENCH) if s.kind == "other GPU"]
    assert other, "the committed H200 run of the hf engine is test data for the H100 calibration"
    for s in other:
        assert s.gpu != cal.gpu_name and s.peaks["file"].endswith("engine_targets.json")
        assert s.peaks["board"] == "own board" or s.peaks["board"].startswith("another board of the same model")


def test_an_offgrid_file_of_the_calibration_gpu_is_test_data(cal, tmp_path):
    folder = tmp_path / "measured" / "nvidia-h100-80gb-hbm3" / "hf" / "Llama-3.2-1B"
    folder.mkdir(parents=True)
    for ext in ("csv", "json"):
        shutil.copy(H100_HF / "Llama-3.2-1B" / f"full-64x256.{ext}", folder / f"offgrid.{ext}")
    sets = T.unseen_files(cal, tmp_path)
    assert [(s.kind, s.model) for s in sets] == [("off-grid", "Llama-3.2-1B")]
    points = T.evaluate(sets, cal, samples=20)
    assert len(points) == len(sets[0].data) and points["error_pct"].notna().all()


def test_the_summary_counts_refusals_apart_from_errors():
    points = pd.DataFrame([
        dict(kind="other GPU", model="m", gpu="g", error_pct=10.0, inside=True, refused=""),
        dict(kind="other GPU", model="m", gpu="g", error_pct=-30.0, inside=False, refused=""),
        dict(kind="other GPU", model="m", gpu="g", error_pct=np.nan, inside=False, refused="ALiBi"),
    ])
    s = T.summary(points).iloc[0]
    assert (s["points"], s["refused"]) == (3, 1)
    assert s["mape_pct"] == pytest.approx(20.0) and s["bias_pct"] == pytest.approx(-10.0)
    assert s["worst_pct"] == pytest.approx(30.0) and s["coverage"] == pytest.approx(0.5)


def test_the_report_names_its_calibration_and_what_is_missing(cal, tmp_path):
    rec = T.report(cal, tmp_path, None, samples=0)
    assert rec["points"] == [] and rec["missing"] == list(T.KINDS)
    assert rec["form_hash"] == cal.form_hash and rec["calibration"]["engine"] == "hf"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    points, summary, _ = T.read_report(path)
    assert points.empty and summary.empty


def test_a_foreign_file_is_not_read_as_a_report(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ValueError, match="prediction_tests --out"):
        T.read_report(path)


def test_a_path_no_grid_ran_is_refused_not_scored(cal):
    falcon = [s for s in T.unseen_files(cal, DATA, BENCH) if s.model == "Falcon-RW-7B"]
    assert falcon, "the committed Falcon-RW 7B check of the hf engine is test data"
    points = T.evaluate(falcon, cal, samples=0)
    assert points["refused"].str.contains("ALiBi").all() and points["error_pct"].isna().all()
