"""Falcon's layouts. The architecture fields of each configuration (defaults are those
of the transformers configuration classes) and the names of its weights.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from typing import Any

from energybook.model.families.readers import _alias, _bool, _common, _int
from energybook.model.families.record import Family, WeightMap

logger = logging.getLogger(__name__)


def _falcon(cfg: dict[str, Any]) -> dict[str, Any]:
    """Falcon: old (multi-query or MHA, ALiBi or RoPE) and new decoder architectures (GQA, parallel attention)."""
    cfg = _alias(_alias(cfg, "num_attention_heads", "n_head"), "num_hidden_layers", "n_layer")
    new_arch = _bool(cfg, "new_decoder_architecture", False)
    parallel = _bool(cfg, "parallel_attn", True)
    fields = _common(cfg, tie=True, max_positions=2048)
    heads, hidden = fields["num_heads"], fields["hidden_size"]
    if new_arch:
        kv = _int(cfg, "num_kv_heads", heads)
    else:  # the old architecture's fused projection holds one K/V head (multi-query) or all of them
        kv = 1 if _bool(cfg, "multi_query", True) else heads
    ln_parallel = _int(cfg, "num_ln_in_parallel_attn", 2 if new_arch else None)
    norms = 2 if not parallel or ln_parallel == 2 else 1
    bias = _bool(cfg, "bias", False)
    fields.update(num_kv_heads=kv, head_dim=hidden // heads, intermediate_size=_int(cfg, "ffn_hidden_size", 4 * hidden),
                  ffn_kind="plain", qkv_bias=bias, o_bias=bias, mlp_bias=bias, norm="layer", norms_per_layer=norms,
                  position="alibi" if _bool(cfg, "alibi", False) else "rope")
    return fields


def _falcon_weights(arch, cfg: dict[str, Any]) -> WeightMap:
    """Falcon's names: one LayerNorm before parallel attention and MLP held as both norms, the new decoder's two
    (``ln_attn``, ``ln_mlp``), or a sequential block's two."""
    norms = (("input_layernorm",) * 2 if arch.norms_per_layer == 1
             else ("ln_attn", "ln_mlp") if cfg.get("parallel_attn", True)
             else ("input_layernorm", "post_attention_layernorm"))
    return WeightMap(prefixes=("transformer.", ""), embed="word_embeddings", layers="h",
                     qkv=("self_attention.query_key_value",), o="self_attention.dense", up=("mlp.dense_h_to_4h",),
                     down="mlp.dense_4h_to_h", attn_norm=norms[0], ffn_norm=norms[1], final_norm="ln_f")


RECORDS = [Family("falcon", _falcon, _falcon_weights)]
