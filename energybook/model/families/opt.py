"""OPT. The architecture fields of each configuration (defaults are those
of the transformers configuration classes) and the names of its weights.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from typing import Any

from energybook.model.families.compute import ComputeSpec, Unsupported
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


def _compute(arch, cfg: dict) -> ComputeSpec:
    """OPT: pre-LayerNorm blocks with biases, ReLU FFN, learned positions (offset 2), no projection of the embeddings.

    Raises:
        Unsupported: for OPT 350M's post-norm blocks or embedding projection, or another activation.
    """
    if not cfg.get("do_layer_norm_before", True):
        raise Unsupported(f"{arch.name}: post-LayerNorm blocks (do_layer_norm_before false, OPT 350M)")
    proj = cfg.get("word_embed_proj_dim")
    if proj not in (None, arch.hidden_size):
        raise Unsupported(f"{arch.name}: word_embed_proj_dim {proj} differs from hidden_size "
                          f"{arch.hidden_size}")
    act = cfg.get("activation_function", "relu")
    if act != "relu" or not cfg.get("enable_bias", True) or not cfg.get("layer_norm_elementwise_affine", True):
        raise Unsupported(f"{arch.name}: activation {act!r}, enable_bias {cfg.get('enable_bias', True)}, "
                          f"affine norms {cfg.get('layer_norm_elementwise_affine', True)}: the lean engine runs "
                          f"OPT's ReLU, biased, affine layout only")
    return ComputeSpec(rms_norm_eps=1e-5, attention_scale=arch.head_dim ** -0.5, layer_norm=True, gated=False,
                      act="relu", positions="learned", position_offset=2)


RECORDS = [Family("opt", _opt, WeightMap(
    prefixes=("model.decoder.", "decoder.", ""), embed="embed_tokens", layers="layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), o="self_attn.out_proj", up=("fc1",),
    down="fc2", attn_norm="self_attn_layer_norm", ffn_norm="final_layer_norm", final_norm="final_layer_norm",
    pos_embed="embed_positions"), _compute)]
