"""Logits of a lean engine's greedy generation from given prompts, eagerly, through the graphs' bucketed steps, or
through CUDA graphs, with or without teacher forcing: what the tests and ``benchmarks/gpu_logits.py`` compare with
other implementations.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def greedy_logits(eng, prompts, n_out: int, static: bool = False, forced=None, graphs: bool = False) -> list:
    """:meth:`~energybook.measure.lean.engine.LeanEngine.greedy_logits` of the engine ``eng``: float32 (batch, V)
    logits on the CPU, the prefill's last position then every decode step, ``logits_scaling`` applied."""
    eng.check_lengths(prompts.shape[1], n_out)
    if graphs:  # fresh graphs that also copy their logits out
        eng.release_wave()
        eng._probe = True
    try:
        return _greedy_logits(eng, prompts, n_out, static, forced, graphs)
    finally:
        if graphs:
            eng._probe = False
            eng.release_wave()


def _greedy_logits(eng, prompts, n_out: int, static: bool, forced, graphs: bool) -> list:
    torch = eng.torch
    batch, n_in = prompts.shape
    if graphs:
        w = eng._state(batch, eng.cache_len(n_in, n_out))
        w.logits = torch.empty(batch, eng.vocab, dtype=eng.dtype, device=eng.device)
    eng.prepare(n_in, n_out, batch, cuda_graphs=graphs)
    w = eng._wave
    scale = eng.config.logits_scaling
    out = []

    def feed(i, logits):
        w.tok.copy_(logits.argmax(-1) if forced is None else forced[:, i - 1].to(eng.device))

    with torch.inference_mode():
        logits = eng._prefill(prompts.to(eng.device), w, slice(0, batch))
        out.append(logits)
        feed(1, logits)
        w.pos.fill_(n_in)
        i = 1
        for lo, hi, steps in eng._buckets(n_in, n_out):
            for _ in range(steps):
                if graphs:
                    w.graphs[lo].replay()
                    out.append(w.logits.clone())
                elif static:
                    eng._decode_step(w, w.paths[lo], lo, hi, logits_out=out)
                else:
                    eng._decode_step(w, "exact", 0, n_in + i, logits_out=out)
                i += 1
                if forced is not None:
                    feed(i, out[-1])
    return [(x.float() / scale).cpu() for x in out]
