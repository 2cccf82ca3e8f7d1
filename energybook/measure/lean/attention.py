"""The lean engine's attention: one class per way a decode step attends (:data:`WAYS`), each with
``available`` / ``context`` / ``attend``; :class:`Auto`, which picks a way per bucket (the fastest that passed the
checks, timed inside a CUDA graph); and :class:`PrefillAttention`, a prompt's causal attention over its own keys.

Decode attention takes folded queries q (B, K, G, h) and one layer's cache kc, vc (B, S, K, h) and returns
(B, K, G, h) in the model's dtype. ``context`` makes, from the device position (so, inside a graph), the per-step
tensors ``attend`` needs.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import logging
import math

from energybook.measure.engines import EngineUnavailable
from energybook.measure.lean.layers import _flash_with_lse
from energybook.measure.wave import causal_mask, softcapped_attention

logger = logging.getLogger(__name__)

#: Ways to attend inside a decode graph (:mod:`energybook.measure.lean.engine`); ``"auto"`` picks among them per
#: bucket.
DECODE_ATTENTION = ("masked", "split", "varlen", "triton")
#: The ways that apply a sliding window and Gemma 2's logit soft-capping (flash's kernels here take neither).
WINDOWED = ("masked", "triton")


class Way:
    """One way to attend in a decode step; ``eng`` is the :class:`~energybook.measure.lean.engine.LeanEngine`."""

    name = ""
    #: The way applies a sliding window and soft-capping.
    windowed = False
    #: The way reads no bias (ALiBi) and no soft-cap.
    plain = True
    #: The way runs on CUDA only.
    cuda_only = False

    def __init__(self, eng):
        self.eng = eng

    def available(self) -> bool:
        """Whether the way can run for this model on this device (before the numerical check on CUDA)."""
        e = self.eng
        if self.plain and (e.config.positions == "alibi" or e.config.attn_softcap is not None):
            return False
        return e.device.type == "cuda" or not self.cuda_only

    def context(self, w, lo: int, hi: int, window: int | None = None):
        """Per-step tensors of bucket [lo, hi) from the wave state ``w`` (a sliding ``window`` keeps the last
        ``window`` live keys)."""
        if window is not None and not self.windowed:
            raise ValueError(f"decode attention {self.name!r} does not apply a sliding window")
        return self._context(w, lo, hi, window)

    def _context(self, w, lo: int, hi: int, window: int | None):
        raise NotImplementedError

    def attend(self, q, kc, vc, ctx, lo: int = 0):
        """Attention of q (B, K, G, h) over kc, vc (B, S, K, h) with ``ctx`` from :meth:`context`."""
        raise NotImplementedError


class Exact(Way):
    """Eager decode: SDPA over exactly the live keys (the window's only); ctx (first key, live keys, ALiBi bias)."""

    name, windowed, plain = "exact", True, False

    def _context(self, w, lo, hi, window):
        start = max(0, hi - window) if window else 0
        return (start, hi, None if w.alibi is None else w.alibi[..., start:hi])

    def attend(self, q, kc, vc, ctx, lo=0):
        import torch.nn.functional as F

        scale, cap = self.eng.config.attention_scale, self.eng.config.attn_softcap
        start, live, bias = ctx
        k, v = kc[:, start:live].transpose(1, 2), vc[:, start:live].transpose(1, 2)
        if cap is not None:
            return softcapped_attention(q, k, v, bias, scale, cap)
        return F.scaled_dot_product_attention(q, k, v, scale=scale, attn_mask=bias)


class Masked(Way):
    """SDPA over the bucket's prefix [0, hi) under an additive mask (1, 1, 1, hi) over the keys not yet written."""

    name, windowed, plain = "masked", True, False

    def _context(self, w, lo, hi, window):
        torch = self.eng.torch
        dtype = self.eng.dtype
        idx = w.key_idx[:hi]
        seen = idx <= w.pos
        if window is not None:
            seen = seen & (idx > w.pos - window)
        if w.alibi is not None:
            return torch.where(seen.view(1, 1, 1, hi), w.alibi[..., :hi], torch.finfo(dtype).min)
        return torch.where(seen, 0.0, torch.finfo(dtype).min).to(dtype).view(1, 1, 1, hi)

    def attend(self, q, kc, vc, ctx, lo=0):
        import torch.nn.functional as F

        scale, cap = self.eng.config.attention_scale, self.eng.config.attn_softcap
        hi = ctx.shape[-1]
        if cap is not None:
            return softcapped_attention(q, kc[:, :hi].transpose(1, 2), vc[:, :hi].transpose(1, 2), ctx, scale, cap)
        return F.scaled_dot_product_attention(q, kc[:, :hi].transpose(1, 2), vc[:, :hi].transpose(1, 2),
                                              attn_mask=ctx, scale=scale)


class Split(Masked):
    """Flash over the complete prefix [0, lo) with its log-sum-exp, an explicit masked softmax over the bucket's keys
    [lo, hi) (a float32 bias (hi - lo,)), and an exact merge; the first bucket (lo 0) as ``masked``."""

    name, windowed, plain = "split", False, True

    def _context(self, w, lo, hi, window):
        if lo == 0:
            return super()._context(w, lo, hi, window)
        torch = self.eng.torch
        idx = w.key_idx[lo:hi]
        return torch.where(idx <= w.pos, 0.0, torch.finfo(torch.float32).min)

    def attend(self, q, kc, vc, ctx, lo=0):
        if lo == 0:
            return super().attend(q, kc, vc, ctx, lo)
        e = self.eng
        hi = lo + ctx.shape[0]
        o1, lse1 = _flash_with_lse(q, kc[:, :lo].transpose(1, 2), vc[:, :lo].transpose(1, 2), e.config.attention_scale)
        tail = e._fns[e._small(q.shape[0])][3]
        return tail(q, kc[:, lo:hi].transpose(1, 2), vc[:, lo:hi].transpose(1, 2), ctx, o1, lse1,
                    e.config.attention_scale)


class Varlen(Way):
    """Flash attention's variable-length kernel with ``seqused_k``: exactly the live keys (CUDA only)."""

    name, cuda_only = "varlen", True

    def _context(self, w, lo, hi, window):
        w.used.copy_((w.pos + 1).expand(w.used.shape[0]))
        return (w.cu_q, w.cu_k, w.used, hi)

    def attend(self, q, kc, vc, ctx, lo=0):
        torch = self.eng.torch
        cu_q, cu_k, used, hi = ctx
        b, k_heads, groups, h = q.shape
        out = torch.ops.aten._flash_attention_forward(
            q.reshape(b, k_heads * groups, h), kc.view(-1, k_heads, h), vc.view(-1, k_heads, h), cu_q, cu_k, 1,
            hi, 0.0, False, False, scale=self.eng.config.attention_scale, seqused_k=used)[0]
        return out.view(b, k_heads, groups, h)


class Triton(Way):
    """One Triton kernel (:mod:`energybook.measure.triton_decode`) reading the live key count on the device;
    ctx (position, hi, window, splits; None: the kernel's own plan). CUDA with Triton only."""

    name, windowed, plain, cuda_only = "triton", True, False, True

    def available(self) -> bool:
        from energybook.measure import triton_decode

        if not super().available():
            return False
        if not triton_decode.available():
            logger.info("triton decode attention unavailable here (no Triton): not used")
            return False
        return True

    def _context(self, w, lo, hi, window):
        return (w.pos, hi, window, None)

    def attend(self, q, kc, vc, ctx, lo=0):
        from energybook.measure import triton_decode

        e = self.eng
        pos, hi, window, splits = ctx
        slopes = alibi_scale = None
        if e.alibi is not None:  # raw slopes; the kernel rounds the bias as transformers builds it
            slopes, alibi_scale = e.alibi.to(e.torch.bfloat16).float(), 1 / math.sqrt(e.arch.head_dim)
        return triton_decode.decode_attention(q, kc, vc, pos, e.config.attention_scale, hi, alibi=slopes,
                                              softcap=e.config.attn_softcap, window=window, alibi_scale=alibi_scale,
                                              splits=splits)


#: Every way by name: the graphs' ways (:data:`DECODE_ATTENTION`) and eager decode's ``exact``.
WAYS = {cls.name: cls for cls in (Exact, Masked, Split, Varlen, Triton)}


def check_ways(eng, ways: dict) -> tuple[str, ...]:
    """The decode attention ways that match eager attention here (CUDA: checked on random tensors), in
    :data:`DECODE_ATTENTION`'s order; ``masked`` always."""
    from energybook.measure.lean.graphs import WaveState

    names = [n for n in DECODE_ATTENTION if ways[n].available()]
    if eng.device.type != "cuda":
        return tuple(names)
    torch = eng.torch
    ok = ["masked"]
    g = torch.Generator(device=eng.device).manual_seed(0)
    # The model's own head counts and width: a kernel's tiles (and its shared memory) follow them.
    b, h, s, live = 3, eng.arch.head_dim, 512, 300
    k, groups = eng.arch.num_kv_heads, eng.arch.num_heads // eng.arch.num_kv_heads

    def r(*shape):
        return torch.randn(*shape, device=eng.device, dtype=eng.dtype, generator=g)

    # q as the step makes it: the query heads sliced out of the rotary output (B, H + K, h), then folded.
    q = r(b, k * groups + k, h)[:, : k * groups].reshape(b, k, groups, h)
    kc, vc = r(b, s, k, h), r(b, s, k, h)
    bias = eng._alibi_bias(torch.arange(s, device=eng.device)) if eng.alibi is not None else None
    ref = softcapped_attention(q.float(), kc[:, :live].transpose(1, 2).float(), vc[:, :live].transpose(1, 2).float(),
                               None if bias is None else bias[..., :live].float(), eng.config.attention_scale,
                               eng.config.attn_softcap)
    pos = torch.full((1,), live - 1, dtype=torch.long, device=eng.device)
    state = WaveState(b, s, None, None, pos, torch.zeros(1), torch.arange(s, device=eng.device),
                      used=torch.empty(b, dtype=torch.int32, device=eng.device),
                      cu_q=torch.arange(b + 1, dtype=torch.int32, device=eng.device),
                      cu_k=torch.arange(b + 1, dtype=torch.int32, device=eng.device) * s, alibi=bias)
    for name in names[1:]:
        way = ways[name]
        try:
            ctx = way.context(state, 256, 320)
            got = way.attend(q, kc, vc, ctx, 256)
            err = float((got.float() - ref).norm() / ref.norm())
            if name == "triton":  # also unsplit: another kernel specialisation, as at large batches
                got = way.attend(q, kc, vc, ctx[:3] + ((1, 320),), 256)
                err = max(err, float((got.float() - ref).norm() / ref.norm()))
            if err < 2e-2:
                ok.append(name)
            else:
                logger.warning("%s decode attention disagrees with SDPA here (rel. error %.3g): not used", name, err)
        except Exception as exc:  # noqa: BLE001 - a kernel this build lacks
            logger.warning("%s decode attention unavailable here (%s): not used", name, exc)
    return tuple(ok)


class Auto:
    """The way of each bucket: the configured one, or (``"auto"``) the fastest that passed the checks, timed inside a
    CUDA graph at the wave's batch (:meth:`tune`)."""

    def __init__(self, eng):
        self.eng = eng

    def choose(self, lo: int, hi: int, w, tune: bool) -> str:
        """The attention way of bucket [lo, hi) for the wave state ``w``."""
        e = self.eng
        windowed = e._binding(hi) != {None}  # a sliding window binds somewhere in this bucket
        if e.decode_attention != "auto":
            if e.decode_attention not in e.paths_available:
                raise EngineUnavailable(f"decode_attention={e.decode_attention!r} is not available here "
                                        f"(available: {', '.join(e.paths_available)})")
            if windowed and e.decode_attention not in WINDOWED:  # recorded in decode_attention_chosen
                return "triton" if "triton" in e.paths_available else "masked"
            return e.decode_attention if (lo or e.decode_attention != "split") else "masked"
        # ``split`` is timed only uncompiled: compiled, its merge is compiled once per bucket width, seconds each.
        candidates = [p for p in e.paths_available if (p != "split" or (lo and not e.compile))
                      and (p in WINDOWED or not windowed)]
        if not tune or len(candidates) == 1 or e.device.type != "cuda":
            return candidates[0]
        return self.tune(w, lo, hi, candidates)

    def tune(self, w, lo: int, hi: int, candidates: list[str]) -> str:
        """Time one layer's attention of each candidate in a CUDA graph at this batch and bucket; the fastest."""
        e = self.eng
        torch, a = e.torch, e.arch
        q = torch.randn(w.batch, a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_dim, device=e.device,
                        dtype=e.dtype)
        kc, vc = w.cache[0, 0], w.cache[0, 1]
        w.pos.fill_(hi - 1)
        times = {}
        for path in candidates:
            way = e.ways[path]
            ctx = way.context(w, lo, hi)
            times[path] = e.runner.time(lambda way=way, ctx=ctx: way.attend(q, kc, vc, ctx, lo))
        best = min(times, key=times.get)
        logger.debug("batch %d bucket [%d, %d): %s -> %s", w.batch, lo, hi,
                     {k: round(v * 1e3, 1) for k, v in times.items()}, best)
        return best

class PrefillAttention:
    """Causal attention of a prompt over its own keys: q (b, H, n, h), k and v (b, K, n, h); ``eng`` is the
    :class:`~energybook.measure.lean.engine.LeanEngine`.

    Attributes:
        gqa: ``"enable_gqa"`` when causal SDPA runs flash with grouped KV heads here, else ``"repeat"`` (or
            ``"none (multi-head)"``).
        block_masks: FlexAttention's block masks per (prompt length, window).
    """

    def __init__(self, eng):
        self.eng = eng
        self.torch, self.device, self.dtype = eng.torch, eng.device, eng.dtype
        self.config = eng.config
        self._flex, self.block_masks = None, {}  # FlexAttention (compiled on CUDA) and its masks per (n, window)
        self.gqa = self._check_gqa()

    def _check_gqa(self) -> str:
        """``"enable_gqa"`` when causal SDPA runs flash with grouped KV heads here, else ``"repeat"``."""
        torch = self.torch
        if not self.eng.arch.is_gqa:
            return "none (multi-head)"
        if self.device.type != "cuda":
            return "enable_gqa"
        from torch.nn.attention import SDPBackend, sdpa_kernel

        a = self.eng.arch
        q = torch.zeros(1, a.num_heads, 128, a.head_dim, device=self.device, dtype=self.dtype)
        k = torch.zeros(1, a.num_kv_heads, 128, a.head_dim, device=self.device, dtype=self.dtype)
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
            return "enable_gqa"
        except (RuntimeError, TypeError) as exc:
            logger.warning("flash attention refuses enable_gqa here (%s): prefill repeats the KV heads", exc)
            return "repeat"

    def attend(self, q, k, v, window: int | None = None):
        """Causal attention of a prompt over its own keys: q (b, H, n, h), k and v (b, K, n, h).

        Soft-capped logits (Gemma 2) or a sliding window shorter than the prompt go, on CUDA, through compiled
        FlexAttention (:meth:`flex`: the cap as a score modification, causality and the window as a block
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
                return self.flex(q, k, v, window)
            groups = q.shape[1] // k.shape[1]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            mask = causal_mask(n, n, window, q.device, q.dtype)
            return softcapped_attention(q, k, v, mask, scale, self.config.attn_softcap)
        if self.eng.alibi is not None:  # causal mask with the ALiBi bias: (1, H, n, n), one chunk's prompts share it
            torch = self.torch
            n = q.shape[2]
            keys = torch.arange(n, device=q.device)
            bias = self.eng._alibi_bias(keys).reshape(1, -1, 1, n)
            causal = (keys[None, :] <= keys[:, None]).view(1, 1, n, n)
            mask = torch.where(causal, bias, torch.finfo(self.dtype).min)
            groups = q.shape[1] // k.shape[1]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        groups = q.shape[1] // k.shape[1]
        if groups > 1 and self.gqa == "repeat":
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            groups = 1
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=groups > 1)

    def flex(self, q, k, v, window: int | None):
        """FlexAttention over one chunk: the soft-cap as ``score_mod``, causal (and windowed) ``block_mask``."""
        torch = self.torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        n = q.shape[2]
        key = (n, window)
        masks = self.block_masks
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
