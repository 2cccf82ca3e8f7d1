"""Tiny random-model configurations for CPU tests (shared by the engine, sweep and notebook tests)."""

import json
from pathlib import Path

from energybook.model import architecture as A


def tiny_config(tmp_path: Path, family: str = "Llama-3.2-1B") -> Path:
    """Write a 2-layer, width-64 float32 version of a shipped configuration; returns its path."""
    cfg = dict(A.hf_config(family), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, vocab_size=512, torch_dtype="float32")
    if "num_key_value_heads" in cfg:
        cfg["num_key_value_heads"] = 2
    if "head_dim" in cfg:
        cfg["head_dim"] = 16
    if "ffn_dim" in cfg:
        cfg.update(ffn_dim=128, word_embed_proj_dim=64)
    if "rope_scaling" in cfg and cfg["rope_scaling"]:
        cfg["rope_scaling"] = dict(cfg["rope_scaling"], original_max_position_embeddings=1024)
    cfg["max_position_embeddings"] = 2048
    path = Path(tmp_path) / f"tiny-{family}.json"
    path.write_text(json.dumps(cfg))
    return path


#: One tiny configuration per family the torch engine runs (``family`` or ``family:variant``): a shipped
#: study configuration shrunk by :func:`tiny_config`, or transformers' defaults with a few keys set. Windows
#: of 4 tokens and a strong soft-cap make those features change the greedy tokens of short requests.
_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=512, max_position_embeddings=2048)
TINY_FAMILIES = {
    "llama": ("Llama-3.2-1B", {}),
    "granite": ("Granite-3B-Code-Base", {}),
    "qwen2": ("Qwen2-1.5B", {}),
    "qwen2:window": ("Qwen2-1.5B", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                         layer_types=None)),
    "gemma2": ("Gemma-2-2B", dict(sliding_window=4, attn_logit_softcapping=0.05, query_pre_attn_scalar=16)),
    "opt": ("OPT-1.3B", {}),
    "falcon": ("Falcon-RW-7B", dict(num_kv_heads=4, ffn_hidden_size=128)),  # ALiBi, multi-head
    "falcon:new": (None, dict(_SMALL, new_decoder_architecture=True, num_kv_heads=2, ffn_hidden_size=128)),
    "mistral": (None, dict(_SMALL, intermediate_size=128, num_key_value_heads=2, sliding_window=4)),
    "phi3": (None, dict(_SMALL, intermediate_size=128, num_key_value_heads=2, sliding_window=4, pad_token_id=0,
                        bos_token_id=1, eos_token_id=1)),
    "gemma": (None, dict(_SMALL, intermediate_size=128, num_key_value_heads=2, head_dim=16)),
    "starcoder2": (None, dict(_SMALL, intermediate_size=128, num_key_value_heads=2, sliding_window=4,
                              bos_token_id=1, eos_token_id=1)),
    "gpt_neox": (None, dict(_SMALL, intermediate_size=128, rotary_pct=0.25)),
    # Falcon-7B's layout: rotary, multi-query, attention and MLP in parallel from one LayerNorm
    "falcon:rotary": (None, dict(_SMALL, alibi=False, multi_query=True, parallel_attn=True, ffn_hidden_size=128)),
    # Falcon-11B's: the new decoder architecture with one LayerNorm, biases on
    "falcon:new1": (None, dict(_SMALL, new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1,
                               bias=True, ffn_hidden_size=128)),
    # the old architecture's rotary, multi-head, sequential layout with biases
    "falcon:rotary-mha": (None, dict(_SMALL, alibi=False, multi_query=False, parallel_attn=False, bias=True,
                                     ffn_hidden_size=128)),
    "gpt_neox:sequential": (None, dict(_SMALL, intermediate_size=128, rotary_pct=0.5, use_parallel_residual=False,
                                       attention_bias=False)),
    "starcoder2:full": (None, dict(_SMALL, intermediate_size=128, num_key_value_heads=2, sliding_window=None,
                                   bos_token_id=1, eos_token_id=1)),
}


def tiny_family_config(tmp_path: Path, key: str) -> Path:
    """Write the tiny float32 configuration :data:`TINY_FAMILIES` names by ``key``; returns its path."""
    shipped, changes = TINY_FAMILIES[key]
    if shipped is not None:
        path = tiny_config(tmp_path, shipped)
        cfg = {k: v for k, v in dict(json.loads(path.read_text()), **changes).items() if v is not None}
    else:
        import transformers

        cfg = transformers.AutoConfig.for_model(key.split(":")[0], **changes).to_dict()
        cfg["torch_dtype"] = "float32"
    path = Path(tmp_path) / f"tiny-{key.replace(':', '-')}.json"
    path.write_text(json.dumps(cfg))
    return path
