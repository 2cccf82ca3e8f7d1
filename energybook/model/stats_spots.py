"""Sweet spots that survive: bootstrap intervals on n_out*, the near-optimal band, the two-phase estimate
and every estimate side by side.

:func:`sweet_spot_intervals`, :func:`two_phase` (:func:`two_phase_frame`), :func:`sweet_spot_comparison`
and the measured batch as a step function (:func:`measured_batch`). Import them from
:mod:`energybook.model.stats`.

Used in :doc:`/book/sweet_spots`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from energybook.model import fit as FIT
from energybook.model import formulas as F
from energybook.model import paper
from energybook.model.stats_errors import (
    Bootstrap,
    bootstrap,
)

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
