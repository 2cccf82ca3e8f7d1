"""Standard errors and the bootstrap over prefix groups for the energy formulas.

HC3 standard errors (:func:`standard_errors`), a bootstrap that resamples whole prefix groups
(:func:`bootstrap`), and per coefficient the classical and robust errors, intervals and sign stability
(:func:`coefficient_statistics`, :func:`statistics_frame`). Import them from
:mod:`energybook.model.stats`.

Used in :doc:`/book/fitting`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from energybook.model import fit as FIT
from energybook.model import formulas as F

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
        One row per coefficient with ``value``, ``classical`` and ``hc3`` (same unit as the coefficient),
        ``hc3_over_classical`` and ``p_classical``: the classical two-sided t-test of the estimate against zero,
        which assumes independent points (shown only to say why it misleads on prefix-grouped grids).
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
    out["p_classical"] = 2 * _scipy_stats.t.sf(np.abs(out["value"] / out["classical"]), n - k)
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
        p_classical: Classical two-sided p-value against zero (independent points assumed; NaN when not computed).
    """

    name: str
    value: float
    se_classical: float
    se_hc3: float
    se_bootstrap: float
    boot_low: float
    boot_high: float
    sign_share: float
    p_classical: float = float("nan")

    @property
    def hc3_over_classical(self) -> float:
        """How much wider HC3 is than the classical error."""
        return self.se_hc3 / self.se_classical

    @property
    def sign_stable(self) -> bool:
        """Whether at least 95% of the draws keep the estimate's sign."""
        return self.sign_share >= 0.95

    @property
    def excludes_zero(self) -> bool:
        """Whether the bootstrap interval lies on one side of zero (the data fix the coefficient's sign)."""
        return self.boot_low > 0 or self.boot_high < 0


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
                                     boot.sign_share(name), float(se.loc[name, "p_classical"]))
    return out


def statistics_frame(coefficients: dict[str, CoefficientStats]) -> pd.DataFrame:
    """:func:`coefficient_statistics` as a table, one row per coefficient, with the derived columns."""
    rows = [dict(c.__dict__, hc3_over_classical=c.hc3_over_classical, sign_stable=c.sign_stable,
                 excludes_zero=c.excludes_zero)
            for c in coefficients.values()]
    return pd.DataFrame(rows).set_index("name")

