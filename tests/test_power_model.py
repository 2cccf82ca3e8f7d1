"""Form v2 of the physical model: a power that follows the work under the cap, the v2 calibration record beside the
frozen v1 one, and the interval that keeps every parameter draw and adds the folds' disagreement."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from energybook import resources
from energybook.model import architecture as A
from energybook.model import form as FORM
from energybook.model import physics as P

ROOT = Path(__file__).resolve().parents[1]
V1_FILE = "nvidia-h100-80gb-hbm3--hf.json"
V2_FILE = "nvidia-h100-80gb-hbm3--hf--v2.json"
#: A hand-made v2 parameter set: the start values' rates (400 TFLOP/s matmuls, 2.5 TB/s), 150 W static, 2.5 pJ per
#: FLOP (1000 W at 400 TFLOP/s: a demand above the cap), 60 pJ per byte (150 W at 2.5 TB/s), a 700 W cap.
HAND = dataclasses.replace(P.START_V2, flop_energy_j=2.5e-12)


def _phase_power(model: str, n_in: int, n_out: int, batch: int, params: P.PhysicsParams) -> tuple[float, float]:
    """(prefill, decode) mean power (watts) of one wave of ``batch`` requests under ``params``."""
    c = P.pass_counts(A.load(model), n_in, n_out, n_req=batch, batch=batch)
    e = P.phase_energy(c, params, "smooth", "add")
    return e.prefill_energy_j / e.prefill_s, (e.decode_energy_j / e.decode_s if e.decode_s else math.nan)


# ----- the power ------------------------------------------------------------------------------------------------
def test_the_smooth_minimum_is_the_smaller_with_a_rounded_corner():
    a = np.array([0.0, 100.0, 700.0, 1400.0, 1e6])
    m = P.smooth_min(a, np.full(5, 700.0))
    assert m[0] == 0.0 and m[1] == pytest.approx(100.0, rel=1e-6) and m[-1] == pytest.approx(700.0, rel=1e-6)
    assert m[2] == pytest.approx(700 * 2 ** (-1 / P.POWER_SMOOTH_P)) and 0.99 * 700 < m[3] < 700
    assert np.all(m <= np.minimum(a, 700.0))


def test_memory_bound_decode_draws_far_less_than_a_big_prefill():
    """Hand-made v2 parameters: a batch-1 decode of an 8B model streams its weights at a few hundred GB/s and does
    almost no arithmetic, so it draws the static power and the bytes' energy, far below the cap; a prefill of 64
    prompts of 2048 tokens demands more than the cap and sits at it."""
    _, decode = _phase_power("Llama-3.1-8B", 512, 256, 1, HAND)
    prefill, _ = _phase_power("Llama-3.1-8B", 2048, 2, 64, HAND)
    assert decode < 0.6 * HAND.busy_power_w
    assert 0.97 * HAND.busy_power_w <= prefill <= HAND.busy_power_w
    c = P.pass_counts(A.load("Llama-3.1-8B"), 512, 8, n_req=1, batch=1)
    busy, _ = P.pass_times(c, HAND, "smooth", "add")
    power = P.busy_power(c, HAND, busy)
    assert np.all(power <= HAND.busy_power_w) and np.all(power >= 0.9 * HAND.static_power_w)


def test_the_shipped_v2_record_puts_batch_1_decode_below_the_cap_and_prefill_at_it():
    cal = P.load_calibration("h100", form="v2")
    _, decode = _phase_power("Llama-3.1-8B", 512, 256, 1, cal.params)
    prefill, _ = _phase_power("Llama-3.1-8B", 4096, 2, 64, cal.params)
    assert decode < 0.93 * cal.power_cap_w
    assert prefill >= 0.97 * cal.power_cap_w
    pred = P.predict(A.load("Llama-3.1-8B"), 512, 256, batch=1, n_req=1, calibration=cal, samples=0)
    assert pred.power_w < cal.power_cap_w * 0.93
    # the extrapolation is named: batch and model size lie outside the grids
    assert any("batch 1 is outside the calibrated batches" in w for w in pred.warnings)
    assert any("outside the calibrated model sizes" in w for w in pred.warnings)


def test_v1_parameters_keep_the_constant_power():
    v1 = P.load_calibration("h100", form="v1")
    assert not v1.params.work_power and P.load_calibration("h100").params.work_power
    c = P.pass_counts(A.load("Llama-3.2-1B"), 64, 8, n_req=4, batch=4)
    busy, _ = P.pass_times(c, v1.params, "smooth", "add")
    assert np.all(P.busy_power(c, v1.params, busy) == v1.params.busy_power_w)
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(v1.params, static_power_w=100.0)


def test_v2_fit_recovers_the_power_parameters():
    """Noise-free workloads of three models at batches 1 to 256 (powers far below the cap to at it): the v2 fit
    finds the static power and the energies per FLOP and per byte."""
    obs = []
    for name in ("Llama-3.2-1B", "OPT-1.3B", "Qwen2-1.5B"):
        arch = A.load(name)
        for n_in, n_out in ((64, 64), (1024, 16)):
            for batch in (1, 16, 256):
                c = P.pass_counts(arch, n_in, n_out, n_req=batch, batch=batch)
                e = P.phase_energy(c, HAND, "smooth", "add")
                obs.append(P.Observation(c, e.prefill_energy_j, e.decode_energy_j, e.prefill_s, e.decode_s, name))
    start = P.PhysicsParams(**{**HAND.__dict__, "static_power_w": 80.0, "flop_energy_j": 0.7e-12,
                               "byte_energy_j": 30e-12})
    fit = P.calibrate(obs, combine="smooth", overhead="add", form="v2", start=start)
    cal = fit.calibration
    assert cal.form_version == "v2" and cal.param_names == P.PARAM_NAMES_V2 and cal.params.busy_power_w == 700.0
    for k in P.POWER_UNITS:
        assert getattr(cal.params, k) == pytest.approx(getattr(HAND, k), rel=0.02), k


# ----- the records ----------------------------------------------------------------------------------------------
#: The v1 record's predictions before form v2 existed: (model, n_in, n_out, batch) -> (energy J, duration s,
#: prefill J, decode J, interval low J, high J).
V1_BEFORE = {
    ("Llama-3.2-1B", 64, 256, None): (2351.55458366233, 3.5392460463506445, 234.76292197868796, 2116.791661683642,
                                      2227.47467151138, 2482.5462801744197),
    ("Llama-3.1-8B", 512, 256, 1): (2573711.653394264, 3813.7574868368647, 13754.73809423412, 2559956.9153000303,
                                    2341778.117089697, 2828616.2666211803),
}


@pytest.mark.parametrize("request_", [("Llama-3.2-1B", 64, 256, None), ("Llama-3.1-8B", 512, 256, 1)])
def test_a_v1_record_still_loads_and_predicts_as_before(request_):
    cal = P.load_calibration("h100", form="v1")
    assert cal.file.endswith(V1_FILE) and cal.form_version == "v1" and cal.folds == []
    assert cal.form_hash == FORM.current_form(version="v1").form_hash()
    if (ROOT / "data" / "calibration").is_dir():
        assert cal.form_hash == FORM.read_form("v1", ROOT)["form_hash"]
    model, n_in, n_out, batch = request_
    pred = P.predict(A.load(model), n_in, n_out, batch=batch, calibration=cal)
    energy, duration, prefill, decode, low, high = V1_BEFORE[request_]
    assert (pred.energy_j, pred.duration_s, pred.prefill_energy_j, pred.decode_energy_j) == (
        energy, duration, prefill, decode)  # bit for bit
    # the interval's draws are log-normal now, none dropped: the same width within 0.1%
    assert pred.energy_low_j == pytest.approx(low, rel=1e-3) and pred.energy_high_j == pytest.approx(high, rel=1e-3)
    record = json.loads(resources.path("calibration", V1_FILE).read_text())
    assert "folds" not in record and record["form_version"] == "v1"
    assert Path(cal.file).read_text() == json.dumps(cal.to_dict(), indent=1, sort_keys=True) + "\n"


def test_the_v2_record_loads_records_its_hash_and_its_folds():
    cal = P.load_calibration("h100")  # the newest form by default
    assert cal.file.endswith(V2_FILE) and cal.form_version == "v2"
    assert cal.form_hash == FORM.current_form(version="v2").form_hash()
    if (ROOT / "data" / "calibration").is_dir():
        assert cal.form_hash == FORM.read_form("v2", ROOT)["form_hash"]
    assert [f["held_out"] for f in cal.folds] == list(FORM.DEVELOPMENT_MODELS)
    assert all(set(f["params"]) == set(P.PARAM_NAMES_V2) for f in cal.folds)
    assert np.asarray(cal.covariance).shape == (len(P.PARAM_NAMES_V2),) * 2
    assert cal.params.busy_power_w == cal.power_cap_w and set(cal.stderr) == set(P.PARAM_NAMES_V2)
    prov = cal.provenance
    assert {"grids", "energybook_commit", "date", "command"} <= set(prov) and "--form v2" in prov["command"]
    assert P.load_calibration("h100", form="v2").params == cal.params
    assert Path(cal.file).read_text() == json.dumps(cal.to_dict(), indent=1, sort_keys=True) + "\n"


def test_a_record_of_an_unknown_form_is_refused(tmp_path):
    record = json.loads(resources.path("calibration", V2_FILE).read_text())
    record["form_version"] = "v9"
    path = tmp_path / "x.json"
    path.write_text(json.dumps(record))
    with pytest.raises(P.FormMismatch, match="unknown model form 'v9'"):
        P.load_calibration(path=path)
    with pytest.raises(P.FormMismatch, match="unknown model form"):
        FORM.current_form(version="v9")
    with pytest.raises(P.CalibrationNotFound, match="no calibration of model form 'v9'"):
        P.load_calibration("h100", form="v9")


def test_a_v2_record_with_a_changed_hash_is_refused(tmp_path):
    record = json.loads(resources.path("calibration", V2_FILE).read_text())
    record["form_hash"] = "e" * 64
    path = tmp_path / "x.json"
    path.write_text(json.dumps(record))
    with pytest.raises(P.FormMismatch) as info:
        P.load_calibration(path=path)
    assert FORM.current_form(version="v2").form_hash() in str(info.value)


# ----- the interval ---------------------------------------------------------------------------------------------
def test_no_draw_is_dropped():
    for form in ("v1", "v2"):
        cal = P.load_calibration("h100", form=form)
        draws = cal.sample_params(300)
        assert len(draws) == 300
        values = np.array([d.vector(cal.param_names) for d in draws])
        assert np.isfinite(values).all() and (values >= 0).all()
    v1 = P.load_calibration("h100", form="v1")
    over = sum(d.busy_power_w > v1.power_cap_w for d in v1.sample_params(300))
    assert 0 < over < 300  # v1's constant power fitted at the cap: draws above it are kept, not dropped
    loose = dataclasses.replace(v1, covariance=np.diag((v1.params.vector() * 2.0) ** 2))  # stderr twice the value
    draws = loose.sample_params(500)
    assert len(draws) == 500 and all(d.matmul_flops_s > 0 and d.pass_overhead_s > 0 for d in draws)
    assert P.load_calibration("h100").sample_params(0) == []


def test_draws_keep_each_stderr():
    cal = P.load_calibration("h100")
    names = cal.param_names
    draws = np.array([p.vector(names) for p in cal.sample_params(2000)])
    sd = np.sqrt(np.diag(np.asarray(cal.covariance, dtype=float)))
    mean = cal.params.vector(names)
    inside = mean > 1e-6 * sd  # else fitted at its bound 0
    spread = draws.std(axis=0) / sd
    assert np.all((spread[inside] > 0.8) & (spread[inside] < 1.5)), dict(zip(names, np.round(spread, 2)))
    at_zero = ~inside & (sd > 0)  # a parameter fitted at its bound 0: the half-normal |s z|
    assert np.allclose(spread[at_zero], math.sqrt(1 - 2 / math.pi), rtol=0.1)
    assert np.all(np.median(draws[:, inside], axis=0) / mean[inside] == pytest.approx(1.0, abs=0.05))


def test_the_interval_widens_at_batch_1_on_an_8b_model():
    cal = P.load_calibration("h100")
    inside = P.predict(A.load("Llama-3.2-1B"), 64, 256, calibration=cal)
    assert inside.warnings == ()
    off = P.predict(A.load("Llama-3.1-8B"), 512, 256, batch=1, n_req=1, calibration=cal)
    width = lambda p: p.energy_high_j / p.energy_low_j  # noqa: E731
    assert width(off) > 1.5 * width(inside)
    arch = A.load("Llama-3.1-8B")
    iv_off = P.energy_interval(P.pass_counts(arch, 512, 256, 1, 1), cal, samples=100)
    arch = A.load("Llama-3.2-1B")
    iv_in = P.energy_interval(P.pass_counts(arch, 64, 256, inside.n_req, inside.batch, inside.waves), cal,
                              samples=100)
    assert iv_off.s_fold > 3 * iv_in.s_fold and iv_off.s_param > iv_in.s_param
    assert len(iv_off.fold_energy_j) == 3 and iv_off.draws == 100


def test_the_interval_is_its_parts():
    cal = P.load_calibration("h100")
    arch = A.load("Qwen2-1.5B")
    c = P.pass_counts(arch, 256, 128, 1000, 1000)
    iv = P.energy_interval(c, cal, samples=0)
    assert iv.s_param == 0.0 and iv.s_model == cal.model_error_log and iv.draws == 0
    logs = np.log(iv.fold_energy_j)
    jack = math.sqrt(2 / 3 * np.sum((logs - logs.mean()) ** 2))
    assert iv.s_fold == pytest.approx(jack)
    half = P.Z95 * math.sqrt(cal.model_error_log ** 2 + jack ** 2)
    assert iv.energy_high_j / iv.energy_j == pytest.approx(math.exp(half))
    assert iv.energy_low_j * iv.energy_high_j == pytest.approx(iv.energy_j ** 2)
    v1 = P.load_calibration("h100", form="v1")
    assert P.energy_interval(c, v1, samples=0).s_fold == 0.0  # v1 stores no folds
