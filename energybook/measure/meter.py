"""GPU energy meter: NVML's total-energy counter, with a power timeline beside it.

Two instruments, read on the same run:

* the **energy counter** (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver
  loaded). It updates about every 100 ms. A sampler polls it every few milliseconds and records
  each *tick* (the time at which its value changes); the energy at any instant between two ticks is
  interpolated linearly, so a window need not start or end on a tick. Wrap-around of the counter is
  unwrapped; a reset is not (below).
* the **power timeline** (``nvmlDeviceGetPowerUsage``, milliwatts) sampled about every 100 ms by
  the same sampler. From it come two power integrations: ``power100`` (every sample, trapezoid)
  and ``power500`` (every 5th sample, about 500 ms apart, trapezoid): the SweetSpot study's
  method.

Temperature, SM clock and the active clock-event (throttle) reasons are sampled once a second; a
window shorter than that, or with no sample inside, has ``"unknown"`` throttle reasons. On a GPU
without the counter (``NVMLError_NotSupported``) the meter falls back to ``power100`` and says so in
:attr:`Reading.method`.

**Which GPU.** NVML numbers every GPU of the host whatever ``CUDA_VISIBLE_DEVICES`` says, so NVML's
index 0 is not CUDA's ``cuda:0`` when ``CUDA_VISIBLE_DEVICES=1``. :meth:`Meter.for_device` takes the
UUID of the torch device the engine runs on and opens the NVML handle by that UUID; without torch
it maps the CUDA ordinal through ``CUDA_VISIBLE_DEVICES``. :meth:`Meter.device_info` records both
UUIDs and a meter whose GPU is not the engine's is refused.

**Sampler.** ``sampler="thread"`` (the default) polls NVML from a thread of the measured process;
``sampler="process"`` polls it from a child process (``multiprocessing``, spawn) that opens its own
NVML handle by UUID and streams its ticks, power samples, state and errors back through a queue,
which the meter drains whenever it is read, so the measured process gets no extra thread. Both
sides stamp events with ``time.perf_counter`` (``CLOCK_MONOTONIC`` on Linux, one clock for the
whole system); a clock handshake at start refuses a child whose clock disagrees.

**Invalid windows.** A window is never extrapolated over missing data: :meth:`Meter.reading`
raises :class:`MeterError` naming every cause found, when

* an NVML read failed between ``t0`` and ``t1`` (the sampler records every NVML exception with its
  time; NVML's "not supported" on an optional state read is not a failure);
* there is no counter tick at or before ``t0``, or none at or after ``t1`` (the interpolation needs
  a tick on each side);
* the window is longer than 3 counter update periods (:attr:`Meter.update_period_s`) and has no
  tick inside;
* the window is longer than 3 power periods and has no power sample inside;
* the counter decreased between the ticks around the window. A decrease of the raw counter is a
  *reset* (driver reload, a bad read): it is never taken for a wrap, windows over it are refused, and
  the series continues from the reset so that later windows read right. Only a decrease after the
  counter climbed to within ``2**40`` mJ of ``2**64`` is a real uint64 *wrap*, unwrapped by adding
  ``2**64``;
* the energy is outside physics: below 70 % of the idle power or above 1.25 x the power cap over the
  window, or far from the power timeline integrated over it
  (:mod:`energybook.measure.timeline` gives the margins). A counter jump, a bogus read or reads
  of zero are refused, never recorded.

With the power fallback (no counter) the tick rules apply to the power samples instead. A short
window (a prefill of a few ms) between two ticks stays readable.

Without NVML, a GPU or the ``nvidia-ml-py`` package, :class:`MeterUnavailable` (a
``RuntimeError``) says what to do.

The meter is in four parts: :mod:`~energybook.measure.nvml_device` (the GPU, opened by UUID),
:mod:`~energybook.measure.samplers` (the thread and process samplers),
:mod:`~energybook.measure.timeline` (the pure :class:`Timeline` of readings and its rules) and this
module (:class:`Meter`, which ties them together, and :class:`SimulatedMeter`). Every name that
used to live here is still importable from here.

Used in :doc:`/book/instruments`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

from energybook.measure.nvml_device import (  # noqa: F401 - re-exported: the meter's names, as before the split
    REASONS,
    MeterUnavailable,
    bare_uuid,
    cuda_ordinal,
    open_by_uuid,
    power_cap_w,
    reason_bits,
    text,
    visible_devices,
    warn_if_orders_differ,
)
from energybook.measure.nvml_device import pynvml_module as _pynvml
from energybook.measure.nvml_device import torch_cuda as _torch_cuda
from energybook.measure.samplers import SAMPLERS, NvmlPoller, ProcessSampler, ThreadSampler
from energybook.measure.timeline import (  # noqa: F401 - re-exported
    WRAP_MARGIN_MJ,
    WRAP_MJ,
    GpuState,
    MeterError,
    Reading,
    Timeline,
    decode_reasons,
    integrate,
)

logger = logging.getLogger(__name__)

_reason_bits = reason_bits  # the old private name (benchmarks/meter_sampler.py)

__all__ = ["GpuState", "Meter", "MeterError", "MeterUnavailable", "Reading", "SAMPLERS", "SimulatedMeter",
           "Timeline", "decode_reasons"]


class Meter:
    """NVML energy meter for one GPU, with a background sampler.

    Use as a context manager; mark windows with :meth:`now` (which synchronises the device
    first) and read them with :meth:`reading` once the sampler has seen a tick past the window's end.
    :meth:`for_device` builds the meter of the GPU a torch device runs on.

    Args:
        index: NVML device index: NVML numbers every GPU of the host, whatever ``CUDA_VISIBLE_DEVICES``
            says (default 0 when no ``uuid`` is given).
        poll_s: Counter polling period (seconds); sets the timing error of a tick.
        power_period_s: Power sampling period (seconds), about NVML's 100 ms refresh.
        sync: Callable that waits for the device (``torch.cuda.synchronize``) before a clock read.
        uuid: The GPU's UUID (``GPU-...``, ``MIG-...``, or torch's form without the prefix), instead of ``index``.
        cuda_uuid: The UUID torch gives for the engine's device; the meter refuses a GPU that is not that one.
        sampler: ``"thread"`` (poll from a thread of this process) or ``"process"`` (from a child process).
        update_period_s: The counter's update period (seconds), for the rule on windows without ticks.
        state_period_s: State (temperature, SM clock, throttle reasons) sampling period (seconds).

    Raises:
        MeterUnavailable: no NVML, no such GPU, or the GPU is not ``cuda_uuid``'s.
    """

    method_names = ("counter", "power100", "power500")
    _child_nvml = staticmethod(_pynvml)  # what the sampler process loads as NVML (picklable; tests swap it)
    process_start_timeout_s = 60.0

    def __init__(self, index: int | None = None, poll_s: float = 0.002, power_period_s: float = 0.1, sync=None, *,
                 uuid: str | None = None, cuda_uuid: str | None = None, sampler: str = "thread",
                 update_period_s: float = 0.1, state_period_s: float = 1.0):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if index is not None and uuid is not None:
            raise ValueError("give the GPU by index or by uuid, not both")
        self.poll_s, self.power_period_s, self.update_period_s = poll_s, power_period_s, update_period_s
        self.state_period_s, self.sync, self.sampler = state_period_s, sync, sampler
        self.cuda_uuid = None if cuda_uuid is None else str(cuda_uuid)
        self._nv = nv = _pynvml()
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise MeterUnavailable(f"NVML could not start ({exc}): this needs an NVIDIA GPU with its driver; "
                                   "on a machine without one, measure elsewhere or use the committed data") from None
        self._nvml_open = True
        self._h, self.index = self._open(index, uuid)
        self.gpu_uuid = text(nv.nvmlDeviceGetUUID(self._h))
        if self.cuda_uuid is not None and bare_uuid(self.gpu_uuid) != bare_uuid(self.cuda_uuid):
            raise MeterUnavailable(f"the meter's GPU {self.gpu_uuid} (NVML) is not the engine's device "
                                   f"{self.cuda_uuid} (CUDA): it would measure another GPU. Build the meter with "
                                   "Meter.for_device(device) or Meter(uuid=...)")
        self.has_counter = self._supported(nv.nvmlDeviceGetTotalEnergyConsumption)
        if not self.has_counter:
            logger.warning("GPU %s has no total-energy counter: falling back to power integration (power100)",
                           self.gpu_uuid)
        self.has_power = self._supported(nv.nvmlDeviceGetPowerUsage)
        if not (self.has_power or self.has_counter):
            raise MeterUnavailable(f"GPU {self.gpu_uuid} reports neither energy nor power through NVML")
        self.method = "counter" if self.has_counter else "power100"
        self._reason_bits = reason_bits(nv)
        self._sampler = NvmlPoller(nv, self._h, self.has_counter, self.has_power, power_period_s, state_period_s)
        self._tl = Timeline(has_counter=self.has_counter, has_power=self.has_power, update_period_s=update_period_s,
                            power_period_s=power_period_s, state_period_s=state_period_s,
                            power_cap_w=power_cap_w(nv, self._h), reason_bits=self._reason_bits)
        self._lock = threading.Lock()
        self._runner: ThreadSampler | ProcessSampler | None = None
        self._last_logged = -math.inf

    def _open(self, index: int | None, uuid: str | None):
        """The NVML handle and host index (None for a MIG device) of the GPU by UUID or index."""
        nv = self._nv
        if uuid is not None:
            h = open_by_uuid(nv, uuid)
            try:
                return h, int(nv.nvmlDeviceGetIndex(h))
            except Exception:  # noqa: BLE001 - MIG devices have no host index
                return h, None
        index = 0 if index is None else index
        try:
            return nv.nvmlDeviceGetHandleByIndex(index), index
        except Exception as exc:
            raise MeterUnavailable(f"NVML has no GPU at index {index} ({exc})") from None

    def _supported(self, read) -> bool:
        try:
            read(self._h)
        except self._nv.NVMLError_NotSupported:
            return False
        return True

    @classmethod
    def for_device(cls, device="cuda", poll_s: float = 0.002, **kwargs) -> Meter:
        """The meter of the GPU a CUDA device runs on, verified by UUID.

        With torch (and a CUDA device it sees), the device's UUID comes from
        ``torch.cuda.get_device_properties``, the NVML handle is opened by that UUID and ``sync`` is
        ``torch.cuda.synchronize`` of that device. Without torch (an external engine's machine), the
        ordinal is mapped through ``CUDA_VISIBLE_DEVICES`` (indices, which CUDA numbers like NVML when
        the GPUs are of one model or ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, or ``GPU-``/``MIG-`` UUIDs).

        Args:
            device: ``"cuda"`` (the current device), ``"cuda:N"``, a torch device or an ordinal.
            poll_s: Counter polling period (seconds).
            **kwargs: Other :class:`Meter` arguments (``sampler``, ``power_period_s``, ``sync``...).

        Raises:
            ValueError: ``device`` is not a CUDA device.
            MeterUnavailable: no NVML, no such device, or NVML's GPU is not torch's.
        """
        ordinal = cuda_ordinal(device)
        torch = _torch_cuda()
        if torch is not None:
            count = torch.cuda.device_count()
            idx = torch.cuda.current_device() if ordinal is None else ordinal
            if not 0 <= idx < count:
                raise MeterUnavailable(f"torch sees {count} CUDA device(s): there is no cuda:{idx}")
            cuda_uuid = text(torch.cuda.get_device_properties(idx).uuid)

            def sync(torch=torch, idx=idx):
                torch.cuda.synchronize(idx)

            kwargs.setdefault("sync", sync)
            return cls(uuid=cuda_uuid, cuda_uuid=cuda_uuid, poll_s=poll_s, **kwargs)
        idx = 0 if ordinal is None else ordinal
        visible = visible_devices()
        if visible is not None and not 0 <= idx < len(visible):
            raise MeterUnavailable(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} shows "
                                   f"{len(visible)} device(s): there is no cuda:{idx}")
        entry = str(idx) if visible is None else visible[idx]
        if not entry.isdigit():
            return cls(uuid=entry, poll_s=poll_s, **kwargs)
        m = cls(index=int(entry), poll_s=poll_s, **kwargs)
        warn_if_orders_differ(m._nv, int(entry), m.gpu_uuid)
        return m

    # ----- device facts ------------------------------------------------------------------
    def device_info(self) -> dict:
        """GPU name, UUIDs (NVML's ``gpu_uuid``, torch's ``cuda_uuid`` or None), driver, power limit, for provenance."""
        nv, h = self._nv, self._h
        info = {"gpu": text(nv.nvmlDeviceGetName(h)), "gpu_uuid": text(nv.nvmlDeviceGetUUID(h)),
                "cuda_uuid": self.cuda_uuid, "driver": text(nv.nvmlSystemGetDriverVersion()),
                "meter_method": self.method, "meter_sampler": self.sampler}
        try:
            info["power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
        except Exception:  # noqa: BLE001 - optional field
            info["power_limit_w"] = float("nan")
        return info

    @property
    def wraps(self) -> int:
        """Counter wrap-arounds seen."""
        return self._tl.wraps

    # ----- recording ---------------------------------------------------------------------
    def _ingest(self, kind: str, t: float, *values) -> None:
        """Record one sampler event."""
        with self._lock:
            self._tl.add(kind, t, *values)
        if kind == "error" and t - self._last_logged > 5.0:
            self._last_logged = t
            logger.error("meter: %s (windows over NVML failures are refused)", values[0])

    def _read_counter(self) -> int:
        """Read the counter once, record it, and return its unwrapped value (mJ)."""
        t = time.perf_counter()
        raw = int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h))
        with self._lock:
            return self._tl.add_tick(t, raw)

    # ----- sampler -----------------------------------------------------------------------
    def _running(self) -> bool:
        return self._runner is not None

    def start(self) -> Meter:
        """Start the background sampler (a thread, or a child process with ``sampler="process"``).

        Raises:
            MeterUnavailable: the sampler process could not start or read the GPU.
        """
        if self._running():
            return self
        if self.sampler == "process":
            self._runner = ProcessSampler(self.gpu_uuid, self._ingest, self.poll_s, self.power_period_s,
                                          self.state_period_s, self.has_counter, self.has_power, self._child_nvml,
                                          self.process_start_timeout_s).start()
        else:
            self._runner = ThreadSampler(self._sampler, self._ingest, self.poll_s).start()
        time.sleep(max(3 * self.power_period_s, 0.2))
        self._drain()
        return self

    def stop(self) -> None:
        """Stop the background sampler; what it recorded stays readable."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()

    def close(self) -> None:
        """Stop the sampler and release NVML (the meter cannot be read from NVML afterwards)."""
        self.stop()
        if getattr(self, "_nvml_open", False):
            self._nvml_open = False
            try:
                self._nv.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _drain(self) -> None:
        if self._runner is not None:
            self._runner.drain()

    def _snapshot(self) -> Timeline:
        """The readings so far, copied (the sampler goes on appending to its own)."""
        self._drain()
        with self._lock:
            return self._tl.snapshot()

    # ----- windows -----------------------------------------------------------------------
    def now(self) -> float:
        """Synchronise the device, then read the clock (``time.perf_counter`` seconds)."""
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def wait_past(self, t: float, timeout_s: float = 2.0) -> None:
        """Wait until the sampler has seen a counter tick and a power sample after time ``t`` (seconds)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            self._drain()
            with self._lock:
                ticks, power_t = self._tl.tick_t, self._tl.power_t
                tick_ok = (not self.has_counter) or (len(ticks) > 2 and ticks[-2] > t)
                power_ok = (not self.has_power) or (power_t and power_t[-1] > t + self.power_period_s)
            if tick_ok and power_ok:
                return
            if self._runner is not None and self._runner.dead():
                logger.error("the meter's sampler process died (exit code %s)", self._runner.proc.exitcode)
                return
            if not self._running():
                self._sampler.once(self._ingest)
            time.sleep(self.poll_s)
        logger.warning("meter saw no counter update within %.1f s after the window end", timeout_s)

    def counter_energy_j(self, t0: float, t1: float, start: str = "interp", end: str = "interp") -> tuple[float, int]:
        """Counter energy between two instants (joules), and the ticks inside the window
        (:meth:`energybook.measure.timeline.Timeline.counter_energy_j`).

        Raises:
            MeterError: the ticks do not bracket the window, it has none inside while longer than 3
                update periods, or the counter decreased (a reset) over it.
        """
        return self._snapshot().counter_energy_j(t0, t1, start, end)

    def reading(self, t0: float, t1: float, wait: bool = True, start: str = "interp", end: str = "interp") -> Reading:
        """The energy of the window [t0, t1] by every method.

        Args:
            t0: Window start from :meth:`now` (seconds).
            t1: Window end from :meth:`now` (seconds).
            wait: Wait for the sampler to pass ``t1`` first (needed for the counter's interpolation).
            start: How the counter is read at ``t0`` (see :meth:`counter_energy_j`).
            end: How the counter is read at ``t1`` (``"before"`` when the GPU goes idle at ``t1``).

        Raises:
            ValueError: an empty window.
            MeterError: an invalid window (the module's rules: NVML failures, missing ticks or samples, a reset,
                an energy outside physics).
        """
        if t1 <= t0:
            raise ValueError(f"empty window: t1 ({t1}) must come after t0 ({t0})")
        if wait:
            self.wait_past(t1)
        return self._snapshot().reading(t0, t1, start=start, end=end)

    def state(self, t0: float, t1: float) -> GpuState:
        """Temperature and SM clock over [t0, t1] (means; max temperature), and the power limit (watts)."""
        try:
            limit = self._nv.nvmlDeviceGetEnforcedPowerLimit(self._h) / 1000.0
        except Exception:  # noqa: BLE001
            limit = float("nan")
        return self._snapshot().state_over(t0, t1, limit)

    def timeline(self) -> dict[str, list[float]]:
        """Copies of the recorded series: counter ticks (s, mJ) and power samples (s, W)."""
        return self._snapshot().as_dict()

    def idle_power_w(self, seconds: float = 2.0) -> float:
        """Mean power over the next ``seconds`` with nothing running (watts)."""
        t0 = self.now()
        time.sleep(seconds)
        return self.reading(t0, self.now()).power_w


class SimulatedMeter:
    """A stand-in meter for tests and CPU runs: constant power times wall time.

    Its readings are labelled ``method="simulated"`` and the results loader refuses them unless
    ``allow_test_data=True``. Nothing here measures energy.

    Args:
        power_w: The constant power to report (watts).
        clock: Time source (seconds); ``time.perf_counter`` by default.
    """

    method = "simulated"
    has_counter = False

    def __init__(self, power_w: float = 100.0, clock=None):
        self.power_w = power_w
        self._clock = clock or time.perf_counter

    def start(self) -> SimulatedMeter:
        return self

    def stop(self) -> None:
        pass

    def __enter__(self) -> SimulatedMeter:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def now(self) -> float:
        return self._clock()

    def reading(self, t0: float, t1: float, wait: bool = True, start: str = "interp", end: str = "interp") -> Reading:
        if t1 <= t0:
            raise ValueError(f"empty window: t1 ({t1}) must come after t0 ({t0})")
        e = self.power_w * (t1 - t0)
        return Reading(t0, t1, e, e, e, self.method, 0, 0, 0, 0, "")

    def state(self, t0: float, t1: float) -> GpuState:
        return GpuState()

    def device_info(self) -> dict:
        return {"gpu": "simulated", "gpu_uuid": "none", "cuda_uuid": None, "driver": "none",
                "meter_method": self.method, "meter_sampler": "none", "power_limit_w": float("nan")}
