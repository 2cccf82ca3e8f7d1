import numpy as np
import pandas as pd
import pytest

from energybook.model import fit as F
from energybook.model import formulas as FM
from energybook.model import paper as D

GRID = F.GRID
TRUE = D.paper_thetas("Llama-3.2-1B")


def synthetic(thetas, noise=0.01, seed=0):
    table = F.predict_grid(thetas)
    rng = np.random.default_rng(seed)
    table["j_per_token"] *= 1 + noise * rng.standard_normal(len(table))
    return table


def test_synthetic_recovery():
    table = synthetic(TRUE, seed=1)
    result = F.fit(table, "memory_flops_model")
    print(f"synthetic recovery: MAPE {result.mape_pct:.3f}%")
    assert result.n_points == 49
    assert result.mape_pct < 1.5
    for name, value in TRUE.items():
        assert result.params[name].covers(value), (name, result.params[name], value)
    assert result.params["theta0"].p_value < 1e-6
    assert "[[Fit Statistics]]" in result.report


def test_confidence_intervals_have_their_coverage():
    """Over many noisy data sets, each 95% interval covers the truth about 95% of the time."""
    trials = 150
    hits = {k: 0 for k in TRUE}
    mapes = []
    for seed in range(trials):
        result = F.fit(synthetic(TRUE, seed=100 + seed), "memory_flops_model")
        mapes.append(result.mape_pct)
        for k, v in TRUE.items():
            hits[k] += result.params[k].covers(v)
    coverage = {k: h / trials for k, h in hits.items()}
    print("coverage of the 95% intervals:", coverage, "max MAPE", max(mapes))
    assert all(0.88 <= c <= 0.995 for c in coverage.values()), coverage
    assert max(mapes) < 1.5


def test_plain_least_squares_intervals_are_too_narrow_under_proportional_noise():
    """The study's unweighted fit: theta1's interval covers the truth far less than 95% of the time."""
    trials = 100
    hits = sum(F.fit(synthetic(TRUE, seed=s), weighting="none").params["theta1"].covers(TRUE["theta1"])
               for s in range(trials))
    assert hits / trials < 0.8


def test_noise_free_fit_is_exact_and_baselines_are_worse():
    table = F.predict_grid(TRUE)
    results = F.fit_all(table)
    assert results["memory_flops_model"].mape_pct < 1e-6
    assert results["baseline1_const"].mape_pct > results["baseline4_wilkins"].mape_pct > 1
    assert results["flops_model"].mape_pct > results["memory_flops_model"].mape_pct


@pytest.mark.parametrize("row", D.paper_table5().to_dict("records"), ids=lambda r: r["llm"])
def test_published_sweet_spots_are_reproduced(row):
    thetas = {f"theta{i}": row[f"theta{i}"] for i in range(6)}
    spot = F.estimated_sweet_spot(thetas)
    assert (spot.n_in, spot.n_out) == (row["estimated_best_n_in"], row["estimated_best_n_out"])


def test_sweet_spot_is_the_minimum():
    n_out = np.arange(16, 4096)
    energy = FM.memory_flops_model(64, n_out, **TRUE)
    assert abs(n_out[np.argmin(energy)] - FM.sweet_spot(64, TRUE["theta1"], TRUE["theta3"], TRUE["theta4"],
                                                         TRUE["theta5"])) < 1


def test_extremes_on_the_grid():
    ext = F.extremes(F.predict_grid(TRUE))
    # The fitted surface's sweet spot (429 tokens) lies between the grid's 256 and 512.
    assert ext.best.n_in == 64 and ext.best.n_out in (256, 512)
    assert (ext.worst.n_in, ext.worst.n_out) == (4096, 64)
    assert ext.ratio > 10


def test_fewer_points_than_parameters_is_refused():
    table = F.predict_grid(TRUE).head(6)
    with pytest.raises(ValueError, match="6 coefficients but the table has only 6 points"):
        F.fit(table, "memory_flops_model")


@pytest.mark.parametrize("table,match", [
    (pd.DataFrame({"n_in": [64], "n_out": [64]}), "lacks column"),
    (pd.DataFrame({"n_in": [0] * 8, "n_out": [64] * 8, "j_per_token": [1.0] * 8}), "must be positive"),
    (pd.DataFrame({"n_in": [64] * 8, "n_out": [64] * 8, "j_per_token": [np.nan] * 8}), "positive and finite"),
])
def test_bad_tables_are_named(table, match):
    with pytest.raises(ValueError, match=match):
        F.fit(table, "baseline1_const")


def test_unknown_formula_and_sweet_spot_without_minimum():
    with pytest.raises(ValueError, match="unknown formula"):
        FM.get("cubic")
    with pytest.raises(ValueError, match="theta4 must be positive"):
        FM.sweet_spot(64, 1.0, 1.0, 0.0)


def test_cross_validation_is_honest():
    table = synthetic(TRUE, seed=5)
    inside = F.fit(table).mape_pct
    for scheme in ("kfold", "row", "column"):
        cv = F.cross_validate(table, scheme=scheme)
        print(scheme, cv.mape_pct, inside)
        assert cv.mape_pct > inside  # held-out error exceeds in-sample error
        assert cv.mape_pct < 5
        assert cv.folds == 7
    # A formula too simple for the data does not get better out of sample.
    assert F.cross_validate(table, "baseline2_inv_out").mape_pct > 30


def test_cross_validation_bad_scheme():
    with pytest.raises(ValueError, match="unknown scheme 'diagonal'"):
        F.cross_validate(F.predict_grid(TRUE), scheme="diagonal")
