"""GPT-NeoX (Pythia). The architecture fields of each configuration (defaults are those
of the transformers configuration classes) and the names of its weights.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from typing import Any

from energybook.model.families.compute import ComputeSpec, no_bidirectional, plain_act, read_rope
from energybook.model.families.readers import _bool, _common, _int
from energybook.model.families.record import Family, WeightMap

logger = logging.getLogger(__name__)


def _gpt_neox(cfg: dict[str, Any]) -> dict[str, Any]:
    """GPT-NeoX (Pythia): fused qkv, plain FFN, LayerNorm, untied ``embed_out``.

    Its parallel residual and partial rotary embedding (``rotary_pct``) change no matrix product.
    """
    fields = _common(cfg, tie=False, max_positions=2048)
    bias = _bool(cfg, "attention_bias", True)
    fields.update(num_kv_heads=fields["num_heads"], head_dim=fields["hidden_size"] // fields["num_heads"],
                  intermediate_size=_int(cfg, "intermediate_size"), ffn_kind="plain", qkv_bias=bias, o_bias=bias,
                  mlp_bias=True, norm="layer")
    return fields


def _compute(arch, cfg: dict) -> ComputeSpec:
    """GPT-NeoX (Pythia): LayerNorms with biases, GELU FFN, partial rotary embeddings (``rotary_pct``, default 0.25;
    base ``rotary_emb_base``), a parallel residual (``use_parallel_residual``, default true) or a sequential one."""
    no_bidirectional(arch, cfg)
    rope = read_rope(arch, cfg, partial_ok=True, partial_default=0.25,
                      theta_default=float(cfg.get("rotary_emb_base") or 10000.0))
    return ComputeSpec(rms_norm_eps=float(cfg.get("layer_norm_eps") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act=plain_act(arch, cfg.get("hidden_act") or "gelu"),
                      parallel=bool(cfg.get("use_parallel_residual", True)), qkv_layout="per_head", **rope)


RECORDS = [Family("gpt_neox", _gpt_neox, WeightMap(
    prefixes=("gpt_neox.", ""), embed="embed_in", layers="layers", qkv=("attention.query_key_value",),
    o="attention.dense", up=("mlp.dense_h_to_4h",), down="mlp.dense_4h_to_h", attn_norm="input_layernorm",
    ffn_norm="post_attention_layernorm", final_norm="final_layer_norm", lm_head=("lm_head", "embed_out")), _compute)]
