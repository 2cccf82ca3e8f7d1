"""OLMo 2: Llama's products (gated SiLU FFN, rotary, GQA) with its norms moved: none before attention or the FFN, an
RMSNorm after each branch (before its residual add), and RMSNorms over the full query and key projections (q_norm,
k_norm) before the rotary embedding. Not among the shipped families (:data:`~energybook.model.families.RECORDS`):
:data:`OLMO2` is the example of a family added by one record.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from energybook.model.families.readers import _bool, _common, _int
from energybook.model.families.record import LLAMA_WEIGHTS, Family

logger = logging.getLogger(__name__)


def _olmo2(cfg: dict[str, Any]) -> dict[str, Any]:
    """OLMo 2: Llama's fields; two norms per layer (after attention, after the FFN). Its q/k norms (q_width + kv_width
    weights per layer) are not among the :class:`~energybook.model.architecture.Architecture`'s norm counts."""
    bias = _bool(cfg, "attention_bias", False)
    return dict(_common(cfg, tie=False, max_positions=2048), intermediate_size=_int(cfg, "intermediate_size"),
                ffn_kind="gated", qkv_bias=bias, o_bias=bias)


#: OLMo 2's record, registered on request: ``register_family("olmo2", OLMO2)``
#: (:func:`~energybook.model.architecture.register_family`); both engines then run it.
OLMO2 = Family("olmo2", _olmo2, replace(
    LLAMA_WEIGHTS, attn_norm=None, ffn_norm=None, post_attn_norm="post_attention_layernorm",
    post_ffn_norm="post_feedforward_layernorm", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
    compute={"pre_norms": False, "sandwich": True, "qk_norm": True, "norm_float32": True})
