"""CPU smoke test of the GPU diagnostic ``benchmarks/meter_sampler.py``: its pure-Python parts (arguments,
run plan, table), and a clear exit without a GPU."""

from __future__ import annotations

import importlib
import time

import pytest


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("benchmarks.meter_sampler")  # importing runs nothing (the sampler process
    # re-imports it)


def test_arguments(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path / "r.json")])
    assert (args.batch, args.n_in, args.n_out, args.poll_s) == (1000, 64, 128, 0.002)
    assert args.modes == ["eager", "graphs"] and args.conditions == ["none", "thread", "process", "sleeper"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--n-out", "1"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--conditions", "gpu-burn"])


def test_runs_are_interleaved_and_reversed_on_odd_repeats(bench):
    runs = bench.plan_runs(["eager", "graphs"], ["none", "thread"], 2)
    assert runs[:4] == [(0, "eager", "none"), (0, "eager", "thread"), (0, "graphs", "none"), (0, "graphs", "thread")]
    assert [r[1:] for r in runs[4:]] == [r[1:] for r in runs[:4]][::-1]


def test_table_and_summary(bench):
    usage = {"cpu_s": 1.5, "vol_cs": 120, "invol_cs": 3, "user_s": 1.0, "sys_s": 0.5}
    runs = [dict(rep=0, mode="eager", condition="none", ms_per_step=70.5, prefill_s=0.2, usage=usage,
                 sm_mhz_before=1980.0, sm_mhz_after=1980.0, throttle_reasons=""),
            dict(rep=0, mode="eager", condition="thread", ms_per_step=14.8, prefill_s=0.2, usage=usage,
                 j_per_token=0.0081, throttle_reasons="sw_power_cap"),
            dict(rep=1, mode="eager", condition="none", ms_per_step=68.5, prefill_s=0.2, usage=usage,
                 note="meter: invalid window")]
    s = bench.summarize(runs)
    assert s["eager/none"] == {"median": 69.5, "min": 68.5, "max": 70.5, "n": 2}
    table = bench.format_table(runs)
    assert "70.50" in table and "sw_power_cap" in table and "0.0081" in table and "meter: invalid window" in table
    assert "eager/thread" in table.splitlines()[-1]


def test_sleeper_only_sleeps(bench):
    with bench.Sleeper(0.002) as s:
        time.sleep(0.05)
    assert s.wakeups >= 5 and not s._thread.is_alive()


def test_without_a_gpu_it_says_so(bench, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run the script itself")
    assert bench.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
