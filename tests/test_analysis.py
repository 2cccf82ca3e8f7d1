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


def test_cross_validation_table_weighting_and_formulas(table):
    llama = table[table["model"] == "Llama-3.2-1B"]
    plain = AN.cross_validation_table(llama, weighting="none", formulas=["flops_model", "Memory+FLOPs"])
    assert list(plain["formula"]) == ["flops_model", "memory_flops_model"]
    rel = AN.cross_validation_table(llama, weighting="relative", formulas=["memory_flops_model"])
    assert plain.set_index("formula").loc["memory_flops_model", "in_sample"] != pytest.approx(
        rel.set_index("formula").loc["memory_flops_model", "in_sample"], rel=1e-9)


def test_mape_comparison_and_by_model(table, fitted):
    plain = AN.fits(table, weighting="none")
    out = AN.mape_comparison(plain, fitted, D.paper_table3())
    assert list(out.columns) == ["ours", "ours_relative", "study_same_models", "study_all"]
    assert list(out.index) == list(AN.FM.FORMULAS)
    published = D.paper_table3().set_index("model")
    assert out.loc["memory_flops_model", "study_same_models"] == pytest.approx(
        published.loc[MODELS, "memory_flops_model"].mean())
    assert out.loc["memory_flops_model", "study_all"] == pytest.approx(published["memory_flops_model"].mean())
    assert out.loc["memory_flops_model", "ours"] < 1 < out.loc["baseline1_const", "ours"]
    by_model = AN.mape_by_model(plain, D.paper_table3())
    assert by_model.loc["OPT-1.3B", ("memory_flops_model", "study")] == published.loc["OPT-1.3B", "memory_flops_model"]


def test_coefficient_and_theta_comparison_recover_the_studys_thetas(table, fitted):
    plain = AN.fits(table, weighting="none")
    t5 = AN.coefficient_table({"none": plain, "relative": fitted}, "theta5", D.paper_table5())
    assert set(t5.index.get_level_values("weighting")) == {"none", "relative"}
    assert list(t5.index[:2]) == [("Llama-3.2-1B", "none"), ("Llama-3.2-1B", "relative")]  # grouped by model
    # The synthetic data are the study's own surfaces, so ours should be close to the study's.
    assert t5.loc[("Llama-3.2-1B", "relative"), "study_over_ours"] == pytest.approx(1, rel=0.5)
    assert (t5["p_value"] >= 0).all() and (t5["p_value"] <= 1).all()
    long = AN.theta_comparison(fitted, D.paper_table5())
    assert len(long) == 3 * 6
    assert long.loc[("Qwen2-1.5B", "theta0"), "ours_over_study"] == pytest.approx(1, rel=0.05)


def test_sweet_spot_table_matches_the_formula():
    th = D.paper_thetas("Llama-3.2-1B")
    t = AN.sweet_spot_table({"Llama-3.2-1B": th, "flat": dict(th, theta4=0.0)})
    llama = t[t["model"] == "Llama-3.2-1B"].set_index("n_in")["n_out_star"]
    published = D.paper_table5().set_index("model").loc["Llama-3.2-1B", "estimated_best_n_out"]
    assert round(llama.loc[64]) == published
    assert (llama.diff().dropna() > 0).all()
    assert (t[t["model"] == "Llama-3.2-1B"]["kind"] == "interior").all()
    # theta4 = 0: the energy per token only falls with n_out, so the best is the longest output, not NaN.
    flat = t[t["model"] == "flat"]
    assert (flat["n_out_star"] == 4096).all() and (flat["kind"] == "boundary: longest n_out").all()


def test_sweet_spot_table_boundary_is_a_result_not_nan():
    th = D.paper_thetas("Llama-3.2-1B")
    # A <= 0 (theta1 n_in^2 + theta3 n_in + theta5): the energy per token only rises -> shortest n_out.
    rising = dict(th, theta1=0.0, theta3=0.0, theta5=-1.0)
    t = AN.sweet_spot_table({"rising": rising}, n_in=[64, 512], n_out_min=32, n_out_max=2048)
    assert t["n_out_star"].notna().all()
    assert (t["n_out_star"] == 32).all() and (t["kind"] == "boundary: shortest n_out").all()
    # An interior optimum outside the range is clipped to it.
    t = AN.sweet_spot_table({"Llama-3.2-1B": th}, n_in=[4096], n_out_max=256)
    assert t["n_out_star"].iloc[0] == 256


def test_repeat_table_keeps_the_full_run_repeats_apart():
    reps = AN.repeat_table()
    if reps.empty:
        pytest.skip("no committed full-run repeats")
    assert all(s.rsplit("/", 1)[-1].startswith("full-") for s in reps["source"])
    # Several repeats of one point, not averaged.
    counts = reps.groupby(["model", "n_in", "n_out"]).size()
    assert (counts >= 2).all()
    assert {"energy_j", "tokens_out", "n_in", "n_out", "model"} <= set(reps.columns)


def test_repeat_table_is_empty_without_measurements(tmp_path):
    assert AN.repeat_table(tmp_path).empty


def test_term_shares_sum_to_one():
    th = dict(theta0=1.0, theta1=0.0, theta2=0.0, theta3=0.0, theta4=0.0, theta5=64.0)
    s = AN.term_shares(th, 64, 64)
    assert s.sum() == pytest.approx(1)
    assert s["theta5"] == pytest.approx(0.5) and s["theta0"] == pytest.approx(0.5)


def test_ratio_to_study():
    t = pd.DataFrame({"model": ["Llama-3.2-1B"], "n_in": [64], "n_out": [256], "n_req": [1000],
                      "energy_j": [2560.0], "tokens_in": [64000], "tokens_out": [256000]})
    study = D.paper_surface("Llama-3.2-1B")
    r = AN.ratio_to_study(t, study).iloc[0]
    expected = 100.0 / study.set_index(["n_in", "n_out"]).loc[(64, 256), "tokens_per_j"]
    assert r["ratio"] == pytest.approx(expected)
    r500 = AN.ratio_to_study(t.assign(energy_j_power500=5120.0), study, energy="energy_j_power500").iloc[0]
    assert r500["ratio"] == pytest.approx(expected / 2)


def test_scroll_table_wraps_in_a_scrollable_box():
    html = AN.scroll_table(pd.DataFrame({"a": [1.23456]}), "{:.2f}").data
    assert "overflow-x: auto" in html and "1.23" in html and "1.2346" not in html


def test_study_text_figures():
    assert AN.STUDY_TEXT.best_worst_ratio == 33.41 and AN.STUDY_TEXT.n_req == 1000


def test_offgrid_errors_reproduce_in_sample_errors_on_grid_points():
    """Off-grid points that happen to lie on the grid: the per-model fits' errors there are their in-sample
    residuals, and the physical model's are those of a direct prediction."""
    import energybook as eb
    from energybook.model import physics

    table = eb.measured_table()
    llama = table[table["model"] == "Llama-3.2-1B"]
    some = llama[(llama["n_in"] == 512) & llama["n_out"].isin([128, 1024])]
    points, summary = AN.offgrid_errors(table, some)
    assert list(summary.index) == ["Llama-3.2-1B"] and len(points) == 2
    fit = F.fit(llama, "memory_flops_model")
    want = fit.predict(512, 128) / float(some[some["n_out"] == 128]["j_per_token"].iloc[0]) - 1
    assert points.set_index("n_out").loc[128, "eq5_error"] == pytest.approx(want)
    r = some.iloc[0]
    direct = physics.predict(AN.A.load("Llama-3.2-1B"), 512, int(r.n_out), batch=int(r.batch), n_req=int(r.n_req),
                             samples=0).j_per_token
    assert points.iloc[0]["physical"] == pytest.approx(direct)
    assert (summary.to_numpy() < 15).all()  # on grid points all three are within their in-sample errors' range
    with pytest.raises(ValueError, match="no grid"):
        AN.offgrid_errors(table[table["model"] != "Llama-3.2-1B"], some)


def _timed_points():
    return pd.DataFrame({"model": ["Llama-3.2-1B"] * 3, "n_in": [64, 64, 64], "n_out": [64, 1024, 4096],
                         "batch": [1000, 1000, 500], "window_s": [1.1, 18.8, 90.4]})


def test_measuring_time_pairs_each_group_longest_window_with_its_bound():
    from energybook.model import roofline as R

    spec = R.GpuSpec("test GPU", peak_flops=800e12, bandwidth_bytes_s=3e12, power_cap_w=700.0, source="test")
    t = AN.measuring_time(_timed_points(), spec)
    assert list(zip(t["batch"], t["n_out"], t["window_s"])) == [(500, 4096, 90.4), (1000, 1024, 18.8)]
    bound = R.measuring_bounds(AN.A.load("Llama-3.2-1B"), _timed_points(), spec)
    assert t["bound_s"].to_numpy() == pytest.approx(bound["time_s"].to_numpy())
    assert t["bound_share"].to_numpy() == pytest.approx((t["bound_s"] / t["window_s"]).to_numpy())
    assert np.all(t["bound_share"] < 1)  # a real measurement is slower than its roofline
    with pytest.raises(ValueError, match="window_s"):
        AN.measuring_time(_timed_points().drop(columns="window_s"), spec)
