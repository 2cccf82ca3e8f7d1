"""Where results go: the workspace's order of choice, slugs, and paths that cannot escape it."""

import pytest

from energybook.measure import runner as S
from energybook.measure.meter import SimulatedMeter
from energybook.measure.protocol import SweepConfig
from energybook.store.workspace import PACKAGE_DIR, PathError, Workspace, checkout_root, gpu_slug, slug
from tests.test_sweep import Clock, FakeEngine


def test_slugs():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("../../x") == "x" and slug("org/model") == "org-model" and slug("Llama-3.2-1B") == "Llama-3.2-1B"
    with pytest.raises(PathError):
        slug("../..")


def test_order_of_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("ENERGYBOOK_DATA", raising=False)
    assert Workspace.resolve(tmp_path / "a").root == (tmp_path / "a").resolve()
    monkeypatch.setenv("ENERGYBOOK_DATA", str(tmp_path / "env"))
    assert Workspace.resolve().root == (tmp_path / "env").resolve()
    monkeypatch.delenv("ENERGYBOOK_DATA")
    monkeypatch.chdir(tmp_path)  # outside any checkout: the current directory
    assert Workspace.resolve().root == tmp_path.resolve()
    root = checkout_root(PACKAGE_DIR)
    if root is not None:  # inside a checkout: its data/
        monkeypatch.chdir(root / "book")
        assert Workspace.resolve().root == (root / "data").resolve()
        assert Workspace.resolve().notebooks_dir == root / "book" / "measurements"


def test_never_inside_the_package():
    with pytest.raises(PathError, match="inside the installed package"):
        Workspace(PACKAGE_DIR / "resources")


def test_paths_stay_inside(tmp_path):
    ws = Workspace(tmp_path)
    path = ws.results_path("NVIDIA H100 80GB HBM3", "../../x", engine="../torch")
    assert path == tmp_path.resolve() / "measured" / "nvidia-h100-80gb-hbm3" / "hf" / "x" / "grid.csv"
    assert ws.engine_dir("../vllm").parent == tmp_path.resolve() / ".work"
    with pytest.raises(PathError, match="outside the workspace"):
        ws.inside(tmp_path.parent / "elsewhere.csv")
    with pytest.raises(PathError, match="outside the workspace"):
        ws.inside("../escape.csv")


def test_sweep_output_outside_the_workspace_is_refused(tmp_path):
    clock = Clock()
    with pytest.raises(PathError, match="outside the workspace"):
        S.run_sweep("fake-model", output=tmp_path.parent / "x.csv", workspace=tmp_path / "ws",
                    engine=FakeEngine(clock), meter=SimulatedMeter(clock=clock), device="cpu", allow_test_data=True,
                    n_in=[8], n_out=[4], n_req=2, progress=False, cooldown_s=0)
    with pytest.raises(PathError, match=".csv"):
        S.run_sweep("fake-model", output=tmp_path / "ws" / "m.json", workspace=tmp_path / "ws",
                    engine=FakeEngine(clock), meter=SimulatedMeter(clock=clock), device="cpu", allow_test_data=True,
                    n_in=[8], n_out=[4], n_req=2, progress=False, cooldown_s=0)


def test_default_output_is_a_slug_inside_the_workspace(tmp_path):
    clock = Clock()
    eng = FakeEngine(clock)
    eng.name = "../../escape"
    config = SweepConfig(n_in=[8], n_out=[4], n_req=2, cooldown_s=0, min_window_s=0, engine="torch")
    res = S.run_sweep("x", config, workspace=tmp_path, engine=eng, meter=SimulatedMeter(clock=clock), device="cpu",
                      allow_test_data=True, progress=False)
    assert res.path == tmp_path.resolve() / "measured" / "simulated" / "hf" / "escape" / "grid.csv"
