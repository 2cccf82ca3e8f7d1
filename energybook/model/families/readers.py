"""Typed reads of Hugging Face configuration keys, shared by the family records: integers, booleans, older key
names, sliding windows, and the fields every family shares.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


_MISSING = object()


def _int(cfg: dict[str, Any], key: str, default: Any = _MISSING, minimum: int = 1) -> int:
    """``cfg[key]`` as an integer >= ``minimum``; a missing key (or null) gives ``default`` or ``KeyError``."""
    value = cfg.get(key)
    if value is None:
        if default is _MISSING:
            raise KeyError(key)
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"key {key!r} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"key {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(cfg: dict[str, Any], key: str, default: bool) -> bool:
    """``cfg[key]`` as a JSON boolean; a missing key (or null) gives ``default``; strings such as ``"false"`` raise."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"key {key!r} must be a JSON boolean (true or false), got {value!r} "
                         f"({type(value).__name__})")
    return value


def _alias(cfg: dict[str, Any], key: str, *old: str) -> dict[str, Any]:
    """A copy of ``cfg`` where ``key`` falls back on older names of the same key."""
    if cfg.get(key) is None:
        for o in old:
            if cfg.get(o) is not None:
                return dict(cfg, **{key: cfg[o]})
    return cfg


def _sliding_layer_count(cfg: dict[str, Any], num_layers: int) -> int | None:
    """Layers marked ``"sliding_attention"`` in ``layer_types``, or None when the key is absent."""
    types = cfg.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != num_layers or not all(isinstance(t, str) for t in types):
        raise ValueError(f"key 'layer_types' must be a list of {num_layers} strings (one per layer), got {types!r}")
    return sum(t == "sliding_attention" for t in types)


def _window(cfg: dict[str, Any], absent: int | None) -> int | None:
    """``sliding_window``: ``absent`` when the key is left out (the class default), None when it is null."""
    return absent if "sliding_window" not in cfg else _int(cfg, "sliding_window", None)


def _sliding(window: int | None, layers: int) -> dict[str, Any]:
    return dict(sliding_window=window, sliding_layers=layers) if window and layers else {}


def _common(cfg: dict[str, Any], *, tie: bool, max_positions: int, head_dim: int | None = None,
            kv_heads: int | None = None) -> dict[str, Any]:
    """Fields every family shares; ``tie``, ``max_positions``, ``head_dim`` and ``kv_heads`` are the family's
    defaults (None: hidden_size / num_attention_heads, and as many KV heads as query heads)."""
    hidden = _int(cfg, "hidden_size")
    heads = _int(cfg, "num_attention_heads")
    return dict(
        hidden_size=hidden,
        num_layers=_int(cfg, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_int(cfg, "num_key_value_heads", kv_heads or heads),
        head_dim=_int(cfg, "head_dim", head_dim or hidden // heads),
        vocab_size=_int(cfg, "vocab_size"),
        tie_word_embeddings=_bool(cfg, "tie_word_embeddings", tie),
        max_position_embeddings=_int(cfg, "max_position_embeddings", max_positions),
    )
