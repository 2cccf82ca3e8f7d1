"""The parameters of the physical model (:mod:`energybook.model.physics`), its time and energy of a workload's
passes, the calibration record and its fit with lmfit, the batch rule with a calibration's memory, and the stored
calibrations. The module docstring of :mod:`energybook.model.physics` states the model.

Used in :doc:`/book/physics`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from energybook import resources
from energybook.model import batch as B
from energybook.model import complexity as C
from energybook.model.architecture import Architecture
from energybook.model.batch import HF_PROFILE, EngineProfile
from energybook.model.physics_passes import PassCounts, pass_counts

logger = logging.getLogger(__name__)

COMBINES = ("max", "smooth", "sum")
OVERHEADS = ("overlap", "add")
#: Exponent of the ``"smooth"`` combination.
SMOOTH_P = 4.0
#: The parameters, in the order of the covariance matrix, with their units.
PARAM_UNITS = {
    "matmul_flops_s": "FLOP/s", "attention_flops_s": "FLOP/s", "weight_bytes_s": "bytes/s",
    "kv_bytes_s": "bytes/s", "pass_overhead_s": "s", "busy_power_w": "W", "overhead_power_w": "W",
    "elementwise_bytes_s": "bytes/s", "attention_block_s": "s", "attention_pairs_s": "pairs/s",
    "graph_capture_s": "s",
}
PARAM_NAMES = tuple(PARAM_UNITS)
#: Form v2's work-dependent power (:func:`phase_energy`): the static power of a busy GPU ``P_s`` (watts), the energy
#: of one tensor FLOP ``e_F`` (joules per FLOP) and of one byte moved to or from the device memory ``e_B`` (joules
#: per byte).
POWER_UNITS = {"static_power_w": "W", "flop_energy_j": "J/FLOP", "byte_energy_j": "J/byte"}
#: Form v2's fitted parameters, in the order of its covariance matrix: v1's without ``busy_power_w`` (in v2 the
#: ceiling of the busy power, held at the calibration's power cap, not fitted), then :data:`POWER_UNITS`.
PARAM_UNITS_V2 = {**{k: v for k, v in PARAM_UNITS.items() if k != "busy_power_w"}, **POWER_UNITS}
PARAM_NAMES_V2 = tuple(PARAM_UNITS_V2)
#: Every parameter's unit, of either form.
ALL_UNITS = {**PARAM_UNITS, **POWER_UNITS}
#: The forms of the model whose calibrations this code reads (:mod:`energybook.model.form`), oldest first.
FORMS = ("v1", "v2")
#: Exponent ``q`` of the smooth minimum that holds form v2's busy power under the power cap
#: (``smin(a, b) = (a^-q + b^-q)^(-1/q)``): sharper than the roofline's corner (:data:`SMOOTH_P`), because the
#: GPU's power controller holds the limit (a demand of 1.5x the cap gives 0.998 of it, one equal to the cap 0.917).
POWER_SMOOTH_P = 8.0
#: Scale of each parameter inside the fit (lmfit sees values of order 1-1000).
_SCALE = {"matmul_flops_s": 1e12, "attention_flops_s": 1e12, "weight_bytes_s": 1e12, "kv_bytes_s": 1e12,
          "pass_overhead_s": 1e-6, "busy_power_w": 1.0, "overhead_power_w": 1.0, "elementwise_bytes_s": 1e12,
          "attention_block_s": 1e-9, "attention_pairs_s": 1e12, "graph_capture_s": 1e-3,
          "static_power_w": 1.0, "flop_energy_j": 1e-12, "byte_energy_j": 1e-12}
#: Rates (must be positive) and fixed times (non-negative) among the parameters.
_RATES = ("matmul_flops_s", "attention_flops_s", "weight_bytes_s", "kv_bytes_s", "elementwise_bytes_s",
          "attention_pairs_s")
_TIMES = ("pass_overhead_s", "attention_block_s", "graph_capture_s")
#: How :func:`calibrate` weighs the residuals of a point's two phases.
WEIGHTS = ("share", "equal")
#: Form v2's energies per unit of work (positive, like the rates).
_ENERGIES = ("flop_energy_j", "byte_energy_j")


class FormMismatch(ValueError):
    """A calibration fitted with another form of the model than the one this code evaluates, or of a form it does
    not know (:mod:`energybook.model.form`)."""


def param_names(form: str = "v1") -> tuple[str, ...]:
    """The fitted parameters of a form of the model, in the order of its covariance matrix (``""``: a record that
    predates the frozen form, fitted with v1's parameters).

    Raises:
        FormMismatch: (a ValueError) for a form this code does not know.
    """
    if form in ("", "v1"):
        return PARAM_NAMES
    if form == "v2":
        return PARAM_NAMES_V2
    raise FormMismatch(f"unknown model form {form!r}: this code evaluates forms {', '.join(FORMS)}; use the "
                       "energybook version that wrote the calibration, or recalibrate with scripts/calibrate.py")

# ----- the engine's batch rule --------------------------------------------------------------
balanced_batch = C.balanced_batch  # the sweep's batch rule, one definition in complexity


def batch_limit(arch: Architecture, n_in: int, n_out: int, memory_bytes: float, max_batch: int = 1024,
                profile: EngineProfile = HF_PROFILE) -> int:
    """Largest batch whose KV cache fits, by the engine's rule (requests; 0 when none fits).

    :func:`energybook.model.batch.batch_limit` with the free memory ``memory_bytes`` minus the weights
    (``num_params`` elements): a calibration keeps the device memory before the weights, so that one value serves
    every model.

    Args:
        arch: The architecture.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        memory_bytes: Device memory available to the engine before the weights (bytes; a calibration value).
        max_batch: The engine's batch cap (requests).
        profile: The engine's profile.
    """
    free = memory_bytes - arch.num_params * arch.bytes_per_element
    return B.batch_limit(arch, n_in, n_out, free, profile, max_batch)


# ----- parameters and the model ---------------------------------------------------------------
@dataclass(frozen=True)
class PhysicsParams:
    """The shared parameters of one GPU and engine.

    Attributes:
        matmul_flops_s: Effective matmul throughput R_mm (FLOP/s).
        attention_flops_s: Effective attention throughput R_att (FLOP/s).
        weight_bytes_s: Effective bandwidth of weight (and logits) traffic B_w (bytes/s).
        kv_bytes_s: Effective bandwidth of KV-cache traffic B_kv (bytes/s).
        pass_overhead_s: Fixed cost of every forward pass t_pass (seconds).
        busy_power_w: Power while kernels run P_busy (watts).
        overhead_power_w: Power during the per-pass overhead P_oh (watts).
        elementwise_bytes_s: Effective bandwidth of the elementwise kernels B_el (bytes/s).
        attention_block_s: Fixed time of one decode attention block t_blk (seconds).
        attention_pairs_s: Rate of the per-pair attention work R_pair ((query, key) pairs x heads per second).
        graph_capture_s: Fixed time of one decode graph capture with its eager step t_cap (seconds).
        static_power_w: Form v2: the power of a busy GPU that does not follow the work P_s (watts: leakage,
            clocks, fans, the idle floor); None in form v1.
        flop_energy_j: Form v2: energy of one matmul or attention FLOP e_F (joules per FLOP); None in form v1.
        byte_energy_j: Form v2: energy of one byte read from or written to the device memory e_B (joules per
            byte); None in form v1.

    In form v1 (the three form-v2 fields None) the kernels draw ``busy_power_w`` whatever they do; in form v2
    ``busy_power_w`` is the ceiling the busy power is held under (the power cap), and the power follows the work
    (:func:`phase_energy`).
    """

    matmul_flops_s: float
    attention_flops_s: float
    weight_bytes_s: float
    kv_bytes_s: float
    pass_overhead_s: float
    busy_power_w: float
    overhead_power_w: float
    elementwise_bytes_s: float
    attention_block_s: float
    attention_pairs_s: float
    graph_capture_s: float
    static_power_w: float | None = None
    flop_energy_j: float | None = None
    byte_energy_j: float | None = None

    def __post_init__(self) -> None:
        power = [getattr(self, k) for k in POWER_UNITS]
        if any(v is None for v in power) and any(v is not None for v in power):
            raise ValueError(f"form v2's power parameters {', '.join(POWER_UNITS)} go together: all or none")
        for key in PARAM_NAMES + (tuple(POWER_UNITS) if self.work_power else ()):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a non-negative finite number, got {value!r}")
        for key in _RATES:
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")

    @property
    def work_power(self) -> bool:
        """Whether the power follows the work (form v2), not a constant ``busy_power_w`` (form v1)."""
        return self.flop_energy_j is not None

    def vector(self, names: tuple[str, ...] = PARAM_NAMES) -> np.ndarray:
        """The values in ``names`` order (default :data:`PARAM_NAMES`; SI units)."""
        return np.array([getattr(self, k) for k in names], dtype=float)

    @classmethod
    def from_vector(cls, values, names: tuple[str, ...] = PARAM_NAMES, **others: float) -> PhysicsParams:
        """Parameters from values in ``names`` order (default :data:`PARAM_NAMES`; SI units); ``others`` gives
        those not in ``names`` (form v2: ``busy_power_w``, the power cap)."""
        return cls(**{k: float(v) for k, v in zip(names, values)}, **{k: float(v) for k, v in others.items()})


def _combine(a: np.ndarray, b: np.ndarray, combine: str) -> np.ndarray:
    if combine == "max":
        return np.maximum(a, b)
    if combine == "sum":
        return a + b
    if combine == "smooth":
        m = np.maximum(np.maximum(a, b), 1e-300)
        return m * ((a / m) ** SMOOTH_P + (b / m) ** SMOOTH_P) ** (1 / SMOOTH_P)
    raise ValueError(f"unknown combination {combine!r}; use one of {COMBINES}")


@dataclass(frozen=True)
class PhaseEnergy:
    """Modelled time and energy of one workload, by phase.

    Attributes:
        prefill_s: Prefill time (seconds).
        decode_s: Decode time (seconds).
        prefill_energy_j: Prefill energy (joules).
        decode_energy_j: Decode energy (joules).
    """

    prefill_s: float
    decode_s: float
    prefill_energy_j: float
    decode_energy_j: float

    @property
    def duration_s(self) -> float:
        """Total time (seconds)."""
        return self.prefill_s + self.decode_s

    @property
    def energy_j(self) -> float:
        """Total energy (joules)."""
        return self.prefill_energy_j + self.decode_energy_j


def smooth_min(a: np.ndarray, b: np.ndarray, q: float = POWER_SMOOTH_P) -> np.ndarray:
    """``(a^-q + b^-q)^(-1/q)`` of positive ``a``, ``b``: the smaller of the two with a rounded corner (0 where
    ``a`` is 0)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m = np.minimum(a, b)
    safe = np.where(m > 0, m, 1.0)
    return np.where(m > 0, m * ((safe / np.where(a > 0, a, 1.0)) ** q + (safe / b) ** q) ** (-1 / q), 0.0)


def pass_times(counts: PassCounts, params: PhysicsParams, combine: str = "smooth",
               overhead: str = "overlap") -> tuple[np.ndarray, np.ndarray]:
    """(busy, step) of every distinct pass (seconds, once each): the kernels' time and the pass's time."""
    p = params
    busy = (_combine(counts.matmul_flops / p.matmul_flops_s, (counts.weight_bytes + counts.other_bytes)
                     / p.weight_bytes_s, combine)
            + _combine(counts.attention_flops / p.attention_flops_s + counts.attention_pairs / p.attention_pairs_s,
                       counts.kv_bytes / p.kv_bytes_s, combine)
            + counts.elementwise_bytes / p.elementwise_bytes_s + counts.attention_blocks * p.attention_block_s)
    launch = p.pass_overhead_s + counts.graph_captures * p.graph_capture_s
    if overhead == "overlap":
        step = _combine(busy, launch, combine)
    elif overhead == "add":
        step = busy + launch
    else:
        raise ValueError(f"unknown overhead mode {overhead!r}; use one of {OVERHEADS}")
    return busy, step


def busy_power(counts: PassCounts, params: PhysicsParams, busy: np.ndarray) -> np.ndarray:
    """The power of every distinct pass while its kernels run (watts).

    Form v1: ``P_busy``. Form v2: ``smin(P_s + (e_F F + e_B D) / busy, P_max)`` (:func:`smooth_min`,
    q = :data:`POWER_SMOOTH_P`), with ``F = F_mm + F_att`` the tensor FLOPs and ``D = W + O + K + A`` the bytes
    moved to and from the device memory; ``P_max`` = ``busy_power_w``, the power cap.
    """
    p = params
    if not p.work_power:
        return np.full(np.shape(busy), float(p.busy_power_w))
    flops = counts.matmul_flops + counts.attention_flops
    moved = counts.weight_bytes + counts.other_bytes + counts.kv_bytes + counts.elementwise_bytes
    safe = np.where(busy > 0, busy, 1.0)
    demand = p.static_power_w + (p.flop_energy_j * flops + p.byte_energy_j * moved) / safe
    return smooth_min(np.where(busy > 0, demand, p.static_power_w), np.full(np.shape(busy), float(p.busy_power_w)))


def phase_energy(counts: PassCounts, params: PhysicsParams, combine: str = "smooth",
                 overhead: str = "overlap") -> PhaseEnergy:
    """Time and energy of the passes of a workload under the model (see the module docstring).

    The power while kernels run is :func:`busy_power`: the constant ``P_busy`` of form v1, or, for parameters of
    form v2 (:attr:`PhysicsParams.work_power`), a power that follows the work and is held under the cap.

    Args:
        counts: The passes (:func:`pass_counts`).
        params: The GPU's parameters.
        combine: ``"max"``, ``"smooth"`` or ``"sum"``.
        overhead: ``"overlap"`` (the per-pass cost hides behind running kernels: a pass takes
            ``comb(busy, t_pass)``) or ``"add"`` (a pass takes ``busy + t_pass``); a decode step that opens a
            graph bucket adds ``t_cap`` to its ``t_pass``.
    """
    p = params
    busy, step = pass_times(counts, p, combine, overhead)
    time = step * counts.repeat
    if p.work_power:
        energy = (busy_power(counts, p, busy) * busy + p.overhead_power_w * (step - busy)) * counts.repeat
    else:  # form v1, exactly as frozen
        energy = (p.busy_power_w * busy + p.overhead_power_w * (step - busy)) * counts.repeat
    pre = counts.phase == 0
    return PhaseEnergy(float(time[pre].sum()), float(time[~pre].sum()), float(energy[pre].sum()),
                       float(energy[~pre].sum()))


# ----- calibration --------------------------------------------------------------------------
@dataclass
class Calibration:
    """The calibrated parameters of one GPU and engine, with their uncertainty and provenance.

    Attributes:
        gpu: Short key (``"h100"``).
        gpu_name: The GPU's name as NVML reports it.
        engine: The engine measured (``"torch"`` for the ``hf`` engine, ``"lean"``): it picks the batch profile
            (:func:`energybook.model.batch.profile_for`) that :func:`energybook.model.physics.predict` schedules by.
        combine: The combination of compute and memory time (:data:`COMBINES`).
        overhead: How the per-pass overhead meets the kernels' time (:data:`OVERHEADS`).
        params: The parameters.
        stderr: lmfit's standard error of each parameter (SI units).
        covariance: Covariance of the fitted parameters in :attr:`param_names` order (SI units squared): v1's
            :data:`PARAM_NAMES`, v2's :data:`PARAM_NAMES_V2`.
        memory_bytes: Device memory available to the engine before the weights (bytes), for :func:`batch_limit`.
        power_cap_w: The power limit the grids ran under (watts).
        model_error_log: The model's own error: rms of log(predicted / measured) energy over the
            leave-one-model-out predictions (dimensionless; 0.05 is about 5%).
        provenance: What it was calibrated from (grids with sha256, commit, date, command).
        form_version: The version of the model form it was fitted with (:mod:`energybook.model.form`; "" when the
            record predates the frozen form).
        form_hash: sha256 of that form (:meth:`energybook.model.form.ModelForm.form_hash`; "" when unknown).
        calibrated_range: What the calibration grids covered (:func:`calibrated_range`): ``batch``, ``n_in``,
            ``n_out``, ``num_params`` and ``power_w`` as [low, high], and the ``models``; {} when unknown.
        peaks: The GPU's peaks the record refers to (:func:`peaks_reference`): ``kind`` ``"measured"`` (a peaks
            file of ``energybook peaks``, with its ``file`` and ``sha256``) or ``"datasheet"`` (no peaks file existed;
            the figures are the vendor's), and ``bandwidth_bytes_s``, ``matmul_flops``, ``power_cap_w``,
            ``memory_bytes``, ``source``; {} when unknown. :func:`energybook.model.physics.transfer` divides another
            GPU's peaks by these.
        folds: The leave-one-model-out calibrations of the same form (form v2): one ``{"held_out": model,
            "params": {name: value}}`` per development model, each fitted on the other models' grids; their
            disagreement is part of the interval (:func:`energybook.model.physics.energy_interval`). Empty in v1.
        file: Where the record was read from ("" for one made in memory); not stored.
        transferred: "" for a calibration as fitted; else how it was moved to another GPU
            (:func:`energybook.model.physics.transfer`: ``"transferred from <GPU> by peaks of <uuid>"``); not stored.
    """

    gpu: str
    gpu_name: str
    engine: str
    combine: str
    params: PhysicsParams
    stderr: dict[str, float]
    covariance: np.ndarray = field(repr=False)
    overhead: str = "overlap"
    memory_bytes: float = 85.0e9
    power_cap_w: float = 700.0
    model_error_log: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    form_version: str = ""
    form_hash: str = ""
    calibrated_range: dict[str, Any] = field(default_factory=dict)
    peaks: dict[str, Any] = field(default_factory=dict)
    folds: list[dict[str, Any]] = field(default_factory=list)
    file: str = field(default="", compare=False)
    transferred: str = field(default="", compare=False)

    @property
    def param_names(self) -> tuple[str, ...]:
        """The fitted parameters of its form, in the covariance's order (:func:`param_names`)."""
        return param_names(self.form_version)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (SI units; the units are listed under ``units``). A form-v2 record stores its fitted
        parameters (``busy_power_w``, the ceiling, is its ``power_cap_w``) and its ``folds``."""
        names = self.param_names
        units = PARAM_UNITS if names == PARAM_NAMES else {k: ALL_UNITS[k] for k in names}
        out = dict(schema="energybook.calibration/1", gpu=self.gpu, gpu_name=self.gpu_name, engine=self.engine,
                   combine=self.combine, overhead=self.overhead,
                   params={k: getattr(self.params, k) for k in names},
                   stderr=self.stderr, units=units, covariance=np.asarray(self.covariance).tolist(),
                   memory_bytes=self.memory_bytes, power_cap_w=self.power_cap_w,
                   model_error_log=self.model_error_log, provenance=self.provenance,
                   form_version=self.form_version, form_hash=self.form_hash,
                   calibrated_range=self.calibrated_range, peaks=self.peaks)
        if self.folds:
            out["folds"] = self.folds
        return out

    def fold_params(self) -> list[PhysicsParams]:
        """The parameters of its leave-one-model-out calibrations (:attr:`folds`; empty for form v1)."""
        return [self._params_of(f["params"]) for f in self.folds]

    def _params_of(self, values: dict[str, float]) -> PhysicsParams:
        names = self.param_names
        others = {} if "busy_power_w" in names else {"busy_power_w": self.power_cap_w}
        return PhysicsParams(**{k: float(values[k]) for k in names}, **others)

    @property
    def gpu_slug(self) -> str:
        """The GPU's file-system name (``"nvidia-h100-80gb-hbm3"``): the slug of :attr:`gpu_name`, else of
        :attr:`gpu` through :data:`GPU_ALIASES`."""
        return gpu_key(self.gpu_name or self.gpu)

    @property
    def engine_key(self) -> str:
        """The engine's name in calibration file names (``"hf"``; ``"torch"`` is the ``hf`` engine)."""
        return engine_key(self.engine or DEFAULT_ENGINE)

    def describe(self) -> dict[str, Any]:
        """What a prediction names of the calibration it used (the ``calibration`` block of ``energybook predict
        --json``): ``gpu`` (slug), ``gpu_name``, ``engine``, ``file``, ``data_files`` (path: sha256 of the grids it
        was fitted on), ``commit``, ``date``, ``form_version``, ``form_hash``, ``peaks``, ``transferred``
        and ``target_gpu`` (the GPU predicted for)."""
        prov = self.provenance
        grids = prov.get("grids") or {}
        file = self.file
        if file and Path(file).parent.name == "calibration" and Path(file).parent.parent.name == "resources":
            file = f"energybook/resources/calibration/{Path(file).name}"  # the shipped record, where it ships
        return dict(gpu=self.gpu_slug, gpu_name=self.gpu_name, engine=self.engine_key, file=file,
                    data_files={k: (v.get("sha256") if isinstance(v, dict) else None) for k, v in grids.items()},
                    commit=prov.get("energybook_commit", ""), date=prov.get("date", ""),
                    form_version=self.form_version, form_hash=self.form_hash, peaks=self.peaks,
                    transferred=self.transferred, target_gpu=self.target_gpu)

    @property
    def target_gpu(self) -> str:
        """The GPU a prediction is for: :attr:`gpu_name`, or the target of a transfer."""
        if self.transferred:
            return str(self.provenance.get("transfer", {}).get("target_gpu") or self.gpu_name)
        return self.gpu_name or self.gpu

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Read :meth:`to_dict`'s record.

        Raises:
            ValueError: when a key is missing or a value is malformed.
            FormMismatch: (a ValueError) for a record of a form this code does not know (:func:`param_names`).
        """
        names = param_names(str(d.get("form_version") or "")) if isinstance(d, dict) else PARAM_NAMES
        try:
            cov = np.asarray(d["covariance"], dtype=float)
            if cov.shape != (len(names),) * 2:
                raise ValueError(f"covariance has shape {cov.shape}")
            others = {} if "busy_power_w" in names else {"busy_power_w": float(d["power_cap_w"])}
            params = PhysicsParams(**{k: float(d["params"][k]) for k in names}, **others)
            folds = [dict(held_out=str(f["held_out"]), params={k: float(f["params"][k]) for k in names})
                     for f in d.get("folds") or []]
            return cls(gpu=str(d["gpu"]), gpu_name=str(d["gpu_name"]), engine=str(d["engine"]),
                       combine=str(d["combine"]), params=params,
                       stderr={k: float(v) for k, v in d["stderr"].items()}, covariance=cov,
                       overhead=str(d.get("overhead", "overlap")), memory_bytes=float(d["memory_bytes"]),
                       power_cap_w=float(d["power_cap_w"]),
                       model_error_log=float(d["model_error_log"]), provenance=dict(d.get("provenance", {})),
                       form_version=str(d.get("form_version") or ""), form_hash=str(d.get("form_hash") or ""),
                       calibrated_range=dict(d.get("calibrated_range") or {}), peaks=dict(d.get("peaks") or {}),
                       folds=folds)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed calibration record: {exc!r}") from None

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON (``indent=1``, sorted keys) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    def sample_params(self, n: int = 200, seed: int = 0) -> list[PhysicsParams]:
        """``n`` parameter sets drawn around the fit, every one kept: none is dropped or clipped.

        Each fitted parameter is drawn in a parameterisation where every draw is physical: a positive value ``x``
        with standard error ``s`` as the log-normal ``x exp(sigma z)``, ``sigma = sqrt(log(1 + (s / x)^2))`` (its
        median is the fit, its spread about ``s`` for a small relative error), and one fitted at its lower bound 0
        (within a millionth of its standard error) as the half-normal ``|s z|``; the ``z`` are standard normal
        with the correlation of lmfit's covariance. The older construction drew the normal itself and dropped the
        draws that went negative (a truncated normal), which narrowed the interval where a parameter was loose.

        Form v1's ``busy_power_w``, fitted at the power cap, then draws above the cap about half the time: v1's
        power is a constant, and those draws are kept (the reason form v2 exists). In form v2 the ceiling is the
        cap itself, not drawn, and :func:`busy_power` holds every draw's busy power under it.
        """
        if n <= 0:
            return []
        rng = np.random.default_rng(seed)
        names = self.param_names
        mean = self.params.vector(names)
        cov = np.nan_to_num(np.asarray(self.covariance, dtype=float))
        # Drawn in standard units (the correlation matrix, then scaled): the variances span some 47 orders of
        # magnitude (FLOP/s squared to seconds squared), beyond what one eigendecomposition in float64 resolves.
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        unit = np.where(sd > 0, sd, 1.0)
        corr = cov / np.outer(unit, unit)
        np.fill_diagonal(corr, 1.0)
        z = rng.multivariate_normal(np.zeros(len(mean)), corr, size=n, method="eigh", check_valid="ignore")
        positive = mean > 1e-6 * sd  # else at its bound 0 (a value of 1e-11 W with a stderr of 250 W): half-normal
        rel = np.where(positive, sd / np.where(positive, mean, 1.0), 0.0)
        sigma = np.sqrt(np.log1p(rel ** 2))
        draws = np.where(positive, mean * np.exp(sigma * z), np.abs(sd * z))
        others = {} if "busy_power_w" in names else {"busy_power_w": self.params.busy_power_w}
        return [PhysicsParams.from_vector(v, names, **others) for v in draws]


@dataclass(frozen=True)
class Observation:
    """One measured workload for calibration.

    Attributes:
        counts: Its passes (:func:`pass_counts`).
        prefill_energy_j: Measured prefill energy (joules).
        decode_energy_j: Measured decode energy (joules).
        prefill_s: Measured prefill time (seconds).
        decode_s: Measured decode time (seconds).
        model: Model label.
    """

    counts: PassCounts
    prefill_energy_j: float
    decode_energy_j: float
    prefill_s: float
    decode_s: float
    model: str = ""

    @property
    def energy_j(self) -> float:
        """Measured total energy (joules)."""
        return self.prefill_energy_j + self.decode_energy_j

    @property
    def duration_s(self) -> float:
        """Measured total time (seconds)."""
        return self.prefill_s + self.decode_s

    @property
    def power_w(self) -> float:
        """Measured mean power (watts): ``energy_j / duration_s`` of the grid's row."""
        return self.energy_j / self.duration_s


def observations(arch: Architecture, table, profile: EngineProfile = HF_PROFILE) -> list[Observation]:
    """Calibration points from a measured grid (columns of ``energybook.report.analysis.measured_table``).

    Each row's schedule is the one it ran with: its ``n_req``, ``batch`` and ``waves`` columns.

    Args:
        arch: The architecture the grid measured.
        table: Rows with ``n_in``, ``n_out``, ``n_req``, ``batch``, ``waves``, ``prefill_energy_j``,
            ``decode_energy_j`` (joules), ``prefill_s``, ``decode_s`` (seconds).
        profile: The profile of the engine that measured the grid (its prefill chunks and graph buckets).

    Raises:
        ValueError: when a column is missing.
    """
    need = ["n_in", "n_out", "n_req", "batch", "waves", "prefill_energy_j", "decode_energy_j", "prefill_s",
            "decode_s"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"the grid of {arch.name} lacks column(s) {missing}")
    out = []
    for r in table.itertuples(index=False):
        counts = pass_counts(arch, int(r.n_in), int(r.n_out), int(r.n_req), int(r.batch), int(r.waves),
                             profile)
        out.append(Observation(counts, float(r.prefill_energy_j), float(r.decode_energy_j), float(r.prefill_s),
                               float(r.decode_s), arch.name))
    return out


#: Start values of the fit (SI units): a H100-like GPU.
START = PhysicsParams(matmul_flops_s=400e12, attention_flops_s=200e12, weight_bytes_s=2.5e12, kv_bytes_s=2.5e12,
                      pass_overhead_s=1e-3, busy_power_w=690.0, overhead_power_w=400.0,
                      elementwise_bytes_s=2.5e12, attention_block_s=10e-9, attention_pairs_s=4e12,
                      graph_capture_s=20e-3)
#: Start values of form v2 (SI units): v1's, with the ceiling ``busy_power_w`` at a 700 W cap, a static power of
#: 150 W, 0.4 pJ per FLOP (about 400 W at 1e15 FLOP/s) and 60 pJ per byte (about 200 W at 3.35e12 B/s, HBM3's
#: datasheet bandwidth).
START_V2 = PhysicsParams(**{**{k: getattr(START, k) for k in PARAM_NAMES}, "busy_power_w": 700.0},
                         static_power_w=150.0, flop_energy_j=0.4e-12, byte_energy_j=60e-12)


def start_values(form: str = "v1") -> PhysicsParams:
    """The fit's start values of a form (:data:`START`, :data:`START_V2`)."""
    return START_V2 if param_names(form) == PARAM_NAMES_V2 else START


#: lmfit's minimiser of :func:`calibrate`.
FIT_METHOD = "least_squares"
#: The residuals of one measured workload in :func:`calibrate`, in their order: log(model / measured) of each.
RESIDUALS = ("prefill_energy_j", "decode_energy_j", "prefill_s", "decode_s")
#: Form v2's residuals: v1's and the log ratio of the workload's mean power (energy / duration of the grid's row).
RESIDUALS_V2 = RESIDUALS + ("power_w",)
#: The weight of form v2's mean-power residual (v1's four residuals of a workload weigh about sqrt(2) together).
POWER_WEIGHT = 1.0


def residual_weights(measured: np.ndarray, weights: str = "share") -> np.ndarray:
    """The weight of each residual of :func:`calibrate` (rows: workloads; columns: :data:`RESIDUALS`).

    ``"share"``: ``sqrt(2 f)``, ``f`` the phase's share of the workload's measured energy (for the energies) or
    time (for the times); ``"equal"``: 1.

    Raises:
        ValueError: for an unknown weighting.
    """
    measured = np.asarray(measured, dtype=float)
    if weights == "share":
        f_e = measured[:, 0] / (measured[:, 0] + measured[:, 1])
        f_t = measured[:, 2] / (measured[:, 2] + measured[:, 3])
        return np.sqrt(2 * np.column_stack([f_e, 1 - f_e, f_t, 1 - f_t]))
    if weights == "equal":
        return np.ones_like(measured)
    raise ValueError(f"unknown weighting {weights!r}; use one of {WEIGHTS}")


def _scaled_bounds(start: PhysicsParams, power_cap_w: float,
                   names: tuple[str, ...] = PARAM_NAMES) -> dict[str, tuple[float, float, float]]:
    """(start, min, max) of each parameter as lmfit sees it (divided by its scale)."""
    out = {}
    for k in names:
        value = getattr(start, k) / _SCALE[k]
        if k.endswith("power_w"):
            out[k] = (min(value, power_cap_w * 0.999), 0.0, power_cap_w)
        elif k in _TIMES:
            out[k] = (value, 0.0, 1e5)
        else:
            out[k] = (value, value * 1e-3, value * 1e3)
    return out


def fit_bounds(start: PhysicsParams = START, power_cap_w: float = 700.0,
               names: tuple[str, ...] = PARAM_NAMES) -> dict[str, tuple[float, float, float]]:
    """(start value, lower bound, upper bound) of each parameter ``names`` (default form v1's) in :func:`calibrate`
    (SI units): the powers within ``[0, power_cap_w]`` (starting at most at 0.999 of it), the fixed times within
    ``[0, 1e5 x scale]``, the rates and form v2's energies per FLOP and per byte within a factor 1000 of their start
    value either way."""
    return {k: tuple(float(x * _SCALE[k]) for x in v) for k, v in _scaled_bounds(start, power_cap_w, names).items()}


@dataclass
class CalibrationFit:
    """What :func:`calibrate` returns: the calibration and the fit's diagnostics.

    Attributes:
        calibration: The calibration (without provenance and model error; the caller adds them).
        report: lmfit's fit report.
        residual_rms_log: rms of the log residuals (dimensionless).
        success: Whether lmfit reported success.
    """

    calibration: Calibration
    report: str
    residual_rms_log: float
    success: bool


def calibrate(obs: list[Observation], combine: str = "smooth", overhead: str = "overlap", power_cap_w: float = 700.0,
              start: PhysicsParams | None = None, gpu: str = "h100", gpu_name: str = "", engine: str = "hf",
              memory_bytes: float = 85.0e9, fixed: dict[str, float] | None = None,
              weights: str = "share", form: str = "v1") -> CalibrationFit:
    """Fit the shared parameters to measured workloads with lmfit (least squares on log ratios).

    The residuals are ``log(model / measured)`` of each point's prefill energy, decode energy, prefill time and
    decode time: relative errors, so short and long workloads weigh alike. With ``weights="share"`` each phase's
    residual is multiplied by ``sqrt(2 f)``, ``f`` the phase's share of the point's measured energy (for the
    energies) or time (for the times): a point's weighted sum of squares then approximates twice the squared
    relative error of its total, and a phase that is a sliver of its workload (whose measurement carries
    allocator stalls and the energy counter's lag at the phase boundary) weighs as little as it counts.
    ``"equal"`` weighs the four alike. ``busy_power_w`` and ``overhead_power_w`` are bounded by ``power_cap_w``.

    Form ``"v2"`` (work-dependent power, :func:`busy_power`) fits :data:`PARAM_NAMES_V2`: ``busy_power_w`` is the
    ceiling, held at ``power_cap_w``; ``static_power_w`` is bounded by ``power_cap_w`` and the energies per FLOP
    and per byte lie within a factor 1000 of their start values. Each workload adds a fifth residual, the log ratio
    of its modelled to its measured mean power (``energy_j / duration_s`` of the grid's row), weighted
    :data:`POWER_WEIGHT`. On the committed H100 grids the measured mean powers lie between about 600 and 700 W:
    the power's low branch (memory-bound small batches) is not in them, and a prediction there is an extrapolation.

    Args:
        obs: The measured workloads (:func:`observations`), of one or more models.
        combine: ``"max"``, ``"smooth"`` or ``"sum"``.
        overhead: ``"overlap"`` or ``"add"`` (:func:`phase_energy`).
        power_cap_w: The GPU's power limit (watts).
        start: Start values (default :func:`start_values` of the form).
        gpu: Short GPU key for the record.
        gpu_name: The GPU's name.
        engine: The engine measured.
        memory_bytes: Device memory for the batch rule (bytes), stored with the calibration.
        fixed: Parameters held at the given values (SI units) instead of fitted (stderr 0, covariance 0).
        weights: ``"share"`` or ``"equal"`` (see above).
        form: The model form, ``"v1"`` (constant busy power) or ``"v2"`` (power that follows the work).

    Raises:
        ValueError: for no observations, an unknown combination or an unknown weighting.
        FormMismatch: (a ValueError) for an unknown form.
    """
    import lmfit  # the analysis half; predict() does not need it

    if not obs:
        raise ValueError("calibration needs at least one measured workload")
    if combine not in COMBINES:
        raise ValueError(f"unknown combination {combine!r}; use one of {COMBINES}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weighting {weights!r}; use one of {WEIGHTS}")
    measured = np.array([[o.prefill_energy_j, o.decode_energy_j, o.prefill_s, o.decode_s] for o in obs])
    if not (np.isfinite(measured).all() and (measured > 0).all()):
        raise ValueError("measured energies and times must be positive and finite")
    names = param_names(form)
    v2 = names == PARAM_NAMES_V2
    start = start if start is not None else start_values(form)
    if v2:
        measured = np.column_stack([measured, measured[:, :2].sum(axis=1) / measured[:, 2:].sum(axis=1)])
    log_measured = np.log(measured)
    weight = residual_weights(measured[:, :4], weights)
    if v2:
        weight = np.column_stack([weight, np.full(len(weight), POWER_WEIGHT)])
    others = {"busy_power_w": float(power_cap_w)} if v2 else {}

    params = lmfit.Parameters()
    for k, (value, low, high) in _scaled_bounds(start, power_cap_w, names).items():
        params.add(k, value=value, min=low, max=high)
    for k, v in (fixed or {}).items():
        params[k].set(value=v / _SCALE[k], vary=False, min=-np.inf, max=np.inf)

    def unpack(p) -> PhysicsParams:
        return PhysicsParams(**{k: p[k].value * _SCALE[k] for k in names}, **others)

    def residual(p):
        pp = unpack(p)
        rows = []
        for o in obs:
            e = phase_energy(o.counts, pp, combine, overhead)
            row = [e.prefill_energy_j, e.decode_energy_j, e.prefill_s, e.decode_s]
            if v2:
                row.append(e.energy_j / e.duration_s)
            rows.append(row)
        return (weight * (np.log(np.maximum(np.array(rows), 1e-300)) - log_measured)).ravel()

    result = lmfit.minimize(residual, params, method=FIT_METHOD)
    best = unpack(result.params)
    scale = np.array([_SCALE[k] for k in names])
    k = len(names)
    if result.covar is not None and result.var_names == list(names):
        cov = np.asarray(result.covar) * np.outer(scale, scale)
        identified = np.ones(k, dtype=bool)
    else:
        cov, identified = _pinv_covariance(residual, result.params, result.residual, scale, names)
    for i, name in enumerate(names):
        if name in (fixed or {}):
            cov[i, :] = cov[:, i] = 0.0
            identified[i] = True
    stderr = {name: float(np.sqrt(cov[i, i])) if identified[i] else float("nan")
              for i, name in enumerate(names)}
    rms = float(np.sqrt(np.mean(result.residual ** 2)))
    cal = Calibration(gpu=gpu, gpu_name=gpu_name, engine=engine, combine=combine, params=best, stderr=stderr,
                      covariance=cov, overhead=overhead, memory_bytes=memory_bytes, power_cap_w=power_cap_w,
                      form_version="v2" if v2 else "")
    return CalibrationFit(cal, lmfit.fit_report(result), rms, bool(result.success))


def _pinv_covariance(residual, params, r0: np.ndarray, scale: np.ndarray,
                     names: tuple[str, ...] = PARAM_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """Covariance s^2 (J^T J)^+ from a forward-difference Jacobian, when lmfit has none.

    With ``combine="max"`` a roofline branch that never binds leaves its parameter without any gradient: J^T J is
    singular. The pseudo-inverse gives such a parameter zero variance (the data say nothing about it, and any
    larger value predicts the same); it is reported as not identified (stderr nan).
    """
    names = list(names)
    base = np.array([params[n].value for n in names])
    cols = []
    for i, n in enumerate(names):
        if not params[n].vary:
            cols.append(np.zeros_like(r0))
            continue
        h = max(abs(base[i]) * 1e-4, 1e-9)
        p = params.copy()
        p[n].set(value=base[i] + h)
        cols.append((residual(p) - r0) / h)
    jac = np.column_stack(cols)
    dof = max(len(r0) - len(names), 1)
    s2 = float(r0 @ r0) / dof
    norms = np.linalg.norm(jac, axis=0)
    identified = norms > 1e-8 * max(norms.max(), 1e-300)
    cov = np.zeros((len(names), len(names)))
    sub = np.ix_(identified, identified)
    cov[sub] = np.linalg.pinv(jac[:, identified].T @ jac[:, identified]) * s2
    return cov * np.outer(scale, scale), identified


def memory_for_batches(archs_and_rows: list[tuple[Architecture, list[tuple[int, int, int, int]]]],
                       max_batch: int = 1024, lo: float = 60e9, hi: float = 100e9, step: float = 0.05e9,
                       profile: EngineProfile = HF_PROFILE) -> tuple[float, float] | None:
    """The range of ``memory_bytes`` for which :func:`batch_limit` reproduces every measured batch.

    Args:
        archs_and_rows: For each architecture, its measured (n_in, n_out, n_req, batch) tuples.
        max_batch: The engine's batch cap.
        lo: Lowest memory tried (bytes).
        hi: Highest memory tried (bytes).
        step: Step of the scan (bytes).
        profile: The profile of the engine that measured the batches.

    Returns:
        (lowest, highest) memory that reproduces all batches, or None when no value does.
    """
    good = []
    for m in np.arange(lo, hi + step / 2, step):
        ok = all(balanced_batch(n_req, min(n_req, max_batch, batch_limit(a, n_in, n_out, m, max_batch, profile)))[0]
                 == b for a, rows in archs_and_rows for n_in, n_out, n_req, b in rows
                 if batch_limit(a, n_in, n_out, m, max_batch, profile) >= 1)
        if ok:
            good.append(float(m))
    return (min(good), max(good)) if good else None


def calibrated_range(grids: list[tuple[Architecture, Any]]) -> dict[str, Any]:
    """What calibration grids cover: [low, high] of the batch, n_in, n_out (tokens), the models' parameter counts
    and the measured mean power (energy / duration of each point, watts), and the models, for the warnings of
    :func:`energybook.model.physics.predict`.

    Args:
        grids: (architecture, its measured rows) per model: rows with ``batch``, ``n_in``, ``n_out``, ``energy_j``
            and ``duration_s`` columns (``energybook.report.analysis.measured_table``).

    Raises:
        ValueError: for no rows.
    """
    rows = [(a, t) for a, t in grids if len(t)]
    if not rows:
        raise ValueError("a calibrated range needs measured rows")

    def span(values) -> list[float]:
        values = np.concatenate([np.asarray(v, dtype=float) for v in values])
        return [float(values.min()), float(values.max())]

    def ints(values) -> list[int]:
        return [int(v) for v in span(values)]

    return dict(
        batch=ints(t["batch"] for _, t in rows), n_in=ints(t["n_in"] for _, t in rows),
        n_out=ints(t["n_out"] for _, t in rows), num_params=ints([a.num_params] for a, _ in rows),
        power_w=span(np.asarray(t["energy_j"], dtype=float) / np.asarray(t["duration_s"], dtype=float)
                     for _, t in rows),
        models=sorted(a.name for a, _ in rows))


# ----- stored calibrations --------------------------------------------------------------------
#: The engine a calibration is picked for when none is named: ``hf``, the only engine calibrated so far.
DEFAULT_ENGINE = "hf"
#: Short GPU names that ``--gpu`` accepts besides the slug of the NVML name (short name -> slug).
GPU_ALIASES = {"h100": "nvidia-h100-80gb-hbm3"}
#: Engine names that differ from the calibration file's (the ``hf`` engine's registered name is ``torch``).
ENGINE_ALIASES = {"torch": "hf"}
#: The command that makes a calibration (``{gpu}``, ``{engine}``: the GPU's slug and the engine).
CALIBRATE_COMMAND = ("python scripts/calibrate.py --gpu {gpu} --engine {engine} --combine smooth --overhead add "
                     "--form {form} (in a checkout, from grids measured on that GPU with that engine)")


def gpu_key(gpu: str) -> str:
    """The slug a GPU's calibration is filed under: ``"NVIDIA H100 80GB HBM3"``, ``"nvidia-h100-80gb-hbm3"`` and
    ``"h100"`` (:data:`GPU_ALIASES`) all give ``"nvidia-h100-80gb-hbm3"``."""
    key = re.sub(r"[^a-z0-9._-]+", "-", str(gpu).strip().lower()).strip("-.")
    return GPU_ALIASES.get(key, key)


def engine_key(engine: str) -> str:
    """The engine's name in calibration file names: lower case, ``torch`` written ``hf``."""
    key = str(engine).strip().lower()
    return ENGINE_ALIASES.get(key, key)


def calibration_file_name(gpu: str, engine: str, form: str = "v1") -> str:
    """``<gpu-slug>--<engine>.json`` for a form-v1 record, ``<gpu-slug>--<engine>--<form>.json`` for a later form:
    ``("h100", "hf")`` -> ``"nvidia-h100-80gb-hbm3--hf.json"``, ``("h100", "hf", "v2")`` ->
    ``"nvidia-h100-80gb-hbm3--hf--v2.json"``."""
    suffix = "" if form in ("", "v1") else f"--{form}"
    return f"{gpu_key(gpu)}--{engine_key(engine)}{suffix}.json"


def _form_order(form: str) -> tuple[int, str]:
    m = re.fullmatch(r"v(\d+)", form)
    return (int(m.group(1)) if m else -1, form)


@dataclass(frozen=True)
class StoredCalibration:
    """One shipped calibration file.

    Attributes:
        gpu: The GPU's slug.
        engine: The engine (:func:`engine_key`).
        path: The file.
        legacy: True for a file of the old naming, ``<gpu>.json`` without an engine (read as the ``hf`` engine,
            with a deprecation warning; this naming is read for one more release).
        form: The model form of its file name: ``"v1"`` for ``<gpu-slug>--<engine>.json``, ``"v2"`` for
            ``<gpu-slug>--<engine>--v2.json``.
    """

    gpu: str
    engine: str
    path: Path
    legacy: bool = False
    form: str = "v1"

    @property
    def aliases(self) -> list[str]:
        """The short names of its GPU."""
        return sorted(k for k, v in GPU_ALIASES.items() if v == self.gpu)

    def label(self) -> str:
        """``"--gpu nvidia-h100-80gb-hbm3 --engine hf (or --gpu h100)"``: how to pick its (GPU, engine)."""
        alias = f" (or --gpu {', '.join(self.aliases)})" if self.aliases else ""
        return f"--gpu {self.gpu} --engine {self.engine}{alias}"


class CalibrationNotFound(ValueError):
    """No shipped calibration for the (GPU, engine) asked for, or no single one when one was left to choose: the
    message lists the calibrations that exist and the command that makes one."""


def stored_calibrations() -> list[StoredCalibration]:
    """The shipped calibrations (``energybook/resources/calibration/<gpu-slug>--<engine>[--<form>].json``), by file
    name, oldest form first within a (GPU, engine); a file of the old naming ``<gpu>.json`` counts as the ``hf``
    engine's form-v1 record (``legacy``), unless the new name of the same (GPU, engine) exists too."""
    try:
        folder = resources.path("calibration")
    except FileNotFoundError:
        return []
    out: dict[tuple[str, str, str], StoredCalibration] = {}
    for p in sorted(folder.glob("*.json")):
        if "--" in p.stem:
            parts = p.stem.split("--")
            form = "v1"
            if len(parts) > 2 and re.fullmatch(r"v\d+", parts[-1]):
                form = parts.pop()
            gpu, engine = "--".join(parts[:-1]), parts[-1]
            out[(gpu_key(gpu), engine_key(engine), form)] = StoredCalibration(gpu_key(gpu), engine_key(engine), p,
                                                                              form=form)
    for p in sorted(folder.glob("*.json")):
        if "--" not in p.stem:
            out.setdefault((gpu_key(p.stem), DEFAULT_ENGINE, "v1"),
                           StoredCalibration(gpu_key(p.stem), DEFAULT_ENGINE, p, legacy=True))
    return sorted(out.values(), key=lambda c: (c.gpu, c.engine, _form_order(c.form)))


def calibrated_gpus() -> list[str]:
    """Slugs of the GPUs with a shipped calibration (of any engine)."""
    return sorted({c.gpu for c in stored_calibrations()})


def _choices(stored: list[StoredCalibration]) -> str:
    groups: dict[tuple[str, str], list[StoredCalibration]] = {}
    for c in stored:
        groups.setdefault((c.gpu, c.engine), []).append(c)
    return "; ".join(f"{cs[0].label()} --form {' or '.join(c.form for c in cs)}" for cs in groups.values()) or "none"


def find_calibration(gpu: str | None = None, engine: str | None = None, form: str | None = None
                     ) -> StoredCalibration:
    """The shipped calibration of (GPU, engine), of the newest model form unless ``form`` names one.

    Args:
        gpu: A GPU name (``"NVIDIA H100 80GB HBM3"``), slug (``"nvidia-h100-80gb-hbm3"``) or short name (``"h100"``),
            case-insensitive; None: the one GPU calibrated for the engine (an error when there are several).
        engine: The engine (``"hf"``, ``"lean"``; ``"torch"`` is ``"hf"``); None: :data:`DEFAULT_ENGINE`.
        form: The model form (``"v1"``, ``"v2"``); None: the newest form calibrated for that (GPU, engine).

    Raises:
        CalibrationNotFound: no calibration of that (GPU, engine) or form, or several GPUs and none named; the
            message lists the calibrations that exist and the command that makes one.
    """
    stored = stored_calibrations()
    eng = engine_key(engine) if engine is not None else DEFAULT_ENGINE
    of_engine = [c for c in stored if c.engine == eng]
    hit: list[StoredCalibration] = []
    if gpu is None:
        gpus = sorted({c.gpu for c in of_engine})
        if len(gpus) == 1:
            hit = of_engine
        why = (f"several GPUs are calibrated for engine {eng!r}: name one with --gpu" if gpus
               else f"no calibration for engine {eng!r}")
    else:
        key = gpu_key(gpu)
        hit = [c for c in of_engine if c.gpu == key]
        why = f"no calibration for GPU {gpu!r} with engine {eng!r}"
    if hit and form is not None:
        of_form = [c for c in hit if c.form == form]
        if not of_form:
            why = (f"no calibration of model form {form!r} for GPU {hit[0].gpu!r} with engine {eng!r} (forms: "
                   f"{', '.join(c.form for c in hit)})")
        hit = of_form
    if hit:
        return max(hit, key=lambda c: _form_order(c.form))
    raise CalibrationNotFound(
        f"{why}; calibrations: {_choices(stored)}; make one with: "
        + CALIBRATE_COMMAND.format(gpu=gpu_key(gpu) if gpu is not None else "<gpu>", engine=eng,
                                   form=form or FORMS[-1]))


def read_calibration(gpu: str | None = None, path: str | Path | None = None,
                     engine: str | None = None, form: str | None = None) -> Calibration:
    """The stored calibration of a (GPU, engine), as recorded (:func:`energybook.model.physics.load_calibration`
    also checks its model form).

    Args:
        gpu: GPU name, slug or short name (:func:`find_calibration`); None: the one GPU calibrated for the engine.
        path: A calibration JSON to read instead of the shipped one.
        engine: The engine; None: :data:`DEFAULT_ENGINE`.
        form: The model form; None: the newest calibrated (:func:`find_calibration`). Ignored with ``path``.

    Raises:
        CalibrationNotFound: for an uncalibrated (GPU, engine) or form (the message lists the calibrations and the
            command that makes one).
        FormMismatch: (a ValueError) for a record of a form this code does not know.
        ValueError: for a malformed file.
    """
    if path is None:
        stored = find_calibration(gpu, engine, form)
        path = stored.path
        if stored.legacy:
            msg = (f"calibration file {path.name} has the old naming; rename it "
                   f"{calibration_file_name(stored.gpu, stored.engine)} (<gpu-slug>--<engine>.json): the old name is "
                   "read for one more release")
            warnings.warn(msg, DeprecationWarning, stacklevel=3)
            logger.warning(msg)
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    cal = Calibration.from_dict(record)
    cal.file = str(path)
    return cal


def peaks_reference(peaks: Any = None, path: str | Path | None = None, datasheet: dict[str, Any] | None = None,
                    gpu_uuid: str | None = None) -> dict[str, Any]:
    """The ``peaks`` block of a calibration record: a measured peaks file (``peaks``: an
    :class:`energybook.store.peaks.Peaks`, ``path`` its file, hashed here), or, when none was measured, the
    ``datasheet`` figures (``name``, ``peak_flops``, ``bandwidth_bytes_s``, ``power_cap_w``, ``memory_bytes``,
    ``source``) marked ``kind: "datasheet"``, with the ``gpu_uuid`` of the grids' GPU.

    Raises:
        ValueError: for neither peaks nor datasheet figures.
    """
    import hashlib

    if peaks is not None:
        ref = dict(kind="measured", gpu=peaks.gpu, gpu_uuid=peaks.gpu_uuid,
                   bandwidth_bytes_s=float(peaks.copy_bytes_per_s), matmul_flops=float(peaks.matmul_flops),
                   power_cap_w=float(peaks.power_limit_w), memory_bytes=float(peaks.memory_bytes),
                   idle_power_w=float(peaks.idle_power_w), source="energybook peaks")
        if path is not None:
            ref.update(file=str(path), sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest())
        return ref
    if datasheet is None:
        raise ValueError("a peaks reference needs a measured peaks file or datasheet figures")
    return dict(kind="datasheet", file=None, sha256=None, gpu=datasheet["name"], gpu_uuid=gpu_uuid,
                bandwidth_bytes_s=float(datasheet["bandwidth_bytes_s"]), matmul_flops=float(datasheet["peak_flops"]),
                power_cap_w=float(datasheet["power_cap_w"]), memory_bytes=float(datasheet["memory_bytes"]),
                source=str(datasheet["source"]))
