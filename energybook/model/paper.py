"""The data that ships with energybook: the study's published tables.

The package data ``energybook/resources/paper/`` holds the SweetSpot study's Tables 2, 3 and 5
(arXiv 2602.05695v1, CC BY 4.0), and ``quoted.csv``: every other number the book quotes from the study,
one row each with where the study prints it (read with :func:`quoted` and :func:`quoted_table`).
Our own GPU measurements are read by :mod:`energybook.store.results`.

Used in :doc:`/book/counting` and :doc:`/book/fitting`.
"""

from __future__ import annotations

import difflib
import functools
import logging
from pathlib import Path

import pandas as pd

from energybook import resources
from energybook.model import fit as _fit
from energybook.model.architecture import PAPER_LABELS

logger = logging.getLogger(__name__)

PAPER_DIR = resources.path("paper")

_TO_NAME = {label: name for name, label in PAPER_LABELS.items()}


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the package data: the installation is incomplete; "
                                "reinstall energybook")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CSV ({exc}); restore it with `git checkout -- {path}`") from None
    if "llm" in table.columns:
        table.insert(0, "model", table["llm"].map(_TO_NAME))
    return table


def paper_table2() -> pd.DataFrame:
    """The study's 13 models with their architecture (Table 2, completed from the configs)."""
    return _read(PAPER_DIR / "paper_table2_models.csv")


def paper_table3() -> pd.DataFrame:
    """The study's Table 3: MAPE (%) per model and formula, in-sample."""
    return _read(PAPER_DIR / "paper_table3_mape.csv")


def paper_table5() -> pd.DataFrame:
    """The study's Table 5: Memory+FLOPs thetas (J per output token), measured best grid
    point and estimated sweet spot per model."""
    return _read(PAPER_DIR / "paper_table5_theta.csv")


def paper_thetas(model: str) -> dict[str, float]:
    """The study's fitted Memory+FLOPs thetas of one model (our name or the study's label)."""
    table = paper_table5()
    row = table[(table["model"] == model) | (table["llm"] == model)]
    if row.empty:
        raise ValueError(f"unknown model {model!r}; the study's models are {list(table['model'])}")
    return {f"theta{i}": float(row.iloc[0][f"theta{i}"]) for i in range(6)}


def paper_surface(model: str) -> pd.DataFrame:
    """The study's fitted efficiency surface of one model over the 7x7 grid (tidy table)."""
    table = _fit.predict_grid(paper_thetas(model))
    table.insert(0, "model", _TO_NAME.get(model, model))
    return table


def paper_surfaces() -> pd.DataFrame:
    """:func:`paper_surface` for all 13 models, stacked."""
    return pd.concat([paper_surface(m) for m in paper_table5()["model"]], ignore_index=True)


#: Columns of ``quoted.csv``; every one must be filled in every row.
QUOTED_COLUMNS = ("key", "value", "unit", "what", "where", "version", "scope", "source")


@functools.lru_cache(maxsize=1)
def _quoted() -> pd.DataFrame:
    path = PAPER_DIR / "quoted.csv"
    table = _read_quoted(path)
    missing = [c for c in QUOTED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; it needs {list(QUOTED_COLUMNS)}")
    if table["key"].duplicated().any():
        raise ValueError(f"{path}: duplicate keys {sorted(set(table.loc[table['key'].duplicated(), 'key']))}")
    return table


def _read_quoted(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the package data: the installation is incomplete; "
                                "reinstall energybook")
    # Values are read as text so that their printed form (48.90, 4.90) survives; quoted() converts.
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def quoted_table() -> pd.DataFrame:
    """Every number the book quotes from the study, one row each (``quoted.csv``).

    Columns: ``key`` (identifier), ``value`` (as the study prints it, text), ``unit``, ``what`` (one line),
    ``where`` (the study's table, section or experiment), ``version`` (arXiv version, ``v1``), ``scope``
    (which models, points or statistic: a mean, a maximum, one model at one point) and ``source`` (where we read it).

    Used by every chapter that quotes the study, e.g. :doc:`/book/intro` and :doc:`/book/comparison`.
    """
    return _quoted().copy()


def _number(text: str) -> float | int:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def quoted(key: str) -> float | int:
    """One number the study prints, by its key in ``quoted.csv`` (an int for whole numbers, else a float).

    Raises:
        KeyError: for an unknown key, naming the closest keys.
    """
    table = _quoted()
    hit = table.loc[table["key"] == key, "value"]
    if hit.empty:
        close = difflib.get_close_matches(key, list(table["key"]), n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the keys are {', '.join(table['key'])}"
        raise KeyError(f"no study number {key!r} in quoted.csv{hint}")
    return _number(hit.iloc[0])
