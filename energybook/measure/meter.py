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

Temperature, SM clock, power limit and the active clock-event (throttle) reasons are sampled once a
second. On a GPU without the counter (``NVMLError_NotSupported``) the meter falls back to
``power100`` and says so in :attr:`Reading.method`.

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
  *reset* (driver reload): it is never taken for a wrap, windows over it are refused, and the
  series continues from the reset so that later windows read right. Only a decrease from within
  ``2**40`` mJ of ``2**64`` is a real uint64 *wrap*, unwrapped by adding ``2**64``.

With the power fallback (no counter) the tick rules apply to the power samples instead. A short
window (a prefill of a few ms) between two ticks stays readable.

Without NVML, a GPU or the ``nvidia-ml-py`` package, :class:`MeterUnavailable` (a
``RuntimeError``) says what to do.

Used in :doc:`/book/instruments`.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import queue as queue_module
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

WRAP_MJ = 2**64  # the counter is an unsigned long long (mJ)
WRAP_MARGIN_MJ = 2**40  # a decrease from within this of 2**64 is a wrap; any other decrease is a reset

#: Clock-event (throttle) reasons: pynvml's constant suffix -> the name recorded in ``throttle_reasons``.
REASONS = (("GpuIdle", "gpu_idle"), ("ApplicationsClocksSetting", "applications_clocks_setting"),
           ("SwPowerCap", "sw_power_cap"), ("HwSlowdown", "hw_slowdown"), ("SyncBoost", "sync_boost"),
           ("SwThermalSlowdown", "sw_thermal_slowdown"), ("HwThermalSlowdown", "hw_thermal_slowdown"),
           ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown"), ("DisplayClockSetting", "display_clock_setting"),
           ("BoardLimit", "board_limit"), ("Reliability", "reliability"))

SAMPLERS = ("thread", "process")


class MeterUnavailable(RuntimeError):
    """No energy meter: no NVIDIA GPU, no NVML driver library, no ``nvidia-ml-py``, or not the engine's GPU."""


class MeterError(RuntimeError):
    """A window the meter cannot measure (NVML failures, missing ticks or samples, a counter reset).

    Attributes:
        t0: Window start (seconds).
        t1: Window end (seconds).
        causes: What made the window invalid, one sentence each.
        errors: NVML read failures inside the window.
    """

    def __init__(self, t0: float, t1: float, causes: list[str], errors: int = 0):
        self.t0, self.t1, self.causes, self.errors = t0, t1, list(causes), errors
        super().__init__(f"invalid meter window [{t0:.3f}, {t1:.3f}] s ({t1 - t0:.3f} s): " + "; ".join(causes)
                         + ". Nothing is extrapolated: measure the window again.")


def _pynvml():
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MeterUnavailable("the meter needs NVIDIA's NVML bindings: pip install nvidia-ml-py "
                               '(or pip install -e ".[gpu]" in a checkout of energybook)') from exc
    return pynvml


def _torch_cuda():
    """torch, when it is installed and sees a CUDA device; otherwise None."""
    try:
        import torch
    except ImportError:
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as none
        return None


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _bare_uuid(uuid: str) -> str:
    """A UUID without its ``GPU-``/``MIG-`` prefix, lower case (torch's form)."""
    u = str(uuid).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if u.startswith(prefix):
            return u[len(prefix):]
    return u


def _is_not_supported(nv, exc: Exception) -> bool:
    kinds = tuple(k for k in (getattr(nv, "NVMLError_NotSupported", None), getattr(nv, "NVMLError_FunctionNotFound",
                                                                                     None)) if isinstance(k, type))
    return bool(kinds) and isinstance(exc, kinds)


def _describe(what: str, exc: Exception) -> str:
    return f"NVML {what} read failed ({type(exc).__name__}: {exc})"


def _reason_bits(nv) -> list[tuple[int, str]]:
    """(bit, name) of every clock-event reason pynvml defines (``nvmlClocksEventReason*``, or the older
    ``nvmlClocksThrottleReason*``)."""
    bits = []
    for suffix, name in REASONS:
        for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
            value = getattr(nv, prefix + suffix, None)
            if type(value) is int and value:
                bits.append((value, name))
                break
    return bits


def decode_reasons(mask: int, bits: list[tuple[int, str]]) -> str:
    """The names of the reasons set in ``mask``, joined with ``|`` (unknown bits as hex); ``""`` for none."""
    names, rest = [], int(mask)
    for bit, name in bits:
        if mask & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(f"0x{rest:x}")
    return "|".join(names)


def _visible_devices() -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it (None when unset): indices or UUIDs, up to the first invalid entry."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    items = []
    for part in value.split(","):
        p = part.strip()
        if p.isdigit() or p.upper().startswith(("GPU-", "MIG-")):
            items.append(p)
        else:  # CUDA ignores this entry and every one after it
            break
    return items


def _open_by_uuid(nv, uuid: str):
    """The NVML handle of a GPU (or MIG device) by UUID: full, without its prefix (torch's form), or a unique prefix."""
    u = str(uuid).strip()
    candidates = [u] if u.upper().startswith(("GPU-", "MIG-")) else [f"GPU-{u}", f"MIG-{u}"]
    last = None
    for c in candidates:
        try:
            return nv.nvmlDeviceGetHandleByUUID(c)
        except Exception as exc:  # noqa: BLE001 - NVMLError_NotFound and the like
            last = exc
    try:  # CUDA_VISIBLE_DEVICES may name a GPU by a unique prefix of its UUID
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        found = [h for h in handles if any(_s(nv.nvmlDeviceGetUUID(h)).lower().startswith(c.lower())
                                           for c in candidates)]
    except Exception:  # noqa: BLE001
        found = []
    if len(found) == 1:
        return found[0]
    raise MeterUnavailable(f"NVML has no GPU with UUID {u} ({last})")


def _cuda_ordinal(device) -> int | None:
    """The CUDA ordinal of ``"cuda"`` (None: the current device), ``"cuda:N"``, a torch device or an int."""
    if isinstance(device, int):
        return device
    s = str(device).strip()
    if s == "cuda":
        return None
    if s.startswith("cuda:") and s[5:].isdigit():
        return int(s[5:])
    raise ValueError(f"the meter reads a CUDA device: give 'cuda' or 'cuda:N', not {device!r}")


@dataclass
class Reading:
    """Energy of one window, measured by the counter and by power integration.

    Attributes:
        t0: Window start (``time.perf_counter`` seconds).
        t1: Window end (``time.perf_counter`` seconds).
        energy_j: Energy by the meter's main method (counter, or ``power100`` as fallback), joules.
        energy_j_power100: Trapezoid over the ~100 ms power samples (joules).
        energy_j_power500: Trapezoid over every 5th sample, ~500 ms apart (the study's method), joules.
        method: ``"counter"`` or ``"power100"`` (fallback when the counter is not supported).
        ticks: Counter updates seen inside the window.
        samples: Power samples inside the window.
        wraps: Counter wrap-arounds seen up to the window's end.
        errors: NVML read failures inside the window (0 for a valid window: any failure raises :class:`MeterError`).
        throttle_reasons: NVML clock-event (throttle) reasons active in the window, ``|``-separated
            (``"sw_power_cap|hw_slowdown"``): the union over the once-a-second state samples from one
            second before ``t0`` to ``t1``; ``""`` when none, ``"unknown"`` when the GPU does not report them or no
            state sample covers the window.
    """

    t0: float
    t1: float
    energy_j: float
    energy_j_power100: float
    energy_j_power500: float
    method: str
    ticks: int = 0
    samples: int = 0
    wraps: int = 0
    errors: int = 0
    throttle_reasons: str = ""

    @property
    def duration_s(self) -> float:
        """Window length (seconds)."""
        return self.t1 - self.t0

    @property
    def power_w(self) -> float:
        """Mean power over the window (watts)."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else float("nan")


@dataclass
class GpuState:
    """Slow-changing state of the GPU, sampled about once a second.

    Attributes:
        temperature_c: Mean GPU temperature (degrees Celsius).
        temperature_max_c: Highest GPU temperature (degrees Celsius).
        sm_clock_mhz: Mean SM clock (MHz).
        power_limit_w: Enforced power limit (watts).
    """

    temperature_c: float = float("nan")
    temperature_max_c: float = float("nan")
    sm_clock_mhz: float = float("nan")
    power_limit_w: float = float("nan")


@dataclass
class _Timeline:
    tick_t: list[float] = field(default_factory=list)
    tick_mj: list[int] = field(default_factory=list)  # unwrapped, continued across resets, mJ
    power_t: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    state: list[tuple[float, float, float]] = field(default_factory=list)  # (t, temp C, sm MHz)
    reasons: list[tuple[float, int | None]] = field(default_factory=list)  # (t, clock-event mask or None)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (t, what failed)
    wrap_t: list[float] = field(default_factory=list)  # times of the ticks that saw a wrap
    resets: list[tuple[float, int, int]] = field(default_factory=list)  # (t, raw before, raw after)


def _integrate(ts: list[float], ps: list[float], t0: float, t1: float) -> float:
    """Integral over [t0, t1] of the piecewise-linear curve through (ts, ps), held flat past its ends."""
    if not ts:
        return float("nan")
    if len(ts) == 1:
        return ps[0] * (t1 - t0)

    def value(t: float) -> float:
        if t <= ts[0]:
            return ps[0]
        if t >= ts[-1]:
            return ps[-1]
        i = bisect.bisect_right(ts, t)
        a, b = ts[i - 1], ts[i]
        return ps[i - 1] + (ps[i] - ps[i - 1]) * (t - a) / (b - a)

    lo = bisect.bisect_right(ts, t0)
    hi = bisect.bisect_left(ts, t1)
    knots = [t0] + ts[lo:hi] + [t1]
    vals = [value(t) for t in knots]
    return sum((knots[k + 1] - knots[k]) * (vals[k + 1] + vals[k]) / 2 for k in range(len(knots) - 1))


class _Sampler:
    """One pass over a GPU's NVML reads, emitting events ``(kind, t, *values)``; shared by the thread and the process.

    Events: ``("tick", t, raw_mJ)`` when the raw counter changed, ``("power", t, W)``,
    ``("state", t, temp_C, sm_MHz, reasons_mask_or_None)`` and ``("error", t, what)``.
    """

    def __init__(self, nv, handle, has_counter: bool, has_power: bool, power_period_s: float,
                 state_period_s: float = 1.0):
        self.nv, self.h = nv, handle
        self.has_counter, self.has_power = has_counter, has_power
        self.power_period_s, self.state_period_s = power_period_s, state_period_s
        self.last_raw: int | None = None
        self.reasons = None
        for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            fn = getattr(nv, name, None)
            if fn is None:
                continue
            try:
                fn(handle)
            except Exception:  # noqa: BLE001 - FunctionNotFound on older drivers, NotSupported
                continue
            self.reasons = fn
            break
        self.reset()

    def reset(self) -> None:
        """Sample power and state at the next pass."""
        self.next_power = self.next_state = time.perf_counter()

    def once(self, emit) -> None:
        nv, h = self.nv, self.h
        now = time.perf_counter()
        if self.has_counter:
            try:
                raw = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))
            except Exception as exc:  # noqa: BLE001 - every NVML failure is recorded
                emit("error", now, _describe("energy counter", exc))
            else:
                if raw != self.last_raw:
                    emit("tick", (now + time.perf_counter()) / 2, raw)
                    self.last_raw = raw
        if self.has_power and now >= self.next_power:
            try:
                p = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception as exc:  # noqa: BLE001
                emit("error", now, _describe("power", exc))
            else:
                emit("power", time.perf_counter(), p)
            self.next_power = max(self.next_power + self.power_period_s, now)
        if now >= self.next_state:
            self.next_state = now + self.state_period_s
            emit("state", now, *self._state(emit, now))

    def _state(self, emit, now: float) -> tuple[float, float, int | None]:
        nv, h = self.nv, self.h
        values = []
        for what, read in (("temperature", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                           ("SM clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))):
            try:
                values.append(float(read()))
            except Exception as exc:  # noqa: BLE001
                values.append(float("nan"))
                if not _is_not_supported(nv, exc):
                    emit("error", now, _describe(what, exc))
        mask = None
        if self.reasons is not None:
            try:
                mask = int(self.reasons(h))
            except Exception as exc:  # noqa: BLE001
                if _is_not_supported(nv, exc):
                    self.reasons = None
                else:
                    emit("error", now, _describe("clock-event reasons", exc))
        return values[0], values[1], mask


def _sampler_process(conn, events, uuid: str, poll_s: float, power_period_s: float, has_counter: bool,
                     has_power: bool, loader) -> None:
    """Body of the ``sampler="process"`` child: open NVML by UUID, stream events into ``events`` until told to stop."""
    nv = None
    try:
        nv = loader()
        nv.nvmlInit()
        h = _open_by_uuid(nv, uuid)
        seen = _s(nv.nvmlDeviceGetUUID(h))
        sampler = _Sampler(nv, h, has_counter, has_power, power_period_s)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises MeterUnavailable
        events.put(("fatal", time.perf_counter(), f"{type(exc).__name__}: {exc}"))
        return
    events.put(("hello", time.perf_counter(), seen, os.getpid()))

    def emit(*event):
        events.put(event)

    while True:
        try:
            if conn.poll():
                msg = conn.recv()
                if msg == "stop":
                    break
                if msg == "ping":
                    conn.send(time.perf_counter())
                    continue
        except (EOFError, OSError):  # the parent is gone
            break
        try:
            sampler.once(emit)
        except Exception as exc:  # noqa: BLE001 - a bug, not NVML: still recorded, the window is then refused
            emit("error", time.perf_counter(), f"sampler failed ({type(exc).__name__}: {exc})")
        time.sleep(poll_s)
    events.put(("bye", time.perf_counter()))
    try:
        nv.nvmlShutdown()
    except Exception:  # noqa: BLE001
        pass


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

    Raises:
        MeterUnavailable: no NVML, no such GPU, or the GPU is not ``cuda_uuid``'s.
    """

    method_names = ("counter", "power100", "power500")
    # Defaults for meters built without __init__ (energybook.report.provenance.replay_meter).
    update_period_s = 0.1
    has_power = True
    sampler = "thread"
    gpu_uuid: str | None = None
    cuda_uuid: str | None = None
    wraps = 0
    _last_raw: int | None = None
    _offset = 0
    _proc = None
    _conn = None
    _queue = None
    _bye = False
    _child_nvml = staticmethod(_pynvml)  # what the sampler process loads as NVML (picklable; tests swap it)
    process_start_timeout_s = 60.0

    def __init__(self, index: int | None = None, poll_s: float = 0.002, power_period_s: float = 0.1, sync=None, *,
                 uuid: str | None = None, cuda_uuid: str | None = None, sampler: str = "thread",
                 update_period_s: float = 0.1):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if index is not None and uuid is not None:
            raise ValueError("give the GPU by index or by uuid, not both")
        self.poll_s = poll_s
        self.power_period_s = power_period_s
        self.update_period_s = update_period_s
        self.sync = sync
        self.sampler = sampler
        self.cuda_uuid = None if cuda_uuid is None else str(cuda_uuid)
        self._nv = _pynvml()
        try:
            self._nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise MeterUnavailable(f"NVML could not start ({exc}): this needs an NVIDIA GPU with its driver; "
                                   "on a machine without one, measure elsewhere or use the committed data") from None
        self._nvml_open = True
        if uuid is not None:
            self._h = _open_by_uuid(self._nv, uuid)
            try:
                index = int(self._nv.nvmlDeviceGetIndex(self._h))
            except Exception:  # noqa: BLE001 - MIG devices have no host index
                index = None
        else:
            index = 0 if index is None else index
            try:
                self._h = self._nv.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                raise MeterUnavailable(f"NVML has no GPU at index {index} ({exc})") from None
        self.index = index
        self.gpu_uuid = _s(self._nv.nvmlDeviceGetUUID(self._h))
        if self.cuda_uuid is not None and _bare_uuid(self.gpu_uuid) != _bare_uuid(self.cuda_uuid):
            raise MeterUnavailable(f"the meter's GPU {self.gpu_uuid} (NVML) is not the engine's device "
                                   f"{self.cuda_uuid} (CUDA): it would measure another GPU. Build the meter with "
                                   "Meter.for_device(device) or Meter(uuid=...)")
        self.has_counter = True
        try:
            self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h)
        except self._nv.NVMLError_NotSupported:
            self.has_counter = False
            logger.warning("GPU %s has no total-energy counter: falling back to power integration (power100)",
                           self.gpu_uuid)
        try:
            self._nv.nvmlDeviceGetPowerUsage(self._h)
        except self._nv.NVMLError_NotSupported:
            self.has_power = False
            if not self.has_counter:
                raise MeterUnavailable(f"GPU {self.gpu_uuid} reports neither energy nor power through NVML") from None
        self.method = "counter" if self.has_counter else "power100"
        self._reason_bits = _reason_bits(self._nv)
        self._sampler = _Sampler(self._nv, self._h, self.has_counter, self.has_power, power_period_s)
        self._tl = _Timeline()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_raw = None
        self._offset = 0
        self.wraps = 0
        self._last_logged = -math.inf

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
        ordinal = _cuda_ordinal(device)
        torch = _torch_cuda()
        if torch is not None:
            count = torch.cuda.device_count()
            idx = torch.cuda.current_device() if ordinal is None else ordinal
            if not 0 <= idx < count:
                raise MeterUnavailable(f"torch sees {count} CUDA device(s): there is no cuda:{idx}")
            cuda_uuid = _s(torch.cuda.get_device_properties(idx).uuid)

            def sync(torch=torch, idx=idx):
                torch.cuda.synchronize(idx)

            kwargs.setdefault("sync", sync)
            return cls(uuid=cuda_uuid, cuda_uuid=cuda_uuid, poll_s=poll_s, **kwargs)
        idx = 0 if ordinal is None else ordinal
        visible = _visible_devices()
        if visible is None:
            return cls._by_cuda_index(idx, poll_s, **kwargs)
        if not 0 <= idx < len(visible):
            raise MeterUnavailable(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} shows "
                                   f"{len(visible)} device(s): there is no cuda:{idx}")
        entry = visible[idx]
        if entry.isdigit():
            return cls._by_cuda_index(int(entry), poll_s, **kwargs)
        return cls(uuid=entry, poll_s=poll_s, **kwargs)

    @classmethod
    def _by_cuda_index(cls, index: int, poll_s: float, **kwargs) -> Meter:
        m = cls(index=index, poll_s=poll_s, **kwargs)
        if os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            try:
                nv = m._nv
                names = {_s(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i)))
                         for i in range(nv.nvmlDeviceGetCount())}
            except Exception:  # noqa: BLE001
                names = set()
            if len(names) > 1:
                logger.warning("GPUs of several models (%s) and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's device "
                               "%d may not be NVML's; the meter reads %s", ", ".join(sorted(names)), index, m.gpu_uuid)
        return m

    # ----- device facts ------------------------------------------------------------------
    def device_info(self) -> dict:
        """GPU name, UUIDs (NVML's ``gpu_uuid``, torch's ``cuda_uuid`` or None), driver, power limit, for provenance."""
        nv, h = self._nv, self._h
        info = {"gpu": _s(nv.nvmlDeviceGetName(h)), "gpu_uuid": _s(nv.nvmlDeviceGetUUID(h)),
                "cuda_uuid": self.cuda_uuid, "driver": _s(nv.nvmlSystemGetDriverVersion()),
                "meter_method": self.method, "meter_sampler": self.sampler}
        try:
            info["power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
        except Exception:  # noqa: BLE001 - optional field
            info["power_limit_w"] = float("nan")
        return info

    # ----- recording ---------------------------------------------------------------------
    def _add_tick(self, t: float, raw: int) -> int:
        """Record a raw counter value (lock held); returns the unwrapped value."""
        last = self._last_raw
        tl = self._tl
        if last is not None and raw < last:
            if last >= WRAP_MJ - WRAP_MARGIN_MJ:
                self.wraps += 1
                self._offset += WRAP_MJ
                tl.wrap_t.append(t)
                logger.warning("energy counter wrapped around (%d -> %d); unwrapped", last, raw)
            else:  # a reset: continue the series flat from the last value; windows over it are refused
                tl.resets.append((t, last, raw))
                self._offset = (last + self._offset) - raw
                logger.warning("energy counter reset (%d -> %d mJ; driver reload?): windows over it are refused",
                               last, raw)
                self._last_raw = raw
                tl.tick_t.append(t)
                tl.tick_mj.append(raw + self._offset)
                return raw + self._offset
        self._last_raw = raw
        value = raw + self._offset  # an exact int: floats lose joules near 2**64
        if not tl.tick_mj or value != tl.tick_mj[-1]:
            tl.tick_t.append(t)
            tl.tick_mj.append(value)
        return value

    def _ingest(self, kind: str, t: float, *values) -> None:
        """Record one sampler event."""
        with self._lock:
            tl = self._tl
            if kind == "tick":
                self._add_tick(t, int(values[0]))
            elif kind == "power":
                tl.power_t.append(t)
                tl.power_w.append(float(values[0]))
            elif kind == "state":
                temp, clock, mask = values
                tl.state.append((t, temp, clock))
                tl.reasons.append((t, mask))
            elif kind == "error":
                tl.errors.append((t, values[0]))
                if t - self._last_logged > 5.0:
                    self._last_logged = t
                    logger.error("meter: %s (windows over NVML failures are refused)", values[0])

    def _read_counter(self) -> int:
        """Read the counter once, record it, and return its unwrapped value (mJ)."""
        t = time.perf_counter()
        raw = int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h))
        with self._lock:
            return self._add_tick(t, raw)

    # ----- sampler -----------------------------------------------------------------------
    def _run(self) -> None:
        sampler = self._sampler
        sampler.reset()
        while not self._stop.is_set():
            try:
                sampler.once(self._ingest)
            except Exception as exc:  # noqa: BLE001 - keep the thread alive, say why
                self._ingest("error", time.perf_counter(), f"sampler failed ({type(exc).__name__}: {exc})")
            time.sleep(self.poll_s)

    def _running(self) -> bool:
        return self._thread is not None or self._proc is not None

    def start(self) -> Meter:
        """Start the background sampler (a thread, or a child process with ``sampler="process"``)."""
        if self._running():
            return self
        if self.sampler == "process":
            self._start_process()
        else:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="energybook-meter", daemon=True)
            self._thread.start()
        time.sleep(max(3 * self.power_period_s, 0.2))
        self._drain()
        return self

    def stop(self) -> None:
        """Stop the background sampler; what it recorded stays readable."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._proc is not None:
            self._stop_process()

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

    # ----- sampler process ---------------------------------------------------------------
    def _start_process(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        events = ctx.Queue()
        proc = ctx.Process(target=_sampler_process, name="energybook-meter", daemon=True,
                           args=(child_conn, events, self.gpu_uuid, self.poll_s, self.power_period_s,
                                 self.has_counter, self.has_power, self._child_nvml))
        proc.start()
        child_conn.close()

        def fail(why: str):
            proc.kill()
            proc.join(5)
            conn.close()
            events.close()
            raise MeterUnavailable(f"the meter's sampler process {why}: use sampler='thread'")

        deadline = time.perf_counter() + self.process_start_timeout_s
        hello = None
        while hello is None:
            try:
                hello = events.get(timeout=0.1)
            except queue_module.Empty:
                if not proc.is_alive():  # spawn could not start it (a __main__ read from stdin, say)
                    fail(f"exited at start (exit code {proc.exitcode}; spawn re-imports the main module, which must "
                         "be a file guarded by `if __name__ == '__main__'`)")
                if time.perf_counter() > deadline:
                    fail(f"did not start within {self.process_start_timeout_s:.0f} s")
        if hello[0] != "hello":
            fail(f"could not read the GPU ({hello[2] if len(hello) > 2 else hello})")
        if _bare_uuid(hello[2]) != _bare_uuid(self.gpu_uuid):
            fail(f"opened GPU {hello[2]}, not the meter's {self.gpu_uuid}")
        for _ in range(3):  # clock handshake: the child's perf_counter must fall between the parent's
            a = time.perf_counter()
            conn.send("ping")
            if not conn.poll(10.0):
                fail("did not answer the clock handshake")
            c = conn.recv()
            b = time.perf_counter()
            if not a - 1e-3 <= c <= b + 1e-3:
                fail(f"has another clock (its perf_counter {c:.6f} is outside this process's [{a:.6f}, {b:.6f}])")
        self._proc, self._conn, self._queue, self._bye = proc, conn, events, False

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "bye":
            self._bye = True
        elif kind in ("tick", "power", "state", "error"):
            self._ingest(*event)

    def _drain(self) -> None:
        """Take every event the sampler process has sent so far (no thread: called by the readers)."""
        if self._queue is None:
            return
        while True:
            try:
                event = self._queue.get_nowait()
            except queue_module.Empty:
                return
            except (EOFError, OSError):  # pragma: no cover - the queue is broken
                return
            self._handle(event)

    def _stop_process(self) -> None:
        proc, conn, events = self._proc, self._conn, self._queue
        try:
            conn.send("stop")
        except (OSError, ValueError):
            pass
        deadline = time.perf_counter() + 5.0
        while not self._bye and time.perf_counter() < deadline:
            try:
                self._handle(events.get(timeout=0.05))
            except queue_module.Empty:
                if not proc.is_alive():
                    break
        self._drain()
        proc.join(5)
        if proc.is_alive():  # pragma: no cover - a stuck child
            proc.kill()
            proc.join(5)
        conn.close()
        events.close()
        self._proc = self._conn = self._queue = None

    def _sampler_dead(self) -> bool:
        return self._proc is not None and not self._proc.is_alive() and not self._bye

    # ----- windows -----------------------------------------------------------------------
    def now(self) -> float:
        """Synchronise the device, then read the clock (``time.perf_counter`` seconds)."""
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def wait_past(self, t: float, timeout_s: float = 2.0) -> None:
        """Wait until the sampler has seen a counter tick and a power sample after time ``t``."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            self._drain()
            with self._lock:
                tick_ok = (not self.has_counter) or (len(self._tl.tick_t) > 2 and self._tl.tick_t[-2] > t)
                power_ok = (not self.has_power) or (self._tl.power_t and self._tl.power_t[-1] > t + self.power_period_s)
            if tick_ok and power_ok:
                return
            if self._sampler_dead():
                logger.error("the meter's sampler process died (exit code %s)", self._proc.exitcode)
                return
            if not self._running():
                self._sampler.once(self._ingest)
            time.sleep(self.poll_s)
        logger.warning("meter saw no counter update within %.1f s after the window end", timeout_s)

    def _counter_causes(self, ts: list[float], es: list, t0: float, t1: float) -> list[str]:
        """Why the counter cannot give the energy of [t0, t1] (empty when it can)."""
        if len(ts) < 3:
            return ["the energy counter has fewer than three updates (is the meter started?)"]
        causes = []
        i0 = bisect.bisect_right(ts, t0) - 1  # last tick at or before t0
        j1 = bisect.bisect_left(ts, t1)  # first tick at or after t1
        if i0 < 0:
            causes.append(f"no counter tick at or before the window start (first at {ts[0]:.3f} s)")
        if j1 >= len(ts):
            causes.append(f"no counter tick at or after the window end (last at {ts[-1]:.3f} s): NVML stopped "
                          "answering or the sampler stopped")
        lo, hi = ts[max(i0, 0)], ts[min(j1, len(ts) - 1)]
        resets = [r for r in self._tl.resets if lo < r[0] <= hi]
        drops = [(ts[k + 1], es[k], es[k + 1]) for k in range(max(i0, 0), min(j1, len(ts) - 1)) if es[k + 1] < es[k]]
        for t, before, after in resets + drops:
            causes.append(f"the energy counter decreased ({before} -> {after} mJ at {t:.3f} s): a counter reset "
                          "(driver reload?), not a wrap")
        inside = j1 - (i0 + 1)
        if inside <= 0 and t1 - t0 > 3 * self.update_period_s:
            causes.append(f"zero counter ticks in a window longer than 3 update periods ({self.update_period_s:.3g} s)")
        return causes

    def counter_energy_j(self, t0: float, t1: float, start: str = "interp", end: str = "interp") -> tuple[float, int]:
        """Counter energy between two instants (joules), and the ticks inside the window.

        The energy at an instant comes from the ticks around it: ``"interp"`` interpolates linearly
        between the tick before and the tick after; ``"before"`` extends the slope of the last full
        tick interval before the instant (for a window that ends when the GPU goes idle);
        ``"after"`` extends the slope of the first full interval after it (a window that starts
        from idle).

        Raises:
            MeterError: the ticks do not bracket the window, it has none inside while longer than 3
                update periods, or the counter decreased (a reset) over it.
        """
        if start not in ("interp", "before", "after") or end not in ("interp", "before", "after"):
            raise ValueError(f"unknown edge mode {start!r}/{end!r}; use 'interp', 'before' or 'after'")
        self._drain()
        with self._lock:
            ts, es = list(self._tl.tick_t), list(self._tl.tick_mj)
            causes = self._counter_causes(ts, es, t0, t1)
        if causes:
            raise MeterError(t0, t1, causes)
        base = es[0]
        es = [float(e - base) for e in es]  # small numbers before any float arithmetic

        def energy_at(t: float, how: str) -> float:
            i = bisect.bisect_right(ts, t) - 1  # last tick at or before t
            if how == "before":
                i = min(max(i, 1), len(ts) - 1)
                a, b = i - 1, i
            elif how == "after":
                i = min(max(i + 1, 0), len(ts) - 2)
                a, b = i, i + 1
            else:
                i = min(max(i, 0), len(ts) - 2)
                a, b = i, i + 1
            slope = (es[b] - es[a]) / (ts[b] - ts[a])
            ref = b if how == "after" else a
            return es[ref] + slope * (t - ts[ref])

        inside = bisect.bisect_left(ts, t1) - bisect.bisect_right(ts, t0)
        return (energy_at(t1, end) - energy_at(t0, start)) / 1000.0, inside

    def _throttle_reasons(self, t0: float, t1: float) -> str:
        rows = [m for t, m in self._tl.reasons if t0 - 1.0 <= t <= t1]
        masks = [m for m in rows if m is not None]
        if not masks:
            return "unknown"
        union = 0
        for m in masks:
            union |= m
        return decode_reasons(union, getattr(self, "_reason_bits", None) or _reason_bits(_pynvml()))

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
            MeterError: an invalid window (the module's rules: NVML failures, missing ticks or samples, a reset).
        """
        if t1 <= t0:
            raise ValueError(f"empty window: t1 ({t1}) must come after t0 ({t0})")
        if wait:
            self.wait_past(t1)
        self._drain()
        with self._lock:
            pt, pw = list(self._tl.power_t), list(self._tl.power_w)
            errors = [e for e in self._tl.errors if t0 <= e[0] <= t1]
            wraps = sum(1 for t in self._tl.wrap_t if t <= t1)
            reasons = self._throttle_reasons(t0, t1)
            counter_causes = (self._counter_causes(list(self._tl.tick_t), list(self._tl.tick_mj), t0, t1)
                              if self.has_counter else [])
        causes = []
        if errors:
            causes.append(f"{len(errors)} NVML read failure(s) inside the window (first: {errors[0][1]})")
        causes += counter_causes
        samples = bisect.bisect_left(pt, t1) - bisect.bisect_right(pt, t0)
        if self.has_power and samples <= 0 and t1 - t0 > 3 * self.power_period_s:
            causes.append(f"zero power samples in a window longer than 3 power periods ({self.power_period_s:.3g} s)")
        if not self.has_counter and (not pt or pt[0] > t0 or pt[-1] < t1):
            causes.append("the power samples do not bracket the window (no sample at or before its start, or none at "
                          "or after its end)")
        if causes:
            raise MeterError(t0, t1, causes, len(errors))
        p100 = _integrate(pt, pw, t0, t1)
        p500 = _integrate(pt[::5], pw[::5], t0, t1)
        if self.has_counter:
            e, ticks = self.counter_energy_j(t0, t1, start, end)
        else:
            e, ticks = p100, 0
        return Reading(t0, t1, e, p100, p500, self.method, ticks, samples, wraps, len(errors), reasons)

    def state(self, t0: float, t1: float) -> GpuState:
        """Temperature and SM clock over [t0, t1] (means; max temperature), and the power limit."""
        self._drain()
        with self._lock:
            rows = [r for r in self._tl.state if t0 - 1.0 <= r[0] <= t1]
        try:
            limit = self._nv.nvmlDeviceGetEnforcedPowerLimit(self._h) / 1000.0
        except Exception:  # noqa: BLE001
            limit = float("nan")
        temps = [r[1] for r in rows if math.isfinite(r[1])]
        clocks = [r[2] for r in rows if math.isfinite(r[2])]
        nan = float("nan")
        return GpuState(sum(temps) / len(temps) if temps else nan, max(temps) if temps else nan,
                        sum(clocks) / len(clocks) if clocks else nan, limit)

    def timeline(self) -> dict[str, list[float]]:
        """Copies of the recorded series: counter ticks (s, mJ) and power samples (s, W)."""
        self._drain()
        with self._lock:
            return {"tick_t": list(self._tl.tick_t), "tick_mj": list(self._tl.tick_mj),
                    "power_t": list(self._tl.power_t), "power_w": list(self._tl.power_w)}

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
