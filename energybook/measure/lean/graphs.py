"""The lean engine's decode buckets and CUDA graphs: the (bucket, steps) plan of a request (:func:`plan`) over the
bucket edges of the one batch rule (:func:`energybook.model.batch.bucket_edges`), the device buffers of one batch
(:class:`WaveState`), and :class:`GraphRunner`, which warms up, captures and replays a step callable (one graph per
bucket, all in one memory pool) or times one.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


def plan(edges: list[int], n_in: int, n_out: int) -> list[tuple[int, int, int]]:
    """(lo, hi, steps) for the decode steps of a request: fed positions n_in .. n_in + n_out - 2.

    Args:
        edges: Bucket edges covering ``n_in + n_out - 1`` keys (:func:`energybook.model.batch.bucket_edges`).
        n_in: Prompt tokens per request.
        n_out: Tokens generated per request.
    """
    if n_out < 2:
        return []
    first, last = n_in, n_in + n_out - 2
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


def ranges(paths: dict, before: str = "") -> str:
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
class WaveState:
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
        """Bytes of the KV cache and the token buffer."""
        return int(self.cache.nbytes + self.out.nbytes)

    @classmethod
    def allocate(cls, torch, arch, dtype, device, batch: int, cache_len: int,
                 alibi: Callable | None = None) -> WaveState:
        """Zeroed buffers of ``batch`` requests and ``cache_len`` keys for a model of architecture ``arch``;
        ``alibi(keys)``: the ALiBi bias of key positions (ALiBi models)."""
        cache = torch.zeros(arch.num_layers, 2, batch, cache_len, arch.num_kv_heads, arch.head_dim, dtype=dtype,
                            device=device)
        w = cls(batch, cache_len, cache, torch.zeros(batch, dtype=torch.long, device=device),
                torch.zeros(1, dtype=torch.long, device=device),
                torch.full((batch, cache_len + 1), -1, dtype=torch.long, device=device),
                torch.arange(cache_len, device=device),
                used=torch.ones(batch, dtype=torch.int32, device=device),
                cu_q=torch.arange(batch + 1, dtype=torch.int32, device=device),
                cu_k=torch.arange(batch + 1, dtype=torch.int32, device=device) * cache_len)
        if alibi is not None:
            w.alibi = alibi(w.key_idx)
        if device.type == "cuda":
            w.pool = torch.cuda.graph_pool_handle()
        return w


@dataclass
class Preparation:
    """What :meth:`~energybook.measure.lean.engine.LeanEngine.prepare` did.

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


class GraphRunner:
    """CUDA graphs of step callables on one device, warmed up on one side stream.

    Args:
        torch: The ``torch`` module.
        device: The CUDA device.
    """

    def __init__(self, torch, device):
        self.torch, self.device = torch, device
        self._stream = None

    def side_stream(self):
        """The side stream of eager warm-ups before a capture (one per runner)."""
        if self._stream is None:
            self._stream = self.torch.cuda.Stream(device=self.device)
        return self._stream

    def capture(self, body: Callable[[], None], pool, warmups: int, reset: Callable[[], Any]):
        """Run ``body`` ``warmups`` times eagerly on the side stream, capture it into a CUDA graph in ``pool``,
        replay the graph once (its first launch uploads it); ``reset`` restores the device position before each
        run."""
        torch = self.torch
        dev = self.device
        s = self.side_stream()
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

    def time(self, body: Callable[[], None], replays: int = 5) -> float:
        """Mean time of one replay of ``body``'s graph (milliseconds), captured after one warm-up."""
        torch = self.torch
        g = self.capture(body, None, 1, reset=lambda: None)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(replays):
            g.replay()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) / replays
