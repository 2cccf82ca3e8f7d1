"""Reading the committed outputs of the GPU benchmarks (``benchmarks/results/``) for the book.

The benchmarks themselves live in ``benchmarks/`` and run on a GPU; what they printed or saved is
committed, and the book reads it from here on the CPU.

Used in :doc:`/book/comparison`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from energybook.model import architecture

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # in a checkout

_ATTENTION_COLUMNS = ["model", "heads", "batch", "context", "way", "us", "kv_gb_s", "of_copy", "max_err"]


def decode_attention(path: str | Path | None = None) -> pd.DataFrame:
    """The table printed by ``benchmarks/decode_attention.py``: one row per (model, batch, context, way).

    Columns: model, heads ("K/H": key/value heads over query heads), batch, context (tokens),
    way (``varlen``, ``varlen_folded``, ``sdpa_folded``), us (microseconds per call), kv_gb_s (the
    KV bytes read once, per second), of_copy (that over the copy bandwidth), max_err.
    """
    path = Path(path) if path is not None else RESULTS_DIR / "decode_attention.txt"
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "K/H"])
    except StopIteration:
        raise ValueError(f"{path}: no table header ('model  K/H ...') found; is this the output of "
                         "benchmarks/decode_attention.py?") from None
    rows = [line.split() for line in lines[start + 1:] if line.strip()]
    bad = [r for r in rows if len(r) != len(_ATTENTION_COLUMNS)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} table row(s) do not have {len(_ATTENTION_COLUMNS)} fields, "
                         f"e.g. {' '.join(bad[0])!r}; rerun benchmarks/decode_attention.py")
    table = pd.DataFrame(rows, columns=_ATTENTION_COLUMNS)
    for c in ("batch", "context"):
        table[c] = table[c].astype(int)
    for c in ("us", "kv_gb_s", "of_copy", "max_err"):
        table[c] = table[c].astype(float)
    return table


def attention_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Microseconds per call of each way side by side, with each way's time over ``varlen``'s."""
    wide = table.pivot_table(index=["model", "batch", "context"], columns="way", values="us")
    for way in [w for w in wide.columns if w != "varlen"]:
        wide[f"{way} / varlen"] = wide[way] / wide["varlen"]
    return wide


def engine_benchmark(path: str | Path | None = None) -> dict:
    """The JSON saved by ``benchmarks/bench_engine.py``."""
    path = Path(path) if path is not None else RESULTS_DIR / "bench_engine.json"
    return json.loads(Path(path).read_text())


def attention_share(table: pd.DataFrame, bench: dict, model: str = "Llama-3.2-1B",
                    step: str = "graph_varlen_s") -> pd.DataFrame:
    """Share of a whole decode step spent in attention, where both benchmarks ran the same shape.

    The attention time of one layer (``varlen``, as the graphs run it) times the model's layer count,
    over the step time ``bench_engine.py`` measured at the same batch and context.
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


def _h100_targets(path: str | Path | None) -> tuple[Path, dict | None]:
    """The path and JSON of ``engine_targets.json`` (None while absent); refuses a run on another GPU."""
    path = Path(path) if path is not None else RESULTS_DIR / "engine_targets.json"
    if not path.is_file():
        return path, None
    result = json.loads(path.read_text())
    gpu = str(result.get("gpu") or "")
    if "H100" not in gpu:
        raise ValueError(f"{path}: measured on {gpu or 'an unnamed GPU'}, not an H100; the book's figures come from "
                         "H100s: keep other GPUs' runs under benchmarks/results/<gpu>/")
    return path, dict(result, gpu=gpu)


def engine_corners(path: str | Path | None = None) -> pd.DataFrame | None:
    """The grid's four corners of every model in ``engine_targets.json`` against the study's fitted surface.

    One row per (model, corner): ``model``, ``n_in``, ``n_out`` (tokens), ``engine``, ``tokens_per_j`` (measured),
    ``study_fit`` (the study's fitted tokens/J, :func:`energybook.model.paper.paper_surface`) and ``ratio``
    (measured over the fit). None while no H100 run is committed.

    Raises:
        ValueError: for a run on another GPU than an H100.
    """
    from energybook.model import paper

    _, result = _h100_targets(path)
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


def engine_targets(path: str | Path | None = None) -> pd.DataFrame | None:
    """Issue 12's targets against ``benchmarks/engine_targets.py``'s H100 run, or None while none is committed.

    One row per figure (index): the study's value, the engine's before the lean engine ("before"), the "must" and
    the "aim", the headline engine's measured value and whether it meets the must.

    Raises:
        ValueError: for a file measured on another GPU than an H100 (the book's figures come from H100s; other GPUs'
            runs belong under ``benchmarks/results/<gpu>/``), or one without the targets.
    """
    path, result = _h100_targets(path)
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
