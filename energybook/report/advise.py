"""Advise: the energy of a workload of request lengths, and the output cap or prompt truncation that saves most.

A workload is a list of requests (n_in, n_out): a CSV with ``n_in`` and ``n_out`` columns (one row per request),
or a spec such as ``"n_in=512,n_out<=2048"``:

* ``key=V``: every request has length V (tokens);
* ``key<=V``: lengths spread evenly over 1..V (16 evenly spaced values stand for the uniform distribution);
* ``key=A..B``: lengths spread evenly over A..B (16 values);
* ``n_req=N``: the number of requests (default 1000 for a spec, the rows of a CSV).

Each request is priced by the physical model (:func:`energybook.model.physics.predict`) as one of ``n_req``
requests of its own shape, batched by the engine's rule: a homogeneous-batch approximation (a real server mixes
lengths in a batch). The options tried are output caps ``n_out -> min(n_out, cap)`` and prompt truncations
``n_in -> min(n_in, cap)`` at powers of two; each is scored by joules per output token, and its saving per
request and in total is against the workload as given. A cap lowers the energy per request, but it cuts answers
short and a truncation drops context: both can cost answer quality, which this model does not measure.

Used in :doc:`/book/physics`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from energybook.model import physics as P
from energybook.model.architecture import Architecture

logger = logging.getLogger(__name__)

QUALITY_WARNING = ("A cap on the output lowers the energy per request, but it cuts answers short, and a truncated "
                   "prompt drops context: either can cost answer quality, which this estimate does not measure.")
#: Values that stand for a uniform distribution of lengths in a spec.
SPREAD = 16


@dataclass(frozen=True)
class Workload:
    """Request lengths, one entry per kind of request, with a weight.

    Attributes:
        n_in: Prompt lengths (tokens).
        n_out: Output lengths (tokens).
        weight: Share of the requests of each entry (sums to 1).
        n_req: Requests in the workload.
        source: The spec or file it came from.
    """

    n_in: np.ndarray
    n_out: np.ndarray
    weight: np.ndarray
    n_req: int
    source: str


def _lengths(key: str, op: str, text: str) -> np.ndarray:
    try:
        if op == "<=":
            hi = int(text)
            lo = 1
        elif ".." in text:
            lo, hi = (int(x) for x in text.split(".."))
        else:
            value = int(text)
            if value <= 0:
                raise ValueError
            return np.array([value])
    except ValueError:
        raise ValueError(f"workload spec: {key}{op}{text} needs positive integer lengths (tokens)") from None
    if lo <= 0 or hi < lo:
        raise ValueError(f"workload spec: {key}{op}{text} needs 1 <= low <= high (tokens)")
    return np.unique(np.ceil(lo - 1 + (np.arange(SPREAD) + 0.5) / SPREAD * (hi - lo + 1)).astype(int))


def parse_workload(spec: str | Path) -> Workload:
    """A workload from a CSV file (``n_in``, ``n_out`` columns) or a spec (see the module docstring).

    Raises:
        ValueError: for a malformed spec, missing columns or non-positive lengths.
        OSError: for a CSV that cannot be read.
    """
    text = str(spec).strip()
    path = Path(text)
    if path.suffix.lower() == ".csv" or path.is_file():
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the workload {path}: {exc}") from None
        missing = [c for c in ("n_in", "n_out") if c not in table.columns]
        if missing:
            raise ValueError(f"the workload {path} lacks column(s) {missing}; it needs n_in and n_out (tokens)")
        lengths = table[["n_in", "n_out"]].apply(pd.to_numeric, errors="coerce")
        bad = lengths.isna().any(axis=1) | (lengths <= 0).any(axis=1) | (lengths % 1 != 0).any(axis=1)
        if len(lengths) == 0 or bad.any():
            raise ValueError(f"the workload {path} must hold positive integer lengths (tokens); "
                             f"{int(bad.sum()) if len(lengths) else 'no'} bad row(s)")
        counts = lengths.astype(int).value_counts().reset_index()
        counts.columns = ["n_in", "n_out", "count"]
        return Workload(counts["n_in"].to_numpy(), counts["n_out"].to_numpy(),
                        counts["count"].to_numpy() / len(lengths), len(lengths), str(path))
    values: dict[str, np.ndarray] = {}
    n_req = 1000
    for term in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(n_in|n_out|n_req)\s*(<=|=)\s*(\S+)", term)
        if not m:
            raise ValueError(f"cannot read the workload {text!r}: {term!r} is neither a CSV file nor a term such as "
                             "n_in=512, n_out<=2048, n_in=64..1024, n_req=1000")
        key, op, value = m.groups()
        if key == "n_req":
            if op != "=" or not value.isdigit() or int(value) <= 0:
                raise ValueError(f"workload spec: n_req must be a positive integer, got {term!r}")
            n_req = int(value)
        else:
            values[key] = _lengths(key, op, value)
    missing = [k for k in ("n_in", "n_out") if k not in values]
    if missing:
        raise ValueError(f"the workload spec {text!r} lacks {missing}; e.g. \"n_in=512,n_out<=2048\"")
    n_in, n_out = np.meshgrid(values["n_in"], values["n_out"], indexing="ij")
    w = np.full(n_in.size, 1.0 / n_in.size)
    return Workload(n_in.ravel(), n_out.ravel(), w, n_req, text)


@dataclass(frozen=True)
class Option:
    """One way to run the workload.

    Attributes:
        kind: ``"as given"``, ``"output cap"`` or ``"prompt truncation"``.
        cap: The cap (tokens), or None.
        j_per_request: Mean energy per request (joules).
        tokens_out_per_request: Mean output tokens per request.
        energy_j: Energy of the whole workload (joules).
        saving_j_per_request: Energy saved per request against the workload as given (joules).
        saving_j: Energy saved over the whole workload (joules).
    """

    kind: str
    cap: int | None
    j_per_request: float
    tokens_out_per_request: float
    energy_j: float
    saving_j_per_request: float
    saving_j: float

    @property
    def j_per_token(self) -> float:
        """Joules per output token."""
        return self.j_per_request / self.tokens_out_per_request

    @property
    def label(self) -> str:
        """Short description."""
        return self.kind if self.cap is None else f"{self.kind} {self.cap}"


@dataclass
class Advice:
    """The energy of a workload and the options tried.

    Attributes:
        model: Architecture name.
        workload: The workload.
        baseline: The workload as given.
        options: Every option tried (caps and truncations).
        warning: What a cap costs (:data:`QUALITY_WARNING`).
    """

    model: str
    workload: Workload
    baseline: Option
    options: list[Option] = field(default_factory=list)
    warning: str = QUALITY_WARNING

    @property
    def best(self) -> Option:
        """The option with the fewest joules per output token (the workload as given when nothing beats it)."""
        return min([self.baseline, *self.options], key=lambda o: o.j_per_token)

    def to_frame(self) -> pd.DataFrame:
        """One row per option: kind, cap, j_per_request, j_per_token, energy_j, savings."""
        rows = [dict(kind=o.kind, cap=o.cap, j_per_request=o.j_per_request, j_per_token=o.j_per_token,
                     tokens_out_per_request=o.tokens_out_per_request, energy_j=o.energy_j,
                     saving_j_per_request=o.saving_j_per_request, saving_j=o.saving_j)
                for o in [self.baseline, *self.options]]
        return pd.DataFrame(rows)


def _caps(lengths: np.ndarray) -> list[int]:
    top = int(lengths.max())
    return [2**k for k in range(4, 20) if 2**k < top]


def advise(arch: Architecture, workload: Workload, calibration: P.Calibration, max_batch: int = 1024) -> Advice:
    """The workload's energy and the output caps and prompt truncations that change joules per output token.

    Args:
        arch: The architecture.
        workload: The requests (:func:`parse_workload`).
        calibration: The GPU's calibration (:func:`energybook.model.physics.load_calibration`).
        max_batch: The engine's batch cap (requests).
    """
    cache: dict[tuple[int, int], float] = {}

    def per_request(n_in: int, n_out: int) -> float:
        key = (int(n_in), int(n_out))
        if key not in cache:
            cache[key] = P.predict(arch, key[0], key[1], max_batch=max_batch, n_req=1000, calibration=calibration,
                                   samples=0).j_per_request
        return cache[key]

    def option(kind: str, cap: int | None, n_in: np.ndarray, n_out: np.ndarray, base: float | None) -> Option:
        j = float(sum(w * per_request(a, b) for a, b, w in zip(n_in, n_out, workload.weight)))
        toks = float(np.sum(workload.weight * n_out))
        saving = 0.0 if base is None else base - j
        return Option(kind, cap, j, toks, j * workload.n_req, saving, saving * workload.n_req)

    baseline = option("as given", None, workload.n_in, workload.n_out, None)
    options = [option("output cap", c, workload.n_in, np.minimum(workload.n_out, c), baseline.j_per_request)
               for c in _caps(workload.n_out)]
    options += [option("prompt truncation", c, np.minimum(workload.n_in, c), workload.n_out, baseline.j_per_request)
                for c in _caps(workload.n_in)]
    return Advice(arch.name, workload, baseline, options)


def plot_advice(advice: Advice, path: str | Path) -> Path:
    """Joules per output token and per request against the cap, one line per kind of option; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("output cap", "o"), ("prompt truncation", "s")):
        opts = [o for o in advice.options if o.kind == kind]
        if opts:
            caps = [o.cap for o in opts]
            axes[0].plot(caps, [o.j_per_token for o in opts], marker=marker, label=kind)
            axes[1].plot(caps, [o.j_per_request for o in opts], marker=marker, label=kind)
    axes[0].axhline(advice.baseline.j_per_token, color="gray", ls="--", label="as given")
    axes[1].axhline(advice.baseline.j_per_request, color="gray", ls="--", label="as given")
    for ax, label in zip(axes, ("joules per output token (J)", "joules per request (J)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("cap (tokens)")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
