"""The exact counts of the physical model (:mod:`energybook.model.physics`): every forward pass of a workload,
split by the hardware path it runs on (matmul and attention FLOPs, weight, KV-cache, other and elementwise bytes,
decode attention blocks, (query, key) pairs, graph captures), in waves and prefill chunks by the engine's
:class:`~energybook.model.batch.EngineProfile`. The module docstring of :mod:`energybook.model.physics` says what
each count is and how the model prices it.

Used in :doc:`/book/physics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from energybook.model import batch as B
from energybook.model import complexity as C
from energybook.model.architecture import Architecture
from energybook.model.batch import HF_PROFILE, EngineProfile
from energybook.model.roofline import chunk_sizes, wave_sizes


# ----- exact counts, split by hardware path --------------------------------------------
def attended_keys(arch: Architecture, keys) -> np.ndarray:
    """Sum over layers of the keys each layer attends to (sliding windows capped), for an array of key counts."""
    keys = np.asarray(keys, dtype=float)
    full = arch.num_layers - arch.sliding_layers
    capped = np.minimum(keys, arch.sliding_window) if arch.sliding_window else keys
    return full * keys + arch.sliding_layers * capped


#: How an engine's prefill runs a sliding window shorter than the prompt, by profile name: ``"square"`` (the ``hf``
#: engine: SDPA under a banded additive mask, which takes the memory-efficient kernel; it computes every (query, key)
#: pair of the n x n square and masks what lies outside the band) or ``"band"`` (the ``lean`` engine: FlexAttention
#: with a causal, windowed block mask, which skips the blocks outside the band). Decode reads the window's keys only
#: in both (the ``hf`` engine's flash varlen kernel with ``window_size_left``, the ``lean`` engine's windowed ways).
#: :mod:`energybook.model.attention_paths` names the paths and refuses those no calibration grid ran.
PREFILL_WINDOW = {"hf": "square", "torch": "square", "lean": "band"}


def prefill_window(profile: EngineProfile) -> str:
    """The engine's rule for a sliding window shorter than the prompt (:data:`PREFILL_WINDOW`; ``"band"`` for an
    engine without one)."""
    return PREFILL_WINDOW.get(profile.name, "band")


def causal_pairs(arch: Architecture, n: int, window: str = "band") -> float:
    """(query, key) pairs of one causal prompt of ``n`` tokens, per query head, summed over layers:
    ``n (n + 1) / 2`` per full layer and, per sliding-window layer, ``sum_i min(i, window)`` (``window="band"``) or,
    when the window is shorter than the prompt, the whole ``n * n`` square that a masked kernel computes
    (``window="square"``, :data:`PREFILL_WINDOW`)."""
    if window not in ("band", "square"):
        raise ValueError(f"window must be 'band' or 'square', got {window!r}")
    full = arch.num_layers - arch.sliding_layers
    pairs = full * n * (n + 1) / 2
    if arch.sliding_layers:
        w = min(n, arch.sliding_window)
        if window == "square" and n > w:
            pairs += arch.sliding_layers * n * n
        else:
            pairs += arch.sliding_layers * (w * (w + 1) / 2 + (n - w) * w)
    return float(pairs)


def prefill_keys(arch: Architecture, n: int, window: str = "band") -> float:
    """Sum over layers of the keys each query of an ``n``-token prompt is charged attention FLOPs for: ``n`` per
    full layer, and per sliding-window layer ``min(n, window)`` (``"band"``) or ``n`` (``"square"``: the masked
    kernel multiplies every key)."""
    if window == "square":
        return float(arch.num_layers * n)
    return float(attended_keys(arch, n))


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
            (:func:`causal_pairs` per request, by the engine's :data:`PREFILL_WINDOW` rule), the live keys in a
            decode step.
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
                profile: EngineProfile = HF_PROFILE) -> PassCounts:
    """Exact counts of every forward pass of ``n_req`` requests of (n_in, n_out) in waves of up to ``batch``.

    The totals equal :func:`energybook.model.complexity.request` summed over the requests, except for a sliding
    window shorter than the prompt in an engine whose prefill computes the whole square (:data:`PREFILL_WINDOW`:
    the ``hf`` engine), where the prefill's attention FLOPs and pairs are those of the square.

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        n_req: Requests.
        batch: Requests per wave at most.
        waves: Waves (default ``ceil(n_req / batch)``, balanced).
        profile: The engine's profile: its prompt tokens per prefill chunk and the edges of its decode-graph
            buckets (one capture per bucket and wave; none when ``profile.graphs`` is False). For one chunk per
            wave or eager decode, pass ``dataclasses.replace(profile, prefill_tokens=..., graphs=False)``.
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
    window = prefill_window(profile)
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
    if profile.graphs and len(contexts):
        edges = B.profile_edges(profile, n_in + n_out - 1)
        opens = (contexts == n_in) | np.isin(contexts, np.asarray(edges, dtype=float))
    else:
        opens = np.zeros(len(contexts), bool)
    for size, repeat in counts.items():
        chunks = np.asarray(chunk_sizes(size, n_in, profile.prefill_tokens), dtype=float)
        add(0, repeat, chunks, chunks * (n_in * lin + head),
            chunks * att_per_key * n_in * prefill_keys(arch, n_in, window),
            chunks * n_in * arch.kv_bytes_per_token, chunks * (logits + _gather_bytes(arch, n_in)), chunks * n_in,
            chunks * arch.num_heads * causal_pairs(arch, n_in, window), np.zeros(len(chunks)))
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
