"""The ``lean`` engine: a decoder written for inference after PyTorch's gpt-fast (llama, qwen2, OPT, Falcon...).

The ``hf`` engine (:mod:`energybook.measure.torch_engine`) runs stock transformers modules. This one is a
short model of its own, built from the :class:`~energybook.model.architecture.Architecture` and the Hugging
Face configuration, with nothing in the measured path that the workload does not need:

* **weights**: one fused QKV matrix and one fused gate/up matrix per layer (the products of the separate
  matrices, so :mod:`energybook.model.complexity` counts them unchanged); random (``"dummy"``: normal with
  std 0.02, norm weights 1, seeded, as the ``hf`` engine) or read from a local checkpoint folder, or re-packed
  from a transformers model (:meth:`LeanEngine.from_hf_model`);
* **KV cache**: one tensor for all layers, (L, 2, B, S, K, h), preallocated per wave state (batch B, length S a
  bucket edge at or above ``n_in + n_out - 1``), zeroed once and written in place;
* **prefill**: chunked by requests (about ``prefill_tokens`` tokens per chunk), causal SDPA (flash on Hopper,
  grouped-query heads through ``enable_gqa``), K/V written into the cache, and the final norm and LM head on
  the last position only, as (rows, d) products;
* **decode**: one token per request and step. The query heads that share a KV head are folded into the query
  length, (B, K, G, h), so each KV head is read once; nothing is repeated. Eager decode (the CPU, or graphs
  off) attends with SDPA to exactly the live context ``cache[..., :ctx + 1, :]``;
* **CUDA graphs**: one graph per (batch, context bucket), all in one memory pool, captured and replayed once
  by :meth:`LeanEngine.prepare` before any measured window (``generate`` prepares what is missing *before*
  its start clock, and logs it). A graph serves every step whose fed position lies in its bucket
  ``[lo, hi)``; the position lives on the device. Buckets are 32 tokens wide below 1024 keys (at most 31
  padded keys), then 1/16 of their start (64, 128, then 256 tokens from 4096 keys on: at most 1/16 of the live
  keys padded); :func:`bucket_edges`. Three ways to attend inside a bucket (``decode_attention``):

  - ``masked``: SDPA over the bucket's prefix ``[0, hi)`` with an additive mask over the keys not yet
    written (one kernel; reads up to ``hi - lo - 1`` padded keys);
  - ``split``: flash attention over the complete prefix ``[0, lo)`` (no mask, it returns its log-sum-exp),
    an explicit masked softmax over the bucket's own keys ``[lo, hi)``, and an exact log-sum-exp merge;
  - ``varlen``: flash attention's variable-length kernel with ``seqused_k`` (CUDA only), which reads exactly
    the live keys;
  - ``triton``: one Triton kernel (:mod:`energybook.measure.triton_decode`) that reads the live key count on the
    device and each KV head once for all its query heads, split into chunks when the batch is small (CUDA with
    Triton only);

  ``"auto"`` (the default) checks each against eager attention at construction and, for every bucket, times
  the ones that pass inside a small CUDA graph at the wave's batch, and keeps the fastest (kernel selection
  is part of the warm-up); the choices are recorded in :attr:`LeanEngine.settings`;
* **compile** (on by default on CUDA; ``compile=False`` turns it off): the dense blocks of a decode step (norm,
  QKV, rotary; output projection, residual, norm, gated FFN; final norm and LM head) and ``split``'s small
  softmax and merge through ``torch.compile`` (``mode="default"``: inductor fuses the norms, rotary, SiLU gate
  and residuals into a few kernels around cuBLAS's products; the engine's own graphs capture the compiled
  kernels). On an H200 this took the step at batch 1000 and context 128 from 6.96 to 5.31 ms
  (``benchmarks/results/h200/engine_targets_quick.txt``). The attention kernels stay outside, so one
  compilation per batch (and, for the merge, per bucket width) serves every bucket. The prefill's blocks are
  compiled as well (``compile_prefill``, as ``compile`` by default), once per chunk shape, in :meth:`prepare`;

Families: llama (with Llama 3.x's ``llama3`` rotary scaling, ``linear`` scaling, biases), mistral, qwen2
(q/k/v biases), granite (its embedding, residual, attention and logits multipliers), OPT (pre-LayerNorm with
biases, ReLU, learned positions at offset 2), StarCoder2 (LayerNorms with biases, GQA, biases on every product,
a plain tanh-GELU FFN, a sliding window on every layer when set), GPT-NeoX (Pythia: parallel or sequential
residual, partial rotary embeddings on the first ``rotary_pct`` of each head, GELU, untied ``embed_out``) and
Falcon: Falcon-RW (ALiBi, multi-head, sequential attention and MLP with two LayerNorms, GELU), Falcon-7B's layout
(rotary, multi-query, attention and MLP in parallel from one LayerNorm) and the new decoder architecture (rotary,
GQA, parallel attention and MLP from two LayerNorms or one). Fused QKV matrices (GPT-NeoX's and multi-head
Falcon's per head, the new decoder's per KV head: its queries, key and value) are re-packed as all queries, keys,
values (:data:`QKV_LAYOUTS`); a parallel block computes ``x + (ffn(norm2(x)) + attn(norm1(x)))`` in one
:func:`_block_out`. With ALiBi the bias of every key position is
built once per wave state as transformers builds it (the slope in bfloat16 times the position, divided by
sqrt(h)); decode attends through ``masked`` (SDPA with the bias as its mask) or ``triton`` (the slope in the
kernel), as flash's prefix and varlen kernels take no bias; prefill uses SDPA with a (1, H, n, n) causal mask
holding the bias (2 GiB in bf16 at n = 4096 and 64 heads).

Gemma and Gemma 2: GeGLU FFNs (tanh GELU), norms that scale by ``1 + weight`` in float32, embeddings times
sqrt(d); Gemma 2 adds a norm after each branch (four per layer), logit soft-capping in attention and on the
final logits, its own attention scale (``query_pre_attn_scalar``) and a sliding window on every other layer.

Sliding windows (Gemma 2, Mistral, Qwen2 with ``use_sliding_window``) are applied per layer
(:func:`layer_windows`): decode attends to the window's keys only (``exact`` and ``triton`` read only those,
``masked`` masks the others; the ways chosen wherever a window binds), and a prompt longer than its window, or
any prompt with soft-capped logits, attends through FlexAttention with a causal, windowed block mask and the cap
as its score modification. The KV cache keeps every position of every layer (no ring buffer for the windowed
layers), so batches are no larger than without a window. Phi-3 is llama's layout with q, k, v and gate, up
fused in transformers' weights already. Every other family, and every layout or feature
of these families the engine does not implement (ALiBi outside Falcon-RW's layout, partial rotary embeddings
outside GPT-NeoX and Phi-3, other activations and rotary scalings), is refused by name in the constructor with
:class:`~energybook.measure.engines.EngineUnavailable`: measure it with ``--engine hf``.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from energybook.measure.engines import EngineUnavailable
from energybook.measure.torch_engine import causal_mask, softcapped_attention
from energybook.model.complexity import check_positive

logger = logging.getLogger(__name__)

#: The ``model_type`` values this engine runs.
FAMILIES = ("llama", "mistral", "qwen2", "granite", "phi3", "gemma", "gemma2", "opt", "falcon", "gpt_neox",
            "starcoder2")
#: Ways to attend inside a decode graph (module docstring); ``"auto"`` picks among them per bucket.
DECODE_ATTENTION = ("masked", "split", "varlen", "triton")
#: The ways that apply a sliding window and Gemma 2's logit soft-capping (flash's kernels here take neither).
WINDOWED = ("masked", "triton")
ROPE_TYPES = ("default", "linear", "llama3")
#: Activations of a gated FFN: the configuration's name -> the engine's (SiLU; Gemma's tanh-approximated GELU).
GATED_ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
#: Activations of an FFN that is not gated (GPT-NeoX, StarCoder2): the configuration's name -> the engine's.
PLAIN_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
#: Layouts of a fused QKV matrix in transformers' weights (:meth:`LeanEngine._pack_fused`): ``"per_head"`` (q, k, v
#: of head 0, then head 1, ...: GPT-NeoX, multi-head Falcon), ``"per_group"`` (the G queries, key and value of KV
#: head 0, then of KV head 1, ...: Falcon's new decoder architecture) and ``"stacked"`` (all queries, then all keys,
#: then all values: multi-query Falcon, the engine's own layout).
QKV_LAYOUTS = ("per_head", "per_group", "stacked")


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover
        raise EngineUnavailable('the lean engine needs PyTorch: pip install -e ".[gpu]" in a checkout of '
                                'energybook') from exc
    return torch


# ----- configuration --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeanConfig:
    """What the model computes beyond the :class:`~energybook.model.architecture.Architecture`'s shape.

    Attributes:
        rms_norm_eps: Epsilon of every RMSNorm.
        rope_theta: Rotary base (wavelength scale).
        rope_type: ``"default"``, ``"linear"`` or ``"llama3"``.
        rope_params: The scaling parameters of ``rope_type`` (factor, low/high_freq_factor,
            original_max_position_embeddings).
        embedding_multiplier: Granite: the token embeddings are multiplied by it (1 elsewhere).
        residual_multiplier: Granite: each block's output is multiplied by it before the residual add.
        attention_scale: Softmax scale of attention: head_dim ** -0.5, or Granite's attention_multiplier.
        logits_scaling: Granite: the logits are divided by it (greedy tokens do not change).
        layer_norm: LayerNorm with a bias (OPT) instead of RMSNorm; its epsilon is ``rms_norm_eps``.
        gated: A SiLU-gated FFN (gate and up products); False: one product and ``act``.
        act: The activation of an FFN that is not gated: ``"relu"`` (OPT), ``"gelu"`` (Falcon, GPT-NeoX) or
            ``"gelu_tanh"`` (StarCoder2).
        positions: ``"rope"`` (rotary), ``"learned"`` (OPT: a table of position embeddings added to the token
            embeddings, read at position + ``position_offset``) or ``"alibi"`` (Falcon-RW: a bias of each query head's
            slope times the key's position, added to the attention logits).
        position_offset: The learned table's offset (OPT's 2).
        embedding_in_dtype: Gemma: the embedding multiplier (sqrt(d)) is rounded to the model's dtype before the
            product, as transformers does.
        norm_offset: Gemma: RMSNorm scales by ``1 + weight``; the engine stores ``1 + weight`` in float32 and
            multiplies in float32 before the cast, as transformers' Gemma norms do.
        sandwich: Gemma 2: a norm after attention and after the FFN, before each residual add (four per layer).
        attn_softcap: Gemma 2: each scaled attention logit ``s`` becomes ``attn_softcap * tanh(s / attn_softcap)``.
        final_softcap: Gemma 2: the logits become ``final_softcap * tanh(logits / final_softcap)`` (computed in the
            measured step, as the model does; greedy tokens do not change).
        windows: The sliding window of each layer (tokens; None for a full-attention layer), or () when no layer
            slides.
        rotary_dim: Partial rotary embeddings (GPT-NeoX's ``rotary_pct``): rotary on the first ``rotary_dim``
            dimensions of each query and key head, the others passed through; None: the whole head.
        parallel: Attention and FFN read the same block input and are summed, ``x + (ffn(norm2(x)) + attn(norm1(x)))``
            (GPT-NeoX's ``use_parallel_residual``, Falcon's ``parallel_attn``; Falcon's single-norm layouts hold one
            norm as both); False: sequential, ``x + attn``, then its FFN.
        qkv_layout: How transformers' weights fuse q, k and v (:data:`QKV_LAYOUTS`), or ``"separate"`` (q_proj,
            k_proj, v_proj).
    """

    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_params: dict = field(default_factory=dict)
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_scale: float = 0.125
    logits_scaling: float = 1.0
    layer_norm: bool = False
    gated: bool = True
    act: str = "silu"
    positions: str = "rope"
    position_offset: int = 0
    embedding_in_dtype: bool = False
    norm_offset: bool = False
    sandwich: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    windows: tuple = ()
    rotary_dim: int | None = None
    parallel: bool = False
    qkv_layout: str = "separate"

    def to_dict(self) -> dict:
        """Plain values for :attr:`LeanEngine.settings`."""
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}
        out["windows"] = list(self.windows)
        return out


def _instead(arch) -> str:
    return f"measure {arch.name} with --engine hf (energybook's transformers-based engine)"


def read_config(arch, cfg: dict) -> LeanConfig:
    """The :class:`LeanConfig` of a Hugging Face configuration dict, or a refusal.

    Reads both layouts of the rotary settings: ``rope_theta`` + ``rope_scaling`` (config.json files,
    transformers 4) and ``rope_parameters`` (transformers 5's ``to_dict``).

    Raises:
        EngineUnavailable: for a family outside :data:`FAMILIES`, an activation outside :data:`GATED_ACTS` (or
            :data:`PLAIN_ACTS`), a rotary scaling other than :data:`ROPE_TYPES`, partial rotary embeddings outside
            GPT-NeoX, bidirectional attention, or a Falcon layout the engine does not run; the message says to use
            ``--engine hf``.
    """
    if arch.model_type not in FAMILIES:
        raise EngineUnavailable(f"the lean engine does not run the {arch.model_type!r} family ({arch.name}): it "
                                f"runs {', '.join(FAMILIES)}; {_instead(arch)}")
    if arch.model_type == "opt":
        return _read_opt(arch, cfg)
    if arch.model_type == "falcon":
        return _read_falcon(arch, cfg)
    if arch.model_type == "gpt_neox":
        return _read_gpt_neox(arch, cfg)
    if arch.model_type == "starcoder2":
        return _read_starcoder2(arch, cfg)
    gemma = arch.model_type in ("gemma", "gemma2")
    if arch.model_type == "gemma2":
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    elif gemma:  # Gemma 1's legacy "gelu" means the tanh approximation (transformers rewrites it too)
        act = cfg.get("hidden_act") or "gelu_pytorch_tanh"
        act = "gelu_pytorch_tanh" if act == "gelu" else act
    else:
        act = cfg.get("hidden_act", "silu")
    if act not in GATED_ACTS:
        raise EngineUnavailable(f"{arch.name}: hidden_act {act!r}; the lean engine implements gated FFNs with "
                                f"{', '.join(GATED_ACTS)} only; {_instead(arch)}")
    _no_bidirectional(arch, cfg)
    rope = _read_rope(arch, cfg, partial_ok=arch.model_type == "phi3")  # Phi-4-mini's partial rotary
    granite = arch.model_type == "granite"
    scale = float(cfg.get("attention_multiplier", 1.0)) if granite else arch.head_dim ** -0.5
    logits_scaling = float(cfg.get("logits_scaling", 1.0)) if granite else 1.0
    if logits_scaling <= 0:
        raise ValueError(f"{arch.name}: logits_scaling must be positive, got {logits_scaling}")
    extra = {}
    if gemma:
        gemma2 = arch.model_type == "gemma2"
        if gemma2 and cfg.get("query_pre_attn_scalar"):
            scale = float(cfg["query_pre_attn_scalar"]) ** -0.5
        extra = dict(embedding_in_dtype=True, norm_offset=True, sandwich=gemma2,
                     attn_softcap=_softcap(arch, cfg, "attn_logit_softcapping") if gemma2 else None,
                     final_softcap=_softcap(arch, cfg, "final_logit_softcapping") if gemma2 else None)
    multiplier = arch.hidden_size ** 0.5 if gemma else float(cfg.get("embedding_multiplier", 1.0)) if granite else 1.0
    return LeanConfig(
        rms_norm_eps=float(cfg.get("rms_norm_eps") or 1e-6), **rope,
        embedding_multiplier=multiplier, act=GATED_ACTS[act], windows=layer_windows(arch, cfg),
        residual_multiplier=float(cfg.get("residual_multiplier", 1.0)) if granite else 1.0,
        attention_scale=float(scale), logits_scaling=logits_scaling, **extra)


def _no_bidirectional(arch, cfg: dict) -> None:
    if cfg.get("use_bidirectional_attention"):
        raise EngineUnavailable(f"{arch.name}: use_bidirectional_attention is set; the lean engine runs causal "
                                f"decoders only; {_instead(arch)}")


def _read_rope(arch, cfg: dict, partial_ok: bool = False, partial_default: float = 1.0,
               theta_default: float = 10000.0) -> dict:
    """The rotary fields of :class:`LeanConfig` (``rope_theta``, ``rope_type``, ``rope_params``, ``rotary_dim``).

    Args:
        partial_ok: Partial rotary embeddings are applied (GPT-NeoX); else refused.
        partial_default: The family's rotary fraction when the configuration names none (GPT-NeoX: 0.25).
        theta_default: The family's rotary base when the configuration names none.

    Raises:
        EngineUnavailable: for a rotary scaling outside :data:`ROPE_TYPES`, or partial rotary embeddings where
            ``partial_ok`` is false (or covering an odd or zero number of dimensions).
    """
    params = dict(cfg.get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):  # per-layer-type parameters: one layer type here
        params = dict(params["full_attention"])
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(scaling, dict) or not isinstance(params, dict):
        raise EngineUnavailable(f"{arch.name}: rope_scaling must be an object; {_instead(arch)}")
    params = {**params, **scaling}
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    theta = cfg.get("rope_theta") or params.pop("rope_theta", None) or theta_default
    params.pop("rope_theta", None)
    if rope_type not in ROPE_TYPES:
        raise EngineUnavailable(f"{arch.name}: rotary scaling {rope_type!r}; the lean engine implements "
                                f"{', '.join(ROPE_TYPES)}; {_instead(arch)}")
    partial = params.pop("partial_rotary_factor", None)
    for key in ("partial_rotary_factor", "rotary_pct"):  # GPT-NeoX's config.json names it rotary_pct
        partial = cfg.get(key) if partial is None else partial
    partial = float(partial_default if partial is None else partial)
    rotary_dim = None
    if partial != 1.0:
        rotary_dim = int(arch.head_dim * partial)  # as transformers rounds it
        if not partial_ok or rotary_dim <= 0 or rotary_dim % 2:
            raise EngineUnavailable(f"{arch.name}: partial rotary embeddings ({partial}, {rotary_dim} of "
                                    f"{arch.head_dim} dimensions); the lean engine applies them to GPT-NeoX only, "
                                    f"over an even number of dimensions; {_instead(arch)}")
    if rope_type == "llama3":
        params.setdefault("original_max_position_embeddings", arch.max_position_embeddings)
        missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in params]
        if missing:
            raise ValueError(f"{arch.name}: llama3 rotary scaling lacks {missing}")
    if rope_type == "linear" and "factor" not in params:
        raise ValueError(f"{arch.name}: linear rotary scaling lacks 'factor'")
    return dict(rope_theta=float(theta), rope_type=rope_type, rotary_dim=rotary_dim,
                rope_params={k: v for k, v in params.items() if k in ("factor", "low_freq_factor", "high_freq_factor",
                                                                       "original_max_position_embeddings")})


def _plain_act(arch, act: str) -> str:
    if act not in PLAIN_ACTS:
        raise EngineUnavailable(f"{arch.name}: activation {act!r}; the lean engine implements FFNs that are not "
                                f"gated with {', '.join(PLAIN_ACTS)} only; {_instead(arch)}")
    return PLAIN_ACTS[act]


def _read_gpt_neox(arch, cfg: dict) -> LeanConfig:
    """GPT-NeoX (Pythia): LayerNorms with biases, GELU FFN, partial rotary embeddings (``rotary_pct``, default 0.25;
    base ``rotary_emb_base``), a parallel residual (``use_parallel_residual``, default true) or a sequential one."""
    _no_bidirectional(arch, cfg)
    rope = _read_rope(arch, cfg, partial_ok=True, partial_default=0.25,
                      theta_default=float(cfg.get("rotary_emb_base") or 10000.0))
    return LeanConfig(rms_norm_eps=float(cfg.get("layer_norm_eps") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act=_plain_act(arch, cfg.get("hidden_act") or "gelu"),
                      parallel=bool(cfg.get("use_parallel_residual", True)), qkv_layout="per_head", **rope)


def _read_starcoder2(arch, cfg: dict) -> LeanConfig:
    """StarCoder2: LayerNorms with biases, GQA, rotary, biases everywhere (``use_bias``), a plain FFN (c_fc, c_proj)
    with ``hidden_act`` (tanh GELU), a sliding window on every layer when ``sliding_window`` is set."""
    _no_bidirectional(arch, cfg)
    return LeanConfig(rms_norm_eps=float(cfg.get("norm_epsilon") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act=_plain_act(arch, cfg.get("hidden_act") or "gelu_pytorch_tanh"),
                      windows=layer_windows(arch, cfg), **_read_rope(arch, cfg))


def _softcap(arch, cfg: dict, key: str) -> float | None:
    value = cfg.get(key)
    if value is None:
        return None
    if float(value) <= 0:
        raise ValueError(f"{arch.name}: {key} must be positive or null, got {value}")
    return float(value)


def layer_windows(arch, cfg: dict) -> tuple:
    """The sliding window of each layer (None: full attention), or () when no layer slides.

    ``layer_types`` decides where a configuration has it; otherwise Gemma 2 slides on its even layers (0, 2, ...;
    transformers' default) and every other family on its top ``sliding_layers`` layers (all of them for Mistral
    and StarCoder2; those from ``max_window_layers`` on for Qwen2).
    """
    if not arch.sliding_layers:
        return ()
    n = arch.num_layers
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n:
        slides = [t == "sliding_attention" for t in types]
    elif arch.model_type == "gemma2":
        slides = [i % 2 == 0 for i in range(n)]
    else:
        slides = [i >= n - arch.sliding_layers for i in range(n)]
    if sum(slides) != arch.sliding_layers:
        raise ValueError(f"{arch.name}: {sum(slides)} layers slide by layer_types, the architecture counts "
                         f"{arch.sliding_layers}")
    return tuple(arch.sliding_window if s else None for s in slides)


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


def bucket_edges(limit: int, bucket_min: int = 32, bucket_max: int = 256) -> list[int]:
    """Edges 0 = e_0 < e_1 < ... of the decode-graph buckets, up to the first edge at or above ``limit``.

    A bucket starting at ``s`` is ``min(bucket_max, max(bucket_min, p(s) // 16))`` tokens wide, where ``p(s)``
    is the largest power of two at most ``s``: 32-token buckets below 1024 keys, then 64, 128 and 256, so
    that a bucket's padded keys stay at most about 1/16 of its live ones.

    Args:
        limit: Keys to cover (tokens).
        bucket_min: Narrowest bucket (tokens).
        bucket_max: Widest bucket (tokens).
    """
    check_positive(bucket_min=bucket_min, bucket_max=bucket_max)
    if bucket_max < bucket_min:
        raise ValueError(f"bucket_max ({bucket_max}) must be at least bucket_min ({bucket_min})")
    edges = [0]
    while edges[-1] < limit:
        s = edges[-1]
        pow2 = 1 << (s.bit_length() - 1) if s else 0
        edges.append(s + min(bucket_max, max(bucket_min, pow2 // 16)))
    return edges


def _read_opt(arch, cfg: dict) -> LeanConfig:
    """OPT: pre-LayerNorm blocks with biases, ReLU FFN, learned positions (offset 2), no projection of the embeddings.

    Raises:
        EngineUnavailable: for OPT 350M's post-norm blocks or embedding projection, or another activation.
    """
    if not cfg.get("do_layer_norm_before", True):
        raise EngineUnavailable(f"{arch.name}: post-LayerNorm blocks (do_layer_norm_before false, OPT 350M); "
                                f"{_instead(arch)}")
    proj = cfg.get("word_embed_proj_dim")
    if proj not in (None, arch.hidden_size):
        raise EngineUnavailable(f"{arch.name}: word_embed_proj_dim {proj} differs from hidden_size "
                                f"{arch.hidden_size}; {_instead(arch)}")
    act = cfg.get("activation_function", "relu")
    if act != "relu" or not cfg.get("enable_bias", True) or not cfg.get("layer_norm_elementwise_affine", True):
        raise EngineUnavailable(f"{arch.name}: activation {act!r}, enable_bias {cfg.get('enable_bias', True)}, "
                                f"affine norms {cfg.get('layer_norm_elementwise_affine', True)}: the lean engine runs "
                                f"OPT's ReLU, biased, affine layout only; {_instead(arch)}")
    return LeanConfig(rms_norm_eps=1e-5, attention_scale=arch.head_dim ** -0.5, layer_norm=True, gated=False,
                      act="relu", positions="learned", position_offset=2)


def _read_falcon(arch, cfg: dict) -> LeanConfig:
    """Falcon's layouts: LayerNorms with biases, GELU, and

    * Falcon-RW: ALiBi, multi-head, sequential attention and MLP with two LayerNorms;
    * Falcon-7B's: rotary, multi-query (one KV head), attention and MLP in parallel from one LayerNorm (and the
      rotary multi-head or sequential variants of the old architecture);
    * the new decoder architecture (Falcon-40B, 180B, 11B): rotary, GQA (``num_kv_heads``), parallel attention and
      MLP from two LayerNorms (``ln_attn``, ``ln_mlp``; ``num_ln_in_parallel_attn`` 2, its default) or one (1).

    Raises:
        EngineUnavailable: for ALiBi outside Falcon-RW's layout, the new decoder architecture without parallel
            attention or the old one with two parallel LayerNorms (layouts transformers does not run either), or
            another activation.
    """
    alibi = bool(cfg.get("alibi", False))
    new = bool(cfg.get("new_decoder_architecture", False))
    parallel = bool(cfg.get("parallel_attn", True))
    multi_query = bool(cfg.get("multi_query", True))
    ln_parallel = cfg.get("num_ln_in_parallel_attn")
    if alibi:
        other = [name for name, bad in (("parallel attention", parallel), ("the new decoder architecture", new),
                                        ("multi-query attention", multi_query)) if bad]
        if other:
            raise EngineUnavailable(f"{arch.name}: Falcon with ALiBi and {', '.join(other)}; the lean engine runs "
                                    f"ALiBi in Falcon-RW's layout (sequential, multi-head) only; {_instead(arch)}")
    if new and not parallel:
        raise EngineUnavailable(f"{arch.name}: Falcon's new decoder architecture without parallel attention "
                                f"(parallel_attn false); {_instead(arch)}")
    if not new and parallel and ln_parallel == 2:
        raise EngineUnavailable(f"{arch.name}: Falcon's old decoder architecture with two parallel LayerNorms "
                                f"(num_ln_in_parallel_attn 2); {_instead(arch)}")
    act = cfg.get("activation", "gelu")
    if act != "gelu":
        raise EngineUnavailable(f"{arch.name}: activation {act!r}; {_instead(arch)}")
    rope = {} if alibi else _read_rope(arch, cfg)
    layout = "per_group" if new else "stacked" if multi_query else "per_head"
    return LeanConfig(rms_norm_eps=float(cfg.get("layer_norm_epsilon") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act="gelu", positions="alibi" if alibi else "rope",
                      parallel=parallel, qkv_layout=layout, **rope)


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


# ----- the model's functions (pure: tensors in, tensors out; what torch.compile wraps) ----------------------
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
         layer_norm: bool = False):
    """Norm, fused QKV product and rotary embedding (none when ``cos`` is None): (..., d) -> q (..., H, h), k and
    v (..., K, h)."""
    import torch.nn.functional as F

    qkv = F.linear(_norm(x, norm, norm_b, eps, layer_norm), wqkv, bqkv)
    qkv = qkv.view(*qkv.shape[:-1], heads + 2 * kv_heads, -1)
    if cos is None:
        return qkv[..., :heads, :], qkv[..., heads:heads + kv_heads, :], qkv[..., heads + kv_heads:, :]
    qk = _rope(qkv[..., : heads + kv_heads, :], cos, sin)
    return qk[..., :heads, :], qk[..., heads:, :], qkv[..., heads + kv_heads:, :]


def _qkv_kv(x, norm, wqkv, bqkv, cos, sin, eps: float, heads: int, kv_heads: int, norm_b=None,
            layer_norm: bool = False):
    """:func:`_qkv` for a decode step: q (B, H, h) and the new keys and values stacked, kv (2, B, K, h), so that
    one ``index_copy_`` writes both into a layer's (2, B, S, K, h) cache, and compiled code writes kv in the
    kernel that applies the rotary embedding rather than in two copies after it."""
    import torch

    q, k, v = _qkv(x, norm, wqkv, bqkv, cos, sin, eps, heads, kv_heads, norm_b, layer_norm)
    return q, torch.stack((k, v))


def _block_out(x, attn, wo, bo, norm, w13, b13, w2, b2, eps: float, residual_multiplier: float, norm_b=None,
               layer_norm: bool = False, gated: bool = True, act: str = "silu", post_attn_norm=None,
               post_ffn_norm=None, parallel: bool = False):
    """Output projection and residual, then norm, fused gate/up, the gate's activation (SiLU, or Gemma's tanh
    GELU) times up (or one product and ``act``, ReLU, exact or tanh GELU, when not ``gated``), down projection and
    residual. Gemma 2's sandwich norms (``post_attn_norm``, ``post_ffn_norm``) normalise each branch before its
    residual add. ``parallel`` (GPT-NeoX, Falcon): the FFN reads the block input ``x`` too, and the block returns
    ``x + (ffn + attention)``, summed in transformers' order."""
    import torch.nn.functional as F

    out = F.linear(attn, wo, bo)
    if post_attn_norm is not None:
        out = _rms(out, post_attn_norm, eps)
    attn_out = out if residual_multiplier == 1.0 else out * residual_multiplier
    h = x if parallel else x + attn_out
    hidden = F.linear(_norm(h, norm, norm_b, eps, layer_norm), w13, b13)
    if gated:
        gate, up = hidden.chunk(2, dim=-1)
        hidden = (F.gelu(gate, approximate="tanh") if act == "gelu_tanh" else F.silu(gate)) * up
    elif act == "relu":
        hidden = F.relu(hidden)
    else:
        hidden = F.gelu(hidden, approximate="tanh" if act == "gelu_tanh" else "none")
    out = F.linear(hidden, w2, b2)
    if post_ffn_norm is not None:
        out = _rms(out, post_ffn_norm, eps)
    ffn_out = out if residual_multiplier == 1.0 else out * residual_multiplier
    return x + (ffn_out + attn_out) if parallel else h + ffn_out


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


def _ranges(paths: dict, before: str = "") -> str:
    """``{lo: (hi, way)}`` as ranges of consecutive buckets with the same way: ``"64-1024 masked; 1024-4160 split"``,
    merged with an earlier record of the same batch."""
    spans = [tuple(int(x) for x in part.split()[0].split("-")) + (part.split()[1],)
             for part in before.split("; ") if part]
    spans += [(lo, hi, way) for lo, (hi, way) in paths.items()]
    merged: list[list] = []
    for lo, hi, way in sorted(set(spans)):
        if merged and merged[-1][2] == way and merged[-1][1] >= lo:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi, way])
    return "; ".join(f"{lo}-{hi} {way}" for lo, hi, way in merged)


# ----- weights and wave state -------------------------------------------------------------------------------
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


@dataclass
class _WaveState:
    """Device buffers of one batch size, reused by every wave of that batch until a longer one is needed.

    ``cache`` (L, 2, B, S, K, h); ``tok`` (B,) the token fed next; ``pos`` (1,) its position; ``out`` (B, S + 1)
    the token of every position; ``alibi`` (1, K, G, S) the ALiBi bias of every key position (ALiBi models);
    ``graphs`` bucket start -> CUDA graph; ``paths`` bucket start -> the way attention runs in it.
    """

    batch: int
    cache_len: int
    cache: Any
    tok: Any
    pos: Any
    out: Any
    key_idx: Any
    used: Any = None
    cu_q: Any = None
    cu_k: Any = None
    pool: Any = None
    alibi: Any = None
    graphs: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    prefill_shapes: set = field(default_factory=set)
    logits: Any = None

    @property
    def nbytes(self) -> int:
        return int(self.cache.nbytes + self.out.nbytes)


@dataclass
class Preparation:
    """What :meth:`LeanEngine.prepare` did.

    Attributes:
        graphs_captured: CUDA graphs captured now (one per bucket not captured before).
        graphs_total: Graphs held for this batch.
        paths: Bucket start -> attention way, for the buckets of the request.
        seconds: Wall time (seconds).
    """

    graphs_captured: int
    graphs_total: int
    paths: dict
    seconds: float


class LeanEngine:
    """A gpt-fast-style engine for identical-length greedy generation (llama, mistral, qwen2, granite, Gemma, Gemma 2,
    OPT, Falcon, GPT-NeoX, StarCoder2).

    Args:
        model: Shipped architecture name (``"Llama-3.2-1B"``), a ``config.json`` path, a local checkpoint
            directory (config plus ``*.safetensors``/``*.bin``), or a Hugging Face configuration dict.
        device: ``"cuda"`` (default when available) or ``"cpu"`` (tests only).
        weights: ``"dummy"`` (random) or ``"checkpoint"``; inferred from ``model`` when None.
        dtype: Torch dtype name; defaults to the configuration's.
        max_batch: Largest batch (requests; the study's engines used 1024).
        cuda_graphs: True (default), ``"auto"`` (the same) or False (eager decode); off on the CPU.
        decode_attention: ``"auto"``, ``"masked"``, ``"split"``, ``"varlen"`` or ``"triton"`` (module docstring).
        bucket_min: Narrowest decode-graph bucket (tokens).
        bucket_max: Widest decode-graph bucket (tokens).
        compile: Wrap the dense blocks of a decode step in ``torch.compile``: True, False, or ``"auto"`` (the
            default: on CUDA when Triton, inductor's code generator, is importable; off on the CPU).
        compile_prefill: Wrap the prefill's dense blocks in ``torch.compile`` too (one compilation per chunk shape,
            made by :meth:`prepare` before any measured window): True, False, or ``"auto"`` (as ``compile``).
        compile_mode: The ``torch.compile`` mode (``"default"``: fused elementwise kernels around cuBLAS
            products; ``"max-autotune-no-cudagraphs"`` also times matmul kernels, minutes per batch size).
        compile_mode_small: The mode of decode steps at batches up to ``small_batch`` (default
            ``"max-autotune-no-cudagraphs"``: at batch 1 the step is a chain of matrix-vector products, and timing
            Triton's kernels for them, about 20 s per batch size on an H200, made it 15% faster there,
            ``benchmarks/results/h200/batch1_modes.json``); None: ``compile_mode`` at every batch.
        small_batch: Largest batch that uses ``compile_mode_small`` (requests; 0: none).
        memory_fraction: Share of free device memory the KV cache and activations may take.
        prefill_tokens: Tokens per prefill chunk (whole requests per chunk).
        min_positions: Accepted for the ``hf`` engine's interface; unused (no learned positions here).
        require_prepared: Raise in :meth:`generate` when its shapes were not prepared (rather than preparing
            them before the start clock).
        seed: Seed of the random weights and prompts.
        weight_init: Distribution of the dummy weights' matrices
            (:func:`energybook.measure.protocol.parse_weight_init`; default normal, std 0.02).
        prompts: ``"random"`` token ids, or one id ``"repeated"``.
        state_dict: Weights in transformers' names (``model.layers.0.self_attn.q_proj.weight``...), re-packed
            into fused tensors; sets ``weights="hf_model"``.

    Raises:
        EngineUnavailable: for a family or feature this engine does not implement (use ``--engine hf``), or
            when PyTorch or the CUDA device is missing.
        ValueError: for an unknown model or bad parameters.
    """

    def __init__(self, model: str | Path | dict, device: str | None = None, weights: str | None = None,
                 dtype: str | None = None, max_batch: int = 1024, cuda_graphs: bool | str = True,
                 decode_attention: str = "auto", bucket_min: int = 32, bucket_max: int = 256,
                 compile: bool | str = "auto", compile_mode: str = "default", compile_prefill: bool | str = "auto",
                 compile_mode_small: str | None = "max-autotune-no-cudagraphs", small_batch: int = 8,
                 memory_fraction: float = 0.92, prefill_tokens: int = 16384, min_positions: int | None = None,
                 require_prepared: bool = False, seed: int = 0, state_dict: dict | None = None,
                 weight_init: str = "normal:0.02", prompts: str = "random"):
        torch = _torch()
        from energybook.model import architecture as A

        check_positive(max_batch=max_batch, prefill_tokens=prefill_tokens)
        bucket_edges(1, bucket_min, bucket_max)  # checks the bucket widths
        if decode_attention not in ("auto", *DECODE_ATTENTION):
            raise ValueError(f"decode_attention must be 'auto' or one of {DECODE_ATTENTION}, got {decode_attention!r}")
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be True, False or 'auto', got {cuda_graphs!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable("no CUDA device is visible to PyTorch: the lean engine measures on an NVIDIA "
                                    "GPU (device='cpu' is for tests only)")
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        t0 = time.perf_counter()
        checkpoint = None
        if isinstance(model, dict):
            cfg = dict(model)
            self.name = str(cfg.get("_name_or_path") or cfg.get("model_type") or "model").split("/")[-1]
        else:
            path = Path(str(model))
            if path.is_dir() or path.suffix == ".json":
                cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text())
                self.name = path.name if path.is_dir() else path.stem
                if path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
                    checkpoint = path
            else:
                cfg = A.hf_config(str(model))  # raises ValueError naming the shipped models
                self.name = str(model)
        self.arch = A.Architecture.from_hf_config(cfg, name=self.name)
        self.config = read_config(self.arch, cfg)
        if state_dict is not None:
            self.weights = "hf_model"
        else:
            self.weights = weights or ("checkpoint" if checkpoint is not None else "dummy")
        if self.weights not in ("dummy", "checkpoint", "hf_model"):
            raise ValueError(f"weights must be 'dummy' or 'checkpoint', got {weights!r}")
        if self.weights == "checkpoint" and checkpoint is None:
            raise ValueError(f"weights='checkpoint' needs a checkpoint directory, got {model!r}")
        self.dtype = getattr(torch, dtype or self.arch.dtype)
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs
        self.decode_attention = decode_attention
        self.bucket_min, self.bucket_max = bucket_min, bucket_max
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
        if compile == "auto":
            from energybook.measure import triton_decode

            compile = self.device.type == "cuda" and triton_decode.available()
        self.compile = bool(compile)
        if compile_prefill not in (True, False, "auto"):
            raise ValueError(f"compile_prefill must be True, False or 'auto', got {compile_prefill!r}")
        self.compile_prefill = self.compile if compile_prefill == "auto" else bool(compile_prefill)
        self.compile_mode = compile_mode
        if isinstance(small_batch, bool) or not isinstance(small_batch, int) or small_batch < 0:
            raise ValueError(f"small_batch must be a whole number >= 0 (requests), got {small_batch!r}")
        self.compile_mode_small, self.small_batch = compile_mode_small, small_batch
        self.memory_fraction = memory_fraction
        self.prefill_tokens = prefill_tokens
        self.require_prepared = require_prepared
        self.seed = seed
        from energybook.measure.protocol import check_dummy_data

        check_dummy_data(weight_init, prompts)
        self.weight_init, self.prompts = weight_init, prompts
        self.vocab = self.arch.vocab_size
        self.max_positions = self.arch.max_position_embeddings
        self.last_tokens = None
        self._wave: _WaveState | None = None
        self._graphs_here = self.device.type == "cuda"  # (the tests' stand-in graphs set it on the CPU)
        self._rope_len = 0
        if state_dict is not None:
            self._pack(state_dict)
        elif self.weights == "checkpoint":
            self._load_checkpoint(checkpoint)
        else:
            self._init_dummy()
        self._grow_rope(min(self.max_positions, 8192) + 1)
        self.alibi = alibi_slopes(self.arch.num_heads).to(self.device) if self.config.positions == "alibi" else None
        self.windows = self.config.windows
        self._embed_scale = torch.tensor(self.config.embedding_multiplier, dtype=self.dtype, device=self.device)
        self._flex, self._block_masks = None, {}  # FlexAttention (compiled on CUDA) and its masks per (n, window)
        self._probe = False  # graphs copy their logits into the wave state (greedy_logits(graphs=True) only)
        self._fns = {False: (_qkv_kv, _block_out, _head_argmax, _tail_merge)}  # decode's blocks; True: small batches
        self._fns[True] = self._fns[False]
        self._prefill_fns = (_qkv, _block_out, _head)
        if self.compile or self.compile_prefill:
            self._compile()
        self.paths_available = self._check_paths()
        self.prefill_gqa = self._check_prefill_gqa()
        self.settings = self._describe(time.perf_counter() - t0)

    # ----- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_hf_model(cls, model, **kwargs) -> LeanEngine:
        """The engine with the weights of a transformers ``*ForCausalLM`` model, re-packed into fused tensors.

        Args:
            model: A transformers model of a family in :data:`FAMILIES`.
            **kwargs: Other constructor arguments (``device``, ``bucket_min``...); ``dtype`` defaults to the
                model's.
        """
        cfg = model.config.to_dict()
        kwargs.setdefault("dtype", str(next(model.parameters()).dtype).replace("torch.", ""))
        return cls(cfg, state_dict=model.state_dict(), **kwargs)

    def _new(self, *shape, fill: float | None = None):
        torch = self.torch
        t = torch.empty(*shape, dtype=self.dtype, device=self.device)
        if fill is None:
            from energybook.measure.torch_engine import init_dummy_

            return init_dummy_(t, self.weight_init, self._gen)
        return t.fill_(fill)

    def _init_dummy(self) -> None:
        """Random weights as the ``hf`` engine draws them: normal, std 0.02; norm weights 1; seeded."""
        a = self.arch
        self._gen = self.torch.Generator(device=self.device).manual_seed(self.seed)
        c = self.config
        d, qkv, i = a.hidden_size, a.q_width + 2 * a.kv_width, a.intermediate_size
        i13 = 2 * i if c.gated else i
        self.embed = self._new(a.vocab_size, d)
        if c.positions == "learned":  # dummy weights: a table long enough for the study's grid
            self.pos_embed = self._new(max(self.max_positions, 8192) + c.position_offset, d)

        def norm_b():
            return self._new(d, fill=0.0) if c.layer_norm else None

        def norm_w():  # Gemma's (1 + weight) in float32, with weight 0
            return self._norm_weight(self.torch.zeros(d)) if c.norm_offset else self._new(d, fill=1.0)

        self.layers = []
        for _ in range(a.num_layers):
            layer = Layer(
                attn_norm=norm_w(), wqkv=self._new(qkv, d), bqkv=self._new(qkv) if a.qkv_bias else None,
                wo=self._new(d, a.q_width), bo=self._new(d) if a.o_bias else None, ffn_norm=norm_w(),
                w13=self._new(i13, d), b13=self._new(i13) if a.mlp_bias else None, w2=self._new(d, i),
                b2=self._new(d) if a.mlp_bias else None, attn_norm_b=norm_b(), ffn_norm_b=norm_b(),
                post_attn_norm=norm_w() if c.sandwich else None, post_ffn_norm=norm_w() if c.sandwich else None)
            if a.norms_per_layer == 1:  # Falcon's one LayerNorm before parallel attention and MLP
                layer.ffn_norm, layer.ffn_norm_b = layer.attn_norm, layer.attn_norm_b
            self.layers.append(layer)
        self.norm = norm_w()
        self.norm_b = norm_b()
        self.lm_head = self.embed if a.tie_word_embeddings else self._new(a.vocab_size, d)
        del self._gen

    def _norm_weight(self, w):
        """A norm's weight as the engine stores it: Gemma's ``1 + weight`` in float32 on the device; else as is."""
        if self.config.norm_offset:
            return (1.0 + w.detach().float()).to(self.device).contiguous()
        return w.detach().to(device=self.device, dtype=self.dtype).contiguous()

    def _load_checkpoint(self, path: Path) -> None:
        """Real weights: transformers reads the checkpoint on the CPU; the engine re-packs and moves them."""
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as exc:  # pragma: no cover
            raise EngineUnavailable('loading a checkpoint needs transformers: pip install -e ".[gpu]" in a '
                                    'checkout of energybook') from exc
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        self._pack(model.state_dict())
        del model

    def _pack(self, sd: dict) -> None:
        """Fuse transformers' separate q/k/v and gate/up tensors; move everything to the device."""
        torch = self.torch
        a = self.arch
        if a.model_type == "opt":
            return self._pack_opt(sd)
        if self.config.qkv_layout != "separate":
            return self._pack_fused(sd)
        self.norm_b = None
        prefix = "model." if any(k.startswith("model.") for k in sd) else ""

        def get(name, required=True):
            t = sd.get(prefix + name)
            if t is None and required:
                raise ValueError(f"{self.name}: the weights lack {prefix + name!r}")
            return None if t is None else t.detach()

        def put(*parts):
            if parts[0] is None:
                return None
            return torch.cat(parts, dim=0).to(device=self.device, dtype=self.dtype).contiguous()

        sandwich = self.config.sandwich  # Gemma 2: post_attention_layernorm is the attention branch's own norm
        layer_norm = self.config.layer_norm  # StarCoder2: LayerNorms with biases

        def norm(name):
            return self._norm_weight(get(name))

        def norm_b(name):
            return put(get(name.replace(".weight", ".bias"))) if layer_norm else None

        # the FFN's products: gate and up (fused), down; StarCoder2's plain FFN: c_fc, c_proj
        ups, down = (("gate_proj", "up_proj"), "down_proj") if self.config.gated else (("c_fc",), "c_proj")
        self.embed = put(get("embed_tokens.weight"))
        self.layers = []
        phi3 = a.model_type == "phi3"  # Phi-3: transformers' weights are fused already (q, k, v; gate, up)
        if phi3:
            ups = ("gate_up_proj",)
        for n in range(a.num_layers):
            p = f"layers.{n}."
            qkv = ((get(p + "self_attn.qkv_proj.weight"),) if phi3 else
                   tuple(get(p + f"self_attn.{x}_proj.weight") for x in "qkv"))
            bias = [get(p + f"self_attn.{x}_proj.bias", a.qkv_bias) for x in (("qkv",) if phi3 else "qkv")]
            ffn_norm = p + ("pre_feedforward_layernorm.weight" if sandwich else "post_attention_layernorm.weight")
            self.layers.append(Layer(
                attn_norm=norm(p + "input_layernorm.weight"), attn_norm_b=norm_b(p + "input_layernorm.weight"),
                wqkv=put(*qkv), bqkv=put(*bias) if a.qkv_bias else None,
                wo=put(get(p + "self_attn.o_proj.weight")),
                bo=put(get(p + "self_attn.o_proj.bias")) if a.o_bias else None,
                ffn_norm=norm(ffn_norm), ffn_norm_b=norm_b(ffn_norm),
                w13=put(*(get(p + f"mlp.{x}.weight") for x in ups)),
                b13=put(*(get(p + f"mlp.{x}.bias") for x in ups)) if a.mlp_bias else None,
                w2=put(get(p + f"mlp.{down}.weight")),
                b2=put(get(p + f"mlp.{down}.bias")) if a.mlp_bias else None,
                post_attn_norm=norm(p + "post_attention_layernorm.weight") if sandwich else None,
                post_ffn_norm=norm(p + "post_feedforward_layernorm.weight") if sandwich else None))
        self.norm = norm("norm.weight")
        self.norm_b = norm_b("norm.weight")
        head = sd.get("lm_head.weight")
        self.lm_head = self.embed if a.tie_word_embeddings or head is None else put(head.detach())

    def _pack_fused(self, sd: dict) -> None:
        """Weights with one fused QKV matrix per layer (Falcon's ``transformer.*``, GPT-NeoX's ``gpt_neox.*``),
        re-packed as all queries, then all keys, then all values (:data:`QKV_LAYOUTS`); Falcon's single-norm
        layouts hold their one LayerNorm as both of the engine's."""
        a, c = self.arch, self.config
        if a.model_type == "gpt_neox":
            prefixes, embed, layers, attn = ("gpt_neox.", ""), "embed_in", "layers", "attention"
            final = "final_layer_norm"
            norms = ("input_layernorm", "post_attention_layernorm")
        else:
            prefixes, embed, layers, attn = ("transformer.", ""), "word_embeddings", "h", "self_attention"
            final = "ln_f"
            norms = (("input_layernorm",) * 2 if a.norms_per_layer == 1 else ("ln_attn", "ln_mlp") if c.parallel
                     else ("input_layernorm", "post_attention_layernorm"))
        prefix = next((p for p in prefixes if p + embed + ".weight" in sd), None)
        if prefix is None:
            raise ValueError(f"{self.name}: the weights lack {prefixes[0] + embed + '.weight'!r}")

        def get(name, required=True):
            t = sd.get(prefix + name)
            if t is None and required:
                raise ValueError(f"{self.name}: the weights lack {prefix + name!r}")
            return None if t is None else t.detach()

        def put(t):
            return None if t is None else t.to(device=self.device, dtype=self.dtype).contiguous()

        heads, kv, h = a.num_heads, a.num_kv_heads, a.head_dim

        def unfuse(t):  # transformers' fused rows -> (H * h + 2 * K * h, ...) as q, k, v
            if t is None or c.qkv_layout == "stacked":
                return t
            if c.qkv_layout == "per_head":  # (H, 3, h): q, k, v of each head
                return t.reshape(heads, 3, h, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
            g = t.reshape(kv, heads // kv + 2, h, *t.shape[1:])  # per KV head: its G queries, its key, its value
            return self.torch.cat([g[:, :-2].reshape(heads * h, *t.shape[1:]),
                                   g[:, -2].reshape(kv * h, *t.shape[1:]), g[:, -1].reshape(kv * h, *t.shape[1:])])

        self.embed = put(get(embed + ".weight"))
        self.layers = []
        for n in range(a.num_layers):
            p = f"{layers}.{n}."
            att = f"{p}{attn}."
            self.layers.append(Layer(
                attn_norm=put(get(p + norms[0] + ".weight")), attn_norm_b=put(get(p + norms[0] + ".bias")),
                wqkv=put(unfuse(get(att + "query_key_value.weight"))),
                bqkv=put(unfuse(get(att + "query_key_value.bias", a.qkv_bias))) if a.qkv_bias else None,
                wo=put(get(att + "dense.weight")), bo=put(get(att + "dense.bias")) if a.o_bias else None,
                ffn_norm=put(get(p + norms[1] + ".weight")), ffn_norm_b=put(get(p + norms[1] + ".bias")),
                w13=put(get(p + "mlp.dense_h_to_4h.weight")),
                b13=put(get(p + "mlp.dense_h_to_4h.bias")) if a.mlp_bias else None,
                w2=put(get(p + "mlp.dense_4h_to_h.weight")),
                b2=put(get(p + "mlp.dense_4h_to_h.bias")) if a.mlp_bias else None))
        self.norm, self.norm_b = put(get(final + ".weight")), put(get(final + ".bias"))
        head = sd.get("lm_head.weight", sd.get("embed_out.weight"))  # GPT-NeoX's checkpoints name it embed_out
        self.lm_head = self.embed if a.tie_word_embeddings or head is None else put(head.detach())

    def _pack_opt(self, sd: dict) -> None:
        """OPT's weights (``model.decoder.*``): fused q/k/v, fc1 and fc2, LayerNorms with biases, positions."""
        torch = self.torch
        a = self.arch
        prefix = next((p for p in ("model.decoder.", "decoder.", "") if p + "embed_tokens.weight" in sd), None)
        if prefix is None:
            raise ValueError(f"{self.name}: the weights lack 'model.decoder.embed_tokens.weight'")

        def get(name):
            t = sd.get(prefix + name)
            if t is None:
                raise ValueError(f"{self.name}: the weights lack {prefix + name!r}")
            return t.detach()

        def put(*parts):
            return torch.cat(parts, dim=0).to(device=self.device, dtype=self.dtype).contiguous()

        self.embed = put(get("embed_tokens.weight"))
        self.pos_embed = put(get("embed_positions.weight"))
        self.layers = []
        for n in range(a.num_layers):
            p = f"layers.{n}."
            att = p + "self_attn."
            self.layers.append(Layer(
                attn_norm=put(get(p + "self_attn_layer_norm.weight")),
                attn_norm_b=put(get(p + "self_attn_layer_norm.bias")),
                wqkv=put(*(get(att + f"{x}_proj.weight") for x in "qkv")),
                bqkv=put(*(get(att + f"{x}_proj.bias") for x in "qkv")),
                wo=put(get(att + "out_proj.weight")), bo=put(get(att + "out_proj.bias")),
                ffn_norm=put(get(p + "final_layer_norm.weight")), ffn_norm_b=put(get(p + "final_layer_norm.bias")),
                w13=put(get(p + "fc1.weight")), b13=put(get(p + "fc1.bias")),
                w2=put(get(p + "fc2.weight")), b2=put(get(p + "fc2.bias"))))
        self.norm = put(get("final_layer_norm.weight"))
        self.norm_b = put(get("final_layer_norm.bias"))
        head = sd.get("lm_head.weight")
        self.lm_head = self.embed if a.tie_word_embeddings or head is None else put(head.detach())

    def _grow_rope(self, length: int) -> None:
        """Cos/sin tables (positions, h) in the model's dtype, cast from float32 as transformers does."""
        if length <= self._rope_len:
            return
        if self.config.positions != "rope":
            self.cos = self.sin = None
            self._rope_len = length
            return
        torch = self.torch
        inv = inv_freq(self.config.rotary_dim or self.arch.head_dim, self.config).to(self.device)
        freqs = torch.outer(torch.arange(length, device=self.device).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        self._rope_len = length

    def _compile(self) -> None:
        torch = self.torch
        import torch._dynamo.config as dynamo_config

        # One compilation per batch size and block; a sweep meets more batch sizes than dynamo's default limit.
        for key in ("recompile_limit", "cache_size_limit"):
            if getattr(dynamo_config, key, 64) < 64:
                setattr(dynamo_config, key, 64)
        kw = dict(mode=self.compile_mode, dynamic=False, fullgraph=True)
        decode = (_qkv_kv, _block_out, _head_argmax, _tail_merge)
        if self.compile:
            self._fns[False] = tuple(torch.compile(f, **kw) for f in decode)
            self._fns[True] = self._fns[False]
            if self.small_batch and self.compile_mode_small not in (None, self.compile_mode):
                # Their own compiled objects, so the two modes never share (or evict) a compilation.
                small = tuple(torch.compile(f, **dict(kw, mode=self.compile_mode_small)) for f in decode[:3])
                # The split way's tail stays in compile_mode: it is compiled per bucket width, and timing kernels
                # for each would cost minutes for a way that auto rarely picks at small batches.
                self._fns[True] = small + self._fns[False][3:]
        if self.compile_prefill:  # their own compiled objects: the prefill's shapes do not use up the decode's limit
            self._prefill_fns = tuple(torch.compile(f, **kw) for f in (_qkv, _block_out, _head))

    def _check_paths(self) -> tuple[str, ...]:
        """The decode attention ways that match eager attention here (CUDA: checked on random tensors)."""
        alibi = self.config.positions == "alibi"  # flash's prefix and varlen kernels take no bias
        cap = self.config.attn_softcap  # ... and no soft-capping
        if self.device.type != "cuda":
            return ("masked",) if alibi or cap else ("masked", "split")
        torch = self.torch
        ok = ["masked"]
        g = torch.Generator(device=self.device).manual_seed(0)
        # The model's own head counts and width: a kernel's tiles (and its shared memory) follow them.
        b, h, s, live = 3, self.arch.head_dim, 512, 300
        k, groups = self.arch.num_kv_heads, self.arch.num_heads // self.arch.num_kv_heads

        def r(*shape):
            return torch.randn(*shape, device=self.device, dtype=self.dtype, generator=g)

        # q as the step makes it: the query heads sliced out of the rotary output (B, H + K, h), then folded.
        q = r(b, k * groups + k, h)[:, : k * groups].reshape(b, k, groups, h)
        kc, vc = r(b, s, k, h), r(b, s, k, h)
        scale = self.config.attention_scale
        bias = self._alibi_bias(torch.arange(s, device=self.device)) if alibi else None
        ref = softcapped_attention(q.float(), kc[:, :live].transpose(1, 2).float(),
                                   vc[:, :live].transpose(1, 2).float(),
                                   None if bias is None else bias[..., :live].float(), scale, cap)
        pos = torch.full((1,), live - 1, dtype=torch.long, device=self.device)
        state = _WaveState(b, s, None, None, pos, torch.zeros(1), torch.arange(s, device=self.device),
                           used=torch.empty(b, dtype=torch.int32, device=self.device),
                           cu_q=torch.arange(b + 1, dtype=torch.int32, device=self.device),
                           cu_k=torch.arange(b + 1, dtype=torch.int32, device=self.device) * s, alibi=bias)
        from energybook.measure import triton_decode

        for path in (("triton",) if alibi or cap else ("split", "varlen", "triton")):
            if path == "triton" and not triton_decode.available():
                logger.info("triton decode attention unavailable here (no Triton): not used")
                continue
            try:
                ctx = self._attention_context(state, path, 256, 320)
                got = self._attend(path, q, kc, vc, ctx, 256)
                err = float((got.float() - ref).norm() / ref.norm())
                if path == "triton":  # also unsplit: another kernel specialisation, as at large batches
                    got = self._attend(path, q, kc, vc, ctx[:3] + ((1, 320),), 256)
                    err = max(err, float((got.float() - ref).norm() / ref.norm()))
                if err < 2e-2:
                    ok.append(path)
                else:
                    logger.warning("%s decode attention disagrees with SDPA here (rel. error %.3g): not used", path,
                                   err)
            except Exception as exc:  # noqa: BLE001 - a kernel this build lacks
                logger.warning("%s decode attention unavailable here (%s): not used", path, exc)
        return tuple(ok)

    def _check_prefill_gqa(self) -> str:
        """``"enable_gqa"`` when causal SDPA runs flash with grouped KV heads here, else ``"repeat"``."""
        torch = self.torch
        if not self.arch.is_gqa:
            return "none (multi-head)"
        if self.device.type != "cuda":
            return "enable_gqa"
        from torch.nn.attention import SDPBackend, sdpa_kernel

        a = self.arch
        q = torch.zeros(1, a.num_heads, 128, a.head_dim, device=self.device, dtype=self.dtype)
        k = torch.zeros(1, a.num_kv_heads, 128, a.head_dim, device=self.device, dtype=self.dtype)
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
            return "enable_gqa"
        except (RuntimeError, TypeError) as exc:
            logger.warning("flash attention refuses enable_gqa here (%s): prefill repeats the KV heads", exc)
            return "repeat"

    def _describe(self, build_s: float) -> dict:
        a = self.arch
        return {
            "engine": "lean", "model_impl": "energybook.measure.lean_engine: fused QKV and gate/up weights",
            "attention_path": ("prefill: causal SDPA (flash on Hopper) over the chunk's own K/V; decode: query heads "
                               "folded per KV head (B, K, G, h); eager decode: SDPA over exactly the live context; "
                               "graphs: per bucket, " + self.decode_attention),
            "prefill_gqa": self.prefill_gqa, "decode_attention": self.decode_attention,
            "decode_attention_available": list(self.paths_available), "decode_attention_chosen": {},
            "graphs": str(self.cuda_graphs), "graph_buckets": (f"per (batch, bucket); buckets {self.bucket_min} tokens "
                                                               f"wide, then context/16, at most {self.bucket_max}"),
            "bucket_min": self.bucket_min, "bucket_max": self.bucket_max,
            "compile": self.compile, "compile_prefill": self.compile_prefill,
            "compile_mode": self.compile_mode if self.compile or self.compile_prefill else None,
            "compile_mode_small": (f"{self.compile_mode_small} at batches <= {self.small_batch}"
                                   if self.compile and self.small_batch and self.compile_mode_small else None),
            "kv_cache": "one (L, 2, B, S, K, h) tensor per batch, S a bucket edge >= n_in + n_out - 1, zeroed once, "
                        "written in place",
            "greedy": "argmax on device, EOS ignored", "lm_head": "last position only, (rows, d) products"
            + ("; argmax of raw logits (logits_scaling is monotone)" if self.config.logits_scaling != 1.0 else ""),
            "config": self.config.to_dict(), "family": a.model_type, "max_positions": self.max_positions,
            "dtype": str(self.dtype).replace("torch.", ""), "weights": self.weights, "seed": self.seed,
            "weight_init": self.weight_init if self.weights == "dummy" else None, "prompts": self.prompts,
            "max_batch": self.max_batch, "memory_fraction": self.memory_fraction,
            "prefill_tokens": self.prefill_tokens, "device": str(self.device), "build_s": round(build_s, 2),
        }

    # ----- lengths and sizes ------------------------------------------------------------------------------
    def check_lengths(self, n_in: int, n_out: int) -> None:
        """Refuse a request longer than the positions the model serves (sliding windows are applied, not refused).

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request.

        Raises:
            ValueError: when ``n_in + n_out`` exceeds ``max_position_embeddings`` with checkpoint weights (dummy
                weights serve longer contexts with a warning, recorded in :attr:`settings` as
                ``positions_beyond_declared``, as the ``hf`` engine does: rotary positions are computed), or
                beyond the learned positions of OPT's weights.
        """
        check_positive(n_in=n_in, n_out=n_out)
        table = getattr(self, "pos_embed", None)
        if table is not None and n_in + n_out > table.shape[0] - self.config.position_offset:
            raise ValueError(f"{self.name}: n_in + n_out = {n_in + n_out} tokens exceeds the "
                             f"{table.shape[0] - self.config.position_offset} learned positions of its weights; use "
                             "shorter lengths")
        if n_in + n_out <= self.max_positions:
            return
        if self.weights == "dummy":
            declared = self.settings.get("positions_beyond_declared", [self.max_positions, 0])
            self.settings["positions_beyond_declared"] = [declared[0], max(declared[1], n_in + n_out)]
            logger.warning("%s declares %d positions; dummy weights with rotary positions serve %d (recorded in the "
                           "provenance as positions_beyond_declared)", self.name, self.max_positions, n_in + n_out)
            return
        raise ValueError(f"{self.name}: n_in + n_out = {n_in} + {n_out} = {n_in + n_out} tokens exceeds the "
                         f"{self.max_positions} positions the model serves (its max_position_embeddings); use "
                         "shorter lengths")

    def edges(self, limit: int) -> list[int]:
        """Bucket edges covering ``limit`` keys (:func:`bucket_edges` with this engine's widths)."""
        return bucket_edges(limit, self.bucket_min, self.bucket_max)

    def cache_len(self, n_in: int, n_out: int) -> int:
        """Preallocated cache length for one wave (tokens): the bucket edge at or above n_in + n_out - 1 keys."""
        return self.edges(n_in + n_out - 1)[-1]

    def batch_limit(self, n_in: int, n_out: int) -> int:
        """Largest batch whose KV cache and activations fit in free device memory (requests).

        Memory held by this engine's current wave state counts as free (it is released for a new batch).
        """
        check_positive(n_in=n_in, n_out=n_out)
        if self.device.type != "cuda":
            return self.max_batch
        torch = self.torch
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        free += self._wave.nbytes if self._wave is not None else 0
        a = self.arch
        size = self.dtype.itemsize
        cache_len = self.cache_len(n_in, n_out)
        per_request = a.kv_elements_per_token * size * cache_len + (cache_len + 1) * 8
        per_request += self.vocab * (2 * size + 8) + (3 * a.intermediate_size + 8 * a.hidden_size) * 4  # decode
        rows = max(1, min(self.max_batch, self.prefill_tokens // n_in))
        chunk = rows * n_in
        fixed = (chunk * (3 * a.intermediate_size + 2 * a.q_width + 2 * a.kv_width + 6 * a.hidden_size) * size
                 + rows * self.vocab * 4 * size + (1 << 30))
        usable = free * self.memory_fraction - fixed
        return max(0, min(self.max_batch, int(usable // per_request)))

    def use_graphs(self, batch: int) -> bool:
        """Whether decode at this batch runs through CUDA graphs (always on CUDA unless turned off)."""
        return self._graphs_here and bool(self.cuda_graphs)

    # ----- wave state, buckets, preparation ---------------------------------------------------------------
    def _state(self, batch: int, cache_len: int) -> _WaveState:
        """The wave state of this batch, at least ``cache_len`` long; a new one frees the old one first."""
        w = self._wave
        if w is not None and w.batch == batch and w.cache_len >= cache_len:
            return w
        self.release_wave()
        torch = self.torch
        a, dev = self.arch, self.device
        self._grow_rope(cache_len + 1)
        cache = torch.zeros(a.num_layers, 2, batch, cache_len, a.num_kv_heads, a.head_dim, dtype=self.dtype,
                            device=dev)
        w = _WaveState(batch, cache_len, cache, torch.zeros(batch, dtype=torch.long, device=dev),
                       torch.zeros(1, dtype=torch.long, device=dev),
                       torch.full((batch, cache_len + 1), -1, dtype=torch.long, device=dev),
                       torch.arange(cache_len, device=dev),
                       used=torch.ones(batch, dtype=torch.int32, device=dev),
                       cu_q=torch.arange(batch + 1, dtype=torch.int32, device=dev),
                       cu_k=torch.arange(batch + 1, dtype=torch.int32, device=dev) * cache_len)
        if self.config.positions == "alibi":
            w.alibi = self._alibi_bias(w.key_idx)
        if dev.type == "cuda":
            w.pool = torch.cuda.graph_pool_handle()
        self._wave = w
        return w

    def _alibi_bias(self, keys):
        """The ALiBi bias (1, K, G, n) in the model's dtype of keys at positions ``keys`` (n,), as transformers
        makes it: the slope (rounded to bfloat16) times the position, in bfloat16, then divided by sqrt(h), so that
        the attention's scale applies to it as to the logits."""
        torch = self.torch
        a = self.arch
        slopes = self.alibi.to(keys.device).to(torch.bfloat16)
        bias = (slopes[:, None] * keys[None, :]).to(self.dtype) / math.sqrt(a.head_dim)
        return bias.view(1, a.num_kv_heads, a.num_heads // a.num_kv_heads, -1)

    def release_wave(self) -> None:
        """Free the wave state: KV cache, graphs and their memory pool."""
        if self._wave is None:
            return
        self._wave.graphs.clear()
        self._wave = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def _buckets(self, n_in: int, n_out: int) -> list[tuple[int, int, int]]:
        """(lo, hi, steps) for the decode steps of a request: fed positions n_in .. n_in + n_out - 2."""
        if n_out < 2:
            return []
        first, last = n_in, n_in + n_out - 2
        edges = self.edges(last + 1)
        out = []
        j = bisect.bisect_right(edges, first) - 1
        p = first
        while p <= last:
            lo, hi = edges[j], edges[j + 1]
            steps = min(last + 1, hi) - p
            out.append((lo, hi, steps))
            p += steps
            j += 1
        return out

    def _path(self, lo: int, hi: int, w: _WaveState, tune: bool) -> str:
        """The attention way of a bucket: the configured one, or (``"auto"``) the fastest that passed the checks."""
        windowed = self._binding(hi) != {None}  # a sliding window binds somewhere in this bucket
        if self.decode_attention != "auto":
            if self.decode_attention not in self.paths_available:
                raise EngineUnavailable(f"decode_attention={self.decode_attention!r} is not available here "
                                        f"(available: {', '.join(self.paths_available)})")
            if windowed and self.decode_attention not in WINDOWED:  # recorded in decode_attention_chosen
                return "triton" if "triton" in self.paths_available else "masked"
            return self.decode_attention if (lo or self.decode_attention != "split") else "masked"
        # ``split`` is timed only uncompiled: compiled, its merge is compiled once per bucket width, seconds each.
        candidates = [p for p in self.paths_available if (p != "split" or (lo and not self.compile))
                      and (p in WINDOWED or not windowed)]
        if not tune or len(candidates) == 1 or self.device.type != "cuda":
            return candidates[0]
        return self._tune(w, lo, hi, candidates)

    def _tune(self, w: _WaveState, lo: int, hi: int, candidates: list[str]) -> str:
        """Time one layer's attention of each candidate in a CUDA graph at this batch and bucket; the fastest."""
        torch = self.torch
        a = self.arch
        q = torch.randn(w.batch, a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_dim, device=self.device,
                        dtype=self.dtype)
        kc, vc = w.cache[0, 0], w.cache[0, 1]
        w.pos.fill_(hi - 1)
        times = {}
        for path in candidates:
            ctx = self._attention_context(w, path, lo, hi)
            fn = lambda path=path, ctx=ctx: self._attend(path, q, kc, vc, ctx, lo)  # noqa: E731
            s = self._side_stream()
            s.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(s):
                fn()
            torch.cuda.current_stream(self.device).wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            g.replay()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(5):
                g.replay()
            e1.record()
            e1.synchronize()
            times[path] = e0.elapsed_time(e1) / 5
            del g
        best = min(times, key=times.get)
        logger.debug("batch %d bucket [%d, %d): %s -> %s", w.batch, lo, hi,
                     {k: round(v * 1e3, 1) for k, v in times.items()}, best)
        return best

    def prepare(self, n_in: int, n_out: int, batch: int, cuda_graphs: bool | None = None) -> Preparation:
        """Make everything a wave of these lengths uses, before any measured window.

        Allocates the wave state (KV cache, buffers), runs the prefill once at its chunk shapes (kernel selection,
        allocator growth), compiles the decode blocks (``compile=True``), picks the attention way of every bucket
        the decode steps touch, and captures and replays one CUDA graph per bucket not captured before. The
        state and graphs are kept for the next waves of the same batch; a new batch or a longer cache frees them.

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request.
            batch: Requests in the wave.
            cuda_graphs: Override the engine's choice for decode.
        """
        t0 = time.perf_counter()
        check_positive(n_in=n_in, n_out=n_out, batch=batch)
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds max_batch {self.max_batch}")
        self.check_lengths(n_in, n_out)
        graphs = self.use_graphs(batch) if cuda_graphs is None else (bool(cuda_graphs) and self._graphs_here)
        torch = self.torch
        w = self._state(batch, self.cache_len(n_in, n_out))
        captured, paths = 0, {}
        with torch.inference_mode():
            chunk = max(1, self.prefill_tokens // n_in)
            for rows in {min(chunk, batch), batch % chunk or min(chunk, batch)}:
                if (rows, n_in) not in w.prefill_shapes:
                    self._prefill(torch.zeros(rows, n_in, dtype=torch.long, device=self.device), w, slice(0, rows))
                    w.prefill_shapes.add((rows, n_in))
            for lo, hi, _ in self._buckets(n_in, n_out):
                if lo not in w.paths:
                    w.paths[lo] = self._path(lo, hi, w, tune=graphs)
                paths[lo] = w.paths[lo]
                if graphs and lo not in w.graphs:
                    w.graphs[lo] = self._capture(w, lo, hi, w.paths[lo], warmups=1 if w.graphs else 2)
                    captured += 1
            if graphs and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        self.settings["decode_attention_chosen"][f"batch {batch}"] = _ranges(
            {lo: (hi, w.paths[lo]) for lo, hi, _ in self._buckets(n_in, n_out)},
            self.settings["decode_attention_chosen"].get(f"batch {batch}", ""))
        prep = Preparation(captured, len(w.graphs), paths, time.perf_counter() - t0)
        if captured:
            logger.info("%s: prepared (n_in %d, n_out %d, batch %d): %d graphs captured (%d held), %.1f s", self.name,
                        n_in, n_out, batch, captured, len(w.graphs), prep.seconds)
        return prep

    def _ready(self, n_in: int, n_out: int, batch: int, graphs: bool) -> bool:
        w = self._wave
        if w is None or w.batch != batch or w.cache_len < self.cache_len(n_in, n_out):
            return False
        chunk = max(1, self.prefill_tokens // n_in)
        if not all((r, n_in) in w.prefill_shapes for r in {min(chunk, batch), batch % chunk or min(chunk, batch)}):
            return False
        need = [lo for lo, _, _ in self._buckets(n_in, n_out)]
        return all(lo in w.paths and (not graphs or lo in w.graphs) for lo in need)

    def _side_stream(self):
        """The side stream of eager warm-ups before a capture (one per engine)."""
        if getattr(self, "_stream", None) is None:
            self._stream = self.torch.cuda.Stream(device=self.device)
        return self._stream

    def _capture(self, w: _WaveState, lo: int, hi: int, path: str, warmups: int):
        """The CUDA graph of one decode step of bucket [lo, hi), warmed up, captured and replayed once."""

        def body():
            self._decode_step(w, path, lo, hi)

        return self._graph(body, w.pool, warmups, reset=lambda: w.pos.fill_(lo))

    def _graph(self, body: Callable[[], None], pool, warmups: int, reset: Callable[[], Any]):
        """Run ``body`` ``warmups`` times eagerly on a side stream, capture it into a CUDA graph in ``pool``, replay
        the graph once (its first launch uploads it); ``reset`` restores the device position before each run.

        (The tests replace this method with a stand-in whose ``replay`` calls ``body``, to run the graph path's
        bookkeeping on the CPU.)
        """
        torch = self.torch
        dev = self.device
        s = self._side_stream()
        s.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(s):
            for _ in range(warmups):
                reset()
                body()
        torch.cuda.current_stream(dev).wait_stream(s)
        reset()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            body()
        reset()
        g.replay()
        return g

    # ----- forward passes ---------------------------------------------------------------------------------
    def _prefill(self, tokens, w: _WaveState, rows: slice):
        """Prefill ``tokens`` (b, n) into cache rows ``rows``; returns the raw logits of the last position (b, V)."""

        a, c = self.arch, self.config
        b, n = tokens.shape
        heads, kv = a.num_heads, a.num_kv_heads
        pre, post, final = self._prefill_fns
        x = self._embed(tokens, self.torch.arange(n, device=tokens.device))
        cos = sin = None
        if self.cos is not None:
            cos, sin = self.cos[:n].unsqueeze(1), self.sin[:n].unsqueeze(1)  # (n, 1, h)
        for n_layer, layer in enumerate(self.layers):
            q, k, v = pre(x, layer.attn_norm, layer.wqkv, layer.bqkv, cos, sin, c.rms_norm_eps, heads, kv,
                          layer.attn_norm_b, c.layer_norm)
            w.cache[n_layer, 0, rows, :n] = k
            w.cache[n_layer, 1, rows, :n] = v
            attn = self._prefill_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           self.windows[n_layer] if self.windows else None)
            x = post(x, attn.transpose(1, 2).reshape(b, n, heads * a.head_dim), layer.wo, layer.bo,
                     layer.ffn_norm, layer.w13, layer.b13, layer.w2, layer.b2, c.rms_norm_eps,
                     c.residual_multiplier, layer.ffn_norm_b, c.layer_norm, c.gated, c.act,
                     layer.post_attn_norm, layer.post_ffn_norm, c.parallel)
        return final(x[:, -1].contiguous(), self.norm, self.lm_head, c.rms_norm_eps, self.norm_b, c.layer_norm,
                     c.final_softcap)

    def _embed(self, tokens, positions):
        """Token embeddings (Granite's multiplier applied), plus the learned position embeddings where the model has
        them (``positions`` broadcast against ``tokens``' last axis: (n,) for a prompt, (1,) for a decode step)."""
        import torch.nn.functional as F

        c = self.config
        x = F.embedding(tokens, self.embed)
        if c.embedding_in_dtype:  # Gemma: sqrt(d), rounded to the model's dtype first (a device tensor made once)
            x = x * self._embed_scale
        elif c.embedding_multiplier != 1.0:
            x = x * c.embedding_multiplier
        if c.positions == "learned":
            x = x + F.embedding(positions + c.position_offset, self.pos_embed)
        return x

    def _prefill_attention(self, q, k, v, window: int | None = None):
        """Causal attention of a prompt over its own keys: q (b, H, n, h), k and v (b, K, n, h).

        Soft-capped logits (Gemma 2) or a sliding window shorter than the prompt go, on CUDA, through compiled
        FlexAttention (:meth:`_flex_prefill`: the cap as a score modification, causality and the window as a block
        mask, so that blocks wholly outside the window are skipped); on the CPU through explicit products under an
        additive (n, n) mask (:func:`~energybook.measure.torch_engine.softcapped_attention`, whose FLOPs the counter
        can read).
        """
        import torch.nn.functional as F

        scale = self.config.attention_scale
        n = q.shape[2]
        window = window if window is not None and n > window else None
        if self.config.attn_softcap is not None or window is not None:
            if self.device.type == "cuda":
                return self._flex_prefill(q, k, v, window)
            groups = q.shape[1] // k.shape[1]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            mask = causal_mask(n, n, window, q.device, q.dtype)
            return softcapped_attention(q, k, v, mask, scale, self.config.attn_softcap)
        if self.alibi is not None:  # causal mask with the ALiBi bias: (1, H, n, n), one chunk's prompts share it
            torch = self.torch
            n = q.shape[2]
            keys = torch.arange(n, device=q.device)
            bias = self._alibi_bias(keys).reshape(1, -1, 1, n)
            causal = (keys[None, :] <= keys[:, None]).view(1, 1, n, n)
            mask = torch.where(causal, bias, torch.finfo(self.dtype).min)
            groups = q.shape[1] // k.shape[1]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        groups = q.shape[1] // k.shape[1]
        if groups > 1 and self.prefill_gqa == "repeat":
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            groups = 1
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=groups > 1)

    def _binds(self, n_layer: int, hi: int) -> int | None:
        """Layer ``n_layer``'s sliding window when it can bind with up to ``hi`` live keys, else None."""
        win = self.windows[n_layer] if self.windows else None
        return win if win is not None and hi > win else None

    def _binding(self, hi: int) -> set:
        """The windows (None: full attention) that the layers attend through with up to ``hi`` live keys."""
        return {self._binds(n, hi) for n in range(len(self.windows))} if self.windows else {None}

    def _flex_prefill(self, q, k, v, window: int | None):
        """FlexAttention over one chunk: the soft-cap as ``score_mod``, causal (and windowed) ``block_mask``."""
        torch = self.torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        n = q.shape[2]
        key = (n, window)
        masks = self._block_masks
        if key not in masks:
            def causal(b, h, qi, ki):
                seen = ki <= qi
                return seen & (ki > qi - window) if window is not None else seen

            masks[key] = create_block_mask(causal, None, None, n, n, device=str(q.device))
        cap = self.config.attn_softcap

        def capped(score, b, h, qi, ki):
            return torch.tanh(score / cap) * cap

        fn = self._flex
        if fn is None:
            fn = self._flex = (torch.compile(flex_attention, dynamic=False) if self.device.type == "cuda"
                               else flex_attention)
        return fn(q, k, v, score_mod=capped if cap is not None else None, block_mask=masks[key],
                  scale=self.config.attention_scale, enable_gqa=q.shape[1] != k.shape[1])

    def _attention_context(self, w: _WaveState, path: str, lo: int, hi: int, window: int | None = None):
        """Per-step tensors one attention way needs, computed from the device position (so, inside a graph).

        ``exact``: (first key, live key count ``hi``, ALiBi bias or None); ``masked`` (and ``split``'s first
        bucket): an additive mask (1, 1, 1, hi) in the model's dtype over keys [0, hi); ``split``: a float32 bias
        (hi - lo,) over the bucket's keys [lo, hi); ``varlen``: (cu_seqlens_q, cu_seqlens_k, seqused_k, hi);
        ``triton``: (position, hi, window, splits; None: the kernel's own plan). A sliding ``window`` keeps the last
        ``window`` live keys (``exact``, ``masked``, ``triton``; the other ways are not chosen where a window binds).
        """
        torch = self.torch
        if path == "exact":
            start = max(0, hi - window) if window else 0
            return (start, hi, None if w.alibi is None else w.alibi[..., start:hi])
        if path == "triton":
            return (w.pos, hi, window, None)
        if window is not None and path not in WINDOWED:
            raise ValueError(f"decode attention {path!r} does not apply a sliding window")
        if path == "varlen":
            w.used.copy_((w.pos + 1).expand(w.used.shape[0]))
            return (w.cu_q, w.cu_k, w.used, hi)
        if path == "masked" or lo == 0:
            idx = w.key_idx[:hi]
            seen = idx <= w.pos
            if window is not None:
                seen = seen & (idx > w.pos - window)
            if w.alibi is not None:
                return torch.where(seen.view(1, 1, 1, hi), w.alibi[..., :hi], torch.finfo(self.dtype).min)
            return torch.where(seen, 0.0, torch.finfo(self.dtype).min).to(self.dtype).view(1, 1, 1, hi)
        idx = w.key_idx[lo:hi]
        return torch.where(idx <= w.pos, 0.0, torch.finfo(torch.float32).min)

    def _attend(self, path: str, q, kc, vc, ctx, lo: int = 0):
        """Decode attention of folded queries q (B, K, G, h) over one layer's cache kc, vc (B, S, K, h).

        ``path``: ``"exact"``, ``"masked"``, ``"split"`` (bucket [lo, hi)) or ``"varlen"``, with ``ctx`` from
        :meth:`_attention_context`. Returns (B, K, G, h) in the model's dtype.
        """
        import torch.nn.functional as F

        torch = self.torch
        scale, cap = self.config.attention_scale, self.config.attn_softcap
        if path == "exact":
            start, live, bias = ctx
            k, v = kc[:, start:live].transpose(1, 2), vc[:, start:live].transpose(1, 2)
            if cap is not None:
                return softcapped_attention(q, k, v, bias, scale, cap)
            return F.scaled_dot_product_attention(q, k, v, scale=scale, attn_mask=bias)
        if path == "varlen":
            cu_q, cu_k, used, hi = ctx
            b, k_heads, groups, h = q.shape
            out = torch.ops.aten._flash_attention_forward(
                q.reshape(b, k_heads * groups, h), kc.view(-1, k_heads, h), vc.view(-1, k_heads, h), cu_q, cu_k, 1,
                hi, 0.0, False, False, scale=scale, seqused_k=used)[0]
            return out.view(b, k_heads, groups, h)
        if path == "triton":
            from energybook.measure import triton_decode

            pos, hi, window, splits = ctx
            slopes = alibi_scale = None
            if self.alibi is not None:  # raw slopes; the kernel rounds the bias as transformers builds it
                slopes, alibi_scale = self.alibi.to(torch.bfloat16).float(), 1 / math.sqrt(self.arch.head_dim)
            return triton_decode.decode_attention(q, kc, vc, pos, scale, hi, alibi=slopes, softcap=cap, window=window,
                                                  alibi_scale=alibi_scale, splits=splits)
        if path == "split" and lo > 0:
            hi = lo + ctx.shape[0]
            o1, lse1 = _flash_with_lse(q, kc[:, :lo].transpose(1, 2), vc[:, :lo].transpose(1, 2), scale)
            tail = self._fns[self._small(q.shape[0])][3]
            return tail(q, kc[:, lo:hi].transpose(1, 2), vc[:, lo:hi].transpose(1, 2), ctx, o1, lse1, scale)
        hi = ctx.shape[-1]  # masked: the bucket's whole prefix under an additive mask
        if cap is not None:
            return softcapped_attention(q, kc[:, :hi].transpose(1, 2), vc[:, :hi].transpose(1, 2), ctx, scale, cap)
        return F.scaled_dot_product_attention(q, kc[:, :hi].transpose(1, 2), vc[:, :hi].transpose(1, 2),
                                              attn_mask=ctx, scale=scale)

    def _small(self, batch: int) -> bool:
        """Whether a decode step of this batch runs the small-batch compilation (``compile_mode_small``)."""
        return batch <= self.small_batch

    def _decode_step(self, w: _WaveState, path: str, lo: int, hi: int, logits_out: list | None = None):
        """One decode step of every request from the device state: feeds ``w.tok`` at ``w.pos``, writes K/V,
        attends, and stores the greedy token at ``w.out[:, pos + 1]`` and in ``w.tok``; advances ``w.pos``.

        ``path`` ``"exact"`` (eager, ``hi`` = live keys) or a graph way over bucket [lo, hi).
        """

        a, c = self.arch, self.config
        b = w.batch
        heads, kv = a.num_heads, a.num_kv_heads
        groups, h = heads // kv, a.head_dim
        pre, post, final, _ = self._fns[self._small(b)]
        x = self._embed(w.tok, w.pos)
        cos = sin = None
        if self.cos is not None:
            cos, sin = self.cos.index_select(0, w.pos).unsqueeze(0), self.sin.index_select(0, w.pos).unsqueeze(0)
        ctxs = {win: self._attention_context(w, path, lo, hi, win) for win in self._binding(hi)}
        for n_layer, layer in enumerate(self.layers):
            ctx = ctxs[self._binds(n_layer, hi)]
            q, new_kv = pre(x, layer.attn_norm, layer.wqkv, layer.bqkv, cos, sin, c.rms_norm_eps, heads, kv,
                            layer.attn_norm_b, c.layer_norm)
            w.cache[n_layer].index_copy_(2, w.pos, new_kv.unsqueeze(2))  # K and V at pos, one kernel
            kc, vc = w.cache[n_layer, 0], w.cache[n_layer, 1]
            attn = self._attend(path, q.reshape(b, kv, groups, h), kc, vc, ctx, lo)
            x = post(x, attn.reshape(b, heads * h), layer.wo, layer.bo, layer.ffn_norm, layer.w13, layer.b13,
                     layer.w2, layer.b2, c.rms_norm_eps, c.residual_multiplier, layer.ffn_norm_b, c.layer_norm,
                     c.gated, c.act, layer.post_attn_norm, layer.post_ffn_norm, c.parallel)
        logits, nxt = final(x, self.norm, self.lm_head, c.rms_norm_eps, self.norm_b, c.layer_norm, c.final_softcap)
        if logits_out is not None:
            logits_out.append(logits)
        if self._probe:
            w.logits.copy_(logits)
        w.out.index_copy_(1, w.pos + 1, nxt.unsqueeze(1))
        w.tok.copy_(nxt)
        w.pos.add_(1)

    # ----- generation -------------------------------------------------------------------------------------
    def _clock(self) -> float:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def generate(self, n_in: int, n_out: int, batch: int, checkpoints: list[int] | None = None,
                 on_checkpoint: Callable[[int, float], None] | None = None, clock: Callable[[], float] | None = None,
                 cuda_graphs: bool | None = None, return_tokens: bool = False, static: bool | None = None):
        """Generate one wave: ``batch`` requests of ``n_in`` random prompt tokens, ``n_out`` new tokens each.

        Whatever :meth:`prepare` has not made yet for these shapes is made first, before the start clock, and
        logged (or refused with ``require_prepared``); no graph is ever captured between ``times.start`` and
        ``times.end``.

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request (EOS ignored).
            batch: Requests in the wave.
            checkpoints: Output counts (tokens per request) at which to synchronise and read the clock.
            on_checkpoint: Called with (tokens per request, time) at each checkpoint.
            clock: Device-synchronised clock (defaults to ``torch.cuda.synchronize`` + ``perf_counter``).
            cuda_graphs: Override the engine's choice for decode.
            return_tokens: Keep the generated token ids (``self.last_tokens``, batch x n_out, on the CPU).
            static: Run the graphs' bucketed step eagerly (the CPU's way to test the graph path); default: as
                the graphs.

        Returns:
            A :class:`~energybook.measure.torch_engine.Wave`.

        Raises:
            ValueError: for non-positive lengths, lengths beyond :meth:`check_lengths`, a batch above
                ``max_batch`` or checkpoints outside 1..n_out.
            RuntimeError: when the generated token count differs from the one asked for, or (``require_prepared``)
                when the shapes were not prepared.
        """
        from energybook.measure.torch_engine import Wave, WaveTimes, check_wave, checkpoint_marker, random_prompts

        checkpoints = check_wave(self, n_in, n_out, batch, checkpoints)
        torch = self.torch
        clock = clock or self._clock
        marks = set(checkpoints)
        graphs = self.use_graphs(batch) if cuda_graphs is None else (bool(cuda_graphs) and self._graphs_here)
        static = graphs if static is None else bool(static)
        if not self._ready(n_in, n_out, batch, graphs):
            if self.require_prepared:
                raise RuntimeError(f"{self.name}: (n_in {n_in}, n_out {n_out}, batch {batch}) was not prepared: call "
                                   "prepare() before the measured window")
            logger.info("%s: preparing (n_in %d, n_out %d, batch %d) inside generate, before its start clock",
                        self.name, n_in, n_out, batch)
            self.prepare(n_in, n_out, batch, cuda_graphs=graphs)
        w = self._wave
        plan = self._buckets(n_in, n_out)
        dev = self.device
        prompts = random_prompts(torch, self.vocab, self.seed, n_in, batch, dev, self.prompts)
        w.out[:, n_in:n_in + n_out].fill_(-1)
        times = WaveTimes(start=0.0, prefill_end=0.0, end=0.0)
        mark = checkpoint_marker(times, marks, clock, on_checkpoint)

        with torch.inference_mode():
            times.start = clock()
            chunk = max(1, self.prefill_tokens // n_in)
            for b0 in range(0, batch, chunk):
                rows = slice(b0, min(batch, b0 + chunk))
                nxt = self._prefill(prompts[rows], w, rows).argmax(-1)
                w.tok[rows] = nxt
                w.out[rows, n_in] = nxt
            w.pos.fill_(n_in)
            times.prefill_end = clock()
            mark(1)
            i = 1
            for lo, hi, steps in plan:
                graph = w.graphs.get(lo) if graphs else None
                for _ in range(steps):
                    if graph is not None:
                        graph.replay()
                    elif static:
                        self._decode_step(w, w.paths[lo], lo, hi)
                    else:
                        self._decode_step(w, "exact", 0, n_in + i)
                    i += 1
                    mark(i)
            times.end = clock()
            tokens = w.out[:, n_in:n_in + n_out]
            missing = int((tokens < 0).sum())
        if missing:
            raise RuntimeError(f"token count check failed: {missing} of {batch * n_out} output tokens missing")
        self.last_tokens = tokens.cpu().clone() if return_tokens else None
        return Wave(batch, n_in, n_out, times, graphs)

    def greedy_logits(self, prompts, n_out: int, static: bool = False, forced=None, graphs: bool = False) -> list:
        """Logits of a greedy generation from given prompts: the prefill's last position, then every decode step.

        For comparisons with other implementations (the tests, ``benchmarks/gpu_logits.py``). Granite's
        ``logits_scaling`` is applied.

        Args:
            prompts: Token ids (batch, n_in).
            n_out: Tokens to generate (the list has n_out entries, each (batch, V), float32 on the CPU).
            static: Decode through the graphs' bucketed steps (eagerly) rather than exact-length attention.
            forced: Token ids (batch, n_out - 1 or more) fed instead of the greedy ones (teacher forcing), so that
                two implementations are scored on the same continuation.
            graphs: Decode through CUDA graphs captured for this call (their logits copied out at each step).
        """
        self.check_lengths(prompts.shape[1], n_out)
        if graphs:  # fresh graphs that also copy their logits out
            self.release_wave()
            self._probe = True
        try:
            return self._greedy_logits(prompts, n_out, static, forced, graphs)
        finally:
            if graphs:
                self._probe = False
                self.release_wave()

    def _greedy_logits(self, prompts, n_out: int, static: bool, forced, graphs: bool) -> list:
        torch = self.torch
        batch, n_in = prompts.shape
        if graphs:
            w = self._state(batch, self.cache_len(n_in, n_out))
            w.logits = torch.empty(batch, self.vocab, dtype=self.dtype, device=self.device)
        self.prepare(n_in, n_out, batch, cuda_graphs=graphs)
        w = self._wave
        scale = self.config.logits_scaling
        out = []

        def feed(i, logits):
            w.tok.copy_(logits.argmax(-1) if forced is None else forced[:, i - 1].to(self.device))

        with torch.inference_mode():
            logits = self._prefill(prompts.to(self.device), w, slice(0, batch))
            out.append(logits)
            feed(1, logits)
            w.pos.fill_(n_in)
            i = 1
            for lo, hi, steps in self._buckets(n_in, n_out):
                for _ in range(steps):
                    if graphs:
                        w.graphs[lo].replay()
                        out.append(w.logits.clone())
                    elif static:
                        self._decode_step(w, w.paths[lo], lo, hi, logits_out=out)
                    else:
                        self._decode_step(w, "exact", 0, n_in + i, logits_out=out)
                    i += 1
                    if forced is not None:
                        feed(i, out[-1])
        return [(x.float() / scale).cpu() for x in out]

    def release(self) -> None:
        """Free the wave state and the weights' device memory."""
        self.release_wave()
        self.embed = self.lm_head = self.norm = self.norm_b = self.pos_embed = None
        self.layers = []
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
