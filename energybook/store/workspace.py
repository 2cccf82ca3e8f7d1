"""Where results live: the :class:`Workspace`, and safe file names inside it.

A workspace is a folder of data. Measured results go to ``<root>/measured/<gpu>/<model>/<name>.csv``
(with a provenance sidecar beside each CSV); the external engines' data sets, engines and logs go to
``<root>/.work/<engine>/``; executed measurement notebooks go to ``book/measurements/`` in a checkout
of the book and to ``<root>/notebooks/`` elsewhere.

The root is chosen once, in this order (:func:`Workspace.resolve`):

1. the ``root`` argument;
2. the environment variable ``ENERGYBOOK_DATA``;
3. the ``data/`` folder of the energybook checkout that holds the current directory;
4. the current directory.

It is never inside the installed package (site-packages): results written there would vanish with
the next upgrade. Every path handed out is a slug of the model's or GPU's name and is checked to stay
inside the root, so ``--model ../../x`` cannot write elsewhere.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

#: The environment variable that names the data folder.
ENV_VAR = "ENERGYBOOK_DATA"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


class PathError(ValueError):
    """A path that would leave the workspace or overwrite a file that is not ours."""


def slug(text: str) -> str:
    """File-system name for a GPU or model: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``.

    Keeps letters, digits, dots, dashes and underscores; never empty, never ``.`` or ``..``.
    """
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    if not s:
        raise PathError(f"{text!r} gives no usable file name: name the model or GPU with letters or digits")
    return s


def gpu_slug(gpu: str) -> str:
    """Lower-case slug of a GPU's name (the folder under ``measured/``)."""
    return slug(gpu).lower()


def checkout_root(start: str | Path | None = None) -> Path | None:
    """The energybook checkout (the folder with its ``pyproject.toml`` and ``data/``) that holds ``start``
    (default: the current directory), or None."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        project = folder / "pyproject.toml"
        if project.is_file() and (folder / "data").is_dir() and (folder / "energybook").is_dir():
            try:
                if 'name = "energybook"' in project.read_text():
                    return folder
            except OSError:
                return None
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Workspace:
    """A data folder: measured results, engine work files and executed notebooks.

    Attributes:
        root: The data folder (``data/`` of a checkout, ``$ENERGYBOOK_DATA``, or a folder you name).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())
        if _inside(self.root, PACKAGE_DIR):
            raise PathError(f"the workspace {self.root} lies inside the installed package: results would be lost "
                            f"on upgrade; pass another folder or set {ENV_VAR}")

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> Workspace:
        """The workspace: ``root``, else ``$ENERGYBOOK_DATA``, else a checkout's ``data/``, else the current
        directory (module docstring)."""
        if root is not None:
            return cls(Path(root))
        env = os.environ.get(ENV_VAR)
        if env:
            return cls(Path(env))
        checkout = checkout_root()
        return cls(checkout / "data" if checkout else Path.cwd())

    @property
    def measured_dir(self) -> Path:
        """``<root>/measured``: one folder per GPU, then per model."""
        return self.root / "measured"

    @property
    def notebooks_dir(self) -> Path:
        """Where executed measurement notebooks go: ``book/measurements`` in a checkout, else ``<root>/notebooks``."""
        checkout = checkout_root(self.root)
        if checkout is not None and self.root == (checkout / "data").resolve():
            return checkout / "book" / "measurements"
        return self.root / "notebooks"

    def inside(self, path: str | Path) -> Path:
        """``path`` (relative paths taken from the root) if it stays inside the workspace; raise otherwise."""
        p = Path(path)
        p = p if p.is_absolute() else self.root / p
        if not _inside(p, self.root):
            raise PathError(f"{path} lies outside the workspace {self.root}: give a path inside it, or choose "
                            f"another workspace (--data or {ENV_VAR})")
        return p

    def results_path(self, gpu: str, model: str, name: str = "grid") -> Path:
        """``<root>/measured/<gpu-slug>/<model-slug>/<name-slug>.csv``, checked to stay inside the root."""
        return self.inside(self.measured_dir / gpu_slug(gpu) / slug(model) / f"{slug(name)}.csv")

    def engine_dir(self, engine: str) -> Path:
        """``<root>/.work/<engine>``: an external engine's data sets, engines, reports and logs."""
        return self.inside(self.root / ".work" / slug(engine))

    def notebook_path(self, model: str) -> Path:
        """The executed notebook of a model: ``<notebooks_dir>/<model-slug>.ipynb``."""
        return self.notebooks_dir / f"{slug(model)}.ipynb"
