"""Gemma and Gemma 2. The architecture fields of each configuration (defaults are those
of the transformers configuration classes) and the names of its weights.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from energybook.model.families.compute import read_llama_like
from energybook.model.families.readers import _bool, _common, _int, _sliding, _sliding_layer_count, _window
from energybook.model.families.record import LLAMA_WEIGHTS, Family

logger = logging.getLogger(__name__)


def _gemma(cfg: dict[str, Any]) -> dict[str, Any]:
    """Gemma 1: explicit head_dim, GeGLU (gated) FFN, tied embeddings, RMSNorm (1 + weight)."""
    bias = _bool(cfg, "attention_bias", False)
    return dict(_common(cfg, tie=True, max_positions=8192, head_dim=256, kv_heads=16),
                intermediate_size=_int(cfg, "intermediate_size"), ffn_kind="gated", qkv_bias=bias, o_bias=bias)


def _gemma2(cfg: dict[str, Any]) -> dict[str, Any]:
    """Gemma 2: Gemma's layers with four norms each and a sliding window on every other layer."""
    fields = _gemma(dict(cfg, num_key_value_heads=cfg.get("num_key_value_heads") or 4))
    layers = fields["num_layers"]
    window = _window(cfg, 4096)
    sliding = _sliding_layer_count(cfg, layers)
    return dict(fields, norms_per_layer=4, **_sliding(window, (layers + 1) // 2 if sliding is None else sliding))


RECORDS = [
    Family("gemma", _gemma, LLAMA_WEIGHTS, read_llama_like),
    # Gemma 2: post_attention_layernorm is the attention branch's own norm; a norm before and after the FFN
    Family("gemma2", _gemma2, replace(LLAMA_WEIGHTS, ffn_norm="pre_feedforward_layernorm",
                                      post_attn_norm="post_attention_layernorm",
                                      post_ffn_norm="post_feedforward_layernorm"), read_llama_like),
]
