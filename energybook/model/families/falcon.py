"""Falcon's layouts. The architecture fields of each configuration (defaults are those
of the transformers configuration classes) and the names of its weights.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from typing import Any

from energybook.model.families.compute import ComputeSpec, Unsupported, read_rope
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


def _compute(arch, cfg: dict) -> ComputeSpec:
    """Falcon's layouts: LayerNorms with biases, GELU, and

    * Falcon-RW: ALiBi, multi-head, sequential attention and MLP with two LayerNorms;
    * Falcon-7B's: rotary, multi-query (one KV head), attention and MLP in parallel from one LayerNorm (and the
      rotary multi-head or sequential variants of the old architecture);
    * the new decoder architecture (Falcon-40B, 180B, 11B): rotary, GQA (``num_kv_heads``), parallel attention and
      MLP from two LayerNorms (``ln_attn``, ``ln_mlp``; ``num_ln_in_parallel_attn`` 2, its default) or one (1).

    Raises:
        Unsupported: for ALiBi outside Falcon-RW's layout, the new decoder architecture without parallel
            attention or the old one with two parallel LayerNorms (layouts transformers does not run either), or
            another activation.
    """
    alibi = bool(cfg.get("alibi", False))
    new = bool(cfg.get("new_decoder_architecture", False))
    parallel = bool(cfg.get("parallel_attn", True))
    multi_query = bool(cfg.get("multi_query", True))
    ln_parallel = cfg.get("num_ln_in_parallel_attn")
    if alibi:
        other = [name for name, bad in (("parallel attention", parallel), ("the new decoder architecture", new),
                                        ("multi-query attention", multi_query)) if bad]
        if other:
            raise Unsupported(f"{arch.name}: Falcon with ALiBi and {', '.join(other)}; the lean engine runs "
                              f"ALiBi in Falcon-RW's layout (sequential, multi-head) only")
    if new and not parallel:
        raise Unsupported(f"{arch.name}: Falcon's new decoder architecture without parallel attention "
                          f"(parallel_attn false)")
    if not new and parallel and ln_parallel == 2:
        raise Unsupported(f"{arch.name}: Falcon's old decoder architecture with two parallel LayerNorms "
                          f"(num_ln_in_parallel_attn 2)")
    act = cfg.get("activation", "gelu")
    if act != "gelu":
        raise Unsupported(f"{arch.name}: activation {act!r}")
    rope = {} if alibi else read_rope(arch, cfg)
    layout = "per_group" if new else "stacked" if multi_query else "per_head"
    return ComputeSpec(rms_norm_eps=float(cfg.get("layer_norm_epsilon") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act="gelu", positions="alibi" if alibi else "rope",
                      parallel=parallel, qkv_layout=layout, **rope)


RECORDS = [Family("falcon", _falcon, _falcon_weights, _compute)]
