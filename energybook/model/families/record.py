"""A model family's record (:class:`Family`): its configuration parser and the names of its weights
(:class:`WeightMap`).

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from energybook.model.families.compute import Unsupported, read_llama_like

logger = logging.getLogger(__name__)

#: A parser reads a Hugging Face config dict and returns :class:`~energybook.model.architecture.Architecture` fields
#: (all but ``name`` and ``model_type``; ``dtype`` is read from the configuration when the parser leaves it out).
Parser = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class WeightMap:
    """Where a family's tensors stand in transformers' state dict (names without ``.weight``/``.bias``).

    Attributes:
        prefixes: Prefixes tried in order; the first under which ``embed`` exists is the model's.
        embed: The token embeddings.
        layers: Layer ``n``'s tensors are under ``f"{layers}.{n}."``.
        qkv: The query, key and value products (three), or one fused product.
        o: The attention's output product.
        up: The FFN's first products (gate and up, fused in this order; or one).
        down: The FFN's last product.
        attn_norm: The norm before attention (None: none, OLMo 2).
        ffn_norm: The norm before the FFN (the same name as ``attn_norm`` for one shared norm; None: none).
        final_norm: The norm before the LM head.
        post_attn_norm: Gemma 2: the attention branch's own norm, or None.
        post_ffn_norm: Gemma 2: the FFN branch's own norm, or None.
        q_norm: OLMo 2: the norm over the whole query projection, or None.
        k_norm: OLMo 2: the norm over the whole key projection, or None.
        pos_embed: Learned position embeddings (OPT), or None.
        lm_head: Names of the LM head tried in order (full names, no prefix); the embeddings when none exists or
            the embeddings are tied.
    """

    prefixes: tuple[str, ...]
    embed: str
    layers: str
    qkv: tuple[str, ...]
    o: str
    up: tuple[str, ...]
    down: str
    attn_norm: str | None
    ffn_norm: str | None
    final_norm: str
    post_attn_norm: str | None = None
    post_ffn_norm: str | None = None
    q_norm: str | None = None
    k_norm: str | None = None
    pos_embed: str | None = None
    lm_head: tuple[str, ...] = ("lm_head",)


#: Llama's names (``model.layers.0.self_attn.q_proj``...); the other families change a few.
LLAMA_WEIGHTS = WeightMap(
    prefixes=("model.", ""), embed="embed_tokens", layers="layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), o="self_attn.o_proj",
    up=("mlp.gate_proj", "mlp.up_proj"), down="mlp.down_proj", attn_norm="input_layernorm",
    ffn_norm="post_attention_layernorm", final_norm="norm")


@dataclass(frozen=True)
class Family:
    """One model family: how to read its configuration and where its weights stand.

    Attributes:
        model_type: The configuration's ``model_type``.
        parse: Its :data:`Parser`.
        weights: Its :class:`WeightMap`, or ``weights(arch, cfg)`` for a family whose names follow its
            configuration (Falcon's norms), or None (no engine packs its weights).
        compute: Its compute spec (:class:`~energybook.model.families.compute.ComputeSpec`: norms, rotary scaling,
            activation, how q, k and v are fused...): a reader ``compute(arch, cfg)``, or for a family read as Llama
            (rotary, gated FFN, RMSNorm) but for a few fields, those fields (``pre_norms``, ``sandwich``,
            ``qk_norm``...); None: no compute spec (the lean engine does not run the family).
    """

    model_type: str
    parse: Parser
    weights: WeightMap | Callable[[Any, dict], WeightMap] | None = None
    compute: dict | Callable[[Any, dict], Any] | None = None

    def compute_spec(self, arch, cfg: dict):
        """The :class:`~energybook.model.families.compute.ComputeSpec` of one configuration.

        Raises:
            energybook.model.families.compute.Unsupported: the configuration asks for what the spec cannot express,
                or the family has no compute spec.
        """
        if self.compute is None:
            raise Unsupported(f"the {self.model_type!r} family's record has no compute spec")
        if callable(self.compute):
            return self.compute(arch, cfg)
        return replace(read_llama_like(arch, cfg), **self.compute)

    def weight_map(self, arch, cfg: dict) -> WeightMap | None:
        """The :class:`WeightMap` of one configuration (``arch``: its architecture)."""
        return self.weights(arch, cfg) if callable(self.weights) else self.weights
