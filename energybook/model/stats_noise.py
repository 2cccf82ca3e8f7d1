"""Lack of fit against the repeat noise, and Table 3 by both weightings.

The noise read off repeated runs (:func:`repeat_noise`), the reduced chi-square of a fit against it
(:func:`lack_of_fit`, :func:`lack_of_fit_from_repeats`), and the in-sample MAPE by plain and relative
least squares side by side (:func:`weighting_comparison`). Import them from :mod:`energybook.model.stats`.

Used in :doc:`/book/fitting`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from energybook.model import fit as FIT
from energybook.model import formulas as F
from energybook.model.stats_errors import (
    _lstsq,
    _prepare,
    _weights,
)

# --- Lack of fit against the repeat noise ------------------------------------------------------------


@dataclass
class RepeatNoise:
    """The measurement noise read off repeated runs of the same points.

    Attributes:
        points: One row per repeated point with ``reps``, ``mean`` (joules per output token), ``sd``
            (same unit, n-1 denominator) and ``rel_sd`` (sd over mean).
        pooled_rel_sd: Relative standard deviation pooled over every point (a fraction: 0.002 = 0.2%).
        by_model: The pooled relative standard deviation per model, where the table names models.
    """

    points: pd.DataFrame = field(repr=False)
    pooled_rel_sd: float
    by_model: dict[str, float]

    def for_model(self, model: str | None) -> float:
        """The model's own relative noise when it was repeated, else the pooled one."""
        return self.by_model.get(model, self.pooled_rel_sd) if model is not None else self.pooled_rel_sd


def _pool(points: pd.DataFrame) -> float:
    dof = points["reps"] - 1
    return float(np.sqrt((dof * points["rel_sd"] ** 2).sum() / dof.sum()))


def repeat_noise(repeats: pd.DataFrame, y: str = "j_per_token") -> RepeatNoise:
    """Estimate the relative repeat noise from a table of repeated measurements.

    Args:
        repeats: One row per run (e.g. the full-mode files ``data/measured/*/*/*/full-*.csv``, three
            repeats of a few points each), with ``n_in``, ``n_out``, ``y`` and optionally ``model`` and
            ``gpu``. Rows with equal (gpu, model, n_in, n_out) are repeats of one point.
        y: Energy column (joules per output token).

    Raises:
        ValueError: when no point is measured at least twice.
    """
    keys = [c for c in ("gpu", "model", "n_in", "n_out") if c in repeats.columns]
    g = repeats.groupby(keys)[y]
    points = pd.DataFrame({"reps": g.size(), "mean": g.mean(), "sd": g.std(ddof=1)}).reset_index()
    points = points[points["reps"] >= 2].copy()
    if points.empty:
        raise ValueError("no point is measured twice: the repeat noise needs repeated runs")
    points["rel_sd"] = points["sd"] / points["mean"]
    by_model = ({m: _pool(p) for m, p in points.groupby("model")} if "model" in points.columns else {})
    return RepeatNoise(points, _pool(points), by_model)


@dataclass(frozen=True)
class LackOfFit:
    """A chi-square test of a fit's residuals against the measurement noise.

    Attributes:
        formula: Formula key.
        weighting: Weighting of the fit.
        noise_rel_sd: Relative noise assumed per point (a fraction).
        chi2: Sum of squared residuals in units of the noise, sum(((y - fit) / (noise y))^2).
        dof: Points minus coefficients.
        p_value: Chance of a chi-square this large if the formula were right and the noise as assumed.
        rms_rel_pct: Root mean square of the relative residuals (%).
    """

    formula: str
    weighting: str
    noise_rel_sd: float
    chi2: float
    dof: int
    p_value: float
    rms_rel_pct: float

    @property
    def reduced_chi2(self) -> float:
        """chi2 / dof: about 1 when the residuals are noise, much more when the formula misfits."""
        return self.chi2 / self.dof

    @property
    def rms_over_noise(self) -> float:
        """Residual rms over the repeat noise."""
        return self.rms_rel_pct / 100 / self.noise_rel_sd

    def rejects(self, alpha: float = 0.01) -> bool:
        """Whether the test rejects the formula at level ``alpha``."""
        return self.p_value < alpha


def lack_of_fit(table: pd.DataFrame, noise_rel_sd: float, formula: str = "memory_flops_model",
                weighting: str = "none", y: str = "j_per_token") -> LackOfFit:
    """Test a fit's residuals against a known relative noise.

    Args:
        table: Tidy table of one model.
        noise_rel_sd: Relative noise of one measurement (a fraction: 0.002 = 0.2%), e.g.
            :attr:`RepeatNoise.pooled_rel_sd`.
        formula: Formula key.
        weighting: Weighting of the fit.
        y: Energy column (joules per output token).

    Raises:
        ValueError: for a non-positive noise.
    """
    if not noise_rel_sd > 0:
        raise ValueError(f"the noise must be positive, got {noise_rel_sd}")
    f, x, values = _prepare(table, formula, y)
    beta = _lstsq(x, values, _weights(values, weighting))
    rel = (values - x @ beta) / values
    dof = len(values) - x.shape[1]
    chi2 = float(np.sum((rel / noise_rel_sd) ** 2))
    return LackOfFit(f.key, weighting, float(noise_rel_sd), chi2, dof, float(sps.chi2.sf(chi2, dof)),
                     float(np.sqrt(np.mean(rel**2)) * 100))


def lack_of_fit_from_repeats(table: pd.DataFrame, repeats: pd.DataFrame, formula: str = "memory_flops_model",
                             weighting: str = "none", y: str = "j_per_token") -> LackOfFit:
    """:func:`lack_of_fit` with the noise estimated from repeated runs (:func:`repeat_noise`): the model's
    own repeats when there are any, else the pooled noise of all models'."""
    model = str(table["model"].iloc[0]) if "model" in table.columns and len(table) else None
    return lack_of_fit(table, repeat_noise(repeats, y).for_model(model), formula, weighting, y)


# --- Table 3 by both weightings ----------------------------------------------------------------------


def weighting_comparison(table: pd.DataFrame, formulas=None, y: str = "j_per_token") -> pd.DataFrame:
    """Table 3 in the study's method (plain least squares) beside relative weighting, per model.

    Args:
        table: Tidy table with ``model``.
        formulas: Formula keys; the study's six when None (add ``"memory_flops_batch_model"`` for the
            batch term, which needs a ``batch`` column).
        y: Energy column (joules per output token).

    Returns:
        In-sample MAPE (%), one row per model and a ``mean`` row; columns ``(formula, "plain")`` and
        ``(formula, "relative")``.
    """
    if "model" not in table.columns:
        raise ValueError("the table needs a 'model' column")
    keys = list(F.FORMULAS) if formulas is None else [F.get(k).key for k in formulas]
    rows = {}
    for m in dict.fromkeys(table["model"]):
        t = table[table["model"] == m]
        rows[m] = {(k, name): FIT.fit(t, k, y=y, weighting=w).mape_pct
                   for k in keys for name, w in (("plain", "none"), ("relative", "relative"))}
    out = pd.DataFrame(rows).T
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["formula", "weighting"])
    out.loc["mean"] = out.mean()
    return out

