"""OPT. The architecture fields of each configuration (defaults are those
of the transformers configuration classes) and the names of its weights.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from typing import Any

from energybook.model.families.readers import _bool, _common, _int
from energybook.model.families.record import Family, WeightMap

logger = logging.getLogger(__name__)


def _opt(cfg: dict[str, Any]) -> dict[str, Any]:
    """OPT: plain FFN, LayerNorm, biases, learned positions."""
    hidden = _int(cfg, "hidden_size")
    if _int(cfg, "word_embed_proj_dim", hidden) != hidden:
        raise ValueError("OPT with word_embed_proj_dim != hidden_size (project_in/out) is not supported")
    bias = _bool(cfg, "enable_bias", True)
    fields = _common(cfg, tie=True, max_positions=2048)
    fields.update(num_kv_heads=fields["num_heads"], head_dim=hidden // fields["num_heads"],
                  intermediate_size=_int(cfg, "ffn_dim"), ffn_kind="plain", qkv_bias=bias, o_bias=bias,
                  mlp_bias=bias, norm="layer", position="learned")
    return fields


RECORDS = [Family("opt", _opt, WeightMap(
    prefixes=("model.decoder.", "decoder.", ""), embed="embed_tokens", layers="layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), o="self_attn.out_proj", up=("fc1",),
    down="fc2", attn_norm="self_attn_layer_norm", ffn_norm="final_layer_norm", final_norm="final_layer_norm",
    pos_embed="embed_positions"))]
