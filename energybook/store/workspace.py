"""Where results live: the :class:`Workspace`, and safe file names inside it.

A workspace is a folder of data. Measured results go to ``<root>/measured/<gpu>/<engine>/<model>/<name>.csv``
(with a provenance sidecar beside each CSV; the engine folder is :func:`engine_slug` of the engine's registered
name: ``torch`` is written ``hf``, its descriptive name); the external engines' data sets, engines and logs go to
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

**The older layout.** Results measured before the engine folder, ``<root>/measured/<gpu>/<model>/<name>.csv``,
still load (:mod:`energybook.store.catalog` warns once and names the command that moves them);
:func:`migrate_layout` moves them into the engine folder their sidecar names.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The environment variable that names the data folder.
ENV_VAR = "ENERGYBOOK_DATA"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: Engine folders that differ from the engine's registered name: ``torch`` and ``hf`` are one engine
#: (:mod:`energybook.measure.engines`), filed under its descriptive name.
ENGINE_FOLDERS = {"torch": "hf"}
#: The command that moves results of the older layout into engine folders (:func:`migrate_layout`).
MIGRATE_COMMAND = 'python -c "from energybook.store.workspace import migrate_layout; migrate_layout({root!r})"'

logger = logging.getLogger(__name__)


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


def engine_slug(engine: str) -> str:
    """The folder of an engine's results under ``measured/<gpu>/``: its registered name, lower case, with
    ``torch`` written ``hf`` (:data:`ENGINE_FOLDERS`): ``"torch"`` -> ``"hf"``, ``"vllm"`` -> ``"vllm"``."""
    name = slug(engine).lower()
    return ENGINE_FOLDERS.get(name, name)


def sidecar_engine(prov: dict[str, Any]) -> str | None:
    """The registered name of the engine a provenance sidecar records: its ``engine_name``, else the protocol's
    ``engine``, else the engine settings' ``engine`` (the oldest sidecars record only that); None when none."""
    settings = prov.get("engine")
    protocol = prov.get("protocol")
    for name in (prov.get("engine_name"), protocol.get("engine") if isinstance(protocol, dict) else None,
                 settings.get("engine") if isinstance(settings, dict) else None):
        if isinstance(name, str) and name.strip():
            return name
    return None


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
        """``<root>/measured``: one folder per GPU, then per engine, then per model."""
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

    def results_path(self, gpu: str, model: str, name: str = "grid", *, engine: str) -> Path:
        """``<root>/measured/<gpu-slug>/<engine-slug>/<model-slug>/<name-slug>.csv``, checked to stay inside
        the root.

        Args:
            gpu: The GPU's name (``"NVIDIA H100 80GB HBM3"``).
            model: The model's name.
            name: The file's stem (``grid``, ``full-64x256``...).
            engine: The engine's registered name (:func:`engine_slug` makes the folder: ``torch`` -> ``hf``).
        """
        return self.inside(self.measured_dir / gpu_slug(gpu) / engine_slug(engine) / slug(model)
                           / f"{slug(name)}.csv")

    def engine_dir(self, engine: str) -> Path:
        """``<root>/.work/<engine>``: an external engine's data sets, engines, reports and logs."""
        return self.inside(self.root / ".work" / slug(engine))

    def notebook_path(self, model: str) -> Path:
        """The executed notebook of a model: ``<notebooks_dir>/<model-slug>.ipynb``."""
        return self.notebooks_dir / f"{slug(model)}.ipynb"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def old_layout(csv: Path, measured: Path) -> bool:
    """Whether a results CSV lies in the older layout, ``<measured>/<gpu>/<model>/<name>.csv``: three levels
    under ``measured`` in a folder that is not its engine's folder (:func:`engine_slug` of its sidecar)."""
    try:
        rel = Path(csv).resolve().relative_to(Path(measured).resolve())
    except ValueError:
        return False
    if len(rel.parts) != 3:
        return False
    prov = _read_json(Path(csv).with_suffix(".json")) or {}
    engine = sidecar_engine(prov)
    return engine is None or rel.parts[1] != engine_slug(engine)


def _measured_of(root: str | Path) -> Path:
    root = Path(root).expanduser().resolve()
    return root if root.name == "measured" or not (root / "measured").is_dir() else root / "measured"


def migrate_layout(root: str | Path) -> list[tuple[Path, Path]]:
    """Move results of the older layout, ``measured/<gpu>/<model>/<name>.csv``, into
    ``measured/<gpu>/<engine>/<model>/<name>.csv``, the engine read from each file's sidecar
    (:func:`sidecar_engine`, :func:`engine_slug`).

    Each CSV moves with its sidecar (unchanged: its sha256 covers the CSV's bytes, not its path) and the
    sidecar of an unfinished merge, if any, under the CSV's writer lock (a sweep writing it refuses the move).
    Idempotent: files already in an engine folder stay where they are, and a second call moves nothing. A CSV
    without a sidecar, or whose sidecar names no engine, is left where it is (a warning says so).

    Args:
        root: A workspace (its ``measured/`` is searched) or a ``measured`` folder.

    Returns:
        The moves made, ``(from, to)``, CSVs and sidecars.

    Raises:
        PathError: a file would overwrite one already at its new place (nothing is moved then).
        energybook.store.results.LockedError: a sweep is writing one of the files (files before it moved).
    """
    from energybook.store.lock import FileLock
    from energybook.store.schema import lock_path, pending_path

    measured = _measured_of(root)
    moves: list[tuple[Path, Path, Path]] = []  # (csv, from, to)
    for csv in sorted(measured.glob("*/*/*.csv")) if measured.is_dir() else []:
        if csv.name.startswith(".") or not old_layout(csv, measured):
            continue
        prov = _read_json(csv.with_suffix(".json"))
        engine = sidecar_engine(prov) if prov is not None else None
        if engine is None:
            logger.warning("%s is not moved: %s", csv, "its sidecar names no engine" if prov is not None
                           else "it has no readable provenance sidecar")
            continue
        target = csv.parent.parent / engine_slug(engine) / csv.parent.name
        for f in (csv, csv.with_suffix(".json"), pending_path(csv)):
            if f.exists():
                moves.append((csv, f, target / f.name))
    targets = [to for _, _, to in moves]
    clash = sorted({str(to) for to in targets if to.exists() or targets.count(to) > 1})
    if clash:
        raise PathError(f"not moving the older layout under {measured}: {', '.join(clash)} already exist(s); "
                        "move or remove one of each pair by hand, then run migrate_layout again")
    done: list[tuple[Path, Path]] = []
    for csv in dict.fromkeys(c for c, _, _ in moves):
        lock = FileLock(lock_path(csv), csv)
        lock.acquire()
        try:
            for _, src, dst in (m for m in moves if m[0] == csv):
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.rename(src, dst)
                done.append((src, dst))
        finally:
            lock.release()  # removes the lock file beside the old place
        logger.info("moved %s to %s", csv, done[-1][1].parent)
        try:
            csv.parent.rmdir()  # only when empty
        except OSError:
            pass
    return done
