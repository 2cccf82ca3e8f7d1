"""What both wave engines share: a wave's clock readings and result, its checks, prompts and dummy weights, and
attention by explicit products under an additive mask (Gemma 2's soft-capping).

The ``hf`` engine (:mod:`energybook.measure.torch_engine`) and the ``lean`` engine (:mod:`energybook.measure.lean`)
both import these from here.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from energybook.model.complexity import check_positive

logger = logging.getLogger(__name__)


def causal_mask(q_len: int, k_len: int, window: int | None, device, dtype):
    """Additive (q_len, k_len) mask: the queries are the last q_len of k_len positions; a window keeps the last
    ``window`` keys of each query (transformers' convention: key j is seen from i when i - window < j <= i)."""
    import torch

    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    seen = k_pos <= q_pos
    if window:
        seen &= k_pos > q_pos - window
    return torch.where(seen, 0.0, torch.finfo(dtype).min).to(dtype)


def softcapped_attention(query, key, value, mask, scaling: float, softcap: float | None):
    """Attention by explicit products, with Gemma 2's logit soft-capping (when ``softcap`` is set) before the additive
    ``mask``: SDPA has no soft-capping. The softmax in float32, as transformers' eager attention; query (..., Q, h),
    key and value (..., S, h) with matching leading axes."""
    import torch

    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value)



@dataclass
class WaveTimes:
    """Clock readings of one generated wave (``time.perf_counter`` seconds, device synchronised).

    Attributes:
        start: Before the prefill.
        prefill_end: After the prefill (the first output token exists).
        checkpoints: Tokens generated per request -> time at which they all exist.
        end: After the last decode step.
    """

    start: float
    prefill_end: float
    end: float
    checkpoints: dict[int, float] = field(default_factory=dict)


def check_wave(engine, n_in: int, n_out: int, batch: int, checkpoints) -> list[int]:
    """Check a wave's request against an engine (lengths, batch cap, positions); returns the sorted checkpoints.

    Raises:
        ValueError: naming the bad value.
    """
    check_positive(n_in=n_in, n_out=n_out, batch=batch)
    if batch > engine.max_batch:
        raise ValueError(f"batch {batch} exceeds max_batch {engine.max_batch}")
    engine.check_lengths(n_in, n_out)
    checkpoints = sorted(set(checkpoints or []))
    if any(c < 1 or c > n_out for c in checkpoints):
        raise ValueError(f"checkpoints must lie in 1..n_out ({n_out}), got {checkpoints}")
    return checkpoints


def random_prompts(torch, vocab: int, seed: int, n_in: int, batch: int, device, kind: str = "random"):
    """A wave's prompts, ``batch`` x ``n_in`` token ids seeded by (seed, n_in, batch): every engine generates the
    same prompts for the same wave. ``kind`` ``"random"``: independent random ids; ``"repeated"``: one random id
    (seeded the same way) in every position of every prompt."""
    gen = torch.Generator(device=device).manual_seed(seed + 7919 * n_in + batch)
    if kind == "repeated":
        token = torch.randint(0, vocab, (1, 1), device=device, generator=gen)
        return token.expand(batch, n_in).contiguous()
    if kind != "random":
        raise ValueError(f"prompts must be 'random' or 'repeated', got {kind!r}")
    return torch.randint(0, vocab, (batch, n_in), device=device, generator=gen)


def init_dummy_(tensor, spec: str, generator):
    """Fill a weight matrix in place with the dummy distribution ``spec``
    (:func:`energybook.measure.protocol.parse_weight_init`): normal, zeros or scaled Student's t."""
    from energybook.measure.protocol import parse_weight_init

    kind, values = parse_weight_init(spec)
    if kind == "zeros":
        return tensor.zero_()
    if kind == "normal":
        return tensor.normal_(0.0, values[0], generator=generator)
    df, std = values  # Student's t: a normal over the root of an independent chi-square / df, scaled to std
    import torch

    z = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device).normal_(generator=generator)
    chi2 = torch.zeros_like(z)
    for _ in range(int(df)):
        chi2 += torch.empty_like(z).normal_(generator=generator) ** 2
    frac = df - int(df)
    if frac:  # a fractional part of the degrees of freedom: gamma through torch's own sampler (not seeded here)
        chi2 += torch.distributions.Gamma(frac / 2, 0.5).sample(z.shape).to(z.device)
    t = z / torch.sqrt(chi2 / df)
    return tensor.copy_(t * (std / (df / (df - 2)) ** 0.5))


def checkpoint_marker(times: WaveTimes, checkpoints, clock: Callable[[], float],
                      on_checkpoint: Callable[[int, float], None] | None = None) -> Callable[[int], None]:
    """``mark(k)``: at a checkpoint (``k`` output tokens per request), read the clock into ``times``."""

    def mark(k: int) -> None:
        if k in checkpoints:
            t = clock()
            times.checkpoints[k] = t
            if on_checkpoint is not None:
                on_checkpoint(k, t)

    return mark


@dataclass
class Wave:
    """Result of :meth:`TorchEngine.generate`.

    Attributes:
        batch: Requests in the wave.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request (verified).
        times: Clock readings.
        cuda_graphs: Whether decode ran through CUDA graphs.
    """

    batch: int
    n_in: int
    n_out: int
    times: WaveTimes
    cuda_graphs: bool

    @property
    def tokens_in(self) -> int:
        """Prompt tokens of the wave."""
        return self.batch * self.n_in

    @property
    def tokens_out(self) -> int:
        """Generated tokens of the wave."""
        return self.batch * self.n_out

    @property
    def duration_s(self) -> float:
        """Wall time of the wave (seconds)."""
        return self.times.end - self.times.start


def free_baseline_bytes(engine, held_bytes: int = 0) -> int:
    """Device memory free for waves (bytes), read once per engine, at its first batch decision, and kept.

    Every later point budgets from the same figure, so the batch a point gets does not depend on what ran before it
    (graph pools and compiled workspaces that earlier points left would otherwise count as used). ``held_bytes`` is
    memory the engine holds for its current wave and frees for a new one. Recorded in ``engine.settings`` as
    ``free_baseline_bytes``.
    """
    if getattr(engine, "_free_baseline", None) is None:
        engine.torch.cuda.empty_cache()
        free, _ = engine.torch.cuda.mem_get_info(engine.device)
        engine._free_baseline = int(free) + int(held_bytes)
        engine.settings["free_baseline_bytes"] = engine._free_baseline
    return engine._free_baseline


def batch_limit(engine, n_in: int, n_out: int, held_bytes: int = 0) -> int:
    """Largest batch of (n_in, n_out) requests an engine runs (requests): the one batch rule,
    :func:`energybook.model.batch.batch_limit`, with the engine's ``profile`` and its baseline free memory
    (:func:`free_baseline_bytes`); ``max_batch`` on the CPU."""
    from energybook.model import batch as B

    check_positive(n_in=n_in, n_out=n_out)
    if engine.device.type != "cuda":
        return engine.max_batch
    free = free_baseline_bytes(engine, held_bytes)
    return B.batch_limit(engine.arch, n_in, n_out, free, engine.profile, engine.max_batch, engine.dtype.itemsize)
