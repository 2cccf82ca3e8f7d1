"""A physical, batch-aware energy model shared across models: calibrate once per GPU and engine, predict any model.

The architecture enters only through exact counts (the same conventions as :mod:`energybook.model.complexity`,
split here into the parts that run on different hardware paths). Every forward pass ``k`` of a workload (a prefill
chunk or a decode step of one wave) has

* matmul FLOPs ``F_mm`` (projections, FFN, LM head), attention FLOPs ``F_att`` (QK^T and AV);
* weight bytes ``W`` (every weight read once per pass), KV-cache bytes ``K`` (reads of the live context and the
  new token's write; the engine's flash varlen decode reads exactly the live keys, not the 256-token bucket), and
  other per-request bytes ``O`` (logits written, embedding rows gathered);
* elementwise bytes ``A``: the traffic of the unfused elementwise kernels that transformers' eager modules run
  between the products (:func:`elementwise_bytes_per_token`: RMSNorm's float32 round trip, the rotary embedding,
  the GQA key/value ``repeat_interleave`` of the prompt, the residual adds, the FFN activation) and the argmax's
  read of the logits;
* attention blocks ``N_blk``: the thread blocks of the flash varlen decode kernel, one per request, key/value head
  and layer (the query heads of a group share their key/value head's block);
* attention pairs ``N_pair``: the (query, key) pairs of every query head and layer, counted causally in a prompt
  (``n (n + 1) / 2`` per head and layer: flash attention skips the tiles above the diagonal) and as the live keys
  in a decode step (:func:`causal_pairs`);
* graph captures ``N_cap``: 1 on the first decode step of each 256-token context bucket of a wave, where the engine
  runs the step eagerly and captures the bucket's CUDA graph, else 0.

Its time (seconds) is

    busy_k = comb(F_mm / R_mm, (W + O) / B_w) + comb(F_att / R_att + N_pair / R_pair, K / B_kv) + A / B_el
             + N_blk * t_blk
    t_k    = busy_k + t_pass + N_cap * t_cap  [overhead "add"]   or   comb(busy_k, t_pass + N_cap * t_cap)  ["overlap"]

with ``R_mm``, ``R_att`` effective throughputs (FLOP/s), ``R_pair`` the rate of the attention work done once per
(query, key) pair and head whatever the head width (pairs/s: the online softmax's exponential, on the SFUs, and its
max, scale and sum; a rough estimate of an H100's exponential rate, 132 SMs x an assumed 16 per clock, is
3.9e12/s), ``B_w``, ``B_kv``, ``B_el``
effective bandwidths (bytes/s),
``t_blk`` the fixed time of one decode attention block (seconds: its prologue and epilogue, loading the query and
writing the normalised output, and its partly filled last key tile, spread over the SMs),
``t_pass`` a fixed cost of every forward pass (seconds: the graph launch or eager dispatch, the argmax and token
copy, the many small kernels of an unfused engine whose size the counts above do not follow), ``t_cap`` the fixed
cost of one graph capture with its eager warm-up step (seconds; the GPU mostly waits on the host, so it is charged
at ``P_oh`` like ``t_pass``) and ``comb`` one of

* ``"max"``: ``max(a, b)``, the roofline of each kernel class (a kernel waits on its slower resource);
* ``"smooth"``: ``(a^p + b^p)^(1/p)`` with p = :data:`SMOOTH_P`, a roofline with a rounded corner (near the ridge
  both resources are partly busy); unlike ``max`` every parameter keeps a gradient, so the covariance exists;
* ``"sum"``: ``a + b``, no overlap of compute and memory traffic.

``t_pass`` is one constant per pass, not per decoder layer: a per-layer cost ``L * t_layer`` fitted on two models
mispredicted the third (on the H100 grids the decode step at short context is 0.48-0.99 ms per layer across
Llama-3.2-1B, OPT-1.3B and Qwen2-1.5B, so no per-layer constant transfers).

The pair term is what makes head widths agree. A flash-attention tile does ``4 d_head`` tensor-core FLOPs per pair
and head but one exponential (plus a few FP32 operations) whatever ``d_head``; the torch engine's SDPA flash kernel
(FlashAttention-2) does not overlap the two. With FLOPs alone, the prompts' attention of Llama-3.2-1B and OPT-1.3B
(``d_head`` 64) ran about 1.4x slower per FLOP than Qwen2-1.5B's (128); the fitted ``R_pair`` comes out near the SFU
rate above. It hardly matters in decode, where attention waits on the KV reads.

The energy (joules) charges the busy part of each pass at ``P_busy`` and the rest at ``P_oh``:

    E = sum_k  P_busy * busy_k + P_oh * (t_k - busy_k)

so the mean power is ``P_oh + (P_busy - P_oh) u`` with ``u`` the busy fraction of the time; both powers are bounded
by the GPU's power cap. Most of our H100 grid runs at the 700 W cap (NVML reads ~690 W), and ``P_busy`` comes out
at it.

:attr:`PassCounts.activation_bytes` (the activation tensors written between a layer's products, once each) is counted
but not in the time: as a term ``A / B_act`` it raised the leave-one-model-out error. The elementwise bytes ``A``
above replace it: they follow the kernels the modules really run (an RMSNorm moves 36 bytes per element of the
hidden state, a fused LayerNorm 4), which differ 3.7x per token between OPT-1.3B and Qwen2-1.5B; with them the
matmul rate comes out near 500 TFLOP/s for all three models, where without them OPT's prefill ran 1.3x faster
per FLOP than Llama's and Qwen2's. The decode attention blocks make the step time of MHA (OPT, 32 key/value heads)
and GQA models (8 and 2) agree: per request and layer the block count differs 16x between OPT and Qwen2 while the
bytes per key differ 8x.

``F_mm`` is the unpadded count. GEMM quantisation was tried on the H100 grids and not kept (smooth/add, mean
leave-one-model-out MAPE 5.16% with the plain count): padding each product (q, k, v, o, gate, up, down as the
unfused HF modules run them, and the LM head) to whole 128x256 output tiles, with M the tokens of the pass, gave
5.20% (128x128: 5.20%, 64x128: 5.24%, 256x128: 5.37%); charging whole waves of 132 SMs
(``ceil(tiles / 132) * 132`` tiles) gave 10.71% (7.49% with 128x128 tiles), and 6.89% when a grid of fewer than
132 tiles keeps its tile count (split-K). A wave count charges Qwen2's 8960-wide FFN 41% more than its FLOPs at
batch 1000 (Llama's 8192-wide one 3%), and the measured steps show no such step; cuBLAS picks its tile and a
split-K or stream-K schedule per shape on Hopper, so a fixed tile and wave count is the wrong model of it.

The engine's batch rule. The torch engine runs ``n_req`` requests in balanced waves (``ceil(n_req / waves)``
each, as few waves as fit) of at most ``max_batch`` requests, the limit set by the KV cache that fits in the GPU
memory left after the weights (:func:`batch_limit`, the same arithmetic as the engine's ``batch_limit``, with the
memory available ``memory_bytes`` a calibration value chosen to reproduce the measured batches). Each wave is
prefilled in chunks of at most ``prefill_tokens`` prompt tokens (:func:`energybook.model.roofline.chunk_sizes`)
and decoded ``n_out - 1`` steps.

The parameters are per GPU and engine, shared across models. :func:`calibrate` fits them with lmfit (least squares
on the log of the measured prefill and decode energies and times, each phase's residual weighted by the square
root of its share of the workload's energy or time, so that a phase worth 0.1% of a workload, such as OPT-1.3B's
84-request prefills that stall on the allocator at low power, does not set the shared parameters: unweighted, those
few prefill times made 75% of the sum of squares and held ``P_busy`` 2% below the measured ~690 W of the capped
GPU); :func:`predict` gives the energy of any
(architecture, n_in, n_out, batch or max_batch, n_req) with an interval (see :class:`Prediction`).
:func:`load_calibration` reads a stored calibration from the package data (``energybook/resources/calibration/``,
written by ``scripts/calibrate.py``).

Used in :doc:`/book/physics`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from energybook import resources
from energybook.model import complexity as C
from energybook.model.architecture import Architecture
from energybook.model.roofline import chunk_sizes, wave_sizes

logger = logging.getLogger(__name__)

COMBINES = ("max", "smooth", "sum")
OVERHEADS = ("overlap", "add")
#: Exponent of the ``"smooth"`` combination.
SMOOTH_P = 4.0
#: The parameters, in the order of the covariance matrix, with their units.
PARAM_UNITS = {
    "matmul_flops_s": "FLOP/s", "attention_flops_s": "FLOP/s", "weight_bytes_s": "bytes/s",
    "kv_bytes_s": "bytes/s", "pass_overhead_s": "s", "busy_power_w": "W", "overhead_power_w": "W",
    "elementwise_bytes_s": "bytes/s", "attention_block_s": "s", "attention_pairs_s": "pairs/s",
    "graph_capture_s": "s",
}
PARAM_NAMES = tuple(PARAM_UNITS)
#: Scale of each parameter inside the fit (lmfit sees values of order 1-1000).
_SCALE = {"matmul_flops_s": 1e12, "attention_flops_s": 1e12, "weight_bytes_s": 1e12, "kv_bytes_s": 1e12,
          "pass_overhead_s": 1e-6, "busy_power_w": 1.0, "overhead_power_w": 1.0, "elementwise_bytes_s": 1e12,
          "attention_block_s": 1e-9, "attention_pairs_s": 1e12, "graph_capture_s": 1e-3}
#: Rates (must be positive) and fixed times (non-negative) among the parameters.
_RATES = ("matmul_flops_s", "attention_flops_s", "weight_bytes_s", "kv_bytes_s", "elementwise_bytes_s",
          "attention_pairs_s")
_TIMES = ("pass_overhead_s", "attention_block_s", "graph_capture_s")
#: How :func:`calibrate` weighs the residuals of a point's two phases.
WEIGHTS = ("share", "equal")
#: The torch engine's settings that the schedule depends on.
ENGINE_MEMORY_FRACTION = 0.92
ENGINE_PREFILL_TOKENS = 16384
ENGINE_CACHE_BUCKET = 256
#: Context bucket of the engine's decode CUDA graphs (tokens): one graph per bucket per wave.
ENGINE_GRAPH_BUCKET = 256


# ----- exact counts, split by hardware path --------------------------------------------
def attended_keys(arch: Architecture, keys) -> np.ndarray:
    """Sum over layers of the keys each layer attends to (sliding windows capped), for an array of key counts."""
    keys = np.asarray(keys, dtype=float)
    full = arch.num_layers - arch.sliding_layers
    capped = np.minimum(keys, arch.sliding_window) if arch.sliding_window else keys
    return full * keys + arch.sliding_layers * capped


def causal_pairs(arch: Architecture, n: int) -> float:
    """(query, key) pairs of one causal prompt of ``n`` tokens, per query head, summed over layers:
    ``n (n + 1) / 2`` per full layer and ``sum_i min(i, window)`` per sliding-window layer."""
    full = arch.num_layers - arch.sliding_layers
    pairs = full * n * (n + 1) / 2
    if arch.sliding_layers:
        w = min(n, arch.sliding_window)
        pairs += arch.sliding_layers * (w * (w + 1) / 2 + (n - w) * w)
    return float(pairs)


def activation_bytes_per_token(arch: Architecture) -> float:
    """Bytes of the activation tensors one token's pass writes between the products, over all layers: hidden
    state, FFN intermediate (gate and up for a gated FFN), queries, keys and values, once each."""
    ffn = arch.intermediate_size * (2 if arch.ffn_kind == "gated" else 1)
    per_layer = arch.hidden_size + ffn + arch.q_width + 2 * arch.kv_width
    return float(arch.num_layers * per_layer * arch.bytes_per_element)


#: Bytes per element of the hidden state moved by one normalisation: transformers' RMSNorm casts to float32
#: (read 2, write 4), squares (4 + 4), takes the mean (4), scales (4 + 4), casts back (4 + 2) and multiplies by its
#: weight (2 + 2): 36 bytes in 6 kernels; ``nn.LayerNorm`` is one fused kernel (read 2, write 2).
NORM_BYTES = {"rms": 36, "layer": 4}


def elementwise_bytes_per_token(arch: Architecture, prefill: bool) -> float:
    """Bytes that the elementwise kernels of one token's pass move through memory, over all layers (float16).

    The kernels that transformers' eager modules run between the products (matmuls, attention and the KV-cache
    writes are counted elsewhere), each reading its inputs and writing its output:

    * the normalisations, :data:`NORM_BYTES` per element of the hidden state, ``norms_per_layer`` per layer and
      the final one;
    * two residual adds per layer (read 4, write 2 bytes per element of the hidden state);
    * the FFN activation: a gated FFN's ``act(gate) * up`` reads and writes 10 bytes per intermediate element
      (act 2 + 2, product 4 + 2), a plain FFN's activation 4;
    * the rotary embedding of the queries and keys, ``q * cos + rotate_half(q) * sin``: 20 bytes per element
      (two products 4 each, the negated half 2, the concatenation 4, the sum 6);
    * in a prompt, the GQA key/value heads repeated to every query head (``repeat_interleave``, the torch
      engine's prefill): read ``kv_width``, write ``q_width``, for keys and values (decode folds the query heads);
    * learned positions: the sum of the two embedding rows (6 bytes per element, once per token).

    These are the kernels of the ``hf`` (torch) engine that measured the committed grids; an engine that fuses
    them (the compiled ``lean`` engine) moves fewer bytes and needs its own calibration. A one-off trace of that
    engine's aten ops on the meta device (not kept in the repository) agreed with these counts to 0.3% for
    Llama-3.2-1B, OPT-1.3B and Qwen2-1.5B, with OPT's query scaling (4 bytes per query element) left out.
    """
    d, i, q, kv = arch.hidden_size, arch.intermediate_size, arch.q_width, arch.kv_width
    norm = NORM_BYTES[arch.norm]
    per_layer = arch.norms_per_layer * norm * d + 12 * d + (10 if arch.ffn_kind == "gated" else 4) * i
    if arch.position == "rope":
        per_layer += 20 * (q + kv)
    if prefill and arch.num_heads > arch.num_kv_heads:
        per_layer += 4 * (q + kv)
    total = arch.num_layers * per_layer + norm * d + (6 * d if arch.position == "learned" else 0)
    return float(total * arch.bytes_per_element / 2)


def _gather_bytes(arch: Architecture, tokens) -> np.ndarray:
    rows = 2 if arch.position == "learned" else 1
    return rows * np.asarray(tokens, dtype=float) * arch.hidden_size * arch.bytes_per_element


@dataclass(frozen=True)
class PassCounts:
    """The forward passes of one workload, one array entry per distinct pass.

    Attributes:
        phase: 0 for a prefill chunk, 1 for a decode step.
        repeat: How many times the pass runs (identical waves share entries).
        batch: Requests in the pass.
        matmul_flops: Matmul FLOPs (projections, FFN, LM head).
        attention_flops: Attention FLOPs (QK^T and AV).
        weight_bytes: Weight bytes read (once per pass).
        kv_bytes: KV-cache bytes read and written.
        other_bytes: Logits written and embedding rows gathered (bytes).
        activation_bytes: Activation tensors written between the layers' products: per token
            ``L * (d + d_ff + q_width + 2 kv_width)`` elements (bytes; counted, not used by :func:`phase_energy`).
        elementwise_bytes: Bytes of the elementwise kernels (:func:`elementwise_bytes_per_token` per token) and
            the argmax's read of the logits (bytes).
        attention_blocks: Decode attention thread blocks, batch x key/value heads x layers (0 for a prefill
            chunk, whose blocks carry 128 query rows each).
        attention_pairs: (query, key) pairs x query heads, summed over layers: causal in a prefill chunk
            (:func:`causal_pairs` per request), the live keys in a decode step.
        graph_captures: 1 for a decode step that opens a context bucket (eager step and CUDA-graph capture),
            else 0.
        layers: Decoder layers L of the architecture.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        n_req: Requests.
        max_wave: Requests in the largest wave.
        waves: Waves.
    """

    phase: np.ndarray
    repeat: np.ndarray
    batch: np.ndarray
    matmul_flops: np.ndarray
    attention_flops: np.ndarray
    weight_bytes: np.ndarray
    kv_bytes: np.ndarray
    other_bytes: np.ndarray
    activation_bytes: np.ndarray
    elementwise_bytes: np.ndarray
    attention_blocks: np.ndarray
    attention_pairs: np.ndarray
    graph_captures: np.ndarray
    layers: int
    n_in: int
    n_out: int
    n_req: int
    max_wave: int
    waves: int


def pass_counts(arch: Architecture, n_in: int, n_out: int, n_req: int, batch: int, waves: int | None = None,
                prefill_tokens: int | None = ENGINE_PREFILL_TOKENS,
                graph_bucket: int | None = ENGINE_GRAPH_BUCKET) -> PassCounts:
    """Exact counts of every forward pass of ``n_req`` requests of (n_in, n_out) in waves of up to ``batch``.

    The totals equal :func:`energybook.model.complexity.request` summed over the requests.

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        n_req: Requests.
        batch: Requests per wave at most.
        waves: Waves (default ``ceil(n_req / batch)``, balanced).
        prefill_tokens: Prompt tokens per prefill chunk (None: one chunk per wave).
        graph_bucket: Context bucket of the decode CUDA graphs (tokens; None: eager decode, no captures).
    """
    C.check_positive(n_in=n_in, n_out=n_out, n_req=n_req, batch=batch)
    waves = math.ceil(n_req / batch) if waves is None else waves
    sizes = wave_sizes(n_req, waves)
    if max(sizes) > batch:
        raise ValueError(f"{n_req} requests in {waves} waves need {max(sizes)} per wave, more than batch {batch}")
    bpe = arch.bytes_per_element
    w = C.weight_bytes(arch)
    lin, head = C.linear_flops_per_token(arch), C.lm_head_flops(arch)
    att_per_key = 4 * arch.num_heads * arch.head_dim
    logits = arch.vocab_size * bpe
    act = activation_bytes_per_token(arch)
    elem = {0: elementwise_bytes_per_token(arch, True), 1: elementwise_bytes_per_token(arch, False)}
    blocks = {0: 0.0, 1: float(arch.num_kv_heads * arch.num_layers)}
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("phase", "repeat", "batch", "mm", "att", "w", "kv", "o",
                                                         "act", "el", "blk", "pair", "cap")}

    def add(phase, repeat, b, mm, att, kv, o, tokens, pairs, cap):
        n = len(b)
        for key, value in (("phase", np.full(n, phase)), ("repeat", np.full(n, float(repeat))), ("batch", b),
                           ("mm", mm), ("att", att), ("w", np.full(n, w)), ("kv", kv), ("o", o),
                           ("act", tokens * act), ("el", tokens * elem[phase] + b * logits),
                           ("blk", b * blocks[phase]), ("pair", pairs), ("cap", cap)):
            cols[key].append(np.asarray(value, dtype=float))

    counts: dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    contexts = np.arange(n_in, n_in + n_out - 1, dtype=float)  # the position each decode step feeds
    opens = (contexts == n_in) | (contexts % graph_bucket == 0) if graph_bucket else np.zeros(len(contexts), bool)
    for size, repeat in counts.items():
        chunks = np.asarray(chunk_sizes(size, n_in, prefill_tokens), dtype=float)
        add(0, repeat, chunks, chunks * (n_in * lin + head),
            chunks * att_per_key * n_in * attended_keys(arch, n_in),
            chunks * n_in * arch.kv_bytes_per_token, chunks * (logits + _gather_bytes(arch, n_in)), chunks * n_in,
            chunks * arch.num_heads * causal_pairs(arch, n_in), np.zeros(len(chunks)))
        if len(contexts):
            keys = attended_keys(arch, contexts + 1)
            b = np.full(len(contexts), float(size))
            add(1, repeat, b, b * (lin + head), b * att_per_key * keys,
                b * (keys * 2 * arch.kv_width * bpe + arch.kv_bytes_per_token), b * (logits + _gather_bytes(arch, 1)),
                b, b * arch.num_heads * keys, opens.astype(float))
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    return PassCounts(cat["phase"].astype(int), cat["repeat"], cat["batch"], cat["mm"], cat["att"], cat["w"],
                      cat["kv"], cat["o"], cat["act"], cat["el"], cat["blk"], cat["pair"], cat["cap"],
                      arch.num_layers, n_in, n_out, n_req, max(sizes), waves)


# ----- the engine's batch rule --------------------------------------------------------------
balanced_batch = C.balanced_batch  # the sweep's batch rule, one definition in complexity


def batch_limit(arch: Architecture, n_in: int, n_out: int, memory_bytes: float, max_batch: int = 1024,
                prefill_tokens: int = ENGINE_PREFILL_TOKENS) -> int:
    """Largest batch whose KV cache fits, by the torch engine's rule (requests).

    The engine reads the free device memory after loading the weights and keeps ``memory_fraction`` (0.92) of it;
    each request needs its KV cache for ``n_in + n_out`` tokens rounded up to 256, plus logits and activations; a
    fixed part holds one prefill chunk's activations and 1 GiB of headroom. Here the free memory is
    ``memory_bytes`` minus the weights (``num_params`` elements).

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        memory_bytes: Device memory available to the engine before the weights (bytes; a calibration value).
        max_batch: The engine's batch cap (requests).
        prefill_tokens: Prompt tokens per prefill chunk.
    """
    C.check_positive(n_in=n_in, n_out=n_out, max_batch=max_batch)
    cache = math.ceil((n_in + n_out) / ENGINE_CACHE_BUCKET) * ENGINE_CACHE_BUCKET
    per_request = arch.kv_bytes_per_token * cache + 4 * arch.vocab_size * 4 + 64 * arch.hidden_size * 4
    chunk = min(prefill_tokens, n_in * max_batch)
    fixed = chunk * (3 * arch.intermediate_size + 12 * arch.hidden_size) * 2 + arch.vocab_size * 64 * 4 + (1 << 30)
    free = memory_bytes - arch.num_params * arch.bytes_per_element
    usable = free * ENGINE_MEMORY_FRACTION - fixed
    return max(0, min(max_batch, int(usable // per_request)))


# ----- parameters and the model ---------------------------------------------------------------
@dataclass(frozen=True)
class PhysicsParams:
    """The shared parameters of one GPU and engine.

    Attributes:
        matmul_flops_s: Effective matmul throughput R_mm (FLOP/s).
        attention_flops_s: Effective attention throughput R_att (FLOP/s).
        weight_bytes_s: Effective bandwidth of weight (and logits) traffic B_w (bytes/s).
        kv_bytes_s: Effective bandwidth of KV-cache traffic B_kv (bytes/s).
        pass_overhead_s: Fixed cost of every forward pass t_pass (seconds).
        busy_power_w: Power while kernels run P_busy (watts).
        overhead_power_w: Power during the per-pass overhead P_oh (watts).
        elementwise_bytes_s: Effective bandwidth of the elementwise kernels B_el (bytes/s).
        attention_block_s: Fixed time of one decode attention block t_blk (seconds).
        attention_pairs_s: Rate of the per-pair attention work R_pair ((query, key) pairs x heads per second).
        graph_capture_s: Fixed time of one decode graph capture with its eager step t_cap (seconds).
    """

    matmul_flops_s: float
    attention_flops_s: float
    weight_bytes_s: float
    kv_bytes_s: float
    pass_overhead_s: float
    busy_power_w: float
    overhead_power_w: float
    elementwise_bytes_s: float
    attention_block_s: float
    attention_pairs_s: float
    graph_capture_s: float

    def __post_init__(self) -> None:
        for key in PARAM_NAMES:
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a non-negative finite number, got {value!r}")
        for key in _RATES:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")

    def vector(self) -> np.ndarray:
        """The values in :data:`PARAM_NAMES` order (SI units)."""
        return np.array([getattr(self, k) for k in PARAM_NAMES], dtype=float)

    @classmethod
    def from_vector(cls, values) -> PhysicsParams:
        """Parameters from values in :data:`PARAM_NAMES` order (SI units)."""
        return cls(**{k: float(v) for k, v in zip(PARAM_NAMES, values)})


def _combine(a: np.ndarray, b: np.ndarray, combine: str) -> np.ndarray:
    if combine == "max":
        return np.maximum(a, b)
    if combine == "sum":
        return a + b
    if combine == "smooth":
        m = np.maximum(np.maximum(a, b), 1e-300)
        return m * ((a / m) ** SMOOTH_P + (b / m) ** SMOOTH_P) ** (1 / SMOOTH_P)
    raise ValueError(f"unknown combination {combine!r}; use one of {COMBINES}")


@dataclass(frozen=True)
class PhaseEnergy:
    """Modelled time and energy of one workload, by phase.

    Attributes:
        prefill_s: Prefill time (seconds).
        decode_s: Decode time (seconds).
        prefill_energy_j: Prefill energy (joules).
        decode_energy_j: Decode energy (joules).
    """

    prefill_s: float
    decode_s: float
    prefill_energy_j: float
    decode_energy_j: float

    @property
    def duration_s(self) -> float:
        """Total time (seconds)."""
        return self.prefill_s + self.decode_s

    @property
    def energy_j(self) -> float:
        """Total energy (joules)."""
        return self.prefill_energy_j + self.decode_energy_j


def phase_energy(counts: PassCounts, params: PhysicsParams, combine: str = "smooth",
                 overhead: str = "overlap") -> PhaseEnergy:
    """Time and energy of the passes of a workload under the model (see the module docstring).

    Args:
        counts: The passes (:func:`pass_counts`).
        params: The GPU's parameters.
        combine: ``"max"``, ``"smooth"`` or ``"sum"``.
        overhead: ``"overlap"`` (the per-pass cost hides behind running kernels: a pass takes
            ``comb(busy, t_pass)``) or ``"add"`` (a pass takes ``busy + t_pass``); a decode step that opens a
            graph bucket adds ``t_cap`` to its ``t_pass``.
    """
    p = params
    busy = (_combine(counts.matmul_flops / p.matmul_flops_s, (counts.weight_bytes + counts.other_bytes)
                     / p.weight_bytes_s, combine)
            + _combine(counts.attention_flops / p.attention_flops_s + counts.attention_pairs / p.attention_pairs_s,
                       counts.kv_bytes / p.kv_bytes_s, combine)
            + counts.elementwise_bytes / p.elementwise_bytes_s + counts.attention_blocks * p.attention_block_s)
    launch = p.pass_overhead_s + counts.graph_captures * p.graph_capture_s
    if overhead == "overlap":
        step = _combine(busy, launch, combine)
    elif overhead == "add":
        step = busy + launch
    else:
        raise ValueError(f"unknown overhead mode {overhead!r}; use one of {OVERHEADS}")
    time = step * counts.repeat
    energy = (p.busy_power_w * busy + p.overhead_power_w * (step - busy)) * counts.repeat
    pre = counts.phase == 0
    return PhaseEnergy(float(time[pre].sum()), float(time[~pre].sum()), float(energy[pre].sum()),
                       float(energy[~pre].sum()))


# ----- calibration --------------------------------------------------------------------------
@dataclass
class Calibration:
    """The calibrated parameters of one GPU and engine, with their uncertainty and provenance.

    Attributes:
        gpu: Short key (``"h100"``).
        gpu_name: The GPU's name as NVML reports it.
        engine: The engine measured (``"torch"``).
        combine: The combination of compute and memory time (:data:`COMBINES`).
        overhead: How the per-pass overhead meets the kernels' time (:data:`OVERHEADS`).
        params: The parameters.
        stderr: lmfit's standard error of each parameter (SI units).
        covariance: Covariance of the parameters in :data:`PARAM_NAMES` order (SI units squared).
        memory_bytes: Device memory available to the engine before the weights (bytes), for :func:`batch_limit`.
        power_cap_w: The power limit the grids ran under (watts).
        model_error_log: The model's own error: rms of log(predicted / measured) energy over the
            leave-one-model-out predictions (dimensionless; 0.05 is about 5%).
        provenance: What it was calibrated from (grids with sha256, commit, date, command).
    """

    gpu: str
    gpu_name: str
    engine: str
    combine: str
    params: PhysicsParams
    stderr: dict[str, float]
    covariance: np.ndarray = field(repr=False)
    overhead: str = "overlap"
    memory_bytes: float = 85.0e9
    power_cap_w: float = 700.0
    model_error_log: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (SI units; the units are listed under ``units``)."""
        return dict(schema="energybook.calibration/1", gpu=self.gpu, gpu_name=self.gpu_name, engine=self.engine,
                    combine=self.combine, overhead=self.overhead,
                    params={k: getattr(self.params, k) for k in PARAM_NAMES},
                    stderr=self.stderr, units=PARAM_UNITS, covariance=np.asarray(self.covariance).tolist(),
                    memory_bytes=self.memory_bytes, power_cap_w=self.power_cap_w,
                    model_error_log=self.model_error_log, provenance=self.provenance)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Read :meth:`to_dict`'s record.

        Raises:
            ValueError: when a key is missing or a value is malformed.
        """
        try:
            cov = np.asarray(d["covariance"], dtype=float)
            if cov.shape != (len(PARAM_NAMES),) * 2:
                raise ValueError(f"covariance has shape {cov.shape}")
            params = PhysicsParams(**{k: float(d["params"][k]) for k in PARAM_NAMES})
            return cls(gpu=str(d["gpu"]), gpu_name=str(d["gpu_name"]), engine=str(d["engine"]),
                       combine=str(d["combine"]), params=params,
                       stderr={k: float(v) for k, v in d["stderr"].items()}, covariance=cov,
                       overhead=str(d.get("overhead", "overlap")), memory_bytes=float(d["memory_bytes"]),
                       power_cap_w=float(d["power_cap_w"]),
                       model_error_log=float(d["model_error_log"]), provenance=dict(d.get("provenance", {})))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed calibration record: {exc!r}") from None

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON (``indent=1``, sorted keys) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    def sample_params(self, n: int = 200, seed: int = 0) -> list[PhysicsParams]:
        """Up to ``n`` parameter sets drawn from the fitted normal distribution, keeping only physical draws (rates
        positive, times and powers non-negative): a truncated normal. An unidentified parameter (a roofline branch
        that never binds, whose stderr is huge) then draws large values that keep the branch idle."""
        rng = np.random.default_rng(seed)
        mean = self.params.vector()
        cov = np.nan_to_num(np.asarray(self.covariance, dtype=float))
        # Drawn in standard units (the correlation matrix, then scaled by each stderr): the variances span some 47
        # orders of magnitude (FLOP/s squared to seconds squared), beyond what one eigendecomposition in float64
        # resolves; drawn directly, the smallest parameters took errors of the largest (t_pass by 1000x and more).
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        unit = np.where(sd > 0, sd, 1.0)
        corr = cov / np.outer(unit, unit)
        np.fill_diagonal(corr, 1.0)
        z = rng.multivariate_normal(np.zeros(len(mean)), corr, size=4 * n, method="eigh", check_valid="ignore")
        draws = mean + z * sd
        rates = [PARAM_NAMES.index(k) for k in _RATES]
        keep = (draws[:, rates] > 0).all(axis=1) & (draws >= 0).all(axis=1)
        draws = draws[keep][:n]
        if len(draws) < min(n, 10):
            logger.warning("the covariance of %s gives too few valid parameter draws; the interval holds the "
                           "model error only", self.gpu)
            return []
        return [PhysicsParams.from_vector(v) for v in draws]


@dataclass(frozen=True)
class Observation:
    """One measured workload for calibration.

    Attributes:
        counts: Its passes (:func:`pass_counts`).
        prefill_energy_j: Measured prefill energy (joules).
        decode_energy_j: Measured decode energy (joules).
        prefill_s: Measured prefill time (seconds).
        decode_s: Measured decode time (seconds).
        model: Model label.
    """

    counts: PassCounts
    prefill_energy_j: float
    decode_energy_j: float
    prefill_s: float
    decode_s: float
    model: str = ""

    @property
    def energy_j(self) -> float:
        """Measured total energy (joules)."""
        return self.prefill_energy_j + self.decode_energy_j


def observations(arch: Architecture, table, prefill_tokens: int | None = ENGINE_PREFILL_TOKENS,
                 graph_bucket: int | None = ENGINE_GRAPH_BUCKET) -> list[Observation]:
    """Calibration points from a measured grid (columns of ``energybook.report.analysis.measured_table``).

    Each row's schedule is the one it ran with: its ``n_req``, ``batch`` and ``waves`` columns.

    Args:
        arch: The architecture the grid measured.
        table: Rows with ``n_in``, ``n_out``, ``n_req``, ``batch``, ``waves``, ``prefill_energy_j``,
            ``decode_energy_j`` (joules), ``prefill_s``, ``decode_s`` (seconds).
        prefill_tokens: The engine's prompt tokens per chunk.
        graph_bucket: The engine's decode graph bucket (None: eager decode).

    Raises:
        ValueError: when a column is missing.
    """
    need = ["n_in", "n_out", "n_req", "batch", "waves", "prefill_energy_j", "decode_energy_j", "prefill_s",
            "decode_s"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"the grid of {arch.name} lacks column(s) {missing}")
    out = []
    for r in table.itertuples(index=False):
        counts = pass_counts(arch, int(r.n_in), int(r.n_out), int(r.n_req), int(r.batch), int(r.waves),
                             prefill_tokens, graph_bucket)
        out.append(Observation(counts, float(r.prefill_energy_j), float(r.decode_energy_j), float(r.prefill_s),
                               float(r.decode_s), arch.name))
    return out


#: Start values of the fit (SI units): a H100-like GPU.
START = PhysicsParams(matmul_flops_s=400e12, attention_flops_s=200e12, weight_bytes_s=2.5e12, kv_bytes_s=2.5e12,
                      pass_overhead_s=1e-3, busy_power_w=690.0, overhead_power_w=400.0,
                      elementwise_bytes_s=2.5e12, attention_block_s=10e-9, attention_pairs_s=4e12,
                      graph_capture_s=20e-3)


@dataclass
class CalibrationFit:
    """What :func:`calibrate` returns: the calibration and the fit's diagnostics.

    Attributes:
        calibration: The calibration (without provenance and model error; the caller adds them).
        report: lmfit's fit report.
        residual_rms_log: rms of the log residuals (dimensionless).
        success: Whether lmfit reported success.
    """

    calibration: Calibration
    report: str
    residual_rms_log: float
    success: bool


def calibrate(obs: list[Observation], combine: str = "smooth", overhead: str = "overlap", power_cap_w: float = 700.0,
              start: PhysicsParams = START, gpu: str = "h100", gpu_name: str = "", engine: str = "torch",
              memory_bytes: float = 85.0e9, fixed: dict[str, float] | None = None,
              weights: str = "share") -> CalibrationFit:
    """Fit the shared parameters to measured workloads with lmfit (least squares on log ratios).

    The residuals are ``log(model / measured)`` of each point's prefill energy, decode energy, prefill time and
    decode time: relative errors, so short and long workloads weigh alike. With ``weights="share"`` each phase's
    residual is multiplied by ``sqrt(2 f)``, ``f`` the phase's share of the point's measured energy (for the
    energies) or time (for the times): a point's weighted sum of squares then approximates twice the squared
    relative error of its total, and a phase that is a sliver of its workload (whose measurement carries
    allocator stalls and the energy counter's lag at the phase boundary) weighs as little as it counts.
    ``"equal"`` weighs the four alike. ``busy_power_w`` and ``overhead_power_w`` are bounded by ``power_cap_w``.

    Args:
        obs: The measured workloads (:func:`observations`), of one or more models.
        combine: ``"max"``, ``"smooth"`` or ``"sum"``.
        overhead: ``"overlap"`` or ``"add"`` (:func:`phase_energy`).
        power_cap_w: The GPU's power limit (watts).
        start: Start values.
        gpu: Short GPU key for the record.
        gpu_name: The GPU's name.
        engine: The engine measured.
        memory_bytes: Device memory for the batch rule (bytes), stored with the calibration.
        fixed: Parameters held at the given values (SI units) instead of fitted (stderr 0, covariance 0).
        weights: ``"share"`` or ``"equal"`` (see above).

    Raises:
        ValueError: for no observations, an unknown combination or an unknown weighting.
    """
    import lmfit  # the analysis half; predict() does not need it

    if not obs:
        raise ValueError("calibration needs at least one measured workload")
    if combine not in COMBINES:
        raise ValueError(f"unknown combination {combine!r}; use one of {COMBINES}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weighting {weights!r}; use one of {WEIGHTS}")
    measured = np.array([[o.prefill_energy_j, o.decode_energy_j, o.prefill_s, o.decode_s] for o in obs])
    if not (np.isfinite(measured).all() and (measured > 0).all()):
        raise ValueError("measured energies and times must be positive and finite")
    log_measured = np.log(measured)
    if weights == "share":
        f_e = measured[:, 0] / (measured[:, 0] + measured[:, 1])
        f_t = measured[:, 2] / (measured[:, 2] + measured[:, 3])
        weight = np.sqrt(2 * np.column_stack([f_e, 1 - f_e, f_t, 1 - f_t]))
    else:
        weight = np.ones_like(measured)

    params = lmfit.Parameters()
    for k in PARAM_NAMES:
        value = getattr(start, k) / _SCALE[k]
        if k.endswith("power_w"):
            params.add(k, value=min(value, power_cap_w * 0.999), min=0.0, max=power_cap_w)
        elif k in _TIMES:
            params.add(k, value=value, min=0.0, max=1e5)
        else:
            params.add(k, value=value, min=value * 1e-3, max=value * 1e3)
    for k, v in (fixed or {}).items():
        params[k].set(value=v / _SCALE[k], vary=False, min=-np.inf, max=np.inf)

    def unpack(p) -> PhysicsParams:
        return PhysicsParams(**{k: p[k].value * _SCALE[k] for k in PARAM_NAMES})

    def residual(p):
        pp = unpack(p)
        rows = []
        for o in obs:
            e = phase_energy(o.counts, pp, combine, overhead)
            rows.append([e.prefill_energy_j, e.decode_energy_j, e.prefill_s, e.decode_s])
        return (weight * (np.log(np.maximum(np.array(rows), 1e-300)) - log_measured)).ravel()

    result = lmfit.minimize(residual, params, method="least_squares")
    best = unpack(result.params)
    scale = np.array([_SCALE[k] for k in PARAM_NAMES])
    k = len(PARAM_NAMES)
    if result.covar is not None and result.var_names == list(PARAM_NAMES):
        cov = np.asarray(result.covar) * np.outer(scale, scale)
        identified = np.ones(k, dtype=bool)
    else:
        cov, identified = _pinv_covariance(residual, result.params, result.residual, scale)
    for i, name in enumerate(PARAM_NAMES):
        if name in (fixed or {}):
            cov[i, :] = cov[:, i] = 0.0
            identified[i] = True
    stderr = {name: float(np.sqrt(cov[i, i])) if identified[i] else float("nan")
              for i, name in enumerate(PARAM_NAMES)}
    rms = float(np.sqrt(np.mean(result.residual ** 2)))
    cal = Calibration(gpu=gpu, gpu_name=gpu_name, engine=engine, combine=combine, params=best, stderr=stderr,
                      covariance=cov, overhead=overhead, memory_bytes=memory_bytes, power_cap_w=power_cap_w)
    return CalibrationFit(cal, lmfit.fit_report(result), rms, bool(result.success))


def _pinv_covariance(residual, params, r0: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariance s^2 (J^T J)^+ from a forward-difference Jacobian, when lmfit has none.

    With ``combine="max"`` a roofline branch that never binds leaves its parameter without any gradient: J^T J is
    singular. The pseudo-inverse gives such a parameter zero variance (the data say nothing about it, and any
    larger value predicts the same); it is reported as not identified (stderr nan).
    """
    names = list(PARAM_NAMES)
    base = np.array([params[n].value for n in names])
    cols = []
    for i, n in enumerate(names):
        if not params[n].vary:
            cols.append(np.zeros_like(r0))
            continue
        h = max(abs(base[i]) * 1e-4, 1e-9)
        p = params.copy()
        p[n].set(value=base[i] + h)
        cols.append((residual(p) - r0) / h)
    jac = np.column_stack(cols)
    dof = max(len(r0) - len(names), 1)
    s2 = float(r0 @ r0) / dof
    norms = np.linalg.norm(jac, axis=0)
    identified = norms > 1e-8 * max(norms.max(), 1e-300)
    cov = np.zeros((len(names), len(names)))
    sub = np.ix_(identified, identified)
    cov[sub] = np.linalg.pinv(jac[:, identified].T @ jac[:, identified]) * s2
    return cov * np.outer(scale, scale), identified


def memory_for_batches(archs_and_rows: list[tuple[Architecture, list[tuple[int, int, int, int]]]],
                       max_batch: int = 1024, lo: float = 60e9, hi: float = 100e9, step: float = 0.05e9
                       ) -> tuple[float, float] | None:
    """The range of ``memory_bytes`` for which :func:`batch_limit` reproduces every measured batch.

    Args:
        archs_and_rows: For each architecture, its measured (n_in, n_out, n_req, batch) tuples.
        max_batch: The engine's batch cap.
        lo: Lowest memory tried (bytes).
        hi: Highest memory tried (bytes).
        step: Step of the scan (bytes).

    Returns:
        (lowest, highest) memory that reproduces all batches, or None when no value does.
    """
    good = []
    for m in np.arange(lo, hi + step / 2, step):
        ok = all(balanced_batch(n_req, min(n_req, max_batch, batch_limit(a, n_in, n_out, m, max_batch)))[0] == b
                 for a, rows in archs_and_rows for n_in, n_out, n_req, b in rows
                 if batch_limit(a, n_in, n_out, m, max_batch) >= 1)
        if ok:
            good.append(float(m))
    return (min(good), max(good)) if good else None


# ----- stored calibrations --------------------------------------------------------------------
def calibrated_gpus() -> list[str]:
    """GPU keys with a shipped calibration (``energybook/resources/calibration/<gpu>.json``)."""
    try:
        folder = resources.path("calibration")
    except FileNotFoundError:
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def load_calibration(gpu: str = "h100", path: str | Path | None = None) -> Calibration:
    """The stored calibration of a GPU.

    Args:
        gpu: GPU key (``"h100"``), case-insensitive.
        path: A calibration JSON to read instead of the shipped one.

    Raises:
        ValueError: for an uncalibrated GPU (the message lists the calibrated ones) or a malformed file.
    """
    if path is None:
        key = str(gpu).strip().lower()
        known = calibrated_gpus()
        if key not in known:
            raise ValueError(f"no calibration for GPU {gpu!r}; calibrated GPUs: {', '.join(known) or 'none'} "
                             "(scripts/calibrate.py makes one from measured grids)")
        path = resources.path("calibration", f"{key}.json")
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    return Calibration.from_dict(record)


# ----- prediction -----------------------------------------------------------------------------
#: z of the two-sided 95% normal interval.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Prediction:
    """The predicted energy of a workload of ``n_req`` requests of (n_in, n_out).

    The interval ``[*_low, *_high]`` is an approximate 95% prediction interval for a model outside the
    calibration set: in log space, the prediction +- 1.96 sqrt(s_param^2 + s_model^2), where ``s_param`` is the
    standard deviation of log energy over parameter sets drawn from lmfit's covariance and ``s_model`` the
    calibration's ``model_error_log`` (rms leave-one-model-out error). It does not cover other engines, other
    power limits, or other GPUs.

    Attributes:
        model: Architecture name.
        gpu: Calibration key.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        n_req: Requests.
        batch: Requests per wave (largest wave).
        waves: Waves.
        energy_j: Energy of the workload (joules).
        duration_s: Time of the workload (seconds).
        prefill_energy_j: Prefill energy (joules).
        decode_energy_j: Decode energy (joules).
        prefill_s: Prefill time (seconds).
        decode_s: Decode time (seconds).
        energy_low_j: Lower end of the interval on ``energy_j`` (joules).
        energy_high_j: Upper end (joules).
    """

    model: str
    gpu: str
    n_in: int
    n_out: int
    n_req: int
    batch: int
    waves: int
    energy_j: float
    duration_s: float
    prefill_energy_j: float
    decode_energy_j: float
    prefill_s: float
    decode_s: float
    energy_low_j: float
    energy_high_j: float

    @property
    def tokens_out(self) -> int:
        """Output tokens of the workload."""
        return self.n_req * self.n_out

    @property
    def j_per_token(self) -> float:
        """Joules per output token."""
        return self.energy_j / self.tokens_out

    @property
    def j_per_token_low(self) -> float:
        """Lower end of the interval on joules per output token."""
        return self.energy_low_j / self.tokens_out

    @property
    def j_per_token_high(self) -> float:
        """Upper end of the interval on joules per output token."""
        return self.energy_high_j / self.tokens_out

    @property
    def j_per_total_token(self) -> float:
        """Joules per token, prompt and output together."""
        return self.energy_j / (self.n_req * (self.n_in + self.n_out))

    @property
    def j_per_request(self) -> float:
        """Joules per request."""
        return self.energy_j / self.n_req

    @property
    def tokens_per_j(self) -> float:
        """Output tokens per joule."""
        return self.tokens_out / self.energy_j

    @property
    def power_w(self) -> float:
        """Mean power (watts)."""
        return self.energy_j / self.duration_s

    def to_dict(self) -> dict[str, Any]:
        """Fields and derived values as a flat JSON-ready dict (units in the names)."""
        d = dict(self.__dict__)
        for k in ("tokens_out", "j_per_token", "j_per_token_low", "j_per_token_high", "j_per_total_token",
                  "j_per_request", "tokens_per_j", "power_w"):
            d[k] = getattr(self, k)
        d["j_per_request_low"] = self.energy_low_j / self.n_req
        d["j_per_request_high"] = self.energy_high_j / self.n_req
        return d


def schedule(arch: Architecture, n_in: int, n_out: int, calibration: Calibration, batch: int | None = None,
             max_batch: int = 1024, n_req: int = 1000) -> tuple[int, int]:
    """(batch, waves) the engine would use: ``batch`` as given, else the KV-memory rule under ``max_batch``.

    Raises:
        ValueError: for non-positive values or when not even one request fits.
    """
    C.check_positive(n_in=n_in, n_out=n_out, n_req=n_req)
    if batch is not None:
        C.check_positive(batch=batch)
        return balanced_batch(n_req, min(n_req, batch))
    C.check_positive(max_batch=max_batch)
    limit = batch_limit(arch, n_in, n_out, calibration.memory_bytes, max_batch)
    return balanced_batch(n_req, min(n_req, max_batch, limit))


def predict(arch: Architecture, n_in: int, n_out: int, batch: int | None = None, max_batch: int = 1024,
            n_req: int = 1000, calibration: Calibration | None = None, samples: int = 200) -> Prediction:
    """The energy of ``n_req`` requests of (n_in, n_out) on a calibrated GPU, with an interval.

    Args:
        arch: Any architecture (:func:`energybook.model.architecture.load`).
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        batch: Requests per wave; None: the engine's KV-memory rule under ``max_batch``.
        max_batch: The engine's batch cap (requests), used when ``batch`` is None.
        n_req: Requests.
        calibration: The GPU's calibration (default :func:`load_calibration` of ``"h100"``).
        samples: Parameter sets drawn for the interval (0: the interval holds the model error only).

    Raises:
        ValueError: for non-positive lengths or batches, or when not even one request fits.
    """
    cal = calibration if calibration is not None else load_calibration()
    b, waves = schedule(arch, n_in, n_out, cal, batch, max_batch, n_req)
    counts = pass_counts(arch, n_in, n_out, n_req, b, waves)
    e = phase_energy(counts, cal.params, cal.combine, cal.overhead)
    s_par = 0.0
    draws = [phase_energy(counts, p, cal.combine, cal.overhead).energy_j for p in cal.sample_params(samples)] \
        if samples else []
    if draws:
        s_par = float(np.std(np.log(draws)))
    half = Z95 * math.hypot(s_par, cal.model_error_log)
    return Prediction(model=arch.name, gpu=cal.gpu, n_in=n_in, n_out=n_out, n_req=n_req, batch=counts.max_wave,
                      waves=waves, energy_j=e.energy_j, duration_s=e.duration_s,
                      prefill_energy_j=e.prefill_energy_j, decode_energy_j=e.decode_energy_j,
                      prefill_s=e.prefill_s, decode_s=e.decode_s, energy_low_j=e.energy_j * math.exp(-half),
                      energy_high_j=e.energy_j * math.exp(half))
