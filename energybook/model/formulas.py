"""The SweetSpot study's six formulas for the energy per output token, as lmfit models.

Each formula gives ``j_per_token`` (joules per output token) as a function of the prompt
length ``n_in`` and the output length ``n_out`` (tokens), with named coefficients
``theta0 .. theta5`` in joules per output token times the unit of their basis term.
Beside the study's six, :data:`EXTRA_FORMULAS` holds Eq. 5 with a ``theta6 / batch`` term (``batch``: the
requests decoded together, which the engine's KV-memory limit halves on the long grid points).

:func:`optimum` is the sweet spot that survives every sign of the coefficients: an interior minimum,
or a boundary of the output range (an :class:`Optimum` saying which), never a NaN.

Used in :doc:`/book/fitting` and :doc:`/book/counting`.
"""

from __future__ import annotations

from dataclasses import dataclass

import lmfit
import numpy as np


def baseline1(n_in, n_out, theta0):
    """Baseline 1: a constant energy per token."""
    return theta0 + 0.0 * np.asarray(n_in, dtype=float) * np.asarray(n_out, dtype=float)


def baseline2(n_in, n_out, theta0, theta1):
    """Baseline 2: a fixed cost per request, amortised over the outputs."""
    return theta0 + theta1 / np.asarray(n_out, dtype=float) + 0.0 * np.asarray(n_in, dtype=float)


def baseline3(n_in, n_out, theta0, theta1):
    """Baseline 3: amortised over all tokens of the request."""
    return theta0 + theta1 / (np.asarray(n_in, dtype=float) + np.asarray(n_out, dtype=float))


def baseline4(n_in, n_out, theta0, theta1, theta2):
    """Baseline 4 (Wilkins et al. 2024): prefill amortised plus attention over the prompt."""
    n_in = np.asarray(n_in, dtype=float)
    n_out = np.asarray(n_out, dtype=float)
    return theta0 + theta1 * n_in / n_out + theta2 * n_in


def flops_model(n_in, n_out, theta0, theta1, theta2, theta3, theta4):
    """FLOPs-based: the basis terms of the Transformer's FLOP count per output token."""
    n_in = np.asarray(n_in, dtype=float)
    n_out = np.asarray(n_out, dtype=float)
    return theta0 + theta1 * n_in**2 / n_out + theta2 * n_in + theta3 * n_in / n_out + theta4 * n_out


def memory_flops_model(n_in, n_out, theta0, theta1, theta2, theta3, theta4, theta5):
    """Memory+FLOPs ("SweetSpot"): the FLOPs basis plus a fixed per-workload cost theta5/n_out."""
    return flops_model(n_in, n_out, theta0, theta1, theta2, theta3, theta4) + theta5 / np.asarray(n_out, dtype=float)


def memory_flops_batch_model(n_in, n_out, batch, theta0, theta1, theta2, theta3, theta4, theta5, theta6):
    """Memory+FLOPs plus a per-batch cost: Eq. 5 + theta6 / batch.

    Args:
        n_in: Prompt length(s) (tokens).
        n_out: Output length(s) (tokens).
        batch: Requests decoded together at each point (the measured table's ``batch`` column).
        theta0 .. theta5: Eq. 5's coefficients (J per output token times the unit of their basis term).
        theta6: Joules per output token times requests per batch: the cost of a weight pass shared by
            ``batch`` requests.

    Returns:
        Energy per output token (joules).
    """
    return (memory_flops_model(n_in, n_out, theta0, theta1, theta2, theta3, theta4, theta5)
            + theta6 / np.asarray(batch, dtype=float))


@dataclass(frozen=True)
class Formula:
    """One energy formula.

    Attributes:
        key: Short identifier, also the column name in the study's Table 3.
        label: Name as the study prints it.
        expression: The formula in LaTeX.
        func: The Python function ``f(n_in, n_out, theta0, ...)`` (``f(n_in, n_out, batch, theta0, ...)``
            when ``needs_batch``).
        needs_batch: Whether the formula takes the batch size (requests decoded together) as a third
            independent variable.
    """

    key: str
    label: str
    expression: str
    func: object
    needs_batch: bool = False

    @property
    def independent_vars(self) -> list[str]:
        """``["n_in", "n_out"]``, plus ``"batch"`` when the formula needs it."""
        return ["n_in", "n_out", "batch"] if self.needs_batch else ["n_in", "n_out"]

    @property
    def param_names(self) -> list[str]:
        """Names of the coefficients, ``theta0 ..``."""
        return self.model().param_names

    def model(self) -> lmfit.Model:
        """A fresh lmfit model of the formula with ``n_in``, ``n_out`` (and ``batch``) as independent variables."""
        return lmfit.Model(self.func, independent_vars=self.independent_vars, name=self.key)

    def __call__(self, n_in, n_out, batch=None, **thetas: float):
        """Evaluate the formula (joules per output token).

        Args:
            n_in: Prompt length(s) (tokens).
            n_out: Output length(s) (tokens).
            batch: Requests decoded together, scalar or per point; required when ``needs_batch``,
                ignored otherwise.
            **thetas: The coefficients.

        Raises:
            ValueError: when the formula needs ``batch`` and none is given.
        """
        if not self.needs_batch:
            return self.func(n_in, n_out, **thetas)
        if batch is None:
            raise ValueError(f"{self.label} needs the batch size (requests decoded together): pass batch=")
        return self.func(n_in, n_out, batch, **thetas)


FORMULAS: dict[str, Formula] = {f.key: f for f in [
    Formula("baseline1_const", "Baseline 1", r"\theta_0", baseline1),
    Formula("baseline2_inv_out", "Baseline 2", r"\theta_0 + \theta_1/n_{out}", baseline2),
    Formula("baseline3_inv_total", "Baseline 3", r"\theta_0 + \theta_1/(n_{in}+n_{out})", baseline3),
    Formula("baseline4_wilkins", "Baseline 4", r"\theta_0 + \theta_1 n_{in}/n_{out} + \theta_2 n_{in}", baseline4),
    Formula("flops_model", "FLOPs-based",
            r"\theta_0 + \theta_1 n_{in}^2/n_{out} + \theta_2 n_{in} + \theta_3 n_{in}/n_{out} + \theta_4 n_{out}",
            flops_model),
    Formula("memory_flops_model", "Memory+FLOPs",
            r"\theta_0 + \theta_1 n_{in}^2/n_{out} + \theta_2 n_{in} + \theta_3 n_{in}/n_{out} + \theta_4 n_{out}"
            r" + \theta_5/n_{out}", memory_flops_model),
]}


#: Formulas beyond the study's six (kept apart so that the study's tables keep their six columns).
EXTRA_FORMULAS: dict[str, Formula] = {f.key: f for f in [
    Formula("memory_flops_batch_model", "Memory+FLOPs+batch",
            r"\theta_0 + \theta_1 n_{in}^2/n_{out} + \theta_2 n_{in} + \theta_3 n_{in}/n_{out} + \theta_4 n_{out}"
            r" + \theta_5/n_{out} + \theta_6/b", memory_flops_batch_model, needs_batch=True),
]}


def get(key: str) -> Formula:
    """A formula by key (``"memory_flops_model"``) or by label (``"Memory+FLOPs"``), the study's six
    or :data:`EXTRA_FORMULAS`."""
    every = {**FORMULAS, **EXTRA_FORMULAS}
    if key in every:
        return every[key]
    for f in every.values():
        if f.label == key:
            return f
    raise ValueError(f"unknown formula {key!r}; use one of {list(every)}")


def sweet_spot(n_in, theta1: float, theta3: float, theta4: float, theta5: float = 0.0):
    """The output length that minimises the Memory+FLOPs energy per token at a given input.

    Setting dE/dn_out = 0 gives n_out* = sqrt((theta1 n_in^2 + theta3 n_in + theta5) / theta4).

    Args:
        n_in: Prompt length(s) (tokens).
        theta1, theta3, theta4, theta5: Fitted coefficients of :func:`memory_flops_model`.

    Returns:
        The sweet-spot output length (tokens, real-valued); NaN where the numerator
        theta1 n_in^2 + theta3 n_in + theta5 is <= 0, for which there is no interior minimum (the energy
        per token only rises with n_out: the best is the shortest output; :func:`optimum` says so).

    Raises:
        ValueError: when theta4 <= 0, for which E_tok has no minimum in n_out.
    """
    if theta4 <= 0:
        raise ValueError(f"theta4 must be positive for a sweet spot to exist, got {theta4}")
    n_in = np.asarray(n_in, dtype=float)
    numerator = theta1 * n_in**2 + theta3 * n_in + theta5
    return np.sqrt(np.where(numerator > 0, numerator, np.nan) / theta4)


#: Kinds of :class:`Optimum`.
INTERIOR, SHORTEST, LONGEST = "interior", "boundary: shortest n_out", "boundary: longest n_out"


@dataclass(frozen=True)
class Optimum:
    """The output length that minimises the energy per output token at one input, within a range.

    Attributes:
        n_in: Prompt length (tokens).
        n_out: The best output length (tokens, real-valued), inside ``[n_out_min, n_out_max]``.
        kind: ``"interior"`` (a true minimum, dE/dn_out = 0), ``"boundary: shortest n_out"`` (the energy
            per token only rises with n_out) or ``"boundary: longest n_out"`` (it only falls).
        j_per_token: Energy per output token there (joules).
        n_out_min: Shortest output length considered (tokens).
        n_out_max: Longest output length considered (tokens).
    """

    n_in: float
    n_out: float
    kind: str
    j_per_token: float
    n_out_min: float
    n_out_max: float

    @property
    def is_boundary(self) -> bool:
        """Whether the best lies on an end of the range rather than at a minimum."""
        return self.kind != INTERIOR


def optimum(n_in: float, thetas: dict[str, float], n_out_min: float = 64, n_out_max: float = 4096,
            formula: str = "memory_flops_model", batch=None, points: int = 2001) -> Optimum:
    """The best output length at one input, interior or on a boundary, never NaN.

    For Eq. 5 (and the FLOPs formula) E(n_out) = A / n_out + theta4 n_out + C, with
    A = theta1 n_in^2 + theta3 n_in + theta5: for A > 0 and theta4 > 0 the minimum is
    sqrt(A / theta4), clipped to the range; for A <= 0 the energy only rises (shortest n_out); for
    theta4 <= 0 < A it only falls (longest); for both <= 0 the lower end of the two. Other formulas, and
    the batch formula (whose ``theta6 / batch`` term jumps where the batch changes), are minimised on a
    dense log-spaced grid of ``points`` output lengths.

    Args:
        n_in: Prompt length (tokens).
        thetas: Coefficients of ``formula``.
        n_out_min: Shortest output length allowed (tokens).
        n_out_max: Longest output length allowed (tokens).
        formula: Formula key.
        batch: For a formula that needs it: a batch size (requests decoded together), or a callable
            ``batch(n_in, n_out)`` giving it per point (e.g. the engine's KV-memory rule).
        points: Grid points of the numerical search.

    Raises:
        ValueError: for an empty range, or a batch formula without ``batch``.
    """
    if not 0 < n_out_min <= n_out_max:
        raise ValueError(f"need 0 < n_out_min <= n_out_max (tokens), got {n_out_min}, {n_out_max}")
    f = get(formula)
    if f.needs_batch and batch is None:
        raise ValueError(f"{f.label} needs the batch size to find an optimum: pass batch= (requests decoded "
                         "together, or a callable batch(n_in, n_out))")

    def energy(n_out):
        b = batch(n_in, n_out) if callable(batch) else batch
        return np.asarray(f(n_in, n_out, batch=b, **thetas), dtype=float)

    if f.key in ("memory_flops_model", "flops_model"):
        a = thetas["theta1"] * n_in**2 + thetas["theta3"] * n_in + thetas.get("theta5", 0.0)
        t4 = thetas["theta4"]
        if a > 0 and t4 > 0:
            star = float(np.clip(np.sqrt(a / t4), n_out_min, n_out_max))
        elif a <= 0 and t4 >= 0:
            star = float(n_out_min)
        elif t4 < 0 < a or (t4 == 0 and a > 0):
            star = float(n_out_max)
        else:  # both negative: E = A/n + theta4 n + C falls toward both ends
            star = float(n_out_min if energy(n_out_min) <= energy(n_out_max) else n_out_max)
    else:
        grid = np.geomspace(n_out_min, n_out_max, points)
        star = float(grid[int(np.argmin(energy(grid)))])
    if np.isclose(star, n_out_min) and not np.isclose(n_out_min, n_out_max):
        kind = SHORTEST
    elif np.isclose(star, n_out_max) and not np.isclose(n_out_min, n_out_max):
        kind = LONGEST
    else:
        kind = INTERIOR
    return Optimum(float(n_in), star, kind, float(energy(star)), float(n_out_min), float(n_out_max))


def near_optimal_band(n_in: float, thetas: dict[str, float], tolerance: float = 0.02, n_out_min: float = 64,
                      n_out_max: float = 4096, formula: str = "memory_flops_model", batch=None,
                      points: int = 2001) -> tuple[float, float]:
    """The output lengths whose energy per token lies within ``tolerance`` of the best, at one input.

    Args:
        n_in: Prompt length (tokens).
        thetas: Coefficients of ``formula``.
        tolerance: Allowed excess over the best energy per token (0.02 = 2%).
        n_out_min: Shortest output length considered (tokens).
        n_out_max: Longest output length considered (tokens).
        formula: Formula key.
        batch: As in :func:`optimum`.
        points: Log-spaced output lengths searched.

    Returns:
        ``(low, high)``: the shortest and longest output length (tokens) within the tolerance (the band
        is an interval for Eq. 5, whose energy per token is convex in 1/n_out and n_out).
    """
    best = optimum(n_in, thetas, n_out_min, n_out_max, formula, batch, points)
    f = get(formula)
    grid = np.geomspace(n_out_min, n_out_max, points)
    b = batch(n_in, grid) if callable(batch) else batch
    e = np.asarray(f(n_in, grid, batch=b, **thetas), dtype=float)
    inside = grid[e <= best.j_per_token * (1 + tolerance)]
    return (float(inside.min()), float(inside.max())) if len(inside) else (best.n_out, best.n_out)
