"""Statistics and sweet spots of energybook.model.stats, on synthetic data with a known truth and on the
committed grids (CPU, seconds)."""

import warnings

import numpy as np
import pandas as pd
import pytest

from energybook.model import fit as FIT
from energybook.model import formulas as F
from energybook.model import paper as D
from energybook.model import stats as S

TRUE = D.paper_thetas("Llama-3.2-1B")


def kv_batch(n_in, n_out):
    """A KV-memory rule like the engine's: 1000 requests while n_in + n_out <= 2048, then halving."""
    total = np.asarray(n_in) + np.asarray(n_out)
    return np.ceil(1000 / np.ceil(total / 2048))


def synthetic(thetas, formula="memory_flops_model", noise=0.002, seed=0, batch=kv_batch):
    table = FIT.predict_grid(thetas, formula, batch=batch if F.get(formula).needs_batch else None)
    if "batch" not in table:
        table["batch"] = kv_batch(table["n_in"], table["n_out"])
    table["j_per_token"] *= 1 + noise * np.random.default_rng(seed).standard_normal(len(table))
    return table.assign(model="synthetic")


TRUE6 = {**TRUE, "theta6": 3.0}


# --- the batch term ----------------------------------------------------------------------------------


def test_the_batch_term_recovers_theta6():
    table = synthetic(TRUE6, "memory_flops_batch_model", noise=0.002, seed=3)
    batch = FIT.fit(table, "memory_flops_batch_model", weighting="relative")
    eq5 = FIT.fit(table, "memory_flops_model", weighting="relative")
    assert batch.params["theta6"].covers(3.0), batch.params["theta6"]
    assert batch.mape_pct < 0.3 < eq5.mape_pct
    assert np.allclose(batch.predict(table["n_in"], table["n_out"], table["batch"]),
                       table["j_per_token"], rtol=0.01)
    cv = FIT.cross_validate(table, "memory_flops_batch_model", "column")
    assert cv.mape_pct < FIT.cross_validate(table, "memory_flops_model", "column").mape_pct


def test_the_batch_formula_refuses_to_run_without_a_batch():
    f = F.get("memory_flops_batch_model")
    assert f.needs_batch and f.param_names[-1] == "theta6" and "memory_flops_batch_model" not in F.FORMULAS
    with pytest.raises(ValueError, match="batch"):
        f(64, 64, **TRUE6)
    with pytest.raises(ValueError, match="batch"):
        FIT.predict_grid(TRUE6, "memory_flops_batch_model")
    with pytest.raises(ValueError, match="batch"):
        FIT.fit(synthetic(TRUE).drop(columns="batch"), "memory_flops_batch_model")
    with pytest.raises(ValueError, match="batch"):
        F.optimum(64, TRUE6, formula="memory_flops_batch_model")
    grid = FIT.predict_grid(TRUE6, "memory_flops_batch_model", batch=500)
    assert (grid["batch"] == 500).all()
    assert np.allclose(grid["j_per_token"], FIT.predict_grid(TRUE)["j_per_token"] + 3.0 / 500)
    assert set(FIT.fit_all(synthetic(TRUE), extra=True)) == set(F.FORMULAS) | {"memory_flops_batch_model"}


def test_a_constant_batch_leaves_the_sweet_spot_where_eq5_puts_it():
    a = F.optimum(512, TRUE6, formula="memory_flops_batch_model", batch=1000)
    b = F.optimum(512, TRUE)
    assert abs(a.n_out - b.n_out) / b.n_out < 0.01
    assert a.j_per_token == pytest.approx(b.j_per_token + 3.0 / 1000, rel=1e-6)


# --- standard errors and the bootstrap ---------------------------------------------------------------


def _inv_out_table(seed, heteroscedastic):
    rng = np.random.default_rng(seed)
    n_out = np.repeat(np.geomspace(1, 4096, 40), 3)
    clean = 1.0 + 2.0 / n_out
    sd = 0.05 * (1 / n_out if heteroscedastic else np.full_like(n_out, 0.01))
    return pd.DataFrame({"n_in": 64, "n_out": n_out, "j_per_token": clean + sd * rng.standard_normal(len(n_out))})


def test_hc3_is_wider_than_classical_under_heteroscedastic_noise():
    het = [S.standard_errors(_inv_out_table(s, True), "baseline2_inv_out").loc["theta1", "hc3_over_classical"]
           for s in range(20)]
    hom = [S.standard_errors(_inv_out_table(s, False), "baseline2_inv_out").loc["theta1", "hc3_over_classical"]
           for s in range(20)]
    assert np.mean(het) > 1.5
    assert 0.8 < np.mean(hom) < 1.25


def test_classical_errors_match_lmfit():
    table = synthetic(TRUE, noise=0.01, seed=2)
    for weighting in ("none", "relative"):
        se = S.standard_errors(table, weighting=weighting)
        result = FIT.fit(table, weighting=weighting)
        for name, p in result.params.items():
            assert se.loc[name, "value"] == pytest.approx(p.value, rel=1e-6, abs=1e-12)
            assert se.loc[name, "classical"] == pytest.approx(p.stderr, rel=1e-4)
            assert se.loc[name, "p_classical"] == pytest.approx(p.p_value, rel=1e-3, abs=1e-300)


def _grouped_table(seed, groups=24):
    rng = np.random.default_rng(seed)
    n_in = np.geomspace(64, 4096, groups)
    n_out = np.array([64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    ii, oo = (a.ravel() for a in np.meshgrid(n_in, n_out, indexing="ij"))
    truth = dict(theta0=1.0, theta1=50.0, theta2=1e-3)
    clean = F.baseline4(ii, oo, **truth)
    return pd.DataFrame({"n_in": ii, "n_out": oo, "batch": 1000,
                         "j_per_token": clean * (1 + 0.02 * rng.standard_normal(len(ii)))}), truth


def test_group_bootstrap_intervals_have_roughly_their_coverage():
    trials, hits = 60, {"theta0": 0, "theta1": 0, "theta2": 0}
    for seed in range(trials):
        table, truth = _grouped_table(seed)
        boot = S.bootstrap(table, "baseline4_wilkins", "relative", n_boot=200, seed=seed)
        assert boot.n_groups == 24 and boot.n_boot == 200
        for k in hits:
            low, high = boot.interval(k)
            hits[k] += low <= truth[k] <= high
    for k, h in hits.items():
        assert 0.8 <= h / trials <= 1.0, (k, h / trials)


def test_prefix_groups_are_model_input_and_batch():
    table = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 2, "n_in": [64, 64, 64, 128, 64, 64],
                          "batch": [1000, 1000, 500, 1000, 1000, 1000]})
    labels = S.prefix_groups(table)
    assert len(set(labels)) == 4 and labels[0] == labels[1] != labels[2] and labels[4] == labels[5] != labels[0]
    assert len(set(S.prefix_groups(table.drop(columns="batch")))) == 3


def test_sign_stability_tells_a_real_coefficient_from_a_null_one():
    shares = []
    for seed in range(8):
        table = synthetic({**TRUE, "theta5": 0.0}, noise=0.01, seed=seed)
        coefs = S.coefficient_statistics(table, weighting="relative", n_boot=200, seed=seed)
        assert coefs["theta0"].sign_share == 1.0 and coefs["theta0"].sign_stable
        assert coefs["theta3"].sign_stable
        shares.append(coefs["theta5"].sign_share)
    assert np.mean(shares) < 0.9
    frame = S.statistics_frame(coefs)
    assert {"se_classical", "se_hc3", "boot_low", "boot_high", "sign_share", "sign_stable", "p_classical",
            "excludes_zero"} <= set(frame.columns)
    assert (frame["excludes_zero"] == ((frame["boot_low"] > 0) | (frame["boot_high"] < 0))).all()
    assert frame["p_classical"].between(0, 1).all()


# --- lack of fit -------------------------------------------------------------------------------------


def test_lack_of_fit_passes_a_correct_model_and_flags_a_misspecified_one():
    table = synthetic(TRUE6, "memory_flops_batch_model", noise=0.002, seed=5)
    right = S.lack_of_fit(table, 0.002, "memory_flops_batch_model", "relative")
    wrong = S.lack_of_fit(table, 0.002, "memory_flops_model", "relative")
    assert 0.5 < right.reduced_chi2 < 1.6 and not right.rejects()
    assert wrong.reduced_chi2 > 10 and wrong.rejects() and wrong.rms_over_noise > 3
    assert right.dof == 49 - 7 and wrong.dof == 49 - 6
    with pytest.raises(ValueError, match="positive"):
        S.lack_of_fit(table, 0.0)


def test_repeat_noise_recovers_the_noise_of_repeats():
    rng = np.random.default_rng(0)
    rows = [dict(model=m, n_in=i, n_out=64, rep=r, j_per_token=0.1 * (1 + sd * rng.standard_normal()))
            for m, sd in (("a", 0.002), ("b", 0.004)) for i in range(60) for r in range(3)]
    noise = S.repeat_noise(pd.DataFrame(rows))
    assert noise.by_model["a"] == pytest.approx(0.002, rel=0.15)
    assert noise.by_model["b"] == pytest.approx(0.004, rel=0.15)
    assert noise.for_model("c") == noise.pooled_rel_sd
    with pytest.raises(ValueError, match="twice"):
        S.repeat_noise(pd.DataFrame(rows).drop_duplicates(["model", "n_in"]))


# --- sweet spots -------------------------------------------------------------------------------------

BOUNDARY = {**TRUE, "theta1": 0.0, "theta3": 0.0, "theta5": -0.05}  # numerator < 0 at every n_in


def test_a_non_positive_numerator_gives_the_shortest_output_not_a_crash():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(F.sweet_spot(64, 0.0, 0.0, BOUNDARY["theta4"], -0.05))
    opt = F.optimum(64, BOUNDARY, 64, 4096)
    assert opt.kind == F.SHORTEST and opt.is_boundary and opt.n_out == 64
    assert opt.j_per_token == pytest.approx(float(F.memory_flops_model(64, 64, **BOUNDARY)))
    spot = FIT.estimated_sweet_spot(BOUNDARY)  # crashed with "cannot convert float NaN to integer"
    assert spot.kind == F.SHORTEST and spot.n_out == 1
    spot = FIT.estimated_sweet_spot(BOUNDARY, n_out_min=64, n_out_max=4096)
    assert spot.n_out == 64 and spot.kind == F.SHORTEST
    zero = {**BOUNDARY, "theta5": 0.0}
    assert F.optimum(64, zero, 64, 4096).kind == F.SHORTEST


def test_other_boundaries_and_the_interior():
    falling = {**TRUE, "theta4": -1e-8}
    assert F.optimum(512, falling, 64, 4096).kind == F.LONGEST
    with pytest.raises(ValueError, match="theta4"):
        FIT.estimated_sweet_spot(falling)
    assert FIT.estimated_sweet_spot(falling, n_out_max=4096).kind == F.LONGEST
    both = {**BOUNDARY, "theta4": -1e-8}
    assert F.optimum(512, both, 64, 4096).is_boundary
    inside = F.optimum(512, TRUE, 64, 4096)
    assert inside.kind == F.INTERIOR
    assert inside.n_out == pytest.approx(float(F.sweet_spot(512, TRUE["theta1"], TRUE["theta3"], TRUE["theta4"],
                                                             TRUE["theta5"])))
    assert F.optimum(512, TRUE, 64, 100).kind == F.LONGEST  # the minimum lies beyond the range
    with pytest.raises(ValueError, match="n_out_min"):
        F.optimum(512, TRUE, 100, 64)
    flops = {k: v for k, v in TRUE.items() if k != "theta5"}
    assert F.optimum(512, flops, 64, 4096, formula="flops_model").kind == F.INTERIOR
    numeric = F.optimum(512, dict(theta0=1.0, theta1=2.0, theta2=0.0), 64, 4096, formula="baseline4_wilkins")
    assert numeric.kind == F.LONGEST and numeric.n_out == pytest.approx(4096)  # searched on a grid


def test_the_near_optimal_band():
    best = F.optimum(512, TRUE, 64, 4096)
    low, high = F.near_optimal_band(512, TRUE, 0.02, 64, 4096)
    assert low < best.n_out < high
    for n in (low, high):
        assert float(F.memory_flops_model(512, n, **TRUE)) == pytest.approx(1.02 * best.j_per_token, rel=2e-3)
    assert F.near_optimal_band(64, BOUNDARY, 0.02, 64, 4096)[0] == 64


def test_sweet_spot_intervals_cover_the_truth_and_survive_a_boundary():
    table = synthetic(TRUE, noise=0.002, seed=7)
    spots = S.sweet_spot_intervals(table, weighting="relative", n_boot=200, seed=1)
    assert list(spots["n_in"]) == sorted(FIT.GRID)
    for _, r in spots.iterrows():
        truth = F.optimum(r["n_in"], TRUE, 64, 4096).n_out
        assert r["low"] <= r["n_out"] <= r["high"] and r["band_low"] <= r["n_out"] <= r["band_high"]
        assert r["low"] * 0.8 <= truth <= r["high"] * 1.25
    boundary = synthetic(BOUNDARY, noise=0.002, seed=7)
    spots = S.sweet_spot_intervals(boundary, n_boot=100, seed=1)
    assert (spots["kind"] == F.SHORTEST).all() and (spots["n_out"] == 64).all()
    assert (spots["boundary_share"] > 0.9).all()
    batch = synthetic(TRUE6, "memory_flops_batch_model", seed=7)
    spots = S.sweet_spot_intervals(batch, "memory_flops_batch_model", n_in=[64, 512], n_boot=50)
    assert spots["n_out"].between(64, 4096).all()


def test_measured_batch_is_a_step_function_of_the_grid():
    table = synthetic(TRUE)
    batch = S.measured_batch(table)
    assert np.array_equal(batch(table["n_in"].to_numpy(), table["n_out"].to_numpy()), table["batch"].to_numpy())
    assert batch(4096, 4000) == kv_batch(4096, 4096)


def _two_phase_table(prefill_per_in, c0, c1, c2, n_req=1000):
    rows = []
    for n_in in (64, 512):
        for n_out in FIT.GRID:
            prefill = prefill_per_in * n_in
            decode = c0 + c1 * n_out + c2 * n_out**2
            rows.append(dict(n_in=n_in, n_out=n_out, prefill_energy_j=prefill, decode_energy_j=decode,
                             tokens_out=n_req * n_out, j_per_token=(prefill + decode) / (n_req * n_out)))
    return pd.DataFrame(rows)


def test_two_phase_finds_the_minimum_of_prefill_plus_decode():
    table = _two_phase_table(3.0, 10.0, 2.0, 1e-3)
    results = S.two_phase(table)
    for r in results:
        assert r.optimum.kind == F.INTERIOR and r.mape_pct < 1e-6
        assert r.optimum.n_out == pytest.approx(np.sqrt((3.0 * r.n_in + 10.0) / 1e-3), rel=1e-6)
    linear = S.two_phase(_two_phase_table(3.0, 10.0, 2.0, 0.0), degree=1)
    assert all(r.optimum.kind == F.LONGEST for r in linear)
    frame = S.two_phase_frame(results)
    assert list(frame.columns) == ["n_in", "n_out_star", "kind", "j_per_token", "e_prefill_j", "mape_pct"]
    with pytest.raises(ValueError, match="degree"):
        S.two_phase(table, degree=3)
    with pytest.raises(ValueError, match="decode_energy_j"):
        S.two_phase(table.drop(columns="decode_energy_j"))


# --- the committed grids -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured():
    from energybook.report import analysis

    table = analysis.measured_table()
    if table.empty:
        pytest.skip("no committed grid")
    return table


@pytest.fixture(scope="module")
def repeats():
    from energybook.store import catalog

    runs = [r for r in catalog.measured_runs() if r.path.stem.startswith("full-")]
    if not runs:
        pytest.skip("no committed full-run repeats")
    return catalog.measured_table(runs)


def test_the_committed_grids_run_through_every_statistic(measured, repeats):
    noise = S.repeat_noise(repeats)
    assert 0.0005 < noise.pooled_rel_sd < 0.005
    for m in dict.fromkeys(measured["model"]):
        t = measured[measured["model"] == m]
        eq5 = FIT.fit(t, "memory_flops_model")
        batch = FIT.fit(t, "memory_flops_batch_model")
        assert batch.mape_pct < eq5.mape_pct
        for w in ("none", "relative"):
            se = S.standard_errors(t, weighting=w)
            assert (se["hc3"] > 0).all() and np.isfinite(se["hc3_over_classical"]).all()
            coefs = S.coefficient_statistics(t, weighting=w, n_boot=100)
            assert all(0 <= c.sign_share <= 1 for c in coefs.values())
            lof = S.lack_of_fit_from_repeats(t, repeats, weighting=w)
            assert lof.reduced_chi2 > 5 and lof.rejects()  # the formula misfits far beyond the repeat noise
        spots = S.sweet_spot_intervals(t, n_boot=50)
        assert spots["n_out"].between(64, 4096).all() and (spots["low"] <= spots["high"]).all()
        spots = S.sweet_spot_intervals(t, "memory_flops_batch_model", n_boot=20, n_in=[64])
        assert spots["n_out"].between(64, 4096).all()
        assert len(S.two_phase(t)) == t["n_in"].nunique()
    table3 = S.weighting_comparison(measured)
    assert ("memory_flops_model", "plain") in table3.columns and "mean" in table3.index
    assert table3.loc["mean", ("baseline1_const", "plain")] > table3.loc["mean", ("baseline1_const", "relative")]


def test_sweet_spot_comparison_on_the_committed_grids(measured):
    side = S.sweet_spot_comparison(measured, n_boot=50, physical=lambda m: (64, 256))
    assert list(side.index) == list(dict.fromkeys(measured["model"]))
    assert (side["physical_n_out"] == 256).all()
    assert side["fit_n_out"].between(64, 4096).all() and (side["fit_low"] <= side["fit_high"]).all()
    study = side.dropna(subset=["study_printed_n_out"])
    assert np.allclose(study["study_n_out"], study["study_printed_n_out"], rtol=0.01)
    assert S.sweet_spot_comparison(measured, n_boot=20)["physical_n_out"].isna().all()
