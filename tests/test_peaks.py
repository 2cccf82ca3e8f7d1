"""A GPU's peaks file (``energybook peaks``): stored by UUID with provenance, refused when corrupt or edited, and
recorded by the sweeps of that GPU."""

from __future__ import annotations

import json
import math

import pytest

from energybook import cli
from energybook.store.peaks import Peaks, find_peaks, load_peaks, peaks_path, save_peaks
from energybook.store.schema import DataError

GOOD = dict(gpu="NVIDIA H100 80GB HBM3", gpu_uuid="GPU-b8cceecb-8db6-dbb7-91d8-53b9f7cdb231",
            copy_bytes_per_s=2.99e12, matmul_flops=7.65e14, idle_power_w=70.0, power_limit_w=700.0,
            sm_clock_mhz=1755.0, matmul_power_w=690.0, copy_power_w=420.0, memory_bytes=85520809984,
            matmul_n=8192, copy_bytes=2 << 30, window_s=2.0, provenance={"command": "energybook peaks"})


def test_peaks_round_trip_under_the_gpus_uuid(tmp_path):
    path = save_peaks(Peaks(**GOOD), tmp_path)
    assert path == peaks_path(tmp_path, GOOD["gpu_uuid"]) == tmp_path / "peaks" / f"{GOOD['gpu_uuid']}.json"
    assert load_peaks(path) == Peaks(**GOOD)
    assert find_peaks(tmp_path, GOOD["gpu_uuid"]) == path and find_peaks(tmp_path, "GPU-other") is None
    assert json.loads(path.read_text())["schema"] == "energybook.peaks/1"


@pytest.mark.parametrize("key, value", [("copy_bytes_per_s", 0.0), ("matmul_flops", math.nan),
                                        ("idle_power_w", -5.0), ("memory_bytes", True), ("gpu", "a\nb")])
def test_impossible_peaks_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        Peaks(**dict(GOOD, **{key: value}))


@pytest.mark.parametrize("edit, match", [
    (lambda r: r.pop("matmul_flops"), "lacks matmul_flops"),
    (lambda r: r.update(copy_bytes_per_s=-1), "copy_bytes_per_s must be a positive"),
    (lambda r: r.update(schema="other/1"), "not an energybook peaks file"),
])
def test_an_edited_or_corrupt_peaks_file_is_a_data_error_saying_to_measure_again(tmp_path, edit, match):
    path = save_peaks(Peaks(**GOOD), tmp_path)
    rec = json.loads(path.read_text())
    edit(rec)
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=f"{match}.*energybook peaks"):
        load_peaks(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a readable peaks file.*energybook peaks"):
        load_peaks(path)


def test_the_peaks_command_refuses_a_short_window_and_no_gpu(tmp_path, capsys, monkeypatch):
    assert cli.main(["peaks", "--data", str(tmp_path), "--window", "0.2"]) == 2
    assert "--window must be 1..60 seconds" in capsys.readouterr().err
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert cli.main(["peaks", "--data", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
    assert not (tmp_path / "peaks").exists()


def test_a_sweep_records_the_peaks_file_of_its_gpu(tmp_path):
    from energybook.measure.meter import SimulatedMeter
    from energybook.measure.protocol import SweepConfig
    from energybook.measure.runner import run_sweep

    meter = SimulatedMeter()
    meter.device_info = lambda: dict(SimulatedMeter().device_info(), gpu="NVIDIA H100 80GB HBM3",
                                     gpu_uuid=GOOD["gpu_uuid"])
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=64,
                                   hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256, torch_dtype="float32")))
    data = tmp_path / "data"
    save_peaks(Peaks(**GOOD), data)
    config = SweepConfig(n_in=[8], n_out=[4], n_req=2, max_batch=2, min_window_s=0.0, cooldown_s=0.0)
    res = run_sweep(cfg, config, workspace=data, device="cpu", meter=meter, allow_test_data=True, progress=False)
    sidecar = json.loads(res.path.with_suffix(".json").read_text())
    assert sidecar["peaks_file"] == f"peaks/{GOOD['gpu_uuid']}.json"  # found by the GPU's UUID
    res = run_sweep(cfg, config.replace(n_out=[4]), workspace=tmp_path / "other", device="cpu", allow_test_data=True,
                    progress=False)
    assert "peaks_file" not in json.loads(res.path.with_suffix(".json").read_text())  # no peaks file there
