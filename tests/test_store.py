"""energybook.store.results: the writer's lock, atomic appends, recovery of an interrupted append, refusal of
changed files, the loader's checks, and the committed data loading unchanged."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from energybook.store import results as R
from energybook.store import writer as W

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "data" / "measured"
PROV = {"model": "m", "gpu": "GPU X", "gpu_uuid": "GPU-1", "host": "box", "test_data": True, "device": "cpu",
        "meter_method": "simulated", "protocol": {"n_req": 10, "mode": "prefix"}, "command": "energybook sweep",
        "started_at": "2026-01-01T00:00:00Z"}


def row(n_in: int, n_out: int = 8, rep: int = 0, **kw) -> R.Row:
    e = 100.0 + n_in + n_out
    fields = dict(model="m", n_in=n_in, n_out=n_out, n_req=10, batch=10, waves=1, measured_waves=1, rep=rep,
                  mode="prefix", energy_j=e, energy_j_power500=e * 1.01, energy_j_power100=e * 0.99, duration_s=1.5,
                  tokens_in=10 * n_in, tokens_out=10 * n_out, j_per_token=e / (10 * n_out),
                  tokens_per_j=10 * n_out / e, power_w=e / 1.5, gpu="GPU X", started_at="2026-01-01T00:00:00Z",
                  finished_at="2026-01-01T00:00:01Z", gpu_uuid="GPU-1", engine="torch", tokens_match=True,
                  meter_method="counter")
    fields.update(kw)
    return R.Row(**fields)


def make(tmp_path: Path, n: int = 3, name: str = "grid.csv") -> Path:
    path = tmp_path / name
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        for i in range(n):
            rf.append(row(16 * (i + 1)), {"gpu_uuid": "GPU-1"})
    return path


def prov_of(path: Path) -> dict:
    return json.loads(R.sidecar_path(path).read_text())


def rebless(path: Path, **changes) -> None:
    """Make the sidecar agree with the CSV's bytes (what a buggy tool would do): the loader's other checks
    must still catch what is wrong inside."""
    prov = prov_of(path)
    data = path.read_bytes()
    prov.update(sha256=R.sha256_file(path), size=len(data), rows=data.count(b"\n") - 1)
    prov.update(changes)
    R.sidecar_path(path).write_text(json.dumps(prov))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def set_cell(path: Path, line: int, column: str, value: str) -> None:
    text = lines(path)
    cells = text[line - 1].split(",")
    cells[R.COLUMNS.index(column)] = value
    text[line - 1] = ",".join(cells)
    path.write_text("\n".join(text) + "\n")


# -- the committed data ---------------------------------------------------------------------------------------

COMMITTED = {"Llama-3.2-1B/grid.csv": 49, "Llama-3.2-1B/full-64x256.csv": 3, "Llama-3.2-1B/full-512x128.csv": 3,
             "Llama-3.2-1B/full-2048x64.csv": 3, "OPT-1.3B/grid.csv": 49, "OPT-1.3B/full-1024x256.csv": 3,
             "OPT-1.3B/full-4096x64.csv": 3, "Qwen2-1.5B/grid.csv": 49}


def test_every_committed_file_loads_with_its_row_count():
    files = sorted(MEASURED.rglob("*.csv"))
    assert len(files) >= len(COMMITTED)
    for f in files:
        run = R.load_measured(f)
        prov = run.provenance
        assert len(run.data) == prov["rows"] == len(prov["points"]), f
        assert list(run.data.columns) == R.COLUMNS
        rel = f.relative_to(MEASURED / "nvidia-h100-80gb-hbm3" / "hf").as_posix()
        if rel in COMMITTED:
            assert len(run.data) == COMMITTED[rel], rel
    assert set(COMMITTED) <= {f.relative_to(MEASURED / "nvidia-h100-80gb-hbm3" / "hf").as_posix() for f in files}
    assert len(R.load_measured(MEASURED)) == sum(len(R.load_measured(f).data) for f in files)


# -- 1. the lock ----------------------------------------------------------------------------------------------

def test_a_second_writer_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "grid.csv"
    first = R.ResultsFile(path)
    first.start(PROV)
    assert first.locked and R.lock_path(path).exists() and R.lock_path(path).name == ".grid.csv.lock"
    second = R.ResultsFile(path)
    with pytest.raises(R.LockedError, match=r"grid.csv is being written by another sweep \(pid \d+ on ") as exc:
        second.start(PROV)
    msg = str(exc.value)
    assert "wait for it to finish, or if no sweep is running" in msg and "harmless" in msg and "this process" in msg
    assert isinstance(exc.value, R.DataError) and not second.locked
    first.append(row(16))  # the holder goes on
    first.close()
    assert not R.lock_path(path).exists()
    with R.ResultsFile(path) as again:  # after close() another writer can start
        again.start(PROV)
        assert again.done() == {(16, 8, 0)}
        again.append(row(32))
    assert len(R.load_measured(path, allow_test_data=True).data) == 2


def test_append_without_the_lock_raises(tmp_path):
    path = make(tmp_path, 1)
    rf = R.ResultsFile(path)
    with pytest.raises(RuntimeError, match="without its lock: call start"):
        rf.append(row(99))
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
    with pytest.raises(RuntimeError, match="without its lock"):  # closed
        rf.append(row(99))
    assert len(lines(path)) == 2


_HOLD = """
import sys
from energybook.store import results as R
rf = R.ResultsFile(sys.argv[1])
rf.start({"model": "m", "gpu": "GPU X", "test_data": True})
print("locked", flush=True)
sys.stdin.readline()
rf.close()
"""

_KILLED = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from energybook.store import results as R
from tests.test_store import PROV, row
rf = R.ResultsFile(sys.argv[1])
rf.start(PROV)
rf.append(row(16))
os.kill(os.getpid(), signal.SIGKILL)
"""


def _python(code: str, *args, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, cwd=ROOT, text=True, **kw)


def test_a_writer_in_another_process_is_named(tmp_path):
    path = tmp_path / "grid.csv"
    proc = _python(_HOLD, path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(R.LockedError, match=rf"pid {proc.pid} on .*, since \d{{4}}-") as exc:
            R.ResultsFile(path).start(PROV)
        assert "this process" not in str(exc.value)
    finally:
        proc.stdin.close()
        assert proc.wait(60) == 0
    with R.ResultsFile(path) as rf:
        rf.start(PROV)


def test_a_killed_writer_leaves_a_harmless_lock_file(tmp_path):
    path = tmp_path / "grid.csv"
    proc = _python(_KILLED, path, ROOT)
    assert proc.wait(60) == -9
    assert R.lock_path(path).exists()  # left behind by the kill, but no longer locked
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        assert rf.done() == {(16, 8, 0)}
        rf.append(row(32))
    assert len(R.load_measured(path, allow_test_data=True).data) == 2


def _writer(path: str, offset: int, barriers, queue) -> None:
    """Start a sweep on ``path`` at the same moment as another process; the winner appends 200 rows (the loser
    tries again half-way), the loser reports its refusals."""
    b_start, b_middle, b_end = barriers
    rf = R.ResultsFile(path)
    b_start.wait(120)
    try:
        rf.start(PROV)
    except R.LockedError as exc:
        queue.put(("refused", offset, str(exc)))
        b_middle.wait(120)
        try:
            R.ResultsFile(path).start(PROV)
            queue.put(("started late", offset, ""))
        except R.LockedError as exc2:
            queue.put(("refused mid-sweep", offset, str(exc2)))
        b_end.wait(120)
        return
    for i in range(200):
        rf.append(row(offset + i + 1), {"gpu_uuid": "GPU-1"})
        if i == 99:
            b_middle.wait(120)
            b_end.wait(120)
    rf.close()
    queue.put(("wrote", offset, ""))


def test_two_processes_appending_200_rows_each_one_is_refused_and_no_row_is_lost(tmp_path):
    path = tmp_path / "grid.csv"
    ctx = multiprocessing.get_context("spawn")
    barriers = tuple(ctx.Barrier(2) for _ in range(3))
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), offset, barriers, queue)) for offset in (0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    events = sorted(queue.get(timeout=10)[:2] for _ in range(3))
    kinds = [e[0] for e in events]
    assert sorted(kinds) == ["refused", "refused mid-sweep", "wrote"], events
    winner = next(o for k, o in events if k == "wrote")
    loser = 1000 - winner
    run = R.load_measured(path, allow_test_data=True)
    assert len(run.data) == run.provenance["rows"] == len(run.provenance["points"]) == 200
    assert set(run.data["n_in"]) == set(range(winner + 1, winner + 201))
    with R.ResultsFile(path) as rf:  # the lock is gone with its writer: the loser's rows go in now
        rf.start(PROV)
        for i in range(200):
            rf.append(row(loser + i + 1))
    run = R.load_measured(path, allow_test_data=True)
    assert len(run.data) == run.provenance["rows"] == 400


# -- 2. atomic, whole-line appends and the sidecar --------------------------------------------------------

def test_append_writes_whole_lines_and_records_checksum_size_rows_and_points(tmp_path):
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        rf.append(row(16), {"gpu_uuid": "GPU-1", "command": "x"})
        rf.append(row(32).to_dict())  # a dict as well as a Row
        data = path.read_bytes()
        prov = prov_of(path)
        assert data.endswith(b"\n") and data.count(b"\n") == 3
        assert prov["sha256"] == R.sha256_file(path) and prov["size"] == len(data) and prov["rows"] == 2
        assert prov["schema"] == R.SCHEMA
        assert prov["points"]["16x8#0"] == {"started_at": "2026-01-01T00:00:00Z",
                                            "finished_at": "2026-01-01T00:00:01Z", "gpu_uuid": "GPU-1",
                                            "command": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.csv", "grid.json"]  # no temp or lock file left


def test_numpy_values_are_written_as_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        rf.append(row(16, energy_j=np.float64(123.5), ticks=np.int64(7), batch=10.0, temperature_c=float("nan")))
    assert "np.float64" not in path.read_text()
    df = R.load_measured(path, allow_test_data=True).data
    assert df.loc[0, "energy_j"] == 123.5 and df.loc[0, "ticks"] == 7 and df.loc[0, "batch"] == 10
    assert df["temperature_c"].isna().all()


@pytest.mark.parametrize("bad, match", [({"energy_j": float("inf")}, "energy_j=inf: not a finite number"),
                                        ({"model": "other"}, "model=other: the sidecar's model is 'm'"),
                                        ({"gpu_uuid": "GPU-9"}, "gpu_uuid=GPU-9"),
                                        ({"n_req": -1}, "n_req=-1: not a non-negative integer")])
def test_append_refuses_rows_the_loader_would_refuse(tmp_path, bad, match):
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        with pytest.raises(ValueError, match=match):
            rf.append(row(16, **bad))
    assert prov_of(path)["rows"] == 0 and len(lines(path)) == 1


def test_append_refuses_a_file_changed_under_its_lock(tmp_path):
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        rf.append(row(16))
        set_cell(path, 2, "energy_j", "1.0")
        with pytest.raises(R.DataError, match="changed on disk while this sweep held its lock"):
            rf.append(row(32))
    assert len(lines(path)) == 2


# -- 3. start() accepts only the recorded state plus complete rows ----------------------------------------

def test_an_append_interrupted_before_its_sidecar_is_recovered(tmp_path, monkeypatch, caplog):
    path = make(tmp_path, 2)
    real = W._write_sidecar

    def killed(*a, **kw):
        raise KeyboardInterrupt("killed between the CSV and its sidecar")

    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        monkeypatch.setattr(W, "_write_sidecar", killed)
        with pytest.raises(KeyboardInterrupt):
            rf.append(row(99))
        monkeypatch.setattr(W, "_write_sidecar", real)
    assert len(lines(path)) == 4 and prov_of(path)["rows"] == 2
    with pytest.raises(R.DataError, match="sha256.*appended after the state its sidecar records"):
        R.load_measured(path, allow_test_data=True)
    with caplog.at_level(logging.WARNING, logger=W.__name__), R.ResultsFile(path) as rf:
        rf.start(PROV)
        assert (99, 8, 0) in rf.done()
    assert "recorded 1 complete row" in caplog.text and "99x8#0" in caplog.text
    prov = prov_of(path)
    assert prov["rows"] == 3 and prov["points"]["99x8#0"]["recovered"]
    assert "recovered" not in prov["points"]["16x8#0"]
    assert len(R.load_measured(path, allow_test_data=True).data) == 3


def test_an_interrupted_append_is_recovered_when_the_sidecar_predates_its_size(tmp_path):
    path = make(tmp_path, 2)
    prov = prov_of(path)
    del prov["size"]  # written before the sidecar recorded the byte size: the recorded rows give it
    R.sidecar_path(path).write_text(json.dumps(prov))
    with path.open("a") as fh:
        fh.write(_line(row(99)))
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
    prov = prov_of(path)
    assert prov["rows"] == 3 and prov["size"] == len(path.read_bytes()) and prov["points"]["99x8#0"]["recovered"]


def test_an_edited_value_is_refused_and_never_re_blessed(tmp_path):
    path = make(tmp_path)
    before = R.sidecar_path(path).read_bytes()
    set_cell(path, 3, "energy_j", "1.0")
    with pytest.raises(R.DataError, match="differs from what its sidecar records") as exc:
        R.ResultsFile(path).start(PROV)
    msg = str(exc.value)
    assert "a value was edited" in msg and "never re-blessed" in msg and "git restore" in msg and "remeasure" in msg
    assert R.sidecar_path(path).read_bytes() == before
    with pytest.raises(R.DataError, match="grid.csv: sha256"):  # the edit still fails to load
        R.load_measured(path, allow_test_data=True)
    with pytest.raises(R.DataError, match="differs"):  # and a second try is refused the same way
        R.ResultsFile(path).start(PROV)


def test_a_line_truncated_mid_way_is_refused(tmp_path):
    path = make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    with pytest.raises(R.DataError, match=r"line 4 is incomplete"):
        R.ResultsFile(path).start(PROV)
    assert path.read_bytes() == data[:-20]  # nothing glued onto the partial line
    with pytest.raises(R.DataError, match="sha256"):
        R.load_measured(path, allow_test_data=True)


def test_a_deleted_row_is_refused(tmp_path):
    path = make(tmp_path)
    text = lines(path)
    path.write_text("\n".join(text[:2] + text[3:]) + "\n")
    with pytest.raises(R.DataError, match=r"2 rows where 3 are recorded.*32x8#0.*not in the CSV"):
        R.ResultsFile(path).start(PROV)


@pytest.mark.parametrize("tail, match", [
    (lambda: "m,1,2,3", "incomplete"),  # a partial line (no line end)
    (lambda: ",".join(["x"] * 3) + "\n", "has 3 fields where the header has"),
    (lambda: _line(row(99, n_req="ten")), r"grid.csv:5 n_req=ten: not a non-negative integer"),
    (lambda: _line(row(16)), r"grid.csv:5 repeats the point n_in=16, n_out=8, rep=0 of line 2 identically"),
    (lambda: _line(row(16, energy_j=5.0)), "of line 2 with other values"),
])
def test_bytes_after_the_recorded_state_must_be_complete_new_rows(tmp_path, tail, match):
    path = make(tmp_path)
    with path.open("a") as fh:
        fh.write(tail())
    with pytest.raises(R.DataError, match=match) as exc:
        R.ResultsFile(path).start(PROV)
    assert "never re-blessed" in str(exc.value)


def _line(r: R.Row) -> str:
    return ",".join(R._fmt(v, c) for c, v in r.to_dict().items()) + "\n"


def test_a_csv_without_its_sidecar_is_not_adopted_nor_a_sidecar_without_its_csv(tmp_path):
    path = make(tmp_path)
    side = R.sidecar_path(path)
    shutil.move(side, tmp_path / "kept.json")
    with pytest.raises(R.DataError, match="exists without its sidecar"):
        R.ResultsFile(path).start(PROV)
    assert not side.exists()
    shutil.move(tmp_path / "kept.json", side)
    path.unlink()
    with pytest.raises(R.DataError, match="is missing but its sidecar"):
        R.ResultsFile(path).start(PROV)
    assert not path.exists()


# -- 4. the loader's checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("edit, match", [
    (lambda p: set_cell(p, 3, "n_req", "1.5"), r"grid.csv:3 n_req=1.5: not a non-negative integer"),
    (lambda p: set_cell(p, 2, "energy_j", "inf"), r"grid.csv:2 energy_j=inf: not a finite number"),
    (lambda p: set_cell(p, 2, "power_w", "lots"), r"grid.csv:2 power_w=lots: not a number"),
    (lambda p: set_cell(p, 4, "tokens_match", "yes"), r"grid.csv:4 tokens_match=yes: not True or False"),
    (lambda p: set_cell(p, 4, "n_in", ""), r"grid.csv:4 n_in=: a value is required"),
    (lambda p: set_cell(p, 3, "model", "other"), r"grid.csv:3 model=other: the sidecar's model is 'm'"),
    (lambda p: set_cell(p, 3, "gpu", "GPU Y"), r"grid.csv:3 gpu=GPU Y: the sidecar's GPU is 'GPU X'"),
    (lambda p: set_cell(p, 3, "gpu_uuid", "GPU-9"), r"grid.csv:3 gpu_uuid=GPU-9: the sidecar lists GPUs"),
    (lambda p: set_cell(p, 4, "n_in", "16"), r"grid.csv:4 repeats the point n_in=16, n_out=8, rep=0 of line 2 "
                                              "with other values.*never averaged"),
    (lambda p: p.write_text(p.read_text() + lines(p)[1] + "\n"), "grid.csv:5 repeats the point .* identically"),
    (lambda p: p.write_text(p.read_text() + "\n"), r"grid.csv:5 is an empty line"),
    (lambda p: p.write_text(p.read_text() + "m,1,2\n"), r"grid.csv:5 has 3 fields"),
])
def test_the_loader_checks_every_row_even_with_a_matching_checksum(tmp_path, edit, match):
    path = make(tmp_path)
    edit(path)
    rebless(path, points=prov_of(path)["points"], rows=None)
    with pytest.raises(R.DataError, match=match):
        R.load_measured(path, allow_test_data=True)


def test_the_loader_checks_the_row_count_against_the_sidecar_and_the_point_log(tmp_path):
    path = make(tmp_path)
    prov = prov_of(path)
    rebless(path, rows=4)
    with pytest.raises(R.DataError, match="grid.csv has 3 rows where its sidecar records 4"):
        R.load_measured(path, allow_test_data=True)
    points = dict(prov["points"])
    del points["32x8#0"]
    rebless(path, points=points)
    with pytest.raises(R.DataError, match=r"3 rows where its sidecar's point log has 2 points.*'32x8#0'"):
        R.load_measured(path, allow_test_data=True)
    rebless(path, points=dict(points, **{"999x8#0": {}}))
    with pytest.raises(R.DataError, match=r"logged but not in the CSV: \['999x8#0'\]"):
        R.load_measured(path, allow_test_data=True)
    rebless(path, points=prov["points"])
    assert len(R.load_measured(path, allow_test_data=True).data) == 3


def test_a_file_resumed_on_another_board_is_refused_and_nothing_is_written(tmp_path):
    """One GPU per file (issue 22): the second board's run is refused before it writes (the sweep gives it its own
    file, tests/test_store_integrity.py); files of several boards come only from a torchrun launch's merge."""
    path = make(tmp_path, 1)
    before = (path.read_bytes(), R.sidecar_path(path).read_bytes())
    with pytest.raises(R.DataError, match="a file holds one GPU"):
        R.ResultsFile(path).start(dict(PROV, gpu_uuid="GPU-2"))
    assert (path.read_bytes(), R.sidecar_path(path).read_bytes()) == before
    assert list(R.load_measured(path, allow_test_data=True).data["gpu_uuid"]) == ["GPU-1"]


def test_the_loader_still_refuses_test_data_unless_allowed(tmp_path):
    path = make(tmp_path)
    with pytest.raises(R.DataError, match="not a real GPU measurement"):
        R.load_measured(path)
    assert isinstance(R.load_measured(path, allow_test_data=True), R.MeasuredRun)
    assert len(R.load_measured(tmp_path, allow_test_data=True)) == 3  # a folder: one DataFrame


# -- 5. orphaned temporary files ------------------------------------------------------------------------

def test_start_removes_orphaned_temporary_files(tmp_path, caplog):
    path = make(tmp_path, 1)
    orphans = [tmp_path / ".grid.csv.abc123.tmp", tmp_path / ".grid.json.xyz.tmp"]
    kept = [tmp_path / ".other.csv.abc.tmp", tmp_path / "grid.csv.tmp", tmp_path / "notes.txt"]
    for p in orphans + kept:
        p.write_text("partial")
    with caplog.at_level(logging.WARNING, logger=W.__name__), R.ResultsFile(path) as rf:
        rf.start(PROV)
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)
    assert "removed 2 temporary file(s)" in caplog.text and ".grid.csv.abc123.tmp" in caplog.text
    assert len(R.load_measured(path, allow_test_data=True).data) == 1


# -- 6. a .json that is not ours is never overwritten -----------------------------------------------------

@pytest.mark.parametrize("content", ['{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}\n', "[1, 2]\n",
                                     "not json at all\n", '{"schema": "someone.else/1"}\n'])
def test_a_json_that_is_not_an_energybook_sidecar_is_never_overwritten(tmp_path, content):
    model_config = tmp_path / "m.json"  # e.g. --model m.json --output m.csv
    model_config.write_text(content)
    with pytest.raises(R.DataError, match="m.json exists and is not an energybook provenance sidecar.*--output"):
        R.ResultsFile(tmp_path / "m.csv").start(PROV)
    assert model_config.read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


# -- 7. schema-1 files load but are not appended to --------------------------------------------------------

def test_a_schema_1_file_loads_but_is_not_appended_to(tmp_path):
    src = MEASURED / "nvidia-h100-80gb-hbm3" / "hf" / "Llama-3.2-1B" / "full-64x256.csv"
    path = tmp_path / "full.csv"
    shutil.copy(src, path)
    shutil.copy(R.sidecar_path(src), R.sidecar_path(path))
    before = path.read_bytes(), R.sidecar_path(path).read_bytes()
    old = prov_of(path)
    assert old["schema"] == R.SCHEMA1
    with pytest.raises(R.DataError, match=r"measured with schema 1 .*Measure into a new file \(give another --output"):
        R.ResultsFile(path).start({k: old[k] for k in ("model", "protocol", "test_data", "gpu")})
    assert (path.read_bytes(), R.sidecar_path(path).read_bytes()) == before
    run = R.load_measured(path)
    assert len(run.data) == 3 and run.data["gpu_uuid"].isna().all()


def test_an_unknown_schema_is_refused(tmp_path):
    path = make(tmp_path, 1)
    rebless(path, schema="energybook.measured/9")
    with pytest.raises(R.DataError, match="schema 'energybook.measured/9'"):
        R.ResultsFile(path).start(PROV)
    with pytest.raises(R.DataError, match="schema 'energybook.measured/9'"):
        R.load_measured(path, allow_test_data=True)


# -- 8. behaviours kept ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("model", "other"), ("protocol", {"n_req": 11}), ("test_data", False),
                                        ("gpu", "GPU Y")])
def test_start_refuses_another_model_protocol_test_flag_or_gpu(tmp_path, key, value):
    path = make(tmp_path, 1)
    with pytest.raises(R.DataError, match=f"grid.csv holds a run with another {key} .*: give another --output or "
                                          "move the file aside"):
        R.ResultsFile(path).start(dict(PROV, **{key: value}))
    assert not R.lock_path(path).exists()  # a refused start releases the lock


def test_append_refuses_duplicates_and_unknown_columns_and_resumes(tmp_path):
    path = make(tmp_path, 2)
    with R.ResultsFile(path) as rf:
        rf.start(dict(PROV, started_at="2026-01-02T00:00:00Z"))
        assert rf.done() == {(16, 8, 0), (32, 8, 0)}
        with pytest.raises(ValueError, match=r"point \{'n_in': 16, 'n_out': 8, 'rep': 0\} is already in"):
            rf.append(row(16))
        with pytest.raises(ValueError, match=r"unknown result columns \['colour'\]"):
            rf.append(dict(row(64).to_dict(), colour="red"))
        rf.append(row(16, rep=1))
    prov = prov_of(path)
    assert prov["rows"] == 3 and [r["started_at"] for r in prov["runs"]] == ["2026-01-01T00:00:00Z",
                                                                              "2026-01-02T00:00:00Z"]
    assert len(R.load_measured(path, allow_test_data=True).data) == 3


def test_a_partial_dict_row_is_written_with_empty_cells(tmp_path):
    path = tmp_path / "grid.csv"
    with R.ResultsFile(path) as rf:
        rf.start(PROV)
        rf.append({"model": "m", "n_in": 16, "n_out": 8, "rep": 0, "energy_j": 12.0, "duration_s": 0.5})
    df = R.load_measured(path, allow_test_data=True).data
    assert df.loc[0, "energy_j"] == 12.0 and df["power_w"].isna().all()
