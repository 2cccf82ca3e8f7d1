"""Advise: the energy of a workload of request lengths, and the output caps or prompt truncations that lower its
energy per request, under limits the user sets.

A workload is a list of requests (n_in, n_out): a CSV with ``n_in`` and ``n_out`` columns (one row per request),
or a spec such as ``"n_in=512,n_out<=2048"``:

* ``key=V``: every request has length V (tokens);
* ``key<=V``: lengths spread evenly over 1..V (16 evenly spaced values stand for the uniform distribution);
* ``key=A..B``: lengths spread evenly over A..B (16 values);
* ``n_req=N``: the number of requests, 1..10**7 (default 1000 for a spec, the rows of a CSV).

Each kind of request is priced by the physical model (:func:`energybook.model.physics.predict`) as one of
:data:`PRICING_N_REQ` requests of its own shape, batched by the engine's rule: a homogeneous-batch approximation
(a real server mixes lengths in a batch). The options tried are output caps ``n_out -> min(n_out, cap)`` and
prompt truncations ``n_in -> min(n_in, cap)`` at powers of two (and at the limit the user set). Every option is
scored by its **energy per request** (joules, the mean over the workload's requests) and its energy for the whole
workload, and shows its saving against the workload as given (joules per request and %) and what it gives up
(output tokens cut and prompt tokens truncated per request, as tokens and as a share). Options are ranked by
joules per request, never by joules per output token: a cap or a truncation always changes the tokens the user
gets, so a lower energy per output token is no saving in itself (truncating a 512-token prompt to 16 tokens
lowers it, and throws the prompt away).

What may be proposed is bounded by :class:`Limits`:

* ``min_n_out``: no output cap below this many tokens (default: none, beyond the calibrated range);
* ``max_truncation``: the largest fraction of any prompt that a truncation may cut, 0..1 (default 0: no
  truncation unless the user allows it; 0.5: no prompt is cut below half its length);
* ``quality_floor``: the least fraction of the requests, 0..1, that an option must leave whole, neither output cut
  nor prompt truncated (default 0). It is a proxy: it counts the requests an option changes, it does not measure
  how much worse their answers are.

An option is never proposed outside the calibration's range (the calibration record's ``calibrated_range``): a
cap outside the calibrated lengths, or one that moves a request outside what the calibration covered (batch, mean
power; :func:`energybook.model.physics.request_warnings`), is listed in :attr:`Advice.excluded` with the reason.
Requests of the workload itself outside the calibrated range are listed in :attr:`Advice.warnings`. A cap
lowers the energy per request, but it cuts answers short and a truncation drops context: both can cost answer
quality, which this model does not measure.

Used in :doc:`/book/advise`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from energybook.measure.protocol import MAX_CONTEXT, MAX_N_REQ
from energybook.model import physics as P
from energybook.model.architecture import Architecture

logger = logging.getLogger(__name__)

QUALITY_WARNING = ("A cap on the output lowers the energy per request, but it cuts answers short, and a truncated "
                   "prompt drops context: either can cost answer quality, which this estimate does not measure.")
#: Values that stand for a uniform distribution of lengths in a spec.
SPREAD = 16
#: Requests each kind of request is priced as (the batch the engine's rule gives them).
PRICING_N_REQ = 1000
OUTPUT_CAP, TRUNCATION, AS_GIVEN = "output cap", "prompt truncation", "as given"


@dataclass(frozen=True)
class Workload:
    """Request lengths, one entry per kind of request, with a weight.

    Attributes:
        n_in: Prompt lengths (tokens).
        n_out: Output lengths (tokens).
        weight: Share of the requests of each entry (sums to 1).
        n_req: Requests in the workload (1..10**7).
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
        ValueError: for a malformed spec, missing columns, non-positive lengths, or a request count outside
            1..10**7 (:data:`energybook.measure.protocol.MAX_N_REQ`).
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
        if len(table) > MAX_N_REQ:
            raise ValueError(f"the workload {path} has {len(table)} requests; at most {MAX_N_REQ} are priced: "
                             "give a sample of its rows")
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
            if op != "=" or not re.fullmatch(r"[0-9]+", value) or not 1 <= int(value) <= MAX_N_REQ:
                raise ValueError(f"workload spec: n_req must be an integer 1..{MAX_N_REQ} (requests), got {term!r}")
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
class Limits:
    """What the user allows an option to give up (see the module docstring).

    Attributes:
        min_n_out: No output cap below this many tokens (1..2**20); None: no limit besides the calibrated range.
        max_truncation: The largest fraction of any prompt a truncation may cut (0..1); 0: no truncation.
        quality_floor: The least fraction of the requests (0..1) an option must leave whole (output not cut,
            prompt not truncated); 0: no floor.
    """

    min_n_out: int | None = None
    max_truncation: float = 0.0
    quality_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.min_n_out is not None and (isinstance(self.min_n_out, bool) or not isinstance(
                self.min_n_out, (int, np.integer)) or not 1 <= self.min_n_out <= MAX_CONTEXT):
            raise ValueError(f"min_n_out must be an integer 1..{MAX_CONTEXT} (tokens), got {self.min_n_out!r}")
        for name in ("max_truncation", "quality_floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a fraction 0..1, got {v!r}")

    def describe(self) -> str:
        """One line: the limits in words."""
        out = "no output cap limit" if self.min_n_out is None else f"no output cap below {self.min_n_out} tokens"
        trunc = ("no prompt truncation" if self.max_truncation == 0
                 else f"at most {self.max_truncation:.0%} of any prompt truncated")
        floor = (f"at least {self.quality_floor:.0%} of the requests left whole" if self.quality_floor > 0
                 else "no quality floor")
        return f"{out}; {trunc}; {floor}"


@dataclass(frozen=True)
class Option:
    """One way to run the workload, priced per request (the mean over the workload's requests) and in total.

    Attributes:
        kind: ``"as given"``, ``"output cap"`` or ``"prompt truncation"``.
        cap: The cap (tokens), or None.
        energy_j_per_request: Mean energy per request (joules).
        energy_j_total: Energy of the whole workload (joules).
        saving_j_per_request: Energy saved per request against the workload as given (joules).
        saving_j_total: Energy saved over the whole workload (joules).
        saving_pct: The saving as a percentage of the energy as given.
        output_tokens_per_request: Mean output tokens per request, after the cap.
        output_tokens_cut_per_request: Mean output tokens the cap removes per request.
        output_cut_fraction: The share of the workload's output tokens the cap removes (0..1).
        prompt_tokens_per_request: Mean prompt tokens per request, after the truncation.
        prompt_tokens_truncated_per_request: Mean prompt tokens the truncation removes per request.
        prompt_truncated_fraction: The share of the workload's prompt tokens the truncation removes (0..1).
        requests_whole_fraction: The share of the requests left whole, neither output cut nor prompt truncated.
    """

    kind: str
    cap: int | None
    energy_j_per_request: float
    energy_j_total: float
    saving_j_per_request: float
    saving_j_total: float
    saving_pct: float
    output_tokens_per_request: float
    output_tokens_cut_per_request: float
    output_cut_fraction: float
    prompt_tokens_per_request: float
    prompt_tokens_truncated_per_request: float
    prompt_truncated_fraction: float
    requests_whole_fraction: float

    @property
    def energy_j_per_output_token(self) -> float:
        """Joules per output token: shown for reference, never ranked by (a cap changes the tokens)."""
        return self.energy_j_per_request / self.output_tokens_per_request

    @property
    def label(self) -> str:
        """Short description."""
        return self.kind if self.cap is None else f"{self.kind} {self.cap}"

    def to_dict(self) -> dict[str, Any]:
        """The fields, the label and the energy per output token (units in the key names)."""
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return dict(d, label=self.label, energy_j_per_output_token=self.energy_j_per_output_token)

    # Older names, kept for code written against them.
    @property
    def j_per_request(self) -> float:
        """Alias of :attr:`energy_j_per_request`."""
        return self.energy_j_per_request

    @property
    def energy_j(self) -> float:
        """Alias of :attr:`energy_j_total`."""
        return self.energy_j_total

    @property
    def saving_j(self) -> float:
        """Alias of :attr:`saving_j_total`."""
        return self.saving_j_total

    @property
    def tokens_out_per_request(self) -> float:
        """Alias of :attr:`output_tokens_per_request`."""
        return self.output_tokens_per_request

    @property
    def j_per_token(self) -> float:
        """Alias of :attr:`energy_j_per_output_token`."""
        return self.energy_j_per_output_token


@dataclass
class Advice:
    """The energy of a workload and the options proposed, ranked by joules per request.

    Attributes:
        model: Architecture name.
        workload: The workload.
        baseline: The workload as given.
        options: The options proposed within the limits and the calibrated range, fewest joules per request first.
        limits: The limits the options respect.
        excluded: Why the other options tried were not proposed, one sentence per reason.
        warnings: Where the workload's own requests lie outside the calibrated range, one sentence each with the
            share of the requests concerned.
        warning: What a cap costs (:data:`QUALITY_WARNING`).
    """

    model: str
    workload: Workload
    baseline: Option
    options: list[Option] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    excluded: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warning: str = QUALITY_WARNING

    @property
    def ranked(self) -> list[Option]:
        """The workload as given and the options, fewest joules per request first."""
        return sorted([self.baseline, *self.options], key=lambda o: o.energy_j_per_request)

    @property
    def best(self) -> Option:
        """The option with the fewest joules per request within the limits (the workload as given when none
        beats it)."""
        return self.ranked[0]

    def to_frame(self) -> pd.DataFrame:
        """One row per option, the workload as given first, then the options ranked by joules per request."""
        return pd.DataFrame([o.to_dict() for o in [self.baseline, *self.options]])


def _caps(lengths: np.ndarray, extra: int | None = None) -> list[int]:
    """Powers of two from 16 below the longest length, and ``extra`` (a limit) when it is below it too."""
    top = int(lengths.max())
    caps = {2**k for k in range(4, 21) if 2**k < top}
    if extra is not None and extra < top:
        caps.add(int(extra))
    return sorted(caps)


def _summarised(shares: dict[str, float]) -> list[str]:
    """The warnings of the workload's requests, one sentence per kind (the sentences that differ only in their
    numbers, e.g. ``n_out 4313 ...`` and ``n_out 4688 ...``, make one), with the share of the requests."""
    groups: dict[str, list[str]] = defaultdict(list)
    for sentence in shares:
        groups[re.sub(r"[0-9][0-9.e+]*", "#", sentence)].append(sentence)
    out = []
    for sentences in groups.values():
        share = sum(shares[s] for s in sentences)
        more = f", and {len(sentences) - 1} more like it" if len(sentences) > 1 else ""
        where = "every request" if share > 1 - 1e-9 else f"{share:.1%} of the requests"
        out.append(f"{sentences[0]}{more} ({where})")
    return out


def _joined(caps: list[int]) -> str:
    return ", ".join(map(str, caps))


def advise(arch: Architecture, workload: Workload, calibration: P.Calibration, max_batch: int = 1024,
           min_n_out: int | None = None, max_truncation: float = 0.0, quality_floor: float = 0.0) -> Advice:
    """The workload's energy and the output caps and prompt truncations that lower its joules per request within
    the limits (:class:`Limits`) and the calibrated range, ranked by joules per request.

    Args:
        arch: The architecture.
        workload: The requests (:func:`parse_workload`).
        calibration: The GPU's calibration (:func:`energybook.model.physics.load_calibration`).
        max_batch: The engine's batch cap (requests).
        min_n_out: No output cap below this (tokens); None: none besides the calibrated range.
        max_truncation: The largest fraction of any prompt that may be cut (0..1; 0: no truncation).
        quality_floor: The least fraction of the requests an option must leave whole (0..1).

    Raises:
        ValueError: for limits outside their ranges.
    """
    limits = Limits(min_n_out, max_truncation, quality_floor)
    cache: dict[tuple[int, int], P.Prediction] = {}
    rng = calibration.calibrated_range or {}

    def priced(n_in: int, n_out: int) -> P.Prediction:
        key = (int(n_in), int(n_out))
        if key not in cache:
            cache[key] = P.predict(arch, key[0], key[1], max_batch=max_batch, n_req=PRICING_N_REQ,
                                   calibration=calibration, samples=0)
        return cache[key]

    w = workload.weight
    n_in0, n_out0 = workload.n_in, workload.n_out
    base_j = float(sum(wi * priced(a, b).j_per_request for a, b, wi in zip(n_in0, n_out0, w)))
    mean_in, mean_out = float(np.sum(w * n_in0)), float(np.sum(w * n_out0))

    def option(kind: str, cap: int | None, n_in: np.ndarray, n_out: np.ndarray) -> Option:
        j = float(sum(wi * priced(a, b).j_per_request for a, b, wi in zip(n_in, n_out, w)))
        cut_out, cut_in = mean_out - float(np.sum(w * n_out)), mean_in - float(np.sum(w * n_in))
        whole = float(np.sum(w[(n_in == n_in0) & (n_out == n_out0)]))
        saving = base_j - j
        return Option(kind, cap, j, j * workload.n_req, saving, saving * workload.n_req, 100 * saving / base_j,
                      mean_out - cut_out, cut_out, cut_out / mean_out, mean_in - cut_in, cut_in, cut_in / mean_in,
                      whole)

    # The workload's own requests outside the calibrated range.
    shares: dict[str, float] = defaultdict(float)
    for a, b, wi in zip(n_in0, n_out0, w):
        for sentence in priced(a, b).warnings:
            shares[sentence] += float(wi)
    warnings = _summarised(shares)

    baseline = option(AS_GIVEN, None, n_in0, n_out0)
    options: list[Option] = []
    reasons: dict[tuple[str, str], list[int]] = defaultdict(list)
    longest_prompt = int(n_in0.max())
    shortest_kept = math.ceil((1 - limits.max_truncation) * longest_prompt - 1e-9)
    tries = [(OUTPUT_CAP, c, "n_out") for c in _caps(n_out0, limits.min_n_out)]
    tries += [(TRUNCATION, c, "n_in") for c in _caps(n_in0, shortest_kept if shortest_kept > 1 else None)]
    for kind, cap, key in tries:
        n_in = np.minimum(n_in0, cap) if kind == TRUNCATION else n_in0
        n_out = np.minimum(n_out0, cap) if kind == OUTPUT_CAP else n_out0
        changed = (n_in != n_in0) | (n_out != n_out0)
        why = None
        if kind == OUTPUT_CAP and limits.min_n_out is not None and cap < limits.min_n_out:
            why = f"below the minimum output of {limits.min_n_out} tokens (min_n_out)"
        elif kind == TRUNCATION and limits.max_truncation == 0:
            why = "prompt truncation is not allowed (max_truncation 0)"
        elif kind == TRUNCATION and cap < shortest_kept:
            why = (f"would cut more than {limits.max_truncation:.0%} of a {longest_prompt}-token prompt "
                   f"(max_truncation {limits.max_truncation:g})")
        elif key in rng and not rng[key][0] <= cap <= rng[key][1]:
            what = "output" if key == "n_out" else "prompt"
            why = f"outside the calibrated {what} lengths {rng[key][0]:g}..{rng[key][1]:g} tokens"
        elif float(np.sum(w[~changed])) < limits.quality_floor - 1e-12:
            why = (f"leaves fewer than {limits.quality_floor:.0%} of the requests whole (quality_floor "
                   f"{limits.quality_floor:g})")
        else:
            new = [s for a0, b0, a, b in zip(n_in0[changed], n_out0[changed], n_in[changed], n_out[changed])
                   for s in priced(a, b).warnings if s not in priced(a0, b0).warnings]
            if new:
                why = f"moves requests outside the calibrated range ({new[0]})"
        if why is None:
            options.append(option(kind, cap, n_in, n_out))
        else:
            reasons[(kind, why)].append(cap)
    excluded = [f"{kind} {_joined(caps)}: {why}" for (kind, why), caps in reasons.items()]
    options.sort(key=lambda o: (o.energy_j_per_request, o.kind, o.cap))
    return Advice(arch.name, workload, baseline, options, limits, excluded, warnings)


def plot_advice(advice: Advice, path: str | Path) -> Path:
    """Joules per request against the cap, one line per kind of option proposed, the workload as given dashed and
    the best option ringed; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in ((OUTPUT_CAP, "o"), (TRUNCATION, "s")):
        opts = sorted((o for o in advice.options if o.kind == kind), key=lambda o: o.cap)
        if opts:
            ax.plot([o.cap for o in opts], [o.energy_j_per_request for o in opts], marker=marker, label=kind)
    ax.axhline(advice.baseline.energy_j_per_request, color="gray", ls="--", label="as given")
    best = advice.best
    if best.cap is not None:
        ax.plot([best.cap], [best.energy_j_per_request], marker="o", ms=14, mfc="none", color="k",
                label=f"fewest J per request: {best.label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cap (tokens)")
    ax.set_ylabel("energy per request (J per request)")
    ax.set_title(f"{advice.model}: {advice.workload.n_req} requests", fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
