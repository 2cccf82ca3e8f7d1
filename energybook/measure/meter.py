"""GPU energy meter: NVML's total-energy counter, with a power timeline beside it.

Two instruments, read on the same run:

* the **energy counter** (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver
  loaded). It updates about every 100 ms. A background thread polls it every few milliseconds and
  records each *tick* (the time at which its value changes); the energy at any instant between two
  ticks is interpolated linearly, so a window need not start or end on a tick. Wrap-around of the
  counter is unwrapped.
* the **power timeline** (``nvmlDeviceGetPowerUsage``, milliwatts) sampled about every 100 ms by
  the same thread. From it come two power integrations: ``power100`` (every sample, trapezoid)
  and ``power500`` (every 5th sample, about 500 ms apart, trapezoid): the SweetSpot study's
  method.

Temperature, SM clock and power limit are sampled once a second. On a GPU without the counter
(``NVMLError_NotSupported``) the meter falls back to ``power100`` and says so in
:attr:`Reading.method`.

Without NVML, a GPU or the ``nvidia-ml-py`` package, :class:`MeterUnavailable` (a
``RuntimeError``) says what to do.

Used in :doc:`/book/instruments`.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

WRAP_MJ = 2**64  # the counter is an unsigned long long (mJ)


class MeterUnavailable(RuntimeError):
    """No energy meter: no NVIDIA GPU, no NVML driver library, or no ``nvidia-ml-py``."""


def _pynvml():
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MeterUnavailable("the meter needs NVIDIA's NVML bindings: pip install nvidia-ml-py "
                               "(or pip install 'energybook[gpu]')") from exc
    return pynvml


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
    """

    t0: float
    t1: float
    energy_j: float
    energy_j_power100: float
    energy_j_power500: float
    method: str
    ticks: int = 0
    samples: int = 0

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
    tick_mj: list[int] = field(default_factory=list)  # unwrapped, mJ
    power_t: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    state: list[tuple[float, float, float]] = field(default_factory=list)  # (t, temp C, sm MHz)


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


class Meter:
    """NVML energy meter for one GPU, with a background sampler.

    Use as a context manager; mark windows with :meth:`now` (which synchronises the device
    first) and read them with :meth:`reading` once the thread has seen a tick past the window's end.

    Args:
        index: NVML device index (the CUDA device ordinal when ``CUDA_VISIBLE_DEVICES`` is unset).
        poll_s: Counter polling period (seconds); sets the timing error of a tick.
        power_period_s: Power sampling period (seconds), about NVML's 100 ms refresh.
        sync: Callable that waits for the device (``torch.cuda.synchronize``) before a clock read.
    """

    method_names = ("counter", "power100", "power500")

    def __init__(self, index: int = 0, poll_s: float = 0.002, power_period_s: float = 0.1, sync=None):
        self.index = index
        self.poll_s = poll_s
        self.power_period_s = power_period_s
        self.sync = sync
        self._nv = _pynvml()
        try:
            self._nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise MeterUnavailable(f"NVML could not start ({exc}): this needs an NVIDIA GPU with its driver; "
                                   "on a machine without one, measure elsewhere or use the committed data") from None
        try:
            self._h = self._nv.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            raise MeterUnavailable(f"NVML has no GPU at index {index} ({exc})") from None
        self.has_counter = True
        try:
            self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h)
        except self._nv.NVMLError_NotSupported:
            self.has_counter = False
            logger.warning("GPU %d has no total-energy counter: falling back to power integration (power100)", index)
        self.method = "counter" if self.has_counter else "power100"
        self._tl = _Timeline()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_raw: int | None = None
        self._offset = 0
        self.wraps = 0

    # ----- device facts ------------------------------------------------------------------
    def device_info(self) -> dict:
        """GPU name, UUID, driver version and power limit, for provenance records."""
        nv, h = self._nv, self._h

        def s(x):
            return x.decode() if isinstance(x, bytes) else str(x)

        info = {"gpu": s(nv.nvmlDeviceGetName(h)), "gpu_uuid": s(nv.nvmlDeviceGetUUID(h)),
                "driver": s(nv.nvmlSystemGetDriverVersion()), "meter_method": self.method}
        try:
            info["power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
        except Exception:  # noqa: BLE001 - optional field
            info["power_limit_w"] = float("nan")
        return info

    # ----- sampling thread ---------------------------------------------------------------
    def _read_counter(self) -> int:
        raw = int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h))
        if self._last_raw is not None and raw < self._last_raw:
            self.wraps += 1
            self._offset += WRAP_MJ
            logger.warning("energy counter wrapped around (%d -> %d); unwrapped", self._last_raw, raw)
        self._last_raw = raw
        return raw + self._offset  # an exact int: floats lose joules near 2**64

    def _sample_once(self, t_power: list[float], t_state: list[float]) -> None:
        now = time.perf_counter()
        if self.has_counter:
            mj = self._read_counter()
            t = time.perf_counter()
            with self._lock:
                if not self._tl.tick_mj or mj != self._tl.tick_mj[-1]:
                    self._tl.tick_t.append((now + t) / 2)
                    self._tl.tick_mj.append(mj)
        if now >= t_power[0]:
            p = self._nv.nvmlDeviceGetPowerUsage(self._h) / 1000.0
            with self._lock:
                self._tl.power_t.append(time.perf_counter())
                self._tl.power_w.append(p)
            t_power[0] = max(t_power[0] + self.power_period_s, now)
        if now >= t_state[0]:
            try:
                temp = self._nv.nvmlDeviceGetTemperature(self._h, self._nv.NVML_TEMPERATURE_GPU)
                clock = self._nv.nvmlDeviceGetClockInfo(self._h, self._nv.NVML_CLOCK_SM)
                with self._lock:
                    self._tl.state.append((now, float(temp), float(clock)))
            except Exception:  # noqa: BLE001 - state is optional
                pass
            t_state[0] = now + 1.0

    def _run(self) -> None:
        t_power, t_state = [time.perf_counter()], [time.perf_counter()]
        while not self._stop.is_set():
            try:
                self._sample_once(t_power, t_state)
            except Exception as exc:  # noqa: BLE001 - keep the thread alive, say why
                logger.error("meter sampling failed: %s", exc)
            time.sleep(self.poll_s)

    def start(self) -> Meter:
        """Start the background sampler."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="energybook-meter", daemon=True)
            self._thread.start()
            time.sleep(max(3 * self.power_period_s, 0.2))
        return self

    def stop(self) -> None:
        """Stop the background sampler."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

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
            with self._lock:
                tick_ok = (not self.has_counter) or (len(self._tl.tick_t) > 2 and self._tl.tick_t[-2] > t)
                power_ok = self._tl.power_t and self._tl.power_t[-1] > t + self.power_period_s
            if tick_ok and power_ok:
                return
            if self._thread is None:
                self._sample_once([0.0], [float("inf")])
            time.sleep(self.poll_s)
        logger.warning("meter saw no counter update within %.1f s after the window end", timeout_s)

    def counter_energy_j(self, t0: float, t1: float, start: str = "interp", end: str = "interp") -> tuple[float, int]:
        """Counter energy between two instants (joules), and the ticks inside the window.

        The energy at an instant comes from the ticks around it: ``"interp"`` interpolates linearly
        between the tick before and the tick after; ``"before"`` extends the slope of the last full
        tick interval before the instant (for a window that ends when the GPU goes idle);
        ``"after"`` extends the slope of the first full interval after it (a window that starts
        from idle).
        """
        with self._lock:
            ts, es = list(self._tl.tick_t), list(self._tl.tick_mj)
        if es:
            base = es[0]
            es = [float(e - base) for e in es]  # small numbers before any float arithmetic
        if len(ts) < 3:
            raise RuntimeError("the energy counter has fewer than three updates: is the meter started?")

        def energy_at(t: float, how: str) -> float:
            i = bisect.bisect_right(ts, t) - 1  # last tick at or before t
            if how == "before":
                i = min(max(i, 1), len(ts) - 1)
                a, b = i - 1, i
            elif how == "after":
                i = min(max(i + 1, 0), len(ts) - 2)
                a, b = i, i + 1
            elif how == "interp":
                i = min(max(i, 0), len(ts) - 2)
                a, b = i, i + 1
            else:
                raise ValueError(f"unknown edge mode {how!r}; use 'interp', 'before' or 'after'")
            slope = (es[b] - es[a]) / (ts[b] - ts[a])
            ref = b if how == "after" else a
            return es[ref] + slope * (t - ts[ref])

        inside = bisect.bisect_left(ts, t1) - bisect.bisect_right(ts, t0)
        return (energy_at(t1, end) - energy_at(t0, start)) / 1000.0, inside

    def reading(self, t0: float, t1: float, wait: bool = True, start: str = "interp", end: str = "interp") -> Reading:
        """The energy of the window [t0, t1] by every method.

        Args:
            t0: Window start from :meth:`now` (seconds).
            t1: Window end from :meth:`now` (seconds).
            wait: Wait for the sampler to pass ``t1`` first (needed for the counter's interpolation).
            start: How the counter is read at ``t0`` (see :meth:`counter_energy_j`).
            end: How the counter is read at ``t1`` (``"before"`` when the GPU goes idle at ``t1``).
        """
        if t1 <= t0:
            raise ValueError(f"empty window: t1 ({t1}) must come after t0 ({t0})")
        if wait:
            self.wait_past(t1)
        with self._lock:
            pt, pw = list(self._tl.power_t), list(self._tl.power_w)
        p100 = _integrate(pt, pw, t0, t1)
        p500 = _integrate(pt[::5], pw[::5], t0, t1)
        samples = bisect.bisect_left(pt, t1) - bisect.bisect_right(pt, t0)
        if self.has_counter:
            e, ticks = self.counter_energy_j(t0, t1, start, end)
        else:
            e, ticks = p100, 0
        return Reading(t0, t1, e, p100, p500, self.method, ticks, samples)

    def state(self, t0: float, t1: float) -> GpuState:
        """Temperature and SM clock over [t0, t1] (means; max temperature), and the power limit."""
        with self._lock:
            rows = [r for r in self._tl.state if t0 - 1.0 <= r[0] <= t1]
        try:
            limit = self._nv.nvmlDeviceGetEnforcedPowerLimit(self._h) / 1000.0
        except Exception:  # noqa: BLE001
            limit = float("nan")
        if not rows:
            return GpuState(power_limit_w=limit)
        temps = [r[1] for r in rows]
        return GpuState(sum(temps) / len(temps), max(temps), sum(r[2] for r in rows) / len(rows), limit)

    def timeline(self) -> dict[str, list[float]]:
        """Copies of the recorded series: counter ticks (s, mJ) and power samples (s, W)."""
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
        return Reading(t0, t1, e, e, e, self.method, 0, 0)

    def state(self, t0: float, t1: float) -> GpuState:
        return GpuState()

    def device_info(self) -> dict:
        return {"gpu": "simulated", "gpu_uuid": "none", "driver": "none", "meter_method": self.method,
                "power_limit_w": float("nan")}
