"""Every results file of a workspace, found, loaded and checked.

:func:`result_files` lists the results CSVs under a workspace's ``measured/`` folder
(``<gpu>/<engine>/<model>/<name>.csv``, :meth:`energybook.store.workspace.Workspace.results_path`, or any
depth); a CSV without its provenance sidecar is reported (a warning, and :func:`orphans` names them), never
skipped silently. Files of the older layout without the engine folder (``<gpu>/<model>/<name>.csv``) load as
well, with one warning per folder that names the command moving them
(:func:`energybook.store.workspace.migrate_layout`).
:func:`measured_runs` loads each with :func:`energybook.store.results.load_measured`, which checks it
against its sidecar and refuses test data.

Used in :doc:`/book/status` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from energybook.store import results as R
from energybook.store.workspace import MIGRATE_COMMAND, Workspace, old_layout

logger = logging.getLogger(__name__)
_warned_old: set[Path] = set()  # measured folders whose older layout was already reported


def measured_dir(root: str | Path | None = None) -> Path:
    """The folder of measured results: ``<workspace>/measured`` (:meth:`Workspace.resolve`), or ``root``
    itself when it is a ``measured`` folder or holds no ``measured`` subfolder."""
    if root is not None:
        root = Path(root)
        if root.name != "measured" and (root / "measured").is_dir():
            return root / "measured"
        return root
    return Workspace.resolve().measured_dir


def _csvs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.csv") if not p.name.startswith("."))


def _warn_old_layout(folder: Path, files: list[Path]) -> None:
    """Warn once per measured folder about results files of the older layout (no engine folder)."""
    old = [p for p in files if old_layout(p, folder)]
    key = folder.resolve()
    if old and key not in _warned_old:
        _warned_old.add(key)
        root = key.parent if key.name == "measured" else key
        logger.warning("%d results file(s) under %s lie in the older layout <gpu>/<model>/ (%s...), without the "
                       "engine folder <gpu>/<engine>/<model>/: they load as they are; move them with `%s`",
                       len(old), folder, old[0].relative_to(folder), MIGRATE_COMMAND.format(root=str(root)))


def orphans(root: str | Path | None = None) -> list[Path]:
    """Results CSVs that have no provenance sidecar (not loaded; measure again or restore the sidecar)."""
    return [p for p in _csvs(measured_dir(root)) if not R.sidecar_path(p).exists()]


def result_files(root: str | Path | None = None) -> list[Path]:
    """Results CSVs that have a provenance sidecar, sorted (none when the folder is absent).

    A CSV without a sidecar is logged as a warning, with what to do.
    """
    folder = measured_dir(root)
    files = _csvs(folder)
    _warn_old_layout(folder, files)
    for p in files:
        if not R.sidecar_path(p).exists():
            logger.warning("%s has no provenance sidecar (%s) and is not loaded: restore the sidecar from git, "
                           "or remeasure", p, R.sidecar_path(p).name)
    return [p for p in files if R.sidecar_path(p).exists()]


def measured_runs(root: str | Path | None = None, allow_test_data: bool = False) -> list[R.MeasuredRun]:
    """Every measured run under the measured folder, loaded and checked (an empty list when none).

    Each point counts once: the rows of a part file that its results file already holds (a merge cut short)
    are dropped, with a warning (:func:`energybook.store.loader.count_once`).

    Args:
        root: Workspace or ``measured`` folder to search (default: the resolved workspace).
        allow_test_data: Accept simulated or CPU data (tests only).

    Raises:
        energybook.store.results.DataError: a corrupt file, a checksum mismatch, or test data not allowed.
    """
    return R.count_once([R.load_measured(p, allow_test_data=allow_test_data) for p in result_files(root)])


def grid_runs(root: str | Path | None = None, engine: str | None = None, name: str = "grid",
              allow_test_data: bool = False) -> list[R.MeasuredRun]:
    """The measured grids: runs whose file is ``<name>.csv`` (``grid``: a 7x7 sweep in the default protocol), of
    ``engine`` (its folder name: ``hf``, ``lean``...; all when None), as :func:`measured_runs` loads them.

    A second board of the same GPU kind writes ``grid-<board>.csv``, which is not among them."""
    return [r for r in measured_runs(root, allow_test_data) if r.path.stem == name
            and (engine is None or r.engine == engine)]


def measured_table(runs: list[R.MeasuredRun]):
    """All rows of the runs in one tidy table, with ``source`` (the CSV path) beside each row."""
    import pandas as pd

    if not runs:
        return pd.DataFrame(columns=[*R.COLUMNS, "source"])
    return pd.concat([r.data.assign(source=str(r.path)) for r in runs], ignore_index=True)
