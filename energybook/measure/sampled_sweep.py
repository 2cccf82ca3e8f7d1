"""The sweep loop of the sampled protocol (``--mode sampled``): measure the pieces of
:mod:`energybook.measure.sampled` batch by batch on the lean engine (:mod:`energybook.measure.lean.pieces`), then
assemble and append the rows of that batch's points, so that a killed sweep loses at most one batch's pieces.

Every piece is one energy window of at least ``min_window_s`` (and never under a second: NVML's counter updates
about every 100 ms), its operation repeated back to back after a warm-up; energy and time per operation are the
window's divided by the repeats. A point's row holds the assembled energy, time and prefill share, its
``window_kind`` is ``"sampled"``, its ``window_s`` the sum of the windows of the pieces it used (shared with other
points), and its ``ticks`` theirs.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from energybook.measure import sampled as S
from energybook.measure.rows import make_row
from energybook.measure.rows import measuring as _measuring

logger = logging.getLogger(__name__)

MIN_PIECE_WINDOW_S = 1.0
"""Shortest window of a piece (seconds): ten updates of NVML's energy counter."""
WARMUP_RUNS = 2
"""Runs of a piece before its window (caches, clocks)."""
PREPARE_S = 20.0
"""Seconds assumed for one batch's preparation (compilation and graph capture) in the ETA."""


@dataclass
class PieceReading:
    """Per-operation energies (the counter's and the two power-sampling methods'), time, and its window's facts."""

    energy_j: float
    energy_j_power500: float
    energy_j_power100: float
    duration_s: float
    window_s: float
    ticks: int
    method: str
    throttle_reasons: str = ""


@dataclass
class AssembledReading:
    """A point's pieces summed: the reading :func:`energybook.measure.rows.make_row` takes."""

    energy_j: float
    energy_j_power500: float
    energy_j_power100: float
    duration_s: float
    ticks: int
    method: str
    throttle_reasons: str = ""
    samples: int | None = None
    wraps: int = 0
    errors: int = 0

    @property
    def power_w(self) -> float:
        return self.energy_j / self.duration_s


def measure_piece(engine, meter, run, min_window_s: float) -> PieceReading:
    """One window of ``run`` repeated back to back, divided by its repeats (per call; a decode piece's ``steps``
    divide further by the caller)."""
    window = max(MIN_PIECE_WINDOW_S, min_window_s)
    for _ in range(WARMUP_RUNS):
        run()
    t0 = engine._clock()
    calls, t1 = 0, t0
    while t1 - t0 < window:
        run()
        calls += 1
        if calls % 4 == 0 or calls < 4:
            t1 = engine._clock()
    t1 = engine._clock()
    r = meter.reading(t0, t1)
    return PieceReading(r.energy_j / calls, r.energy_j_power500 / calls, r.energy_j_power100 / calls,
                        r.duration_s / calls, r.duration_s, int(getattr(r, "ticks", 0) or 0), r.method,
                        getattr(r, "throttle_reasons", "") or "")


def sweep_sampled(engine, meter, rf, todo, config, name: str, env, progress: bool, stop_after: int | None,
                  time_limit_s: float | None, t_start: float, per_octave: int = 2) -> tuple[int, list[str]]:
    """Measure ``todo`` with the sampled protocol; returns (points appended, log lines)."""
    from energybook.measure.lean import pieces as P

    points = {(p.n_in, p.n_out): p for p in todo}
    shapes = S.shapes(sorted(points), config.n_req, lambda a, b: min(config.max_batch, engine.batch_limit(a, b)))
    plan = S.sample_plan(shapes, per_octave)
    log = [f"sample plan: {plan.n_samples} pieces for {len(shapes)} points ({per_octave} decode contexts per "
           "doubling)"]
    batches = len({s.batch for s in shapes})
    rf.annotate(sample_plan=plan.to_record())  # the whole plan of this run (each point also logs its pieces)
    eta = plan.n_samples * (max(MIN_PIECE_WINDOW_S, config.min_window_s) + 0.2) + batches * (
        PREPARE_S + config.cooldown_s)
    line = (f"{name}: {plan.n_samples} pieces over {batches} batches, about {eta / 60:.1f} min (windows, plus "
            f"{PREPARE_S:.0f} s of compilation and capture per batch: a rough figure until measured sidecars "
            "calibrate it)")
    logger.info("%s", line)
    log.append(f"ETA {line}")
    measured, t_loop = 0, time.perf_counter()
    by_batch: dict[int, list[S.PointShape]] = {}
    for s in shapes:
        by_batch.setdefault(s.batch, []).append(s)
    with _measuring(meter, progress, len(todo), f"{name} sampled") as bar:
        for batch, mine in sorted(by_batch.items()):
            if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
                log.append(f"stopped at the time limit, batches {sorted(b for b in by_batch if b >= batch)} left")
                break
            started, t_batch = time.time(), time.perf_counter()
            contexts = plan.decode.get(batch, ())
            lengths = tuple(sorted({s.n_in for s in mine}))
            P.prepare_pieces(engine, batch, contexts, lengths)
            prepare_s = time.perf_counter() - t_batch
            prefill = {(n, batch): measure_piece(engine, meter, P.prefill_piece(engine, n, batch), config.min_window_s)
                       for n in lengths}
            decode = []
            for c in contexts:
                run = P.decode_piece(engine, batch, c)
                decode.append((run.mean_context, measure_piece(engine, meter, run, config.min_window_s), run.steps))
            engine.release_wave()
            # the batch's GPU time (compilation, capture, warm-ups, windows and the cooldown after it), shared by
            # its points: what the sidecar's measuring_minutes adds up (the windows alone would count shared pieces
            # twice and miss the compilation)
            share = (time.perf_counter() - t_batch + config.cooldown_s) / len(mine)
            logger.info("batch %d: %d pieces, prepared in %.1f s, measured in %.1f s", batch,
                        len(lengths) + len(contexts), prepare_s, time.perf_counter() - t_batch - prepare_s)
            for s in mine:
                reading, used = _assemble(s, prefill, decode)
                p = points[(s.n_in, s.n_out)]
                pre = prefill[(s.n_in, batch)]
                row = make_row(name, s.n_in, s.n_out, config.n_req, p.rep, "sampled", reading, env,
                               engine=config.engine, tokens_out=s.batch * s.waves * s.n_out, batch=s.batch,
                               waves=s.waves, measured_waves=0, repeats=1,
                               prefill=_Window(pre.energy_j * s.waves, pre.duration_s * s.waves),
                               window_kind="sampled", started=started, finished=time.time())
                row = dataclasses.replace(row, window_s=used)
                rf.append(row, {"gpu_uuid": env.get("gpu_uuid"), "measuring_s": round(share, 3),
                                "decode_contexts": list(contexts), "integration": S.INTEGRATION_RULE,
                                "cache_fill": "random",
                                "prepare_s": round(prepare_s, 3), "pieces": len(lengths) + len(contexts)})
                measured += 1
                if bar is not None:
                    bar.update(1)
                if stop_after is not None and measured >= stop_after:
                    return measured, log
            time.sleep(config.cooldown_s)
    log.append(f"wall {time.perf_counter() - t_loop:.0f} s for {measured} points (the ETA said {eta:.0f} s for "
               f"{len(todo)})")
    logger.info("%s: %s", name, log[-1])
    return measured, log


@dataclass
class _Window:
    energy_j: float
    duration_s: float


def _assemble(s: S.PointShape, prefill: dict, decode: list) -> tuple[AssembledReading, float]:
    """The point's reading from its pieces (each energy method assembled on its own), and the seconds of the
    windows it used."""
    pre = prefill[(s.n_in, s.batch)]
    parts: dict[str, Any] = {}
    for field in ("energy_j", "energy_j_power500", "energy_j_power100"):
        samples = [(c, getattr(r, field) / steps, r.duration_s / steps) for c, r, steps in decode]
        dec = {s.batch: _dedupe(samples)}
        a = S.assemble(s, {(s.n_in, s.batch): (getattr(pre, field), pre.duration_s)}, dec, margin=S_MARGIN)
        parts[field] = a.energy_j
        parts["duration_s"] = a.duration_s
    lo, hi = s.contexts
    used = [r for c, r, _ in decode if lo - S_MARGIN <= c <= hi + S_MARGIN] + [pre]
    reading = AssembledReading(parts["energy_j"], parts["energy_j_power500"], parts["energy_j_power100"],
                               parts["duration_s"], sum(r.ticks for r in used), pre.method,
                               "|".join(sorted({t for r in used for t in r.throttle_reasons.split("|") if t})))
    return reading, sum(r.window_s for r in used)


S_MARGIN = 16
"""How far (keys) a point's first and last steps may lie beyond the decode samples (a piece's mean context is
within half a stride of its ladder context); samples this far outside its steps count among the pieces it used."""


def _dedupe(samples: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Samples sorted by context, one per context (the bucket clipping may give two the same mean)."""
    out: dict[float, tuple[float, float, float]] = {}
    for c, e, t in sorted(samples):
        out.setdefault(c, (c, e, t))
    return list(out.values())

