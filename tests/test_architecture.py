import json

import pandas as pd
import pytest

from energybook import resources
from energybook.model import architecture as A

REFERENCE = resources.path("paper", "paper_table2_models.csv")


def test_thirteen_study_models_ship():
    assert len(A.study_models()) == 13
    assert set(A.STUDY_ORDER) == set(A.available())


@pytest.mark.parametrize("row", pd.read_csv(REFERENCE).to_dict("records"), ids=lambda r: r["name"])
def test_shipped_configs_match_the_reference_table(row):
    a = A.load(row["name"])
    assert a.hidden_size == row["hidden_size"]
    assert a.intermediate_size == row["intermediate_size"]
    assert a.num_layers == row["num_layers"]
    assert a.num_heads == row["num_heads"]
    assert a.num_kv_heads == row["num_kv_heads"]
    assert a.head_dim == row["head_dim"]
    assert a.vocab_size == row["vocab_size"]
    assert a.ffn_kind == row["ffn_kind"]
    assert a.tie_word_embeddings == bool(row["tie_word_embeddings"])
    assert a.dtype == A.SERVED_DTYPE.get(row["name"], row["torch_dtype"])
    # The parameter count from our fields matches the table's independent count.
    assert a.num_params / 1e9 == pytest.approx(row["params_billion_computed"], abs=0.0006)


def test_gemma2_is_served_in_bfloat16_but_its_config_path_keeps_float32():
    served = A.load("Gemma-2-2B")
    stored = A.load(resources.path("architectures", "Gemma-2-2B.json"))
    assert (served.dtype, stored.dtype) == ("bfloat16", "float32")
    assert served.kv_bytes_per_token * 2 == stored.kv_bytes_per_token


def test_gemma2_head_dim_is_not_hidden_over_heads():
    a = A.load("Gemma-2-2B")
    assert a.head_dim == 256 and a.hidden_size // a.num_heads == 288
    assert a.sliding_window == 4096 and a.sliding_layers == 13


def test_from_config_path_and_dir(tmp_path):
    cfg = A.hf_config("Qwen2-1.5B")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert A.Architecture.from_hf_config(tmp_path).kv_width == 2 * 128
    assert A.load(tmp_path / "config.json").is_gqa


def test_opt_is_mha_with_layernorm_and_learned_positions():
    a = A.load("OPT-1.3B")
    assert not a.is_gqa and a.norm == "layer" and a.position == "learned" and a.ffn_matrices == 2


def test_falcon_rw_old_style_keys():
    cfg = {"model_type": "falcon", "hidden_size": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100,
           "multi_query": True, "alibi": True, "bias": False}
    a = A.Architecture.from_hf_config(cfg)
    assert a.num_layers == 2 and a.num_kv_heads == 1 and a.position == "alibi"


def test_unknown_field_is_named():
    a = A.load("Llama-3.2-1B")
    with pytest.raises(ValueError, match="unknown architecture field.*'n_experts'"):
        a.replace(n_experts=8)
    with pytest.raises(ValueError, match="unknown architecture field"):
        A.Architecture.from_dict({**a.to_dict(), "hidden": 3})


def test_unknown_model_and_type_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'Llama-9000'.*Llama-3.2-1B"):
        A.load("Llama-9000")
    with pytest.raises(ValueError, match="unknown model_type 'mamba'"):
        A.Architecture.from_hf_config({"model_type": "mamba"})
    with pytest.raises(ValueError, match="lacks the key 'num_attention_heads'"):
        A.Architecture.from_hf_config({"model_type": "llama", "hidden_size": 8})
    with pytest.raises(FileNotFoundError, match="no Hugging Face configuration"):
        A.Architecture.from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        A.Architecture.from_hf_config(tmp_path)


def test_bad_values_are_named():
    a = A.load("Llama-3.2-1B")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        a.replace(hidden_size=0)
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        a.replace(num_kv_heads=5)
    with pytest.raises(ValueError, match="unknown dtype"):
        a.replace(dtype="int3")


# ----- the family registry -------------------------------------------------------------
def test_registry_lists_the_eleven_families_and_the_old_constant_follows_it():
    assert A.families() == ("llama", "granite", "qwen2", "gemma2", "opt", "falcon", "mistral", "phi3", "gemma",
                            "starcoder2", "gpt_neox")
    assert A.FAMILIES == A.families()


def test_register_family_adds_a_parser(monkeypatch):
    monkeypatch.setattr(A, "_FAMILIES", dict(A._FAMILIES))

    def parse(cfg):
        return dict(hidden_size=cfg["d"], num_layers=2, num_heads=2, num_kv_heads=2, head_dim=cfg["d"] // 2,
                    intermediate_size=4 * cfg["d"], ffn_kind="plain", vocab_size=10)

    assert A.register_family("toy", parse) is parse
    assert "toy" in A.families()
    a = A.Architecture.from_hf_config({"model_type": "toy", "d": 8, "torch_dtype": "float16"})
    assert a.model_type == "toy" and a.hidden_size == 8 and a.dtype == "float16"
    with pytest.raises(ValueError, match="lacks the key 'd'"):
        A.Architecture.from_hf_config({"model_type": "toy"})
    A.register_family("toy", lambda cfg: dict(parse(cfg), n_experts=8))
    with pytest.raises(ValueError, match="unknown architecture field.*'n_experts'"):
        A.Architecture.from_hf_config({"model_type": "toy", "d": 8})
    A.register_family("toy", lambda cfg: dict(parse(cfg), name="x"))
    with pytest.raises(ValueError, match="returned \\['name'\\]"):
        A.Architecture.from_hf_config({"model_type": "toy", "d": 8})
    with pytest.raises(ValueError, match="must be callable"):
        A.register_family("toy", "not a parser")
    with pytest.raises(ValueError, match="non-empty string"):
        A.register_family("", parse)


# ----- inputs checked ------------------------------------------------------------------
def test_a_json_list_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps([A.hf_config("Llama-3.2-1B")]))
    with pytest.raises(ValueError, match=f"{path}.*list, not an object.*must be an object"):
        A.Architecture.from_hf_config(path)


@pytest.mark.parametrize("key,value", [("tie_word_embeddings", "false"), ("tie_word_embeddings", "true"),
                                       ("attention_bias", "no"), ("mlp_bias", 0)])
def test_string_booleans_are_refused_naming_the_key(key, value):
    # bool("false") is True: Llama-3.1-8B was counted as 7.50B parameters with tied embeddings.
    cfg = dict(A.hf_config("Llama-3.1-8B"), **{key: value})
    with pytest.raises(ValueError, match=f"'Llama-3.1-8B'.*key '{key}' must be a JSON boolean"):
        A.Architecture.from_hf_config(cfg, name="Llama-3.1-8B")
    assert A.load("Llama-3.1-8B").num_params / 1e9 == pytest.approx(8.03, abs=0.01)


@pytest.mark.parametrize("model,key,value", [
    ("Llama-3.2-1B", "hidden_size", "2048"),
    ("Llama-3.2-1B", "num_hidden_layers", 16.0),
    ("Llama-3.2-1B", "num_key_value_heads", 8.5),
    ("Llama-3.2-1B", "vocab_size", True),
    ("Llama-3.2-1B", "head_dim", [64]),
    ("Llama-3.2-1B", "max_position_embeddings", "131072"),
    ("OPT-1.3B", "ffn_dim", 8192.0),
    ("Gemma-2-2B", "sliding_window", "4096"),
    ("Qwen2-1.5B", "intermediate_size", -1),
    ("Falcon-RW-7B", "ffn_hidden_size", "16384"),
])
def test_wrongly_typed_numbers_are_refused_naming_the_key(model, key, value):
    with pytest.raises(ValueError, match=f"key '{key}' must be an integer"):
        A.Architecture.from_hf_config(dict(A.hf_config(model), **{key: value}))


def test_wrongly_typed_layer_types_and_dtype_are_named():
    cfg = dict(A.hf_config("Gemma-2-2B"), layer_types=["sliding_attention"])
    with pytest.raises(ValueError, match="key 'layer_types' must be a list of 26 strings"):
        A.Architecture.from_hf_config(cfg)
    with pytest.raises(ValueError, match="key 'torch_dtype' must be a dtype name"):
        A.Architecture.from_hf_config(dict(A.hf_config("Gemma-2-2B"), torch_dtype=16))


# ----- new families: parameter counts against the tiny models' own ------------------------
BASE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=320, max_position_embeddings=256)
TINY = {
    "mistral": dict(BASE, intermediate_size=160, num_key_value_heads=2, sliding_window=8),
    "mistral:no-window": dict(BASE, intermediate_size=160, num_key_value_heads=2, sliding_window=None, head_dim=24),
    "phi3": dict(BASE, intermediate_size=160, num_key_value_heads=2, sliding_window=8, pad_token_id=0,
                 bos_token_id=1, eos_token_id=1),
    "gemma": dict(BASE, intermediate_size=128, num_key_value_heads=1, head_dim=24),
    "gemma:untied-bias": dict(BASE, intermediate_size=128, num_key_value_heads=4, head_dim=24,
                              tie_word_embeddings=False, attention_bias=True),
    "gemma2": dict(BASE, intermediate_size=128, num_key_value_heads=2, head_dim=24, sliding_window=8),
    "starcoder2": dict(BASE, intermediate_size=192, num_key_value_heads=2, sliding_window=8, bos_token_id=1,
                       eos_token_id=1),
    "starcoder2:no-bias": dict(BASE, intermediate_size=192, num_key_value_heads=2, use_bias=False,
                               tie_word_embeddings=False, bos_token_id=1, eos_token_id=1),
    "gpt_neox": dict(BASE, intermediate_size=224, rotary_pct=0.25),
    "gpt_neox:no-bias": dict(BASE, intermediate_size=224, attention_bias=False, use_parallel_residual=False),
    "qwen2:window": dict(BASE, intermediate_size=160, num_key_value_heads=2, use_sliding_window=True,
                         sliding_window=8, max_window_layers=1),
    "falcon:new": dict(BASE, new_decoder_architecture=True, num_kv_heads=2, ffn_hidden_size=96),
    "falcon:parallel-mqa": dict(BASE, parallel_attn=True, multi_query=True, bias=True),
    "llama": dict(BASE, intermediate_size=160, num_key_value_heads=2, attention_bias=True, mlp_bias=True),
    "opt": dict(BASE, ffn_dim=256, word_embed_proj_dim=64),
}
EXPECTED_WINDOWS = {"mistral": (8, 3), "phi3": (8, 3), "gemma2": (8, 2), "starcoder2": (8, 3), "qwen2:window": (8, 2)}


@pytest.mark.parametrize("key", sorted(TINY))
def test_parameter_count_is_the_tiny_models_own(key):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    family = key.split(":")[0]
    cfg = transformers.AutoConfig.for_model(family, **TINY[key])
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())  # tied weights once
    full = A.Architecture.from_hf_config(cfg.to_dict(), name=key)
    assert full.num_params == real
    # save_pretrained writes only the keys that differ from the class defaults: same count.
    diff = dict(cfg.to_diff_dict(), model_type=family)
    assert A.Architecture.from_hf_config(diff, name=key) == full
    assert (full.sliding_window, full.sliding_layers) == EXPECTED_WINDOWS.get(key, (None, 0))
