"""The study's tables rebuilt from tidy tables (synthetic data from the study's own thetas)."""

import numpy as np
import pandas as pd
import pytest

from energybook.model import fit as F
from energybook.model import paper as D
from energybook.report import analysis as AN

MODELS = ["Llama-3.2-1B", "OPT-1.3B", "Qwen2-1.5B"]


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    parts = []
    for m in MODELS:
        t = F.predict_grid(D.paper_thetas(m))
        t["j_per_token"] *= 1 + 0.005 * rng.standard_normal(len(t))
        parts.append(t.assign(model=m))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def fitted(table):
    return AN.fits(table)


def test_mape_table(fitted):
    t = AN.mape_table(fitted)
    assert list(t.index) == MODELS + ["mean"]
    assert (t.loc["mean", "memory_flops_model"] < 1) and (t.loc["mean", "baseline1_const"] > 20)


def test_theta_table_recovers_the_studys_sweet_spots(table, fitted):
    t = AN.theta_table(table, fitted)
    published = D.paper_table5().set_index("model")
    for m in MODELS:
        assert t.loc[m, "estimated_best_n_in"] == 64
        assert t.loc[m, "estimated_best_n_out"] == pytest.approx(published.loc[m, "estimated_best_n_out"], rel=0.1)


def test_significance_and_extremes(table, fitted):
    s = AN.significance_table(fitted)
    assert s.loc["significant (p < 0.05)", "theta0"] == 3
    e = AN.extremes_table(table)
    assert (e["worst_n_in"] == 4096).all() and (e["ratio"] > 5).all()


def test_normalised_surface_spans_zero_to_one(table):
    s = AN.normalised_surface(table)
    assert len(s) == 49 and s["normalised"].between(0, 1).all()
    best = s.loc[s["normalised"].idxmax()]
    assert best["n_in"] == 64


def test_method_difference():
    t = pd.DataFrame({"energy_j": [100.0, 200.0], "energy_j_power500": [90.0, 210.0]})
    assert list(AN.method_difference(t)["difference_pct"]) == [-10.0, 5.0]
    with pytest.raises(ValueError, match="lacks column"):
        AN.method_difference(t.drop(columns="energy_j"))


def test_cross_validation_table(table):
    t = AN.cross_validation_table(table[table["model"] == "Llama-3.2-1B"])
    row = t.set_index("formula").loc["memory_flops_model"]
    assert row["in_sample"] < row["kfold"] < 3


def test_measured_table_reads_the_committed_h100_grid():
    t = AN.measured_table()
    llama = t[t["model"] == "Llama-3.2-1B"]
    assert len(llama) == 49 and llama["gpu"].str.contains("H100").all()
    assert (llama["tokens_per_j"] > 0).all()
    assert np.allclose(llama["j_per_token"] * llama["tokens_per_j"], 1)


def test_measured_table_refuses_test_data(tmp_path):
    from energybook.store import results as R

    R.ResultsFile(tmp_path / "cpu" / "tiny" / "grid.csv").start(
        {"test_data": True, "device": "cpu", "meter_method": "simulated"})
    with pytest.raises(R.DataError, match="test data"):
        AN.measured_table(tmp_path)


def test_attention_kind():
    assert [AN.attention_kind(m) for m in MODELS] == ["GQA", "MHA", "GQA"]


def test_coverage_and_common_points_on_an_incomplete_grid(table):
    gap = table[~((table["model"] == "Qwen2-1.5B") & (table["n_in"] == 1024))]
    gap = gap[~((gap["model"] == "OPT-1.3B") & (gap["n_in"] == 64) & (gap["n_out"] == 4096))]
    cov = AN.coverage_table(gap)
    assert cov.loc["Llama-3.2-1B", "points"] == 49 and cov.loc["Llama-3.2-1B", "missing"] == ""
    assert cov.loc["Qwen2-1.5B", "points"] == 42 and cov.loc["Qwen2-1.5B", "missing"].startswith("(1024, 64)")
    assert cov.loc["OPT-1.3B", "missing"] == "(64, 4096)"
    common = AN.common_points(gap)
    assert len(common) == 3 * (49 - 7 - 1)
    assert not ((common["n_in"] == 1024) | ((common["n_in"] == 64) & (common["n_out"] == 4096))).any()
