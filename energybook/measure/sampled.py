"""The sampled protocol's arithmetic (``--protocol sampled``, issue 22): which pieces to measure (the
:class:`SamplePlan`) and how a grid point's energy and time are assembled from them (:func:`assemble`).

A wave of ``B`` requests at ``(n_in, n_out)`` is one prefill of ``B`` prompts of ``n_in`` tokens (which gives
the first output token) and ``n_out - 1`` decode steps; decode step ``t`` attends to ``n_in + t`` keys. A point of
``W`` equal waves (:func:`energybook.model.complexity.balanced_batch`, the sweep's batch rule) costs

    E = W * (E_prefill(n_in, B) + sum over c = n_in + 1 .. n_in + n_out - 1 of e_step(B, c))

and its time likewise. The sampled protocol measures ``E_prefill`` at every prompt length and batch the grid
uses, and ``e_step`` at a set of contexts per batch (:func:`decode_contexts`: both ends of the range and a
geometric ladder between them, ``per_octave`` points per doubling), each over an energy window long enough for
NVML's counter. The sum over steps is the exact sum of the piecewise-linear curve through the samples
(:func:`step_sum`): the decode step's cost is close to affine in the context (the KV bytes read grow linearly;
the dense products do not depend on it), and the ladder's density bounds the error where it is not.

Nothing here measures: the engine side fills the KV cache directly to a context and times decode steps there.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from energybook.model.complexity import balanced_batch, check_positive

INTEGRATION_RULE = ("exact sum over every decode step's context of the piecewise-linear interpolant through the "
                    "sampled decode steps (energy and time per step), plus the measured prefill, times the waves")
"""How a point is assembled (recorded in the sidecar)."""


def decode_contexts(lo: int, hi: int, per_octave: int = 2) -> tuple[int, ...]:
    """Contexts (keys attended) to sample a decode step at, for steps from ``lo`` to ``hi`` keys: ``lo``, ``hi``
    and ``per_octave`` geometrically spaced contexts per doubling between them (integers, sorted, distinct).

    Raises:
        ValueError: ``lo`` < 1, ``hi`` < ``lo`` or ``per_octave`` < 1.
    """
    check_positive(lo=lo, per_octave=per_octave)
    if hi < lo:
        raise ValueError(f"hi ({hi}) must be at least lo ({lo})")
    octaves = math.log2(hi / lo)
    n = max(1, math.ceil(octaves * per_octave))
    points = {lo, hi} | {round(lo * 2 ** (octaves * k / n)) for k in range(1, n)}
    return tuple(sorted(points))


@dataclass(frozen=True)
class PointShape:
    """A grid point as the sampled protocol needs it: its lengths, its batch and its waves."""

    n_in: int
    n_out: int
    batch: int
    waves: int

    @property
    def contexts(self) -> tuple[int, int]:
        """(first, last) context of its decode steps (keys attended); (0, -1) when it has none (n_out 1)."""
        return (self.n_in + 1, self.n_in + self.n_out - 1) if self.n_out > 1 else (0, -1)


@dataclass(frozen=True)
class SamplePlan:
    """What to measure for a set of points.

    Attributes:
        prefill: (n_in, batch) pairs: a prefill of ``batch`` prompts of ``n_in`` tokens each.
        decode: batch -> contexts to time a decode step at.
        per_octave: Decode samples per doubling of the context.
    """

    prefill: tuple[tuple[int, int], ...]
    decode: dict[int, tuple[int, ...]] = field(default_factory=dict)
    per_octave: int = 2

    @property
    def n_samples(self) -> int:
        """Measured pieces in all."""
        return len(self.prefill) + sum(len(c) for c in self.decode.values())

    def to_record(self) -> dict:
        """The plan as the sidecar records it."""
        return {"prefill": [list(p) for p in self.prefill],
                "decode": {str(b): list(c) for b, c in sorted(self.decode.items())},
                "per_octave": self.per_octave, "integration": INTEGRATION_RULE}


def shapes(points: Iterable[tuple[int, int]], n_req: int, limit) -> list[PointShape]:
    """The :class:`PointShape` of each (n_in, n_out), with the batch and waves of the sweep's rule
    (``limit(n_in, n_out)``: the largest batch that fits, already capped by ``max_batch``)."""
    out = []
    for n_in, n_out in points:
        batch, waves = balanced_batch(n_req, min(n_req, limit(n_in, n_out)))
        out.append(PointShape(n_in, n_out, batch, waves))
    return out


def sample_plan(points: Sequence[PointShape], per_octave: int = 2) -> SamplePlan:
    """The pieces that assemble every point: a prefill per (n_in, batch), and per batch the decode contexts
    covering every point of that batch (one ladder from the lowest first context to the highest last one)."""
    check_positive(per_octave=per_octave)
    prefill = sorted({(p.n_in, p.batch) for p in points})
    spans: dict[int, list[int]] = {}
    for p in points:
        lo, hi = p.contexts
        if hi >= lo:
            span = spans.setdefault(p.batch, [lo, hi])
            span[0], span[1] = min(span[0], lo), max(span[1], hi)
    decode = {b: decode_contexts(lo, hi, per_octave) for b, (lo, hi) in sorted(spans.items())}
    return SamplePlan(tuple(prefill), decode, per_octave)


def step_sum(xs: Sequence[float], ys: Sequence[float], a: int, b: int, margin: float = 0.0) -> float:
    """Exact sum over the integers c = a..b of the piecewise-linear curve through (xs, ys), extended flat up to
    ``margin`` beyond the first and last samples.

    Raises:
        ValueError: xs not strictly increasing, lengths that differ, or [a, b] not inside the samples' range
            widened by ``margin``.
    """
    if len(xs) != len(ys) or not xs:
        raise ValueError("xs and ys must be of one non-zero length")
    if any(x1 <= x0 for x0, x1 in zip(xs, xs[1:])):
        raise ValueError(f"the sampled contexts must increase strictly, got {list(xs)}")
    if b < a:
        return 0.0
    if a < xs[0] - margin or b > xs[-1] + margin:
        raise ValueError(f"steps at contexts {a}..{b} lie outside the sampled {xs[0]}..{xs[-1]}: measure the "
                         "decode steps over the whole range (the plan's contexts)")
    xs, ys = list(xs), list(ys)
    if a < xs[0]:  # flat: a slope from two close, noisy samples would amplify their noise
        xs.insert(0, a)
        ys.insert(0, ys[0])
    if b > xs[-1]:
        xs.append(b)
        ys.append(ys[-1])
    if len(xs) == 1:
        return float(ys[0]) * (b - a + 1)
    total = 0.0
    for i in range(len(xs) - 1):
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        # the integers of this segment: [x0, x1) except the last segment, which also takes x1
        lo = max(a, math.ceil(x0))
        hi = min(b, math.ceil(x1) - 1 if i < len(xs) - 2 else math.floor(x1))
        if hi < lo:
            continue
        n = hi - lo + 1
        mean_c = (lo + hi) / 2
        slope = (y1 - y0) / (x1 - x0)
        total += n * (y0 + slope * (mean_c - x0))
    return total


@dataclass(frozen=True)
class Assembled:
    """A point's energy and time, assembled from its pieces.

    Attributes:
        energy_j: Energy of all its waves (joules).
        duration_s: Time of all its waves (seconds).
        prefill_energy_j: Of which prefill (joules).
        prefill_s: Of which prefill (seconds).
        tokens_out: Output tokens (batch x waves x n_out).
    """

    energy_j: float
    duration_s: float
    prefill_energy_j: float
    prefill_s: float
    tokens_out: int

    @property
    def tokens_per_j(self) -> float:
        """Output tokens per joule."""
        return self.tokens_out / self.energy_j

    @property
    def power_w(self) -> float:
        """Mean power (watts)."""
        return self.energy_j / self.duration_s


def assemble(point: PointShape, prefill: dict[tuple[int, int], tuple[float, float]],
             decode: dict[int, Sequence[tuple[float, float, float]]], margin: float = 0.0) -> Assembled:
    """A point from measured pieces.

    Args:
        point: The point.
        prefill: (n_in, batch) -> (energy in joules, seconds) of one prefill of the batch.
        decode: batch -> (context, energy per step in joules, seconds per step), sorted by context.
        margin: How far (keys) the first and last samples' segments may be extended to cover the point's steps.

    Raises:
        KeyError: a piece the point needs was not measured (naming it).
        ValueError: a piece is not positive and finite, or the decode samples do not cover the point's steps.
    """
    key = (point.n_in, point.batch)
    if key not in prefill:
        raise KeyError(f"no prefill measured at n_in {point.n_in}, batch {point.batch}")
    e_p, s_p = prefill[key]
    _positive(f"prefill at {key}", e_p, s_p)
    e_steps = s_steps = 0.0
    lo, hi = point.contexts
    if hi >= lo:
        if point.batch not in decode:
            raise KeyError(f"no decode steps measured at batch {point.batch}")
        samples = sorted(decode[point.batch])
        for c, e, s in samples:
            _positive(f"decode step at batch {point.batch}, context {c}", e, s)
        xs = [c for c, _, _ in samples]
        e_steps = step_sum(xs, [e for _, e, _ in samples], lo, hi, margin)
        s_steps = step_sum(xs, [s for _, _, s in samples], lo, hi, margin)
    w = point.waves
    return Assembled(w * (e_p + e_steps), w * (s_p + s_steps), w * e_p, w * s_p, point.batch * w * point.n_out)


def _positive(what: str, *values: float) -> None:
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{what}: {v!r} is not a positive, finite measurement")

