"""Results under ``measured/<gpu>/<engine>/<model>/`` (#22 item 1): the path, a CPU sweep writing there, the older
``<gpu>/<model>/`` layout still loading (with one warning), :func:`migrate_layout`, and the committed grids in their
engine folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import energybook as eb
from energybook.measure.protocol import SweepConfig
from energybook.measure.runner import run_sweep
from energybook.store import catalog
from energybook.store import results as R
from energybook.store.lock import FileLock
from energybook.store.workspace import (
    PathError,
    Workspace,
    engine_slug,
    migrate_layout,
    old_layout,
    sidecar_engine,
)
from tests.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "data" / "measured" / "nvidia-h100-80gb-hbm3"
COMMITTED = {"Llama-3.2-1B": {"grid", "full-64x256", "full-512x128", "full-2048x64"},
             "OPT-1.3B": {"grid", "full-1024x256", "full-4096x64"}, "Qwen2-1.5B": {"grid"}}


def test_the_engine_folder_is_the_registered_name_with_torch_written_hf():
    assert [engine_slug(e) for e in ("torch", "hf", "lean", "vllm", "trtllm", "My Engine")] == [
        "hf", "hf", "lean", "vllm", "trtllm", "my-engine"]
    assert sidecar_engine({"engine_name": "lean", "protocol": {"engine": "torch"}}) == "lean"
    assert sidecar_engine({"protocol": {"engine": "vllm"}, "engine": {"engine": "torch"}}) == "vllm"
    assert sidecar_engine({"engine": {"engine": "torch"}}) == "torch"  # the oldest sidecars record only this
    assert sidecar_engine({"engine": "?"}) is None


def test_results_path_has_the_engine_folder_and_needs_an_engine(tmp_path):
    ws = Workspace(tmp_path)
    path = ws.results_path("NVIDIA H100 80GB HBM3", "Llama-3.2-1B", "full-64x256", engine="torch")
    assert path == tmp_path.resolve() / "measured" / "nvidia-h100-80gb-hbm3" / "hf" / "Llama-3.2-1B" / "full-64x256.csv"
    assert ws.results_path("g", "m", engine="vllm").parts[-4:] == ("g", "vllm", "m", "grid.csv")
    with pytest.raises(TypeError, match="engine"):
        ws.results_path("g", "m")  # no silent default
    with pytest.raises(PathError):
        ws.results_path("g", "m", engine="..")


def _sweep(tmp_path: Path, engine: str = "torch", data: Path | None = None):
    settings = (eb.engine_settings("lean", cuda_graphs=False, compile=False) if engine == "lean"
                else eb.engine_settings(engine, cuda_graphs=False))
    config = SweepConfig(n_in=[8], n_out=[4], n_req=2, max_batch=2, min_window_s=0.0, cooldown_s=0.0, engine=engine,
                         engine_settings=settings)
    return run_sweep(tiny_config(tmp_path), config, workspace=data or tmp_path / "data", device="cpu",
                     allow_test_data=True, progress=False)


@pytest.mark.parametrize("engine, folder", [("torch", "hf"), ("hf", "hf"), ("lean", "lean")])
def test_a_cpu_sweep_writes_under_its_engine_folder(tmp_path, engine, folder):
    res = _sweep(tmp_path, engine)
    measured = (tmp_path / "data" / "measured").resolve()
    assert res.path.relative_to(measured).parts == ("simulated", folder, "tiny-Llama-3.2-1B", "grid.csv")
    assert res.path.with_suffix(".json").is_file()
    assert sidecar_engine(R.read_sidecar(res.path)) == engine
    assert not old_layout(res.path, measured)
    runs = catalog.measured_runs(tmp_path / "data", allow_test_data=True)
    assert [r.path for r in runs] == [res.path]


def test_an_external_engine_writes_under_its_engine_folder(tmp_path, monkeypatch):
    import os

    from energybook.measure.meter import SimulatedMeter
    from tests.test_external import fake_executable
    from tests.test_external_engines import FAKE_VLLM

    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "vllm", FAKE_VLLM)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    res = run_sweep("org/model", n_in=[16], n_out=[8], n_req=4, device="cpu", meter=SimulatedMeter(),
                    allow_test_data=True, engine="vllm", workspace=tmp_path, cooldown_s=0, progress=False)
    assert res.path.relative_to(tmp_path.resolve() / "measured").parts == ("simulated", "vllm", "org-model",
                                                                          "vllm-grid.csv")


def _to_old_layout(res_path: Path) -> Path:
    """Move a sweep's model folder to where the older layout put it (``<gpu>/<model>/``)."""
    model_dir = res_path.parent
    old = model_dir.parent.parent / model_dir.name
    shutil.move(model_dir, old)
    model_dir.parent.rmdir()
    return old / res_path.name


def test_the_older_layout_still_loads_with_one_warning(tmp_path, caplog):
    res = _sweep(tmp_path)
    rows = len(R.load_measured(res.path, allow_test_data=True).data)
    old = _to_old_layout(res.path)
    measured = tmp_path / "data" / "measured"
    assert old_layout(old, measured)
    with caplog.at_level(logging.WARNING, logger="energybook.store.catalog"):
        first = catalog.measured_runs(tmp_path / "data", allow_test_data=True)
        second = catalog.measured_runs(measured, allow_test_data=True)
    assert [r.path for r in first] == [r.path for r in second] == [old]
    assert len(first[0].data) == rows
    assert len(R.load_measured(measured, allow_test_data=True)) == rows
    warned = [r.getMessage() for r in caplog.records if "older layout" in r.getMessage()]
    assert len(warned) == 1, warned  # once per folder
    assert "migrate_layout(" in warned[0] and str((tmp_path / "data").resolve()) in warned[0]


def test_migrate_layout_moves_the_older_layout_and_is_idempotent(tmp_path, caplog):
    res = _sweep(tmp_path)
    old = _to_old_layout(res.path)
    before = {p.name: p.read_bytes() for p in old.parent.iterdir()}
    R.lock_path(old).write_text("{}")  # a lock file left by a killed sweep does not block the move
    moves = migrate_layout(tmp_path / "data")
    assert sorted((a.name, b) for a, b in moves) == sorted([(old.name, res.path),
                                                            (old.with_suffix(".json").name,
                                                             res.path.with_suffix(".json"))])
    assert {p.name: p.read_bytes() for p in res.path.parent.iterdir()} == before  # byte-identical
    assert not old.parent.exists()  # the emptied model folder is removed (its stale lock file with it)
    assert [r.path for r in catalog.measured_runs(tmp_path / "data", allow_test_data=True)] == [res.path]
    assert migrate_layout(tmp_path / "data") == []  # idempotent
    assert migrate_layout(tmp_path / "data" / "measured") == []  # a measured folder works as well
    with caplog.at_level(logging.WARNING, logger="energybook.store.catalog"):
        catalog.measured_runs(tmp_path / "data", allow_test_data=True)
    assert not [r for r in caplog.records if "older layout" in r.getMessage()]


def test_migrate_layout_refuses_to_overwrite_and_to_move_a_file_being_written(tmp_path):
    res = _sweep(tmp_path)
    new_bytes = res.path.read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(res.path.parent, copy)
    old = _to_old_layout(res.path)
    shutil.copytree(copy, res.path.parent)  # the same file at its new place too
    with pytest.raises(PathError, match="already exist"):
        migrate_layout(tmp_path / "data")
    assert old.is_file() and old.with_suffix(".json").is_file() and res.path.read_bytes() == new_bytes
    shutil.rmtree(res.path.parent)
    lock = FileLock(R.lock_path(old), old)  # a sweep writing it
    lock.acquire()
    try:
        with pytest.raises(R.LockedError):
            migrate_layout(tmp_path / "data")
    finally:
        lock.release()
    assert old.is_file() and not res.path.exists()
    assert len(migrate_layout(tmp_path / "data")) == 2 and res.path.is_file()


def test_migrate_layout_leaves_a_csv_whose_engine_is_unknown(tmp_path, caplog):
    res = _sweep(tmp_path)
    old = _to_old_layout(res.path)
    side = old.with_suffix(".json")
    prov = json.loads(side.read_text())
    for key in ("engine_name", "engine"):
        prov.pop(key, None)
    prov["protocol"].pop("engine", None)
    side.write_text(json.dumps(prov))
    with caplog.at_level(logging.WARNING, logger="energybook.store.workspace"):
        assert migrate_layout(tmp_path / "data") == []
    assert old.is_file() and "names no engine" in caplog.text


def test_the_committed_grids_load_from_their_engine_folder():
    runs = catalog.measured_runs(ROOT / "data")
    found: dict[str, set[str]] = {}
    for run in runs:
        rel = run.path.relative_to(H100)
        assert rel.parts[:1] == ("hf",) and len(rel.parts) == 3, rel
        assert engine_slug(sidecar_engine(run.provenance)) == "hf"
        assert rel.parts[1] == run.provenance["model"]
        found.setdefault(rel.parts[1], set()).add(run.path.stem)
    assert {m: found.get(m, set()) & names for m, names in COMMITTED.items()} == COMMITTED
    assert not [p for p in (ROOT / "data" / "measured").rglob("*.csv") if old_layout(p, ROOT / "data" / "measured")]
    assert not [p for p in H100.iterdir() if p.is_dir() and p.name != "hf"]  # nothing left in the older layout
