"""Nothing absurd is ever recorded (issue #21, item 9): the recovery of a file's tail accepts one row of the
protocol at most, the store refuses impossible values and control characters, and a lock that cannot be written
is released."""

from __future__ import annotations

import errno
import json
import os

import pytest

from energybook.store import results as R
from tests.test_store import PROV, _line, make, prov_of, rebless, row, set_cell

#: A protocol the tail's rows are checked against: n_in 16 .. 64, n_out 8, one rep.
GRID = dict(PROV, protocol={"n_req": 10, "mode": "prefix", "n_in": [16, 32, 48, 64], "n_out": [8], "repeats": 1})


def _grid(tmp_path, n=3):
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(GRID)
        for i in range(n):
            rf.append(row(16 * (i + 1)), {"gpu_uuid": "GPU-1"})
    return path


# -- the recovery of the file's tail ------------------------------------------------------------------------


def test_recovery_refuses_more_than_one_row_after_the_recorded_state(tmp_path):
    path = make(tmp_path, 1)
    with path.open("a") as fh:
        fh.write(_line(row(99)) + _line(row(98)))
    before = path.read_bytes(), R.sidecar_path(path).read_bytes()
    with pytest.raises(R.DataError, match=r"2 rows after the state its sidecar records.*at most one") as exc:
        R.ResultsFile(path).start(PROV)
    assert "\n" not in str(exc.value) and "git restore" in str(exc.value)
    assert (path.read_bytes(), R.sidecar_path(path).read_bytes()) == before


def test_recovery_refuses_a_row_outside_the_protocol(tmp_path):
    path = _grid(tmp_path)
    with path.open("a") as fh:
        fh.write(_line(row(99)))  # n_in 99 is not in the protocol
    with pytest.raises(R.DataError, match=r"99x8#0 is not a point of its protocol") as exc:
        R.ResultsFile(path).start(GRID)
    assert "never re-blessed" in str(exc.value)
    assert prov_of(path)["rows"] == 3


def test_recovery_refuses_a_row_of_another_board_or_older_than_the_run(tmp_path):
    path = _grid(tmp_path, 2)
    prov = prov_of(path)
    R.sidecar_path(path).write_text(json.dumps(dict(prov, gpu_uuid="GPU-2", runs=prov["runs"] + [
        {"started_at": "2026-01-01T00:00:00Z", "command": "x", "gpu_uuid": "GPU-2", "host": "box"}])))
    with path.open("a") as fh:  # a row of GPU-1, which the sidecar lists, but not the last run's board
        fh.write(_line(row(48)))
    with pytest.raises(R.DataError, match=r"48x8#0 .*GPU-1.*last run"):
        R.ResultsFile(path).start(dict(GRID, gpu_uuid="GPU-2"))
    path2 = _grid(tmp_path / "b", 2)
    with path2.open("a") as fh:  # finished before the last run started
        fh.write(_line(row(48, finished_at="2025-12-31T00:00:00Z")))
    with pytest.raises(R.DataError, match=r"48x8#0 finished .* before"):
        R.ResultsFile(path2).start(GRID)


def test_one_row_of_the_protocol_is_still_recovered(tmp_path):
    path = _grid(tmp_path)
    with path.open("a") as fh:
        fh.write(_line(row(64)))
    with R.ResultsFile(path) as rf:
        rf.start(GRID)
        assert (64, 8, 0) in rf.done()
    assert prov_of(path)["points"]["64x8#0"]["recovered"]


# -- impossible values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [({"energy_j": float("nan")}, "energy_j=: a value is required"),
                                        ({"energy_j": 0.0}, "energy_j=0.0: must be positive"),
                                        ({"energy_j": -5.0}, "energy_j=-5.0: must be positive"),
                                        ({"duration_s": 0.0}, "duration_s=0.0: must be positive"),
                                        ({"duration_s": float("nan")}, "duration_s=: a value is required"),
                                        ({"power_w": -1.0}, "power_w=-1.0: must not be negative"),
                                        ({"tokens_per_j": -1.0}, "tokens_per_j=-1.0: must not be negative"),
                                        ({"tokens_out": -3}, "tokens_out=-3: not a non-negative integer")])
def test_the_store_refuses_impossible_values(tmp_path, bad, match):
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        with pytest.raises(ValueError, match=match) as exc:
            rf.append(row(16, **bad))
    assert "\n" not in str(exc.value)
    assert prov_of(path)["rows"] == 0 and len(path.read_text().splitlines()) == 1


@pytest.mark.parametrize("column, value", [("energy_j", "0"), ("energy_j", "-1.5"), ("duration_s", "0.0"),
                                           ("power_w", "-3"), ("energy_j", "")])
def test_the_loader_refuses_impossible_values(tmp_path, column, value):
    path = make(tmp_path)
    set_cell(path, 3, column, value)
    rebless(path)
    with pytest.raises(R.DataError, match=rf"grid.csv:3 {column}={value}: "):
        R.load_measured(path, allow_test_data=True)


# -- control characters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["org/m\nx", "m\r", "m\x00", "m\tx"])
def test_a_control_character_in_the_model_name_is_refused_before_anything_is_written(tmp_path, name):
    path = tmp_path / "grid.csv"
    with pytest.raises(ValueError, match=r"model .* control character.*name it without") as exc:
        R.ResultsFile(path).start(dict(PROV, model=name))
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_control_character_in_a_row_is_refused(tmp_path):
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        with pytest.raises(ValueError, match=r"engine=.*control character"):
            rf.append(row(16, engine="torch\nx"))
        rf.append(row(32))
    assert len(R.load_measured(path, allow_test_data=True).data) == 1


# -- the lock ----------------------------------------------------------------------------------------------


def test_a_lock_that_cannot_be_written_is_released(tmp_path, monkeypatch):
    path = tmp_path / "grid.csv"
    real = os.pwrite

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    def fds():
        return [f for f in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{f}").endswith(".lock")]

    before = fds()
    monkeypatch.setattr(os, "pwrite", full)
    rf = R.ResultsFile(path)
    with pytest.raises(R.DataError, match=r"cannot write the lock file .*No space left on device.*free space") as exc:
        rf.start(PROV)
    assert "\n" not in str(exc.value) and not rf.locked
    monkeypatch.setattr(os, "pwrite", real)
    assert fds() == before  # the handle is closed
    with R.ResultsFile(path) as again:  # and the lock is free
        again.start(PROV)


# -- a merge is written at once ------------------------------------------------------------------------------


@pytest.mark.parametrize("killed_at", [2, 3])
def test_a_merge_killed_while_writing_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch, killed_at):
    path = make(tmp_path, 1)
    part = tmp_path / "grid.part-1.csv"
    with R.ResultsFile(part) as rf:
        rf.start(PROV)
        rf.append(row(32), {"gpu_uuid": "GPU-1"})
        rf.append(row(48), {"gpu_uuid": "GPU-1"})
    before = path.read_bytes()
    real, calls = os.replace, []

    def replace(src, dst):  # 1: the pending sidecar, 2: the CSV, 3: the pending sidecar installed
        calls.append(dst)
        if len(calls) == killed_at:
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        R.absorb(path, [part])
    monkeypatch.setattr(os, "replace", real)
    if killed_at == 3:
        with pytest.raises(R.DataError, match="a merge of part files was interrupted: rerun the sweep's command"):
            R.load_measured(path, allow_test_data=True)
    done = R.absorb(path, [part])  # the next merge finishes (or redoes) it
    assert (done.merged, done.already) == ((2, 0) if killed_at == 2 else (0, 2))
    run = R.load_measured(path, allow_test_data=True)
    assert len(run.data) == 3 and path.read_bytes().startswith(before) and not part.exists()
    assert not list(tmp_path.glob(".*pending"))


def test_a_window_of_zero_joules_is_refused_by_the_store_not_divided_by(tmp_path):
    """make_row used to raise ZeroDivisionError at 0 J; the row now reaches the store, which refuses it by name."""
    from energybook.measure import runner
    from energybook.measure.meter import SimulatedMeter

    reading = SimulatedMeter(power_w=0.0).reading(0.0, 1.0)
    bad = runner.make_row("m", 8, 4, 10, 0, "prefix", reading, {"gpu": "simulated", "gpu_uuid": "GPU-0"},
                          engine="torch", batch=10, waves=1)
    assert bad.energy_j == 0.0
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(dict(PROV, gpu="simulated", gpu_uuid="GPU-0", model="m"))
        with pytest.raises(ValueError, match="energy_j=0.0: must be positive"):
            rf.append(bad, {"gpu_uuid": "GPU-0", "measuring_s": 1.0})


def test_a_file_never_takes_a_second_gpu_and_the_default_path_names_the_new_one(tmp_path):
    """One GPU per file: resuming a file on another board (same GPU model, other UUID) is refused by name, and
    gpu_file gives that board its own file beside the first, which then resumes on that board."""
    path = make(tmp_path, n=2, name="sampled.csv")
    other = dict(PROV, gpu_uuid="GPU-abcdef12-3456")
    with pytest.raises(R.DataError, match=r"holds measurements of GPU-1, and this run is on GPU-abcdef12-3456: "
                                          r"a file holds one GPU.*sampled-abcdef12\.csv"):
        R.ResultsFile(path).start(other)
    assert R.gpu_file(path, "GPU-1") == path  # the same board resumes its own file
    board = R.gpu_file(path, "GPU-abcdef12-3456")
    assert board == tmp_path / "sampled-abcdef12.csv" and R.gpu_file(tmp_path / "new.csv", "GPU-9").name == "new.csv"
    with R.ResultsFile(board) as rf:
        rf.start(other)
        rf.append(row(16, gpu_uuid="GPU-abcdef12-3456"), {"gpu_uuid": "GPU-abcdef12-3456"})
    assert R.gpu_file(board, "GPU-abcdef12-3456") == board
    assert R.file_gpus(prov_of(board)) == ["GPU-abcdef12-3456"] and R.file_gpus(prov_of(path)) == ["GPU-1"]


def test_annotate_records_facts_without_touching_rows_or_bookkeeping(tmp_path):
    path = make(tmp_path, n=2)
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        rf.annotate(sample_plan={"per_octave": 2})
        with pytest.raises(ValueError, match="cannot change \\['rows'\\]"):
            rf.annotate(rows=99)
        rf.append(row(64), {"gpu_uuid": "GPU-1"})
    prov = prov_of(path)
    assert prov["sample_plan"] == {"per_octave": 2} and prov["rows"] == 3
    assert len(R.load_measured(path, allow_test_data=True).data) == 3  # checksum still right
    with pytest.raises(RuntimeError, match="call start"):
        R.ResultsFile(path).annotate(x=1)
