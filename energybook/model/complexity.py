"""FLOPs and bytes moved by Transformer inference.

Two versions of every count:

* ``textbook``: the SweetSpot study's derivation for a textbook decoder (width d, L layers,
  n_q heads, multi-head attention, a 4x two-matrix FFN, no LM head), exactly as published;
* ``exact``: the real architecture: GQA, gated FFNs, explicit head_dim, the LM head, and
  weight and KV-cache bytes by dtype.

Conventions. One multiply-accumulate is 2 FLOPs; only matrix products are counted (norms,
activations, rotary embeddings and softmax are elementwise and left out, as PyTorch's
``FlopCounterMode`` does). Fused projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``, the
``query_key_value`` of GPT-NeoX and Falcon) are the same products as separate matrices, and a
parallel residual (GPT-NeoX, Falcon) or a partial rotary embedding (``rotary_pct``) changes none,
so every registered family is counted by the same formulas. Prefill attention is counted as the
full n_in x n_in square that a dense kernel computes (the study does the same). Prefill computes
logits for the last position only, as inference engines do. A decode step at context ``c``
starts with ``c`` tokens in the KV cache; the new token attends to ``c + 1`` keys. A request
(n_in, n_out) is one prefill, which yields the first output token, and ``n_out - 1`` decode steps.

Bytes (exact) are the compulsory traffic of one forward pass: every weight read once per pass
(shared by the whole batch), the embedding rows gathered, KV-cache reads and writes, and the
logits written. Activations between kernels are left out.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from energybook.model.architecture import Architecture

logger = logging.getLogger(__name__)

METHODS = ("exact", "textbook")


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of some piece of inference work.

    Attributes:
        flops: Floating-point operations (2 per multiply-accumulate).
        bytes: Bytes moved through GPU memory (compulsory traffic).
    """

    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k: float) -> Cost:
        return Cost(self.flops * k, self.bytes * k)

    __rmul__ = __mul__

    @property
    def intensity(self) -> float:
        """Arithmetic intensity (FLOPs per byte)."""
        return self.flops / self.bytes if self.bytes else float("inf")


#: The study's grid: powers of two from 64 to 4096 tokens, for n_in and for n_out.
GRID = (64, 128, 256, 512, 1024, 2048, 4096)


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the first value that is not a positive integer (lengths, batches)."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


class NoRequestFits(RuntimeError, ValueError):
    """Not even one request fits in the GPU's memory at these lengths."""


def balanced_batch(n_req: int, limit: int) -> tuple[int, int]:
    """(batch, waves) for ``n_req`` requests when at most ``limit`` fit: equal waves, as few as possible.

    The batch rule of the sweep (:mod:`energybook.measure.protocol`) and of the physical model
    (:mod:`energybook.model.physics`).

    Raises:
        NoRequestFits: when ``limit`` < 1.
    """
    check_positive(n_req=n_req)
    if limit < 1:
        raise NoRequestFits("not even one request fits in GPU memory at this length (the KV cache is too large); "
                            "use a shorter grid or a GPU with more memory")
    waves = math.ceil(n_req / limit)
    return math.ceil(n_req / waves), waves


def _nonnegative(**lengths: int) -> None:
    for key, value in lengths.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer (tokens), got {value!r}")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


# ----- exact counts -------------------------------------------------------------------
def linear_flops_per_token(arch: Architecture) -> float:
    """Matmul FLOPs of one token through all decoder layers (projections and FFN), no attention."""
    d, q, kv, i = arch.hidden_size, arch.q_width, arch.kv_width, arch.intermediate_size
    per_layer = 2 * (d * q + 2 * d * kv + q * d) + 2 * arch.ffn_matrices * d * i
    return arch.num_layers * per_layer


def lm_head_flops(arch: Architecture) -> float:
    """FLOPs of the LM head for one token, 2*d*V."""
    return 2 * arch.hidden_size * arch.vocab_size


def _attended(arch: Architecture, keys: int) -> float:
    """Sum over layers of the keys each layer attends to, with sliding windows capped."""
    full = arch.num_layers - arch.sliding_layers
    capped = min(keys, arch.sliding_window) if arch.sliding_window else keys
    return full * keys + arch.sliding_layers * capped


def weight_bytes(arch: Architecture) -> float:
    """Bytes of the weights one forward pass reads: all layers, final norm and LM head."""
    params = arch.num_layers * arch.layer_params + arch.norm_params + arch.lm_head_params
    return params * arch.bytes_per_element


def _gather_bytes(arch: Architecture, tokens: int) -> float:
    rows = 2 if arch.position == "learned" else 1
    return rows * tokens * arch.hidden_size * arch.bytes_per_element


def prefill(arch: Architecture, n_in: int, batch: int = 1, method: str = "exact") -> Cost:
    """Cost of the prefill of ``batch`` requests of ``n_in`` prompt tokens.

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        batch: Requests processed together (weights are read once for all of them).
        method: ``"exact"`` or ``"textbook"``.
    """
    check_positive(n_in=n_in, batch=batch)
    _check_method(method)
    if method == "textbook":
        d, L, nq = arch.hidden_size, arch.num_layers, arch.num_heads
        flops = L * (24 * n_in * d**2 + 4 * n_in**2 * d)
        elements = L * (10 * n_in * d + 10 * d**2 + 2 * n_in**2 * nq)
        # The study's element count already includes the weights (10 d^2 per layer);
        # a batch repeats everything but the weights.
        elements_batch = batch * elements - (batch - 1) * L * 10 * d**2
        return Cost(batch * flops, elements_batch * arch.bytes_per_element)
    h = arch.head_dim
    attn = 4 * arch.num_heads * h * n_in * _attended(arch, n_in)
    flops = n_in * linear_flops_per_token(arch) + attn + lm_head_flops(arch)
    kv_write = n_in * arch.kv_bytes_per_token
    logits = arch.vocab_size * arch.bytes_per_element
    per_request = kv_write + logits + _gather_bytes(arch, n_in)
    return Cost(batch * flops, weight_bytes(arch) + batch * per_request)


def decode_step(arch: Architecture, context: int, batch: int = 1, method: str = "exact") -> Cost:
    """Cost of one decode step for ``batch`` requests with ``context`` tokens already cached.

    Args:
        arch: The architecture.
        context: Tokens in each request's KV cache before the step.
        batch: Requests decoded together.
        method: ``"exact"`` or ``"textbook"`` (the study's step at cache length ``context``).
    """
    check_positive(batch=batch)
    _nonnegative(context=context)
    _check_method(method)
    if method == "textbook":
        d, L, nq = arch.hidden_size, arch.num_layers, arch.num_heads
        flops = L * (24 * d**2 + 4 * context * d)
        elements = L * (7 * d + 10 * d**2 + (nq + d) * context)
        elements_batch = batch * elements - (batch - 1) * L * 10 * d**2
        return Cost(batch * flops, elements_batch * arch.bytes_per_element)
    keys = context + 1
    attn = 4 * arch.num_heads * arch.head_dim * _attended(arch, keys)
    flops = linear_flops_per_token(arch) + attn + lm_head_flops(arch)
    kv_read = _attended(arch, keys) * 2 * arch.kv_width * arch.bytes_per_element
    kv_write = arch.kv_bytes_per_token
    logits = arch.vocab_size * arch.bytes_per_element
    per_request = kv_read + kv_write + logits + _gather_bytes(arch, 1)
    return Cost(batch * flops, weight_bytes(arch) + batch * per_request)


def request(arch: Architecture, n_in: int, n_out: int, batch: int = 1, method: str = "exact") -> Cost:
    """Total cost of ``batch`` requests of (n_in, n_out) run together.

    Exact: one prefill and ``n_out - 1`` decode steps at contexts n_in .. n_in + n_out - 2.
    Textbook: the study's prefill plus ``n_out`` decode steps at cache lengths
    n_in .. n_in + n_out - 1 (its closed form, see :func:`textbook_total_flops`).
    """
    check_positive(n_in=n_in, n_out=n_out, batch=batch)
    _check_method(method)
    total = prefill(arch, n_in, batch, method)
    if method == "textbook":
        contexts = range(n_in, n_in + n_out)
    else:
        contexts = range(n_in, n_in + n_out - 1)
    if not contexts:
        return total
    # Every term is affine in the context (below the sliding window), so the sum is
    # n_steps times the mean of the first and last step; split at the window to stay exact.
    return total + _sum_steps(arch, contexts, batch, method)


def _sum_steps(arch: Architecture, contexts: range, batch: int, method: str) -> Cost:
    first, last = contexts.start, contexts.stop - 1
    window = arch.sliding_window if method == "exact" and arch.sliding_window else None
    if window is not None and first < window - 1 < last:
        split = window - 1  # contexts above this have capped sliding layers
        return (_sum_steps(arch, range(first, split + 1), batch, method)
                + _sum_steps(arch, range(split + 1, last + 1), batch, method))
    a = decode_step(arch, first, batch, method)
    b = decode_step(arch, last, batch, method)
    return (a + b) * (len(contexts) / 2)


def textbook_total_flops(arch: Architecture, n_in: int, n_out: int) -> float:
    """The study's closed form: 2Ld(12 d n_in + 12 d n_out + 2 n_in^2 + 2 n_in n_out + n_out^2 - n_out)."""
    check_positive(n_in=n_in, n_out=n_out)
    d, L = arch.hidden_size, arch.num_layers
    return 2 * L * d * (12 * d * n_in + 12 * d * n_out + 2 * n_in**2 + 2 * n_in * n_out + n_out**2 - n_out)
