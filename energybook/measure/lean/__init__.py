"""The ``lean`` engine: a decoder written for inference after PyTorch's gpt-fast (llama, qwen2, OPT, Falcon...).

The ``hf`` engine (:mod:`energybook.measure.torch_engine`) runs stock transformers modules. This one is a
short model of its own, built from the :class:`~energybook.model.architecture.Architecture` and the Hugging
Face configuration, with nothing in the measured path that the workload does not need:

* **weights**: one fused QKV matrix and one fused gate/up matrix per layer (the products of the separate
  matrices, so :mod:`energybook.model.complexity` counts them unchanged); random (``"dummy"``: normal with
  std 0.02, norm weights 1, seeded, as the ``hf`` engine) or read from a local checkpoint folder, or re-packed
  from a transformers model (:meth:`~.engine.LeanEngine.from_hf_model`);
* **KV cache**: one tensor for all layers, (L, 2, B, S, K, h), preallocated per wave state (batch B, length S a
  bucket edge at or above ``n_in + n_out - 1``), zeroed once and written in place;
* **prefill**: chunked by requests (about ``prefill_tokens`` tokens per chunk), causal SDPA (flash on Hopper,
  grouped-query heads through ``enable_gqa``), K/V written into the cache, and the final norm and LM head on
  the last position only, as (rows, d) products;
* **decode**: one token per request and step. The query heads that share a KV head are folded into the query
  length, (B, K, G, h), so each KV head is read once; nothing is repeated. Eager decode (the CPU, or graphs
  off) attends with SDPA to exactly the live context ``cache[..., :ctx + 1, :]``;
* **CUDA graphs**: one graph per (batch, context bucket), all in one memory pool, captured and replayed once
  by :meth:`~.engine.LeanEngine.prepare` before any measured window (``generate`` prepares what is missing *before*
  its start clock, and logs it). A graph serves every step whose fed position lies in its bucket
  ``[lo, hi)``; the position lives on the device. Buckets are 32 tokens wide below 1024 keys (at most 31
  padded keys), then 1/16 of their start (64, 128, then 256 tokens from 4096 keys on: at most 1/16 of the live
  keys padded); :func:`~energybook.model.batch.bucket_edges`. Three ways to attend inside a bucket
  (``decode_attention``):

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
  is part of the warm-up); the choices are recorded in :attr:`~.engine.LeanEngine.settings`;
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
values (:data:`~.config.QKV_LAYOUTS`); a parallel block computes ``x + (ffn(norm2(x)) + attn(norm1(x)))`` in one
:func:`~.layers._block_out`. With ALiBi the bias of every key position is
built once per wave state as transformers builds it (the slope in bfloat16 times the position, divided by
sqrt(h)); decode attends through ``masked`` (SDPA with the bias as its mask) or ``triton`` (the slope in the
kernel), as flash's prefix and varlen kernels take no bias; prefill uses SDPA with a (1, H, n, n) causal mask
holding the bias (2 GiB in bf16 at n = 4096 and 64 heads).

Gemma and Gemma 2: GeGLU FFNs (tanh GELU), norms that scale by ``1 + weight`` in float32, embeddings times
sqrt(d); Gemma 2 adds a norm after each branch (four per layer), logit soft-capping in attention and on the
final logits, its own attention scale (``query_pre_attn_scalar``) and a sliding window on every other layer.

Sliding windows (Gemma 2, Mistral, Qwen2 with ``use_sliding_window``) are applied per layer
(:func:`~.config.layer_windows`): decode attends to the window's keys only (``exact`` and ``triton`` read only those,
``masked`` masks the others; the ways chosen wherever a window binds), and a prompt longer than its window, or
any prompt with soft-capped logits, attends through FlexAttention with a causal, windowed block mask and the cap
as its score modification. The KV cache keeps every position of every layer (no ring buffer for the windowed
layers), so batches are no larger than without a window. Phi-3 is llama's layout with q, k, v and gate, up
fused in transformers' weights already.

A family's weight names come from its record (:class:`~energybook.model.families.Family`), read by one
table-driven packer; a family registered with a record whose ``compute`` names its fields of
:class:`~.config.LeanConfig` runs as llama but for those fields: OLMo 2 (no norm before attention or the FFN,
an RMSNorm after each, RMSNorms over the whole query and key projections, float32 norm weights) is one.
Every other family, and every layout or feature
of these families the engine does not implement (ALiBi outside Falcon-RW's layout, partial rotary embeddings
outside GPT-NeoX and Phi-3, other activations and rotary scalings), is refused by name in the constructor with
:class:`~energybook.measure.engines.EngineUnavailable`: measure it with ``--engine hf``.

The package's other modules hold the parts: :mod:`~energybook.measure.lean.config` (what a family computes),
:mod:`~energybook.measure.lean.layers` (the pure model functions), :mod:`~energybook.measure.lean.weights` (the
packers), :mod:`~energybook.measure.lean.attention` (one class per way of attending, ``auto``'s tuner, prefill
attention) and :mod:`~energybook.measure.lean.graphs` (buckets, wave state, CUDA graphs).

Used in :doc:`/book/experiment`.
"""

from energybook.measure.lean.attention import DECODE_ATTENTION, WINDOWED
from energybook.measure.lean.config import (
    FAMILIES,
    GATED_ACTS,
    PLAIN_ACTS,
    QKV_LAYOUTS,
    ROPE_TYPES,
    LeanConfig,
    alibi_slopes,
    inv_freq,
    layer_windows,
    read_config,
)
from energybook.measure.lean.engine import LeanEngine
from energybook.measure.lean.graphs import Preparation
from energybook.measure.lean.layers import Layer
from energybook.model.batch import bucket_edges

__all__ = ["DECODE_ATTENTION", "FAMILIES", "GATED_ACTS", "PLAIN_ACTS", "QKV_LAYOUTS", "ROPE_TYPES", "WINDOWED",
           "Layer", "LeanConfig", "LeanEngine", "Preparation", "alibi_slopes", "bucket_edges", "inv_freq",
           "layer_windows", "read_config"]
