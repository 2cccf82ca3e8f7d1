"""The roofline: the max rule, the bound of each phase, the schedule of waves and chunks, monotonicity."""

import math

import numpy as np
import pandas as pd
import pytest

from energybook.model import architecture as A
from energybook.model import complexity as C
from energybook.model import roofline as R

LLAMA = A.load("Llama-3.2-1B")
GEMMA = A.load("Gemma-2-2B")  # a sliding window: decode counts are only piecewise affine
SPEC = R.GpuSpec("test GPU", peak_flops=800e12, bandwidth_bytes_s=3e12, power_cap_w=700.0, source="test")


def test_step_takes_the_larger_of_the_two_times():
    compute_heavy = R.step(C.Cost(flops=8e12, bytes=3e9), SPEC)
    assert compute_heavy.time_s == pytest.approx(10e-3)  # 8e12 / 8e14
    assert compute_heavy.memory_s == pytest.approx(1e-3)
    assert compute_heavy.bound == "compute"
    memory_heavy = R.step(C.Cost(flops=8e9, bytes=3e10), SPEC)
    assert memory_heavy.time_s == pytest.approx(10e-3)  # 3e10 / 3e12
    assert memory_heavy.bound == "memory"
    assert memory_heavy.compute_bound_s == 0.0


def test_energy_is_power_times_time():
    p = R.step(C.Cost(flops=8e12, bytes=1.0), SPEC, tokens_out=100)
    assert p.energy_j == pytest.approx(700.0 * 10e-3)
    assert p.tokens_per_j == pytest.approx(100 / 7.0)
    assert p.j_per_token == pytest.approx(0.07)


def test_ridge_intensity():
    assert SPEC.ridge_intensity == pytest.approx(800e12 / 3e12)


def test_decode_at_batch_one_is_memory_bound():
    p = R.step(C.decode_step(LLAMA, context=512, batch=1), SPEC, tokens_out=1)
    assert p.bound == "memory"
    assert p.intensity < 2  # about one multiply-accumulate per weight byte pair
    assert p.time_s == pytest.approx(C.weight_bytes(LLAMA) / SPEC.bandwidth_bytes_s, rel=0.05)


def test_large_batch_prefill_is_compute_bound():
    p = R.prefill_bound(LLAMA, n_in=1024, batch=16, spec=SPEC)
    assert p.bound == "compute"
    assert p.intensity > SPEC.ridge_intensity
    assert p.time_s == pytest.approx(p.compute_s)


def test_prefill_chunks_follow_the_engine():
    assert R.chunk_sizes(1000, 64, 16384) == [256, 256, 256, 232]
    assert R.chunk_sizes(500, 4096, 16384) == [4] * 125
    assert R.chunk_sizes(7, 100, None) == [7]
    assert R.chunk_sizes(3, 20000, 16384) == [1, 1, 1]  # a prompt longer than a chunk is one request per chunk
    chunked = R.prefill_bound(LLAMA, 64, 1000, SPEC, prefill_tokens=16384)
    whole = R.prefill_bound(LLAMA, 64, 1000, SPEC, prefill_tokens=None)
    assert chunked.flops == pytest.approx(whole.flops)
    # Every chunk reads the weights again.
    assert chunked.bytes == pytest.approx(whole.bytes + 3 * C.weight_bytes(LLAMA))
    assert chunked.tokens_out == whole.tokens_out == 1000


def test_waves_are_balanced():
    assert R.wave_sizes(1000, 1) == [1000]
    assert R.wave_sizes(1000, 3) == [334, 334, 332]
    assert sum(R.wave_sizes(1000, 12)) == 1000
    with pytest.raises(ValueError):
        R.wave_sizes(3, 4)


@pytest.mark.parametrize("arch", [LLAMA, GEMMA], ids=lambda a: a.name)
def test_decode_costs_match_step_by_step(arch):
    n_in, n_out = 4000, 300  # crosses Gemma 2's 4096-token window
    contexts, flops, nbytes = R.decode_costs(arch, n_in, n_out, batch=7)
    assert list(contexts) == list(range(n_in, n_in + n_out - 1))
    for i in (0, 1, 95, 96, 97, len(contexts) - 1):
        c = C.decode_step(arch, int(contexts[i]), batch=7)
        assert flops[i] == pytest.approx(c.flops, rel=1e-12)
        assert nbytes[i] == pytest.approx(c.bytes, rel=1e-12)
    total = C.request(arch, n_in, n_out, batch=7) + C.prefill(arch, n_in, batch=7) * -1
    assert flops.sum() == pytest.approx(total.flops, rel=1e-9)
    assert nbytes.sum() == pytest.approx(total.bytes, rel=1e-9)


def test_decode_time_sums_the_max_of_every_step():
    d = R.decode_bound(LLAMA, 64, 256, batch=1000, spec=SPEC)
    _, flops, nbytes = R.decode_costs(LLAMA, 64, 256, 1000)
    by_hand = sum(max(f / SPEC.peak_flops, b / SPEC.bandwidth_bytes_s) for f, b in zip(flops, nbytes))
    assert d.time_s == pytest.approx(by_hand)
    assert d.time_s >= max(d.compute_s, d.memory_s)
    assert d.time_s <= d.compute_s + d.memory_s
    assert d.tokens_out == 1000 * 255


def test_point_bound_adds_phases_and_waves():
    pb = R.point_bound(LLAMA, 512, 128, SPEC, n_req=1000, batch=334, waves=3)
    assert pb.total.time_s == pytest.approx(pb.prefill.time_s + pb.decode.time_s)
    assert pb.total.tokens_out == 1000 * 128
    assert pb.total.energy_j == pytest.approx(700.0 * pb.total.time_s)
    one = R.decode_bound(LLAMA, 512, 128, 334, SPEC).time_s
    two = R.decode_bound(LLAMA, 512, 128, 332, SPEC).time_s
    assert pb.decode.time_s == pytest.approx(2 * one + two)
    with pytest.raises(ValueError):
        R.point_bound(LLAMA, 512, 128, SPEC, n_req=1000, batch=300, waves=3)


def test_time_rises_with_n_out():
    times = [R.point_bound(LLAMA, 256, n, SPEC).total.time_s for n in C.GRID]
    assert all(b > a for a, b in zip(times, times[1:]))


def test_one_wave_is_faster_than_many():
    one = R.point_bound(LLAMA, 256, 256, SPEC, n_req=1000, batch=1000).total.time_s
    ten = R.point_bound(LLAMA, 256, 256, SPEC, n_req=1000, batch=100).total.time_s
    assert ten > one


def test_grid_bounds_uses_the_table_schedule():
    points = pd.DataFrame({"n_in": [64, 4096], "n_out": [256, 64], "n_req": [1000, 1000], "batch": [1000, 500],
                           "waves": [1, 2]})
    g = R.grid_bounds(LLAMA, points, SPEC)
    assert list(g["batch"]) == [1000, 500]
    assert g.loc[1, "prefill_share"] > 0.5 > g.loc[0, "prefill_share"]
    assert g["tokens_per_j"].to_numpy() == pytest.approx(1 / g["j_per_token"].to_numpy())
    assert np.all(g["prefill_bound"] == "compute")
    expected = R.point_bound(LLAMA, 4096, 64, SPEC, batch=500, waves=2).total.time_s
    assert g.loc[1, "time_s"] == pytest.approx(expected)


def test_measuring_bounds_measure_one_wave_per_group_to_its_longest_output():
    points = pd.DataFrame({"n_in": [64, 64, 64, 128], "n_out": [64, 1024, 4096, 256], "batch": [1000, 1000, 500, 1000]})
    g = R.measuring_bounds(LLAMA, points, SPEC)
    assert list(zip(g["n_in"], g["batch"], g["n_out"], g["points"])) == [(64, 500, 4096, 1), (64, 1000, 1024, 2),
                                                                         (128, 1000, 256, 1)]
    one_wave = R.point_bound(LLAMA, 64, 1024, SPEC, n_req=1000, batch=1000).total.time_s
    assert g.loc[1, "time_s"] == pytest.approx(one_wave)  # the group's longest point; its prefix is free
    half = R.point_bound(LLAMA, 64, 4096, SPEC, n_req=1000, batch=500)  # two waves; one is measured
    assert g.loc[0, "time_s"] == pytest.approx(half.total.time_s / 2)
    assert g["time_s"].to_numpy() == pytest.approx((g["prefill_s"] + g["decode_s"]).to_numpy())
    with pytest.raises(ValueError, match="n_out"):
        R.measuring_bounds(LLAMA, points.drop(columns="n_out"), SPEC)


def test_spec_from_benchmark():
    bench = {"peak_flops": 798e12, "peak_bw_Bps": 3.0e12, "peaks_note": "measured", "started": "t",
             "device": {"gpu": "NVIDIA H100 80GB HBM3", "power_limit_w": 700.0}}
    spec = R.GpuSpec.from_benchmark(bench)
    assert (spec.peak_flops, spec.bandwidth_bytes_s, spec.power_cap_w) == (798e12, 3.0e12, 700.0)
    assert spec.name == "NVIDIA H100 80GB HBM3"
    with pytest.raises(ValueError, match="power_limit_w"):
        R.GpuSpec.from_benchmark({"peak_flops": 1.0, "peak_bw_Bps": 1.0, "device": {}})


def test_committed_benchmark_gives_a_spec():
    from pathlib import Path

    from energybook.report import bench

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    spec = R.GpuSpec.from_benchmark(bench.engine_benchmark(results))
    assert 500e12 < spec.peak_flops < 1000e12
    assert 2e12 < spec.bandwidth_bytes_s < 3.4e12
    assert spec.power_cap_w == 700.0


def test_spec_rejects_nonsense():
    with pytest.raises(ValueError):
        R.GpuSpec("x", peak_flops=0.0, bandwidth_bytes_s=1.0, power_cap_w=1.0, source="")
    with pytest.raises(ValueError):
        R.GpuSpec("x", peak_flops=1.0, bandwidth_bytes_s=math.inf, power_cap_w=1.0, source="")


def test_adding_points_at_different_power_fails():
    a = R.step(C.Cost(1.0, 1.0), SPEC)
    b = R.step(C.Cost(1.0, 1.0), R.GpuSpec("y", 1.0, 1.0, 300.0, ""))
    with pytest.raises(ValueError):
        a + b
