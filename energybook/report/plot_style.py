"""The plot style of the book: theme, labels, ticks and axes, model colours and markers.

One seaborn theme for every page (:func:`set_theme`); figures at most :data:`MAX_WIDTH_IN` inches wide;
log axes and colour bars with labelled ticks in plain numbers (:func:`log_ticks`); one colour per model
family and one marker and line style per member (:func:`model_styles`); human labels for models,
formulas and axes (:func:`model_label`, :func:`formula_label`, :data:`LABELS`); the footer that names the
GPUs (name and UUID) and engines behind a figure's measurements (:func:`stamp_source`). The figures of
:mod:`energybook.report.plot` and :mod:`energybook.report.plot_grids` draw with these; import them
from :mod:`energybook.report.plot`.

Used in :doc:`/book/counting`, :doc:`/book/fitting`, :doc:`/book/sweet_spots` and
:doc:`/book/comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure, _stale_figure_callback
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, NullLocator
from matplotlib.transforms import IdentityTransform

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



# ----- where the measurements come from -----------------------------------------------------

#: Gap between a figure's drawing and its source footer (points).
_FOOTER_GAP_PT = 4.0


class SourceFooter(Text):
    """The footer naming where a figure's measurements come from (:func:`stamp_source`).

    It places itself, whenever the figure is drawn or measured, under everything else the figure holds (axes
    with their labels and legends, colour bars, figure legends, other texts), so that it never overlaps them
    whatever was drawn after it; the book saves figures with a tight bounding box, which takes it in.

    Attributes:
        sources: The :class:`energybook.report.provenance.Source` records the line names.
    """

    def __init__(self, sources, **kwargs):
        super().__init__(0.5, 0.0, "", **kwargs)
        self.sources: list = []
        self.add(sources)

    def add(self, sources) -> None:
        """Name these records too (each once)."""
        from energybook.report.provenance import source_line

        self.sources = list(dict.fromkeys([*self.sources, *sources]))
        self.set_text(_wrap(source_line(self.sources), self.figure))

    def _place(self, renderer) -> None:
        fig = self.figure
        if fig is None or renderer is None:
            return
        boxes = [a.get_tightbbox(renderer) for a in fig.axes if a.get_visible()]
        boxes += [a.get_window_extent(renderer) for a in [*fig.legends, *fig.texts]
                  if a is not self and a.get_visible() and not (isinstance(a, Text) and not a.get_text())]
        boxes = [b for b in boxes if b is not None and b.height > 0 and b.width > 0]
        # In display pixels, which a tight bounding box (the book's savefig setting) shifts with the rest.
        bottom = min(b.y0 for b in boxes) if boxes else fig.bbox.y0
        left = min(b.x0 for b in boxes) if boxes else fig.bbox.x0
        right = max(b.x1 for b in boxes) if boxes else fig.bbox.x1
        self.set_transform(IdentityTransform())
        self.set_position(((left + right) / 2, bottom - _FOOTER_GAP_PT * fig.dpi / 72))

    def draw(self, renderer) -> None:
        self._place(renderer)
        super().draw(renderer)

    def get_window_extent(self, renderer=None, dpi=None):
        fig = self.figure
        self._place(renderer if renderer is not None else (fig._get_renderer() if fig is not None else None))
        return super().get_window_extent(renderer, dpi)


def _wrap(line: str, fig: Figure | None) -> str:
    """The line broken between its GPUs (and within one when still too wide) to the figure's width."""
    import textwrap

    width = int((fig.get_figwidth() if fig is not None else MAX_WIDTH_IN) * 14)  # x-small characters per inch
    parts = line.split("; ")
    lines = [p + (";" if i < len(parts) - 1 else "") for i, p in enumerate(parts)]
    return "\n".join(textwrap.fill(p, width, break_on_hyphens=False) for p in lines)


def _figure_of(target) -> Figure:
    if isinstance(target, Figure):
        return target
    fig = getattr(target, "figure", None)
    if fig is None:
        raise TypeError(f"cannot stamp a {type(target).__name__}: pass a matplotlib Figure or Axes")
    return fig.get_figure(root=True) if hasattr(fig, "get_figure") else fig


def source_footer(target) -> SourceFooter | None:
    """The source footer of a figure (or of an Axes' figure), None when it has none."""
    fig = _figure_of(target)
    return next((t for t in fig.texts if isinstance(t, SourceFooter)), None)


def stamp_source(target, source, models=None) -> SourceFooter | None:
    """Stamp a figure with the line naming the GPUs (name and UUID) and engines of its measurements.

    A small grey footer under everything the figure holds (:class:`SourceFooter`), with
    :func:`energybook.report.provenance.source_line`'s text. Stamping again adds to the same footer, so a
    figure drawn by several functions names every source once. The plotting functions of
    :mod:`energybook.report.plot` stamp their figures themselves from a table that carries its sources
    (:func:`energybook.report.analysis.measured_table`); a page stamps a figure it draws itself, or one drawn
    from a derived table.

    Args:
        target: A matplotlib Figure, or an Axes of it.
        source: Where the figure's measurements come from: runs, a measured table, sidecars or records
            (what :func:`energybook.report.provenance.measurement_sources` takes).
        models: Name only these models' sources; by default a table's own models.

    Returns:
        The footer, or None when ``source`` names no measurement (nothing is stamped).

    Used in every page with figures of measurements, e.g. :doc:`/book/sweet_spots`.
    """
    from energybook.report.provenance import measurement_sources

    found = measurement_sources(source, models)
    fig = _figure_of(target)
    footer = source_footer(fig)
    if not found:
        return footer
    if footer is None:
        footer = SourceFooter([], ha="center", va="top", fontsize="x-small", color="#666666",
                              transform=fig.transFigure)
        footer.set_figure(fig)
        footer.stale_callback = _stale_figure_callback
        fig.texts.append(footer)
        footer._remove_method = fig.texts.remove
    footer.add(found)
    fig.stale = True
    return footer
