"""The frozen forms of the physical model (issue 24, item 1): the code's form of each version is its committed
form-<version>.json (v1 unchanged since its freeze, v2 the power that follows the work), the calibration records carry
their hash, and a calibration of another form is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from energybook import resources
from energybook.model import form as FORM
from energybook.model import physics as P
from energybook.model import physics_fit as PF

ROOT = Path(__file__).resolve().parents[1]
IN_CHECKOUT = (ROOT / "data" / "calibration").is_dir()
checkout = pytest.mark.skipif(not IN_CHECKOUT, reason="not in a checkout")


@pytest.fixture
def fresh_form():
    FORM._current_form.cache_clear()
    yield
    FORM._current_form.cache_clear()


@checkout
@pytest.mark.parametrize("version", FORM.FORM_VERSIONS)
def test_the_code_form_is_the_frozen_file(version):
    code = FORM.current_form(version=version)
    path = FORM.form_file(code.version, ROOT)
    assert path.is_file(), f"form {code.version} is not frozen: write it with energybook.model.form.write_form()"
    frozen = FORM.read_form(code.version, ROOT)
    assert frozen["form_hash"] == code.form_hash(), (
        f"the model form changed since {path.name} was frozen (form_hash {frozen['form_hash']}, the code's "
        f"{code.form_hash()}): a changed form is a new version: bump energybook.model.form.FORM_VERSION, write "
        "data/calibration/form-<version>.json with energybook.model.form.write_form(), recalibrate, and test it on "
        "data it never saw")
    assert {k: v for k, v in frozen.items() if k != "form_hash"} == code.to_dict()
    assert path.read_text() == json.dumps(FORM.form_record(code), indent=1, sort_keys=True) + "\n"


@checkout
def test_every_frozen_file_states_its_own_hash():
    files = sorted((ROOT / "data" / "calibration").glob("form-*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        stated = record.pop("form_hash")
        assert stated == hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
                                        ).hexdigest(), path
        assert path.name == f"form-{record['version']}.json"


#: v1's hash when it was frozen (commit 4e69d65's record): it must never change.
V1_HASH = "aa4a6a81aa0b01f2f1840c3a2360aa0919996f82f8f2eb89684b67e23e998bd5"


def test_v1_is_unchanged_and_v2_is_the_newest():
    assert FORM.FORM_VERSIONS == ("v1", "v2") and FORM.FORM_VERSION == "v2" == FORM.current_form().version
    assert FORM.current_form(version="v1").form_hash() == V1_HASH
    assert FORM.current_form().form_hash() != V1_HASH
    v2 = FORM.current_form()
    assert [k for k, _ in v2.parameters] == list(P.PARAM_NAMES_V2)
    assert {p for t in v2.terms for p in t.params} == set(P.PARAM_NAMES_V2)
    assert v2.fit.residuals == PF.RESIDUALS_V2 and "s_fold" in v2.fit.model_error
    assert dict(v2.parameters)["byte_energy_j"] == "J/byte"
    assert v2.fingerprint != FORM.current_form(version="v1").fingerprint  # the power terms compute other energies
    assert [r[:5] for r in v2.fingerprint] == [r[:5] for r in FORM.current_form(version="v1").fingerprint]
    assert [r[7:] for r in v2.fingerprint] == [r[7:] for r in FORM.current_form(version="v1").fingerprint]  # times


def test_the_form_is_derived_from_the_fitting_code():
    form = FORM.current_form(version="v1")
    assert form.version == "v1"
    assert (form.combine, form.overhead) == ("smooth", "add")
    assert dataclasses.is_dataclass(form) and form.__dataclass_params__.frozen
    assert [k for k, _ in form.parameters] == list(P.PARAM_NAMES)
    assert {p for t in form.terms for p in t.params} == set(P.PARAM_NAMES)  # every parameter has its term
    fields = {f.name for f in dataclasses.fields(P.PassCounts)}
    assert {c for t in form.terms for c in t.counts} <= fields
    fit = form.fit
    assert fit.method == PF.FIT_METHOD == "least_squares"
    assert fit.weighting == "share" and fit.residuals == PF.RESIDUALS
    assert dict((k, v) for k, v in fit.start) == {k: getattr(PF.START, k) for k in P.PARAM_NAMES}
    bounds = {k: (s, lo, hi) for k, s, lo, hi in fit.bounds}
    assert bounds["busy_power_w"] == (690.0, 0.0, 700.0)
    assert bounds["matmul_flops_s"] == (400e12, 400e9, 400e15)
    assert len(form.fingerprint) == len(FORM.DEVELOPMENT_MODELS) * len(FORM.FINGERPRINT_WORKLOADS)
    assert form.form_hash() == FORM.current_form(version="v1").form_hash() and len(form.form_hash()) == 64


@pytest.mark.parametrize("version", FORM.FORM_VERSIONS)
@pytest.mark.parametrize("change", ["start", "smooth_p", "weighting", "variant", "power_p"])
def test_a_change_of_the_form_changes_its_hash(change, version, monkeypatch, fresh_form):
    if change == "power_p" and version == "v1":
        pytest.skip("v1 has no power smooth minimum")
    frozen = FORM.current_form(version=version).form_hash()
    FORM._current_form.cache_clear()
    if change == "start":
        monkeypatch.setattr(PF, "START", dataclasses.replace(PF.START, pass_overhead_s=2e-3))
        monkeypatch.setattr(PF, "START_V2", dataclasses.replace(PF.START_V2, pass_overhead_s=2e-3))
    elif change == "smooth_p":
        monkeypatch.setattr(PF, "SMOOTH_P", 3.0)
    elif change == "power_p":
        monkeypatch.setattr(PF, "smooth_min", lambda a, b, q=4.0: np.minimum(a, b))
    elif change == "weighting":
        monkeypatch.setattr(PF, "residual_weights", lambda measured, weights="share": measured * 0 + 1)
    form = FORM.current_form("max", "add", version) if change == "variant" else FORM.current_form(version=version)
    assert form.form_hash() != frozen
    if change == "variant":
        assert "not frozen" in form.version


@checkout
def test_the_development_grids_are_the_committed_ones():
    for path, sha, rows in FORM.DEVELOPED_ON:
        data = (ROOT / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, path
        assert json.loads((ROOT / path).with_suffix(".json").read_text())["model"] in FORM.DEVELOPMENT_MODELS
        assert data.decode().count("\n") - 1 == rows, path


@pytest.mark.parametrize("version, name", [("v1", "nvidia-h100-80gb-hbm3--hf.json"),
                                           ("v2", "nvidia-h100-80gb-hbm3--hf--v2.json")])
def test_the_shipped_calibration_records_the_frozen_form(version, name):
    record = json.loads(resources.path("calibration", name).read_text())
    form = FORM.current_form(record["combine"], record["overhead"], version)
    assert (record["form_version"], record["form_hash"]) == (version, form.form_hash())
    cal = P.load_calibration("h100", form=version)
    assert (cal.form_version, cal.form_hash) == (version, form.form_hash())
    rng = cal.calibrated_range
    assert rng["batch"] == [44, 1000] and rng["n_in"] == [64, 4096] and rng["n_out"] == [64, 4096]
    assert rng["models"] == list(FORM.DEVELOPMENT_MODELS)
    assert 600 < rng["power_w"][0] < rng["power_w"][1] <= cal.power_cap_w


def test_a_calibration_of_another_form_is_refused(tmp_path):
    record = json.loads(resources.path("calibration", "nvidia-h100-80gb-hbm3--hf.json").read_text())
    record["form_hash"] = "0" * 64
    path = tmp_path / "h100.json"
    path.write_text(json.dumps(record))
    with pytest.raises(P.FormMismatch) as info:
        P.load_calibration(path=path)
    message = str(info.value)
    assert "0" * 64 in message and FORM.current_form(version="v1").form_hash() in message
    assert "recalibrate with scripts/calibrate.py" in message and "\n" not in message


def test_a_calibration_without_a_form_is_loaded_with_a_warning(tmp_path, caplog):
    record = json.loads(resources.path("calibration", "nvidia-h100-80gb-hbm3--hf.json").read_text())
    del record["form_hash"], record["form_version"]
    path = tmp_path / "h100.json"
    path.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="energybook.model.form"):
        cal = P.load_calibration(path=path)
    assert cal.form_hash == "" and cal.params == P.load_calibration(form="v1").params
    assert "records no model form (form_hash)" in caplog.text and "v1" in caplog.text


def test_predict_refuses_a_calibration_of_another_form(monkeypatch, tmp_path, capsys):
    from energybook import cli

    record = json.loads(resources.path("calibration", "nvidia-h100-80gb-hbm3--hf.json").read_text())
    record["form_hash"] = "f" * 64
    (tmp_path / "nvidia-h100-80gb-hbm3--hf.json").write_text(json.dumps(record))
    real = resources.path
    monkeypatch.setattr(resources, "path", lambda *parts: tmp_path.joinpath(*parts[1:]) if parts[:1] == (
        "calibration",) else real(*parts))
    assert cli.main(["predict", "--model", "Llama-3.2-1B", "--n-in", "64", "--n-out", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("energybook: error:") and "f" * 64 in err and "reinstall" not in err and "\n" not in err


@checkout
def test_the_readme_command_regenerates_the_stored_variant():
    readme = (ROOT / "data" / "calibration" / "README.md").read_text()
    commands = re.findall(r"scripts/calibrate\.py[^\n`]*", readme)
    assert commands
    records = {v: json.loads(resources.path("calibration", n).read_text()) for v, n in (
        ("v1", "nvidia-h100-80gb-hbm3--hf.json"), ("v2", "nvidia-h100-80gb-hbm3--hf--v2.json"))}
    forms = set()
    for command in commands:
        flags = dict(re.findall(r"--(combine|overhead|form) (\S+)", command))
        record = records[flags.get("form", FORM.FORM_VERSION)]
        forms.add(flags.get("form", FORM.FORM_VERSION))
        assert flags.get("combine", FORM.SHIPPED_COMBINE) == record["combine"], command
        assert flags.get("overhead", FORM.SHIPPED_OVERHEAD) == record["overhead"], command
    assert forms == {"v1", "v2"}  # the README regenerates both records
    for record in records.values():
        assert (FORM.SHIPPED_COMBINE, FORM.SHIPPED_OVERHEAD) == (record["combine"], record["overhead"])
    script = (ROOT / "scripts" / "calibrate.py").read_text()
    assert "default=FORM.SHIPPED_COMBINE" in script and "default=FORM.SHIPPED_OVERHEAD" in script


@checkout
def test_the_quoted_errors_are_labelled_development_errors():
    readme = (ROOT / "data" / "calibration" / "README.md").read_text()
    evaluation = (ROOT / "data" / "calibration" / "evaluation.md").read_text()
    report = json.loads((ROOT / "data" / "calibration" / "evaluation.json").read_text())
    assert "development errors" in readme.lower()
    assert "## Development errors of the total energy" in evaluation and "development error" in evaluation
    assert report["errors_are"].startswith("development errors")
    assert report["form"] == dict(form_version="v1", form_hash=FORM.current_form(version="v1").form_hash())
    v2 = json.loads((ROOT / "data" / "calibration" / "evaluation-v2.json").read_text())
    assert v2["errors_are"].startswith("development errors") and v2["form"]["form_version"] == "v2"
    assert v2["form"]["form_hash"] == FORM.current_form().form_hash()
    assert v2["compared_with"]["form_hash"] == FORM.current_form(version="v1").form_hash()
    text = (ROOT / "data" / "calibration" / "evaluation-v2.md").read_text()
    assert "**Every error below is a development error**" in text and "## What cannot be tested yet" in text
    assert len(v2["not_tested"]) >= 3
