"""The frozen form of the physical energy model (:mod:`energybook.model.physics`): its terms, its fitting rule and
the data it was developed on, with a hash that every calibration record carries (issue 24, item 1).

The form is frozen before new data are used to test it. :func:`current_form` derives it from the code that fits
and evaluates the model: the parameters, their start values, bounds and scales and the residuals' weighting come
from :mod:`energybook.model.physics_fit` (:func:`~energybook.model.physics_fit.fit_bounds`,
:func:`~energybook.model.physics_fit.residual_weights`, the defaults of
:func:`~energybook.model.physics_fit.calibrate`), and a numeric fingerprint (:func:`fingerprint`: the modelled
time and energy of nine fixed workloads of the three development models under the start parameters) ties the
terms' formula text to what :func:`~energybook.model.physics_fit.phase_energy` and
:func:`~energybook.model.physics_passes.pass_counts` compute. Any change to a term, a count, the combination,
the overhead rule, the weighting, the bounds or the start values changes :meth:`ModelForm.form_hash`.

The frozen version is committed as data (``data/calibration/form-<version>.json``, :func:`write_form`);
``tests/test_form.py`` fails when the code's form of a version differs from its file. A changed form is a new
version: add it to :data:`FORM_VERSIONS`, write its file, recalibrate, and test it on data it never saw.

Versions (:data:`FORM_VERSIONS`):

* ``v1``, frozen first: the kernels draw a constant power ``P_busy`` (fitted at the 700 W cap) and the per-pass
  overhead ``P_oh``. Its file, its hash and the calibration record fitted with it stay as they were; the code
  still evaluates it, bit for bit.
* ``v2`` (:data:`FORM_VERSION`, the newest): the same time model, with a power that follows the work, held under
  the cap by a smooth minimum (:func:`energybook.model.physics_fit.busy_power`); its fit adds each workload's
  measured mean power as a residual, and its interval adds the disagreement of the leave-one-model-out
  calibrations (:func:`energybook.model.physics.energy_interval`). It was developed on the same three grids as v1,
  so its errors on them are development errors too.

Errors measured on the grids the form was chosen on (:data:`DEVELOPED_ON`: in-sample and leave-one-model-out
errors of ``data/calibration/evaluation.*``) are development errors, not tests of the form. Only data the frozen
form never saw test it: models measured after the freeze, the seeded off-grid points, a GPU it was not calibrated
on.

Used in :doc:`/book/predict`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook.model.physics_fit import FormMismatch  # noqa: F401  (one home: the records' reader raises it too)

logger = logging.getLogger(__name__)

#: The frozen forms this code evaluates, oldest first. A change to a form (a term, a count, the fitting rule) is a
#: new version.
FORM_VERSIONS = ("v1", "v2")
#: The newest frozen form: what ``scripts/calibrate.py`` fits and :func:`energybook.model.physics.load_calibration`
#: picks unless told otherwise.
FORM_VERSION = FORM_VERSIONS[-1]
#: The variant the shipped calibration stores (``scripts/calibrate.py``'s defaults): the combination of compute and
#: memory time and the overhead rule (:func:`energybook.model.physics_fit.phase_energy`).
SHIPPED_COMBINE = "smooth"
SHIPPED_OVERHEAD = "add"

#: The grids the form was developed on (path in a checkout, sha256, rows): the three committed H100 ``hf`` grids.
DEVELOPED_ON = (
    ("data/measured/nvidia-h100-80gb-hbm3/hf/Llama-3.2-1B/grid.csv",
     "061c59a9d70eefb0363e7b8cdcaf63ad9d3571ca69f960dfb7fdf2e1ec154091", 49),
    ("data/measured/nvidia-h100-80gb-hbm3/hf/OPT-1.3B/grid.csv",
     "ff0f0d1e14cff50d016f55440c94648e1422d4acfa5cc564dc61f1d410d8da60", 49),
    ("data/measured/nvidia-h100-80gb-hbm3/hf/Qwen2-1.5B/grid.csv",
     "a2d39b194927287b1a67ded1c36853047cc1f5437925d91f24c593ff61579aa9", 49),
)
#: The development models (of :data:`DEVELOPED_ON`), whose workloads make the fingerprint.
DEVELOPMENT_MODELS = ("Llama-3.2-1B", "OPT-1.3B", "Qwen2-1.5B")
#: The fingerprint's workloads: (n_in, n_out, n_req, batch): one wave of short requests, several waves of a long
#: prompt (a partial last wave), and a prompt split into prefill chunks with a long decode over many graph buckets.
FINGERPRINT_WORKLOADS = ((64, 64, 1000, 1000), (2048, 512, 1000, 84), (4096, 4096, 100, 8))
#: Measured (prefill energy, decode energy, prefill time, decode time) rows on which the weighting is fingerprinted.
_WEIGHT_PROBE = ((1.0, 3.0, 2.0, 5.0), (40.0, 1.0, 1.0, 1.0))
#: Significant digits the fingerprint keeps (far above any float noise, far below any change of the form).
_DIGITS = 10

_COMBINE_TEXT = {"max": "comb(a, b) = max(a, b)", "sum": "comb(a, b) = a + b",
                 "smooth": "comb(a, b) = (a^p + b^p)^(1/p)"}
_TIME_TEXT = {"add": "t = busy + t_pass + N_cap * t_cap",
              "overlap": "t = comb(busy, t_pass + N_cap * t_cap)"}


@dataclass(frozen=True)
class Term:
    """One term of a forward pass's time or energy.

    Attributes:
        name: Short name.
        formula: Its formula (the notation of :mod:`energybook.model.physics`).
        counts: The :class:`~energybook.model.physics_passes.PassCounts` fields it multiplies.
        params: The parameters (:data:`energybook.model.physics_fit.PARAM_NAMES`) it uses.
    """

    name: str
    formula: str
    counts: tuple[str, ...]
    params: tuple[str, ...]


#: The terms of a pass's kernel time (``busy``), its overheads and its energy.
TERMS = (
    Term("matmul_or_weights", "comb(F_mm / R_mm, (W + O) / B_w)", ("matmul_flops", "weight_bytes", "other_bytes"),
         ("matmul_flops_s", "weight_bytes_s")),
    Term("attention_or_kv", "comb(F_att / R_att + N_pair / R_pair, K / B_kv)",
         ("attention_flops", "attention_pairs", "kv_bytes"), ("attention_flops_s", "attention_pairs_s", "kv_bytes_s")),
    Term("elementwise", "A / B_el", ("elementwise_bytes",), ("elementwise_bytes_s",)),
    Term("attention_blocks", "N_blk * t_blk", ("attention_blocks",), ("attention_block_s",)),
    Term("pass_overhead", "t_pass, once per forward pass", ("repeat",), ("pass_overhead_s",)),
    Term("graph_capture", "N_cap * t_cap", ("graph_captures",), ("graph_capture_s",)),
    Term("energy", "E = sum over passes of P_busy * busy + P_oh * (t - busy)", ("repeat",),
         ("busy_power_w", "overhead_power_w")),
)
#: Form v2's terms: v1's time terms, and a power that follows the work.
TERMS_V2 = TERMS[:-1] + (
    Term("power", "P_k = smin(P_s + (e_F (F_mm + F_att) + e_B (W + O + K + A)) / busy_k, P_max), "
         "smin(a, b) = (a^-q + b^-q)^(-1/q), q = 8, P_max = the power cap (not fitted)",
         ("matmul_flops", "attention_flops", "weight_bytes", "other_bytes", "kv_bytes", "elementwise_bytes"),
         ("static_power_w", "flop_energy_j", "byte_energy_j")),
    Term("energy", "E = sum over passes of P_k * busy + P_oh * (t - busy)", ("repeat",), ("overhead_power_w",)),
)


@dataclass(frozen=True)
class FitRule:
    """How a calibration is fitted (:func:`energybook.model.physics_fit.calibrate` as ``scripts/calibrate.py`` calls
    it).

    Attributes:
        loss: The loss, in words.
        method: lmfit's minimiser.
        residuals: The residuals of one measured workload (log(model / measured) of each).
        weighting: The residuals' weighting (``"share"`` or ``"equal"``).
        weights_probe: :func:`~energybook.model.physics_fit.residual_weights` on two fixed rows (a fingerprint of
            the weighting).
        start: Start values of the parameters (SI units).
        scales: The scale of each parameter inside the fit.
        bounds: (start, lower, upper) of each parameter at a 700 W power cap (SI units; the powers' upper bound is
            the power cap).
        fixed: Parameters held fixed (none).
        model_error: How the model error of the interval is computed.
        memory_rule: How the batch rule's memory is chosen.
    """

    loss: str
    method: str
    residuals: tuple[str, ...]
    weighting: str
    weights_probe: tuple[tuple[float, ...], ...]
    start: tuple[tuple[str, float], ...]
    scales: tuple[tuple[str, float], ...]
    bounds: tuple[tuple[str, float, float, float], ...]
    fixed: tuple[str, ...]
    model_error: str
    memory_rule: str


@dataclass(frozen=True)
class ModelForm:
    """The form of the physical model: terms, combination, overhead rule, fitting rule, development data.

    Attributes:
        version: The form's version (:data:`FORM_VERSION`; a variant other than the frozen one is marked as not
            frozen).
        terms: The terms (:data:`TERMS`).
        combine: The combination of compute and memory time (``"smooth"``, ``"max"``, ``"sum"``).
        combine_formula: Its formula.
        smooth_p: The exponent of ``"smooth"``.
        overhead: The overhead rule (``"add"`` or ``"overlap"``).
        time_formula: A pass's time.
        engine_profile: The engine profile whose schedule the counts follow.
        parameters: The parameters in the covariance's order, with units.
        fit: The fitting rule.
        developed_on: The grids the form was chosen on (path, sha256, rows): errors on them are development
            errors.
        fingerprint: (model, n_in, n_out, n_req, batch, prefill J, decode J, prefill s, decode s) of
            :data:`FINGERPRINT_WORKLOADS` under the start values (10 significant digits).
    """

    version: str
    terms: tuple[Term, ...]
    combine: str
    combine_formula: str
    smooth_p: float
    overhead: str
    time_formula: str
    engine_profile: str
    parameters: tuple[tuple[str, str], ...]
    fit: FitRule
    developed_on: tuple[tuple[str, str, int], ...]
    fingerprint: tuple[tuple[Any, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """The form as JSON-ready data (tuples as lists), without its hash."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def canonical_json(self) -> str:
        """The canonical JSON the hash is taken of (sorted keys, no spaces)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def form_hash(self) -> str:
        """sha256 (hex) of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _round(x: float) -> float:
    return float(f"{float(x):.{_DIGITS}g}")


def fingerprint(combine: str = SHIPPED_COMBINE, overhead: str = SHIPPED_OVERHEAD,
                version: str = "v1") -> tuple[tuple[Any, ...], ...]:
    """The modelled (prefill J, decode J, prefill s, decode s) of :data:`FINGERPRINT_WORKLOADS` for each
    development model, under the fit's start values of the form ``version``: what the terms compute, as numbers."""
    from energybook.model import architecture as A
    from energybook.model import physics_fit as F
    from energybook.model.batch import HF_PROFILE
    from energybook.model.physics_passes import pass_counts

    rows = []
    for model in DEVELOPMENT_MODELS:
        arch = A.load(model)
        for n_in, n_out, n_req, batch in FINGERPRINT_WORKLOADS:
            b, waves = F.balanced_batch(n_req, batch)
            e = F.phase_energy(pass_counts(arch, n_in, n_out, n_req, b, waves, HF_PROFILE),
                               F.START if version == "v1" else F.start_values(version), combine, overhead)
            rows.append((model, n_in, n_out, n_req, batch, *(_round(v) for v in (
                e.prefill_energy_j, e.decode_energy_j, e.prefill_s, e.decode_s))))
    return tuple(rows)


#: Form v2's interval, in words (its fitting rule's ``model_error``).
_INTERVAL_V2 = ("rms of log(predicted / measured) total energy over the leave-one-model-out fits of the stored "
                "variant (s_model); the interval is exp(+-1.96 sqrt(s_param^2 + s_model^2 + s_fold^2)): s_param the "
                "sd of log energy over parameter draws (log-normal, half-normal at a bound of 0, none dropped), "
                "s_fold the jackknife sd of log energy over the leave-one-model-out calibrations stored in the "
                "record ((n-1)/n x their sum of squared deviations from their mean)")


def _fit_rule(version: str = "v1") -> FitRule:
    import numpy as np

    from energybook.model import physics_fit as F

    defaults = inspect.signature(F.calibrate).parameters
    weighting = defaults["weights"].default
    probe = F.residual_weights(np.array(_WEIGHT_PROBE), weighting)
    memory = inspect.signature(F.memory_for_batches).parameters
    v1 = version == "v1"
    names = F.PARAM_NAMES if v1 else F.param_names(version)
    start = F.START if v1 else F.start_values(version)
    if not v1:
        probe = np.column_stack([probe, np.full(len(probe), F.POWER_WEIGHT)])
    return FitRule(
        loss="least squares on log(model / measured) of each workload's residuals, times their weights",
        method=F.FIT_METHOD,
        residuals=tuple(F.RESIDUALS if v1 else F.RESIDUALS_V2),
        weighting=weighting,
        weights_probe=tuple(tuple(_round(v) for v in row) for row in probe),
        start=tuple((k, _round(getattr(start, k))) for k in names),
        scales=tuple((k, float(F._SCALE[k])) for k in names),
        bounds=tuple((k, *(_round(v) for v in b)) for k, b in F.fit_bounds(start, 700.0, names).items()),
        fixed=tuple(sorted(defaults["fixed"].default or {})),
        model_error="rms of log(predicted / measured) total energy over the leave-one-model-out fits of the "
                    "stored variant" if v1 else _INTERVAL_V2,
        memory_rule=f"memory_bytes: the midpoint of the range (scanned {memory['lo'].default:.4g} to "
                    f"{memory['hi'].default:.4g} B in steps of {memory['step'].default:.4g} B) for which the "
                    "engine's batch rule reproduces every measured batch")


def current_form(combine: str = SHIPPED_COMBINE, overhead: str = SHIPPED_OVERHEAD,
                 version: str = FORM_VERSION) -> ModelForm:
    """The form the code fits and evaluates for a variant (default: the shipped one) of a version (default: the
    newest, :data:`FORM_VERSION`), derived from the code.

    A variant other than the shipped one (:data:`SHIPPED_COMBINE`, :data:`SHIPPED_OVERHEAD`) is not the frozen
    form: its version says so.

    Raises:
        FormMismatch: (a ValueError) for a version this code does not know (:data:`FORM_VERSIONS`).
        ValueError: for an unknown combination or overhead mode.
    """
    if version not in FORM_VERSIONS:
        raise FormMismatch(f"unknown model form {version!r}: this code evaluates forms {', '.join(FORM_VERSIONS)}; "
                           "use the energybook version that wrote the calibration, or recalibrate with "
                           "scripts/calibrate.py")
    return _current_form(combine, overhead, version)


@functools.cache
def _current_form(combine: str, overhead: str, version: str = FORM_VERSION) -> ModelForm:
    from energybook.model import physics_fit as F
    from energybook.model.batch import HF_PROFILE

    if combine not in F.COMBINES:
        raise ValueError(f"unknown combination {combine!r}; use one of {F.COMBINES}")
    if overhead not in F.OVERHEADS:
        raise ValueError(f"unknown overhead mode {overhead!r}; use one of {F.OVERHEADS}")
    shipped = (combine, overhead) == (SHIPPED_COMBINE, SHIPPED_OVERHEAD)
    label = version if shipped else f"{version}-variant-{combine}-{overhead} (not frozen)"
    v1 = version == "v1"
    names = F.PARAM_NAMES if v1 else F.param_names(version)
    return ModelForm(
        version=label, terms=TERMS if v1 else TERMS_V2, combine=combine, combine_formula=_COMBINE_TEXT[combine],
        smooth_p=float(F.SMOOTH_P), overhead=overhead,
        time_formula=_TIME_TEXT[overhead] + "; busy = the sum of the kernel terms",
        engine_profile=HF_PROFILE.name, parameters=tuple((k, F.ALL_UNITS[k]) for k in names),
        fit=_fit_rule(version), developed_on=DEVELOPED_ON, fingerprint=fingerprint(combine, overhead, version))


def form_file(version: str = FORM_VERSION, root: str | Path | None = None) -> Path:
    """The committed file of a frozen form, ``data/calibration/form-<version>.json`` of the checkout."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    return root / "data" / "calibration" / f"form-{version}.json"


def form_record(form: ModelForm) -> dict[str, Any]:
    """What :func:`write_form` writes: the form's data with its ``form_hash``."""
    return dict(form.to_dict(), form_hash=form.form_hash())


def write_form(path: str | Path | None = None, form: ModelForm | None = None) -> Path:
    """Write a form (default: the code's shipped form) with its hash to ``path`` (default :func:`form_file` of its
    version) and return the path."""
    form = form if form is not None else current_form()
    path = Path(path) if path is not None else form_file(form.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(form_record(form), indent=1, sort_keys=True) + "\n")
    return path


def read_form(version: str = FORM_VERSION, root: str | Path | None = None) -> dict[str, Any]:
    """A committed frozen form (:func:`form_file`).

    Raises:
        FileNotFoundError: outside a checkout, or for a version never frozen.
        ValueError: when the file's hash does not match its content.
    """
    path = form_file(version, root)
    record = json.loads(path.read_text())
    stated = record.pop("form_hash", None)
    actual = hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    if stated != actual:
        raise ValueError(f"{path}: its form_hash {stated} does not match its content ({actual}); rewrite it with "
                         "energybook.model.form.write_form")
    return dict(record, form_hash=stated)




def check_form(cal: Any, source: str | Path = "") -> None:
    """Refuse a calibration (:class:`energybook.model.physics_fit.Calibration`) whose model form (``form_hash``) is
    not the one this code evaluates for its variant and version (:func:`current_form` of its ``form_version``; a
    record without one is taken as v1); warn (log) when it records none.

    Raises:
        FormMismatch: naming both hashes and what to do; or for a version this code does not know.
    """
    where = f"{source}: " if source else ""
    code = current_form(cal.combine, cal.overhead, cal.form_version or "v1")
    if not cal.form_hash:
        logger.warning("%sthe calibration of %s records no model form (form_hash): it predates the frozen form %s "
                       "(%s); recalibrate with scripts/calibrate.py to record it", where, cal.gpu, code.version,
                       code.form_hash()[:12])
        return
    if cal.form_hash != code.form_hash():
        raise FormMismatch(
            f"{where}the calibration of {cal.gpu} was fitted with model form {cal.form_version or '?'} "
            f"(form_hash {cal.form_hash}), but this code evaluates form {code.version} (form_hash "
            f"{code.form_hash()}): recalibrate with scripts/calibrate.py on this code, or use the energybook "
            f"commit that made the calibration ({cal.provenance.get('energybook_commit', 'unknown')})")
