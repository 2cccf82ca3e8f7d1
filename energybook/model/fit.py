"""Fitting the energy formulas to measurements, and reading sweet spots off the fits.

A measurement table is tidy: one row per grid point with the columns ``n_in``, ``n_out``
(tokens) and ``j_per_token`` (joules per output token). :func:`fit` fits one of the study's
formulas (:mod:`energybook.model.formulas`) by least squares with lmfit and returns a
:class:`FitResult` with each coefficient's estimate, standard error, 95% confidence interval
and p-value, the MAPE and lmfit's report. A formula that needs the batch size
(``memory_flops_batch_model``) reads it from the table's ``batch`` column.
:mod:`energybook.model.stats` adds resampling statistics and sweet spots with intervals.

Used in :doc:`/book/fitting` and :doc:`/book/sweet_spots`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from energybook.model import formulas as F
from energybook.model.complexity import GRID

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Estimate:
    """One fitted coefficient.

    Attributes:
        name: Coefficient name (``theta0`` ..).
        value: Estimate (joules per output token per unit of its basis term).
        stderr: Standard error, same unit.
        ci_low: Lower end of the confidence interval.
        ci_high: Upper end of the confidence interval.
        p_value: Two-sided p-value of the t-test against zero.
    """

    name: str
    value: float
    stderr: float
    ci_low: float
    ci_high: float
    p_value: float

    def covers(self, x: float) -> bool:
        """Whether ``x`` lies inside the confidence interval."""
        return self.ci_low <= x <= self.ci_high


@dataclass
class FitResult:
    """The result of fitting one formula to one measurement table.

    Attributes:
        formula: Key of the fitted formula.
        params: Estimates by name.
        mape_pct: Mean absolute percentage error on the fitted points (%).
        n_points: Points fitted.
        confidence: Level of the confidence intervals (0.95 = 95%).
        report: lmfit's fit report.
        residuals: Measured minus fitted, J per output token, in table order.
        correlations: Correlation matrix of the estimates.
    """

    formula: str
    params: dict[str, Estimate]
    mape_pct: float
    n_points: int
    confidence: float
    report: str
    residuals: np.ndarray = field(repr=False)
    correlations: pd.DataFrame = field(repr=False)
    weighting: str = "relative"

    @property
    def values(self) -> dict[str, float]:
        """Coefficient values by name."""
        return {k: p.value for k, p in self.params.items()}

    def predict(self, n_in, n_out, batch=None):
        """Fitted energy per output token (J) at the given lengths (tokens) and, for a formula that
        needs it, batch size (requests decoded together)."""
        return F.get(self.formula)(n_in, n_out, batch=batch, **self.values)

    def to_frame(self) -> pd.DataFrame:
        """The estimates as a table, one row per coefficient."""
        return pd.DataFrame([p.__dict__ for p in self.params.values()]).set_index("name")


def _columns(table: pd.DataFrame, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = [c for c in ("n_in", "n_out", y) if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; it needs n_in, n_out and {y}")
    n_in = table["n_in"].to_numpy(dtype=float)
    n_out = table["n_out"].to_numpy(dtype=float)
    values = table[y].to_numpy(dtype=float)
    if (n_in <= 0).any() or (n_out <= 0).any():
        raise ValueError("n_in and n_out must be positive (tokens)")
    if not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"{y} must be positive and finite at every point")
    return n_in, n_out, values


def batch_column(table: pd.DataFrame) -> np.ndarray:
    """The ``batch`` column (requests decoded together) as floats, checked positive.

    Raises:
        ValueError: when the table has no ``batch`` column or a non-positive batch.
    """
    if "batch" not in table.columns:
        raise ValueError("the formula needs the batch size: the table lacks a 'batch' column "
                         "(requests decoded together at each point)")
    batch = table["batch"].to_numpy(dtype=float)
    if not np.isfinite(batch).all() or (batch <= 0).any():
        raise ValueError("batch must be positive and finite at every point")
    return batch


def design_matrix(table: pd.DataFrame, formula: str = "memory_flops_model") -> np.ndarray:
    """The formula's basis terms at every point of a table, one column per coefficient.

    Every formula is linear in its coefficients: column j is the formula with theta_j = 1 and the
    others 0, so that the energy per output token is ``design_matrix(...) @ thetas``.

    Args:
        table: Tidy table with ``n_in``, ``n_out`` (tokens), and ``batch`` if the formula needs it.
        formula: Formula key or label.

    Returns:
        An array of shape (points, coefficients), in :attr:`Formula.param_names` order.
    """
    f = F.get(formula)
    missing = [c for c in ("n_in", "n_out") if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}")
    n_in = table["n_in"].to_numpy(dtype=float)
    n_out = table["n_out"].to_numpy(dtype=float)
    batch = batch_column(table) if f.needs_batch else None
    names = f.param_names
    return np.column_stack([np.broadcast_to(f(n_in, n_out, batch=batch, **{p: float(p == q) for p in names}),
                                            n_in.shape) for q in names])


def mape(measured, predicted) -> float:
    """Mean absolute percentage error (%)."""
    measured = np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(np.asarray(predicted, dtype=float) - measured) / np.abs(measured)) * 100)


def fit(table: pd.DataFrame, formula: str = "memory_flops_model", y: str = "j_per_token",
        confidence: float = 0.95, weighting: str = "relative") -> FitResult:
    """Fit an energy formula to a measurement table.

    Every formula is linear in its coefficients, so the fit starts from the linear
    least-squares solution and lmfit's Levenberg-Marquardt refines it and estimates the
    covariance.

    Args:
        table: Tidy table with ``n_in``, ``n_out`` (tokens) and the energy column.
        formula: Formula key or label (see :data:`energybook.model.formulas.FORMULAS`).
        y: Column with the energy per output token (joules).
        confidence: Level of the confidence intervals.
        weighting: ``"relative"`` (the default: residuals divided by the measured value,
            right for noise proportional to the value, as energy noise is, and the least
            squares counterpart of the MAPE) or ``"none"`` (plain least squares, the study's
            method; its confidence intervals are too narrow under proportional noise).

    Raises:
        ValueError: for missing columns, non-positive values, an unknown formula or
            weighting, or fewer points than coefficients.
    """
    f = F.get(formula)
    n_in, n_out, values = _columns(table, y)
    names = f.param_names
    k, n = len(names), len(values)
    if n <= k:
        raise ValueError(f"{f.label} has {k} coefficients but the table has only {n} points; "
                         f"a fit needs more points than coefficients")
    if weighting not in ("none", "relative"):
        raise ValueError(f"unknown weighting {weighting!r}; use 'none' or 'relative'")
    weights = 1 / values if weighting == "relative" else np.ones_like(values)
    independent = dict(n_in=n_in, n_out=n_out)
    if f.needs_batch:
        independent["batch"] = batch_column(table)

    # Linear start: column j is the formula with theta_j = 1 and the others 0.
    basis = design_matrix(table, f.key)
    start, *_ = np.linalg.lstsq(basis * weights[:, None], values * weights, rcond=None)

    model = f.model()
    params = model.make_params(**{p: float(v) for p, v in zip(names, start)})
    result = model.fit(values, params, weights=weights, **independent)

    dof = n - k
    t_crit = stats.t.ppf(0.5 + confidence / 2, dof)
    estimates = {}
    for p in names:
        par = result.params[p]
        se = float(par.stderr) if par.stderr is not None else float("nan")
        t_stat = par.value / se if se > 0 else float("inf")
        estimates[p] = Estimate(p, float(par.value), se, par.value - t_crit * se, par.value + t_crit * se,
                                float(2 * stats.t.sf(abs(t_stat), dof)))
    cov = result.covar if result.covar is not None else np.full((k, k), np.nan)
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = pd.DataFrame(cov / np.outer(sd, sd), index=names, columns=names)
    fitted = result.best_fit
    return FitResult(formula=f.key, params=estimates, mape_pct=mape(values, fitted), n_points=n,
                     confidence=confidence, report=result.fit_report(), residuals=values - fitted,
                     correlations=corr, weighting=weighting)


def fit_all(table: pd.DataFrame, y: str = "j_per_token", weighting: str = "relative",
            extra: bool = False) -> dict[str, FitResult]:
    """Fit every formula to one table; results keyed by formula.

    Args:
        table: Tidy table of one model.
        y: Energy column (joules per output token).
        weighting: As in :func:`fit`.
        extra: Also fit :data:`energybook.model.formulas.EXTRA_FORMULAS` (the batch term needs a
            ``batch`` column); by default only the study's six.
    """
    keys = list(F.FORMULAS) + (list(F.EXTRA_FORMULAS) if extra else [])
    return {key: fit(table, key, y=y, weighting=weighting) for key in keys}


@dataclass(frozen=True)
class GridPoint:
    """One (n_in, n_out) point with its efficiency.

    Attributes:
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        tokens_per_j: Output tokens per joule.
    """

    n_in: int
    n_out: int
    tokens_per_j: float

    @property
    def j_per_token(self) -> float:
        """Joules per output token."""
        return 1 / self.tokens_per_j


@dataclass(frozen=True)
class Extremes:
    """Best and worst grid points of one model.

    Attributes:
        best: Most output tokens per joule.
        worst: Fewest output tokens per joule.
    """

    best: GridPoint
    worst: GridPoint

    @property
    def ratio(self) -> float:
        """Best over worst efficiency (the study averages 33.41x)."""
        return self.best.tokens_per_j / self.worst.tokens_per_j


def predict_grid(thetas: dict[str, float], formula: str = "memory_flops_model",
                 n_in=GRID, n_out=GRID, batch=None) -> pd.DataFrame:
    """A tidy table of a formula's predictions over a grid (``j_per_token``, ``tokens_per_j``).

    Args:
        thetas: Coefficients of the formula.
        formula: Formula key or label.
        n_in: Prompt lengths (tokens).
        n_out: Output lengths (tokens).
        batch: For a formula that needs it (``memory_flops_batch_model``): a batch size for every
            point, or a callable ``batch(n_in, n_out)`` (arrays of tokens in, requests decoded together
            out), e.g. the engine's KV-memory rule. The table then has a ``batch`` column.

    Raises:
        ValueError: when the formula needs a batch and none is given.
    """
    f = F.get(formula)
    ii, oo = np.meshgrid(np.asarray(n_in), np.asarray(n_out), indexing="ij")
    ii, oo = ii.ravel(), oo.ravel()
    if f.needs_batch and batch is None:
        raise ValueError(f"{f.label} needs the batch size at every point: pass batch= (a number or a callable "
                         "batch(n_in, n_out))")
    b = None if not f.needs_batch else np.broadcast_to(
        np.asarray(batch(ii, oo) if callable(batch) else batch, dtype=float), ii.shape)
    e = np.broadcast_to(f(ii, oo, batch=b, **thetas), ii.shape).astype(float)
    out = pd.DataFrame({"n_in": ii, "n_out": oo, "j_per_token": e, "tokens_per_j": 1 / e})
    if b is not None:
        out.insert(2, "batch", b)
    return out


def extremes(table: pd.DataFrame, y: str = "j_per_token") -> Extremes:
    """The best and worst points of a tidy table (lowest and highest energy per token)."""
    n_in, n_out, values = _columns(table, y)
    i, j = int(np.argmin(values)), int(np.argmax(values))
    return Extremes(GridPoint(int(n_in[i]), int(n_out[i]), float(1 / values[i])),
                    GridPoint(int(n_in[j]), int(n_out[j]), float(1 / values[j])))


@dataclass(frozen=True)
class SweetSpot:
    """The estimated best operating point of a Memory+FLOPs fit.

    Attributes:
        n_in: Input length at which the energy per token is lowest (tokens).
        n_out: Sweet-spot output length at that input, rounded (tokens).
        n_out_exact: The real-valued sweet spot (tokens).
        j_per_token: Predicted energy per output token there (joules).
    """

    n_in: int
    n_out: int
    n_out_exact: float
    j_per_token: float
    kind: str = F.INTERIOR


def estimated_sweet_spot(thetas: dict[str, float], n_in=GRID, n_out_min: float | None = None,
                         n_out_max: float | None = None) -> SweetSpot:
    """The study's estimated best point: the sweet spot n_out*(n_in) of each input, and the
    input whose sweet spot costs the least energy per token.

    A boundary optimum is a result, not a crash: where theta1 n_in^2 + theta3 n_in + theta5 <= 0 the
    energy per token only rises with n_out and the sweet spot is the shortest output allowed
    (:func:`energybook.model.formulas.optimum`; ``kind`` says so).

    Args:
        thetas: Memory+FLOPs coefficients (``theta0`` .. ``theta5``).
        n_in: Prompt lengths searched (tokens).
        n_out_min: Shortest output allowed (tokens); None: 1 token, the study's unconstrained formula.
        n_out_max: Longest output allowed (tokens); None: unbounded in practice (1e9 tokens).

    Raises:
        ValueError: when ``n_out_max`` is None and the energy per token falls without end (theta4 <= 0).
    """
    lo = 1.0 if n_out_min is None else float(n_out_min)
    hi = 1e9 if n_out_max is None else float(n_out_max)
    spots = [F.optimum(float(i), thetas, lo, hi) for i in n_in]
    best = int(np.argmin([s.j_per_token for s in spots]))
    s = spots[best]
    if n_out_max is None and s.kind == F.LONGEST:
        raise ValueError(f"theta4 = {thetas['theta4']:.3g} <= 0: the energy per token falls without end as n_out "
                         "grows, so there is no sweet spot; pass n_out_max for the best output within a range")
    return SweetSpot(int(n_in[best]), int(round(s.n_out)), s.n_out, s.j_per_token, s.kind)


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-sample error of one formula on one table.

    Attributes:
        formula: Key of the formula.
        scheme: ``"kfold"`` (random folds of points), ``"row"`` (leave one n_in out) or
            ``"column"`` (leave one n_out out).
        mape_pct: MAPE of the held-out predictions over all points (%).
        folds: Number of fits made.
        predictions: The table with a ``predicted`` column (held-out predictions).
    """

    formula: str
    scheme: str
    mape_pct: float
    folds: int
    predictions: pd.DataFrame = field(repr=False)


def cross_validate(table: pd.DataFrame, formula: str = "memory_flops_model", scheme: str = "kfold",
                   k: int = 7, seed: int = 0, y: str = "j_per_token", weighting: str = "relative") -> CrossValidation:
    """Fit on part of the grid, predict the rest, and report the held-out MAPE.

    The study's MAPE is in-sample: the same 49 points are fitted and scored. Here each point is
    predicted by a fit that did not see it.

    Args:
        table: Tidy table with ``n_in``, ``n_out`` and the energy column.
        formula: Formula key.
        scheme: ``"kfold"`` (k random folds of points), ``"row"`` (leave one n_in out at a time,
            i.e. extrapolate or interpolate in the input length) or ``"column"`` (leave one
            n_out out).
        k: Folds for ``"kfold"``.
        seed: Seed of the fold assignment.
        y: Energy column (joules per output token).
        weighting: As in :func:`fit`.

    Raises:
        ValueError: for an unknown scheme, or when a training set has too few points.
    """
    _columns(table, y)
    table = table.reset_index(drop=True)
    if scheme == "kfold":
        if not 2 <= k <= len(table):
            raise ValueError(f"k must be between 2 and the number of points ({len(table)}), got {k}")
        groups = np.random.default_rng(seed).permutation(len(table)) % k
    elif scheme == "row":
        groups = table["n_in"].to_numpy()
    elif scheme == "column":
        groups = table["n_out"].to_numpy()
    else:
        raise ValueError(f"unknown scheme {scheme!r}; use 'kfold', 'row' or 'column'")
    predicted = np.empty(len(table))
    labels = np.unique(groups)
    for g in labels:
        held = groups == g
        result = fit(table[~held], formula, y=y, weighting=weighting)
        batch = batch_column(table[held]) if F.get(formula).needs_batch else None
        predicted[held] = result.predict(table.loc[held, "n_in"].to_numpy(), table.loc[held, "n_out"].to_numpy(),
                                         batch)
    out = table.assign(predicted=predicted)
    return CrossValidation(F.get(formula).key, scheme, mape(table[y], predicted), len(labels), out)
