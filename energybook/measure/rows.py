"""One row builder for every protocol (:func:`make_row`), and the measuring context of a sweep loop
(:func:`measuring`: the meter's sampler and a progress bar).

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from energybook.store import results as R


def utc(t: float | None = None) -> str:
    """An epoch time (default: now) as ISO 8601 UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@contextlib.contextmanager
def measuring(meter, progress: bool, total: int, desc: str):
    """The meter's sampler running and a progress bar (or None) for the loop; both closed on any exit.

    The bar names the GPU (its UUID's first characters) and, in a launch, takes the line of its local rank, so
    the ranks of one machine show one live bar each.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        uuid = str(meter.device_info().get("gpu_uuid") or "")
        gpu = f" [GPU {uuid[4:12]}]" if uuid.startswith("GPU-") else ""
        bar = tqdm(total=total, unit="point", desc=desc + gpu, position=int(os.environ.get("LOCAL_RANK", 0) or 0))
    meter.start()
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
        meter.stop()


@dataclass
class Window:
    """Energy and time of a part of a window (the prefills, say)."""

    energy_j: float
    duration_s: float


def make_row(name: str, n_in: int, n_out: int, n_req: int, rep: int, mode: str, reading, env: dict[str, Any], *,
             engine: str, scale: float = 1.0, tokens_out: int | None = None, batch: int | None = None,
             waves: int | None = None, measured_waves: int | None = None, repeats: int = 1,
             prefill: Window | None = None, state=None, oom_retries: int | None = None,
             window_kind: str = "generation", tokens_match: bool | None = True, started: float | None = None,
             finished: float | None = None) -> R.Row:
    """The one row builder: a meter reading of a window, scaled to the whole point, as a :class:`Row`.

    Args:
        name: The model's name.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request.
        n_req: Requests of the point.
        rep: Repetition index.
        mode: ``prefix``, ``full``, ``prefix+repeat`` or ``external``.
        reading: The meter's :class:`~energybook.measure.meter.Reading` of the window.
        env: The sweep's environment (GPU name and UUID).
        engine: The engine's registered name.
        scale: Point energy / window energy (the waves counted but not run, or 1/repeats).
        tokens_out: Output tokens of the point (default ``n_req * n_out``).
        batch: Requests per wave.
        waves: Waves of the point.
        measured_waves: Waves run in the window.
        repeats: Back-to-back repeats in the window.
        prefill: Energy and time of the prefills in the window.
        state: The meter's :class:`~energybook.measure.meter.GpuState` over the window.
        oom_retries: Batch halvings before this point fitted.
        window_kind: ``generation``, ``bench`` or ``process``.
        tokens_match: Whether the tokens served equal those asked for.
        started: Epoch time the point's group started.
        finished: Epoch time the point finished.
    """
    energy = reading.energy_j * scale
    duration = reading.duration_s * scale
    tokens_out = n_req * n_out if tokens_out is None else tokens_out
    pre_e = prefill.energy_j * scale if prefill is not None else None
    pre_s = prefill.duration_s * scale if prefill is not None else None
    nan = float("nan")
    return R.Row(
        model=name, n_in=n_in, n_out=n_out, n_req=n_req, batch=batch, waves=waves, measured_waves=measured_waves,
        rep=rep, mode=mode, energy_j=energy, energy_j_power500=reading.energy_j_power500 * scale,
        energy_j_power100=reading.energy_j_power100 * scale, duration_s=duration, tokens_in=n_req * n_in,
        tokens_out=tokens_out, j_per_token=energy / tokens_out if tokens_out > 0 else nan,
        tokens_per_j=tokens_out / energy if energy > 0 else nan,
        power_w=reading.power_w, prefill_energy_j=pre_e, prefill_s=pre_s,
        decode_energy_j=energy - pre_e if pre_e is not None else None,
        decode_s=duration - pre_s if pre_s is not None else None,
        window_s=reading.duration_s, repeats=repeats, ticks=reading.ticks,
        temperature_c=getattr(state, "temperature_c", nan), temperature_max_c=getattr(state, "temperature_max_c", nan),
        sm_clock_mhz=getattr(state, "sm_clock_mhz", nan), power_limit_w=getattr(state, "power_limit_w", nan),
        oom_retries=oom_retries, gpu=env.get("gpu"), started_at=utc(started), finished_at=utc(finished),
        gpu_uuid=env.get("gpu_uuid"), engine=engine, window_kind=window_kind, tokens_match=tokens_match,
        meter_method=reading.method, samples=getattr(reading, "samples", None),
        meter_wraps=getattr(reading, "wraps", 0), meter_errors=getattr(reading, "errors", 0),
        throttle_reasons=getattr(reading, "throttle_reasons", "") or "")
