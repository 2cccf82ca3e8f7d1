"""Decode attention as one Triton kernel: every query head of a KV head against exactly the live keys.

The lean engine's decode step attends one new token per request to its cached keys. Three things make that
step memory-bound and decide how close it gets to the copy bandwidth:

* **each KV head is read once**: the ``G`` query heads that share it are one (G, h) tile of one program, so the
  keys and values cross the memory bus once per step, not ``G`` times;
* **exactly the live keys are read**: the number of keys, ``pos + 1``, is read *on the device*, so one CUDA
  graph serves a whole bucket of positions and nothing past the live context is loaded;
* **enough programs to fill the GPU**: with few (request, KV head) pairs, the keys are split into chunks
  (flash-decoding), each chunk's softmax is kept with its log-sum-exp, and the chunks are merged exactly.

It reads the engine's cache layout as it is, (B, S, K, h) per layer, with no copy. Triton ships with PyTorch's
CUDA builds, so this is no new binary dependency; where Triton is missing the engine uses its other ways
(:data:`energybook.measure.lean_engine.DECODE_ATTENTION`). On the CPU the kernel runs only under Triton's
interpreter (``TRITON_INTERPRET=1``), which the tests use.

Used in :doc:`/book/comparison`.
"""

from __future__ import annotations

import math

try:  # an optional dependency: the CUDA builds of torch bring it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent (CI's CPU torch)
    triton = None
    tl = None

#: Keys per inner block of the kernel, and its launch settings (``benchmarks/triton_decode_tune.py`` times others).
BLOCK_N = 64
NUM_WARPS = 4
NUM_STAGES = 2
#: From this many keys on (a bucket's end), blocks of 128 keys and 4 stages: 12% faster at 2048 and 8192 keys on
#: an H200 (``benchmarks/results/h200/triton_decode_tune.txt``), the same at 128 and 320.
LONG_KEYS = 1024
LONG_BLOCK_N = 128
LONG_NUM_STAGES = 4
#: Head dims above 128 (Gemma's 256): 32-key blocks, one stage (64-key blocks overflowed an H200's shared memory).
WIDE_BLOCK_N = 32
WIDE_NUM_STAGES = 1
#: Programs the split aims for (a few per multiprocessor of an H100, which has 132).
TARGET_PROGRAMS = 1024
#: The smallest chunk of keys a split program reads.
MIN_CHUNK = 256


def available() -> bool:
    """Whether Triton can be imported here."""
    return triton is not None


def plan_splits(pairs: int, max_keys: int, target: int = TARGET_PROGRAMS, min_chunk: int = MIN_CHUNK,
                block: int = BLOCK_N) -> tuple[int, int]:
    """(splits, chunk): how many chunks each (request, KV head) pair's keys are cut into, and the chunk length.

    Chosen per CUDA graph from the bucket's largest key count ``max_keys``: one chunk when ``pairs`` programs
    already fill the GPU, else enough chunks of at least ``min_chunk`` keys to reach about ``target`` programs.
    The chunk is a multiple of ``block``; ``splits * chunk >= max_keys``.
    """
    if pairs < 1 or max_keys < 1:
        raise ValueError(f"pairs and max_keys must be >= 1, got {pairs} and {max_keys}")
    want = max(1, math.ceil(target / pairs))
    splits = max(1, min(want, math.ceil(max_keys / min_chunk)))
    chunk = math.ceil(math.ceil(max_keys / splits) / block) * block
    return math.ceil(max_keys / chunk), chunk


if triton is not None:

    @triton.jit
    def _decode_kernel(Q, K, V, POS, OUT, LSE, ALIBI,
                       s_qb, s_qk, s_qg, s_kb, s_ks, s_kk, s_vb, s_vs, s_vk,
                       s_ob, s_ok, s_os, s_og, s_lb, s_lk, s_ls,
                       scale, chunk, softcap, window, alibi_scale,
                       KV_HEADS: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                       DP: tl.constexpr, BLOCK: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                       HAS_WINDOW: tl.constexpr, ROUND_ALIBI: tl.constexpr):
        pair = tl.program_id(0)
        split = tl.program_id(1)
        b = pair // KV_HEADS
        kh = pair % KV_HEADS
        live = tl.load(POS).to(tl.int32) + 1
        start = split * chunk
        end = tl.minimum(start + chunk, live)
        if HAS_WINDOW:  # a sliding window: the last ``window`` keys only (key j seen when live - window <= j)
            start = tl.maximum(start, live - window)
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, DP)
        offs_n = tl.arange(0, BLOCK)
        mask_g = offs_g < G
        mask_d = offs_d < D
        q = tl.load(Q + b * s_qb + kh * s_qk + offs_g[:, None] * s_qg + offs_d[None, :],
                    mask=mask_g[:, None] & mask_d[None, :], other=0.0)
        if HAS_ALIBI:  # each query head's slope (times the scale), added per key position
            slope = tl.load(ALIBI + kh * G + offs_g, mask=mask_g, other=0.0)
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, DP], tl.float32)
        k_base = K + b * s_kb + kh * s_kk
        v_base = V + b * s_vb + kh * s_vk
        for n0 in range(start, end, BLOCK):
            n = n0 + offs_n
            mask_n = n < end
            k = tl.load(k_base + n[:, None] * s_ks + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :],
                        other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            if HAS_SOFTCAP:  # Gemma 2: softcap * tanh(s / softcap), tanh written through the sigmoid
                s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
            if HAS_ALIBI:
                if ROUND_ALIBI:  # as transformers builds it: slope x position in bf16 (the position itself
                    # rounded to bf16 first, as torch casts an integer operand), then the scale in q's dtype
                    # (round to nearest even, said explicitly: Triton's interpreter truncates by default)
                    bias = slope[:, None] * n[None, :].to(tl.float32).to(tl.bfloat16, fp_downcast_rounding="rtne")
                    bias = bias.to(tl.float32).to(tl.bfloat16, fp_downcast_rounding="rtne").to(tl.float32)
                    bias = (bias * alibi_scale).to(Q.dtype.element_ty, fp_downcast_rounding="rtne").to(tl.float32)
                else:
                    bias = slope[:, None] * n[None, :].to(tl.float32)
                s += bias
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + n[:, None] * s_vs + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :],
                        other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / safe[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log(safe), float("-inf"))
        tl.store(OUT + b * s_ob + kh * s_ok + split * s_os + offs_g[:, None] * s_og + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
        tl.store(LSE + b * s_lb + kh * s_lk + split * s_ls + offs_g, lse, mask=mask_g)


def decode_attention(q, kc, vc, pos, scale: float, max_keys: int, splits: tuple[int, int] | None = None,
                     block: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                     alibi=None, softcap: float | None = None, window: int | None = None,
                     alibi_scale: float | None = None):
    """Attention of folded decode queries over exactly the live keys of one layer's cache.

    Args:
        q: (B, K, G, h) queries, the ``G`` query heads of each KV head together.
        kc, vc: (B, S, K, h) the layer's keys and values (the engine's cache, any strides with h contiguous).
        pos: (1,) long tensor on the device: the position just written; keys ``0 .. pos`` are live.
        scale: Softmax scale.
        max_keys: The most live keys this call can meet (the bucket's end): sizes the split, read on the host.
        splits: (splits, chunk) to use instead of :func:`plan_splits`.
        block, num_warps, num_stages: Kernel settings instead of :data:`BLOCK_N`, :data:`NUM_WARPS`,
            :data:`NUM_STAGES`.
        alibi: (K * G,) float32 per query head (KV head major): ``slope * scale``, added to the scaled logit of the
            key at position ``n`` times ``n`` (ALiBi); None: no bias.
        alibi_scale: With ``alibi`` holding the raw slopes: the bias of key ``n`` is rounded as transformers
            rounds it, ``(slope * n)`` to bfloat16 with ``n`` itself rounded to bfloat16 first (torch casts the
            integer positions to the slopes' dtype), times ``alibi_scale``, rounded to q's dtype (Falcon's
            ``build_alibi_tensor`` and the scale of the logits); None: ``alibi`` already holds ``slope * scale``,
            unrounded.
        softcap: Logit soft-capping (Gemma 2): each scaled logit ``s`` becomes ``softcap * tanh(s / softcap)``.
        window: A sliding window: only the last ``window`` live keys are read (keys ``pos - window + 1 .. pos``).

    Returns:
        (B, K, G, h) in q's dtype.
    """
    if triton is None:
        raise RuntimeError("Triton is not installed: decode_attention='triton' needs it (it comes with "
                           "PyTorch's CUDA builds); choose another decode_attention")
    import torch

    b, k_heads, groups, d = q.shape
    if kc.shape[0] != b or kc.shape[2] != k_heads or kc.shape[3] != d or kc.stride(3) != 1 or vc.stride(3) != 1:
        raise ValueError(f"cache shape {tuple(kc.shape)} (strides {kc.stride()}) does not fit queries "
                         f"{tuple(q.shape)}: expected (B, S, K, h) with h contiguous")
    if q.stride(3) != 1:
        q = q.contiguous()
    long = max_keys >= LONG_KEYS  # longer contexts: bigger key blocks, deeper pipelining
    wide = d > 128  # Gemma's head dim 256: smaller tiles, or the pipeline's buffers overflow shared memory
    block = block or (WIDE_BLOCK_N if wide else LONG_BLOCK_N if long else BLOCK_N)
    num_stages = num_stages or (WIDE_NUM_STAGES if wide else LONG_NUM_STAGES if long else NUM_STAGES)
    n_split, chunk = splits or plan_splits(b * k_heads, max_keys, block=block)
    if n_split * chunk < max_keys:
        raise ValueError(f"{n_split} chunks of {chunk} keys do not cover max_keys={max_keys}")
    direct = n_split == 1
    out = torch.empty((b, k_heads, n_split, groups, d), device=q.device,
                      dtype=q.dtype if direct else torch.float32)
    lse = torch.empty((b, k_heads, n_split, groups), device=q.device, dtype=torch.float32)
    gp = max(16, triton.next_power_of_2(groups))
    dp = max(16, triton.next_power_of_2(d))
    if alibi is not None:
        alibi = alibi.to(device=q.device, dtype=torch.float32).contiguous()
        if alibi.numel() != k_heads * groups:
            raise ValueError(f"alibi has {alibi.numel()} slopes for {k_heads * groups} query heads")
    _decode_kernel[(b * k_heads, n_split)](
        q, kc, vc, pos, out, lse, alibi if alibi is not None else lse,
        q.stride(0), q.stride(1), q.stride(2), kc.stride(0), kc.stride(1), kc.stride(2),
        vc.stride(0), vc.stride(1), vc.stride(2),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3), lse.stride(0), lse.stride(1), lse.stride(2),
        scale, chunk, float(softcap or 1.0), int(window or 0), float(alibi_scale or 1.0), KV_HEADS=k_heads,
        G=groups, GP=gp, D=d, DP=dp, BLOCK=block, HAS_ALIBI=alibi is not None, HAS_SOFTCAP=bool(softcap),
        HAS_WINDOW=bool(window), ROUND_ALIBI=alibi_scale is not None, num_warps=num_warps or NUM_WARPS,
        num_stages=num_stages)
    if direct:
        return out[:, :, 0]
    weights = torch.softmax(lse, dim=2).nan_to_num_(0.0)  # empty chunks (lse -inf) weigh nothing
    return (out * weights.unsqueeze(-1)).sum(2).to(q.dtype)
