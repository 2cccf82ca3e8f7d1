"""Data shipped inside the package (read with :mod:`importlib.resources`, so a plain ``pip install``
finds them): the 13 study models' configurations (``architectures/``), the study's published tables
(``paper/``) and the measurement notebook (``notebooks/measure.ipynb``). Each folder's README gives
the sources."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def path(*parts: str) -> Path:
    """A shipped file or folder, e.g. ``path("architectures")`` or ``path("notebooks", "measure.ipynb")``."""
    p = Path(str(resources.files(__name__).joinpath(*parts)))
    if not p.exists():
        raise FileNotFoundError(f"the package data {'/'.join(parts)} is missing from {p.parent}: the installation "
                                "is incomplete; reinstall energybook")
    return p
