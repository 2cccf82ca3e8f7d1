"""The lean engine's configuration: what a model computes beyond its shape (:class:`LeanConfig`, the family
record's compute spec, :class:`energybook.model.families.compute.ComputeSpec`), read by the family's record or
refused by name (:func:`read_config`), with the rotary and ALiBi tables it implies.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from energybook.measure.engines import EngineUnavailable
from energybook.model.families.compute import (  # noqa: F401 - re-exported: names of this module before the move
    GATED_ACTS,
    PLAIN_ACTS,
    QKV_LAYOUTS,
    ROPE_TYPES,
    Unsupported,
    layer_windows,
)
from energybook.model.families.compute import ComputeSpec as LeanConfig

logger = logging.getLogger(__name__)


def __getattr__(name: str):
    if name == "FAMILIES":  # computed on use: a family registered later with a compute spec counts
        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def families() -> tuple[str, ...]:
    """The ``model_type`` values the lean engine runs: the registered families whose record has a compute spec."""
    from energybook.model.architecture import families as registered
    from energybook.model.architecture import family

    return tuple(t for t in registered() if family(t).compute is not None)


def _torch():
    """PyTorch, or a refusal that says how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover
        raise EngineUnavailable('the lean engine needs PyTorch: pip install -e ".[gpu]" in a checkout of '
                                'energybook') from exc
    return torch


def _instead(arch) -> str:
    return f"measure {arch.name} with --engine hf (energybook's transformers-based engine)"


def read_config(arch, cfg: dict) -> LeanConfig:
    """The :class:`LeanConfig` of a Hugging Face configuration dict: its family record's compute spec
    (:meth:`energybook.model.families.record.Family.compute_spec`), or a refusal.

    Raises:
        EngineUnavailable: for a family whose record (:func:`energybook.model.architecture.family`) has no compute
            spec, or a configuration its reader refuses (an activation outside :data:`GATED_ACTS` or
            :data:`PLAIN_ACTS`, a rotary scaling other than :data:`ROPE_TYPES`, partial rotary embeddings outside
            GPT-NeoX, bidirectional attention, a Falcon layout the engine does not run); the message says to use
            ``--engine hf``.
    """
    from energybook.model.architecture import family

    record = family(arch.model_type)
    if record.compute is None:
        raise EngineUnavailable(f"the lean engine does not run the {arch.model_type!r} family ({arch.name}): its "
                                f"record has no compute spec; it runs {', '.join(families())}; {_instead(arch)}")
    try:
        return record.compute_spec(arch, cfg)
    except Unsupported as exc:
        raise EngineUnavailable(f"{exc}; {_instead(arch)}") from None


def inv_freq(head_dim: int, config: LeanConfig):
    """Rotary inverse frequencies (head_dim / 2,), float32, as transformers computes them for this rope type
    (``head_dim``: the rotary dimensions, fewer than the head's with partial rotary embeddings)."""
    torch = _torch()
    base = config.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    p = config.rope_params
    if config.rope_type == "linear":
        return inv / p["factor"]
    if config.rope_type == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv


def alibi_slopes(heads: int):
    """ALiBi's slope of each head, as transformers' ``build_alibi_tensor`` computes them (float32, (heads,))."""
    import torch

    closest = 2 ** math.floor(math.log2(heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = torch.pow(torch.tensor(base, dtype=torch.float32), torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        n = min(closest, heads - closest)
        slopes = torch.cat([slopes, torch.pow(torch.tensor(extra, dtype=torch.float32),
                                              torch.arange(1, 1 + 2 * n, 2, dtype=torch.int32))])
    return slopes


def load_hf_config(model) -> tuple[dict, str, Path | None]:
    """(Hugging Face configuration dict, model name, checkpoint folder or None) of a shipped architecture name, a
    ``config.json`` path, a local checkpoint folder (config plus ``*.safetensors``/``*.bin``), or a dict.

    Raises:
        ValueError: for an unknown name (naming the shipped models).
    """
    from energybook.model import architecture as A

    if isinstance(model, dict):
        cfg = dict(model)
        return cfg, str(cfg.get("_name_or_path") or cfg.get("model_type") or "model").split("/")[-1], None
    path = Path(str(model))
    if path.is_dir() or path.suffix == ".json":
        cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        weights = path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
        return cfg, path.name if path.is_dir() else path.stem, path if weights else None
    return A.hf_config(str(model)), str(model), None  # hf_config raises ValueError naming the shipped models


def rope_tables(config: LeanConfig, head_dim: int, length: int, device, dtype) -> tuple:
    """Rotary cos/sin tables (positions ``length``, rotary dimensions) in ``dtype``, cast from float32 as transformers
    does; (None, None) without rotary positions."""
    if config.positions != "rope":
        return None, None
    torch = _torch()
    inv = inv_freq(config.rotary_dim or head_dim, config).to(device)
    freqs = torch.outer(torch.arange(length, device=device).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def alibi_bias(slopes, keys, arch, dtype):
    """The ALiBi bias (1, K, G, n) in ``dtype`` of keys at positions ``keys`` (n,), as transformers makes it: the slope
    (rounded to bfloat16) times the position, in bfloat16, then divided by sqrt(h), so that the attention's scale
    applies to it as to the logits. ``slopes``: :func:`alibi_slopes`."""
    torch = _torch()
    bias = (slopes.to(keys.device).to(torch.bfloat16)[:, None] * keys[None, :]).to(dtype) / math.sqrt(arch.head_dim)
    return bias.view(1, arch.num_kv_heads, arch.num_heads // arch.num_kv_heads, -1)

