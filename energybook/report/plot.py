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
caption says what they show); small multiples carry panel titles.

Used in :doc:`/book/counting`, :doc:`/book/fitting`, :doc:`/book/sweet_spots` and
:doc:`/book/comparison`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

logger = logging.getLogger(__name__)

#: The widest figure the book draws (inches, at 100 dpi): 4.6 in for a panel with labelled cells,
#: up to 5.2 in for line plots with their legends.
MAX_WIDTH_IN = 5.2
#: Width of one heat-map panel (inches): seven cells with three-digit labels side by side.
PANEL_WIDTH_IN = 4.6

#: Axis and colour-bar labels shared by every figure (lowercase, with units).
LABELS = {
    "n_in": "input length n_in (tokens)",
    "n_out": "output length n_out (tokens)",
    "tokens_per_j": "efficiency (output tokens per joule)",
    "j_per_token": "energy per output token (J)",
    "normalised": "normalised efficiency (0 = worst, 1 = best point)",
    "difference_pct": "difference from the energy counter (%)",
    "ratio": "ours / the study's (efficiency)",
    "residual_pct": "residual (%)",
    "mape_pct": "MAPE (%)",
    "n_out_star": "sweet-spot output length n_out* (tokens)",
}

#: Human names of the cross-validation schemes of :func:`energybook.model.fit.cross_validate`.
SCHEME_LABELS = {
    "in_sample": "in sample",
    "kfold": "random folds",
    "row": "unseen input length",
    "column": "unseen output length",
}

#: The tick values of a log axis, per decade, from sparse to dense (see :func:`log_ticks`).
_LOG_STEPS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_DASHES = ("-", "--", ":", "-.")
_SEQUENTIAL = "viridis"
_DIVERGING = "RdBu"


def set_theme(context: str = "notebook") -> None:
    """Set the book's one plot theme (seaborn whitegrid, colour-blind palette).

    Args:
        context: seaborn context (``"notebook"``, ``"paper"``, ``"talk"``).

    Used in every chapter with figures, e.g. :doc:`/book/sweet_spots`.
    """
    sns.set_theme(context=context, style="whitegrid", palette="colorblind",
                  rc={"figure.figsize": (5.0, 3.4), "figure.dpi": 100, "savefig.bbox": "tight",
                      "axes.titlesize": "medium", "legend.fontsize": "small"})


# ----- labels -------------------------------------------------------------------------------

def model_label(model: str) -> str:
    """A model's name as the study prints it (``"Llama 3.2 1B"``), or the name with spaces.

    Used in :doc:`/book/sweet_spots`.
    """
    from energybook.model.architecture import PAPER_LABELS

    return PAPER_LABELS.get(model, model.replace("-", " "))


def formula_label(key: str) -> str:
    """A formula's human name (``"Memory+FLOPs"`` for ``"memory_flops_model"``).

    Used in :doc:`/book/fitting`.
    """
    from energybook.model import formulas

    return formulas.get(key).label


def format_number(x: float) -> str:
    """A tick label in plain digits, three significant at most: ``1``, ``2.5``, ``0.05``, ``1000``.

    Used in :doc:`/book/instruments`.
    """
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    v = float(f"{x:.3g}")
    if v == int(v):
        return str(int(v))
    return f"{v:.10f}".rstrip("0").rstrip(".")


def log_ticks(vmin: float, vmax: float, minimum: int = 3) -> list[float]:
    """Round tick values for a log scale from ``vmin`` to ``vmax`` (both positive).

    Tries 1-2-5 per decade first, then denser steps, until at least ``minimum`` ticks fall in
    the range; gives the two ends, rounded to two significant digits, when even the densest
    steps leave fewer.

    Raises:
        ValueError: unless ``0 < vmin < vmax``.

    Used in :doc:`/book/sweet_spots` (every log colour bar).
    """
    if not (0 < vmin < vmax) or not math.isfinite(vmax):
        raise ValueError(f"a log scale needs 0 < vmin < vmax, got {vmin}, {vmax}")
    lo, hi = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
    eps = 1e-9
    ticks: list[float] = []
    for steps in _LOG_STEPS:
        ticks = [round(s * 10.0**e, 12) for e in range(lo, hi + 1) for s in steps]
        ticks = [t for t in ticks if vmin * (1 - eps) <= t <= vmax * (1 + eps)]
        if len(ticks) >= minimum:
            return ticks
    return ticks if len(ticks) >= 2 else [float(f"{vmin:.2g}"), float(f"{vmax:.2g}")]


def _label_log_colorbar(cbar, norm: LogNorm) -> None:
    ticks = log_ticks(norm.vmin, norm.vmax, minimum=4)
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([format_number(t) for t in ticks])
    cbar.ax.yaxis.set_minor_locator(NullLocator())
    cbar.ax.xaxis.set_minor_locator(NullLocator())


def log_axis(ax: Axes, axis: str = "y", vmin: float | None = None, vmax: float | None = None) -> None:
    """A log axis with labelled round ticks (1, 2, 5, 10, ...) over its data range.

    Args:
        ax: The Axes.
        axis: ``"x"`` or ``"y"``.
        vmin, vmax: Range to label; the axis's current limits when None.

    Used in :doc:`/book/instruments` and :doc:`/book/fitting`.
    """
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    setter("log")
    lims = ax.get_xlim() if axis == "x" else ax.get_ylim()
    lo = vmin if vmin is not None else lims[0]
    hi = vmax if vmax is not None else lims[1]
    ticks = log_ticks(lo, hi)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)([format_number(t) for t in ticks])
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lims)


def _log2_axis(ax: Axes, values, axis: str = "x") -> None:
    """A log2 axis with a tick at every grid value, labelled in plain tokens."""
    ticks = sorted({int(v) for v in values})
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    setter("log", base=2)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)([str(t) for t in ticks])


# ----- colours and markers ------------------------------------------------------------------

def log2_axis(ax: Axes, values, axis: str = "x") -> None:
    """A log-2 axis with a tick at every grid value (64, 128, ... 4096), labelled in plain tokens.

    Used in :doc:`/book/physics`.
    """
    _log2_axis(ax, values, axis)


def _family(model: str) -> str:
    return model.split("-")[0]


def model_styles(models: Iterable[str]) -> dict[str, dict]:
    """Line styles per model: one colour per family, one marker and dash per family member.

    The study's 13 models are placed first, in the study's order, so that a model has the same
    style on every page whichever models a figure shows; other models follow. Families take the
    colour-blind palette's colours in turn; the members of a family take the markers ``o s ^``
    and the dashes ``- -- :`` in turn.

    Returns:
        ``{model: {"color": ..., "marker": ..., "linestyle": ...}}`` for the given models.

    Used in :doc:`/book/sweet_spots` and :doc:`/book/counting`.
    """
    from energybook.model.architecture import PAPER_LABELS

    wanted = list(dict.fromkeys(models))
    everyone = list(PAPER_LABELS) + [m for m in wanted if m not in PAPER_LABELS]
    palette = sns.color_palette("colorblind", n_colors=10)
    families: dict[str, list[str]] = {}
    for m in everyone:
        families.setdefault(_family(m), []).append(m)
    styles = {}
    for f_index, (_, members) in enumerate(families.items()):
        for j, m in enumerate(members):
            styles[m] = {"color": palette[f_index % len(palette)],
                         "marker": _MARKERS[(j + f_index // len(palette)) % len(_MARKERS)],
                         "linestyle": _DASHES[j % len(_DASHES)]}
    return {m: styles[m] for m in wanted}


def _check(table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; it needs {list(columns)}")
    if table.empty:
        raise ValueError("the table is empty: nothing to plot")


def _legend(ax: Axes, handles=None, labels=None, n: int | None = None) -> None:
    """A legend inside the axes for a few entries, below it in three columns for many."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    n = len(handles) if n is None else n
    if n <= 4:
        ax.legend(handles, labels, frameon=False, loc="best")
    else:
        ax.legend(handles, labels, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=3 if n > 6 else 2)


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
    return ax


# ----- heat maps ----------------------------------------------------------------------------

def _grid(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows n_in ascending (drawn bottom to top), columns n_out ascending."""
    return rows.pivot_table(index="n_in", columns="n_out", values=value).sort_index().sort_index(axis=1)


def _norm(values: np.ndarray, log: bool, vmin: float | None, vmax: float | None,
          center: float | None) -> Normalize:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite value to colour")
    lo = float(finite.min()) if vmin is None else vmin
    hi = float(finite.max()) if vmax is None else vmax
    if hi <= lo:  # one value (a one-point grid): a narrow range around it
        lo, hi = (lo / 1.1, hi * 1.1) if log and lo > 0 else (lo - 0.5, hi + 0.5)
    if center is not None:
        if log:
            span = max(hi / center, center / lo)
            return LogNorm(center / span, center * span)
        span = max(hi - center, center - lo)
        return Normalize(center - span, center + span)
    if log:
        if lo <= 0:
            raise ValueError(f"a log colour scale needs positive values, the smallest is {lo}")
        return LogNorm(lo, hi)
    return Normalize(lo, hi)


def _annotation(x: float, fmt: str | None) -> str:
    if fmt is not None:
        text = format(x, fmt)
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _draw(ax: Axes, grid: pd.DataFrame, norm: Normalize, cmap: str, annot: bool, fmt: str | None,
          fontsize: str = "x-small", ticksize: str = "small"):
    values = grid.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    mesh = ax.pcolormesh(np.arange(n_cols + 1), np.arange(n_rows + 1), np.ma.masked_invalid(values),
                         norm=norm, cmap=cmap, edgecolors="white", linewidth=0.6)
    ax.set_xticks(np.arange(n_cols) + 0.5, [str(int(c)) for c in grid.columns])
    ax.set_yticks(np.arange(n_rows) + 0.5, [str(int(r)) for r in grid.index])
    ax.set_xlim(0, n_cols)
    ax.set_ylim(0, n_rows)
    ax.grid(False)
    ax.tick_params(axis="both", length=0, labelsize=ticksize)
    ax.tick_params(axis="x", labelsize="small")  # seven four-digit labels must not touch
    if annot:
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                if not np.isfinite(v):
                    continue
                r, g, b, _ = mesh.cmap(mesh.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j + 0.5, i + 0.5, _annotation(v, fmt), ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
    return mesh


def _colorbar(fig: Figure, mesh, axes, label: str, orientation: str = "vertical"):
    kw = dict(label=label)
    if orientation == "horizontal":
        kw.update(location="bottom", fraction=0.05, aspect=40, pad=0.02)
    cbar = fig.colorbar(mesh, ax=axes, **kw)
    if isinstance(mesh.norm, LogNorm):
        _label_log_colorbar(cbar, mesh.norm)
    return cbar


def heatmap(table: pd.DataFrame, model: str, ax: Axes | None = None, value: str = "tokens_per_j",
            annot: bool = True, cbar: bool = True, vmin: float | None = None,
            vmax: float | None = None, log: bool | None = None, cmap: str | None = None,
            center: float | None = None, fmt: str | None = None, cbar_label: str | None = None) -> Axes:
    """Heat map of one model's value over the (n_in, n_out) grid, n_in increasing upward.

    A new figure is :data:`PANEL_WIDTH_IN` wide with the colour bar, so that the cell labels stay
    legible on a phone. Also used by the measurement notebook (``energybook measure``).

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out`` (tokens) and ``value``.
        model: The model to draw (a value of the ``model`` column).
        ax: Axes to draw on; a new figure when None.
        value: Column to colour by, ``tokens_per_j`` by default.
        annot: Write the value in every cell (three significant digits unless ``fmt``).
        cbar: Draw the colour bar.
        vmin: Bottom of the colour scale (same unit as ``value``); the table's minimum when None.
        vmax: Top of the colour scale; the table's maximum when None.
        log: Log colour scale with labelled round ticks; by default for ``tokens_per_j``,
            ``j_per_token`` and ``ratio``.
        cmap: Colour map; viridis, or RdBu when ``center`` is given.
        center: Value at the middle of a diverging scale (1 for a ratio).
        fmt: Format of the cell values (e.g. ``".2f"``).
        cbar_label: Colour-bar label; :data:`LABELS` of ``value`` when None.

    Returns:
        The Axes.

    Raises:
        ValueError: for missing columns or a model absent from the table.

    Used in :doc:`/book/counting` and :doc:`/book/sweet_spots`.
    """
    _check(table, ("model", "n_in", "n_out", value))
    rows = table[table["model"] == model]
    if rows.empty:
        raise ValueError(f"model {model!r} is not in the table; it has {list(dict.fromkeys(table['model']))}")
    grid = _grid(rows, value)
    if ax is None:
        _, ax = plt.subplots(figsize=(PANEL_WIDTH_IN, 4.0))
    log = value in ("tokens_per_j", "j_per_token", "ratio") if log is None else log
    norm = _norm(grid.to_numpy(dtype=float), log, vmin, vmax, center)
    mesh = _draw(ax, grid, norm, cmap or (_DIVERGING if center is not None else _SEQUENTIAL), annot, fmt,
                 fontsize="small")
    if cbar:
        _colorbar(ax.figure, mesh, ax, cbar_label or LABELS.get(value, value))
    ax.set_xlabel(LABELS["n_out"])
    ax.set_ylabel(LABELS["n_in"])
    return ax


def small_multiples(n: int, ncols: int = 1, panel_width: float = PANEL_WIDTH_IN, panel_height: float = 2.7,
                    extra_height: float = 0.9, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels, one per row by default (at most two columns), at most
    :data:`MAX_WIDTH_IN` inches wide.

    One column keeps every panel as wide as a phone shows it; two columns halve the panels.
    Unused slots of the last row are removed. Returns the figure and the ``n`` Axes in reading order.

    Used in :doc:`/book/fitting` (through :func:`heatmaps` and :func:`residuals`).
    """
    if n < 1:
        raise ValueError("small multiples need at least one panel")
    ncols = max(1, min(ncols, n, 2))
    nrows = math.ceil(n / ncols)
    width = min(MAX_WIDTH_IN, ncols * panel_width)
    fig, grid = plt.subplots(nrows, ncols, figsize=(width, nrows * panel_height + extra_height),
                             squeeze=False, layout="constrained", sharey=sharey)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def heatmaps(table: pd.DataFrame, models: Sequence[str] | None = None, value: str = "tokens_per_j",
             ncols: int = 1, log: bool | None = None, cmap: str | None = None, center: float | None = None,
             annot: bool = False, fmt: str | None = None, vmin: float | None = None,
             vmax: float | None = None, titles: dict[str, str] | None = None,
             cbar_label: str | None = None) -> Figure:
    """Small multiples of :func:`heatmap`, one panel per model, on ONE shared colour scale.

    One panel per row by default, each titled with the model's name, the output lengths labelled
    under the last one only; n_in increases upward in every panel; one colour bar, under the
    panels, serves all. The figure is :data:`PANEL_WIDTH_IN` wide: legible at phone width.

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out`` and ``value``.
        models: Panels in reading order; every model of the table when None.
        value: Column to colour by.
        ncols: Columns of panels (1, or 2 for panels half as wide).
        log: Log colour scale; by default for ``tokens_per_j``, ``j_per_token`` and ``ratio``.
        cmap: Colour map; viridis, or RdBu when ``center`` is given.
        center: Middle of a diverging scale (1 for a ratio).
        annot: Write the values in the cells (off by default: small multiples carry no cell labels;
            a single :func:`heatmap` does).
        fmt: Format of the cell values.
        vmin, vmax: Ends of the shared scale; the table's range over the drawn models when None.
        titles: Panel titles by model; :func:`model_label` when None or missing.
        cbar_label: Colour-bar label; :data:`LABELS` of ``value`` when None.

    Returns:
        The Figure.

    Used in :doc:`/book/sweet_spots` and :doc:`/book/comparison`.
    """
    _check(table, ("model", "n_in", "n_out", value))
    order = list(models) if models is not None else list(dict.fromkeys(table["model"]))
    missing = [m for m in order if m not in set(table["model"])]
    if missing:
        raise ValueError(f"model(s) {missing} not in the table")
    shown = table[table["model"].isin(order)]
    log = value in ("tokens_per_j", "j_per_token", "ratio") if log is None else log
    norm = _norm(shown[value].to_numpy(dtype=float), log, vmin, vmax, center)
    cmap = cmap or (_DIVERGING if center is not None else _SEQUENTIAL)
    fig, axes = small_multiples(len(order), ncols)
    n_cols = max(1, min(ncols, len(order), 2))
    mesh = None
    for k, (ax, m) in enumerate(zip(axes, order)):
        mesh = _draw(ax, _grid(shown[shown["model"] == m], value), norm, cmap, annot, fmt, ticksize="medium")
        ax.set_title((titles or {}).get(m, model_label(m)), fontsize="large")
        ax.set_ylabel(LABELS["n_in"] if k % n_cols == 0 else "")
        below = k + n_cols < len(order)
        ax.set_xlabel("" if below else LABELS["n_out"])
        ax.tick_params(axis="x", labelbottom=not below)  # the output lengths once, under each column
    _colorbar(fig, mesh, axes, cbar_label or LABELS.get(value, value), orientation="horizontal")
    return fig


# ----- fits ---------------------------------------------------------------------------------

def correlation_matrix(corr: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """The correlation matrix of fitted coefficients, annotated, on a diverging -1..1 scale.

    Args:
        corr: Square table with coefficient names (``theta0`` ..) as index and columns, such as
            :attr:`energybook.model.fit.FitResult.correlations`.
        ax: Axes to draw on; a new figure when None.

    Used in :doc:`/book/fitting`.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4.2))
    names = [rf"$\theta_{n[-1]}$" if n.startswith("theta") else n for n in corr.index]
    values = corr.to_numpy(dtype=float)[::-1]  # first coefficient at the top, like a table
    grid = pd.DataFrame(values, index=range(len(names)), columns=range(len(names)))
    mesh = _draw(ax, grid, Normalize(-1, 1), _DIVERGING, True, ".2f", fontsize="small")
    ax.set_xticks(np.arange(len(names)) + 0.5, names)
    ax.set_yticks(np.arange(len(names)) + 0.5, names[::-1])
    ax.figure.colorbar(mesh, ax=ax, label="correlation of the estimates")
    return ax


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
    return ax
