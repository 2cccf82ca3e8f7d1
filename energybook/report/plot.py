"""The plot style of the book and the figures it reuses.

One seaborn theme for every page (:func:`set_theme`) and the book's figure rules in one place:

* heat maps of a value over the (n_in, n_out) grid with n_in increasing upward, everywhere
  (:func:`heatmap` for one panel, its cells labelled; :func:`heatmaps` for small multiples, one
  panel per row on one shared colour scale, so that panels compare);
* figures at most :data:`MAX_WIDTH_IN` inches wide, so that at a phone's width (about 340 CSS
  pixels of text column) they are shown at no less than 0.6 of their size and their labels read
  (the browser test checks it);
* log colour bars and log axes with labelled ticks in plain numbers (1, 2, 5, 10, ...;
  :func:`log_ticks`), never "10^0";
* one colour per model family and one marker and line style per member (:func:`model_styles`),
  so that the study's 13 models give 13 distinguishable lines in a colour-blind-safe palette;
* human labels: model names as the study prints them (:func:`model_label`), formula names
  ("Baseline 1", "FLOPs-based", "Memory+FLOPs"; :func:`formula_label`), lowercase axis labels
  with units (:data:`LABELS`).

Every function that draws a grid takes a tidy table with the columns ``model``, ``n_in``,
``n_out`` (tokens) and the value to draw, such as :func:`energybook.model.paper.paper_surfaces`
or :func:`energybook.report.analysis.measured_table` return. Figures carry no title (the page's
caption says what they show); small multiples carry panel titles. A figure drawn from a table that
carries where it was measured (``measured_table``'s ``attrs``) gets a small grey footer naming the GPUs
(name and UUID) and engines of the models it shows (:func:`stamp_source`); figures of predictions or of
the study's published numbers get none.

The style (theme, labels, ticks, colours and markers) lives in :mod:`energybook.report.plot_style` and
the heat maps in :mod:`energybook.report.plot_grids`; this module draws the curves and re-exports both,
so every name imports from here.

Used in :doc:`/book/counting`, :doc:`/book/fitting`, :doc:`/book/sweet_spots` and
:doc:`/book/comparison`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# The style and the heat maps live in their own modules; every name stays importable from here.
from energybook.report.plot_grids import (  # noqa: F401
    _annotation,
    _colorbar,
    _draw,
    _grid,
    _norm,
    correlation_matrix,
    heatmap,
    heatmaps,
    small_multiples,
)
from energybook.report.plot_style import (  # noqa: F401
    _DASHES,
    _DIVERGING,
    _LOG_STEPS,
    _MARKERS,
    _SEQUENTIAL,
    LABELS,
    MAX_WIDTH_IN,
    PANEL_WIDTH_IN,
    SCHEME_LABELS,
    SourceFooter,
    _check,
    _family,
    _label_log_colorbar,
    _legend,
    _log2_axis,
    format_number,
    formula_label,
    log2_axis,
    log_axis,
    log_ticks,
    model_label,
    model_styles,
    set_theme,
    source_footer,
    stamp_source,
)

logger = logging.getLogger(__name__)


# ----- curves -------------------------------------------------------------------------------

def efficiency_curves(table: pd.DataFrame, n_in: int = 64, ax: Axes | None = None,
                      y: str = "tokens_per_j", models: list[str] | None = None,
                      reference: pd.DataFrame | None = None, reference_label: str = "the study's fit",
                      label: str = "our measurement", logy: bool = False) -> Axes:
    """Efficiency against output length at one input length, one line per model.

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out`` (tokens) and ``y``.
        n_in: Input length whose row of the grid is drawn (tokens).
        ax: Axes to draw on; a new figure when None.
        y: Column on the vertical axis, ``tokens_per_j`` (output tokens per joule) or
            ``j_per_token`` (joules per output token).
        models: Models to draw, in legend order; all models of the table when None.
        reference: A second tidy table (e.g. the study's fitted surfaces) drawn as dashed lines in
            each model's colour, without markers; the legend then names the two line kinds.
        reference_label: Legend name of the reference lines.
        label: Legend name of the table's lines when a reference is drawn.
        logy: Log vertical axis with labelled round ticks.

    Returns:
        The Axes, with a log2 output-length axis.

    Raises:
        ValueError: for missing columns or an input length absent from the table.

    Used in :doc:`/book/counting` and :doc:`/book/sweet_spots`.
    """
    _check(table, ("model", "n_in", "n_out", y))
    rows = table[table["n_in"] == n_in]
    if rows.empty:
        raise ValueError(f"no rows with n_in = {n_in}; the table has n_in in {sorted(table['n_in'].unique())}")
    order = models if models is not None else list(dict.fromkeys(rows["model"]))
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 4.0 if len(order) <= 4 else 5.6))
    styles = model_styles(order)
    handles = []
    for model in order:
        s = styles[model]
        curve = rows[rows["model"] == model].sort_values("n_out")
        (line,) = ax.plot(curve["n_out"], curve[y], marker=s["marker"], markersize=5, color=s["color"],
                          linestyle="-" if reference is not None else s["linestyle"], label=model_label(model))
        handles.append(line)
        if reference is not None:
            ref = reference[(reference["model"] == model) & (reference["n_in"] == n_in)].sort_values("n_out")
            if not ref.empty:
                ax.plot(ref["n_out"], ref[y], linestyle="--", color=s["color"], alpha=0.8)
    _log2_axis(ax, rows["n_out"], "x")
    ax.set_xlabel(LABELS["n_out"])
    ax.set_ylabel(LABELS.get(y, y))
    if logy:
        log_axis(ax, "y")
    labels = [h.get_label() for h in handles]
    if reference is not None:
        handles += [Line2D([], [], color="grey", marker="o", linestyle="-"),
                    Line2D([], [], color="grey", linestyle="--")]
        labels += [label, reference_label]
    _legend(ax, handles, labels)
    stamp_source(ax, table, models=order)
    return ax


# ----- fits ---------------------------------------------------------------------------------

def residuals(table: pd.DataFrame, models: Sequence[str] | None = None, value: str = "residual_pct",
              ncols: int = 1) -> Figure:
    """Small multiples of residuals against the output length, one line per input length.

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out`` and ``value`` (a residual in %).
        models: Panels in reading order; every model when None.
        value: The residual column.
        ncols: Columns of panels (1, one panel per row, or 2).

    Returns:
        The Figure (shared vertical axis, one legend of input lengths).

    Used in :doc:`/book/fitting`.
    """
    _check(table, ("model", "n_in", "n_out", value))
    order = list(models) if models is not None else list(dict.fromkeys(table["model"]))
    n_ins = sorted(int(v) for v in table["n_in"].unique())
    colours = dict(zip(n_ins, sns.color_palette(_SEQUENTIAL, n_colors=len(n_ins))))
    fig, axes = small_multiples(len(order), ncols, panel_height=2.4, extra_height=1.0, sharey=True)
    n_cols = max(1, min(ncols, len(order), 2))
    for k, (ax, m) in enumerate(zip(axes, order)):
        t = table[table["model"] == m]
        for i, n in enumerate(n_ins):
            c = t[t["n_in"] == n].sort_values("n_out")
            ax.plot(c["n_out"], c[value], marker=_MARKERS[i % len(_MARKERS)], markersize=4, color=colours[n],
                    label=str(n))
        ax.axhline(0, color="grey", lw=0.8)
        _log2_axis(ax, table["n_out"], "x")
        ax.tick_params(axis="x", labelsize="small")
        ax.set_title(model_label(m))
        ax.set_ylabel(LABELS.get(value, value) if k % n_cols == 0 else "")
        below = k + n_cols < len(order)
        ax.set_xlabel("" if below else LABELS["n_out"])
        ax.tick_params(axis="x", labelbottom=not below)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title=LABELS["n_in"], loc="outside lower center", ncol=min(4, len(n_ins)),
               frameon=False)
    stamp_source(fig, table, models=order)
    return fig


def mape_dots(table: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """MAPE per formula (rows, human names) and error kind (marker), on a labelled log axis.

    Args:
        table: Formula keys as index, columns among :data:`SCHEME_LABELS` (``in_sample``,
            ``kfold``, ``row``, ``column``), MAPE in %.
        ax: Axes to draw on; a new figure when None.

    Used in :doc:`/book/fitting`.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 4.0))
    rows = list(table.index)
    y = np.arange(len(rows))[::-1]
    palette = sns.color_palette("colorblind", n_colors=len(table.columns))
    for k, col in enumerate(table.columns):
        offset = (k - (len(table.columns) - 1) / 2) * 0.15
        ax.plot(table[col].to_numpy(dtype=float), y + offset, linestyle="none", marker=_MARKERS[k % len(_MARKERS)],
                markersize=7, color=palette[k], label=SCHEME_LABELS.get(col, col))
    ax.set_yticks(y, [formula_label(r) for r in rows])
    finite = table.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    ax.set_xlim(finite.min() / 1.3, finite.max() * 1.3)
    log_axis(ax, "x")
    ax.set_xlabel(LABELS["mape_pct"])
    ax.grid(axis="y", visible=False)
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below, within the width
    stamp_source(ax, table)
    return ax


def sweet_spot_curves(table: pd.DataFrame, ax: Axes | None = None, models: Sequence[str] | None = None,
                      reference: pd.DataFrame | None = None, reference_label: str = "the study's fit",
                      label: str = "our fit") -> Axes:
    """The sweet-spot output length n_out* against the input length, one line per model.

    Args:
        table: Tidy table with ``model``, ``n_in`` and ``n_out_star`` (tokens).
        ax: Axes to draw on; a new figure when None.
        models: Models in legend order; all when None.
        reference: A second such table drawn dashed in each model's colour.
        reference_label: Legend name of the reference lines.
        label: Legend name of the table's lines.

    Used in :doc:`/book/sweet_spots`.
    """
    _check(table, ("model", "n_in", "n_out_star"))
    order = list(models) if models is not None else list(dict.fromkeys(table["model"]))
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 4.2))
    styles = model_styles(order)
    handles = []
    for m in order:
        s = styles[m]
        t = table[table["model"] == m].sort_values("n_in")
        (line,) = ax.plot(t["n_in"], t["n_out_star"], marker=s["marker"], color=s["color"], label=model_label(m))
        handles.append(line)
        if reference is not None:
            r = reference[reference["model"] == m].sort_values("n_in")
            ax.plot(r["n_in"], r["n_out_star"], linestyle="--", color=s["color"])
    _log2_axis(ax, table["n_in"], "x")
    values = table["n_out_star"] if reference is None else pd.concat([table["n_out_star"], reference["n_out_star"]])
    ax.set_ylim(values.min() / 1.2, values.max() * 1.2)
    log_axis(ax, "y")
    ax.set_xlabel(LABELS["n_in"])
    ax.set_ylabel(LABELS["n_out_star"])
    labels = [h.get_label() for h in handles]
    if reference is not None:
        handles += [Line2D([], [], color="grey", marker="o"), Line2D([], [], color="grey", linestyle="--")]
        labels += [label, reference_label]
    _legend(ax, handles, labels)
    stamp_source(ax, table, models=order)
    return ax


def efficiency_by_model(table: pd.DataFrame, group: dict[str, str], ax: Axes | None = None,
                        value: str = "tokens_per_j", models: Sequence[str] | None = None,
                        seed: int = 0) -> Axes:
    """Every grid point's value per model (jittered points on a labelled log axis), coloured and
    shaped by a group of the model (e.g. its attention kind).

    Args:
        table: Tidy table with ``model`` and ``value``.
        group: The group of every model (``{"OPT-1.3B": "MHA", ...}``).
        ax: Axes to draw on; a new figure when None.
        value: Column on the vertical axis.
        models: Models left to right; all when None.
        seed: Seed of the horizontal jitter.

    Used in :doc:`/book/sweet_spots`.
    """
    _check(table, ("model", value))
    order = list(models) if models is not None else list(dict.fromkeys(table["model"]))
    kinds = list(dict.fromkeys(group[m] for m in order))
    palette = dict(zip(kinds, sns.color_palette("colorblind", n_colors=len(kinds))))
    markers = dict(zip(kinds, _MARKERS))
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.8))
    rng = np.random.default_rng(seed)
    seen = set()
    for x, m in enumerate(order):
        v = table.loc[table["model"] == m, value].to_numpy(dtype=float)
        kind = group[m]
        ax.plot(x + rng.uniform(-0.2, 0.2, len(v)), v, linestyle="none", marker=markers[kind], markersize=5,
                alpha=0.8, color=palette[kind], label=None if kind in seen else kind)
        seen.add(kind)
    ax.set_xticks(range(len(order)), [model_label(m) for m in order])
    ax.set_xlim(-0.6, len(order) - 0.4)
    finite = table.loc[table["model"].isin(order), value].to_numpy(dtype=float)
    ax.set_ylim(finite.min() / 1.2, finite.max() * 1.2)
    log_axis(ax, "y")
    ax.set_ylabel(LABELS.get(value, value))
    ax.grid(axis="x", visible=False)
    ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(kinds))
    stamp_source(ax, table, models=order)
    return ax


def measuring_time(table: pd.DataFrame, model: str, ax: Axes | None = None) -> Axes:
    """One model's measured windows and their roofline, one pair of horizontal bars per (n_in, batch) group, in
    seconds (groups top to bottom by n_in, then batch).

    Args:
        table: :func:`energybook.report.analysis.measuring_time`'s table.
        model: The model to draw.
        ax: Axes to draw on; a new figure when None.

    Used in :doc:`/book/comparison`.
    """
    _check(table, ("model", "n_in", "batch", "n_out", "window_s", "bound_s"))
    rows = table[table["model"] == model].sort_values(["n_in", "batch"])
    if rows.empty:
        raise ValueError(f"no rows for model {model!r}; the table has {sorted(set(table['model']))}")
    if ax is None:
        _, ax = plt.subplots(figsize=(PANEL_WIDTH_IN, 1.0 + 0.28 * len(rows)))
    y = np.arange(len(rows))[::-1]
    palette = sns.color_palette("colorblind", n_colors=2)
    ax.barh(y + 0.2, rows["window_s"], height=0.4, color=palette[0], label="measured window")
    ax.barh(y - 0.2, rows["bound_s"], height=0.4, color=palette[1], label="roofline, same wave")
    ax.set_yticks(y, [f"{a} / {b} / {c}" for a, b, c in zip(rows["n_in"], rows["batch"], rows["n_out"])], fontsize=8)
    ax.set_ylabel("n_in / batch / longest n_out")
    ax.set_xlabel("one measured wave (s)")
    ax.set_title(model_label(model))
    ax.grid(axis="y", visible=False)
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)  # below: the bars fill the axes
    stamp_source(ax, table, models=[model])
    return ax
