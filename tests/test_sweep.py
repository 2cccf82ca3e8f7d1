"""Sweeps with a fake engine and a simulated meter: resumption after a kill, atomic appends, the
loader's refusals, OOM halving, parameter checks."""

import csv
import math
import subprocess
import sys

import pytest

from energybook.measure import protocol as P
from energybook.measure import runner as S
from energybook.measure.meter import SimulatedMeter
from energybook.measure.protocol import SweepConfig
from energybook.measure.torch_engine import Wave, WaveTimes
from energybook.store import results as R


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeEngine:
    """Prefill 1 ms per prompt token, decode 10 ms per step; at most 4 requests at long contexts."""

    name = "fake-model"
    weights = "dummy"
    settings = {"engine": "fake", "device": "cpu", "dtype": "float32"}

    def __init__(self, clock, fail_after=None, oom_above=None):
        self.clock, self.calls, self.fail_after, self.oom_above = clock, [], fail_after, oom_above

    def check_lengths(self, n_in, n_out):
        pass

    def batch_limit(self, n_in, n_out):
        return 4 if n_in + n_out > 100 else 16

    def generate(self, n_in, n_out, batch, checkpoints=None, on_checkpoint=None, clock=None, **kw):
        self.calls.append((n_in, n_out, batch))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise KeyboardInterrupt("killed")
        if self.oom_above is not None and batch > self.oom_above:
            import torch

            raise torch.cuda.OutOfMemoryError("fake OOM")
        start = self.clock.t
        self.clock.t += 1e-3 * n_in
        times = WaveTimes(start=start, prefill_end=self.clock.t, end=0.0)
        for k in range(1, n_out + 1):
            if k > 1:
                self.clock.t += 1e-2
            if checkpoints and k in checkpoints:
                times.checkpoints[k] = self.clock.t
        times.end = self.clock.t
        return Wave(batch, n_in, n_out, times, False)


def sweep(tmp_path, engine, clock, **kw):
    args = dict(n_in=[8, 64], n_out=[4, 16, 64], n_req=10, max_batch=16, device="cpu", allow_test_data=True,
                engine=engine, meter=SimulatedMeter(power_w=200.0, clock=clock), min_window_s=0.0, cooldown_s=0.0,
                progress=False, warmup_steps=2)
    args.update(kw)
    return S.run_sweep("fake-model", output=tmp_path / "grid.csv", workspace=tmp_path, **args)


def keys(path):
    with open(path, newline="") as fh:
        return [(int(r["n_in"]), int(r["n_out"]), int(r["rep"])) for r in csv.DictReader(fh)]


def test_killed_sweep_resumes_to_the_full_set(tmp_path):
    clock = Clock()
    res = sweep(tmp_path, FakeEngine(clock), clock, stop_after=2)
    assert res.measured == 2
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of a later group
        sweep(tmp_path, FakeEngine(clock, fail_after=3), clock)
    partial = keys(tmp_path / "grid.csv")
    R.load_measured(tmp_path / "grid.csv", allow_test_data=True)  # still valid after the kill
    res = sweep(tmp_path, FakeEngine(clock), clock)
    done = keys(tmp_path / "grid.csv")
    assert len(done) == len(set(done)) == 6
    assert set(partial) <= set(done)
    assert res.skipped == len(partial)


def test_prefix_points_share_one_generation_and_count_waves(tmp_path):
    clock = Clock()
    eng = FakeEngine(clock)
    sweep(tmp_path, eng, clock, n_in=[8], n_out=[4, 16, 64])
    measured = [c for c in eng.calls if c[1] == 64]
    assert len(measured) == 1  # n_out 4 and 16 were checkpoints of the n_out=64 generation
    df = R.load_measured(tmp_path / "grid.csv", allow_test_data=True).data.set_index("n_out")
    # 8+64 tokens > 100? no: batch 10 (one wave); energy = 200 W x (prefill + (n_out-1) steps)
    assert df.loc[16, "batch"] == 10 and df.loc[16, "waves"] == 1
    assert df.loc[16, "energy_j"] == pytest.approx(200 * (8e-3 + 15e-2), rel=1e-5)
    assert df.loc[16, "tokens_per_j"] == pytest.approx(10 * 16 / df.loc[16, "energy_j"], rel=1e-5)


def test_one_wave_is_counted_as_many_times_as_there_are_waves(tmp_path):
    clock = Clock()
    sweep(tmp_path, FakeEngine(clock), clock, n_in=[64], n_out=[64])  # 128 tokens: at most 4 per wave
    row = R.load_measured(tmp_path / "grid.csv", allow_test_data=True).data.iloc[0]
    assert (row.batch, row.waves) == (4, 3)
    assert row.energy_j == pytest.approx(200 * (64e-3 + 63e-2) * 10 / 4, rel=1e-5)


def test_full_mode_runs_every_wave(tmp_path):
    clock = Clock()
    eng = FakeEngine(clock)
    sweep(tmp_path, eng, clock, n_in=[64], n_out=[64], mode="full")
    assert [c[2] for c in eng.calls if c[1] == 64] == [4, 4, 2]  # after a short warm-up: waves of 4, 4, 2
    row = R.load_measured(tmp_path / "grid.csv", allow_test_data=True).data.iloc[0]
    assert row.energy_j == pytest.approx(200 * (64e-3 + 63e-2) * 3, rel=1e-5)


def test_short_points_are_repeated_to_the_minimum_window(tmp_path):
    clock = Clock()
    sweep(tmp_path, FakeEngine(clock), clock, n_in=[8], n_out=[4, 64], min_window_s=0.5)
    df = R.load_measured(tmp_path / "grid.csv", allow_test_data=True).data.set_index("n_out")
    assert df.loc[4, "mode"] == "prefix+repeat" and df.loc[4, "window_s"] >= 0.5 and df.loc[4, "repeats"] > 1
    assert df.loc[64, "mode"] == "prefix"
    assert df.loc[4, "energy_j"] == pytest.approx(200 * (8e-3 + 3e-2), rel=1e-5)


def test_out_of_memory_halves_the_batch(tmp_path):
    pytest.importorskip("torch")
    clock = Clock()
    sweep(tmp_path, FakeEngine(clock, oom_above=5), clock, n_in=[8], n_out=[4])
    row = R.load_measured(tmp_path / "grid.csv", allow_test_data=True).data.iloc[0]
    assert row.batch == 5 and row.oom_retries == 1 and row.waves == 2  # 10 -> 5 requests a wave


def test_loader_refuses_test_data_and_corrupt_files(tmp_path):
    clock = Clock()
    sweep(tmp_path, FakeEngine(clock), clock, n_in=[8], n_out=[4])
    path = tmp_path / "grid.csv"
    with pytest.raises(R.DataError, match="not a real GPU measurement"):
        R.load_measured(path)
    path.write_text(path.read_text().replace(",10,", ",11,", 1))
    with pytest.raises(R.DataError, match="grid.csv.*sha256"):
        R.load_measured(path, allow_test_data=True)
    path.write_text("n_in,n_out\n1,2\n")
    with pytest.raises(R.DataError, match="columns"):
        R.load_measured(path, allow_test_data=True)
    R.sidecar_path(path).unlink()
    with pytest.raises(R.DataError, match="no provenance sidecar"):
        R.load_measured(path, allow_test_data=True)


def test_real_data_need_no_flag_and_test_flag_is_needed_for_cpu():
    with pytest.raises(RuntimeError, match="allow_test_data"):
        S.run_sweep("Llama-3.2-1B", output="unused.csv", device="cpu")


@pytest.mark.parametrize("kw, match", [({"n_in": [0]}, "n_in"), ({"n_out": []}, "empty"),
                                        ({"n_req": 0}, "n_req"), ({"mode": "fastest"}, "mode")])
def test_bad_parameters(tmp_path, kw, match):
    clock = Clock()
    with pytest.raises(ValueError, match=match):
        sweep(tmp_path, FakeEngine(clock), clock, **kw)


def test_balanced_batches():
    assert P.balanced_batch(1000, 1024) == (1000, 1)
    assert P.balanced_batch(1000, 400) == (334, 3)
    assert P.balanced_batch(1000, 500) == (500, 2)
    with pytest.raises(RuntimeError, match="fits"):
        P.balanced_batch(1000, 0)
    b, w = P.balanced_batch(999, 100)
    assert b * w >= 999 and b <= 100 and w == math.ceil(999 / 100)


def test_measurement_half_imports_without_the_analysis_packages():
    """A GPU machine may lack lmfit and the book's packages: `energybook sweep`/`measure` must still load."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'lmfit', 'asteval', 'uncertainties', 'jupyter_book', 'myst_nb', 'sphinx'}:\n"
        "            raise ImportError(f'blocked {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from energybook import cli\n"
        "sub = next(a for a in cli.build_parser()._actions if a.dest == 'command')\n"
        "assert {'sweep', 'measure'} <= set(sub.choices), sorted(sub.choices)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


class FlakyMeter(SimulatedMeter):
    """A simulated meter whose first ``bad`` readings are invalid windows."""

    def __init__(self, bad, **kw):
        super().__init__(**kw)
        self.bad = bad

    def reading(self, t0, t1, **kw):
        from energybook.measure.meter import MeterError

        if self.bad > 0:
            self.bad -= 1
            raise MeterError(t0, t1, ["NVML failed 3 times inside the window"], errors=3)
        return super().reading(t0, t1, **kw)


def test_an_invalid_meter_window_is_measured_again_then_refused(tmp_path):
    clock = Clock()
    res = sweep(tmp_path, FakeEngine(clock), clock, n_in=[8], n_out=[4],
                meter=FlakyMeter(1, power_w=200.0, clock=clock))
    assert res.measured == 1 and any("measured again" in line for line in res.log)
    with pytest.raises(RuntimeError, match="refused the window.*twice.*rerun the same command"):
        sweep(tmp_path / "b", FakeEngine(clock), clock, n_in=[8], n_out=[4],
              meter=FlakyMeter(10, power_w=200.0, clock=clock))
    assert R.ResultsFile(tmp_path / "b" / "grid.csv").rows() == []  # nothing invalid was recorded


def test_the_meter_reads_the_device_the_sweep_names(tmp_path, monkeypatch):
    """`--device cuda:1` reaches Meter.for_device, with the protocol's polling period and sampler."""
    from energybook.measure import meter as M

    seen = {}

    def for_device(device, **kw):
        seen.update(device=device, **kw)
        return SimulatedMeter()

    monkeypatch.setattr(M.Meter, "for_device", staticmethod(for_device))
    clock = Clock()
    S.run_sweep("fake-model", output=tmp_path / "grid.csv", workspace=tmp_path, engine=FakeEngine(clock),
                device="cuda:1", allow_test_data=True, n_in=[8], n_out=[4], n_req=2, progress=False, cooldown_s=0,
                min_window_s=0, meter_poll_s=0.005, meter_sampler="process")
    assert seen == {"device": "cuda:1", "poll_s": 0.005, "sampler": "process"}


class ReportingMeter(SimulatedMeter):
    """A simulated meter whose readings report a wrap, NVML errors and clock-event reasons."""

    def reading(self, t0, t1, **kw):
        import dataclasses

        return dataclasses.replace(super().reading(t0, t1, **kw), wraps=1, errors=0,
                                   throttle_reasons="sw_power_cap|hw_slowdown", ticks=12, samples=11)


def test_what_the_meter_saw_reaches_the_row(tmp_path):
    clock = Clock()
    sweep(tmp_path, FakeEngine(clock), clock, n_in=[8], n_out=[4, 16], meter=ReportingMeter(power_w=200.0, clock=clock))
    df = R.load_measured(tmp_path / "grid.csv", allow_test_data=True).data
    assert set(df["throttle_reasons"]) == {"sw_power_cap|hw_slowdown"}
    assert (df["meter_wraps"] == 1).all() and (df["meter_errors"] == 0).all()
    assert (df["ticks"] == 12).all() and (df["samples"] == 11).all()
    assert set(df["engine"]) == {SweepConfig.engine} and set(df["window_kind"]) == {"generation"}


def test_measuring_minutes_add_up_over_resumed_runs(tmp_path):
    """Each point's share of the sweep's wall time goes to the point log; the sidecar sums them over every run."""
    clock = Clock()
    sweep(tmp_path, FakeEngine(clock), clock, stop_after=2, cooldown_s=0.01)
    first = R.ResultsFile(tmp_path / "grid.csv").provenance()
    sweep(tmp_path, FakeEngine(clock), clock, cooldown_s=0.01)
    prov = R.ResultsFile(tmp_path / "grid.csv").provenance()
    shares = [p["measuring_s"] for p in prov["points"].values()]
    assert len(shares) == 6 and min(shares) > 0 and sum(shares) >= 2 * 0.01  # two groups, each cooled down
    assert prov["measuring_minutes"] == pytest.approx(sum(shares) / 60, abs=1e-3)
    assert prov["measuring_minutes"] > first["measuring_minutes"] > 0


def test_a_sweep_states_its_eta_before_it_starts(tmp_path, capsys):
    from energybook.measure import estimate
    from energybook.model import architecture as A

    clock = Clock()
    engine = FakeEngine(clock)
    engine.arch = A.load("Llama-3.2-1B")
    res = sweep(tmp_path, engine, clock, progress=True)
    eta_lines = [line for line in res.log if line.startswith("ETA")]
    assert len(eta_lines) == 1 and "6 points in" in eta_lines[0] and "minutes" in eta_lines[0]
    err = capsys.readouterr().err
    assert err.index("6 points in") < err.index("fake-model sweep")  # printed before the bar starts
    groups = P.plan(P.SweepConfig(n_in=[8, 64], n_out=[4, 16, 64]).points, engine.batch_limit, 10, 16, "prefix")
    e = estimate.eta(engine.arch, groups, P.SweepConfig(n_in=[8, 64], n_out=[4, 16, 64], n_req=10, max_batch=16))
    assert e.points == 6 and e.low_s == pytest.approx(estimate.ETA_FACTOR[0] * e.roofline_s) and e.high_s > e.low_s
