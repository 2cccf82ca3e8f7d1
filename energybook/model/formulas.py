"""The SweetSpot study's six formulas for the energy per output token, as lmfit models.

Each formula gives ``j_per_token`` (joules per output token) as a function of the prompt
length ``n_in`` and the output length ``n_out`` (tokens), with named coefficients
``theta0 .. theta5`` in joules per output token times the unit of their basis term.

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


@dataclass(frozen=True)
class Formula:
    """One energy formula.

    Attributes:
        key: Short identifier, also the column name in the study's Table 3.
        label: Name as the study prints it.
        expression: The formula in LaTeX.
        func: The Python function ``f(n_in, n_out, theta0, ...)``.
    """

    key: str
    label: str
    expression: str
    func: object

    @property
    def param_names(self) -> list[str]:
        """Names of the coefficients, ``theta0 ..``."""
        return self.model().param_names

    def model(self) -> lmfit.Model:
        """A fresh lmfit model of the formula with ``n_in`` and ``n_out`` as independent variables."""
        return lmfit.Model(self.func, independent_vars=["n_in", "n_out"], name=self.key)

    def __call__(self, n_in, n_out, **thetas: float):
        """Evaluate the formula (joules per output token)."""
        return self.func(n_in, n_out, **thetas)


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


def get(key: str) -> Formula:
    """A formula by key (``"memory_flops_model"``) or by label (``"Memory+FLOPs"``)."""
    if key in FORMULAS:
        return FORMULAS[key]
    for f in FORMULAS.values():
        if f.label == key:
            return f
    raise ValueError(f"unknown formula {key!r}; use one of {list(FORMULAS)}")


def sweet_spot(n_in, theta1: float, theta3: float, theta4: float, theta5: float = 0.0):
    """The output length that minimises the Memory+FLOPs energy per token at a given input.

    Setting dE/dn_out = 0 gives n_out* = sqrt((theta1 n_in^2 + theta3 n_in + theta5) / theta4).

    Args:
        n_in: Prompt length(s) (tokens).
        theta1, theta3, theta4, theta5: Fitted coefficients of :func:`memory_flops_model`.

    Returns:
        The sweet-spot output length (tokens, real-valued).

    Raises:
        ValueError: when theta4 <= 0, for which E_tok has no minimum in n_out.
    """
    if theta4 <= 0:
        raise ValueError(f"theta4 must be positive for a sweet spot to exist, got {theta4}")
    n_in = np.asarray(n_in, dtype=float)
    return np.sqrt((theta1 * n_in**2 + theta3 * n_in + theta5) / theta4)
