"""One calibration per (GPU, engine): picking it by --gpu / --engine, the error for a missing one, the JSON naming
the calibration, the old file name, and the transfer to another GPU by its measured peaks."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from energybook import cli, resources
from energybook.model import architecture as A
from energybook.model import physics as P
from energybook.store.peaks import Peaks, load_peaks, save_peaks

SHIPPED = "nvidia-h100-80gb-hbm3--hf.json"
#: The form-v2 record of the same (GPU, engine), picked by default (the newest form).
SHIPPED_V2 = "nvidia-h100-80gb-hbm3--hf--v2.json"


def test_the_shipped_record_is_named_by_gpu_and_engine():
    assert [(c.gpu, c.engine, c.path.name, c.legacy, c.form) for c in P.stored_calibrations()] == [
        ("nvidia-h100-80gb-hbm3", "hf", SHIPPED, False, "v1"), ("nvidia-h100-80gb-hbm3", "hf", SHIPPED_V2, False, "v2")]
    assert P.calibration_file_name("NVIDIA H100 80GB HBM3", "torch") == SHIPPED
    assert P.calibration_file_name("NVIDIA H100 80GB HBM3", "torch", "v2") == SHIPPED_V2
    assert P.find_calibration("h100").path.name == SHIPPED_V2  # the newest form by default
    assert P.find_calibration("h100", form="v1").path.name == SHIPPED
    record = json.loads(resources.path("calibration", SHIPPED).read_text())
    assert (record["gpu_name"], record["engine"]) == ("NVIDIA H100 80GB HBM3", "hf")
    peaks = record["peaks"]
    assert peaks["kind"] == "datasheet" and peaks["file"] is None and "not measured" in peaks["source"]
    assert {"bandwidth_bytes_s", "matmul_flops", "power_cap_w", "memory_bytes"} <= set(peaks)
    assert all(len(g["sha256"]) == 64 for g in record["provenance"]["grids"].values())
    assert record["provenance"]["energybook_commit"] and record["form_hash"]


@pytest.mark.parametrize("gpu", [None, "h100", "H100", "nvidia-h100-80gb-hbm3", "NVIDIA H100 80GB HBM3"])
@pytest.mark.parametrize("engine", [None, "hf", "torch", "HF"])
def test_picking_by_gpu_and_engine(gpu, engine):
    cal = P.load_calibration(gpu, engine=engine)
    assert (cal.gpu_slug, cal.engine_key) == ("nvidia-h100-80gb-hbm3", "hf")
    assert cal.file.endswith(SHIPPED_V2) and cal.form_version == "v2"
    assert cal.params == P.load_calibration("h100").params  # the book's call keeps working
    v1 = P.load_calibration(gpu, engine=engine, form="v1")
    assert v1.file.endswith(SHIPPED) and v1.form_version == "v1"


@pytest.mark.parametrize("gpu, engine, why", [
    ("a100", None, "no calibration for GPU 'a100' with engine 'hf'"),
    ("h100", "lean", "no calibration for GPU 'h100' with engine 'lean'"),
    (None, "lean", "no calibration for engine 'lean'"),
])
def test_a_missing_calibration_lists_the_choices_and_the_command(gpu, engine, why):
    with pytest.raises(P.CalibrationNotFound) as info:
        P.load_calibration(gpu, engine=engine)
    message = str(info.value)
    assert message.startswith(why)
    assert "calibrations: --gpu nvidia-h100-80gb-hbm3 --engine hf (or --gpu h100) --form v1 or v2" in message
    assert "python scripts/calibrate.py --gpu" in message and f"--engine {engine or 'hf'}" in message
    assert isinstance(info.value, ValueError) and "\n" not in message


def _folder_with(monkeypatch, tmp_path, names):
    src = resources.path("calibration", SHIPPED)
    folder = tmp_path / "calibration"
    folder.mkdir()
    for name in names:
        record = json.loads(src.read_text())
        if "a100" in name:
            record.update(gpu="a100", gpu_name="NVIDIA A100-SXM4-80GB")
        (folder / name).write_text(json.dumps(record))
    real = resources.path
    monkeypatch.setattr(resources, "path", lambda *parts: folder.joinpath(*parts[1:]) if parts[:1] == (
        "calibration",) else real(*parts))
    return folder


def test_several_gpus_need_a_choice(monkeypatch, tmp_path, capsys):
    _folder_with(monkeypatch, tmp_path, [SHIPPED, "nvidia-a100-sxm4-80gb--hf.json"])
    with pytest.raises(P.CalibrationNotFound, match="several GPUs are calibrated for engine 'hf': name one with --gpu"):
        P.load_calibration()
    assert P.load_calibration("nvidia-a100-sxm4-80gb").gpu_name == "NVIDIA A100-SXM4-80GB"
    assert cli.main(["predict", "--model", "Llama-3.2-1B", "--n-in", "64", "--n-out", "64"]) == 2
    err = capsys.readouterr().err
    assert "--gpu nvidia-a100-sxm4-80gb --engine hf" in err and "--gpu nvidia-h100-80gb-hbm3 --engine hf" in err
    assert cli.main(["predict", "--model", "Llama-3.2-1B", "--n-in", "64", "--n-out", "64", "--gpu", "h100",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["gpu"] == "nvidia-h100-80gb-hbm3"


def test_the_old_file_name_loads_with_a_deprecation_warning(monkeypatch, tmp_path):
    folder = _folder_with(monkeypatch, tmp_path, ["h100.json"])
    [stored] = P.stored_calibrations()
    assert (stored.gpu, stored.engine, stored.legacy) == ("nvidia-h100-80gb-hbm3", "hf", True)
    with pytest.warns(DeprecationWarning, match="old naming; rename it nvidia-h100-80gb-hbm3--hf.json"):
        cal = P.load_calibration("h100")
    assert cal.file == str(folder / "h100.json")
    shutil.copy(folder / "h100.json", folder / SHIPPED)  # the new name wins when both exist
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.load_calibration("h100").file == str(folder / SHIPPED)


@pytest.mark.parametrize("command", [
    ["predict", "--model", "Llama-3.2-1B", "--n-in", "512", "--n-out", "256"],
    ["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=512,n_out=256"],
])
def test_json_names_the_calibration(command, capsys):
    assert cli.main([*command, "--gpu", "h100", "--engine", "hf", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    c = out["calibration"]
    assert {"gpu", "engine", "file", "data_files", "commit", "form_hash", "peaks"} <= set(c)
    assert (c["gpu"], c["engine"], c["file"]) == ("nvidia-h100-80gb-hbm3", "hf",
                                                  f"energybook/resources/calibration/{SHIPPED_V2}")
    assert len(c["data_files"]) == 3 and all(len(v) == 64 for v in c["data_files"].values())
    record = json.loads(resources.path("calibration", SHIPPED_V2).read_text())
    assert c["commit"] == record["provenance"]["energybook_commit"] and len(c["form_hash"]) == 64
    assert c["form_version"] == "v2" and c["form_hash"] == record["form_hash"]
    assert c["peaks"]["kind"] == "datasheet" and c["transferred"] == ""


def test_the_cli_refuses_an_uncalibrated_engine(capsys):
    assert cli.main(["predict", "--model", "Llama-3.2-1B", "--n-in", "64", "--n-out", "64", "--engine", "lean"]) == 2
    err = capsys.readouterr().err
    assert "no calibration for engine 'lean'" in err and "scripts/calibrate.py --gpu <gpu> --engine lean" in err
    assert "--form v2" in err


def test_a_form_is_picked_by_name_and_a_missing_one_named(monkeypatch, tmp_path):
    _folder_with(monkeypatch, tmp_path, [SHIPPED])  # a (GPU, engine) with its v1 record only
    assert P.load_calibration("h100").form_version == "v1"  # the newest it has
    with pytest.raises(P.CalibrationNotFound, match="no calibration of model form 'v2' for GPU "
                                                    "'nvidia-h100-80gb-hbm3' with engine 'hf' \\(forms: v1\\)"):
        P.load_calibration("h100", form="v2")


# ----- transfer by peaks ---------------------------------------------------------------------------------------
def _peaks_file(tmp_path, bandwidth=1.0, matmul=1.0, cap=1.0, uuid="GPU-00000000-1111-2222-3333-444444444444"):
    """A synthetic peaks file: the H100 record's reference peaks times the given factors."""
    ref = P.load_calibration().peaks
    peaks = Peaks(gpu="Synthetic GPU", gpu_uuid=uuid, copy_bytes_per_s=ref["bandwidth_bytes_s"] * bandwidth,
                  matmul_flops=ref["matmul_flops"] * matmul, idle_power_w=70.0,
                  power_limit_w=ref["power_cap_w"] * cap, sm_clock_mhz=1980.0, matmul_power_w=690.0,
                  copy_power_w=500.0, memory_bytes=int(ref["memory_bytes"]), matmul_n=8192, copy_bytes=2**30,
                  window_s=2.0, provenance={"command": "synthetic, for a test"})
    return save_peaks(peaks, tmp_path)


def test_transfer_of_the_same_peaks_changes_nothing(tmp_path):
    cal = P.load_calibration()
    moved = P.transfer(cal, load_peaks(_peaks_file(tmp_path)))
    arch = A.load("Llama-3.2-1B")
    a = P.predict(arch, 512, 256, calibration=cal, samples=0)
    b = P.predict(arch, 512, 256, calibration=moved, samples=0)
    assert b.energy_j == pytest.approx(a.energy_j, rel=1e-12) and b.duration_s == pytest.approx(a.duration_s)
    assert moved.transferred == ("transferred from NVIDIA H100 80GB HBM3 by peaks of "
                                 "GPU-00000000-1111-2222-3333-444444444444")


def test_more_bandwidth_speeds_up_decode_but_not_prefill(tmp_path):
    """1.4x the copy bandwidth: a memory-bound decode-heavy point runs faster by a factor in (1, 1.4), a compute-bound
    prefill-heavy one about as fast. OPT-1.3B's prefill is the compute-bound one: its fused LayerNorm moves few
    elementwise bytes; the hf engine's unfused RMSNorm and rotary kernels put a quarter of Llama's prefill time on
    memory traffic, so its prefill gains some 10%, still far below its decode's gain."""
    cal = P.load_calibration()
    moved = P.transfer(cal, load_peaks(_peaks_file(tmp_path, bandwidth=1.4)))

    def speedup(model, n_in, n_out, batch):
        arch = A.load(model)
        a = P.predict(arch, n_in, n_out, batch=batch, n_req=batch, calibration=cal, samples=0)
        b = P.predict(arch, n_in, n_out, batch=batch, n_req=batch, calibration=moved, samples=0)
        return a.duration_s / b.duration_s, a

    for model in ("Llama-3.2-1B", "OPT-1.3B"):
        decode, a = speedup(model, 64, 2048, 1)  # one request, long output: memory-bound decode steps
        assert a.decode_s > 0.9 * a.duration_s
        assert 1.1 < decode < 1.4, (model, decode)  # most of the bandwidth gain shows, never more than all of it
        prefill, a = speedup(model, 4096, 1, 64)  # long prompts, one output token
        assert a.prefill_s > 0.9 * a.duration_s
        assert 1.0 <= prefill < 1.12 and prefill - 1 < 0.5 * (decode - 1), (model, prefill, decode)


def test_predict_with_gpu_peaks_labels_the_transfer(tmp_path, capsys):
    path = _peaks_file(tmp_path, bandwidth=1.4)
    base = ["predict", "--model", "Llama-3.2-1B", "--n-in", "64", "--n-out", "1024", "--batch", "8", "--n-req", "8"]
    assert cli.main([*base, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli.main([*base, "--gpu-peaks", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    moved = json.loads(captured.out)
    label = "transferred from NVIDIA H100 80GB HBM3 by peaks of GPU-00000000-1111-2222-3333-444444444444"
    assert moved["calibration"]["transferred"] == label and any(label in w for w in moved["warnings"])
    assert any("datasheet figures" in w for w in moved["warnings"]) and label in captured.err
    assert moved["calibration"]["gpu"] == "nvidia-h100-80gb-hbm3"  # the calibration it came from
    assert 1.0 < plain["duration_s"] / moved["duration_s"] < 1.4
    assert cli.main([*base, "--peaks", str(path)]) == 0
    assert label in capsys.readouterr().out


def test_a_bad_peaks_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    base = ["predict", "--model", "Llama-3.2-1B", "--n-in", "64", "--n-out", "64"]
    assert cli.main([*base, "--gpu-peaks", str(bad)]) == 2
    assert "not an energybook peaks file" in capsys.readouterr().err
    assert cli.main([*base, "--gpu-peaks", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
