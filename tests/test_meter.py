"""The NVML meter against a fake NVML (pynvml patched with autospec): wrap-around, missing counter,
short windows, no NVML."""

import time
from unittest import mock

import pynvml
import pytest

from energybook.measure import meter as M


def fake_nvml(counter=None, power_mw=300_000, counter_supported=True):
    fake = mock.create_autospec(pynvml, instance=False)
    fake.NVMLError = pynvml.NVMLError
    fake.NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    fake.NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    fake.NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    fake.nvmlDeviceGetName.return_value = "Fake GPU"
    fake.nvmlDeviceGetUUID.return_value = "GPU-fake"
    fake.nvmlSystemGetDriverVersion.return_value = "0.0"
    fake.nvmlDeviceGetEnforcedPowerLimit.return_value = 700_000
    fake.nvmlDeviceGetPowerUsage.return_value = power_mw
    fake.nvmlDeviceGetTemperature.return_value = 40
    fake.nvmlDeviceGetClockInfo.return_value = 1980
    if not counter_supported:
        fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    elif counter is not None:
        fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = counter
    return fake


def make_meter(fake, **kw):
    with mock.patch.object(M, "_pynvml", return_value=fake):
        return M.Meter(**kw)


def test_wraparound_is_unwrapped():
    values = iter([2**64 - 3000, 2**64 - 1000, 1000, 3000])
    m = make_meter(fake_nvml(counter=lambda h: next(values)))  # first value read by the constructor's probe
    got = [m._read_counter() for _ in range(3)]
    assert [b - a for a, b in zip(got, got[1:])] == [2000, 2000]
    assert m.wraps == 1
    m._tl.tick_t, m._tl.tick_mj = [0.0, 0.1, 0.2], got
    assert m.counter_energy_j(0.0, 0.2)[0] == pytest.approx(4.0)  # joules, exact across the wrap


def test_missing_counter_falls_back_to_power_integration():
    m = make_meter(fake_nvml(counter_supported=False))
    assert not m.has_counter and m.method == "power100"
    m._tl.power_t = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    m._tl.power_w = [100.0, 100.0, 300.0, 300.0, 300.0, 300.0]
    r = m.reading(0.0, 0.5, wait=False)
    assert r.method == "power100"
    assert r.energy_j == pytest.approx(10 + 20 + 30 + 30 + 30)  # trapezoids of 0.1 s
    # the study's method keeps every 5th sample: 0.0 and 0.5 -> one trapezoid
    assert r.energy_j_power500 == pytest.approx(0.5 * (100 + 300) / 2)


def test_short_window_interpolates_between_counter_ticks():
    m = make_meter(fake_nvml())
    # ticks every 100 ms of a steady 500 W: E(t) = 500 t joules
    m._tl.tick_t = [0.1 * k for k in range(10)]
    m._tl.tick_mj = [500_000 * 0.1 * k for k in range(10)]
    e, ticks = m.counter_energy_j(0.23, 0.51)  # shorter than three counter updates
    assert e == pytest.approx(500 * 0.28)
    assert ticks == 3  # 0.3, 0.4, 0.5


def test_window_end_at_idle_uses_the_slope_before():
    m = make_meter(fake_nvml())
    # 600 W until t=0.45, then 100 W: the tick interval [0.4, 0.5] mixes both
    ts = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]

    def energy(t):
        return 600 * min(t, 0.45) + 100 * max(0.0, t - 0.45)

    m._tl.tick_t, m._tl.tick_mj = ts, [1000 * energy(t) for t in ts]
    exact = energy(0.45) - energy(0.05)
    interp, _ = m.counter_energy_j(0.05, 0.45)
    before, _ = m.counter_energy_j(0.05, 0.45, end="before")
    assert before == pytest.approx(exact)
    assert abs(interp - exact) > 1.0  # plain interpolation is off by joules at a busy->idle edge


def test_background_thread_measures_a_steady_load():
    start = time.perf_counter()
    fake = fake_nvml(counter=lambda h: int((time.perf_counter() - start) * 300_000) // 30_000 * 30_000)
    m = make_meter(fake, poll_s=0.001, power_period_s=0.02)
    with m:
        t0 = m.now()
        time.sleep(0.4)
        t1 = m.now()
        r = m.reading(t0, t1)
    assert r.energy_j == pytest.approx(300 * (t1 - t0), rel=0.05)
    assert r.energy_j_power100 == pytest.approx(300 * (t1 - t0), rel=0.01)
    assert r.ticks >= 3
    assert m.state(t0, t1).sm_clock_mhz == 1980


def test_no_nvml_gives_a_clear_error():
    fake = fake_nvml()
    fake.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(M.MeterUnavailable, match="NVIDIA GPU"):
        make_meter(fake)


def test_empty_window_is_rejected():
    m = make_meter(fake_nvml())
    with pytest.raises(ValueError, match="empty window"):
        m.reading(1.0, 1.0, wait=False)


def test_cli_without_gpu_prints_an_error_not_a_traceback(capsys):
    from energybook import cli

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli.main(["sweep", "--model", "Llama-3.2-1B"]) == 2
    assert "energybook: error:" in capsys.readouterr().err
