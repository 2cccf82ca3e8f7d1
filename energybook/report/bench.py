"""The committed outputs of the GPU benchmarks as the book's tables.

The benchmarks live in ``benchmarks/`` and run on a GPU; what they printed or saved is committed under
``benchmarks/results/`` and parsed by :mod:`energybook.store.bench`. The functions here take that folder from their
caller (``results``: the folder, or one file in it), or from the environment variable ``ENERGYBOOK_BENCH_RESULTS``;
they never work out a path of their own, so an installed package never reads a checkout's ``benchmarks/``. A book
page passes the folder it finds beside ``data/``::

    BENCH = next(p for p in (Path("../benchmarks/results"), Path("benchmarks/results")) if p.is_dir())
    bench.engine_benchmark(BENCH)

Used in :doc:`/book/comparison`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from energybook.model import architecture
from energybook.store import bench as store

#: The environment variable naming the benchmarks' results folder when no folder is passed.
ENV_VAR = "ENERGYBOOK_BENCH_RESULTS"


def results_dir(results: str | Path | None = None) -> Path:
    """The results folder (or file) to read: ``results``, else ``$ENERGYBOOK_BENCH_RESULTS``.

    Raises:
        ValueError: neither is given, naming both.
    """
    if results is not None:
        return Path(results)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    raise ValueError("no benchmark results folder: pass results=... (in a checkout, benchmarks/results/) or set "
                     f"the environment variable {ENV_VAR}")


def decode_attention(results: str | Path | None = None) -> pd.DataFrame:
    """The table printed by ``benchmarks/decode_attention.py`` (:func:`energybook.store.bench.decode_attention`).

    Args:
        results: The results folder or ``decode_attention.txt`` itself (default ``$ENERGYBOOK_BENCH_RESULTS``).
    """
    return store.decode_attention(results_dir(results))


def attention_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Microseconds per call of each way side by side, with each way's time over ``varlen``'s."""
    wide = table.pivot_table(index=["model", "batch", "context"], columns="way", values="us")
    for way in [w for w in wide.columns if w != "varlen"]:
        wide[f"{way} / varlen"] = wide[way] / wide["varlen"]
    return wide


def engine_benchmark(results: str | Path | None = None) -> dict:
    """The JSON saved by ``benchmarks/hf_engine_speed.py`` (``bench_engine.json``).

    Args:
        results: The results folder or the JSON file itself (default ``$ENERGYBOOK_BENCH_RESULTS``).
    """
    return store.engine_benchmark(results_dir(results))


def attention_share(table: pd.DataFrame, bench: dict, model: str = "Llama-3.2-1B",
                    step: str = "graph_varlen_s") -> pd.DataFrame:
    """Share of a whole decode step spent in attention, where both benchmarks ran the same shape.

    The attention time of one layer (``varlen``, as the graphs run it) times the model's layer count,
    over the step time ``hf_engine_speed.py`` measured at the same batch and context.
    """
    layers = architecture.load(model).num_layers
    attn = table[(table["model"] == model) & (table["way"] == "varlen")].set_index(["batch", "context"])["us"]
    steps = {(d["batch"], d["context"]): d[step] for d in bench["decode"] if step in d}
    rows = []
    for (batch, context), us in attn.items():
        if (batch, context) in steps:
            attention_ms = us * layers / 1e3
            step_ms = steps[(batch, context)] * 1e3
            rows.append({"batch": batch, "context": context, "attention_ms": attention_ms, "step_ms": step_ms,
                         "share": attention_ms / step_ms})
    return pd.DataFrame(rows)


def engine_corners(results: str | Path | None = None) -> pd.DataFrame | None:
    """The grid's four corners of every model in ``engine_targets.json`` against the study's fitted surface.

    One row per (model, corner): ``model``, ``n_in``, ``n_out`` (tokens), ``engine``, ``tokens_per_j`` (measured),
    ``study_fit`` (the study's fitted tokens/J, :func:`energybook.model.paper.paper_surface`) and ``ratio``
    (measured over the fit). None while no H100 run is committed.

    Args:
        results: The results folder or ``engine_targets.json`` itself (default ``$ENERGYBOOK_BENCH_RESULTS``).

    Raises:
        ValueError: for a run on another GPU than an H100, or no results folder (:func:`results_dir`).
    """
    from energybook.model import paper

    _, result = store.engine_targets(results_dir(results))
    if result is None:
        return None
    runs = {result.get("model", "Llama-3.2-1B"): (result.get("engine"), result.get("tokens_per_j") or {})}
    for name, rec in (result.get("models") or {}).items():
        runs[name] = (rec.get("engine"), rec.get("tokens_per_j") or {})
    rows = []
    for model, (engine, corners) in runs.items():
        surface = paper.paper_surface(model).set_index(["n_in", "n_out"])["tokens_per_j"]
        for key, value in corners.items():
            n_in, n_out = (int(x) for x in key.split("x"))
            fit = float(surface.get((n_in, n_out), float("nan")))
            rows.append(dict(model=model, n_in=n_in, n_out=n_out, engine=engine, tokens_per_j=value, study_fit=fit,
                             ratio=float("nan") if value is None else value / fit))
    return pd.DataFrame(rows)


def engine_targets(results: str | Path | None = None) -> pd.DataFrame | None:
    """Issue 12's targets against ``benchmarks/engine_targets.py``'s H100 run, or None while none is committed.

    One row per figure (index): the study's value, the engine's before the lean engine ("before"), the "must" and
    the "aim", the headline engine's measured value and whether it meets the must.

    Args:
        results: The results folder or ``engine_targets.json`` itself (default ``$ENERGYBOOK_BENCH_RESULTS``).

    Raises:
        ValueError: for a file measured on another GPU than an H100 (the book's figures come from H100s; other GPUs'
            runs belong under ``benchmarks/results/<gpu>/``), or one without the targets.
    """
    path, result = store.engine_targets(results_dir(results))
    if result is None:
        return None
    gpu = result["gpu"]
    targets = result.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise ValueError(f"{path}: no 'targets'; rerun benchmarks/engine_targets.py")
    rows = []
    for key, t in targets.items():
        value = (result.get("tokens_per_j") or {}).get(key) if key[0].isdigit() else result.get(key)
        met = None if value is None else (value >= t["must"] if t["ge"] else value <= t["must"])
        rows.append({"figure": key, "study": t.get("study"), "before": t.get("today"), "must": t["must"],
                     "aim": t["aim"], "measured": value, "meets must": met})
    table = pd.DataFrame(rows).set_index("figure")
    table.attrs.update(gpu=gpu, gpu_uuid=result.get("gpu_uuid"), commit=result.get("commit"),
                       engine=result.get("engine"))
    return table
