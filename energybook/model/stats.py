"""Statistics that mean what they say, and sweet spots that survive, for the energy formulas.

The classical standard errors of :func:`energybook.model.fit.fit` assume independent noise of one size
(or one relative size) at every point. Our grids break both: the points of one *prefix group* (one
model, input length and batch, all produced by one generation in prefix mode) share their noise, and
the misfit of the formula, not the meter, dominates the residuals. This module adds, beside the
classical errors:

- HC3 standard errors (heteroscedasticity-consistent, MacKinnon and White 1985), :func:`standard_errors`;
- a bootstrap that resamples whole prefix groups, with percentile intervals and, per coefficient,
  the share of draws whose sign agrees with the estimate, :func:`bootstrap`, :func:`coefficient_statistics`;
- a lack-of-fit test against the repeat noise (reduced chi-square), :func:`repeat_noise`, :func:`lack_of_fit`;
- Table 3 by both weightings side by side, :func:`weighting_comparison`.

And for the sweet spot: a bootstrap interval on n_out*, the band of n_out within 2% of the best
(:func:`sweet_spot_intervals`), a two-phase estimate from the measured prefill and decode energies
(:func:`two_phase`), and every estimate of one model side by side (:func:`sweet_spot_comparison`).

Every function takes tidy tables (one row per point, ``n_in``, ``n_out`` in tokens, ``j_per_token`` in
joules per output token), never files: the repeat runs are read by the store and passed in.

Used in :doc:`/book/fitting` and :doc:`/book/sweet_spots`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from energybook.model import fit as FIT
from energybook.model import formulas as F
from energybook.model import paper

logger = logging.getLogger(__name__)

#: Columns that define a prefix group (the points that one generation produces in prefix mode).
PREFIX_GROUP = ("model", "n_in", "batch")


def _weights(values: np.ndarray, weighting: str) -> np.ndarray:
    if weighting not in ("none", "relative"):
        raise ValueError(f"unknown weighting {weighting!r}; use 'none' or 'relative'")
    return 1 / values if weighting == "relative" else np.ones_like(values)


def _prepare(table: pd.DataFrame, formula: str, y: str) -> tuple[F.Formula, np.ndarray, np.ndarray]:
    f = F.get(formula)
    FIT._columns(table, y)
    x = FIT.design_matrix(table, f.key)
    values = table[y].to_numpy(dtype=float)
    if len(values) <= x.shape[1]:
        raise ValueError(f"{f.label} has {x.shape[1]} coefficients but the table has only {len(values)} points")
    return f, x, values


def _lstsq(x: np.ndarray, values: np.ndarray, w: np.ndarray) -> np.ndarray:
    beta, *_ = np.linalg.lstsq(x * w[:, None], values * w, rcond=None)
    return beta


def prefix_groups(table: pd.DataFrame, columns=PREFIX_GROUP) -> np.ndarray:
    """A group label per row: rows with equal ``columns`` (those present) share one label.

    Args:
        table: Tidy table.
        columns: Columns defining a group; the default is a prefix group, (model, n_in, batch). Columns
            the table lacks are skipped (a table without ``batch`` groups by input length).

    Returns:
        Integer labels, one per row, in table order.
    """
    present = [c for c in columns if c in table.columns]
    if not present:
        return np.arange(len(table))
    return table.groupby(present, sort=False, dropna=False).ngroup().to_numpy()


# --- Standard errors ---------------------------------------------------------------------------------


def standard_errors(table: pd.DataFrame, formula: str = "memory_flops_model", weighting: str = "none",
                    y: str = "j_per_token") -> pd.DataFrame:
    """Classical and HC3 standard errors of every coefficient, side by side.

    HC3 estimates each point's own noise from its residual inflated by its leverage h_i,
    e_i^2 / (1 - h_i)^2, so a few badly fitted or influential points widen the errors as they should.
    Under relative weighting both are computed on the weighted problem.

    Args:
        table: Tidy table of one model.
        formula: Formula key.
        weighting: ``"none"`` (plain least squares, the study's method) or ``"relative"``.
        y: Energy column (joules per output token).

    Returns:
        One row per coefficient with ``value``, ``classical`` and ``hc3`` (same unit as the coefficient)
        and ``hc3_over_classical``.
    """
    f, x, values = _prepare(table, formula, y)
    w = _weights(values, weighting)
    xw, yw = x * w[:, None], values * w
    beta = _lstsq(x, values, w)
    resid = yw - xw @ beta
    n, k = xw.shape
    bread = np.linalg.pinv(xw.T @ xw)
    classical = np.sqrt(np.diag(bread) * (resid @ resid) / (n - k))
    h = np.einsum("ij,jk,ik->i", xw, bread, xw)
    scale = resid**2 / np.clip(1 - h, 1e-12, None) ** 2
    hc3 = np.sqrt(np.diag(bread @ (xw.T * scale) @ xw @ bread))
    out = pd.DataFrame({"value": beta, "classical": classical, "hc3": hc3}, index=pd.Index(f.param_names, name="name"))
    out["hc3_over_classical"] = out["hc3"] / out["classical"]
    return out


# --- Bootstrap over prefix groups --------------------------------------------------------------------


@dataclass
class Bootstrap:
    """Coefficients refitted on resampled prefix groups.

    Attributes:
        formula: Formula key.
        weighting: ``"none"`` or ``"relative"``.
        estimate: The fit to the whole table, by coefficient.
        draws: One row per bootstrap draw, one column per coefficient.
        n_groups: Prefix groups in the table (each draw takes as many, with replacement).
        confidence: Level of the percentile intervals (0.95 = 95%).
        seed: Seed of the draws.
    """

    formula: str
    weighting: str
    estimate: dict[str, float]
    draws: pd.DataFrame = field(repr=False)
    n_groups: int
    confidence: float
    seed: int

    @property
    def n_boot(self) -> int:
        """Draws that gave a fit (a draw whose groups cannot fix every coefficient is dropped)."""
        return len(self.draws)

    def interval(self, name: str) -> tuple[float, float]:
        """Percentile interval of one coefficient (its unit)."""
        a = (1 - self.confidence) / 2
        col = self.draws[name].to_numpy()
        return float(np.quantile(col, a)), float(np.quantile(col, 1 - a))

    def sign_share(self, name: str) -> float:
        """Share of draws whose sign agrees with the full-table estimate (1.0: always; 0.5: a coin)."""
        return float(np.mean(np.sign(self.draws[name].to_numpy()) == np.sign(self.estimate[name])))


def bootstrap(table: pd.DataFrame, formula: str = "memory_flops_model", weighting: str = "none",
              n_boot: int = 1000, seed: int = 0, confidence: float = 0.95, y: str = "j_per_token",
              groups=PREFIX_GROUP) -> Bootstrap:
    """Refit a formula on tables made of prefix groups drawn with replacement.

    Resampling whole groups keeps the noise the points of one generation share, which resampling
    points would pretend is independent.

    Args:
        table: Tidy table of one model (``n_in``, ``n_out``, ``batch`` and the energy column).
        formula: Formula key.
        weighting: ``"none"`` or ``"relative"``.
        n_boot: Draws.
        seed: Seed of the draws.
        confidence: Level of the percentile intervals.
        y: Energy column (joules per output token).
        groups: Columns defining a group (see :func:`prefix_groups`).

    Raises:
        ValueError: for fewer than two groups.
    """
    f, x, values = _prepare(table, formula, y)
    w = _weights(values, weighting)
    labels = prefix_groups(table, groups)
    uniq = np.unique(labels)
    if len(uniq) < 2:
        raise ValueError("a group bootstrap needs at least two prefix groups")
    members = [np.flatnonzero(labels == g) for g in uniq]
    k = x.shape[1]
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        xb = x[idx] * w[idx, None]
        if np.linalg.matrix_rank(xb) < k:
            continue
        beta, *_ = np.linalg.lstsq(xb, values[idx] * w[idx], rcond=None)
        rows.append(beta)
    if len(rows) < n_boot:
        logger.info("%s: %d of %d bootstrap draws could not fix every coefficient and were dropped",
                    f.key, n_boot - len(rows), n_boot)
    estimate = dict(zip(f.param_names, map(float, _lstsq(x, values, w))))
    return Bootstrap(f.key, weighting, estimate, pd.DataFrame(rows, columns=f.param_names), len(uniq), confidence,
                     seed)


@dataclass(frozen=True)
class CoefficientStats:
    """One coefficient, with every kind of uncertainty.

    Attributes:
        name: Coefficient name (``theta0`` ..).
        value: Estimate (joules per output token per unit of its basis term).
        se_classical: Classical standard error, same unit.
        se_hc3: HC3 standard error, same unit.
        se_bootstrap: Standard deviation over the prefix-group bootstrap, same unit.
        boot_low: Lower end of the bootstrap percentile interval.
        boot_high: Upper end of the bootstrap percentile interval.
        sign_share: Share of bootstrap draws with the estimate's sign.
    """

    name: str
    value: float
    se_classical: float
    se_hc3: float
    se_bootstrap: float
    boot_low: float
    boot_high: float
    sign_share: float

    @property
    def hc3_over_classical(self) -> float:
        """How much wider HC3 is than the classical error."""
        return self.se_hc3 / self.se_classical

    @property
    def sign_stable(self) -> bool:
        """Whether at least 95% of the draws keep the estimate's sign."""
        return self.sign_share >= 0.95


def coefficient_statistics(table: pd.DataFrame, formula: str = "memory_flops_model", weighting: str = "none",
                           n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                           y: str = "j_per_token") -> dict[str, CoefficientStats]:
    """Classical, HC3 and group-bootstrap uncertainty of every coefficient, and its sign stability.

    Args:
        table: Tidy table of one model.
        formula: Formula key.
        weighting: ``"none"`` or ``"relative"``.
        n_boot: Bootstrap draws.
        seed: Seed of the draws.
        confidence: Level of the bootstrap intervals.
        y: Energy column (joules per output token).

    Returns:
        :class:`CoefficientStats` by coefficient name; ``statistics_frame`` makes a table of them.
    """
    se = standard_errors(table, formula, weighting, y)
    boot = bootstrap(table, formula, weighting, n_boot, seed, confidence, y)
    out = {}
    for name in se.index:
        low, high = boot.interval(name)
        out[name] = CoefficientStats(name, float(se.loc[name, "value"]), float(se.loc[name, "classical"]),
                                     float(se.loc[name, "hc3"]), float(boot.draws[name].std(ddof=1)), low, high,
                                     boot.sign_share(name))
    return out


def statistics_frame(coefficients: dict[str, CoefficientStats]) -> pd.DataFrame:
    """:func:`coefficient_statistics` as a table, one row per coefficient, with the derived columns."""
    rows = [dict(c.__dict__, hc3_over_classical=c.hc3_over_classical, sign_stable=c.sign_stable)
            for c in coefficients.values()]
    return pd.DataFrame(rows).set_index("name")


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
        repeats: One row per run (e.g. the full-mode files ``data/measured/*/*/full-*.csv``, three
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


# --- Sweet spots -------------------------------------------------------------------------------------


def measured_batch(table: pd.DataFrame) -> Callable:
    """The measured batch as a step function of (n_in, n_out), for a formula with the batch term.

    Off the grid it takes the batch of the nearest measured point in (log n_in, log n_out), and on a tie
    the longer request's (the smaller batch). The engine's real rule belongs to the physical model.

    Args:
        table: Tidy table of one model with ``n_in``, ``n_out`` (tokens) and ``batch``.

    Returns:
        ``batch(n_in, n_out)``: requests decoded together, arrays broadcast.
    """
    li = np.log(table["n_in"].to_numpy(dtype=float))
    lo = np.log(table["n_out"].to_numpy(dtype=float))
    b = FIT.batch_column(table)
    order = np.argsort(b, kind="stable")  # smaller batch first wins ties in argmin
    li, lo, b = li[order], lo[order], b[order]

    def batch(n_in, n_out):
        qi, qo = np.broadcast_arrays(np.log(np.asarray(n_in, dtype=float)), np.log(np.asarray(n_out, dtype=float)))
        d = (qi[..., None] - li) ** 2 + (qo[..., None] - lo) ** 2
        return b[np.argmin(d, axis=-1)]

    return batch


@dataclass(frozen=True)
class SweetSpotInterval:
    """The best output length at one input, with a bootstrap interval and the near-optimal band.

    Attributes:
        n_in: Prompt length (tokens).
        n_out: Best output length of the fit to the whole table (tokens, real-valued).
        kind: ``"interior"``, ``"boundary: shortest n_out"`` or ``"boundary: longest n_out"``.
        j_per_token: Fitted energy per output token there (joules).
        low: Lower end of the bootstrap percentile interval of n_out (tokens).
        high: Upper end (tokens).
        boundary_share: Share of bootstrap draws whose best lies on a boundary.
        band_low: Shortest output within ``tolerance`` of the best energy per token (tokens).
        band_high: Longest output within it (tokens).
        tolerance: The band's allowed excess energy (0.02 = 2%).
    """

    n_in: int
    n_out: float
    kind: str
    j_per_token: float
    low: float
    high: float
    boundary_share: float
    band_low: float
    band_high: float
    tolerance: float


def sweet_spot_intervals(table: pd.DataFrame, formula: str = "memory_flops_model", weighting: str = "none",
                         n_in=None, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                         tolerance: float = 0.02, n_out_min: float | None = None, n_out_max: float | None = None,
                         batch=None, y: str = "j_per_token", boot: Bootstrap | None = None) -> pd.DataFrame:
    """The sweet spot n_out*(n_in) of a fit, with a prefix-group bootstrap interval and the 2% band.

    A boundary optimum is a result: where the energy per token only rises with n_out the best is the
    shortest output (``kind`` says so), and a draw at a boundary counts at that boundary.

    Args:
        table: Tidy table of one model.
        formula: Formula key (``memory_flops_batch_model`` needs ``batch``; by default the measured
            batch of :func:`measured_batch`).
        weighting: ``"none"`` or ``"relative"``.
        n_in: Input lengths (tokens); the table's when None.
        n_boot: Bootstrap draws.
        seed: Seed of the draws.
        confidence: Level of the interval.
        tolerance: Excess energy of the near-optimal band (0.02 = 2%).
        n_out_min: Shortest output allowed (tokens); the table's shortest when None.
        n_out_max: Longest output allowed (tokens); the table's longest when None.
        batch: Batch size or callable ``batch(n_in, n_out)`` for the batch formula.
        y: Energy column (joules per output token).
        boot: A bootstrap already drawn for this table and formula (skips drawing one).

    Returns:
        One row per input: the fields of :class:`SweetSpotInterval`.
    """
    f = F.get(formula)
    if f.needs_batch and batch is None:
        batch = measured_batch(table)
    lo = float(table["n_out"].min()) if n_out_min is None else float(n_out_min)
    hi = float(table["n_out"].max()) if n_out_max is None else float(n_out_max)
    n_in = sorted(table["n_in"].unique()) if n_in is None else list(n_in)
    boot = bootstrap(table, f.key, weighting, n_boot, seed, confidence, y) if boot is None else boot
    a = (1 - confidence) / 2
    draws = boot.draws.to_dict("records")
    rows = []
    for i in n_in:
        best = F.optimum(float(i), boot.estimate, lo, hi, f.key, batch)
        band = F.near_optimal_band(float(i), boot.estimate, tolerance, lo, hi, f.key, batch)
        spots = [F.optimum(float(i), d, lo, hi, f.key, batch, points=257) for d in draws]
        stars = np.array([s.n_out for s in spots])
        rows.append(SweetSpotInterval(int(i), best.n_out, best.kind, best.j_per_token, float(np.quantile(stars, a)),
                                      float(np.quantile(stars, 1 - a)), float(np.mean([s.is_boundary for s in spots])),
                                      band[0], band[1], tolerance).__dict__)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TwoPhase:
    """The sweet spot of one input from the measured prefill and decode energies.

    The energy per output token is (E_prefill + E_decode(n_out)) / (n_req n_out), with E_prefill the
    prefill energy of the requests (the median over the row: in prefix mode one prefill serves every
    n_out) and E_decode a polynomial in n_out fitted to the row.

    Attributes:
        n_in: Prompt length (tokens).
        e_prefill_j: Prefill energy of the ``n_req`` requests (joules).
        decode_coefficients: E_decode = c0 + c1 n_out (+ c2 n_out^2), joules, lowest order first.
        n_req: Requests per point.
        optimum: The best output length within the measured range.
        mape_pct: MAPE of the two-phase energy per token on the row (%).
    """

    n_in: int
    e_prefill_j: float
    decode_coefficients: tuple[float, ...]
    n_req: float
    optimum: F.Optimum
    mape_pct: float

    def j_per_token(self, n_out):
        """Two-phase energy per output token (joules) at output length(s) ``n_out`` (tokens)."""
        n_out = np.asarray(n_out, dtype=float)
        decode = np.polynomial.polynomial.polyval(n_out, self.decode_coefficients)
        return (self.e_prefill_j + decode) / (self.n_req * n_out)


def two_phase(table: pd.DataFrame, degree: int = 2) -> list[TwoPhase]:
    """Two-phase sweet spots, one per input length, from the ``prefill_energy_j`` and ``decode_energy_j``
    columns.

    With E_decode = c0 + c1 n + c2 n^2, the energy per token is (E_prefill + c0)/(N n) + c1/N + c2 n/N,
    Eq. 5's shape in n_out, so :func:`energybook.model.formulas.optimum` finds its best: an interior
    minimum sqrt((E_prefill + c0)/c2) when both are positive, else a boundary (with ``degree=1`` the
    energy per token only falls: the longest output).

    Args:
        table: Tidy table of one model with ``n_in``, ``n_out`` (tokens), ``prefill_energy_j``,
            ``decode_energy_j`` (joules, totals over the requests), ``j_per_token`` and
            ``tokens_out`` or ``n_req``.
        degree: Degree of E_decode in n_out, 1 or 2.

    Raises:
        ValueError: for missing columns, a degree other than 1 or 2, or a row of fewer than degree + 1
            output lengths.
    """
    need = ["n_in", "n_out", "prefill_energy_j", "decode_energy_j"]
    missing = [c for c in need if c not in table.columns]
    if missing or not ({"tokens_out", "n_req"} & set(table.columns)):
        raise ValueError(f"the table lacks column(s) {missing or ['tokens_out or n_req']}")
    if degree not in (1, 2):
        raise ValueError(f"degree must be 1 or 2, got {degree}")
    out = []
    lo, hi = float(table["n_out"].min()), float(table["n_out"].max())
    for i, row in table.groupby("n_in"):
        if len(row) <= degree:
            raise ValueError(f"n_in = {i}: {len(row)} output lengths cannot fix a degree-{degree} decode energy")
        n_out = row["n_out"].to_numpy(dtype=float)
        n_req = float(np.median(row["tokens_out"] / row["n_out"]) if "tokens_out" in row else row["n_req"].median())
        prefill = float(row["prefill_energy_j"].median())
        c = np.polynomial.polynomial.polyfit(n_out, row["decode_energy_j"].to_numpy(dtype=float), degree)
        c = tuple(float(v) for v in c) + (0.0,) * (2 - degree)
        thetas = dict(theta0=c[1] / n_req, theta1=0.0, theta2=0.0, theta3=0.0, theta4=c[2] / n_req,
                      theta5=(prefill + c[0]) / n_req)
        best = F.optimum(float(i), thetas, lo, hi)
        fitted = (prefill + np.polynomial.polynomial.polyval(n_out, c)) / (n_req * n_out)
        measured = (row["prefill_energy_j"] + row["decode_energy_j"]).to_numpy(dtype=float) / (n_req * n_out)
        out.append(TwoPhase(int(i), prefill, c[: degree + 1], n_req, best, FIT.mape(measured, fitted)))
    return out


def two_phase_frame(results: list[TwoPhase]) -> pd.DataFrame:
    """:func:`two_phase` as a table: ``n_in``, ``n_out_star``, ``kind``, ``j_per_token``, ``e_prefill_j``,
    ``mape_pct``."""
    return pd.DataFrame([dict(n_in=r.n_in, n_out_star=r.optimum.n_out, kind=r.optimum.kind,
                              j_per_token=r.optimum.j_per_token, e_prefill_j=r.e_prefill_j, mape_pct=r.mape_pct)
                         for r in results])


def _best_point(spots: list[F.Optimum]) -> F.Optimum:
    return spots[int(np.argmin([s.j_per_token for s in spots]))]


def sweet_spot_comparison(table: pd.DataFrame, weighting: str = "none", formula: str = "memory_flops_model",
                          physical: Callable[[str], tuple[float, float]] | None = None, n_boot: int = 500,
                          seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """Every estimate of each model's best operating point, side by side.

    The study's estimate (its Table 5 thetas, :func:`energybook.model.paper.paper_thetas`, and the values
    it prints), our fit's with a bootstrap interval on n_out* at its best input, the two-phase estimate,
    the physical model's (from ``physical``) and the measured best grid point. Every estimate is searched
    over the measured inputs and output range, so a boundary shows as such.

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out``, ``j_per_token`` (and ``batch``,
            ``prefill_energy_j``, ``decode_energy_j`` for the group bootstrap and the two-phase estimate).
        weighting: Weighting of our fit.
        formula: Our formula (``memory_flops_model`` or ``memory_flops_batch_model``).
        physical: ``physical(model) -> (n_in, n_out)``, the physical model's best point (tokens), or None
            (the columns stay NaN).
        n_boot: Bootstrap draws.
        seed: Seed of the draws.
        confidence: Level of the interval.

    Returns:
        One row per model; the columns ``study_n_in``, ``study_n_out``, ``study_kind``, ``study_printed_n_in``,
        ``study_printed_n_out``, ``fit_n_in``, ``fit_n_out``, ``fit_kind``, ``fit_low``, ``fit_high``,
        ``two_phase_n_in``, ``two_phase_n_out``, ``physical_n_in``, ``physical_n_out``, ``measured_n_in``,
        ``measured_n_out`` (tokens).
    """
    published = paper.paper_table5().set_index("model")
    rows = []
    for m in dict.fromkeys(table["model"]):
        t = table[table["model"] == m]
        inputs = sorted(t["n_in"].unique())
        lo, hi = float(t["n_out"].min()), float(t["n_out"].max())
        row = dict(model=m)
        if m in published.index:
            best = _best_point([F.optimum(float(i), paper.paper_thetas(m), lo, hi) for i in inputs])
            row.update(study_n_in=best.n_in, study_n_out=best.n_out, study_kind=best.kind,
                       study_printed_n_in=float(published.loc[m, "estimated_best_n_in"]),
                       study_printed_n_out=float(published.loc[m, "estimated_best_n_out"]))
        spots = sweet_spot_intervals(t, formula, weighting, n_boot=n_boot, seed=seed, confidence=confidence)
        best = spots.loc[spots["j_per_token"].idxmin()]
        row.update(fit_n_in=best["n_in"], fit_n_out=best["n_out"], fit_kind=best["kind"], fit_low=best["low"],
                   fit_high=best["high"])
        if {"prefill_energy_j", "decode_energy_j"} <= set(t.columns):
            tp = _best_point([r.optimum for r in two_phase(t)])
            row.update(two_phase_n_in=tp.n_in, two_phase_n_out=tp.n_out)
        if physical is not None:
            p_in, p_out = physical(m)
            row.update(physical_n_in=float(p_in), physical_n_out=float(p_out))
        ext = FIT.extremes(t).best
        row.update(measured_n_in=ext.n_in, measured_n_out=ext.n_out)
        rows.append(row)
    cols = ["study_n_in", "study_n_out", "study_kind", "study_printed_n_in", "study_printed_n_out", "fit_n_in",
            "fit_n_out", "fit_kind", "fit_low", "fit_high", "two_phase_n_in", "two_phase_n_out", "physical_n_in",
            "physical_n_out", "measured_n_in", "measured_n_out"]
    return pd.DataFrame(rows).set_index("model").reindex(columns=cols)
