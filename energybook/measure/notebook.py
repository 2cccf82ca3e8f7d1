"""The measurement notebook, run with papermill.

``energybook measure`` executes the shipped notebook (``energybook/resources/notebooks/measure.ipynb``,
also at ``notebooks/measure.ipynb`` in a checkout) in a Jupyter kernel. The notebook calls
:func:`energybook.run_sweep` in that kernel, so the sweep's progress bar and log show up live, in the
terminal (papermill's log output) and in the executed notebook. The executed copy goes to the
workspace's notebooks folder (``book/measurements/`` in a checkout) and is scrubbed of local absolute
paths before it is saved.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from energybook import resources
from energybook.store.workspace import PACKAGE_DIR, Workspace, slug


def notebook_source() -> Path:
    """The shipped measurement notebook."""
    return resources.path("notebooks", "measure.ipynb")


def model_label(model: str | Path) -> str:
    """A shipped name as it is; a checkpoint folder by its name; ``.../NAME/config.json`` as NAME."""
    p = Path(str(model))
    if p.name == "config.json":
        return p.parent.name or str(model)
    return p.stem if p.suffix == ".json" else p.name


def _local_paths(workspace: Path | None = None) -> dict[str, str]:
    """Local absolute paths and what they read as in a published notebook, longest first."""
    names: dict[str, str] = {}
    if workspace is not None:
        names[str(workspace)] = "<data>"
    names[str(PACKAGE_DIR.parent)] = "<energybook>"  # an editable install's checkout, or site-packages
    for prefix in (sys.prefix, sys.exec_prefix):
        names.setdefault(prefix, "<python>")
    names.setdefault(str(Path.cwd()), "<cwd>")
    names.setdefault(str(Path.home()), "~")
    for key in list(names):
        names.setdefault(os.path.realpath(key), names[key])
    return dict(sorted(((k, v) for k, v in names.items() if k and k != "/"), key=lambda kv: -len(kv[0])))


def scrub_paths(text: str, names: dict[str, str] | None = None) -> str:
    """Replace local absolute paths (the workspace, the Python environment, the working folder, the home
    folder) by short placeholders."""
    for path, name in (names if names is not None else _local_paths()).items():
        text = text.replace(path, name)
    return text


def _scrub_notebook(path: Path, title: str, workspace: Path | None = None) -> None:
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    pm_meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path", "cwd"):
        pm_meta.pop(key, None)
    names = _local_paths(workspace)
    pm_meta["parameters"] = {k: scrub_paths(v, names) if isinstance(v, str) else v
                             for k, v in (pm_meta.get("parameters") or {}).items()}
    titled = False
    for cell in nb.cells:
        cell.source = scrub_paths(cell.source, names)
        if not titled and cell.cell_type == "markdown" and cell.source.startswith("# "):
            cell.source = f"# {title}: measuring its energy grid\n" + cell.source.partition("\n")[2]
            titled = True
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = scrub_paths(out["text"], names)
            if "traceback" in out:
                out["traceback"] = [scrub_paths(line, names) for line in out["traceback"]]
            for kind, value in (out.get("data") or {}).items():
                if kind.startswith("text/") and isinstance(value, str):
                    out["data"][kind] = scrub_paths(value, names)
    nbformat.write(nb, str(path))


def name_notebook(path: str | Path, name: str, workspace: str | Path | None = None) -> None:
    """Put the model's name into an executed notebook's title and scrub local paths from it."""
    _scrub_notebook(Path(path), name, Path(workspace) if workspace is not None else None)


def run_notebook(model: str | Path, output_notebook: str | Path | None = None,
                 parameters: dict[str, Any] | None = None, kernel: str = "python3",
                 workspace: Workspace | str | Path | None = None, log_output: bool = True) -> Path:
    """Execute the measurement notebook with papermill.

    Args:
        model: Model to measure (the notebook's ``model`` parameter).
        output_notebook: Executed notebook path; default ``<workspace notebooks>/<model>.ipynb``
            (``book/measurements/`` in a checkout), never beside the model's configuration.
        parameters: Other notebook parameters (``n_in``, ``n_out``, ``n_req``, ``max_batch``, ``output``, ...).
        kernel: Jupyter kernel name.
        workspace: The data folder (default :meth:`Workspace.resolve`).
        log_output: Stream the notebook's output (the sweep's log and progress) to this terminal.
    """
    try:
        import papermill as pm
    except ImportError as exc:
        raise RuntimeError("`energybook measure` runs a notebook through papermill: pip install papermill ipykernel "
                           '(or pip install -e ".[gpu]" in a checkout of energybook)') from exc
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    label = model_label(model)
    params = dict(parameters or {}, model=str(model), workspace=str(ws.root))
    bad = sorted(k for k in params if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k))
    if bad:
        raise ValueError(f"notebook parameters must be Python names, got {bad}")
    json.dumps(params)  # parameters must be JSON values
    out = Path(output_notebook) if output_notebook else ws.notebook_path(label)
    if out.suffix != ".ipynb":
        raise ValueError(f"the executed notebook must end in .ipynb, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebook_source()), str(out), parameters=params, kernel_name=kernel,
                            cwd=str(out.parent), progress_bar=False, log_output=log_output)
    except pm.PapermillExecutionError as exc:
        raise RuntimeError(f"the measurement notebook stopped in cell {exc.exec_count}: {exc.ename}: "
                           f"{scrub_paths(str(exc.evalue), _local_paths(ws.root))} (the executed notebook, with "
                           f"its output, is {out})") from None
    finally:
        if out.exists():
            name_notebook(out, slug(label), ws.root)
    return out
