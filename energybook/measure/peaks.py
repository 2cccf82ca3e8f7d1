"""Measuring a GPU's peaks in one short call (``energybook peaks``): copy bandwidth, bf16 matmul rate, idle
power, power cap, SM clock under load and memory size, stored beside the data by
:mod:`energybook.store.peaks`.

Each rate is timed with CUDA events over a window of at least ``window_s`` seconds (repeated operations), long
enough for NVML's energy counter (about 100 ms updates), whose window gives the power under that load.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import logging
import platform
import time

from energybook.store.peaks import Peaks

logger = logging.getLogger(__name__)

MATMUL_N = 8192
"""Side of the square bf16 matrices (elements): large enough to reach the tensor cores' rate."""
COPY_BYTES = 2 << 30
"""Bytes of one copy's source (2 GiB): far beyond any cache."""


def _timed(torch, op, window_s: float) -> tuple[float, int, float, float]:
    """Run ``op`` back to back for at least ``window_s`` seconds: (seconds per call by CUDA events, calls,
    perf_counter start, end) of the measured run, after a calibration run."""
    op()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        op()
    end.record()
    end.synchronize()
    per_call = max(start.elapsed_time(end) / 3e3, 1e-6)
    calls = max(3, int(window_s / per_call) + 1)
    t0 = time.perf_counter()
    start.record()
    for _ in range(calls):
        op()
    end.record()
    end.synchronize()
    t1 = time.perf_counter()
    return start.elapsed_time(end) / 1e3 / calls, calls, t0, t1


def _copy_op(torch, dev):
    a = torch.empty(COPY_BYTES // 2, dtype=torch.bfloat16, device=dev)
    b = torch.empty_like(a)
    return lambda: b.copy_(a)


def _matmul_op(torch, dev):
    x = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.bfloat16, device=dev)
    y = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.bfloat16, device=dev)
    return lambda: x @ y


def _rate(torch, meter, op, window_s: float, clock: bool = False) -> tuple:
    """(seconds per call, mean power in watts[, mean SM clock in MHz]) of ``op`` over one window."""
    per_call, _, t0, t1 = _timed(torch, op, window_s)
    out = (per_call, meter.reading(t0, t1).power_w)
    return (*out, meter.state(t0, t1).sm_clock_mhz) if clock else out


def measure_peaks(device: str = "cuda", meter=None, window_s: float = 2.0, idle_s: float = 3.0,
                  command: str | None = None) -> Peaks:
    """Measure the peaks of the GPU behind ``device``.

    Args:
        device: ``"cuda"`` or ``"cuda:N"``.
        meter: Its meter (default :meth:`energybook.measure.meter.Meter.for_device`).
        window_s: Seconds each rate is measured over (at least 1: NVML's counter updates about every 100 ms).
        idle_s: Seconds of idle power, measured first (at least 1).
        command: The command line, for the provenance.

    Raises:
        ValueError: a window shorter than a second.
        energybook.measure.meter.MeterUnavailable: no GPU or no NVML (the message says what to install or check).
    """
    if not (window_s >= 1.0 and idle_s >= 1.0):
        raise ValueError(f"window_s and idle_s must be at least 1 second (NVML's counter updates about every "
                         f"100 ms), got {window_s} and {idle_s}")
    from energybook.measure.meter import Meter, MeterUnavailable
    from energybook.measure.rows import utc
    from energybook.measure.runner import source_commit

    try:
        import torch
    except ImportError as exc:  # pragma: no cover
        raise MeterUnavailable('measuring peaks needs PyTorch with CUDA: pip install -e ".[gpu]"') from exc
    if not torch.cuda.is_available():
        raise MeterUnavailable("no CUDA device is visible to PyTorch: `energybook peaks` measures an NVIDIA GPU")
    dev = torch.device(device)
    own = meter is None
    meter = Meter.for_device(device) if own else meter
    try:
        if own:
            meter.start()
        info = meter.device_info()
        with torch.cuda.device(dev):
            idle = meter.idle_power_w(idle_s)
            copy_s, copy_power = _rate(torch, meter, _copy_op(torch, dev), window_s)
            mm_s, mm_power, clock = _rate(torch, meter, _matmul_op(torch, dev), window_s, clock=True)
            torch.cuda.empty_cache()
            memory = torch.cuda.get_device_properties(dev).total_memory
    finally:
        if own:
            meter.stop()
    prov = dict(driver=info.get("driver"), torch=torch.__version__, cuda=torch.version.cuda,
                energybook_commit=source_commit(), python=platform.python_version(), host=platform.node(),
                meter_method=info.get("meter_method"), date=utc(), command=command or "energybook peaks",
                method=f"CUDA events over >= {window_s:g} s of back-to-back operations: a {COPY_BYTES >> 30} GiB "
                       f"device-to-device copy (bytes read + written), a {MATMUL_N}^3 bf16 matrix product; power from "
                       f"NVML's energy counter over the same windows; idle power over {idle_s:g} s with nothing "
                       "running; SM clock sampled about once a second during the products")
    return Peaks(gpu=info["gpu"], gpu_uuid=info["gpu_uuid"], copy_bytes_per_s=2 * COPY_BYTES / copy_s,
                 matmul_flops=2 * MATMUL_N ** 3 / mm_s, idle_power_w=idle, power_limit_w=info["power_limit_w"],
                 sm_clock_mhz=clock, matmul_power_w=mm_power, copy_power_w=copy_power, memory_bytes=int(memory),
                 matmul_n=MATMUL_N, copy_bytes=COPY_BYTES, window_s=float(window_s), provenance=prov)


def describe(peaks: Peaks) -> str:
    """One line per peak, with units."""
    return "\n".join([
        f"{peaks.gpu} {peaks.gpu_uuid}",
        f"  copy bandwidth   {peaks.copy_bytes_per_s / 1e12:7.2f} TB/s (read + write), at {peaks.copy_power_w:.0f} W",
        f"  bf16 matmul      {peaks.matmul_flops / 1e12:7.1f} TFLOP/s ({peaks.matmul_n}^3), at "
        f"{peaks.matmul_power_w:.0f} W, SM clock {peaks.sm_clock_mhz:.0f} MHz",
        f"  idle power       {peaks.idle_power_w:7.1f} W; power cap {peaks.power_limit_w:.0f} W",
        f"  memory           {peaks.memory_bytes / 2 ** 30:7.1f} GiB",
    ])

