"""The sweep protocol is checked before anything runs: each bad input is refused with a message naming it."""

import math
import subprocess
import sys

import pytest

from energybook.measure import protocol as P
from energybook.measure.protocol import MAX_REPEATS, SweepConfig
from energybook.model.complexity import GRID


@pytest.mark.parametrize("kw, match", [
    ({"min_window_s": math.nan}, "min_window_s must be finite"),
    ({"min_window_s": math.inf}, "min_window_s must be finite"),
    ({"min_window_s": -1.0}, "min_window_s must be at least 0"),
    ({"cooldown_s": -5}, "cooldown_s must be at least 0"),
    ({"cooldown_s": math.inf}, "cooldown_s must be finite"),
    ({"meter_poll_s": 0}, "meter_poll_s must be at least"),
    ({"meter_poll_s": -0.1}, "meter_poll_s"),
    ({"repeats": 1_000_000_000}, f"repeats must be at most {MAX_REPEATS}"),
    ({"repeats": 0}, "repeats must be a positive integer"),
    ({"n_in": [0]}, "n_in must be a positive integer"),
    ({"n_in": [8.5]}, "n_in must be a positive integer"),
    ({"n_out": []}, "n_out grid is empty"),
    ({"n_in": 64}, "n_in must be a list"),
    ({"n_req": 0}, "n_req"),
    ({"max_batch": True}, "max_batch"),
    ({"mode": "fastest"}, "mode must be one of"),
    ({"seed": -1}, "seed"),
    ({"warmup_steps": -3}, "warmup_steps"),
    ({"min_window_s": "1"}, "min_window_s must be a number"),
])
def test_bad_values_are_refused_when_the_config_is_made(kw, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig(**kw)


def test_grid_values_are_deduplicated_and_sorted():
    cfg = SweepConfig(n_in=[8, 8, 4], n_out=[16, 2, 16])
    assert cfg.n_in == (4, 8) and cfg.n_out == (2, 16)
    assert len(cfg.points) == 4  # `--n-in 8 8` no longer measures a point twice and crashes


def test_defaults_are_the_studys_protocol():
    cfg = SweepConfig()
    assert cfg.n_in == cfg.n_out == GRID and cfg.n_req == 1000 and cfg.max_batch == 1024


def test_frozen_and_round_trips_through_its_record():
    cfg = SweepConfig(n_in=[64], n_out=[64, 128], note="short")
    with pytest.raises(AttributeError):
        cfg.n_req = 5  # type: ignore[misc]
    rec = cfg.to_record()
    assert rec["n_in"] == [64] and rec["prefix_checkpoints"] is True
    assert SweepConfig.from_record(rec) == cfg
    with pytest.raises(ValueError, match="repeats"):
        cfg.replace(repeats=0)


@pytest.mark.parametrize("args, match", [
    (["--min-window", "nan"], "min_window_s must be finite"),
    (["--min-window", "inf"], "min_window_s must be finite"),
    (["--repeats", "1000000000"], "repeats must be at most"),
    (["--cooldown", "-5"], "cooldown_s must be at least 0"),
    (["--meter-poll", "0"], "meter_poll_s must be at least"),
])
def test_the_cli_refuses_bad_values_before_measuring(args, match):
    """Each of these used to hang, fill memory or crash after the first point was measured."""
    proc = subprocess.run([sys.executable, "-m", "energybook.cli", "sweep", "--model", "Llama-3.2-1B",
                           "--device", "cpu", "--allow-test-data", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line


def test_explicit_pairs_replace_the_grid_and_resume_from_their_record():
    c = P.SweepConfig(pairs=[(96, 300), (1500, 700), (96, 300)])
    assert c.pairs == ((96, 300), (1500, 700)) and c.n_in == (96, 1500) and c.n_out == (300, 700)
    assert [p.key for p in c.points] == [(96, 300, 0), (1500, 700, 0)]
    assert P.SweepConfig.from_record(c.to_record()) == c and "pairs" not in P.SweepConfig().to_record()
    with pytest.raises(ValueError, match="n_in"):
        P.SweepConfig(pairs=[(0, 5)])
    with pytest.raises(ValueError, match="pairs"):
        P.SweepConfig(pairs=[(1, 2, 3)])


def test_offgrid_points_are_seeded_off_the_powers_of_two():
    pts = P.offgrid_points()
    assert pts == P.offgrid_points() and len(set(pts)) == 12
    assert all(64 <= v <= 4096 and v & (v - 1) for p in pts for v in p)
    assert P.offgrid_points(seed=1) != pts
    with pytest.raises(ValueError, match="could not draw"):
        P.offgrid_points(n=5, low=64, high=65)


# -- ranges (issue 21, item 9): every number in a documented range, checked before anything runs -------------------


@pytest.mark.parametrize("kw, match", [
    ({"n_req": 10**15}, r"n_req must be at most 10000000"),
    ({"n_req": 10**11}, r"n_req must be at most"),
    ({"max_batch": 10**12}, r"max_batch must be at most"),
    ({"n_in": [2**40]}, r"n_in must be at most 1048576"),
    ({"n_out": [64, 10**9]}, r"n_out must be at most 1048576"),
    ({"n_in": [2**20], "n_out": [2**20]}, r"n_in \+ n_out must be at most 1048576"),
    ({"pairs": [(2**20, 64)]}, r"n_in \+ n_out must be at most"),
    ({"seed": 2**64}, r"seed must be at most"),
    ({"warmup_steps": 10**9}, r"warmup_steps must be at most"),
])
def test_huge_values_are_refused_with_their_range(kw, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig(**kw)


def test_the_ranges_admit_the_study_and_its_edges():
    c = SweepConfig(n_in=[1, P.MAX_CONTEXT // 2], n_out=[1, P.MAX_CONTEXT // 2], n_req=P.MAX_N_REQ,
                    max_batch=P.MAX_BATCH, seed=2**63 - 1)
    assert c.n_req == P.MAX_N_REQ and len(c.points) == 4


def test_pairs_and_another_grid_are_refused():
    with pytest.raises(ValueError, match="pairs.*n_in"):
        SweepConfig(pairs=[(96, 300)], n_in=[64])
    with pytest.raises(ValueError, match="pairs.*n_out"):
        SweepConfig(pairs=[(96, 300)], n_out=[64, 128])
    c = SweepConfig(pairs=[(96, 300)])
    assert c.replace(n_req=5).pairs == ((96, 300),)  # its own lengths are consistent


@pytest.mark.parametrize("kw", [{"note": "two\nlines"}, {"engine": "torch\x00"}, {"note": "tab\there"}])
def test_control_characters_in_recorded_text_are_refused(kw):
    with pytest.raises(ValueError, match="control character"):
        SweepConfig(**kw)
