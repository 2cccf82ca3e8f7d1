"""The benchmarks' one harness (``benchmarks/harness.py``) on the CPU: the engine factory builds what a sweep builds,
the timer, the record's provenance; the scripts are modules that import one another; and no shipped module reads
the checkout's ``benchmarks/``."""

from __future__ import annotations

import ast
import importlib
import json
import re
import time
from pathlib import Path

import pytest

import energybook as eb
from benchmarks import harness
from energybook.measure import settings as S

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


def _tiny(tmp_path) -> Path:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=64,
                                   hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256, torch_dtype="float32")))
    return cfg


# ----- the timer ---------------------------------------------------------------------------------------------
def test_the_timer_on_the_cpu_counts_warmups_setups_and_samples():
    calls, setups = [], []
    t = harness.time_ms(lambda: (calls.append(1), time.sleep(0.002)), device="cpu", repeats=5, warmup=2, number=3,
                        setup=lambda: setups.append(1))
    assert len(calls) == 2 + 5 * 3 and len(setups) == len(calls)
    assert t.clock == "perf_counter" and len(t.samples_ms) == 5 and t.number == 3 and t.warmup == 2
    assert 2.0 <= t.min_ms <= t.median_ms and t.median_s == pytest.approx(t.median_ms / 1e3)
    rec = t.to_record()
    assert rec["median_ms"] == t.median_ms and rec["samples_ms"] == t.samples_ms and rec["clock"] == "perf_counter"
    json.dumps(rec)
    with pytest.raises(ValueError, match="repeats >= 1"):
        harness.time_ms(lambda: None, device="cpu", repeats=0)


def test_the_timer_takes_a_torch_device():
    torch = pytest.importorskip("torch")
    t = harness.time_ms(lambda: torch.ones(4).sum(), device=torch.device("cpu"), repeats=3, warmup=0)
    assert t.clock == "perf_counter" and len(t.samples_ms) == 3


# ----- the engine factory --------------------------------------------------------------------------------------
def test_the_factory_builds_the_engine_a_sweep_builds(tmp_path):
    cfg = _tiny(tmp_path)
    settings = dict(cuda_graphs=False, compile=False)
    ours = harness.build_engine(cfg, "lean", device="cpu", max_batch=4, seed=3, workspace=tmp_path / "ws", **settings)
    config = eb.SweepConfig(engine="lean", max_batch=4, seed=3, engine_settings=eb.engine_settings("lean", **settings))
    sweeps = eb.build_engine(cfg, config, device="cpu", workspace=tmp_path / "ws")
    assert type(ours) is type(sweeps) and ours.max_batch == sweeps.max_batch == 4
    ours.generate(5, 3, 2, return_tokens=True)
    sweeps.generate(5, 3, 2, return_tokens=True)
    assert (ours.last_tokens == sweeps.last_tokens).all()  # the same seed: the same weights and prompts
    assert harness.engine_config("lean", max_batch=4, seed=3, **settings) == config
    rec = harness.settings_record("lean", **settings)
    assert rec == S.to_record(config.engine_settings) and rec["settings"] == "LeanSettings" and not rec["compile"]


def test_the_factory_refuses_a_setting_the_engine_does_not_have(tmp_path):
    with pytest.raises(ValueError, match="no setting graph_max_batch"):
        harness.build_engine(_tiny(tmp_path), "lean", device="cpu", graph_max_batch=4)
    with pytest.raises(ValueError, match="unknown engine"):
        harness.build_engine(_tiny(tmp_path), "sglang", device="cpu")


# ----- the record -------------------------------------------------------------------------------------------------
def test_the_record_names_its_provenance_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv(harness.COMMIT_ENV, "abc1234")
    settings = eb.engine_settings("lean", cuda_graphs=False)
    path = harness.write_record(tmp_path / "out" / "r.json", {"step_ms": 1.5}, device="cpu", engine="lean",
                                settings=settings)
    rec = json.loads(path.read_text())
    prov = rec["provenance"]
    assert rec["step_ms"] == 1.5 and rec["commit"] == prov["commit"] == "abc1234"
    assert rec["gpu"] is None and prov["gpu_uuid"] is None and prov["nvml"].startswith("absent")  # no GPU here
    assert prov["driver"] is None and prov["device"] == "cpu"
    assert prov["energybook"] == eb.__version__ and prov["torch"] and prov["transformers"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["date"]) and prov["command"].startswith("python")
    assert prov["engine"] == "lean" and prov["engine_settings"] == S.to_record(settings)
    assert set(prov) >= {"gpu", "gpu_uuid", "driver", "torch", "transformers", "energybook", "commit", "date",
                         "command", "engine", "engine_settings"}


def test_the_commit_falls_back_to_the_checkouts(monkeypatch):
    from energybook.measure.runner import source_commit

    monkeypatch.delenv(harness.COMMIT_ENV, raising=False)
    assert harness.commit() == source_commit()


def test_a_meters_device_info_is_used_when_given():
    class FakeMeter:
        def device_info(self):
            return {"gpu": "NVIDIA H100 80GB HBM3", "gpu_uuid": "GPU-x", "cuda_uuid": "x", "driver": "580",
                    "power_limit_w": 700.0}

    prov = harness.provenance("cuda", meter=FakeMeter(), argv=["benchmarks/x.py", "--out", "a b"])
    assert (prov["gpu"], prov["gpu_uuid"], prov["driver"], prov["nvml"]) == ("NVIDIA H100 80GB HBM3", "GPU-x", "580",
                                                                             "present")
    assert prov["command"] == "python benchmarks/x.py --out 'a b'"


# ----- the scripts --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_is_a_module_on_the_harness(name):
    """Each script imports as ``benchmarks.<name>`` without running, loads no sibling by file path and builds no
    engine by its constructor (``gpu_logits`` re-packs a transformers model, which no sweep does)."""
    importlib.import_module(f"benchmarks.{name}")
    source = (ROOT / "benchmarks" / f"{name}.py").read_text()
    assert "spec_from_file_location" not in source
    assert not re.search(r"\b(LeanEngine|TorchEngine)\(", source), name


def test_no_script_is_named_for_an_issue():
    names = [p.name for p in (ROOT / "benchmarks").iterdir() if p.is_file()]
    assert not [n for n in names if re.match(r"issue\d+", n)]


# ----- shipped code never reads benchmarks/ ---------------------------------------------------------------------
def _path_building_strings(tree: ast.AST):
    """String constants inside ``Path(...)``/``PurePath(...)``/``joinpath(...)`` calls and ``/`` expressions."""
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("Path", "PurePath", "PosixPath", "joinpath", "join"):
                parts = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts = [node.left, node.right]
        for part in parts:
            for sub in ast.walk(part):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield sub


def test_no_shipped_module_builds_a_path_into_benchmarks():
    found = []
    for path in sorted((ROOT / "energybook").rglob("*.py")):
        for const in _path_building_strings(ast.parse(path.read_text())):
            if "benchmarks" in const.value:
                found.append(f"{path.relative_to(ROOT)}:{const.lineno}: {const.value!r}")
    assert not found, "shipped code must not read the checkout's benchmarks/: " + "; ".join(found)


def test_the_path_check_sees_what_the_old_reader_did(tmp_path):
    old = 'RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"\n'
    assert {c.value for c in _path_building_strings(ast.parse(old))} == {"benchmarks", "results"}
    assert not list(_path_building_strings(ast.parse('raise ValueError("rerun benchmarks/decode_attention.py")\n')))
