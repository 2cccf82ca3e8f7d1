"""The committed outputs of the GPU benchmarks, parsed: what ``benchmarks/`` printed or saved, read from a folder the
caller names (in a checkout, ``benchmarks/results/``).

Nothing here knows where that folder is: every function takes the results folder (or one file in it), so that an
installed package never reads a checkout's ``benchmarks/``. :mod:`energybook.report.bench` resolves the folder for
the book (an argument, or ``$ENERGYBOOK_BENCH_RESULTS``) and builds its tables from these records.

Used in :doc:`/book/comparison`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

#: The file each reader takes inside a results folder.
FILES = {"decode_attention": "decode_attention.txt", "engine_benchmark": "bench_engine.json",
         "engine_targets": "engine_targets.json"}

ATTENTION_COLUMNS = ["model", "heads", "batch", "context", "way", "us", "kv_gb_s", "of_copy", "max_err"]


def results_file(results: str | Path, name: str) -> Path:
    """The file of reader ``name`` (a key of :data:`FILES`) in the folder ``results``; a path that is not a folder is
    taken as the file itself."""
    path = Path(results)
    return path / FILES[name] if path.is_dir() else path


def decode_attention(results: str | Path) -> pd.DataFrame:
    """The table printed by ``benchmarks/decode_attention.py``: one row per (model, batch, context, way).

    Args:
        results: The results folder (its ``decode_attention.txt``) or the file itself.

    Columns: model, heads ("K/H": key/value heads over query heads), batch, context (tokens),
    way (``varlen``, ``varlen_folded``, ``sdpa_folded``), us (microseconds per call), kv_gb_s (the
    KV bytes read once, per second), of_copy (that over the copy bandwidth), max_err.

    Raises:
        ValueError: a file without the table's header, or with rows of another width.
    """
    path = results_file(results, "decode_attention")
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "K/H"])
    except StopIteration:
        raise ValueError(f"{path}: no table header ('model  K/H ...') found; is this the output of "
                         "benchmarks/decode_attention.py?") from None
    rows = [line.split() for line in lines[start + 1:] if line.strip()]
    bad = [r for r in rows if len(r) != len(ATTENTION_COLUMNS)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} table row(s) do not have {len(ATTENTION_COLUMNS)} fields, "
                         f"e.g. {' '.join(bad[0])!r}; rerun benchmarks/decode_attention.py")
    table = pd.DataFrame(rows, columns=ATTENTION_COLUMNS)
    for c in ("batch", "context"):
        table[c] = table[c].astype(int)
    for c in ("us", "kv_gb_s", "of_copy", "max_err"):
        table[c] = table[c].astype(float)
    return table


def engine_benchmark(results: str | Path) -> dict:
    """The JSON saved by ``benchmarks/hf_engine_speed.py`` (``bench_engine.json``; the folder or the file)."""
    return json.loads(results_file(results, "engine_benchmark").read_text())


def engine_targets(results: str | Path) -> tuple[Path, dict | None]:
    """The path and JSON of ``engine_targets.json`` (``benchmarks/engine_targets.py``; None while absent), its
    ``gpu`` as text; refuses a run on another GPU than an H100.

    Args:
        results: The results folder or the file itself.

    Raises:
        ValueError: for a run on another GPU (the book's figures come from H100s; other GPUs' runs belong under
            ``benchmarks/results/<gpu>/``).
    """
    path = results_file(results, "engine_targets")
    if not path.is_file():
        return path, None
    result = json.loads(path.read_text())
    gpu = str(result.get("gpu") or "")
    if "H100" not in gpu:
        raise ValueError(f"{path}: measured on {gpu or 'an unnamed GPU'}, not an H100; the book's figures come from "
                         "H100s: keep other GPUs' runs under benchmarks/results/<gpu>/")
    return path, dict(result, gpu=gpu)
