"""The study's tables and summaries, computed from any set of measured grids.

Every function takes a tidy table with one row per (model, n_in, n_out) point and a
``j_per_token`` column (joules per output token), so the same code rebuilds the tables for
three models or thirteen.

Used in :doc:`/book/fitting`, :doc:`/book/sweet_spots` and :doc:`/book/comparison`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from energybook.model import architecture as A
from energybook.model import fit as F
from energybook.model import formulas as FM
from energybook.model.complexity import GRID
from energybook.store import catalog

logger = logging.getLogger(__name__)


def _models(table: pd.DataFrame) -> list[str]:
    if "model" not in table.columns:
        raise ValueError("the table needs a 'model' column")
    return list(dict.fromkeys(table["model"]))


def fits(table: pd.DataFrame, weighting: str = "relative") -> dict[str, dict[str, F.FitResult]]:
    """All six formulas fitted to every model: ``{model: {formula: FitResult}}``."""
    return {m: F.fit_all(table[table["model"] == m], weighting=weighting) for m in _models(table)}


def mape_table(fitted: dict[str, dict[str, F.FitResult]]) -> pd.DataFrame:
    """Our Table 3: in-sample MAPE (%) per model (rows) and formula (columns), with a mean row."""
    out = pd.DataFrame({m: {k: r.mape_pct for k, r in res.items()} for m, res in fitted.items()}).T
    out = out[list(FM.FORMULAS)]
    out.loc["mean"] = out.mean()
    return out


def significance_table(fitted: dict[str, dict[str, F.FitResult]], formula: str = "memory_flops_model",
                       alpha: float = 0.05) -> pd.DataFrame:
    """Our Table 4: the p-value of every coefficient of one formula per model, and how many
    models find it significant at level ``alpha``."""
    out = pd.DataFrame({m: {k: p.p_value for k, p in res[formula].params.items()} for m, res in fitted.items()}).T
    out.loc[f"significant (p < {alpha})"] = (out < alpha).sum()
    return out


def theta_table(table: pd.DataFrame, fitted: dict[str, dict[str, F.FitResult]]) -> pd.DataFrame:
    """Our Table 5: Memory+FLOPs thetas, measured best grid point and estimated sweet spot."""
    rows = []
    for m, res in fitted.items():
        thetas = res["memory_flops_model"].values
        best = F.extremes(table[table["model"] == m]).best
        row = dict(model=m, **thetas, measured_best_n_in=best.n_in, measured_best_n_out=best.n_out)
        try:
            spot = F.estimated_sweet_spot(thetas)
            row.update(estimated_best_n_in=spot.n_in, estimated_best_n_out=spot.n_out)
        except ValueError as exc:  # theta4 <= 0: no minimum in n_out
            logger.warning("%s: %s", m, exc)
            row.update(estimated_best_n_in=np.nan, estimated_best_n_out=np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def extremes_table(table: pd.DataFrame) -> pd.DataFrame:
    """Best and worst grid point per model with their efficiency and the best/worst ratio."""
    rows = []
    for m in _models(table):
        e = F.extremes(table[table["model"] == m])
        rows.append(dict(model=m, best_n_in=e.best.n_in, best_n_out=e.best.n_out,
                         best_tokens_per_j=e.best.tokens_per_j, worst_n_in=e.worst.n_in,
                         worst_n_out=e.worst.n_out, worst_tokens_per_j=e.worst.tokens_per_j, ratio=e.ratio))
    return pd.DataFrame(rows).set_index("model")


def attention_kind(model: str) -> str:
    """``"GQA"`` when the model's query heads share key/value heads, else ``"MHA"``."""
    return "GQA" if A.load(model).is_gqa else "MHA"


def coverage_table(table: pd.DataFrame, n_in=GRID, n_out=GRID) -> pd.DataFrame:
    """Per model: grid points measured, points expected, and the missing ``(n_in, n_out)`` points."""
    expected = [(a, b) for a in n_in for b in n_out]
    rows = []
    for m in _models(table):
        t = table[table["model"] == m]
        have = set(zip(t["n_in"].astype(int), t["n_out"].astype(int)))
        missing = [p for p in expected if p not in have]
        rows.append(dict(model=m, points=len(have & set(expected)), expected=len(expected),
                         missing=", ".join(f"({a}, {b})" for a, b in missing)))
    return pd.DataFrame(rows).set_index("model")


def common_points(table: pd.DataFrame) -> pd.DataFrame:
    """Only the (n_in, n_out) points measured for every model, so that models compare like for like."""
    n_models = table["model"].nunique()
    counts = table.groupby(["n_in", "n_out"])["model"].transform("nunique")
    return table[counts == n_models]


def normalised_surface(table: pd.DataFrame) -> pd.DataFrame:
    """The study's Fig. 3: each model's efficiency min-max normalised to [0, 1], then averaged
    over models, per (n_in, n_out)."""
    parts = []
    for m in _models(table):
        t = table[table["model"] == m].copy()
        eff = 1 / t["j_per_token"]
        t["normalised"] = (eff - eff.min()) / (eff.max() - eff.min())
        parts.append(t)
    both = pd.concat(parts)
    return both.groupby(["n_in", "n_out"], as_index=False)["normalised"].mean()


def cross_validation_table(table: pd.DataFrame, schemes=("kfold", "row", "column")) -> pd.DataFrame:
    """Out-of-sample MAPE (%) per formula (rows) and scheme (columns), averaged over models,
    beside the in-sample MAPE."""
    rows = []
    for m in _models(table):
        t = table[table["model"] == m]
        for key in FM.FORMULAS:
            row = dict(model=m, formula=key, in_sample=F.fit(t, key).mape_pct)
            for s in schemes:
                row[s] = F.cross_validate(t, key, scheme=s).mape_pct
            rows.append(row)
    return pd.DataFrame(rows)


def method_difference(table: pd.DataFrame, reference: str = "energy_j",
                      other: str = "energy_j_power500") -> pd.DataFrame:
    """Per point, how far another meter reads from the energy counter: ``(other - ref) / ref`` (%)."""
    missing = [c for c in (reference, other) if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}")
    return table.assign(difference_pct=(table[other] - table[reference]) / table[reference] * 100)


def measured_table(root=None, name: str = "grid", gpu: str | None = None) -> pd.DataFrame:
    """Our measured grids as one tidy table, one row per (gpu, model, n_in, n_out).

    Reads every results file called ``<name>.csv`` under ``root`` (default: the workspace's
    ``measured/``, see :func:`energybook.store.catalog.measured_dir`) with
    :func:`energybook.store.results.load_measured`, which refuses anything not measured on a real GPU.
    Repeated measurements of a point are averaged; ``reps`` counts them.

    Args:
        root: Folder of results files.
        name: Stem of the results files to read (``grid`` for the torch engine's sweeps of the
            7x7 grid, ``trtllm-grid`` or ``vllm-grid`` for the external engines').
        gpu: Keep only this GPU (exact name as recorded), or all when None.

    Returns:
        An empty table when nothing is measured yet.
    """
    runs = [r for r in catalog.measured_runs(root) if r.path.stem == name]
    raw = catalog.measured_table(runs)
    if raw.empty:
        return pd.DataFrame(columns=["gpu", "model", "n_in", "n_out", "j_per_token", "tokens_per_j", "reps"])
    # Plain numpy dtypes (the loader's nullable ones do not mix with matplotlib and lmfit).
    for c in raw.columns:
        if pd.api.types.is_numeric_dtype(raw[c]):
            raw[c] = raw[c].astype(int if c in ("n_in", "n_out") else float)
        else:
            raw[c] = raw[c].astype(object)
    if gpu is not None:
        raw = raw[raw["gpu"] == gpu]
    numeric = [c for c in raw.columns if c not in ("gpu", "model", "n_in", "n_out", "source")
               and pd.api.types.is_numeric_dtype(raw[c])]
    grouped = raw.groupby(["gpu", "model", "n_in", "n_out"], as_index=False)
    table = grouped[numeric].mean()
    table["reps"] = grouped.size()["size"].to_numpy()
    table["j_per_token"] = table["energy_j"] / table["tokens_out"]
    table["tokens_per_j"] = 1 / table["j_per_token"]
    return table
