"""Heat maps of a value over the (n_in, n_out) grid, their small multiples, and the coefficients'
correlation matrix.

n_in increases upward everywhere; :func:`heatmap` draws one panel with its cells labelled,
:func:`heatmaps` one panel per model on one shared colour scale. Import them from
:mod:`energybook.report.plot`.

Used in :doc:`/book/fitting`, :doc:`/book/sweet_spots` and :doc:`/book/comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from energybook.report.plot_style import (
    _DIVERGING,
    _SEQUENTIAL,
    LABELS,
    MAX_WIDTH_IN,
    PANEL_WIDTH_IN,
    _check,
    _label_log_colorbar,
    model_label,
    stamp_source,
)

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


def annotation_color(rgba) -> str:
    """The colour of a cell's label on a cell of colour ``rgba``: black on light cells (the yellow top of
    viridis, the pale middle of RdBu), white on dark ones (its purple bottom, the deep ends of RdBu).

    A cell is dark when its luma (ITU-R BT.601 weights: 0.299 R + 0.587 G + 0.114 B) is below one half.
    """
    r, g, b = (float(c) for c in tuple(rgba)[:3])
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


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
                ax.text(j + 0.5, i + 0.5, _annotation(v, fmt), ha="center", va="center", fontsize=fontsize,
                        color=annotation_color(mesh.cmap(mesh.norm(v))))
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
    stamp_source(ax, table, models=[model])
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
    stamp_source(fig, table, models=order)
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
    stamp_source(ax, corr)  # a fit's correlations name the measurements fitted when they carry them
    return ax
