"""The pieces the sampled protocol measures (:mod:`energybook.measure.sampled`), run by the lean engine:

* :func:`prefill_piece`: one prefill of ``batch`` prompts of ``n_in`` tokens, chunked as a wave's prefill is;
* :func:`decode_piece`: decode steps at a context, the KV cache filled directly to that length (:func:`fill_cache`:
  random values of the spread real keys and values have, not those of real prompts: the same bytes read and the
  same products; ``benchmarks/kv_contents.py`` measures whether the contents move the energy: random, zeros, and
  the keys and values of a real prefill to that context).

Each returns a callable that runs the piece once (no synchronisation); the caller repeats it over an energy
window and divides. A decode piece runs ``STRIDE + 1`` steps from ``context - STRIDE // 2`` (inside one graph bucket),
so that its mean context is the one asked for (the step cost is close to affine in the context) and the position
is reset once per ``STRIDE + 1`` steps rather than every step.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

from collections.abc import Callable

STRIDE = 16
"""Decode steps per reset of the position (their mean context is the sample's)."""
#: What the KV cache holds when a decode piece runs: N(0, 1) values (the default; roughly the spread of the keys and
#: values that random weights of std 0.02 give after a normalised input) or zeros (what an allocated cache holds).
CACHE_FILLS = ("random", "zeros")


def fill_cache(engine, kind: str = "random", seed: int = 0) -> None:
    """Fill the prepared batch's whole KV cache in place: ``"random"`` (N(0, 1), seeded) or ``"zeros"``.

    Raises:
        ValueError: an unknown kind (see :data:`CACHE_FILLS`).
        RuntimeError: no batch is prepared.
    """
    if kind not in CACHE_FILLS:
        raise ValueError(f"cache fill must be one of {CACHE_FILLS}, got {kind!r}")
    w = engine._wave
    if w is None:
        raise RuntimeError("prepare a batch first (prepare_pieces)")
    torch = engine.torch
    with torch.inference_mode():
        if kind == "zeros":
            w.cache.zero_()
            return
        gen = torch.Generator(device=w.cache.device).manual_seed(int(seed))
        for layer in w.cache:  # one layer at a time: no cache-sized float32 temporary
            layer.normal_(generator=gen)


def prepare_pieces(engine, batch: int, contexts: tuple[int, ...], prompt_lengths: tuple[int, ...] = (),
                   cache_fill: str = "random") -> None:
    """Make the state, prefill shapes and decode graphs of every piece of one batch, before any measured window:
    one KV cache for the longest context, filled (:func:`fill_cache`), and the graph of every bucket the contexts
    touch."""
    top = max(contexts) if contexts else 2
    lo = max(1, min(contexts) - STRIDE) if contexts else 1
    engine.prepare(lo, top + STRIDE - lo + 1, batch)  # cache and graphs over the whole ladder
    for n_in in prompt_lengths:
        engine.prepare(n_in, 2, batch)
    fill_cache(engine, cache_fill, getattr(engine, "seed", 0))


def prefill_piece(engine, n_in: int, batch: int) -> Callable[[], None]:
    """One prefill of ``batch`` random prompts of ``n_in`` tokens into the prepared cache (chunked as in a wave)."""
    from energybook.measure.wave import random_prompts

    torch = engine.torch
    w = engine._wave
    if w is None or w.batch != batch:
        raise RuntimeError(f"prepare batch {batch} first (prepare_pieces)")
    prompts = random_prompts(torch, engine.vocab, engine.seed, n_in, batch, engine.device, engine.prompts)
    chunk = max(1, engine.prefill_tokens // n_in)

    def run() -> None:
        with torch.inference_mode():
            for b0 in range(0, batch, chunk):
                rows = slice(b0, min(batch, b0 + chunk))
                w.tok[rows] = engine._prefill(prompts[rows], w, rows).argmax(-1)

    return run


def decode_piece(engine, batch: int, context: int) -> Callable[[], None]:
    """``STRIDE + 1`` decode steps whose mean context is ``context`` keys (the fed positions from
    ``context - 1 - STRIDE // 2``, kept inside the bucket that holds ``context``), through the bucket's CUDA graph
    when there is one.

    Raises:
        RuntimeError: the batch or the bucket was not prepared (:func:`prepare_pieces`).
    """
    w = engine._wave
    if w is None or w.batch != batch or w.cache_len < context + STRIDE:
        raise RuntimeError(f"prepare batch {batch} up to context {context} first (prepare_pieces)")
    edges = engine.edges(w.cache_len)
    lo = max(e for e in edges if e <= context - 1)
    hi = min(e for e in edges if e > context - 1)
    start = min(max(lo, context - 1 - STRIDE // 2), max(lo, hi - STRIDE - 1))
    steps = min(STRIDE + 1, hi - start)  # odd: the mean context is exactly ``context`` away from bucket edges
    graph = w.graphs.get(lo)
    if lo not in w.paths:
        raise RuntimeError(f"bucket {lo}-{hi} of batch {batch} was not prepared (prepare_pieces)")
    torch = engine.torch

    def run() -> None:
        with torch.inference_mode():
            w.pos.fill_(start)
            for _ in range(steps):
                if graph is not None:
                    graph.replay()
                else:
                    engine._decode_step(w, w.paths[lo], lo, hi)

    run.steps = steps
    run.mean_context = start + 1 + (steps - 1) / 2
    return run
