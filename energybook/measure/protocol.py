"""The sweep protocol: one frozen :class:`SweepConfig`, checked before anything runs, and the plan.

A :class:`SweepConfig` is both what you pass to :func:`energybook.measure.runner.run_sweep` and what
the results file's sidecar records as its ``protocol``: a rerun must bring the same protocol, or it is
refused. Every value is checked when the object is made, so a typo fails at once, not after the first
point has been measured.

A sweep measures every point of a grid (default: the study's 7x7, powers of two 64..4096) for one
model, ``n_req`` identical requests per point, batched up to ``max_batch`` and as far as KV-cache
memory allows (balanced waves when not all fit). Two modes:

* ``prefix`` (default, fast): points of the same ``n_in`` and the same batch are prefixes of one
  generation; the counter is read at every ``n_out`` checkpoint. One wave is measured and counted
  ``n_req / batch`` times. A point whose window is shorter than ``min_window_s`` is measured again
  on its own, its wave repeated back to back until the window is long enough.
* ``full``: every point is a separate, complete run of all its waves (the reference the fast mode
  is checked against).

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from energybook.measure.settings import check as check_settings
from energybook.measure.settings import is_settings
from energybook.model.complexity import GRID, balanced_batch, check_positive  # noqa: F401 (balanced_batch: API)

MODES = ("prefix", "full", "sampled")
SAMPLERS = ("thread", "process")
#: Prompt tokens of a wave: seeded random ids, or one id repeated (to bound how much the data moves the power).
PROMPTS = ("random", "repeated")
#: Kinds of random ("dummy") weights; ``normal:STD`` and ``student_t:DF:STD`` take their numbers.
WEIGHT_INITS = ("normal", "zeros", "student_t")


def offgrid_points(n: int = 12, seed: int = 0, low: int = 64, high: int = 4096) -> list[tuple[int, int]]:
    """``n`` distinct (n_in, n_out) pairs drawn log-uniformly in [low, high], none of whose lengths is a power of two:
    the off-grid check of the physical model (issue 14). Seeded, so every machine draws the same pairs.

    Raises:
        ValueError: for a range too narrow to hold ``n`` such pairs.
    """
    import numpy as np

    check_positive(n=n, low=low, high=high)
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int]] = []
    for _ in range(1000 * n):
        a, b = (int(round(float(x))) for x in np.exp(rng.uniform(np.log(low), np.log(high), 2)))
        if all(v & (v - 1) and low <= v <= high for v in (a, b)) and (a, b) not in out:
            out.append((a, b))
            if len(out) == n:
                return sorted(out)
    raise ValueError(f"could not draw {n} off-grid pairs in [{low}, {high}]")


def check_dummy_data(weight_init: str, prompts: str) -> None:
    """Refuse a dummy-weight distribution (:func:`parse_weight_init`) or a prompt kind (:data:`PROMPTS`) by name:
    the one check of the protocol and of both engines."""
    parse_weight_init(weight_init)
    if prompts not in PROMPTS:
        raise ValueError(f"prompts must be one of {PROMPTS}, got {prompts!r}")


def parse_weight_init(spec: str) -> tuple[str, tuple[float, ...]]:
    """``"normal:0.02"`` -> ("normal", (0.02,)); ``"zeros"``; ``"student_t:3:0.02"`` (degrees of freedom, std).

    The dummy weights of the engines' matrices (norm weights stay at 1): normal with that standard deviation,
    all zeros, or Student's t with ``DF`` > 2 degrees of freedom scaled to that standard deviation (heavy tails).

    Raises:
        ValueError: naming the accepted forms.
    """
    forms = "normal:STD, zeros or student_t:DF:STD (e.g. normal:0.02, student_t:3:0.02)"
    if not isinstance(spec, str):
        raise ValueError(f"weight_init must be a string: {forms}; got {spec!r}")
    kind, *nums = spec.split(":")
    try:
        values = tuple(float(x) for x in nums)
    except ValueError:
        raise ValueError(f"weight_init {spec!r}: numbers expected after the kind; use {forms}") from None
    want = {"normal": 1, "zeros": 0, "student_t": 2}.get(kind)
    if want is None or len(values) != want or any(not (v > 0 and v < float("inf")) for v in values) \
            or (kind == "student_t" and values[0] <= 2):
        raise ValueError(f"weight_init {spec!r} is not one of {forms} (positive numbers, DF > 2)")
    return kind, values
#: Most measurements of one point a sweep may ask for.
MAX_REPEATS = 100
#: Longest context (tokens): every ``n_in``, every ``n_out`` and every ``n_in + n_out`` of a point at most this
#: (2**20, beyond the declared context of every shipped model; dummy weights may extend learned positions).
MAX_CONTEXT = 1 << 20
#: Most requests per point (``n_req``): the study runs 1000; more only repeats identical waves.
MAX_N_REQ = 10**7
#: Largest batch cap (``max_batch``, requests): a batch never exceeds the requests.
MAX_BATCH = MAX_N_REQ
#: Largest seed (the torch and numpy generators take 64-bit seeds).
MAX_SEED = 2**63 - 1
#: Most warm-up decode steps before a group.
MAX_WARMUP_STEPS = MAX_CONTEXT
#: Shortest counter polling period (seconds): below it the sampler would only burn a core.
MIN_POLL_S = 0.0005


def _finite(name: str, value: Any, low: float = 0.0, strict: bool = False, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if v < low or (strict and v == low):
        raise ValueError(f"{name} must be {'above' if strict else 'at least'} {low}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be at most {high}, got {value!r}")
    return v


def check_at_most(name: str, value: int, high: int, what: str = "") -> None:
    """Raise ``ValueError`` naming the range 1..``high`` when ``value`` is above it."""
    if value > high:
        raise ValueError(f"{name} must be at most {high}{what}, got {value!r}")


def check_text(name: str, value: str) -> None:
    """Refuse a control character (a newline, a tab, NUL ...) in text that results files record: a name written
    into a CSV cell or a sidecar must stay one printable line."""
    bad = next((c for c in value if ord(c) < 32 or 127 <= ord(c) < 160), None)
    if bad is not None:
        raise ValueError(f"{name} {value!r} contains a control character (U+{ord(bad):04X}): results files record "
                         "it on one line; remove it")


def _lengths(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (int, str)) or values is None:
        raise ValueError(f"{name} must be a list of token counts, got {values!r}")
    out = []
    for v in values:
        check_positive(**{name: v})
        check_at_most(name, v, MAX_CONTEXT, " tokens (the longest context a sweep takes)")
        if v not in out:
            out.append(int(v))
    if not out:
        raise ValueError(f"the {name} grid is empty: give at least one length")
    return tuple(sorted(out))


@dataclass(frozen=True)
class SweepConfig:
    """The protocol of a sweep. Frozen; every value is checked when it is made, against its range below.

    Attributes:
        n_in: Prompt lengths (tokens), deduplicated and sorted; each 1..:data:`MAX_CONTEXT`, and the longest
            ``n_in + n_out`` at most :data:`MAX_CONTEXT`.
        n_out: Output lengths (tokens), deduplicated and sorted; as ``n_in``.
        n_req: Requests per point (the study: 1000), 1..:data:`MAX_N_REQ`.
        max_batch: Batch cap (the study: 1024), 1..:data:`MAX_BATCH`.
        repeats: Measurements of every point (rows ``rep`` 0..repeats-1), at most :data:`MAX_REPEATS`.
        mode: ``"prefix"`` or ``"full"`` (module docstring); external engines always run ``"external"``.
        seed: Seed of the shuffled order, the random weights and the prompts, 0..:data:`MAX_SEED`.
        min_window_s: Shortest energy window (seconds, 0..3600); shorter points are repeated back to back.
        warmup_steps: Decode steps of the warm-up run before each group, at the group's batch
            (0..:data:`MAX_WARMUP_STEPS`).
        cooldown_s: Idle pause after each group (seconds, 0..3600).
        meter_poll_s: Counter polling period of the meter's sampler (seconds, :data:`MIN_POLL_S`..1).
        meter_sampler: Where the meter samples NVML: ``"thread"`` (a thread of the measuring process) or
            ``"process"`` (a child process, so the measuring process gets no extra thread).
        weight_init: The dummy weights' distribution (:func:`parse_weight_init`); ignored for checkpoints.
        prompts: ``"random"`` token ids or one id ``"repeated"`` (:data:`PROMPTS`).
        pairs: Explicit (n_in, n_out) points instead of the grid ``n_in`` x ``n_out`` (off-grid checks, a
            workload's lengths); ``n_in`` and ``n_out`` then become the lengths the pairs use (another grid
            given with them is refused). Each ``n_in + n_out`` at most :data:`MAX_CONTEXT`.
        engine: Engine name in the registry (:mod:`energybook.measure.engines`); no control characters.
        note: Free text on one line (no control characters): why the protocol differs from the study's, say.
        engine_settings: The engine's settings (an instance of its registered settings dataclass,
            :func:`energybook.engine_settings`); ``None`` for the engine's defaults. Recorded in the sidecar
            as ``engine_settings``, beside the protocol.
    """

    n_in: tuple[int, ...] = GRID
    n_out: tuple[int, ...] = GRID
    n_req: int = 1000
    max_batch: int = 1024
    repeats: int = 1
    mode: str = "prefix"
    seed: int = 0
    min_window_s: float = 2.0
    warmup_steps: int = 32
    cooldown_s: float = 2.0
    meter_poll_s: float = 0.002
    meter_sampler: str = "thread"
    weight_init: str = "normal:0.02"
    prompts: str = "random"
    pairs: tuple[tuple[int, int], ...] = ()
    engine: str = "lean"
    note: str = ""
    engine_settings: Any = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.engine_settings is not None:
            if not is_settings(self.engine_settings):
                raise ValueError(f"engine_settings must be an engine's settings (energybook.engine_settings), got "
                                 f"{self.engine_settings!r}")
            check_settings(self.engine_settings)
        if self.pairs:
            try:
                pairs = tuple(sorted({(int(a), int(b)) for a, b in self.pairs}))
            except (TypeError, ValueError):
                raise ValueError(f"pairs must be (n_in, n_out) pairs of integers, got {self.pairs!r}") from None
            for a, b in pairs:
                check_positive(n_in=a, n_out=b)
                check_at_most("n_in + n_out", a + b, MAX_CONTEXT, f" tokens (the longest context), pair {(a, b)}")
            for name, lengths in (("n_in", {a for a, _ in pairs}), ("n_out", {b for _, b in pairs})):
                given = getattr(self, name)
                if _sorted_set(given) not in (GRID, tuple(sorted(lengths))):
                    raise ValueError(f"pairs give the points, and {name}={given!r} another grid: give one of them "
                                     "(the pairs' lengths become n_in and n_out)")
                set_(self, name, tuple(sorted(lengths)))
            set_(self, "pairs", pairs)
        set_(self, "n_in", _lengths("n_in", self.n_in))
        set_(self, "n_out", _lengths("n_out", self.n_out))
        if not self.pairs:
            check_at_most("n_in + n_out", self.n_in[-1] + self.n_out[-1], MAX_CONTEXT,
                          f" tokens (the longest context): the grid's largest point is ({self.n_in[-1]}, "
                          f"{self.n_out[-1]}); give shorter lengths, or the points as pairs")
        check_positive(n_req=self.n_req, max_batch=self.max_batch, repeats=self.repeats)
        check_at_most("n_req", self.n_req, MAX_N_REQ, " requests per point")
        check_at_most("max_batch", self.max_batch, MAX_BATCH, " requests")
        if self.repeats > MAX_REPEATS:
            raise ValueError(f"repeats must be at most {MAX_REPEATS}, got {self.repeats}: measure in several "
                             "sweeps into separate files instead")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        check_at_most("seed", self.seed, MAX_SEED)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        check_at_most("warmup_steps", self.warmup_steps, MAX_WARMUP_STEPS)
        set_(self, "min_window_s", _finite("min_window_s", self.min_window_s, high=3600.0))
        set_(self, "cooldown_s", _finite("cooldown_s", self.cooldown_s, high=3600.0))
        set_(self, "meter_poll_s", _finite("meter_poll_s", self.meter_poll_s, low=MIN_POLL_S, high=1.0))
        if self.meter_sampler not in SAMPLERS:
            raise ValueError(f"meter_sampler must be one of {SAMPLERS}, got {self.meter_sampler!r}")
        check_dummy_data(self.weight_init, self.prompts)
        allowed = (*MODES, "external")
        if self.mode not in allowed:
            raise ValueError(f"mode must be one of {allowed}, got {self.mode!r}")
        if not isinstance(self.engine, str) or not self.engine:
            raise ValueError(f"engine must be an engine's name, got {self.engine!r}")
        if not isinstance(self.note, str):
            raise ValueError(f"note must be text, got {self.note!r}")
        check_text("engine", self.engine)
        check_text("note", self.note)

    @property
    def points(self) -> list[Point]:
        """Every (n_in, n_out, rep) of the grid, or of the explicit ``pairs``."""
        if self.pairs:
            return [Point(a, b, r) for r in range(self.repeats) for a, b in self.pairs]
        return [Point(a, b, r) for r in range(self.repeats) for a in self.n_in for b in self.n_out]

    @property
    def external(self) -> bool:
        """Whether an external engine runs each point as a command."""
        return self.mode == "external"

    def replace(self, **changes: Any) -> SweepConfig:
        """A checked copy with some values changed."""
        return dataclasses.replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        """The protocol as the sidecar records it (plain JSON types)."""
        rec = dataclasses.asdict(self)
        del rec["engine_settings"]  # recorded beside the protocol (the sidecar's engine_settings)
        for key in ("weight_init", "prompts", "pairs"):  # recorded when not the default: older files still resume
            if rec[key] == _DEFAULTS[key]:
                del rec[key]
        rec["n_in"], rec["n_out"] = list(self.n_in), list(self.n_out)
        if "pairs" in rec:
            rec["pairs"] = [list(p) for p in self.pairs]
        rec["wave_counting"] = rec["prefix_checkpoints"] = self.mode == "prefix"
        return rec

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SweepConfig:
        """The config a sidecar's ``protocol`` describes (derived keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in record.items() if k in names}
        if "pairs" in kw:
            kw["pairs"] = tuple(tuple(p) for p in kw["pairs"])
        return cls(**kw)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SweepConfig)}


def _sorted_set(values: Any) -> tuple | None:
    """``values`` as a sorted tuple of distinct items, or None when they are not a list of numbers."""
    try:
        return tuple(sorted(set(values)))
    except TypeError:
        return None


@dataclass(frozen=True)
class Point:
    """One grid point and repetition: ``n_in`` prompt and ``n_out`` output tokens per request."""

    n_in: int
    n_out: int
    rep: int = 0

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.n_in, self.n_out, self.rep)


@dataclass
class Group:
    """Points measured by one generation (prefix mode) or one complete run (full mode).

    Attributes:
        n_in: Prompt tokens per request.
        n_outs: Output lengths measured (checkpoints), ascending.
        rep: Repetition index.
        batch: Requests per wave.
        waves: Waves needed for ``n_req`` requests.
        oom_retries: Times the batch was halved after running out of memory.
        repeat_alone: A point too short in its shared generation, measured again on its own with its
            wave repeated back to back.
    """

    n_in: int
    n_outs: list[int]
    rep: int
    batch: int
    waves: int
    oom_retries: int = 0
    repeat_alone: bool = False


def plan(points: list[Point], batch_limit: Callable[[int, int], int], n_req: int, max_batch: int,
         mode: str) -> list[Group]:
    """Group points into generations.

    Args:
        points: Points still to measure.
        batch_limit: (n_in, n_out) -> largest batch that fits in memory.
        n_req: Requests per point.
        max_batch: Batch cap.
        mode: ``"prefix"`` (shared generations) or ``"full"`` (one group per point).
    """
    by_key: dict[tuple[int, int, int], list[int]] = {}
    waves_of: dict[tuple[int, int, int], int] = {}
    groups = []
    for p in sorted(points, key=lambda p: (p.rep, p.n_in, p.n_out)):
        batch, waves = balanced_batch(n_req, min(n_req, max_batch, batch_limit(p.n_in, p.n_out)))
        if mode == "full":
            groups.append(Group(p.n_in, [p.n_out], p.rep, batch, waves))
            continue
        key = (p.rep, p.n_in, batch)
        by_key.setdefault(key, []).append(p.n_out)
        waves_of[key] = waves
    for (rep, n_in, batch), n_outs in by_key.items():
        groups.append(Group(n_in, sorted(n_outs), rep, batch, waves_of[(rep, n_in, batch)]))
    return groups
