"""The meter's recorded readings and the rules that turn them into a window's energy: pure, no NVML.

A :class:`Timeline` holds timestamped readings of one GPU (``time.perf_counter`` seconds): the
energy counter's *ticks* (millijoules, unwrapped), power samples (watts), the once-a-second state
(temperature, SM clock, clock-event mask) and the NVML read failures. :meth:`Timeline.reading`
gives the energy and mean power of a window ``[t0, t1]``, or raises :class:`MeterError` naming every
reason it cannot. :class:`energybook.measure.meter.Meter` fills a timeline from NVML;
:func:`energybook.report.provenance.replay_meter` builds one from recorded series.

**Counter.** The energy at an instant is interpolated between the ticks around it. A decrease of
the raw counter is a *wrap* (unwrapped by adding ``2**64``) only when the counter was climbing
within ``2**40`` mJ of ``2**64`` (the tick before the last was there too); any other decrease (a
driver reload, a single bogus read of ``2**64 - 1``, reads of zero) is a *reset*: windows over it are
refused and the series continues from it, so that later windows read right.

**Validity.** A window is refused when an NVML read failed inside it, the ticks do not bracket it,
it is longer than 3 update periods with no tick (or 3 power periods with no power sample) inside,
or the counter decreased over it (the rules of :mod:`energybook.measure.meter`).

**Physics.** Every window's energy is also checked against what the GPU can draw:

* at least :data:`FLOOR_FRACTION` (70 %) of the lowest power sample of the timeline (the idle
  power, which a working GPU does not go below) times ``duration_s - update_period_s``;
* at most :data:`CEILING_FACTOR` (1.25) times the power cap (:attr:`Timeline.power_cap_w`) times
  ``duration_s + update_period_s``. The one update period of slack on each bound covers a tick
  stamped late by a busy sampler;
* with both instruments, the counter's energy agrees with the power timeline integrated over the
  same window within :data:`AGREEMENT_REL` (25 %) plus :data:`POWER_LAG_S` (1 s) at the ceiling
  power, since recent GPUs report power as a one-second average that lags the counter.

A window outside these bounds raises :class:`MeterError`: a counter jump, a bogus read or reads of
zero are refused, never recorded.

**Throttle reasons.** The clock-event mask is sampled every :attr:`Timeline.state_period_s` (1 s),
so an event shorter than that is seen only if a sample falls inside it. A window shorter than the
state period, or with no state sample inside it, gets ``"unknown"``, never ``""`` (none).

Used in :doc:`/book/instruments`.
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
from dataclasses import dataclass, field, fields

logger = logging.getLogger(__name__)

WRAP_MJ = 2**64  # the counter is an unsigned long long (mJ)
WRAP_MARGIN_MJ = 2**40  # a wrap starts from within this of 2**64; any other decrease is a reset

#: Physics bounds of a window's energy (see the module's docstring).
FLOOR_FRACTION = 0.7  # floor: this fraction of the lowest power sample (watts) times the window
CEILING_FACTOR = 1.25  # ceiling: this factor times the power cap (watts) times the window
AGREEMENT_REL = 0.25  # counter vs power timeline: relative tolerance ...
POWER_LAG_S = 1.0  # ... plus this many seconds at the ceiling power (the power reading's averaging lag)

EDGES = ("interp", "before", "after")


class MeterError(RuntimeError):
    """A window the meter cannot measure (NVML failures, missing ticks or samples, a counter reset, an
    energy outside physics).

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
            (``"sw_power_cap|hw_slowdown"``): the union over the state samples from one state period
            before ``t0`` to ``t1``; ``""`` when none was seen, ``"unknown"`` when the GPU does not report
            them, the window is shorter than the state period or no state sample falls inside it.
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


def integrate(ts: list[float], ps: list[float], t0: float, t1: float) -> float:
    """Integral over [t0, t1] of the piecewise-linear curve through (ts, ps), held flat past its ends.

    Args:
        ts: Sample times (seconds), increasing.
        ps: Power samples (watts).
        t0: Window start (seconds).
        t1: Window end (seconds).

    Returns:
        Energy (joules); NaN without samples.
    """
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


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class Timeline:
    """Timestamped readings of one GPU and the rules that give a window's energy (joules) and power (watts).

    Attributes:
        tick_t: Times of the counter's updates (seconds).
        tick_mj: Counter values at those times, unwrapped and continued across resets (millijoules).
        power_t: Times of the power samples (seconds).
        power_w: Power samples (watts).
        state: ``(t, temperature C, SM clock MHz)`` samples.
        reasons: ``(t, clock-event mask or None)`` samples (None: not readable).
        errors: ``(t, what failed)`` for every NVML read failure.
        wrap_t: Times of the ticks that saw a wrap.
        resets: ``(t, raw before, raw after)`` of every decrease that is not a wrap.
        has_counter: Whether energy comes from the counter (else from ``power100``).
        has_power: Whether power is sampled.
        update_period_s: The counter's update period (seconds).
        power_period_s: The power sampling period (seconds).
        state_period_s: The state (and clock-event) sampling period (seconds).
        power_cap_w: The highest power the GPU may draw (watts; NaN when unknown: no ceiling then).
        reason_bits: ``(bit, name)`` of the clock-event reasons, to decode the masks.
    """

    tick_t: list[float] = field(default_factory=list)
    tick_mj: list[int] = field(default_factory=list)
    power_t: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    state: list[tuple[float, float, float]] = field(default_factory=list)
    reasons: list[tuple[float, int | None]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    wrap_t: list[float] = field(default_factory=list)
    resets: list[tuple[float, int, int]] = field(default_factory=list)
    has_counter: bool = True
    has_power: bool = True
    update_period_s: float = 0.1
    power_period_s: float = 0.1
    state_period_s: float = 1.0
    power_cap_w: float = float("nan")
    reason_bits: list[tuple[int, str]] = field(default_factory=list)
    _raw: list[int] = field(default_factory=list, repr=False)  # the last two raw counter values
    _offset: int = field(default=0, repr=False)

    @classmethod
    def from_series(cls, tick_t, tick_mj, power_t, power_w, **settings) -> Timeline:
        """A timeline of recorded series (counter already unwrapped, millijoules; power in watts).

        Args:
            tick_t: Times of the counter's updates (seconds).
            tick_mj: Counter values at those times (millijoules).
            power_t: Times of the power samples (seconds).
            power_w: Power samples (watts).
            **settings: Other attributes (``power_cap_w``, ``update_period_s``...).
        """
        return cls([float(t) for t in tick_t], [float(e) for e in tick_mj], [float(t) for t in power_t],
                   [float(p) for p in power_w], **settings)

    @property
    def wraps(self) -> int:
        """Counter wrap-arounds seen."""
        return len(self.wrap_t)

    @property
    def method(self) -> str:
        """``"counter"``, or ``"power100"`` without the counter."""
        return "counter" if self.has_counter else "power100"

    def snapshot(self) -> Timeline:
        """A copy whose lists the recorder no longer appends to (their items are immutable)."""
        new = copy.copy(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(new, f.name, list(value))
        return new

    # ----- recording ---------------------------------------------------------------------
    def add_tick(self, t: float, raw: int) -> int:
        """Record a raw counter value (millijoules) read at ``t``; returns its unwrapped value.

        A decrease is a wrap when the last two raw values were within ``WRAP_MARGIN_MJ`` of ``2**64``
        (or the last is the first); any other decrease is a reset (see the module's docstring).
        """
        raw = int(raw)
        if self._raw and raw < self._raw[-1]:
            climbing = all(r >= WRAP_MJ - WRAP_MARGIN_MJ for r in self._raw)
            if climbing:
                self.wrap_t.append(t)
                self._offset += WRAP_MJ
                logger.warning("energy counter wrapped around (%d -> %d); unwrapped", self._raw[-1], raw)
            else:  # continue flat from the last value; windows over it are refused
                self.resets.append((t, self._raw[-1], raw))
                self._offset += self._raw[-1] - raw
                logger.warning("energy counter decreased (%d -> %d mJ; a driver reload or a bad read): windows "
                               "over it are refused", self._raw[-1], raw)
                self._raw = [raw]
                self.tick_t.append(t)
                self.tick_mj.append(raw + self._offset)
                return raw + self._offset
        self._raw = (self._raw + [raw])[-2:]
        value = raw + self._offset  # an exact int: floats lose joules near 2**64
        if not self.tick_mj or value != self.tick_mj[-1]:
            self.tick_t.append(t)
            self.tick_mj.append(value)
        return value

    def add(self, kind: str, t: float, *values) -> None:
        """Record one sampler event: ``("tick", t, raw_mJ)``, ``("power", t, W)``,
        ``("state", t, temp_C, sm_MHz, mask_or_None)`` or ``("error", t, what)``."""
        if kind == "tick":
            self.add_tick(t, int(values[0]))
        elif kind == "power":
            self.power_t.append(t)
            self.power_w.append(float(values[0]))
        elif kind == "state":
            temp, clock, mask = values
            self.state.append((t, temp, clock))
            self.reasons.append((t, mask))
        elif kind == "error":
            self.errors.append((t, values[0]))

    def as_dict(self) -> dict[str, list[float]]:
        """Copies of the counter ticks (s, mJ) and power samples (s, W)."""
        return {"tick_t": list(self.tick_t), "tick_mj": list(self.tick_mj),
                "power_t": list(self.power_t), "power_w": list(self.power_w)}

    # ----- counter -----------------------------------------------------------------------
    def counter_causes(self, t0: float, t1: float) -> list[str]:
        """Why the counter cannot give the energy of [t0, t1] (empty when it can)."""
        ts, es = self.tick_t, self.tick_mj
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
        resets = [r for r in self.resets if lo < r[0] <= hi]
        drops = [(ts[k + 1], es[k], es[k + 1]) for k in range(max(i0, 0), min(j1, len(ts) - 1)) if es[k + 1] < es[k]]
        for t, before, after in resets + drops:
            causes.append(f"the energy counter decreased ({before} -> {after} mJ at {t:.3f} s): a counter reset "
                          "(driver reload?) or a bad read, not a wrap")
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
            ValueError: an unknown edge mode.
            MeterError: the ticks do not bracket the window, it has none inside while longer than 3
                update periods, or the counter decreased (a reset) over it.
        """
        if start not in EDGES or end not in EDGES:
            raise ValueError(f"unknown edge mode {start!r}/{end!r}; use 'interp', 'before' or 'after'")
        causes = self.counter_causes(t0, t1)
        if causes:
            raise MeterError(t0, t1, causes)
        ts = self.tick_t
        base = self.tick_mj[max(bisect.bisect_right(ts, t0) - 2, 0)]  # a tick next to the window: exact ints
        es = [float(e - base) for e in self.tick_mj]  # small numbers before any float arithmetic

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

    # ----- physics -----------------------------------------------------------------------
    def physics_causes(self, t0: float, t1: float, energy_j: float, power100_j: float) -> list[str]:
        """Why ``energy_j`` cannot be the energy of [t0, t1] on this GPU (empty when it can).

        Args:
            t0: Window start (seconds).
            t1: Window end (seconds).
            energy_j: The window's energy by the main method (joules).
            power100_j: The power timeline integrated over the window (joules; NaN without power).
        """
        duration_s, slack_s = t1 - t0, self.update_period_s
        if not math.isfinite(energy_j):
            return [f"the window's energy is not a number ({energy_j})"]
        causes = []
        powers = [p for p in self.power_w if math.isfinite(p)]
        idle_w = min(powers) if powers else 0.0
        floor_j = FLOOR_FRACTION * max(idle_w, 0.0) * max(duration_s - slack_s, 0.0)
        if energy_j < floor_j:
            causes.append(f"{energy_j:.4g} J is below {FLOOR_FRACTION:.0%} of the idle power ({idle_w:.1f} W, the "
                          f"lowest power sample) over the window ({floor_j:.4g} J): the energy counter stalled or "
                          "read zero; check the GPU with nvidia-smi")
        cap_w = self.power_cap_w if _finite(self.power_cap_w) and self.power_cap_w > 0 else float("nan")
        if math.isfinite(cap_w):
            ceiling_j = CEILING_FACTOR * cap_w * (duration_s + slack_s)
            if energy_j > ceiling_j:
                causes.append(f"{energy_j:.4g} J is above {CEILING_FACTOR:g} x the power cap ({cap_w:.0f} W) over the "
                              f"window ({ceiling_j:.4g} J): a counter jump or a bad read, not energy; check the GPU "
                              "with nvidia-smi")
        if self.has_counter and math.isfinite(power100_j):
            top_w = CEILING_FACTOR * (cap_w if math.isfinite(cap_w) else max(powers, default=0.0))
            allowed_j = AGREEMENT_REL * max(abs(energy_j), abs(power100_j)) + POWER_LAG_S * top_w
            if abs(energy_j - power100_j) > allowed_j:
                causes.append(f"the counter's {energy_j:.4g} J disagrees with the power timeline's {power100_j:.4g} J "
                              f"over the same window by more than {allowed_j:.4g} J ({AGREEMENT_REL:.0%} plus "
                              f"{POWER_LAG_S:g} s at {top_w:.0f} W): one instrument read wrong")
        return causes

    # ----- windows -----------------------------------------------------------------------
    def throttle_reasons(self, t0: float, t1: float) -> str:
        """Clock-event reasons seen over [t0, t1]: ``|``-joined names, ``""`` for none, or ``"unknown"``
        when the window is shorter than the state period or has no readable state sample inside."""
        period = self.state_period_s
        rows = [(t, m) for t, m in self.reasons if t0 - period <= t <= t1]
        if t1 - t0 < period or not any(t0 <= t and m is not None for t, m in rows):
            return "unknown"
        if any(m is None for _, m in rows):
            return "unknown"
        union = 0
        for _, m in rows:
            union |= m
        return decode_reasons(union, self.reason_bits)

    def state_over(self, t0: float, t1: float, power_limit_w: float = float("nan")) -> GpuState:
        """Temperature and SM clock over [t0, t1] (means; max temperature), with ``power_limit_w`` (watts)."""
        rows = [r for r in self.state if t0 - self.state_period_s <= r[0] <= t1]
        temps = [r[1] for r in rows if math.isfinite(r[1])]
        clocks = [r[2] for r in rows if math.isfinite(r[2])]
        nan = float("nan")
        return GpuState(sum(temps) / len(temps) if temps else nan, max(temps) if temps else nan,
                        sum(clocks) / len(clocks) if clocks else nan, power_limit_w)

    def reading(self, t0: float, t1: float, wait: bool = False, start: str = "interp", end: str = "interp") -> Reading:
        """The energy of the window [t0, t1] by every method, checked against the rules and physics.

        Args:
            t0: Window start (seconds).
            t1: Window end (seconds).
            wait: Ignored (a recorded timeline has nothing to wait for); kept for the meter's signature.
            start: How the counter is read at ``t0`` (see :meth:`counter_energy_j`).
            end: How the counter is read at ``t1`` (``"before"`` when the GPU goes idle at ``t1``).

        Raises:
            ValueError: an empty window.
            MeterError: an invalid window (NVML failures, missing ticks or samples, a reset, an energy outside
                physics: see the module's docstring).
        """
        if t1 <= t0:
            raise ValueError(f"empty window: t1 ({t1}) must come after t0 ({t0})")
        pt, pw = self.power_t, self.power_w
        errors = [e for e in self.errors if t0 <= e[0] <= t1]
        causes = []
        if errors:
            causes.append(f"{len(errors)} NVML read failure(s) inside the window (first: {errors[0][1]})")
        if self.has_counter:
            causes += self.counter_causes(t0, t1)
        samples = bisect.bisect_left(pt, t1) - bisect.bisect_right(pt, t0)
        if self.has_power and samples <= 0 and t1 - t0 > 3 * self.power_period_s:
            causes.append(f"zero power samples in a window longer than 3 power periods ({self.power_period_s:.3g} s)")
        if not self.has_counter and (not pt or pt[0] > t0 or pt[-1] < t1):
            causes.append("the power samples do not bracket the window (no sample at or before its start, or none at "
                          "or after its end)")
        if causes:
            raise MeterError(t0, t1, causes, len(errors))
        p100 = integrate(pt, pw, t0, t1)
        p500 = integrate(pt[::5], pw[::5], t0, t1)
        if self.has_counter:
            e, ticks = self.counter_energy_j(t0, t1, start, end)
        else:
            e, ticks = p100, 0
        causes = self.physics_causes(t0, t1, e, p100)
        if causes:
            raise MeterError(t0, t1, causes)
        wraps = sum(1 for t in self.wrap_t if t <= t1)
        return Reading(t0, t1, e, p100, p500, self.method, ticks, samples, wraps, 0, self.throttle_reasons(t0, t1))
