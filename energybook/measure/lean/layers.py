"""The lean engine's model functions: pure functions of tensors, a layer's weights and a :class:`BlockSpec` (what
``torch.compile`` wraps): norms, rotary embeddings, the fused QKV product, a block's output half, the LM head, and
``split`` attention's explicit tail and log-sum-exp merge.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Layer:
    """One decoder layer's weights: fused QKV (rows q, k, v) and fused gate/up (rows gate, up; the one FFN
    product when the FFN is not gated); the norms' biases for LayerNorm."""

    attn_norm: Any
    wqkv: Any
    bqkv: Any
    wo: Any
    bo: Any
    ffn_norm: Any
    w13: Any
    b13: Any
    w2: Any
    b2: Any
    attn_norm_b: Any = None
    ffn_norm_b: Any = None
    post_attn_norm: Any = None
    post_ffn_norm: Any = None
    q_norm: Any = None
    k_norm: Any = None


@dataclass(frozen=True)
class BlockSpec:
    """What a block's output half computes beyond its weights (from a
    :class:`~energybook.measure.lean.config.LeanConfig`).

    Attributes:
        eps: Epsilon of every norm.
        residual_multiplier: Granite: each branch's output is multiplied by it before the residual add (1 elsewhere).
        layer_norm: LayerNorm with a bias instead of RMSNorm.
        gated: A gated FFN (gate and up products); False: one product and ``act``.
        act: ``"silu"`` or ``"gelu_tanh"`` (gated); ``"relu"``, ``"gelu"`` or ``"gelu_tanh"`` (not gated).
        parallel: Attention and FFN read the same block input and are summed.
    """

    eps: float
    residual_multiplier: float = 1.0
    layer_norm: bool = False
    gated: bool = True
    act: str = "silu"
    parallel: bool = False

    @classmethod
    def of(cls, config) -> BlockSpec:
        """The spec of a :class:`~energybook.measure.lean.config.LeanConfig`."""
        return cls(config.rms_norm_eps, config.residual_multiplier, config.layer_norm, config.gated, config.act,
                   config.parallel)


def _norm(x, weight, bias, eps: float, layer_norm: bool):
    """RMSNorm (:func:`_rms`), or LayerNorm with its bias (computed in float32 inside the kernel, as torch's)."""
    import torch.nn.functional as F

    if layer_norm:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return _rms(x, weight, eps)


def _rms(x, weight, eps: float):
    """transformers' RMSNorm: normalised in float32, cast back, then scaled by the weight; with a float32 weight in a
    lower-precision model (Gemma's ``1 + weight``), scaled in float32 and then cast, as Gemma's norms do."""
    import torch
    import torch.nn.functional as F

    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    if weight.dtype == torch.float32 and x.dtype != torch.float32:
        return (normed * weight).to(x.dtype)
    return normed.to(x.dtype) * weight


def _rope(x, cos, sin):
    """Rotary embedding, rotate-half convention: x * cos + rotate_half(x) * sin; tables narrower than the head
    (GPT-NeoX's partial rotary) rotate its first ``cos.shape[-1]`` dimensions and pass the others through."""
    import torch

    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat((_rope(x[..., :rot], cos, sin), x[..., rot:]), dim=-1)
    half = rot // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _qkv(x, norm, wqkv, bqkv, cos, sin, eps: float, heads: int, kv_heads: int, norm_b=None,
         layer_norm: bool = False, q_norm=None, k_norm=None):
    """Norm (none when ``norm`` is None), fused QKV product, OLMo 2's RMSNorms over the whole query and key
    projections (``q_norm``, ``k_norm``) and rotary embedding (none when ``cos`` is None): (..., d) -> q (..., H, h),
    k and v (..., K, h)."""
    import torch
    import torch.nn.functional as F

    qkv = F.linear(x if norm is None else _norm(x, norm, norm_b, eps, layer_norm), wqkv, bqkv)
    if q_norm is not None:
        qw, kw = q_norm.shape[-1], k_norm.shape[-1]
        qkv = torch.cat((_rms(qkv[..., :qw], q_norm, eps), _rms(qkv[..., qw:qw + kw], k_norm, eps),
                         qkv[..., qw + kw:]), dim=-1)
    qkv = qkv.view(*qkv.shape[:-1], heads + 2 * kv_heads, -1)
    if cos is None:
        return qkv[..., :heads, :], qkv[..., heads:heads + kv_heads, :], qkv[..., heads + kv_heads:, :]
    qk = _rope(qkv[..., : heads + kv_heads, :], cos, sin)
    return qk[..., :heads, :], qk[..., heads:, :], qkv[..., heads + kv_heads:, :]


def _qkv_kv(x, norm, wqkv, bqkv, cos, sin, eps: float, heads: int, kv_heads: int, norm_b=None,
            layer_norm: bool = False, q_norm=None, k_norm=None):
    """:func:`_qkv` for a decode step: q (B, H, h) and the new keys and values stacked, kv (2, B, K, h), so that
    one ``index_copy_`` writes both into a layer's (2, B, S, K, h) cache, and compiled code writes kv in the
    kernel that applies the rotary embedding rather than in two copies after it."""
    import torch

    q, k, v = _qkv(x, norm, wqkv, bqkv, cos, sin, eps, heads, kv_heads, norm_b, layer_norm, q_norm, k_norm)
    return q, torch.stack((k, v))


def _block_out(x, attn, layer: Layer, spec: BlockSpec):
    """Output projection and residual, then norm, fused gate/up, the gate's activation (SiLU, or Gemma's tanh
    GELU) times up (or one product and ``act``, ReLU, exact or tanh GELU, when not ``gated``), down projection and
    residual. Gemma 2's sandwich norms (``layer.post_attn_norm``, ``layer.post_ffn_norm``) normalise each branch
    before its residual add. ``spec.parallel`` (GPT-NeoX, Falcon): the FFN reads the block input ``x`` too, and the
    block returns ``x + (ffn + attention)``, summed in transformers' order."""
    import torch.nn.functional as F

    eps, residual_multiplier, act = spec.eps, spec.residual_multiplier, spec.act
    out = F.linear(attn, layer.wo, layer.bo)
    if layer.post_attn_norm is not None:
        out = _rms(out, layer.post_attn_norm, eps)
    attn_out = out if residual_multiplier == 1.0 else out * residual_multiplier
    h = x if spec.parallel else x + attn_out
    ffn_in = h if layer.ffn_norm is None else _norm(h, layer.ffn_norm, layer.ffn_norm_b, eps, spec.layer_norm)
    hidden = F.linear(ffn_in, layer.w13, layer.b13)
    if spec.gated:
        gate, up = hidden.chunk(2, dim=-1)
        hidden = (F.gelu(gate, approximate="tanh") if act == "gelu_tanh" else F.silu(gate)) * up
    elif act == "relu":
        hidden = F.relu(hidden)
    else:
        hidden = F.gelu(hidden, approximate="tanh" if act == "gelu_tanh" else "none")
    out = F.linear(hidden, layer.w2, layer.b2)
    if layer.post_ffn_norm is not None:
        out = _rms(out, layer.post_ffn_norm, eps)
    ffn_out = out if residual_multiplier == 1.0 else out * residual_multiplier
    return x + (ffn_out + attn_out) if spec.parallel else h + ffn_out


def _head(x, norm, lm_head, eps: float, norm_b=None, layer_norm: bool = False, softcap: float | None = None):
    """Final norm and LM head on (rows, d): raw logits (rows, V), soft-capped (Gemma 2) when ``softcap`` is set."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(_norm(x, norm, norm_b, eps, layer_norm), lm_head)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _head_argmax(x, norm, lm_head, eps: float, norm_b=None, layer_norm: bool = False, softcap: float | None = None):
    """:func:`_head` and the greedy token: (logits (rows, V), argmax (rows,)); compiled, the argmax is a split
    reduction over the vocabulary rather than one block per row."""
    logits = _head(x, norm, lm_head, eps, norm_b, layer_norm, softcap)
    return logits, logits.argmax(-1)


def _tail_attention(q, k, v, bias, scale: float):
    """Explicit softmax attention of q (B, K, G, h) over k, v (B, K, W, h) under an additive float32 bias (W,).

    Returns the output in float32 and its log-sum-exp (B, K, G) of the scaled, biased logits.
    """
    import torch

    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale + bias
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v.float()), lse


def _merge(o1, lse1, o2, lse2):
    """Combine two softmax attentions over disjoint key sets from their outputs and log-sum-exps (float32)."""
    import torch

    top = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - top).unsqueeze(-1), torch.exp(lse2 - top).unsqueeze(-1)
    return (o1.float() * w1 + o2 * w2) / (w1 + w2)


def _tail_merge(q, k, v, bias, o1, lse1, scale: float):
    """``split`` attention's second half: the bucket's own keys (:func:`_tail_attention`) merged with the flash
    output ``o1`` and log-sum-exp ``lse1`` of the prefix (:func:`_merge`); in the model's dtype."""
    o2, lse2 = _tail_attention(q, k, v, bias, scale)
    return _merge(o1, lse1, o2, lse2).to(q.dtype)


def _flash_with_lse(q, k, v, scale: float):
    """Unmasked attention and its log-sum-exp through flash attention (CUDA) or its CPU kernel."""
    import torch

    if q.device.type == "cuda":
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
    else:
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
    return out[0], out[1].float()


#: A decode step's blocks: norm, QKV and rotary; the block's output half; final norm, LM head and argmax; ``split``
#: attention's tail.
DECODE_FNS = (_qkv_kv, _block_out, _head_argmax, _tail_merge)
#: A prefill chunk's blocks.
PREFILL_FNS = (_qkv, _block_out, _head)


def compiled(torch, decode: bool, prefill: bool, mode: str, mode_small: str | None, small_batch: int):
    """The blocks a step calls, through ``torch.compile`` where asked: ``({False: decode's, True: small batches'},
    prefill's)``.

    Args:
        torch: The ``torch`` module.
        decode: Compile the decode step's blocks (:data:`DECODE_FNS`).
        prefill: Compile the prefill's (:data:`PREFILL_FNS`), as their own compiled objects: the prefill's shapes
            do not use up the decode's recompilation limit.
        mode: The ``torch.compile`` mode.
        mode_small: The mode of decode steps at batches up to ``small_batch`` (their own compiled objects, so that
            the two modes never share or evict a compilation); None: ``mode``.
        small_batch: Largest batch of ``mode_small`` (requests; 0: none).
    """
    fns, prefill_fns = {False: DECODE_FNS, True: DECODE_FNS}, PREFILL_FNS
    if not (decode or prefill):
        return fns, prefill_fns
    import torch._dynamo.config as dynamo_config

    # One compilation per batch size and block; a sweep meets more batch sizes than dynamo's default limit.
    for key in ("recompile_limit", "cache_size_limit"):
        if getattr(dynamo_config, key, 64) < 64:
            setattr(dynamo_config, key, 64)
    kw = dict(mode=mode, dynamic=False, fullgraph=True)
    if decode:
        fns[False] = fns[True] = tuple(torch.compile(f, **kw) for f in DECODE_FNS)
        if small_batch and mode_small not in (None, mode):
            small = tuple(torch.compile(f, **dict(kw, mode=mode_small)) for f in DECODE_FNS[:3])
            # The split way's tail stays in ``mode``: it is compiled per bucket width, and timing kernels for each
            # would cost minutes for a way that auto rarely picks at small batches.
            fns[True] = small + fns[False][3:]
    if prefill:
        prefill_fns = tuple(torch.compile(f, **kw) for f in PREFILL_FNS)
    return fns, prefill_fns

