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
    assert a.dtype == row["torch_dtype"]
    # The parameter count from our fields matches the table's independent count.
    assert a.num_params / 1e9 == pytest.approx(row["params_billion_computed"], abs=0.0006)


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
