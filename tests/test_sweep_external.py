"""One sweep command for every engine: the external engines through stand-in executables.

Nothing here runs TensorRT-LLM or vLLM: the stand-ins print the documented report formats.
"""

import os

import pytest

from energybook.measure import engines
from energybook.measure import runner as sweep
from energybook.measure.meter import SimulatedMeter
from energybook.store import results as R
from tests.test_external import fake_executable
from tests.test_external_engines import FAKE_TRTLLM, FAKE_VLLM

FAKE_BUILD = """
import pathlib, sys
if "build" in sys.argv:
    a = sys.argv
    folder = pathlib.Path(a[a.index("--workspace") + 1]) / a[a.index("--model") + 1] / "tp_1_pp_1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    print("[TRT-LLM] [I] engine built (stand-in)")
    sys.exit(0)
"""


@pytest.fixture()
def stand_ins(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_executable(bindir, "vllm", FAKE_VLLM)
    fake_executable(bindir, "trtllm-bench", FAKE_BUILD + FAKE_TRTLLM.replace("SHORT", "0"))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


@pytest.mark.parametrize("engine", ["vllm", "trtllm"])
def test_sweep_drives_external_engines_and_resumes(stand_ins, engine):
    out = stand_ins / "res" / f"{engine}.csv"
    kw = dict(n_in=[16, 32], n_out=[8], n_req=4, device="cpu", meter=SimulatedMeter(), allow_test_data=True,
              engine=engine, workspace=stand_ins, cooldown_s=0, progress=False, output=out)
    first = sweep.run_sweep("org/model", stop_after=1, **kw)
    assert first.measured == 1
    second = sweep.run_sweep("org/model", **kw)
    assert (second.measured, second.skipped) == (1, 1)
    run = R.load_measured(out, allow_test_data=True)
    assert sorted(run.data["n_in"]) == [16, 32]
    assert set(run.data["mode"]) == {"external"} and (run.data["tokens_out"] == 32).all()
    prov = run.provenance
    assert prov["engine"]["engine"] == engine and prov["protocol"]["engine"] == engine
    points = prov["points"].values()
    assert all(p["command"].startswith("vllm bench" if engine == "vllm" else "trtllm-bench") for p in points)
    # token match and window kind are columns of the CSV, not only in the point log
    assert (run.data["tokens_match"] == "True").all() and set(run.data["window_kind"]) <= {"bench", "process"}
    assert set(run.data["engine"]) == {engine}


def test_unknown_engine_is_named():
    with pytest.raises(ValueError, match="unknown engine 'sglang'"):
        engines.make_engine("sglang", "org/model")


def test_missing_engine_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="pip install vllm"):
        sweep.run_sweep("org/model", n_in=[16], n_out=[8], n_req=2, device="cpu", meter=SimulatedMeter(),
                        allow_test_data=True, engine="vllm", workspace=tmp_path, cooldown_s=0,
                        progress=False, output=tmp_path / "r.csv")


def test_the_external_engines_are_plugins_labelled_untested():
    from energybook.measure.external import trtllm, vllm

    for name, module, cls in (("trtllm", trtllm, trtllm.TrtllmBenchEngine), ("vllm", vllm, vllm.VllmBenchEngine)):
        spec = engines.get_engine(name)
        assert (spec.kind, spec.tested, spec.load()) == ("command", False, cls) and "untested" in spec.summary
        assert f"{module.__name__}:register" in engines.PLUGINS
    assert engines.engine_names()[-2:] == ("trtllm", "vllm")  # in the order of PLUGINS, however they were imported


def test_a_broken_plugin_is_left_out_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(engines, "_REGISTRY", dict(engines._REGISTRY))
    monkeypatch.setattr(engines, "_plugins_loaded", False)
    monkeypatch.setattr(engines, "PLUGINS", (*engines.PLUGINS, "energybook.no_such_plugin:register"))
    with caplog.at_level("WARNING", logger=engines.__name__):
        assert "vllm" in engines.engine_names()
    assert "energybook.no_such_plugin:register could not be loaded" in caplog.text


def test_a_registered_engine_replaces_the_plugins_of_that_name(monkeypatch):
    monkeypatch.setattr(engines, "_REGISTRY", dict(engines._REGISTRY))
    monkeypatch.setattr(engines, "_plugins_loaded", False)  # the plugins load first, then this replaces theirs
    engines.register_engine("vllm", "command", lambda model, workspace_dir: "mine")
    assert engines.make_engine("vllm", "org/m") == "mine"
