"""Llama's layout: llama and Granite, Mistral, Qwen2 and Phi-3. The architecture fields of each configuration
(defaults are those of the transformers configuration classes) and the names of its weights.

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


def _llama(cfg: dict[str, Any]) -> dict[str, Any]:
    """Llama and Granite: gated (SwiGLU) FFN, RMSNorm, RoPE, optional biases."""
    bias = _bool(cfg, "attention_bias", False)
    return dict(_common(cfg, tie=False, max_positions=2048), intermediate_size=_int(cfg, "intermediate_size"),
                ffn_kind="gated", qkv_bias=bias, o_bias=bias, mlp_bias=_bool(cfg, "mlp_bias", False))


def _mistral(cfg: dict[str, Any]) -> dict[str, Any]:
    """Mistral: Llama's layers, a sliding window on every layer when ``sliding_window`` is set."""
    fields = dict(_common(cfg, tie=False, max_positions=4096 * 32, kv_heads=8),
                  intermediate_size=_int(cfg, "intermediate_size"), ffn_kind="gated")
    return dict(fields, **_sliding(_window(cfg, 4096), fields["num_layers"]))


def _qwen2(cfg: dict[str, Any]) -> dict[str, Any]:
    """Qwen2: gated FFN, q/k/v biases, a sliding window on the top layers when ``use_sliding_window``."""
    fields = dict(_common(cfg, tie=False, max_positions=32768, kv_heads=32),
                  intermediate_size=_int(cfg, "intermediate_size"), ffn_kind="gated", qkv_bias=True)
    if _bool(cfg, "use_sliding_window", False):
        window = _window(cfg, 4096)
        layers = fields["num_layers"]
        sliding = _sliding_layer_count(cfg, layers)
        if sliding is None:
            sliding = max(0, layers - _int(cfg, "max_window_layers", 28, minimum=0))
        fields.update(_sliding(window, sliding))
    return fields


def _phi3(cfg: dict[str, Any]) -> dict[str, Any]:
    """Phi-3: fused ``qkv_proj`` and ``gate_up_proj`` (the same products as separate matrices), optional window."""
    fields = dict(_common(cfg, tie=False, max_positions=4096), intermediate_size=_int(cfg, "intermediate_size"),
                  ffn_kind="gated")
    return dict(fields, **_sliding(_int(cfg, "sliding_window", None), fields["num_layers"]))


RECORDS = [
    Family("llama", _llama, LLAMA_WEIGHTS, read_llama_like),
    Family("granite", _llama, LLAMA_WEIGHTS, read_llama_like),
    Family("mistral", _mistral, LLAMA_WEIGHTS, read_llama_like),
    Family("qwen2", _qwen2, LLAMA_WEIGHTS, read_llama_like),
    # Phi-3: q, k, v and gate, up fused in transformers' weights already
    Family("phi3", _phi3, replace(LLAMA_WEIGHTS, qkv=("self_attn.qkv_proj",), up=("mlp.gate_up_proj",)),
           read_llama_like),
]
