"""The study's tables and summaries, computed from any set of measured grids.

Every function takes a tidy table with one row per (model, n_in, n_out) point and a
``j_per_token`` column (joules per output token), so the same code rebuilds the tables for
three models or thirteen. Fits come in two weightings (see :func:`energybook.model.fit.fit`):
``"none"``, plain least squares, the study's method and the book's headline, and
``"relative"``, our sensitivity check.

Used in :doc:`/book/fitting`, :doc:`/book/sweet_spots` and :doc:`/book/comparison`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from energybook.model import architecture as A
from energybook.model import fit as F
from energybook.model import formulas as FM
from energybook.model.complexity import GRID
from energybook.model.paper import quoted as _quoted
from energybook.report.provenance import attach_sources, method_difference  # noqa: F401 (method_difference: here too)
from energybook.store import catalog

logger = logging.getLogger(__name__)


def _models(table: pd.DataFrame) -> list[str]:
    if "model" not in table.columns:
        raise ValueError("the table needs a 'model' column")
    return list(dict.fromkeys(table["model"]))


def fits(table: pd.DataFrame, weighting: str = "relative") -> dict[str, dict[str, F.FitResult]]:
    """All six formulas fitted to every model: ``{model: {formula: FitResult}}``.

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out`` and ``j_per_token``.
        weighting: ``"none"`` (plain least squares, the study's method) or ``"relative"``.

    Used in :doc:`/book/fitting`, :doc:`/book/sweet_spots` and :doc:`/book/comparison`.
    """
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


def cross_validation_table(table: pd.DataFrame, schemes=("kfold", "row", "column"), weighting: str = "relative",
                           formulas=None) -> pd.DataFrame:
    """Out-of-sample MAPE (%) per model, formula and scheme, beside the in-sample MAPE.

    Args:
        table: Tidy table of one or more models.
        schemes: Cross-validation schemes of :func:`energybook.model.fit.cross_validate`.
        weighting: Weighting of every fit, ``"none"`` or ``"relative"``.
        formulas: Formula keys; all six when None.

    Returns:
        One row per (model, formula) with the columns ``in_sample`` and one per scheme (%).

    Used in :doc:`/book/fitting`.
    """
    keys = list(FM.FORMULAS) if formulas is None else [FM.get(k).key for k in formulas]
    rows = []
    for m in _models(table):
        t = table[table["model"] == m]
        for key in keys:
            row = dict(model=m, formula=key, in_sample=F.fit(t, key, weighting=weighting).mape_pct)
            for s in schemes:
                row[s] = F.cross_validate(t, key, scheme=s, weighting=weighting).mape_pct
            rows.append(row)
    return pd.DataFrame(rows)


def mape_comparison(plain: dict[str, dict[str, F.FitResult]], relative: dict[str, dict[str, F.FitResult]] | None,
                    study: pd.DataFrame) -> pd.DataFrame:
    """Table 3 in brief: mean in-sample MAPE (%) per formula, ours beside the study's.

    Args:
        plain: Our fits by plain least squares (the study's method), from :func:`fits`.
        relative: Our fits with relative weighting (the sensitivity column), or None.
        study: The study's Table 3 (:func:`energybook.model.paper.paper_table3`).

    Returns:
        Formula keys as index; the columns ``ours`` (plain least squares, mean over our models),
        ``ours_relative`` (when given), ``study_same_models`` (the study's mean over the same
        models) and ``study_all`` (the study's mean over its 13).

    Used in :doc:`/book/fitting`.
    """
    ours = mape_table(plain)
    published = study.set_index("model")[list(FM.FORMULAS)]
    same = published.loc[[m for m in plain if m in published.index]]
    out = pd.DataFrame({"ours": ours.loc["mean"]})
    if relative is not None:
        out["ours_relative"] = mape_table(relative).loc["mean"]
    out["study_same_models"] = same.mean()
    out["study_all"] = published.mean()
    return out


def mape_by_model(fitted: dict[str, dict[str, F.FitResult]], study: pd.DataFrame,
                  formulas=("flops_model", "memory_flops_model")) -> pd.DataFrame:
    """In-sample MAPE (%) per model (rows) for a few formulas: ours and the study's, side by side.

    Columns are ``(formula, "ours")`` and ``(formula, "study")`` (NaN where the study did not
    measure the model).

    Used in :doc:`/book/fitting`.
    """
    published = study.set_index("model")
    ours = mape_table(fitted).drop(index="mean")
    cols = {}
    for f in formulas:
        cols[(f, "ours")] = ours[f]
        cols[(f, "study")] = published[f].reindex(ours.index)
    return pd.DataFrame(cols)


def coefficient_table(fitted: dict[str, dict[str, dict[str, F.FitResult]]], name: str = "theta5",
                      study: pd.DataFrame | None = None, formula: str = "memory_flops_model") -> pd.DataFrame:
    """One coefficient per model and weighting: estimate, standard error, p-value, and the study's.

    Args:
        fitted: ``{weighting: fits(...)}``, e.g. ``{"none": fits(t, "none"), "relative": fits(t)}``.
        name: Coefficient (``theta5``).
        study: The study's Table 5 (:func:`energybook.model.paper.paper_table5`), or None.
        formula: Formula whose coefficient is read.

    Returns:
        One row per (model, weighting) with ``value``, ``stderr``, ``p_value`` (J per output
        token times the unit of the basis term) and, with ``study``, ``study`` and
        ``study_over_ours``.

    Used in :doc:`/book/fitting`.
    """
    published = study.set_index("model") if study is not None else None
    rows = []
    models = list(dict.fromkeys(m for by_model in fitted.values() for m in by_model))
    for m in models:
        for weighting, by_model in fitted.items():
            if m not in by_model:
                continue
            p = by_model[m][formula].params[name]
            row = dict(model=m, weighting=weighting, value=p.value, stderr=p.stderr, p_value=p.p_value)
            if published is not None:
                ref = float(published.loc[m, name]) if m in published.index else float("nan")
                row.update(study=ref, study_over_ours=ref / p.value if p.value else float("nan"))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "weighting"])


def theta_comparison(fitted: dict[str, dict[str, F.FitResult]], study: pd.DataFrame) -> pd.DataFrame:
    """Table 5's coefficients in long form: one row per (model, coefficient), ours, the study's
    and ours over the study's.

    Used in :doc:`/book/fitting`.
    """
    published = study.set_index("model")
    rows = []
    for m, res in fitted.items():
        for k, v in res["memory_flops_model"].values.items():
            ref = float(published.loc[m, k]) if m in published.index else float("nan")
            rows.append(dict(model=m, coefficient=k, ours=v, study=ref, ours_over_study=v / ref))
    return pd.DataFrame(rows).set_index(["model", "coefficient"])


def sweet_spot_table(thetas: dict[str, dict[str, float]], n_in=GRID, n_out_min: float = min(GRID),
                     n_out_max: float = max(GRID)) -> pd.DataFrame:
    """The sweet spot n_out*(n_in) of every model's Memory+FLOPs coefficients, tidy.

    Each point is :func:`energybook.model.formulas.optimum`: an interior minimum sqrt(A / theta4) inside
    the range, or a boundary when there is none (A <= 0: the energy per token only rises, so the shortest
    output; theta4 <= 0: it only falls, so the longest). A boundary is a result, never NaN.

    Args:
        thetas: ``{model: {"theta0": ..., "theta5": ...}}``.
        n_in: Input lengths (tokens).
        n_out_min: Shortest output length considered (tokens; the grid's by default).
        n_out_max: Longest output length considered (tokens; the grid's by default).

    Returns:
        Columns ``model``, ``n_in``, ``n_out_star`` (tokens, real-valued) and ``kind`` (``"interior"``,
        ``"boundary: shortest n_out"`` or ``"boundary: longest n_out"``).

    Used in :doc:`/book/sweet_spots`.
    """
    rows = []
    for m, th in thetas.items():
        for n in n_in:
            best = FM.optimum(float(n), th, float(n_out_min), float(n_out_max))
            rows.append(dict(model=m, n_in=int(n), n_out_star=best.n_out, kind=best.kind))
    return pd.DataFrame(rows)


def term_shares(thetas: dict[str, float], n_in: float, n_out: float) -> pd.Series:
    """Each term's share of the Memory+FLOPs energy per output token at one point.

    Args:
        thetas: Coefficients ``theta0`` .. ``theta5``.
        n_in: Input length (tokens).
        n_out: Output length (tokens).

    Returns:
        Shares by coefficient name; they sum to 1 (a negative share is a negative term).

    Used in :doc:`/book/fitting`.
    """
    basis = {"theta0": 1.0, "theta1": n_in**2 / n_out, "theta2": n_in, "theta3": n_in / n_out,
             "theta4": n_out, "theta5": 1 / n_out}
    terms = pd.Series({k: thetas.get(k, 0.0) * b for k, b in basis.items()})
    return terms / terms.sum()


def ratio_to_study(table: pd.DataFrame, study: pd.DataFrame, energy: str = "energy_j") -> pd.DataFrame:
    """Our efficiency over the study's fitted efficiency at every common grid point.

    Args:
        table: Our measured table (``model``, ``n_in``, ``n_out``, ``tokens_out`` and ``energy``).
        study: The study's fitted surfaces (:func:`energybook.model.paper.paper_surfaces`).
        energy: Our energy column (joules): ``energy_j`` (the energy counter) or e.g.
            ``energy_j_power500`` (the study's method, power sampled every 500 ms, on our runs).

    Returns:
        The common points with ``tokens_per_j`` (ours, from ``energy``), ``tokens_per_j_study``
        and ``ratio`` (ours over the study's).

    Used in :doc:`/book/comparison`.
    """
    ours = table[["model", "n_in", "n_out"]].assign(tokens_per_j=table["tokens_out"] / table[energy])
    merged = ours.merge(study[["model", "n_in", "n_out", "tokens_per_j"]], on=["model", "n_in", "n_out"],
                        suffixes=("", "_study"))
    out = merged.assign(ratio=merged["tokens_per_j"] / merged["tokens_per_j_study"])
    out.attrs = dict(table.attrs)  # our side was measured: its GPUs and engines
    return out


@dataclass(frozen=True)
class StudyText:
    """Numbers the study prints in its text rather than its tables (arXiv 2602.05695v1).

    Every default is read from the one table of quoted study numbers,
    ``energybook/resources/paper/quoted.csv`` (:func:`energybook.model.paper.quoted`), where each has its
    scope and where the study prints it.

    Attributes:
        best_worst_ratio: Best over worst grid-point efficiency, mean over its 13 models.
        best_worst_ratio_sd: Its standard deviation over the models.
        mape_pct: Mean in-sample MAPE of the Memory+FLOPs formula over the 13 models (%).
        llama_64_256: Llama 3.2 1B's measured efficiency at (64, 256) (output tokens per joule).
        llama_64_4096: Llama 3.2 1B's measured efficiency at (64, 4096).
        batch_1024_64_4096: Llama 3.2 1B at (64, 4096) with ``max_batch_size`` 1024 (its batch study).
        batch_256_64_4096: The same with ``max_batch_size`` 256.
        n_req: Requests per grid point.
    """

    best_worst_ratio: float = _quoted("best_worst_ratio_mean")
    best_worst_ratio_sd: float = _quoted("best_worst_ratio_sd")
    mape_pct: float = _quoted("mape_mean_memory_flops_model")
    llama_64_256: float = _quoted("llama32_1b_tokens_per_j_nin64_nout256")
    llama_64_4096: float = _quoted("llama32_1b_tokens_per_j_nin64_nout4096")
    batch_1024_64_4096: float = _quoted("batch_llama32_1b_nout4096_max_batch_1024")
    batch_256_64_4096: float = _quoted("batch_llama32_1b_nout4096_max_batch_256")
    n_req: int = _quoted("n_req")


#: The study's text figures, used in :doc:`/book/sweet_spots` and :doc:`/book/comparison`.
STUDY_TEXT = StudyText()


def scroll_table(table, formats=None, na_rep: str = "-", source=None, models=None):
    """A table as HTML in a horizontally scrollable box, so that a wide table never widens the page.

    Args:
        table: A DataFrame or a pandas Styler.
        formats: Column formats for :meth:`pandas.io.formats.style.Styler.format` (a format
            string, or a dict of them by column).
        na_rep: Text of missing values.
        source: Where its numbers were measured (what :func:`energybook.report.provenance.source_line`
            takes), shown as the table's caption; the table's own ``attrs`` when None (no caption for a
            table that carries none).
        models: Name only these models' sources (by default the models the table or ``source`` holds).

    Returns:
        An :class:`IPython.display.HTML` object for ``display``.

    Used in :doc:`/book/fitting`, :doc:`/book/sweet_spots` and :doc:`/book/comparison`.
    """
    from IPython.display import HTML

    from energybook.report.provenance import with_source

    styler = with_source(table, source, models).format(formats, na_rep=na_rep)
    # Numbers never wrap inside a cell: a table too wide for the screen scrolls in its box instead.
    styler = styler.set_table_styles([{"selector": "th, td", "props": "white-space: nowrap; padding: 0.2em 0.6em;"}],
                                     overwrite=False)
    return HTML(f'<div class="eb-table" style="overflow-x: auto; max-width: 100%;">{styler.to_html()}</div>')


#: The engine whose committed grids the book's chapters analyse (the H100 grids of the first edition; issue 25 moves
#: the chapters to the lean engine's grids). Pages pass it to :func:`measured_table` and
#: :func:`energybook.store.catalog.grid_runs`, so that another engine's grids of the same model never mix in.
BOOK_ENGINE = "hf"


def measured_table(root=None, name: str = "grid", gpu: str | None = None, engine: str | None = None) -> pd.DataFrame:
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
        engine: Keep only this engine's grids (its folder name: ``hf``, ``lean``), or all when None. Rows are kept
            apart by GPU and engine (``engine`` column): two engines' points are never averaged.

    Returns:
        An empty table when nothing is measured yet. Its ``attrs`` name the GPUs (name and UUID) and engines
        that measured it (:func:`energybook.report.provenance.attach_sources`), which figures drawn from it
        stamp and tables show (:func:`energybook.report.provenance.source_line`).
    """
    runs = catalog.grid_runs(root, engine=engine, name=name)
    if gpu is not None:
        runs = [r for r in runs if r.gpu == gpu]
    raw = catalog.measured_table(runs)
    engine_of = {str(r.path): r.engine for r in runs}
    if raw.empty:
        return pd.DataFrame(columns=["gpu", "engine", "model", "n_in", "n_out", "j_per_token", "tokens_per_j", "reps"])
    # Plain numpy dtypes (the loader's nullable ones do not mix with matplotlib and lmfit).
    for c in raw.columns:
        if pd.api.types.is_numeric_dtype(raw[c]):
            raw[c] = raw[c].astype(int if c in ("n_in", "n_out") else float)
        else:
            raw[c] = raw[c].astype(object)
    if gpu is not None:
        raw = raw[raw["gpu"] == gpu]
    raw["engine"] = [engine_of[src] for src in raw["source"]]
    numeric = [c for c in raw.columns if c not in ("gpu", "engine", "model", "n_in", "n_out", "source")
               and pd.api.types.is_numeric_dtype(raw[c])]
    grouped = raw.groupby(["gpu", "engine", "model", "n_in", "n_out"], as_index=False)
    table = grouped[numeric].mean()
    table["reps"] = grouped.size()["size"].to_numpy()
    table["j_per_token"] = table["energy_j"] / table["tokens_out"]
    table["tokens_per_j"] = 1 / table["j_per_token"]
    return attach_sources(table, runs)


def repeat_table(root=None) -> pd.DataFrame:
    """The repeated full runs of single grid points (``full-<n_in>x<n_out>.csv``), one row per repeat.

    These are the repeat measurements behind the repeat noise of :func:`energybook.model.stats.repeat_noise`
    and the lack-of-fit test; unlike :func:`measured_table` the repeats are kept apart, not averaged.

    Args:
        root: Folder of results files (default: the workspace's ``measured/``).

    Returns:
        The rows of :func:`energybook.store.catalog.measured_table` (with ``source``); empty when none.
    """
    runs = [r for r in catalog.measured_runs(root) if r.path.stem.startswith("full-")]
    return attach_sources(catalog.measured_table(runs), runs)


def offgrid_errors(grid: pd.DataFrame, offgrid: pd.DataFrame, calibration=None,
                   weighting: str = "relative") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Errors at off-grid points of three models fitted or calibrated on the grids (issue 14's off-grid check).

    For each model of ``offgrid``, with its grid in ``grid``: the per-model Memory+FLOPs fit (Eq. 5), the same
    with the batch term, both fitted to that model's grid, and the physical model (its calibration, the batch
    and requests each off-grid point ran with). Each predicts energy per output token at the off-grid lengths.

    Args:
        grid: Measured grids (``measured_table()``): model, n_in, n_out, j_per_token, batch.
        offgrid: Measured off-grid points, the same columns plus ``n_req`` (``measured_table(name="offgrid")``).
        calibration: The physical model's calibration (default: the shipped H100 one).
        weighting: Weighting of the per-model fits.

    Returns:
        (points, summary): one row per off-grid point with the measured value, each model's prediction and
        its relative error; one row per model with each method's MAPE (%).

    Raises:
        ValueError: when a model of ``offgrid`` has no grid.
    """
    from energybook.model import physics as P

    cal = calibration if calibration is not None else P.load_calibration()
    rows = []
    for model, pts in offgrid.groupby("model", sort=False):
        g = grid[grid["model"] == model]
        if g.empty:
            raise ValueError(f"{model}: off-grid points but no grid to fit; measure its grid first")
        eq5 = F.fit(g, "memory_flops_model", weighting=weighting)
        eq5b = F.fit(g, "memory_flops_batch_model", weighting=weighting)
        arch = A.load(model)
        for r in pts.itertuples(index=False):
            phys = P.predict(arch, int(r.n_in), int(r.n_out), batch=int(r.batch), n_req=int(r.n_req),
                             calibration=cal, samples=0)
            preds = {"eq5": float(eq5.predict(r.n_in, r.n_out)),
                     "eq5_batch": float(eq5b.predict(r.n_in, r.n_out, batch=float(r.batch))),
                     "physical": phys.j_per_token}
            row = dict(model=model, n_in=int(r.n_in), n_out=int(r.n_out), batch=int(r.batch),
                       measured=float(r.j_per_token))
            for k, v in preds.items():
                row[k], row[f"{k}_error"] = v, v / float(r.j_per_token) - 1
            rows.append(row)
    points = pd.DataFrame(rows)
    summary = (points.groupby("model", sort=False)[["eq5_error", "eq5_batch_error", "physical_error"]]
               .agg(lambda e: float(np.mean(np.abs(e)) * 100))
               .rename(columns=lambda c: c.replace("_error", "_mape_pct")))
    return points, summary


def measuring_time(table: pd.DataFrame, spec, prefill_tokens: dict[str, int] | int | None = 16384) -> pd.DataFrame:
    """Measured windows against their roofline, per (model, n_in, batch) group of a prefix-mode grid.

    A prefix-mode sweep measures one wave per group, to the group's longest output; that point's ``window_s`` is
    the wave's measured time. Its bound is :func:`energybook.model.roofline.measuring_bounds` on ``spec``.

    Args:
        table: A measured table (:func:`measured_table`) with ``model``, ``n_in``, ``n_out``, ``batch`` and
            ``window_s``.
        spec: The GPU (:class:`energybook.model.roofline.GpuSpec`).
        prefill_tokens: Prompt tokens per prefill chunk, one for all models or ``{model: tokens}`` (each grid's
            engine setting).

    Returns:
        One row per group: ``model``, ``n_in``, ``batch``, ``n_out`` (tokens), ``window_s`` (measured),
        ``bound_s`` (roofline, seconds) and ``bound_share`` (bound over measured).

    Used in :doc:`/book/comparison`.
    """
    from energybook.model import roofline as R

    missing = [c for c in ("model", "n_in", "n_out", "batch", "window_s") if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}")
    out = []
    for model in _models(table):
        t = table[table["model"] == model]
        tokens = prefill_tokens.get(model, 16384) if isinstance(prefill_tokens, dict) else prefill_tokens
        bounds = R.measuring_bounds(A.load(model), t, spec, prefill_tokens=tokens)
        longest = t.loc[t.groupby(["n_in", "batch"])["n_out"].idxmax(), ["n_in", "batch", "window_s"]]
        merged = bounds.merge(longest.astype({"n_in": int, "batch": int}), on=["n_in", "batch"])
        out.append(merged.assign(model=model, bound_s=merged["time_s"]))
    result = pd.concat(out, ignore_index=True)
    result["bound_share"] = result["bound_s"] / result["window_s"]
    result = result[["model", "n_in", "batch", "n_out", "window_s", "bound_s", "bound_share"]]
    result.attrs = dict(table.attrs)  # the measured windows' GPUs and engines
    return result
