"""Provenance reports: what was measured, where, when and how, as tables for the book.

Reads the results files under ``data/measured/`` with :func:`energybook.store.results.load_measured`
(which checks every file's sha256 against its sidecar and refuses test data) and turns their
provenance sidecars into tidy tables: one row per measured run (:func:`run_table`), the software
and engine settings of each run (:func:`environment_table`), the protocol (:func:`protocol_table`),
and the package versions of the build itself (:func:`versions`). :func:`method_summary` condenses
the per-point difference of the power integrations from the energy counter, and
:func:`replay_meter` rebuilds a :class:`energybook.measure.meter.Meter` from a recorded (or illustrative)
timeline, so that its integration rules can be shown without a GPU.

The folder read is the workspace's ``measured/`` (:class:`energybook.store.workspace.Workspace`):
``data/measured/`` in a checkout, or the folder named by ``ENERGYBOOK_DATA`` (to preview your own
GPU's results before copying them in).

Used in :doc:`/book/experiment`, :doc:`/book/instruments`, :doc:`/book/reproduce` and
:doc:`/book/status`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from energybook.store import results as R
from energybook.store.catalog import measured_dir, measured_runs, measured_table, result_files  # noqa: F401
from energybook.store.workspace import checkout_root

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
    """GPU time spent measuring a file's points (minutes): the points of one group share a start, so
    each group counts from its start (warm-up included) to its last point's finish. Model loading and
    the pauses between calls are left out. NaN when the point log has no times."""
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


def gpu_count(prov: dict[str, Any]) -> int:
    """How many distinct GPUs (by UUID) the runs of a file used."""
    uuids = {r.get("gpu_uuid") for r in prov.get("runs") or []} | {prov.get("gpu_uuid")}
    uuids |= {i.get("gpu_uuid") for i in (prov.get("points") or {}).values()}
    return len(uuids - {None})


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
    from energybook.report.analysis import method_difference

    parts = {}
    for other in others:
        d = method_difference(table, reference=reference, other=other).dropna(subset=["difference_pct"])
        g = d.groupby("model", sort=False)["difference_pct"]
        label = other.replace("energy_j_", "")
        parts[label] = pd.DataFrame({"mean (%)": g.mean(), "min (%)": g.min(), "max (%)": g.max(),
                                     "points": g.size()})
    return pd.concat(parts, axis=1)


def replay_meter(tick_t, tick_mj, power_t, power_w):
    """A :class:`energybook.measure.meter.Meter` that reads a recorded timeline instead of NVML.

    Its :meth:`~energybook.measure.meter.Meter.reading` (call it with ``wait=False``) applies the meter's
    own rules (counter interpolation between ticks, trapezoids over every power sample and over
    every 5th) to the given series; nothing is measured.

    Args:
        tick_t: Times of the counter's updates (seconds).
        tick_mj: Counter values at those times (millijoules).
        power_t: Times of the power samples (seconds).
        power_w: Power samples (watts).
    """
    from energybook.measure import meter as M

    m = M.Meter.__new__(M.Meter)
    m.index, m.poll_s, m.power_period_s, m.sync = 0, 0.002, 0.1, None
    m.has_counter, m.method, m.wraps = True, "counter", 0
    m._tl = M._Timeline([float(t) for t in tick_t], [float(e) for e in tick_mj],
                        [float(t) for t in power_t], [float(p) for p in power_w])
    m._lock = threading.Lock()
    m._thread = None
    return m


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
