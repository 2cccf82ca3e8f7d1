"""The meter's pure Timeline: counter wraps and resets, interpolation, the physics bounds of a window, throttle
reasons. No NVML, no threads: readings are fed by hand."""

import pytest

from energybook.measure.timeline import (
    CEILING_FACTOR,
    FLOOR_FRACTION,
    WRAP_MJ,
    MeterError,
    Timeline,
)


def steady(watts=300.0, seconds=3.0, period_s=0.1, base_mj=5 * 10**9, **settings) -> Timeline:
    """A timeline of a steady load: counter ticks and power samples every ``period_s``, state every second."""
    settings.setdefault("power_cap_w", 700.0)
    tl = Timeline(**settings)
    n = round(seconds / period_s)
    for k in range(n + 1):
        t = k * period_s
        tl.add("tick", t, base_mj + round(watts * 1000 * t))
        tl.add("power", t, watts)
    for k in range(int(seconds) + 1):
        tl.add("state", float(k), 40.0, 1980.0, 0)
    return tl


def test_a_steady_window_reads_its_energy_and_power():
    r = steady().reading(0.55, 2.05)
    assert r.energy_j == pytest.approx(300 * 1.5) and r.power_w == pytest.approx(300)
    assert r.energy_j_power100 == pytest.approx(450) and r.method == "counter" and r.throttle_reasons == ""


def test_a_true_wrap_is_unwrapped():
    tl = Timeline()
    raws = [WRAP_MJ - 60_000, WRAP_MJ - 30_000, 0, 30_000, 60_000]
    for k, raw in enumerate(raws):
        tl.add_tick(0.1 * k, raw)
    assert tl.wraps == 1 and not tl.resets
    assert tl.counter_energy_j(0.0, 0.4)[0] == pytest.approx(120.0)


def test_a_single_bogus_read_near_2_64_is_a_reset_not_a_wrap():
    tl = Timeline()
    for k, raw in enumerate([5 * 10**9, 5 * 10**9 + 30_000, WRAP_MJ - 1, 5 * 10**9 + 90_000, 5 * 10**9 + 120_000]):
        tl.add_tick(0.1 * k, raw)
    assert tl.wraps == 0 and len(tl.resets) == 1
    with pytest.raises(MeterError, match="decreased.*bad read"):
        tl.counter_energy_j(0.05, 0.35)
    assert tl.counter_energy_j(0.31, 0.4)[0] == pytest.approx(27.0)  # after it, windows read right


def test_the_jump_back_after_zero_reads_is_refused_by_physics():
    tl = steady(seconds=1.0)
    tl.add("tick", 1.05, 0)  # 0.2 s of zero reads: one tick (the value does not change)
    for k in range(3, 9):
        t = 1.0 + 0.1 * k
        tl.add("tick", t, 5 * 10**9 + round(300_000 * t))
        tl.add("power", t, 300.0)
    with pytest.raises(MeterError, match="power cap"):
        tl.reading(1.1, 1.55)  # true: 135 J; the counter's jump back says 5e6 J
    assert tl.reading(1.35, 1.75).energy_j == pytest.approx(120.0)


def test_a_jump_is_refused_by_the_power_timeline_when_the_cap_is_unknown():
    tl = steady(power_cap_w=float("nan"))
    tl.tick_mj = [e + (10**7 if t >= 1.0 else 0) for t, e in zip(tl.tick_t, tl.tick_mj)]  # +10 kJ at 1.0 s
    with pytest.raises(MeterError, match="disagrees with the power timeline"):
        tl.reading(0.55, 1.55)


def test_a_stalled_counter_is_below_the_idle_floor():
    tl = steady(seconds=1.0)
    for k in range(11, 30):  # the counter creeps by 1 mJ a tick while the GPU draws 300 W
        t = 0.1 * k
        tl.add("tick", t, tl.tick_mj[-1] + 1)
        tl.add("power", t, 300.0)
    with pytest.raises(MeterError, match="below 70% of the idle power"):
        tl.reading(1.05, 2.85)


def test_the_bounds_have_one_update_period_of_slack():
    tl = steady(watts=700.0 * CEILING_FACTOR)
    assert tl.reading(0.5, 0.505).energy_j == pytest.approx(875 * 0.005)  # a short prefill at the ceiling
    idle = steady(watts=100.0)
    idle.power_w = [200.0] * len(idle.power_w)  # the counter draws half the lowest power sample
    assert idle.reading(0.5, 0.55).energy_j == pytest.approx(5.0)  # shorter than the slack: no floor
    with pytest.raises(MeterError, match=f"below {FLOOR_FRACTION:.0%}"):
        idle.reading(0.5, 1.5)


def test_power_fallback_is_checked_too():
    tl = Timeline(has_counter=False, power_cap_w=700.0)
    for k in range(11):
        tl.add("power", 0.1 * k, 4_294_967.0 if k == 5 else 300.0)  # 0xFFFFFFFF mW
    with pytest.raises(MeterError, match="power cap"):
        tl.reading(0.0, 1.0)


@pytest.mark.parametrize("window, want", [((0.5, 1.3), "unknown"),  # shorter than the 1 s state period
                                          ((1.2, 2.8), "sw_power_cap"),
                                          ((0.0, 2.5), "unknown")])  # a sample inside could not be read
def test_throttle_reasons_are_unknown_where_the_sampling_cannot_see(window, want):
    tl = steady(reason_bits=[(4, "sw_power_cap")])
    tl.reasons = [(0.0, None), (1.0, 0), (2.0, 4), (3.0, 0)]
    assert tl.reading(*window).throttle_reasons == want


def test_throttle_reasons_without_a_sample_inside_the_window_are_unknown():
    tl = steady(seconds=6.0)
    tl.reasons = [(0.0, 0), (1.0, 0), (5.0, 0)]  # the state sampler stalled from 1 s to 5 s
    assert tl.reading(1.5, 4.5).throttle_reasons == "unknown"


def test_snapshot_does_not_follow_the_recording():
    tl = steady()
    snap = tl.snapshot()
    tl.add("power", 9.0, 1.0)
    assert len(snap.power_t) == len(tl.power_t) - 1
