"""Engine settings as data (#21 item 4): one frozen dataclass per engine, flags generated from its fields, the
sidecar recording every field, and a resume with other settings refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

import energybook as eb
from energybook import cli
from energybook.measure import engines as EN
from energybook.measure import settings as S
from energybook.measure.protocol import SweepConfig


def test_every_builtin_engine_registers_a_frozen_settings_class_whose_fields_its_constructor_takes():
    import inspect

    classes = EN.settings_classes()
    assert set(classes) >= {"torch", "hf", "lean", "trtllm", "vllm"}
    for name, cls in classes.items():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name
        params = inspect.signature(EN.get_engine(name).load()).parameters
        assert set(cls.__dataclass_fields__) <= set(params), (name, set(cls.__dataclass_fields__) - set(params))
        for f in dataclasses.fields(cls):  # the defaults are the constructor's own
            if f.name in params and params[f.name].default is not inspect.Parameter.empty:
                assert params[f.name].default == f.default or f.name == "compile_mode_small", (name, f.name)


def test_engine_settings_checks_names_and_values():
    s = eb.engine_settings("lean", cuda_graphs=False, decode_attention="triton", bucket_max=128)
    assert (s.cuda_graphs, s.decode_attention, s.bucket_max) == (False, "triton", 128)
    with pytest.raises(ValueError, match="no setting graph_max_batch"):
        eb.engine_settings("lean", graph_max_batch=4)
    with pytest.raises(ValueError, match=r"decode_attention must be one of"):
        eb.engine_settings("lean", decode_attention="fastest")
    with pytest.raises(ValueError, match=r"memory_fraction must be at most 1.0"):
        eb.engine_settings("hf", memory_fraction=1.5)
    with pytest.raises(ValueError, match=r"cuda_graphs must be one of \['auto'\]"):
        eb.engine_settings("hf", cuda_graphs="off")  # a string "off" would have reached the engine as truthy
    with pytest.raises(ValueError, match="prefill_tokens must be int"):
        eb.engine_settings("hf", prefill_tokens=1.5)
    with pytest.raises(ValueError, match="engine_settings must be an engine's settings"):
        SweepConfig(engine_settings={"cuda_graphs": False})


def test_settings_of_another_engine_are_refused_when_the_engine_is_built(tmp_path):
    config = SweepConfig(engine="hf", engine_settings=eb.engine_settings("lean"))
    with pytest.raises(ValueError, match="the hf engine takes HfSettings, got LeanSettings"):
        eb.build_engine("Llama-3.2-1B", config, device="cpu", workspace=tmp_path)


def _args(*argv):
    return cli.build_parser().parse_args(["sweep", "--model", "m", *argv])


def test_flags_are_generated_from_the_fields_and_build_the_chosen_engines_settings():
    classes = EN.settings_classes()
    args = _args("--engine", "lean", "--graphs", "off", "--decode-attention", "split", "--compile-mode-small", "none",
                 "--memory-fraction", "0.5")
    s = S.from_flags(args, "lean", classes["lean"], classes)
    assert s == eb.engine_settings("lean", cuda_graphs=False, decode_attention="split", compile_mode_small=None,
                                   memory_fraction=0.5)
    args = _args("--engine", "hf", "--graphs", "auto")
    assert S.from_flags(args, "hf", classes["hf"], classes).cuda_graphs == "auto"
    args = _args("--engine", "vllm", "--timeout", "60", "--executable", "/opt/vllm")
    assert S.from_flags(args, "vllm", classes["vllm"], classes) == classes["vllm"](timeout_s=60.0,
                                                                                  executable="/opt/vllm")


@pytest.mark.parametrize("word, value", [("auto", None), ("none", None), ("bf16", "bfloat16"), ("fp16", "float16"),
                                         ("FP32", "float32"), ("bfloat16", "bfloat16")])
def test_dtype_takes_the_short_words_and_auto(word, value):
    classes = EN.settings_classes()
    for engine in ("hf", "lean"):
        s = S.from_flags(_args("--engine", engine, "--dtype", word), engine, classes[engine], classes)
        assert s.dtype == value, (engine, word)
    assert S.DTYPE_WORDS["auto"] is None and set(S.DTYPE_WORDS.values()) - {None} == set(S.DTYPES)


@pytest.mark.parametrize("argv, match", [
    (["--engine", "hf", "--bucket-min", "16"], r"--bucket-min is a setting of lean, not of --engine hf"),
    (["--engine", "lean", "--graphs", "maybe"], r"--graphs \(LeanSettings\) takes on\|off\|auto"),
    (["--engine", "lean", "--bucket-max", "0"], r"--bucket-max must be at least 1"),
    (["--engine", "lean", "--memory-fraction", "nan"], r"--memory-fraction must be a finite number"),
    (["--engine", "hf", "--dtype", "int8"],
     r"--dtype \(HfSettings\) takes auto\|bf16\|fp16\|fp32\|float32\|float16\|bfloat16 or none"),
    (["--engine", "lean", "--model-path", "x"], r"--model-path is a setting of trtllm"),
])
def test_a_wrong_setting_is_one_usage_error_naming_the_flag(argv, match, capsys, tmp_path):
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "--data", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("energybook: error: ")
    import re

    assert re.search(match, err), err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_sidecar_records_every_field_and_a_resume_with_other_settings_is_refused(tmp_path):
    from energybook.measure.runner import run_sweep
    from energybook.store.results import DataError

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=64,
                                   hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256, torch_dtype="float32")))
    config = SweepConfig(n_in=[8], n_out=[4], n_req=2, max_batch=2, min_window_s=0.0, cooldown_s=0.0,
                         engine="lean", engine_settings=eb.engine_settings("lean", cuda_graphs=False, compile=False))
    kw = dict(workspace=tmp_path / "data", device="cpu", allow_test_data=True, progress=False)
    res = run_sweep(cfg, config, **kw)
    sidecar = json.loads(res.path.with_suffix(".json").read_text())
    rec = sidecar["engine_settings"]
    assert rec["settings"] == "LeanSettings" and rec["cuda_graphs"] is False and rec["compile"] is False
    assert set(rec) - {"settings"} == set(S.to_record(eb.engine_settings("lean"))) - {"settings"}
    assert S.from_record(EN.get_engine("lean").settings_class(), rec) == config.engine_settings
    assert "engine_settings" not in sidecar["protocol"]
    other = config.replace(engine_settings=eb.engine_settings("lean", cuda_graphs=False, compile=False,
                                                              bucket_max=64))
    with pytest.raises(DataError, match="another engine_settings"):
        run_sweep(cfg, other, **kw)
    again = run_sweep(cfg, config, **kw)  # the same settings resume
    assert again.measured == 0 and again.skipped == 1
