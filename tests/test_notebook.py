"""notebooks/measure.ipynb runs through papermill with tiny CPU parameters (simulated meter)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("torch")

from energybook.measure import notebook as S  # noqa: E402
from energybook.store import results as R  # noqa: E402

from .tiny import tiny_config  # noqa: E402


def test_source_notebook_has_parameters_and_no_outputs():
    nb = json.loads(S.notebook_source().read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_runs_on_the_cpu_with_tiny_parameters(tmp_path):
    cfg = tiny_config(tmp_path)
    out_csv = tmp_path / "measured" / "grid.csv"
    out_nb = S.run_notebook(str(cfg), tmp_path / "executed.ipynb", dict(
        n_in=[4, 8], n_out=[2, 4], n_req=6, max_batch=4, device="cpu", allow_test_data=True, output=str(out_csv),
        min_window_s=0.0, cooldown_s=0.0), workspace=tmp_path)
    run = R.load_measured(out_csv, allow_test_data=True)
    assert len(run.data) == 4 and run.provenance["test_data"] is True
    nb = json.loads(out_nb.read_text())
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert "4 points measured" in text and "Measured tokens per joule over the grid" in json.dumps(nb)
    assert "complete: all 4 points measured" in text
    # The sweep ran in the notebook's kernel through the package API, not in a subprocess.
    source = json.dumps([c["source"] for c in nb["cells"]])
    assert "eb.run_sweep(" in source and "subprocess.run([sys.executable" not in source
    # No local absolute paths: not the workspace, the home folder, the venv or the working folder.
    whole = out_nb.read_text()
    for local in (str(tmp_path), str(Path.home()), sys.prefix, str(Path.cwd())):
        assert local not in whole, local
    assert "<data>/measured/grid.csv" in whole
    title = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "".join(title["source"]).startswith(f"# {cfg.stem}: measuring its energy grid")


def test_a_failing_notebook_is_one_error_and_lands_in_the_workspace(tmp_path):
    """An error in the kernel is a RuntimeError naming it (the CLI prints one line), the executed notebook goes
    to the workspace's notebooks folder (never beside the model's configuration), with no local paths."""
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    with pytest.raises(RuntimeError, match="stopped in cell .*ValueError: unknown model 'No-Such-Model'"):
        S.run_notebook("No-Such-Model", parameters=dict(device="cpu", allow_test_data=True),
                       workspace=tmp_path / "ws")
    out = tmp_path / "ws" / "notebooks" / "No-Such-Model.ipynb"
    assert out.is_file() and not list(config_dir.iterdir())
    text = out.read_text()
    for local in (str(tmp_path), str(Path.home()), sys.prefix, str(Path(S.__file__).parents[2])):
        assert local not in text, local
