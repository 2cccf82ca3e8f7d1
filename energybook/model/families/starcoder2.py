"""StarCoder2. The architecture fields of each configuration (defaults are those
of the transformers configuration classes) and the names of its weights.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from energybook.model.families.compute import ComputeSpec, layer_windows, no_bidirectional, plain_act, read_rope
from energybook.model.families.readers import _bool, _common, _int, _sliding
from energybook.model.families.record import LLAMA_WEIGHTS, Family

logger = logging.getLogger(__name__)


def _starcoder2(cfg: dict[str, Any]) -> dict[str, Any]:
    """StarCoder2: plain FFN with biases, LayerNorm with bias, GQA, optional sliding window."""
    bias = _bool(cfg, "use_bias", True)
    fields = dict(_common(cfg, tie=True, max_positions=4096, kv_heads=2),
                  intermediate_size=_int(cfg, "intermediate_size"), ffn_kind="plain", qkv_bias=bias, o_bias=bias,
                  mlp_bias=bias, norm="layer")
    return dict(fields, **_sliding(_int(cfg, "sliding_window", None), fields["num_layers"]))


def _compute(arch, cfg: dict) -> ComputeSpec:
    """StarCoder2: LayerNorms with biases, GQA, rotary, biases everywhere (``use_bias``), a plain FFN (c_fc, c_proj)
    with ``hidden_act`` (tanh GELU), a sliding window on every layer when ``sliding_window`` is set."""
    no_bidirectional(arch, cfg)
    return ComputeSpec(rms_norm_eps=float(cfg.get("norm_epsilon") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act=plain_act(arch, cfg.get("hidden_act") or "gelu_pytorch_tanh"),
                      windows=layer_windows(arch, cfg), **read_rope(arch, cfg))


RECORDS = [Family("starcoder2", _starcoder2, replace(LLAMA_WEIGHTS, up=("mlp.c_fc",), down="mlp.c_proj"),
                     _compute)]
