"""Provenance reports: what was measured, where, when and how, as tables for the book.

Reads the results files under ``data/measured/`` with :func:`energybook.store.results.load_measured`
(which checks every file's sha256 against its sidecar and refuses test data) and turns their
provenance sidecars into tidy tables: one row per measured run (:func:`run_table`), the software
and engine settings of each run (:func:`environment_table`), the protocol (:func:`protocol_table`),
and the package versions of the build itself (:func:`versions`). :func:`method_summary` condenses
the per-point difference of the power integrations from the energy counter, and
:func:`replay_meter` rebuilds the meter's :class:`energybook.measure.timeline.Timeline` from a recorded
(or illustrative) timeline, so that its integration rules can be shown without a GPU.

The folder read is the workspace's ``measured/`` (:class:`energybook.store.workspace.Workspace`):
``data/measured/`` in a checkout, or the folder named by ``ENERGYBOOK_DATA`` (to preview your own
GPU's results before copying them in).

Narrow views for pages read on a phone: :func:`run_summary` (one short row per run),
:func:`shared_settings` and :func:`run_differences` (what all runs share, and only what differs),
:func:`run_commands`, and :func:`scroll_table`, which puts any wide table in a box that scrolls
sideways instead of widening the page. :func:`short_window_cells` and :func:`checked_points` show
which grid points have the shortest energy windows and whether a complete run checked them;
:func:`tick_period_s` reads the energy counter's update period off the measured windows.

:func:`clean_measurement_notebook` tidies an executed measurement notebook for the book without
touching a measured number: it drops stderr outputs and progress bars, scrubs local paths, hides
papermill's parameter cells and plumbing code, adds the figure's name and alt text, wraps wide
tables, and puts a note with the page's GPU-minutes (:func:`measurement_note`) under its title;
:func:`redraw_measurement_figures` redraws a page's heat map from its committed data with the book's
plotting code (:func:`measurement_heatmap`, what the template's heat-map cell runs).

Used in :doc:`/book/experiment`, :doc:`/book/instruments`, :doc:`/book/reproduce`,
:doc:`/book/status` and :doc:`/book/intro`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import platform
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from energybook.store import results as R
from energybook.store.catalog import measured_dir, measured_runs, measured_table, result_files  # noqa: F401
from energybook.store.workspace import checkout_root
from energybook.store.writer import file_gpus

logger = logging.getLogger(__name__)

#: Packages whose versions the status page reports (distribution names).
PACKAGES = ("energybook", "numpy", "pandas", "scipy", "lmfit", "seaborn", "matplotlib", "jupyter-book", "sphinx",
            "myst-nb", "myst-parser", "sphinx-book-theme")


def _shown_path(path: str | Path) -> str:
    """A results path relative to its checkout (no home folders on a published page)."""
    path = Path(path).resolve()
    root = checkout_root(path)
    return str(path.relative_to(root)) if root is not None else path.name


def _date(prov: dict[str, Any]) -> str:
    runs = prov.get("runs") or []
    first = (runs[0].get("started_at") if runs else None) or prov.get("started_at") or ""
    return str(first)[:10]


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def measuring_minutes(prov: dict[str, Any]) -> float:
    """GPU time spent measuring a file's points (minutes).

    The sidecar's own ``measuring_minutes`` where the sweeps recorded it (every group's wall time with its
    warm-up and cool-down, summed over runs and ranks). For older files, from the point log: the points of one
    group share a start, so each group counts from its start (warm-up included) to its last point's finish.
    Model loading and the pauses between calls are left out. NaN when the point log has no times."""
    recorded = prov.get("measuring_minutes")
    if isinstance(recorded, (int, float)) and recorded > 0:
        return float(recorded)
    groups: dict[str, datetime] = {}
    for info in (prov.get("points") or {}).values():
        start, end = _time(info.get("started_at")), _time(info.get("finished_at"))
        if start is None or end is None:
            continue
        key = info["started_at"]
        groups[key] = max(groups.get(key, end), end)
    if not groups:
        return float("nan")
    return sum((end - _time(start)).total_seconds() for start, end in groups.items()) / 60


def gpu_uuids(prov: dict[str, Any], data: pd.DataFrame | None = None) -> list[str]:
    """The UUIDs of the GPUs that measured a file (:func:`energybook.store.writer.file_gpus`) and, when ``data`` is
    given, its rows' ``gpu_uuid``, each once, in the order the runs used them."""
    found = file_gpus(prov)
    if data is not None and "gpu_uuid" in getattr(data, "columns", ()):
        found += [str(u) for u in data["gpu_uuid"].dropna() if str(u).strip() and str(u) != "nan"]
    return list(dict.fromkeys(found))


def gpu_count(prov: dict[str, Any]) -> int:
    """How many distinct GPUs (by UUID) the runs of a file used (:func:`gpu_uuids`)."""
    return len(gpu_uuids(prov))


def _engine(prov: dict[str, Any]) -> dict[str, Any]:
    eng = prov.get("engine")
    return eng if isinstance(eng, dict) else {"engine": eng}


def run_table(runs: list[R.MeasuredRun]) -> pd.DataFrame:
    """One row per measured run: model, GPU, driver, date, engine, weights, dtype, meter, protocol,
    rows, measuring minutes (:func:`measuring_minutes`), GPUs used, and whether the CSV's sha256 matches
    its sidecar."""
    rows = []
    for r in runs:
        p = r.provenance
        proto = p.get("protocol", {}) or {}
        grid = f"{len(proto.get('n_in', []))}x{len(proto.get('n_out', []))}"
        rows.append({
            "model": p.get("model", "?"), "gpu": p.get("gpu", "?"), "driver": p.get("driver", "?"),
            "date": _date(p), "engine": _engine(p).get("engine", "?"), "weights": p.get("weights", "?"),
            "dtype": p.get("dtype", "?"), "meter": p.get("meter_method", "?"),
            "protocol": f"{proto.get('mode', '?')}, grid {grid}, n_req {proto.get('n_req', '?')}, "
                        f"max_batch {proto.get('max_batch', '?')}",
            "rows": len(r.data), "measuring (min)": round(measuring_minutes(p), 1), "GPUs": gpu_count(p),
            "sha256 ok": R.sha256_file(r.path) == p.get("sha256"),
            "file": _shown_path(r.path),
        })
    return pd.DataFrame(rows)


#: Provenance fields shown by :func:`environment_table`, (label, getter) pairs.
_ENV_FIELDS = [
    ("GPU", lambda p, e: p.get("gpu")),
    ("driver", lambda p, e: p.get("driver")),
    ("power limit (W)", lambda p, e: p.get("power_limit_w")),
    ("CUDA", lambda p, e: p.get("cuda")),
    ("torch", lambda p, e: p.get("torch")),
    ("transformers", lambda p, e: p.get("transformers")),
    ("energybook", lambda p, e: p.get("energybook")),
    ("python", lambda p, e: p.get("python")),
    ("engine", lambda p, e: e.get("engine")),
    ("weights", lambda p, e: p.get("weights", e.get("weights"))),
    ("dtype", lambda p, e: p.get("dtype", e.get("dtype"))),
    ("attention", lambda p, e: e.get("attention")),
    ("KV cache", lambda p, e: e.get("kv_cache")),
    ("decode CUDA graphs", lambda p, e: e.get("decode_graphs")),
    ("graph max batch", lambda p, e: e.get("graph_max_batch")),
    ("graph attention", lambda p, e: e.get("graph_attention")),
    ("max batch", lambda p, e: e.get("max_batch")),
    ("memory fraction", lambda p, e: e.get("memory_fraction")),
    ("prefill chunk (tokens)", lambda p, e: e.get("prefill_tokens")),
    ("positions extended", lambda p, e: e.get("max_position_embeddings_extended")),
    ("meter", lambda p, e: p.get("meter_method")),
]


def environment_table(runs: list[R.MeasuredRun]) -> pd.DataFrame:
    """Software, device and engine settings of every run: one column per run, one row per field."""
    cols = {}
    for r in runs:
        p = r.provenance
        e = _engine(p)
        label = f"{p.get('model', '?')} ({Path(r.path).stem})"
        cols[label] = {name: _text(get(p, e)) for name, get in _ENV_FIELDS}
    return pd.DataFrame(cols)


#: Protocol fields shown by :func:`protocol_table`, in order.
_PROTOCOL_FIELDS = ["n_req", "max_batch", "mode", "repeats", "min_window_s", "warmup_steps", "cooldown_s", "seed",
                    "wave_counting", "prefix_checkpoints", "note"]


def protocol_table(runs: list[R.MeasuredRun]) -> pd.DataFrame:
    """The measurement protocol of every run: one column per run, one row per protocol field."""
    cols = {}
    for r in runs:
        proto = r.provenance.get("protocol", {}) or {}
        label = f"{r.provenance.get('model', '?')} ({Path(r.path).stem})"
        cols[label] = {k: _text(proto.get(k)) for k in _PROTOCOL_FIELDS}
        cols[label]["grid (n_in x n_out)"] = _text(f"{proto.get('n_in')} x {proto.get('n_out')}")
        cols[label]["command"] = _text(r.provenance.get("command"))
    return pd.DataFrame(cols)


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def versions(packages: tuple[str, ...] = PACKAGES) -> pd.DataFrame:
    """Installed versions of ``packages`` and of Python (``"not installed"`` where missing)."""
    rows = [{"package": "python", "version": platform.python_version()}]
    for name in packages:
        try:
            v = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            v = "not installed"
        rows.append({"package": name, "version": v})
    return pd.DataFrame(rows).set_index("package")


def method_difference(table: pd.DataFrame, reference: str = "energy_j",
                      other: str = "energy_j_power500") -> pd.DataFrame:
    """Per point, how far another meter reads from the energy counter: ``(other - ref) / ref`` (%)."""
    missing = [c for c in (reference, other) if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}")
    return table.assign(difference_pct=(table[other] - table[reference]) / table[reference] * 100)


def method_summary(table: pd.DataFrame, others: tuple[str, ...] = ("energy_j_power500", "energy_j_power100"),
                   reference: str = "energy_j") -> pd.DataFrame:
    """Mean, min and max per model of ``(other - reference) / reference`` (%) for each power integration.

    Args:
        table: Measured rows with ``model``, ``reference`` and the ``others`` columns (joules).
        others: Columns of the power integrations to compare.
        reference: Column of the energy counter.

    Returns:
        A table indexed by model with columns ``(method, statistic)``; ``points`` counts the rows used.
    """
    parts = {}
    for other in others:
        d = method_difference(table, reference=reference, other=other).dropna(subset=["difference_pct"])
        g = d.groupby("model", sort=False)["difference_pct"]
        label = other.replace("energy_j_", "")
        parts[label] = pd.DataFrame({"mean (%)": g.mean(), "min (%)": g.min(), "max (%)": g.max(),
                                     "points": g.size()})
    return pd.concat(parts, axis=1)


def replay_meter(tick_t, tick_mj, power_t, power_w, **settings):
    """The meter's :class:`energybook.measure.timeline.Timeline` of a recorded (or illustrative) timeline.

    Its :meth:`~energybook.measure.timeline.Timeline.reading` (``reading(t0, t1)``; ``wait=False`` is
    accepted, as for the meter) applies the meter's own rules (counter interpolation between ticks,
    trapezoids over every power sample and over every 5th, the validity and physics checks) to the
    given series; nothing is measured.

    Args:
        tick_t: Times of the counter's updates (seconds).
        tick_mj: Counter values at those times (millijoules).
        power_t: Times of the power samples (seconds).
        power_w: Power samples (watts).
        **settings: Other :class:`~energybook.measure.timeline.Timeline` attributes (``power_cap_w`` in
            watts, ``update_period_s`` in seconds...).
    """
    from energybook.measure.timeline import Timeline

    return Timeline.from_series(tick_t, tick_mj, power_t, power_w, **settings)


def timeline_files(root: str | Path | None = None) -> list[Path]:
    """Recorded meter timelines under the measured folder: JSON files named ``*timeline*.json`` holding
    :meth:`energybook.measure.meter.Meter.timeline`'s keys (``tick_t``, ``tick_mj``, ``power_t``, ``power_w``)."""
    folder = measured_dir(root)
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.rglob("*timeline*.json")):
        try:
            keys = set(json.loads(p.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            logger.warning("%s is not a readable timeline JSON; skipped", p)
            continue
        if {"power_t", "power_w"} <= keys:
            found.append(p)
    return found


def admonition(title: str, text: str, kind: str = "note"):
    """A MyST admonition as a Markdown cell output (give the cell ``mystnb: {markdown_format: myst}``).

    Pages use it to say, at build time, that no measured data exist yet instead of failing.

    Args:
        title: The admonition's title.
        text: Its body (MyST Markdown).
        kind: CSS class: ``"note"``, ``"warning"``, ``"tip"``...
    """
    from IPython.display import Markdown

    return Markdown(f"```{{admonition}} {title}\n:class: {kind}\n\n{text}\n```\n")


#: Body of the admonition shown where a page needs measured data and finds none.
NO_DATA = ("No results file with a provenance sidecar was found under `data/measured/`: this build has no "
           "measurements of its own, so this part of the page is empty. Measure on a GPU ({doc}`reproduce`) "
           "and rebuild the book: every table and figure here regenerates from the files.")


@dataclass(frozen=True)
class ScrollTable:
    """A table shown inside a box that scrolls sideways (:func:`scroll_table`).

    Attributes:
        table: The table (pandas DataFrame), shown as is: round it first.
    """

    table: pd.DataFrame
    source: str = ""

    def _repr_html_(self) -> str:
        html = self.table.to_html(border=0, na_rep="-", classes="dataframe")
        if self.source:
            html += _SOURCE_HTML.format(escape(self.source))
        return f'<div class="eb-scroll" style="overflow-x: auto; max-width: 100%;">{html}</div>'

    def __repr__(self) -> str:
        return self.table.to_string() + (f"\n{self.source}" if self.source else "")


def scroll_table(table: pd.DataFrame, source: Any = None) -> ScrollTable:
    """``table`` as HTML in a horizontally scrollable box, so that a wide table never makes the page
    scroll sideways on a narrow screen. Display it as a cell's result.

    Args:
        table: The table, shown as is.
        source: Where its numbers were measured (what :func:`source_line` takes), written under it; the
            table's own ``attrs`` when None (nothing for a table that carries none).

    Used in :doc:`/book/experiment`, :doc:`/book/instruments` and :doc:`/book/status`.
    """
    return ScrollTable(table, source_line(table if source is None else source))


def run_label(run: R.MeasuredRun) -> str:
    """A short name for a run: its model and its file's stem, e.g. ``"Llama-3.2-1B, grid"``."""
    return f"{run.provenance.get('model', '?')}, {Path(run.path).stem}"


def run_summary(runs: list[R.MeasuredRun]) -> pd.DataFrame:
    """One short row per run (narrow enough for a phone): points measured, GPU-minutes of measurement
    (:func:`measuring_minutes`), sweep calls (a sweep resumes where the last call stopped), GPUs used
    (:func:`gpu_count`) and whether the CSV's sha256 matches its sidecar.

    Used in :doc:`/book/experiment` and :doc:`/book/status`.
    """
    rows = []
    for r in runs:
        p = r.provenance
        rows.append({"run": run_label(r), "points": len(r.data), "GPU-minutes": round(measuring_minutes(p), 1),
                     "calls": max(len(p.get("runs") or []), 1), "GPUs": gpu_count(p),
                     "checksum": "ok" if R.sha256_file(r.path) == p.get("sha256") else "MISMATCH"})
    if not rows:
        return pd.DataFrame(columns=["points", "GPU-minutes", "calls", "GPUs", "checksum"])
    return pd.DataFrame(rows).set_index("run")


def _settings(run: R.MeasuredRun) -> dict[str, str]:
    p, e = run.provenance, _engine(run.provenance)
    proto = p.get("protocol", {}) or {}
    values = {name: _text(get(p, e)) for name, get in _ENV_FIELDS}
    values["date"] = _date(p)
    for k in _PROTOCOL_FIELDS:
        if k != "note":
            values[k] = _text(proto.get(k))
    values["grid (n_in x n_out)"] = f"{len(proto.get('n_in') or [])} x {len(proto.get('n_out') or [])}"
    return values


def shared_settings(runs: list[R.MeasuredRun]) -> pd.DataFrame:
    """The settings every run shares (GPU, driver, versions, engine, weights, meter, protocol fields...),
    one row per setting and a single ``value`` column.

    Used in :doc:`/book/experiment`.
    """
    if not runs:
        return pd.DataFrame(columns=["value"])
    each = [_settings(r) for r in runs]
    shared = {k: v for k, v in each[0].items() if all(s.get(k) == v for s in each[1:])}
    return pd.DataFrame({"value": shared})


def run_differences(runs: list[R.MeasuredRun]) -> pd.DataFrame:
    """Only the settings that differ between runs: one row per run, one column per such setting.

    Used in :doc:`/book/experiment`.
    """
    if not runs:
        return pd.DataFrame()
    each = {run_label(r): _settings(r) for r in runs}
    first = next(iter(each.values()))
    differ = [k for k in first if len({s.get(k) for s in each.values()}) > 1]
    return pd.DataFrame({label: {k: s.get(k, "-") for k in differ} for label, s in each.items()}).T


def run_commands(runs: list[R.MeasuredRun]) -> dict[str, str]:
    """The command that regenerates each run (from its sidecar), by :func:`run_label`."""
    return {run_label(r): str(r.provenance.get("command") or "-") for r in runs}


def checked_points(runs: list[R.MeasuredRun], prefix: str = "full") -> set[tuple[str, int, int]]:
    """The ``(model, n_in, n_out)`` points measured by complete runs (files whose stem starts with
    ``prefix``: ``full-*.csv``), which check the fast grid's shortcuts.

    Used in :doc:`/book/experiment`.
    """
    found = set()
    for r in runs:
        if Path(r.path).stem.startswith(prefix):
            model = str(r.provenance.get("model", "?"))
            for n_in, n_out in zip(r.data["n_in"], r.data["n_out"]):
                found.add((model, int(n_in), int(n_out)))
    return found


def short_window_cells(table: pd.DataFrame, checked: set[tuple[str, int, int]], n_in: int = 64,
                       n_outs: tuple[int, ...] = (64, 128)) -> pd.DataFrame:
    """The grid points that set the rising side of the sweet spot (shortest outputs at ``n_in``), with
    their energy window, the study's method against the counter, and whether a complete run checked them.

    Args:
        table: Measured grid rows (:func:`energybook.report.analysis.measured_table`) with ``model``,
            ``n_in``, ``n_out``, ``window_s`` (seconds), ``energy_j`` (counter, joules) and
            ``energy_j_power500`` (joules).
        checked: Points measured by complete runs (:func:`checked_points`).
        n_in: Input length of the row (tokens).
        n_outs: Output lengths to show (tokens).

    Returns:
        One row per (model, n_out): ``window (s)``, ``power500 vs counter (%)``, ``counter updates``
        (the ticks in the window, when the table has ``ticks``) and ``complete-run check``
        (``"yes"``/``"no"``), sorted by model then n_out.

    Used in :doc:`/book/experiment`.
    """
    rows = table[(table["n_in"] == n_in) & (table["n_out"].isin(n_outs))]
    out = pd.DataFrame({
        "model": rows["model"].astype(str), "n_out": rows["n_out"].astype(int),
        "window (s)": rows["window_s"].astype(float),
        "power500 vs counter (%)": 100 * (rows["energy_j_power500"].astype(float) / rows["energy_j"].astype(float) - 1),
        "complete-run check": ["yes" if (m, n_in, int(b)) in checked else "no"
                               for m, b in zip(rows["model"], rows["n_out"])],
    })
    if "ticks" in rows:
        out.insert(3, "counter updates", rows["ticks"].astype(float).round().astype("Int64"))
    return out.sort_values(["model", "n_out"]).set_index(["model", "n_out"])


def tick_period_s(table: pd.DataFrame) -> pd.Series:
    """The energy counter's update period seen in every measured window: ``window_s / ticks`` (seconds),
    one value per row with at least one tick.

    Used in :doc:`/book/instruments`.
    """
    ticks = table["ticks"].astype(float)
    keep = ticks > 0
    return (table.loc[keep, "window_s"].astype(float) / ticks[keep]).rename("tick period (s)")


# ----- where a figure's or table's measurements come from ------------------------------------

#: Key of :attr:`pandas.DataFrame.attrs` under which a measured table carries its :class:`Source` records
#: (set by :func:`energybook.report.analysis.measured_table`; kept by filtering, ``assign`` and the views).
SOURCES_ATTR = "measured_by"
#: Key of :attr:`pandas.DataFrame.attrs` holding the table's :func:`source_line` (for reading; the records rule).
SOURCE_ATTR = "source"


@dataclass(frozen=True)
class Source:
    """One GPU board and engine that measured a model's points.

    Attributes:
        model: The model measured.
        gpu: The GPU's name as NVML reports it (``"NVIDIA H100 80GB HBM3"``).
        uuid: The board's UUID (``"GPU-b676fe77-..."``); ``"UUID not recorded"`` when the sidecar has none.
        engine: The engine's results folder name (:func:`energybook.store.workspace.engine_slug`: ``hf``,
            ``vllm``, ``trtllm``...).
    """

    model: str
    gpu: str
    uuid: str
    engine: str


def run_sources(run: R.MeasuredRun | dict[str, Any]) -> list[Source]:
    """The :class:`Source` records of a loaded run (or of a provenance sidecar): one per GPU board that
    measured it (:func:`gpu_uuids`), with the run's GPU name and engine."""
    from energybook.store.workspace import engine_slug, sidecar_engine

    prov = run if isinstance(run, dict) else run.provenance
    data = None if isinstance(run, dict) else run.data
    model = str(prov.get("model") or "?")
    gpu = str(prov.get("gpu") or "unknown GPU")
    name = sidecar_engine(prov)
    engine = engine_slug(name) if name else "unknown"
    return [Source(model, gpu, u, engine) for u in gpu_uuids(prov, data) or ["UUID not recorded"]]


def measurement_sources(source: Any, models: Any = None) -> list[Source]:
    """The distinct :class:`Source` records behind a figure or table, in order of first appearance.

    Args:
        source: Loaded runs (a list of :class:`~energybook.store.results.MeasuredRun`, or one), provenance
            sidecars (dicts), :class:`Source` records, or a table carrying them in ``attrs``
            (:data:`SOURCES_ATTR`, as :func:`energybook.report.analysis.measured_table` returns it); a list
            may mix them. None gives none.
        models: Keep only these models; by default a table's ``model`` column (when it has one), else all.
    """
    if source is None:
        return []
    if isinstance(source, pd.DataFrame):
        found = [Source(*s) if not isinstance(s, Source) else s for s in source.attrs.get(SOURCES_ATTR, ())]
        if models is None and "model" in source.columns:
            models = list(source["model"].dropna().unique())
    elif isinstance(source, (Source, dict, R.MeasuredRun)):
        found = [source] if isinstance(source, Source) else run_sources(source)
    elif isinstance(source, (list, tuple, set)):
        found = [s for item in source for s in measurement_sources(item)]
    else:
        raise TypeError(f"cannot tell where {type(source).__name__} was measured: pass runs, sidecars or a "
                        "measured table")
    if models is not None:
        keep = {str(m) for m in ([models] if isinstance(models, str) else models)}
        found = [s for s in found if s.model in keep]
    return list(dict.fromkeys(found))


def source_line(source: Any, models: Any = None) -> str:
    """The one line that names where measurements come from: every GPU (name and UUID) and engine.

    ``"measured on NVIDIA H100 80GB HBM3 (GPU-b676fe77-a2fb-fa13-fd3b-9db31628fa95), hf engine"``; a GPU
    name and engine measured on several boards lists their UUIDs together, several GPUs or engines are
    joined by ``"; "``. Every figure (:func:`energybook.report.plot.stamp_source`) and table
    (:func:`with_source`) that shows measurements carries it.

    Args:
        source: What :func:`measurement_sources` takes (runs, sidecars, records, a measured table) or an
            already made line (a string, returned as it is).
        models: Keep only these models (see :func:`measurement_sources`).

    Returns:
        The line; ``""`` when nothing measured is behind ``source``.

    Used in every page that shows measurements, e.g. :doc:`/book/sweet_spots` and :doc:`/book/experiment`.
    """
    if isinstance(source, str):
        return source
    groups: dict[tuple[str, str], list[str]] = {}
    for s in measurement_sources(source, models):
        uuids = groups.setdefault((s.gpu, s.engine), [])
        if s.uuid not in uuids:
            uuids.append(s.uuid)
    if not groups:
        return ""
    return "measured on " + "; ".join(f"{gpu} ({', '.join(uuids)}), {engine} engine"
                                      for (gpu, engine), uuids in groups.items())


def attach_sources(table: pd.DataFrame, source: Any) -> pd.DataFrame:
    """``table`` (changed in place, and returned) carrying the :class:`Source` records of ``source`` in its
    ``attrs``, so that figures and tables drawn from it name where it was measured.

    Args:
        table: Any table derived from measurements (a fit's residuals, a summary...).
        source: What :func:`measurement_sources` takes (another measured table, runs...).
    """
    if isinstance(source, pd.DataFrame):  # all of its records: the derived table's models filter when shown
        found = list(dict.fromkeys(Source(*s) for s in source.attrs.get(SOURCES_ATTR, ())))
    else:
        found = measurement_sources(source)
    table.attrs[SOURCES_ATTR] = tuple(tuple(dataclasses.astuple(s)) for s in found)
    table.attrs[SOURCE_ATTR] = source_line(found)
    return table


def with_source(table: Any, source: Any = None, models: Any = None):
    """A table (DataFrame or Styler) captioned with its :func:`source_line`, for display.

    Args:
        table: The table shown (a DataFrame, or a pandas Styler already formatted).
        source: Where its numbers were measured (what :func:`source_line` takes); the table's own ``attrs``
            when None.
        models: Keep only these models' sources.

    Returns:
        A pandas Styler with the line as its caption (no caption when nothing measured is behind it).

    Used in every page that shows measured tables, e.g. :doc:`/book/fitting`.
    """
    frame = table if isinstance(table, pd.DataFrame) else table.data
    line = source_line(frame if source is None else source, models)
    styler = table.style if isinstance(table, pd.DataFrame) else table
    if line:
        styler = styler.set_caption(line).set_table_styles(
            [{"selector": "caption", "props": "caption-side: bottom; font-size: 0.8em; color: #666; "
                                              "text-align: left;"}], overwrite=False)
    return styler


#: The source line under a table of a measurement page (:func:`clean_measurement_notebook`).
_SOURCE_HTML = '<p class="eb-source" style="font-size: 0.8em; color: #666;">{}</p>'

#: Tag of the note cell that :func:`clean_measurement_notebook` puts under a measurement page's title.
NOTE_TAG = "eb-measurement-note"

# A tqdm progress bar as the sweep prints it ("Llama-3.2-1B sweep:  11%|█  | 1/9 [00:20<02:44, 20.57s/point]").
_PROGRESS = re.compile(r"[^\s|]*\s?sweep:\s+\d+%\|[^|]*\|[^\]\n]*\]")
# An absolute path ending in a workspace's data/measured/ folder, or a notebook path.
_ABSOLUTE_DATA = re.compile(r"(?<![\w.\-/])(?:/[^\s/:'\"]+)+/(data/measured/|notebooks/|book/measurements/)")
_ABSOLUTE = re.compile(r"(?<![\w.])/(?:home|work|opt|root|tmp|usr|Users|scratch|mnt|srv|var)/[^\s'\"]*")
# A log record as the CLI's logging prints it ("INFO energybook.sweep: n_in 4096 batch 334 ...").
_LOG_RECORD = re.compile(r"^(?:DEBUG|INFO) [\w.]+: ")


def _scrub(text: str) -> str:
    text = _ABSOLUTE_DATA.sub(r"\1", text)
    return _ABSOLUTE.sub("<local path>", text)


def _strip_progress(text: str) -> str:
    text = _PROGRESS.sub("\n", text.replace("\r", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    kept: list[str] = []
    for line in lines:
        if _LOG_RECORD.match(line):
            continue  # a raw log record of the sweep, printed by an old copy of the notebook
        if line or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).strip("\n") + "\n"


def measurement_note(prov: dict[str, Any], parameters: dict[str, Any] | None = None) -> str:
    """The note at the top of a measurement page: its GPU-minutes and how the run was split.

    Args:
        prov: The provenance sidecar of the grid the page shows.
        parameters: The papermill parameters of the executed notebook (shown, since their cells are hidden).

    Used in :doc:`/book/experiment` (which checks every page's note against its sidecar).
    """
    minutes = measuring_minutes(prov)
    calls = max(len(prov.get("runs") or []), 1)
    gpus = gpu_count(prov)
    text = (f"**GPU time.** The grid on this page took {minutes:.1f} GPU-minutes of measurement "
            f"(the warm-up, prefill and decode of every group of points; model loading, cool-downs and the "
            f"pauses between calls are left out) on {gpus} {prov.get('gpu', 'GPU')} board{'s' if gpus != 1 else ''}, "
            f"in {calls} call{'s' if calls != 1 else ''} of the sweep: each call resumes where the last one "
            "stopped. The notebook below is the last call; its tables read the whole results file. "
            "The minutes come from the file's provenance sidecar "
            "(`energybook.report.provenance.measuring_minutes`).")
    if parameters:
        shown = ", ".join(f"`{k} = {_scrub(str(v))}`" for k, v in sorted(parameters.items()))
        text += f"\n\n**Parameters of this call** (set by papermill; the rest are the notebook's defaults): {shown}."
    return text


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _add_tag(cell, tag: str) -> None:
    tags = _tags(cell)
    if tag not in tags:
        cell.setdefault("metadata", {})["tags"] = tags + [tag]


def clean_measurement_notebook(path: str | Path, prov: dict[str, Any], model: str | None = None,
                               write: bool = True):
    """Tidy an executed measurement notebook for the book, leaving every measured number as it is.

    * stderr outputs (warnings such as tqdm's) are dropped, and the sweep's progress bars and raw
      ``INFO`` / ``DEBUG`` log records are cut out of its printed output (warnings and the summary stay);
    * local absolute paths are scrubbed from sources, outputs and papermill's metadata (a path into a
      workspace's ``data/measured/`` keeps its part from ``data/`` on);
    * papermill's parameter cells and the imports are hidden (``remove-cell``), the other code cells
      folded (``hide-input``), so that the outputs lead;
    * the figure gets a name and alt text, and wide tables a sideways-scrolling box;
    * the figure's caption and every table of measurements (not the provenance tables, which name the GPU
      themselves) get the :func:`source_line` of the sidecar: the GPU's name and UUID, and the engine;
    * a note with the page's GPU-minutes (:func:`measurement_note`) goes under the title, once.

    Running it twice gives the same notebook.

    Args:
        path: The executed notebook (``.ipynb``).
        prov: The provenance sidecar of the grid the notebook shows.
        model: The model's name (for the figure's name and alt text); default ``prov["model"]``.
        write: Write the result back to ``path``.

    Returns:
        The cleaned notebook (an ``nbformat`` node).
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    model = model or str(prov.get("model", path.stem))
    line = source_line(prov)
    pm = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path", "cwd"):
        pm.pop(key, None)
    if pm.get("parameters"):
        pm["parameters"] = {k: _scrub(v) if isinstance(v, str) else v for k, v in pm["parameters"].items()}
    params = {k: v for k, v in (pm.get("parameters") or {}).items() if k not in ("workspace", "command")}
    nb.cells = [c for c in nb.cells if NOTE_TAG not in _tags(c)]
    for cell in nb.cells:
        cell.source = _scrub(cell.source)
        if cell.cell_type != "code":
            continue
        tags = _tags(cell)
        shows_sidecar = "prov" in cell.source  # the provenance tables name the GPU themselves
        imports_only = cell.source.lstrip().startswith(("import ", "from ")) and not cell.get("outputs")
        if "parameters" in tags or "injected-parameters" in tags or imports_only:
            _add_tag(cell, "remove-cell")
        else:
            _add_tag(cell, "hide-input")
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                if out.get("name") == "stderr":
                    continue
                out["text"] = _scrub(_strip_progress(out["text"]))
                if not out["text"].strip():
                    continue
            for kind, value in list((out.get("data") or {}).items()):
                if not (kind.startswith("text/") and isinstance(value, str)):
                    continue
                value = _scrub(value)
                if kind == "text/html" and "<table" in value and 'class="eb-scroll"' not in value:
                    value = f'<div class="eb-scroll" style="overflow-x: auto; max-width: 100%;">{value}</div>'
                mine = kind == "text/html" and "<table" in value and not shows_sidecar
                if mine and line and escape(line) not in value:
                    value = value[:value.rfind("</div>")] + _SOURCE_HTML.format(escape(line)) + "</div>"
                out["data"][kind] = value
            outputs.append(out)
        cell["outputs"] = outputs
        if any("image/png" in (o.get("data") or {}) for o in outputs):
            mystnb = cell.metadata.setdefault("mystnb", {})
            figure = dict(mystnb.get("figure") or {})
            figure.setdefault("caption", f"Measured efficiency of {model} over the grid (output tokens per joule, "
                                         "energy counter), input length increasing upward.")
            if line and line.lower() not in figure["caption"].lower():
                figure["caption"] = f"{figure['caption'].rstrip()} {line[0].upper()}{line[1:]}."
            figure["name"] = f"fig-measured-{re.sub(r'[^a-z0-9]+', '-', model.lower()).strip('-')}"
            mystnb["figure"] = figure
            mystnb["image"] = {"alt": f"Heat map of {model}'s measured output tokens per joule: rows are input "
                                      "lengths from 64 (bottom) to 4096 (top) tokens, columns output lengths from 64 "
                                      "to 4096 tokens; every cell is labelled with its value."}
    title = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("# ")), -1)
    note = nbformat.v4.new_markdown_cell(measurement_note(prov, params), metadata={"tags": [NOTE_TAG]})
    if "id" in note:
        note["id"] = NOTE_TAG  # a fixed id, so that cleaning twice gives the same file
    nb.cells.insert(title + 1, note)
    if write:
        nbformat.write(nb, str(path))
    return nb


def measurement_notes(notebooks: list[str | Path]) -> dict[str, str]:
    """The note cell of each executed measurement notebook, by notebook stem ('' when it has none).

    Used in :doc:`/book/experiment`, to check each page's stated GPU-minutes against its sidecar.
    """
    import nbformat

    notes = {}
    for nb_path in notebooks:
        nb = nbformat.read(str(nb_path), as_version=4)
        notes[Path(nb_path).stem] = next((c.source for c in nb.cells if NOTE_TAG in _tags(c)), "")
    return notes


#: Tag of a measurement page's heat-map cell: the template's, and a page's redrawn one
#: (:func:`redraw_measurement_figures`).
HEATMAP_TAG = "eb-heatmap"

#: Tag of the one-line note that :func:`redraw_measurement_figures` puts under a redrawn figure.
REDRAW_TAG = "eb-redrawn-note"

_REDRAWN_ON = re.compile(r"redrawn on (\d{4}-\d{2}-\d{2})")


def _template_cells() -> list:
    """The code cells of the shipped measurement template."""
    import nbformat

    from energybook.measure.notebook import notebook_source

    nb = nbformat.read(str(notebook_source()), as_version=4)
    return [c for c in nb.cells if c.cell_type == "code"]


#: The imports a redrawn heat-map cell carries itself (a committed page's imports cell is the older template's).
_REDRAW_IMPORTS = "import matplotlib.pyplot as plt\n\nfrom energybook.report import plot\n\n"


def _template_heatmap_source() -> str:
    """The source of the measurement template's heat-map cell (the cell tagged :data:`HEATMAP_TAG`)."""
    return next(c.source for c in _template_cells() if HEATMAP_TAG in _tags(c))


def measurement_heatmap(run: R.MeasuredRun):
    """The measurement page's heat map of a run, drawn by the template's own heat-map cell.

    Runs the template's imports cell and its heat-map cell (:func:`energybook.report.plot.heatmap` of the
    first repeat, in the book's theme and at its size, with the source footer of
    :func:`energybook.report.plot.stamp_source`) with ``df`` and ``run`` set to this run, so that a redrawn
    page shows exactly what a new one shows. Call it inside ``matplotlib.rc_context()`` to keep the theme
    from leaking out.

    Returns:
        The Figure (still open: close it when done).
    """
    cells = _template_cells()
    imports = next(c.source for c in cells if "from energybook.report import" in c.source
                   and c.source.lstrip().startswith(("import ", "from ")))
    heat = re.sub(r"^\s*plt\.show\(\)\s*$", "", _template_heatmap_source(), flags=re.M)  # keep it, to save
    namespace: dict[str, Any] = {"__name__": "energybook_measure_template"}
    exec(compile(imports, "measure.ipynb (imports)", "exec"), namespace)  # noqa: S102 - the shipped template
    namespace.update(run=run, df=run.data)
    exec(compile(heat, "measure.ipynb (heat map)", "exec"), namespace)  # noqa: S102
    return namespace["ax"].figure


def _figure_png(fig) -> str:
    """The figure as the notebook's inline backend shows it (tight box, the figure's dpi), base64."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def redraw_measurement_figures(path: str | Path, run: R.MeasuredRun | str | Path, date: str | None = None,
                               write: bool = True):
    """Redraw an executed measurement page's heat map from its committed data, with the book's plotting code.

    The pages measured with an older template drew their own heat map (6 px labels, a colour bar in
    log10 units, white labels on yellow cells). This redraws the figure from the page's own results file
    with :func:`measurement_heatmap` (what the template's heat-map cell now runs), and changes nothing
    else that was measured:

    * the figure cell's PNG (and its ``text/plain`` figure repr) is replaced, its source becomes the
      template's heat-map cell, and it is tagged :data:`HEATMAP_TAG`, with the function, data file and
      date in ``metadata["energybook"]["redrawn"]``;
    * raw ``INFO`` / ``DEBUG`` log records are cut out of the printed outputs (a stream output without
      one is left as it is);
    * one note (tagged :data:`REDRAW_TAG`) goes under the figure, saying so, with the date.

    Every other output stays byte-identical. Running it again gives the same notebook: the date of an
    existing note is kept unless ``date`` is given.

    Args:
        path: The executed measurement notebook (``.ipynb``).
        run: The page's measured run, or the path of its results CSV (``data/measured/.../grid.csv``).
        date: The date the note states (``YYYY-MM-DD``); the existing note's date, else today (UTC).
        write: Write the result back to ``path``.

    Returns:
        The redrawn notebook (an ``nbformat`` node).

    Raises:
        ValueError: when the notebook has no figure output to redraw.
    """
    import matplotlib
    import matplotlib.pyplot as plt
    import nbformat

    path = Path(path)
    if not isinstance(run, R.MeasuredRun):
        run = R.load_measured(run)
    nb = nbformat.read(str(path), as_version=4)
    figures = [c for c in nb.cells if c.cell_type == "code"
               and any("image/png" in (o.get("data") or {}) for o in c.get("outputs", []))]
    if not figures:
        raise ValueError(f"{path} has no figure output to redraw")
    old_notes = [c for c in nb.cells if REDRAW_TAG in _tags(c)]
    found = next((m.group(1) for c in old_notes for m in [_REDRAWN_ON.search(c.source)] if m), None)
    date = date or found or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    nb.cells = [c for c in nb.cells if REDRAW_TAG not in _tags(c)]
    with matplotlib.rc_context():
        fig = measurement_heatmap(run)
        try:
            png, shown = _figure_png(fig), repr(fig)
        finally:
            plt.close(fig)
    data = _shown_path(run.path)
    name = f"{__name__}.redraw_measurement_figures"
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and any(_LOG_RECORD.match(line)
                                                         for line in out.get("text", "").split("\n")):
                out["text"] = _strip_progress(out["text"])
    for cell in figures:
        # the page's own imports cell predates the chapters' plotting: the cell names what it draws with
        cell.source = _REDRAW_IMPORTS + _template_heatmap_source()
        _add_tag(cell, HEATMAP_TAG)
        cell.metadata.setdefault("energybook", {})["redrawn"] = {"by": name, "data": data, "date": date}
        for out in cell.outputs:
            if "image/png" in (out.get("data") or {}):
                out["data"]["image/png"] = png
                if "text/plain" in out["data"]:
                    out["data"]["text/plain"] = shown
        note = nbformat.v4.new_markdown_cell(
            f"*This figure was redrawn on {date} from the page's committed data (`{data}`) by the book's plotting "
            f"code (`energybook.report.plot.heatmap`), with `{name}`; the tables above are the run's own output.*",
            metadata={"tags": [REDRAW_TAG]})
        if "id" in note:
            note["id"] = f"{REDRAW_TAG}-{figures.index(cell)}"  # a fixed id: redrawing twice gives the same file
        nb.cells.insert(next(i for i, c in enumerate(nb.cells) if c is cell) + 1, note)
    if write:
        nbformat.write(nb, str(path))
    return nb
