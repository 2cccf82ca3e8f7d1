"""The plot style of the book and the figures it reuses.

One seaborn theme for every page (:func:`set_theme`), and the study's two kinds of figure:
efficiency curves, output tokens per joule against the output length at a fixed input
length (:func:`efficiency_curves`), and heat maps of the efficiency over the (n_in, n_out)
grid (:func:`heatmap`). Every function takes a tidy table with the columns ``model``,
``n_in``, ``n_out`` (tokens) and ``tokens_per_j`` (output tokens per joule), such as
:func:`energybook.model.paper.paper_surfaces` returns, and gives back the matplotlib Axes it drew on.
Figures carry no title: the page's caption says what they show.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, NullLocator

logger = logging.getLogger(__name__)

#: Axis labels shared by every figure (lowercase, with units).
LABELS = {
    "n_in": "input length n_in (tokens)",
    "n_out": "output length n_out (tokens)",
    "tokens_per_j": "efficiency (output tokens per joule)",
    "j_per_token": "energy per output token (J)",
    "normalised": "normalised efficiency (0 = worst, 1 = best point)",
    "difference_pct": "difference from the energy counter (%)",
}


def set_theme(context: str = "notebook") -> None:
    """Set the book's one plot theme (seaborn whitegrid, colour-blind palette).

    Args:
        context: seaborn context (``"notebook"``, ``"paper"``, ``"talk"``).

    Used in :doc:`/book/counting`.
    """
    sns.set_theme(context=context, style="whitegrid", palette="colorblind",
                  rc={"figure.figsize": (7.0, 4.2), "figure.dpi": 100, "savefig.bbox": "tight",
                      "axes.titlesize": "medium"})


def _check(table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; it needs {list(columns)}")
    if table.empty:
        raise ValueError("the table is empty: nothing to plot")


def _log2_axis(ax: Axes, values, axis: str = "x") -> None:
    """A log2 axis with a tick at every grid value, labelled in plain tokens."""
    ticks = sorted({int(v) for v in values})
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    setter("log", base=2)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)([str(t) for t in ticks])


def efficiency_curves(table: pd.DataFrame, n_in: int = 64, ax: Axes | None = None,
                      y: str = "tokens_per_j", models: list[str] | None = None) -> Axes:
    """Efficiency against output length at one input length, one line per model.

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out`` (tokens) and ``y``.
        n_in: Input length whose row of the grid is drawn (tokens).
        ax: Axes to draw on; a new figure when None.
        y: Column on the vertical axis, ``tokens_per_j`` (output tokens per joule) or
            ``j_per_token`` (joules per output token).
        models: Models to draw, in legend order; all models of the table when None.

    Returns:
        The Axes, with a log2 output-length axis.

    Raises:
        ValueError: for missing columns or an input length absent from the table.

    Used in :doc:`/book/counting`.
    """
    _check(table, ("model", "n_in", "n_out", y))
    rows = table[table["n_in"] == n_in]
    if rows.empty:
        raise ValueError(f"no rows with n_in = {n_in}; the table has n_in in {sorted(table['n_in'].unique())}")
    order = models if models is not None else list(dict.fromkeys(rows["model"]))
    if ax is None:
        _, ax = plt.subplots()
    palette = sns.color_palette("colorblind", n_colors=10)
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    for i, model in enumerate(order):
        curve = rows[rows["model"] == model].sort_values("n_out")
        ax.plot(curve["n_out"], curve[y], marker=markers[i % len(markers)], markersize=4,
                color=palette[i % len(palette)], linestyle="-" if i < len(palette) else "--", label=model)
    _log2_axis(ax, rows["n_out"], "x")
    ax.set_xlabel(LABELS["n_out"])
    ax.set_ylabel(LABELS.get(y, y))
    ax.legend(fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def heatmap(table: pd.DataFrame, model: str, ax: Axes | None = None, value: str = "tokens_per_j",
            annot: bool = True, cbar: bool = True, vmin: float | None = None,
            vmax: float | None = None) -> Axes:
    """Heat map of one model's efficiency over the (n_in, n_out) grid.

    Rows are input lengths (shortest at the top), columns output lengths.

    Args:
        table: Tidy table with ``model``, ``n_in``, ``n_out`` (tokens) and ``value``.
        model: The model to draw (a value of the ``model`` column).
        ax: Axes to draw on; a new figure when None.
        value: Column to colour by, ``tokens_per_j`` by default.
        annot: Write the value in every cell.
        cbar: Draw the colour bar.
        vmin: Bottom of the colour scale (same unit as ``value``); the table's minimum when None.
        vmax: Top of the colour scale; the table's maximum when None.

    Returns:
        The Axes.

    Raises:
        ValueError: for missing columns or a model absent from the table.

    Used in :doc:`/book/counting`.
    """
    _check(table, ("model", "n_in", "n_out", value))
    rows = table[table["model"] == model]
    if rows.empty:
        raise ValueError(f"model {model!r} is not in the table; it has {list(dict.fromkeys(table['model']))}")
    grid = rows.pivot_table(index="n_in", columns="n_out", values=value).sort_index().sort_index(axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 5.0))
    fmt = ".1f" if np.nanmax(grid.to_numpy()) < 1000 else ".0f"
    sns.heatmap(grid, ax=ax, annot=annot, fmt=fmt, cmap="viridis", vmin=vmin, vmax=vmax, cbar=cbar,
                annot_kws={"fontsize": "x-small"},
                cbar_kws={"label": LABELS.get(value, value)} if cbar else None)
    ax.set_xlabel(LABELS["n_out"])
    ax.set_ylabel(LABELS["n_in"])
    ax.tick_params(axis="y", rotation=0)
    return ax
