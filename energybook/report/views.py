"""Views of the measured energy: per output token, per total token, per request, by phase, and
against the power cap; and the heat maps that show them.

Every function takes a tidy measured table, one row per (model, n_in, n_out) point, such as
:func:`energybook.report.analysis.measured_table` returns: ``energy_j`` (joules for the whole
workload of ``n_req`` requests), ``n_in``, ``n_out``, ``n_req`` (tokens, requests) and, where
used, ``duration_s``, ``power_w``, ``power_limit_w``, ``prefill_energy_j``, ``decode_energy_j``.

The three views of one measurement (the study divides by output tokens only):

* joules per output token, ``E / (n_req n_out)``;
* joules per total token, ``E / (n_req (n_in + n_out))``;
* joules per request, ``E / n_req``.

Used in :doc:`/book/views`, :doc:`/book/physics`, :doc:`/book/worked_example` and :doc:`/book/explore`.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize

from energybook.report.plot_style import stamp_source

logger = logging.getLogger(__name__)

#: The three views: column -> (human label with unit, scale to that unit from joules).
VIEWS = {
    "j_per_output_token": ("energy per output token (mJ)", 1e3),
    "j_per_total_token": ("energy per input or output token (mJ)", 1e3),
    "j_per_request": ("energy per request (J)", 1.0),
}

#: Axis labels of the heat maps (lowercase, with units).
N_IN_LABEL = "input length n_in (tokens)"
N_OUT_LABEL = "output length n_out (tokens)"


def _need(table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; it needs {list(columns)}")
    if table.empty:
        raise ValueError("the table is empty")


def energy_views(table: pd.DataFrame) -> pd.DataFrame:
    """The three views of every measured point.

    Args:
        table: Tidy measured table with ``model``, ``n_in``, ``n_out``, ``n_req`` and ``energy_j``.

    Returns:
        One row per point: ``model``, ``n_in``, ``n_out``, ``n_req``, ``energy_j`` (joules, all
        requests), ``j_per_output_token``, ``j_per_total_token``, ``j_per_request`` (joules) and
        ``tokens_per_j`` (output tokens per joule), sorted by model, n_in, n_out.

    Used in :doc:`/book/views` and :doc:`/book/explore`.
    """
    _need(table, ("model", "n_in", "n_out", "n_req", "energy_j"))
    t = table[["model", "n_in", "n_out", "n_req", "energy_j"]].copy()
    t["n_in"] = t["n_in"].astype(int)
    t["n_out"] = t["n_out"].astype(int)
    t["n_req"] = t["n_req"].astype(int)
    t["energy_j"] = t["energy_j"].astype(float)
    if (t["energy_j"] <= 0).any() or (t["n_req"] <= 0).any():
        raise ValueError("energies and request counts must be positive")
    t["j_per_request"] = t["energy_j"] / t["n_req"]
    t["j_per_output_token"] = t["j_per_request"] / t["n_out"]
    t["j_per_total_token"] = t["j_per_request"] / (t["n_in"] + t["n_out"])
    t["tokens_per_j"] = 1 / t["j_per_output_token"]
    return t.sort_values(["model", "n_in", "n_out"]).reset_index(drop=True)


#: Suffixes that tell measured and predicted entries apart where both are shown (the explorer).
MEASURED, PREDICTED = " (measured)", " (predicted)"


def predicted_table(models=None, calibration=None, n_in=None, n_out=None, n_req: int = 1000,
                    max_batch: int = 1024) -> pd.DataFrame:
    """The physical model's prediction of a grid for any architectures: a table :func:`energy_views` reads.

    Each point is :func:`energybook.model.physics.predict` at the engine's KV-memory batch rule under
    ``max_batch``, with the interval of the model error only (no parameter draws: fast enough for a book build).

    Args:
        models: Architecture names or :class:`~energybook.model.architecture.Architecture` objects (default: the
            study's 13, in its order).
        calibration: A :class:`~energybook.model.physics.Calibration` (default: the shipped H100 one).
        n_in: Prompt lengths (default the study's grid, 64-4096).
        n_out: Output lengths (default the same).
        n_req: Requests per point.
        max_batch: The engine's batch cap (requests).

    Returns:
        One row per point: ``model``, ``n_in``, ``n_out``, ``n_req``, ``batch``, ``energy_j``, ``energy_low_j``,
        ``energy_high_j`` (joules, all requests) and ``duration_s``.

    Used in :doc:`/book/explore`.
    """
    from energybook.model import architecture as A
    from energybook.model import complexity as C
    from energybook.model import physics as P

    cal = calibration if calibration is not None else P.load_calibration()
    archs = [m if isinstance(m, A.Architecture) else A.load(m) for m in (models or A.STUDY_ORDER)]
    rows = []
    for arch in archs:
        for a in n_in or C.GRID:
            for b in n_out or C.GRID:
                p = P.predict(arch, a, b, max_batch=max_batch, n_req=n_req, calibration=cal, samples=0)
                rows.append(dict(model=arch.name, n_in=a, n_out=b, n_req=n_req, batch=p.batch, energy_j=p.energy_j,
                                 energy_low_j=p.energy_low_j, energy_high_j=p.energy_high_j,
                                 duration_s=p.duration_s))
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ViewPoint:
    """One measured point seen three ways.

    Attributes:
        model: The model.
        n_in: Input length (tokens).
        n_out: Output length (tokens).
        j_per_output_token: Joules per output token.
        j_per_total_token: Joules per input or output token.
        j_per_request: Joules per request.

    Used in :doc:`/book/views`.
    """

    model: str
    n_in: int
    n_out: int
    j_per_output_token: float
    j_per_total_token: float
    j_per_request: float

    @property
    def tokens_per_j(self) -> float:
        """Output tokens per joule (the study's efficiency)."""
        return 1 / self.j_per_output_token


def _row(views: pd.DataFrame, model: str) -> pd.DataFrame:
    rows = views[views["model"] == model]
    if rows.empty:
        raise ValueError(f"model {model!r} is not in the table; it has {list(dict.fromkeys(views['model']))}")
    return rows


def _as_point(r: pd.Series) -> ViewPoint:
    return ViewPoint(str(r["model"]), int(r["n_in"]), int(r["n_out"]), float(r["j_per_output_token"]),
                     float(r["j_per_total_token"]), float(r["j_per_request"]))


def point(views: pd.DataFrame, model: str, n_in: int, n_out: int) -> ViewPoint:
    """The three views of one point of :func:`energy_views`.

    Raises:
        ValueError: when the point was not measured.
    """
    rows = _row(views, model)
    hit = rows[(rows["n_in"] == n_in) & (rows["n_out"] == n_out)]
    if hit.empty:
        raise ValueError(f"{model} has no measured point ({n_in}, {n_out})")
    return _as_point(hit.iloc[0])


def best(views: pd.DataFrame, model: str, view: str = "j_per_output_token") -> ViewPoint:
    """The point with the lowest energy in one view (the study's sweet spot for the default)."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {list(VIEWS)}")
    rows = _row(views, model)
    return _as_point(rows.loc[rows[view].idxmin()])


def worst(views: pd.DataFrame, model: str, view: str = "j_per_output_token") -> ViewPoint:
    """The point with the highest energy in one view."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {list(VIEWS)}")
    rows = _row(views, model)
    return _as_point(rows.loc[rows[view].idxmax()])


def rises_with_n_out(views: pd.DataFrame, view: str = "j_per_request") -> pd.DataFrame:
    """Whether a view rises strictly with the output length at every input length.

    Returns:
        One row per (model, n_in): ``rises`` (bool), ``lowest`` and ``highest`` (the view at
        the shortest and longest output, joules).

    Used in :doc:`/book/views`.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {list(VIEWS)}")
    rows = []
    for (model, n_in), g in views.groupby(["model", "n_in"], sort=True):
        v = g.sort_values("n_out")[view].to_numpy()
        rows.append(dict(model=model, n_in=int(n_in), rises=bool(np.all(np.diff(v) > 0)), lowest=float(v[0]),
                         highest=float(v[-1])))
    return pd.DataFrame(rows)


def phase_split(table: pd.DataFrame) -> pd.DataFrame:
    """The prefill and decode parts of every point's energy.

    Returns:
        ``model``, ``n_in``, ``n_out``, ``prefill_energy_j``, ``decode_energy_j`` (joules, all
        requests) and ``prefill_share`` (prefill over prefill + decode, 0..1).

    Used in :doc:`/book/physics`.
    """
    _need(table, ("model", "n_in", "n_out", "prefill_energy_j", "decode_energy_j"))
    t = table[["model", "n_in", "n_out", "prefill_energy_j", "decode_energy_j"]].copy()
    t["prefill_share"] = t["prefill_energy_j"] / (t["prefill_energy_j"] + t["decode_energy_j"])
    return t.sort_values(["model", "n_in", "n_out"]).reset_index(drop=True)


def cap_estimate(table: pd.DataFrame) -> pd.DataFrame:
    """Joules per output token against the power cap times seconds per output token.

    At a power cap ``P`` (watts) a workload that takes ``t`` seconds per output token spends at
    most ``P t`` joules per output token; when the GPU runs near its cap the measured value is
    close to that. ``power_w`` is the mean power over the measured window (energy / time).

    Returns:
        ``model``, ``n_in``, ``n_out``, ``power_w``, ``power_limit_w`` (watts),
        ``s_per_token`` (seconds per output token), ``j_per_token`` (measured joules per output
        token), ``cap_j_per_token`` (``power_limit_w * s_per_token``), ``tokens_per_j`` and
        ``cap_tokens_per_j`` (their inverses) and ``of_cap`` (``power_w / power_limit_w``,
        equal to ``j_per_token / cap_j_per_token``).

    Used in :doc:`/book/physics` and :doc:`/book/worked_example`.
    """
    _need(table, ("model", "n_in", "n_out", "n_req", "energy_j", "duration_s", "power_w", "power_limit_w"))
    t = table[["model", "n_in", "n_out", "power_w", "power_limit_w"]].copy()
    tokens = table["n_req"].astype(float) * table["n_out"].astype(float)
    t["s_per_token"] = table["duration_s"] / tokens
    t["j_per_token"] = table["energy_j"] / tokens
    t["cap_j_per_token"] = t["power_limit_w"] * t["s_per_token"]
    t["tokens_per_j"] = 1 / t["j_per_token"]
    t["cap_tokens_per_j"] = 1 / t["cap_j_per_token"]
    t["of_cap"] = t["power_w"] / t["power_limit_w"]
    return t.sort_values(["model", "n_in", "n_out"]).reset_index(drop=True)


# ----- figures ------------------------------------------------------------------------
def log_ticks(vmin: float, vmax: float) -> list[float]:
    """Ticks 1, 2, 5 times powers of ten between ``vmin`` and ``vmax`` (for log colour bars).

    When fewer than two such ticks fall inside, the ends themselves are returned.
    """
    if not (vmin > 0 and vmax > vmin):
        raise ValueError(f"need 0 < vmin < vmax, got {vmin}, {vmax}")
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(vmin)) - 1, math.ceil(math.log10(vmax)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if vmin * (1 - 1e-9) <= t <= vmax * (1 + 1e-9)]
    return inside if len(inside) >= 2 else [vmin, vmax]


def tick_label(v: float) -> str:
    """A plain tick label: ``0.5``, ``2``, ``50``, ``1000`` (no powers of ten)."""
    return f"{v:g}" if v < 1e5 else f"{v:,.0f}"


def short_number(v: float) -> str:
    """A cell label of two or three digits: ``312``, ``89``, ``9.2``, ``0.53`` (no powers of ten)."""
    if v >= 10:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _formatter(fmt):
    return fmt if callable(fmt) else fmt.format


def grid_heatmap(ax: Axes, table: pd.DataFrame, value: str, norm: Normalize, cmap: str = "viridis",
                 scale: float = 1.0, fmt=short_number, annotate: bool = True, mark: list[tuple[int, int]] | None = None,
                 fontsize: float = 9.0):
    """One heat map of a value over the (n_in, n_out) grid, n_in increasing upward.

    Args:
        ax: Axes to draw on.
        table: Tidy table with ``n_in``, ``n_out`` and ``value`` for one model.
        value: Column to colour by.
        norm: Colour normalisation (shared by panels that are compared), in the scaled unit.
        cmap: A colour-blind-safe colour map (``viridis``, ``cividis``).
        scale: Factor applied to the value before colouring and annotating (e.g. 1e3 for mJ).
        fmt: Format of the cell annotations: a format string (``"{:.0f}"``) or a function.
        annotate: Write the value in every cell.
        mark: (n_in, n_out) cells to outline.
        fontsize: Annotation size (points).

    Returns:
        The image, for a colour bar.

    Used in :doc:`/book/views` and :doc:`/book/physics`.
    """
    _need(table, ("n_in", "n_out", value))
    grid = table.pivot_table(index="n_in", columns="n_out", values=value).sort_index().sort_index(axis=1)
    data = grid.to_numpy() * scale
    image = ax.imshow(data, origin="lower", cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=90)
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    ax.grid(False)
    if annotate:
        cm = plt.get_cmap(cmap)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = data[i, j]
                if not np.isfinite(v):
                    continue
                r, g, b, _ = cm(norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, _formatter(fmt)(v), ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
    for n_in, n_out in mark or []:
        i, j = list(grid.index).index(n_in), list(grid.columns).index(n_out)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d55e00", linewidth=2.2))
    stamp_source(ax, table)  # measured tables name their GPUs and engines; predictions carry none
    return image


def shared_log_norm(tables: list[pd.DataFrame], value: str, scale: float = 1.0) -> LogNorm:
    """One log colour scale covering ``value`` (times ``scale``) in every table."""
    values = np.concatenate([t[value].to_numpy(dtype=float) * scale for t in tables])
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        raise ValueError(f"no positive values of {value!r} to scale")
    return LogNorm(vmin=float(values.min()), vmax=float(values.max()))


def log_colorbar(fig, image, axes, label: str, **kwargs):
    """A log colour bar with ticks at 1, 2, 5 x 10^k, labelled in plain numbers."""
    if axes is not None:
        kwargs["ax"] = axes
    cbar = fig.colorbar(image, **kwargs)
    norm = image.norm
    ticks = log_ticks(norm.vmin, norm.vmax)
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([tick_label(t) for t in ticks])
    cbar.minorticks_off()
    cbar.set_label(label)
    return cbar


def table_html(table: pd.DataFrame, formats: dict[str, str] | None = None, caption: str | None = None,
               source=None) -> str:
    """A small table as HTML in a container that scrolls sideways on its own, never the page.

    Args:
        table: The rows to show (the index is left out).
        formats: Column -> format string (``"{:.1f}"``) for numbers.
        caption: Optional caption above the table.
        source: Where its numbers were measured (what :func:`energybook.report.provenance.source_line`
            takes), written under the table; the table's own ``attrs`` when None (nothing for a table of
            predictions, which carries none).

    Used in :doc:`/book/views`, :doc:`/book/physics` and :doc:`/book/worked_example`.
    """
    formats = formats or {}
    shown = table.copy()
    for column, fmt in formats.items():
        shown[column] = [fmt.format(v) for v in shown[column]]
    body = shown.to_html(index=False, escape=True, border=0, classes="eb-table")
    if caption:
        head, rest = body.split(">", 1)
        body = f"{head}><caption>{html.escape(caption)}</caption>{rest}"
    from energybook.report.provenance import source_line

    line = source_line(table if source is None else source)
    if line:
        body += f'<p class="eb-source" style="font-size:0.8em;color:#666">{html.escape(line)}</p>'
    return f'<div class="eb-table-scroll" style="overflow-x:auto;max-width:100%">{body}</div>'


def heatmap_panels(panels: dict[str, pd.DataFrame], value: str, norm: Normalize, label: str, cmap: str = "viridis",
                   scale: float = 1.0, fmt=short_number, marks: dict[str, list[tuple[int, int]]] | None = None,
                   fontsize: float = 9.0, panel_size: tuple[float, float] = (4.6, 3.0)):
    """Small multiples of :func:`grid_heatmap` on one colour scale, one panel per row.

    One panel per row keeps the figure as wide as one panel (4.6 inches by default), so that on a
    phone, whose text column is about 340 CSS pixels wide, the figure is shown at no less than 0.6
    of its size and the cell labels stay legible. Every panel has its title (a single panel has none);
    every panel labels its input lengths, the output lengths are labelled under the last one, and one
    horizontal colour bar under the panels serves all. A log norm gets 1-2-5 ticks in plain numbers.

    Args:
        panels: Panel title -> tidy table of one model (``n_in``, ``n_out``, ``value``).
        value: Column to colour by.
        norm: The shared colour scale, in the scaled unit.
        label: Colour-bar label (lowercase, with the unit).
        cmap: A colour-blind-safe colour map.
        scale: Factor from the column's unit to the shown unit.
        fmt: Format of the cell annotations (a format string or a function).
        marks: Panel title -> cells to outline.
        fontsize: Annotation size (points).
        panel_size: Width and height of one panel (inches); the width is the figure's.

    Returns:
        The matplotlib Figure.

    Used in :doc:`/book/physics` and :doc:`/book/views`.
    """
    if not panels:
        raise ValueError("no panels to draw")
    n = len(panels)
    fig, axes = plt.subplots(n, 1, figsize=(panel_size[0], panel_size[1] * n + 0.9), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    column = list(axes[:, 0])
    image = None
    for k, (title, table) in enumerate(panels.items()):
        ax = column[k]
        image = grid_heatmap(ax, table, value, norm, cmap=cmap, scale=scale, fmt=fmt, fontsize=fontsize,
                             mark=(marks or {}).get(title))
        if n > 1:  # a single panel has no title: the caption says what it shows
            ax.set_title(title, fontsize="medium")
        ax.tick_params(axis="x", labelrotation=0, labelsize="small", labelbottom=k == n - 1)
        ax.tick_params(axis="y", labelsize="small")
        ax.set_xlabel(N_OUT_LABEL if k == n - 1 else "")
        ax.set_ylabel(N_IN_LABEL)
    where = dict(location="bottom", aspect=30, pad=0.01)
    if isinstance(norm, LogNorm):
        log_colorbar(fig, image, column, label, **where)
    else:
        cbar = fig.colorbar(image, ax=column, **where)
        cbar.set_label(label)
    return fig
