"""The batch rule: how many requests of (n_in, n_out) an engine runs in one wave, from the GPU memory it has.

One rule for every engine, the estimate and the physical model. An engine declares an :class:`EngineProfile`
(frozen: its memory fraction, its prefill chunking, the length of its preallocated KV cache and the edges of its
decode CUDA-graph buckets, the bytes each request and each prefill chunk hold beside the KV cache) and
:func:`batch_limit` turns it into a batch:

    usable      = free_bytes * memory_fraction - fixed                       (bytes)
    batch_limit = min(max_batch, floor(usable / per_request))                (requests, 0 when none fits)

with ``free_bytes`` the device memory free once the weights are loaded (bytes), ``per_request`` the KV cache of
one request over :func:`cache_len` tokens plus its logits, token ids and decode activations, and ``fixed`` one
prefill chunk's activations, the logits of the chunk's rows and a headroom (:func:`request_bytes`,
:func:`fixed_bytes`).

``free_bytes`` is a baseline, not a reading before each point: an engine measures the free memory once, after the
weights and before the first point, and passes that same figure for every point, so that the batch a point gets
does not depend on what ran before it (a previous wave's cache, graphs or allocator fragments). The profiles
here, :data:`HF_PROFILE` (the ``hf`` torch engine) and :data:`LEAN_PROFILE` (the ``lean`` engine), carry the
values of those engines' code; with the same free memory the rule gives what their ``batch_limit`` computed.

:func:`bucket_edges` gives the context buckets of an engine's decode graphs (one graph, and one capture, per
bucket and wave), which :func:`energybook.model.physics.pass_counts` charges.

Used in :doc:`/book/physics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from energybook.model.architecture import Architecture
from energybook.model.complexity import check_positive


@dataclass(frozen=True)
class EngineProfile:
    """What an engine's memory plan and schedule depend on.

    The per-request and fixed terms are coefficients of the architecture's widths: ``*_bytes`` fields are bytes
    per unit whatever the dtype (float32 logits, int64 token ids), ``*_elements`` fields are elements of the
    engine's dtype per unit (bytes = elements x the dtype's bytes).

    Attributes:
        name: The engine's name (``"hf"``, ``"lean"``).
        memory_fraction: Share of the free device memory the KV cache and activations may take.
        prefill_tokens: Prompt tokens per prefill chunk (tokens).
        whole_request_chunks: True: a chunk holds whole requests, ``max(1, prefill_tokens // n_in)`` rows (at most
            ``max_batch``); False: the chunk's activations are sized for ``min(prefill_tokens, n_in * max_batch)``
            tokens.
        bucket_min: Narrowest decode-graph bucket (tokens).
        bucket_max: Widest decode-graph bucket (tokens); a bucket starting at ``s`` is
            ``min(bucket_max, max(bucket_min, p(s) // 16))`` wide, ``p(s)`` the largest power of two at most ``s``
            (:func:`bucket_edges`; ``bucket_min == bucket_max`` gives uniform buckets).
        cache_last_token: True: the cache holds ``n_in + n_out`` tokens; False: ``n_in + n_out - 1`` keys (the
            last output token is never fed back). Either is rounded up to a bucket edge (:func:`cache_len`).
        graphs: Whether decode runs through per-bucket CUDA graphs (one capture per bucket and wave).
        request_vocab_bytes: Bytes per request and vocabulary entry (float32 logits, argmax scratch).
        request_vocab_elements: Elements per request and vocabulary entry (logits in the dtype).
        request_hidden_bytes: Bytes per request and hidden unit (decode activations).
        request_intermediate_bytes: Bytes per request and FFN unit (decode activations).
        request_slot_bytes: Bytes per request and cache slot, counted ``cache_len + 1`` times (int64 token ids).
        chunk_hidden_elements: Elements per chunk token and hidden unit (prefill activations).
        chunk_intermediate_elements: Elements per chunk token and FFN unit.
        chunk_q_elements: Elements per chunk token and query width.
        chunk_kv_elements: Elements per chunk token and key/value width.
        row_vocab_elements: Elements per chunk row (request) and vocabulary entry (the chunk's last-position
            logits).
        fixed_vocab_bytes: Bytes per vocabulary entry held once (the LM head's scratch).
        chunk_element_bytes: Bytes of one prefill-chunk activation element (None: the dtype's; the ``hf``
            engine counts 2 whatever its dtype).
        headroom_bytes: Bytes kept free for the allocator, the CUDA context's growth and small tensors.
    """

    name: str
    memory_fraction: float = 0.92
    prefill_tokens: int = 16384
    whole_request_chunks: bool = False
    bucket_min: int = 256
    bucket_max: int = 256
    cache_last_token: bool = True
    graphs: bool = True
    request_vocab_bytes: int = 0
    request_vocab_elements: int = 0
    request_hidden_bytes: int = 0
    request_intermediate_bytes: int = 0
    request_slot_bytes: int = 0
    chunk_hidden_elements: int = 0
    chunk_intermediate_elements: int = 0
    chunk_q_elements: int = 0
    chunk_kv_elements: int = 0
    row_vocab_elements: int = 0
    fixed_vocab_bytes: int = 0
    chunk_element_bytes: int | None = None
    headroom_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
        check_positive(prefill_tokens=self.prefill_tokens, bucket_min=self.bucket_min, bucket_max=self.bucket_max)
        if self.bucket_max < self.bucket_min:
            raise ValueError(f"bucket_max ({self.bucket_max}) must be at least bucket_min ({self.bucket_min})")


#: The ``hf`` torch engine (:class:`energybook.measure.torch_engine.TorchEngine`): a cache of n_in + n_out tokens
#: rounded up to 256, one decode graph per 256-token bucket; per request 4 float32 copies of the logits and 64
#: float32 hidden-size vectors; a chunk of up to 16384 prompt tokens with 3 FFN-wide and 12 hidden-wide
#: activations per token (2 bytes each), 64 float32 vocabulary-sized vectors and 1 GiB of headroom.
HF_PROFILE = EngineProfile(
    name="hf", memory_fraction=0.92, prefill_tokens=16384, whole_request_chunks=False, bucket_min=256,
    bucket_max=256, cache_last_token=True, request_vocab_bytes=16, request_hidden_bytes=256,
    chunk_hidden_elements=12, chunk_intermediate_elements=3, fixed_vocab_bytes=256, chunk_element_bytes=2)

#: The ``lean`` engine (:class:`energybook.measure.lean_engine.LeanEngine`): a cache of n_in + n_out - 1 keys
#: rounded up to a bucket edge (32-token buckets below 1024 keys, then context/16, at most 256), int64 token ids
#: over the cache; per request the logits in the dtype (2) and int64 (8 bytes), 3 FFN-wide and 8 hidden-wide
#: float32 decode activations; a chunk of whole requests (16384 // n_in rows) with 3 FFN-wide, 2 query-wide,
#: 2 key/value-wide and 6 hidden-wide activations per token, 4 vocabulary-sized rows per request and 1 GiB.
LEAN_PROFILE = EngineProfile(
    name="lean", memory_fraction=0.92, prefill_tokens=16384, whole_request_chunks=True, bucket_min=32,
    bucket_max=256, cache_last_token=False, request_vocab_bytes=8, request_vocab_elements=2,
    request_hidden_bytes=32, request_intermediate_bytes=12, request_slot_bytes=8, chunk_hidden_elements=6,
    chunk_intermediate_elements=3, chunk_q_elements=2, chunk_kv_elements=2, row_vocab_elements=4)

#: Profiles by engine name (``"torch"`` is the name older calibrations give the ``hf`` engine).
PROFILES = {"hf": HF_PROFILE, "torch": HF_PROFILE, "lean": LEAN_PROFILE}


def profile_for(engine: str) -> EngineProfile:
    """The profile of an engine by name.

    Raises:
        ValueError: for an engine without a profile (the message lists the known ones).
    """
    try:
        return PROFILES[str(engine)]
    except KeyError:
        raise ValueError(f"no batch profile for engine {engine!r}; known: {', '.join(sorted(PROFILES))}") from None


def bucket_edges(limit: int, bucket_min: int = 32, bucket_max: int = 256) -> list[int]:
    """Edges 0 = e_0 < e_1 < ... of the decode-graph buckets, up to the first edge at or above ``limit`` (tokens).

    A bucket starting at ``s`` is ``min(bucket_max, max(bucket_min, p(s) // 16))`` tokens wide, where ``p(s)``
    is the largest power of two at most ``s``: with the lean engine's widths, 32-token buckets below 1024 keys,
    then 64, 128 and 256, so that a bucket's padded keys stay at most about 1/16 of its live ones.

    Args:
        limit: Keys to cover (tokens).
        bucket_min: Narrowest bucket (tokens).
        bucket_max: Widest bucket (tokens).

    Raises:
        ValueError: for non-positive widths or ``bucket_max < bucket_min``.
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


def profile_edges(profile: EngineProfile, limit: int) -> list[int]:
    """:func:`bucket_edges` covering ``limit`` keys with the profile's widths (tokens)."""
    return bucket_edges(limit, profile.bucket_min, profile.bucket_max)


def cache_len(profile: EngineProfile, n_in: int, n_out: int) -> int:
    """Preallocated KV-cache length of one wave (tokens): the first bucket edge at or above the tokens cached,
    ``n_in + n_out`` or ``n_in + n_out - 1`` (:attr:`EngineProfile.cache_last_token`)."""
    check_positive(n_in=n_in, n_out=n_out)
    return profile_edges(profile, n_in + n_out - (0 if profile.cache_last_token else 1))[-1]


def _dtype_bytes(arch: Architecture, dtype_bytes: int | None) -> int:
    return arch.bytes_per_element if dtype_bytes is None else int(dtype_bytes)


def request_bytes(arch: Architecture, n_in: int, n_out: int, profile: EngineProfile,
                  dtype_bytes: int | None = None) -> int:
    """Device memory one request of a wave holds (bytes): its KV cache over :func:`cache_len` tokens, its
    logits, token ids and decode activations.

    Args:
        arch: The model.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request.
        profile: The engine's profile.
        dtype_bytes: Bytes of one element of the engine's dtype (None: the architecture's).
    """
    size = _dtype_bytes(arch, dtype_bytes)
    length = cache_len(profile, n_in, n_out)
    p = profile
    return (arch.kv_elements_per_token * size * length + p.request_slot_bytes * (length + 1)
            + arch.vocab_size * (p.request_vocab_elements * size + p.request_vocab_bytes)
            + p.request_hidden_bytes * arch.hidden_size + p.request_intermediate_bytes * arch.intermediate_size)


def chunk_rows(profile: EngineProfile, n_in: int, max_batch: int) -> int:
    """Requests in one prefill chunk: ``max(1, min(max_batch, prefill_tokens // n_in))``."""
    return max(1, min(max_batch, profile.prefill_tokens // n_in))


def fixed_bytes(arch: Architecture, n_in: int, profile: EngineProfile, max_batch: int,
                dtype_bytes: int | None = None) -> int:
    """Device memory a wave holds whatever its batch (bytes): one prefill chunk's activations, the logits of its
    rows, the LM head's scratch and the headroom.

    Args:
        arch: The model.
        n_in: Prompt tokens per request.
        profile: The engine's profile.
        max_batch: The engine's batch cap (requests).
        dtype_bytes: Bytes of one element of the engine's dtype (None: the architecture's).
    """
    size = _dtype_bytes(arch, dtype_bytes)
    p = profile
    if p.whole_request_chunks:
        rows = chunk_rows(p, n_in, max_batch)
        tokens = rows * n_in
    else:
        rows, tokens = 0, min(p.prefill_tokens, n_in * max_batch)
    per_token = (p.chunk_intermediate_elements * arch.intermediate_size + p.chunk_hidden_elements * arch.hidden_size
                 + p.chunk_q_elements * arch.q_width + p.chunk_kv_elements * arch.kv_width)
    act = size if p.chunk_element_bytes is None else p.chunk_element_bytes
    return (tokens * per_token * act + rows * arch.vocab_size * p.row_vocab_elements * size
            + arch.vocab_size * p.fixed_vocab_bytes + p.headroom_bytes)


def batch_limit(arch: Architecture, n_in: int, n_out: int, free_bytes: float, profile: EngineProfile,
                max_batch: int = 1024, dtype_bytes: int | None = None) -> int:
    """Largest batch of (n_in, n_out) whose KV cache and activations fit (requests; 0 when not even one does).

    Args:
        arch: The model.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request.
        free_bytes: Device memory free once the weights are loaded (bytes): a baseline the engine measures once,
            before its first point, and passes unchanged for every point (the module docstring says why).
        profile: The engine's profile.
        max_batch: The engine's batch cap (requests).
        dtype_bytes: Bytes of one element of the engine's dtype (None: the architecture's).

    Raises:
        ValueError: for non-positive lengths or ``max_batch``.
    """
    check_positive(n_in=n_in, n_out=n_out, max_batch=max_batch)
    per_request = request_bytes(arch, n_in, n_out, profile, dtype_bytes)
    usable = free_bytes * profile.memory_fraction - fixed_bytes(arch, n_in, profile, max_batch, dtype_bytes)
    return max(0, min(max_batch, int(usable // per_request)))


def free_for_batch(arch: Architecture, n_in: int, n_out: int, batch: int, profile: EngineProfile,
                   max_batch: int = 1024, dtype_bytes: int | None = None) -> tuple[float, float]:
    """The range ``[low, high)`` of free memory (bytes) for which :func:`batch_limit` gives exactly ``batch``
    (``high`` is infinite for ``batch == max_batch``): what a measured batch says about the memory it had.

    Raises:
        ValueError: for non-positive lengths or a batch outside 1..max_batch.
    """
    check_positive(batch=batch)
    if batch > max_batch:
        raise ValueError(f"batch {batch} exceeds max_batch {max_batch}")
    per_request = request_bytes(arch, n_in, n_out, profile, dtype_bytes)
    fixed = fixed_bytes(arch, n_in, profile, max_batch, dtype_bytes)
    low = (fixed + batch * per_request) / profile.memory_fraction
    high = math.inf if batch == max_batch else (fixed + (batch + 1) * per_request) / profile.memory_fraction
    return low, high
