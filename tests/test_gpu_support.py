"""What runs on which GPU generation (energybook.measure.gpu_support), where a sweep applies it (runner.build_engine),
and the time estimate from both roofs (energybook.measure.estimate): a T4 (sm75) falls back from bf16 to fp16 with
a warning naming it, or refuses an explicit bf16; an H100 (sm90) keeps bf16; the lean engine is refused on sm75 with
the hf engine named."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from energybook import cli
from energybook.measure import estimate as E
from energybook.measure import gpu_support as G
from energybook.measure import runner
from energybook.measure.engines import EngineUnavailable
from energybook.measure.protocol import SweepConfig
from energybook.model import architecture as A

T4 = G.support((7, 5), "Tesla T4")
H100 = G.support((9, 0), "NVIDIA H100 80GB HBM3")


def test_generations_and_their_features():
    assert (T4.sm, T4.generation, T4.bf16, T4.flash_varlen, T4.fp16, T4.graphs) == ("sm75", "Turing", False, False,
                                                                                   True, True)
    assert (H100.sm, H100.generation, H100.bf16, H100.flash_varlen) == ("sm90", "Hopper", True, True)
    assert G.support("8.6").generation == "Ampere" and G.support("sm89").generation == "Ada Lovelace"
    assert G.support("8.6").bf16 and not G.support("7.0").bf16
    assert G.support((6, 1)).refusal("hf") is not None
    with pytest.raises(ValueError, match="compute capability"):
        G.support("seven")


@pytest.mark.parametrize("name, cap", [("Tesla T4", (7, 5)), ("NVIDIA A10G", (8, 6)), ("NVIDIA A10", (8, 6)),
                                       ("NVIDIA L4", (8, 9)), ("NVIDIA A100-SXM4-80GB", (8, 0)),
                                       ("NVIDIA GeForce RTX 4090", (8, 9)), ("NVIDIA H100 80GB HBM3", (9, 0)),
                                       ("NVIDIA H200", (9, 0)), ("NVIDIA L40S", None)])
def test_known_gpus_by_name(name, cap):
    assert G.known_capability(name) == cap


def test_t4_falls_back_from_bf16_to_fp16_with_a_warning_naming_it(caplog):
    with caplog.at_level(logging.WARNING, logger=G.__name__):
        choice = G.choose_dtype("auto", T4)
    assert (choice.dtype, choice.fallback) == ("float16", True)
    assert "Tesla T4 (sm75, Turing) has no bf16" in choice.message
    assert "Tesla T4" in caplog.text and "fp16" in caplog.text
    assert G.choose_dtype(None, T4, native="float32").dtype == "float32"  # nothing to fall back from
    assert G.choose_dtype("fp16", T4) == G.DtypeChoice("fp16", "float16", False)


def test_t4_refuses_an_explicit_bf16_saying_what_to_pass():
    for word in ("bf16", "bfloat16"):
        with pytest.raises(G.GpuUnsupported, match=r"Tesla T4 \(sm75, Turing\) has no bf16.*--dtype fp16"):
            G.choose_dtype(word, T4)
    with pytest.raises(ValueError, match="dtype takes"):
        G.choose_dtype("int8", T4)


def test_sm90_keeps_bf16():
    for word in ("auto", None, "bf16"):
        assert G.choose_dtype(word, H100) == G.DtypeChoice(word, "bfloat16", False)
    assert G.choose_dtype("fp32", H100).dtype == "float32"


def test_the_lean_engine_is_refused_on_sm75_naming_the_hf_engine():
    with pytest.raises(G.GpuUnsupported, match=r"lean engine needs compute capability 8.0.*--engine hf"):
        G.check_engine("lean", T4)
    assert issubclass(G.GpuUnsupported, EngineUnavailable)  # the CLI's "cannot run here", nothing measured
    G.check_engine("hf", T4)
    G.check_engine("lean", H100)
    assert T4.engines() == {"hf": True, "lean": False} and H100.engines() == {"hf": True, "lean": True}


def test_settings_for_device_changes_only_what_the_gpu_lacks():
    s = G.settings_for_device("hf", None, "Llama-3.2-1B", gpu=T4)
    assert s.dtype == "float16"  # the configuration's bf16, fallen back
    assert G.settings_for_device("hf", None, "OPT-1.3B", gpu=T4) is None  # OPT's own dtype is float16: unchanged
    assert G.settings_for_device("hf", None, "Llama-3.2-1B", gpu=H100) is None  # unchanged: resumes keep matching
    with pytest.raises(G.GpuUnsupported, match="bf16"):
        G.settings_for_device("hf", runner.engine_settings("hf", dtype="bfloat16"), "Llama-3.2-1B", gpu=T4)
    with pytest.raises(G.GpuUnsupported, match="--engine hf"):
        G.settings_for_device("lean", None, "Llama-3.2-1B", gpu=T4)
    assert G.settings_for_device("lean", None, "Llama-3.2-1B", device="cpu") is None  # the CPU: nothing to check
    assert G.settings_for_device("vllm", None, "Llama-3.2-1B", gpu=T4) is None  # an external engine decides itself


def test_a_sweep_builds_its_engine_through_the_gpu_check(monkeypatch, tmp_path):
    monkeypatch.setattr(G, "device_support", lambda device: T4)
    built = {}

    def make_engine(name, model, workspace_dir, settings=None, wave=None):
        built.update(name=name, settings=settings, wave=wave)
        return object()

    monkeypatch.setattr(runner.EN, "make_engine", make_engine)
    runner.build_engine("Llama-3.2-1B", SweepConfig(engine="hf"), device="cuda", workspace=tmp_path)
    assert built["settings"].dtype == "float16" and built["wave"]["device"] == "cuda"
    built.clear()
    with pytest.raises(G.GpuUnsupported, match="--engine hf"):
        runner.build_engine("Llama-3.2-1B", SweepConfig(engine="lean"), device="cuda", workspace=tmp_path)
    assert not built  # refused before the engine was built


def test_the_command_line_refuses_lean_on_a_t4_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(G, "device_support", lambda device: T4)
    code = cli.main(["sweep", "--model", "Llama-3.2-1B", "--engine", "lean", "--data", str(tmp_path),
                     "--n-in", "64", "--n-out", "64"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_RUNTIME
    assert "Tesla T4 (sm75, Turing)" in err and "--engine hf" in err and "saved" not in err
    assert not list(tmp_path.rglob("*.csv"))


def test_provenance_gpus_reads_sidecars_and_benchmarks(tmp_path):
    (tmp_path / "measured" / "a").mkdir(parents=True)
    (tmp_path / "bench" / "b").mkdir(parents=True)
    (tmp_path / "measured" / "a" / "grid.json").write_text(json.dumps({"gpu": "Tesla T4", "model": "m"}))
    (tmp_path / "bench" / "b" / "r.json").write_text(json.dumps({"environment": {"gpu": "NVIDIA H200"},
                                                                 "runs": [{"gpu": "Tesla T4"}]}))
    (tmp_path / "bench" / "broken.json").write_text("{")
    table = G.provenance_gpus(tmp_path / "measured", tmp_path / "bench").set_index("gpu")
    assert table.loc["Tesla T4", ["sm", "measured_files", "benchmark_files"]].tolist() == ["sm75", 1, 1]
    assert table.loc["NVIDIA H200", ["generation", "measured_files", "benchmark_files"]].tolist() == ["Hopper", 0, 1]
    assert G.provenance_gpus(None, tmp_path / "nowhere").empty


# ----- the time estimate: both roofs ------------------------------------------------------------------------------


def test_datasheets_are_labelled_and_found_by_nvml_name():
    for sheet in E.DATASHEETS.values():
        assert sheet.spec.source.startswith("datasheet figures: ")
    assert E.datasheet("NVIDIA H100 80GB HBM3").key == "H100 SXM"
    assert E.datasheet("Tesla T4").dtype == "float16"
    assert E.datasheet("NVIDIA H100 PCIe") is None and E.datasheet(None) is None


def test_the_estimate_uses_both_roofs():
    arch = A.load("Llama-3.2-1B")
    h100, t4 = E.DATASHEETS["H100 SXM"].spec, E.DATASHEETS["T4"].spec
    assert E.scale_measured(arch, 1024, 64, 100, 1.0, 1.0, h100, h100) == pytest.approx((1.0, 1.0))
    prefill, decode = E.scale_measured(arch, 1024, 1024, 100, 1.0, 1.0, h100, t4)
    bw_ratio = h100.bandwidth_bytes_s / t4.bandwidth_bytes_s
    flops_ratio = h100.peak_flops / t4.peak_flops
    assert prefill == pytest.approx(flops_ratio, rel=0.05)  # a long prompt's prefill: the matmul roof
    assert decode == pytest.approx(bw_ratio, rel=0.05)  # decode at batch 100: the bandwidth roof
    assert abs(prefill - decode) > 0.2 * bw_ratio  # a bandwidth-only estimate would scale both alike


def test_the_lab_estimate_is_unchanged_on_its_own_gpu_and_slower_on_a_t4():
    arch = A.load("Llama-3.2-1B")
    measured = pd.DataFrame([dict(n_in=n_in, n_out=n_out, n_req=1000, waves=1, prefill_s=0.001 * n_in,
                                  decode_s=0.01 * n_out) for n_in in (64, 256) for n_out in (64, 256)])
    config = SweepConfig(n_in=(64, 256), n_out=(64, 256), n_req=100, max_batch=100)
    h100, t4 = E.DATASHEETS["H100 SXM"].spec, E.DATASHEETS["T4"].spec
    own = E.lab_estimate(arch, measured, config, 5.0)
    assert own.loc[64, "work (s)"] == pytest.approx(0.0064 + 2.56)
    assert own.loc["model build", "total (s)"] == 5.0
    same = E.lab_estimate(arch, measured, config, 5.0, source=h100, target=h100)
    pd.testing.assert_frame_equal(own, same)
    slow = E.lab_estimate(arch, measured, config, 5.0, source=h100, target=t4)
    assert (slow.loc[[64, 256], "work (s)"] > 5 * own.loc[[64, 256], "work (s)"]).all()
    with pytest.raises(ValueError, match="source GPU"):
        E.lab_estimate(arch, measured, config, 5.0, target=t4)
    with pytest.raises(ValueError, match="lacks n_in=1024"):
        E.lab_estimate(arch, measured, config.replace(n_in=(1024,)), 5.0)


def test_the_eta_names_the_limits_it_used():
    arch = A.load("Llama-3.2-1B")
    from energybook.measure.protocol import Group

    groups = [Group(256, [64, 256], 0, 100, 1)]
    config = SweepConfig(n_in=(256,), n_out=(64, 256), n_req=100, max_batch=100)
    nominal = E.eta(arch, groups, config)
    t4 = E.eta(arch, groups, config, E.DATASHEETS["T4"].spec)
    assert "nominal H100" in nominal.text() and "NVIDIA T4's datasheet limits" in t4.text()
    assert t4.roofline_s > nominal.roofline_s
