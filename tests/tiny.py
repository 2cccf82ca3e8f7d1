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
