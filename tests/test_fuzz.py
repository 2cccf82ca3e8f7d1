"""Property-based fuzz (Hypothesis) of every command of the CLI and of the results reader (issue 21, item 9).

The CLI: any arguments end in exit 0, 1 or 2, never a traceback or a hang, with a one-line error; an impossible
value (a length, a request count or a rank count out of its range, NaN, a control character) is a usage error
(2) before anything runs. Commands run in-process; sweeps, launches and notebooks are replaced by a stand-in that
fails as a machine without a GPU does, so nothing is ever measured.

The reader: a results file and its sidecar with any bytes changed, cut or added load as valid data or raise
:class:`energybook.DataError` (or ``FileNotFoundError``) with a message, never another exception.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import energybook
from energybook import cli
from energybook.measure.protocol import MAX_BATCH, MAX_CONTEXT, MAX_N_REQ

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
#: Seconds one command may take before the fuzz calls it a hang.
CALL_TIMEOUT_S = 30
MODELS = ["Llama-3.2-1B", "OPT-1.3B"]


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


def _no_gpu(*a, **k):
    from energybook.measure.meter import MeterUnavailable

    raise MeterUnavailable("no NVIDIA GPU visible (NVML failed to initialise): measure on a machine with one")


@contextlib.contextmanager
def _sandbox():
    """No GPU work, no torchrun environment, no subprocess, and a data folder of its own."""
    from energybook.measure import launch, notebook, runner

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, env, clear=True), \
            mock.patch.object(runner, "run_sweep", _no_gpu), mock.patch.object(launch, "run_launch", _no_gpu), \
            mock.patch.object(notebook, "run_notebook", _no_gpu), mock.patch.object(cli.subprocess, "call",
                                                                                      lambda *a, **k: 0):
        os.environ["ENERGYBOOK_DATA"] = tmp
        yield Path(tmp)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``energybook argv``, in-process, with a time limit."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CALL_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
    except _Hang:
        pytest.fail(f"energybook {argv!r} ran over {CALL_TIMEOUT_S} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()


def check_outcome(argv: list[str], code: int, err: str) -> None:
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code:
        lines = err.rstrip("\n").split("\n")
        assert lines[-1].startswith("energybook") and ": error: " in lines[-1], (argv, err)
        if not lines[0].startswith("usage:"):  # argparse's own errors come after its usage
            assert len(lines) == 1, (argv, err)


# -- the CLI ---------------------------------------------------------------------------------------------------

_junk = st.one_of(st.integers(-10**20, 10**20).map(str),
                  st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e8", "1e15", "0x10", "", " 8", "8.5", "∞"]),
                  st.text(max_size=6))
_small = st.integers(1, 512).map(str)
_number = st.one_of(_small, _junk)
_model = st.one_of(st.sampled_from(MODELS), st.text(max_size=12))

OPTIONS = {
    "counts": ["--n-in", "--n-out", "--batch"],
    "predict": ["--n-in", "--n-out", "--batch", "--max-batch", "--n-req"],
    "advise": ["--max-batch", "--min-n-out", "--max-truncation", "--quality-floor"],
    "sweep": ["--n-in", "--n-out", "--n-req", "--max-batch", "--repeats", "--seed", "--min-window", "--cooldown",
              "--time-limit", "--meter-poll", "--ranks", "--timeout"],
}


@st.composite
def _argv(draw) -> list[str]:
    command = draw(st.sampled_from(["models", "counts", "predict", "advise", "sweep", "measure", "book"]))
    argv = [command]
    if command in ("counts", "predict", "advise", "sweep", "measure"):
        argv += ["--model", draw(_model)]
    if command == "predict":
        argv += ["--n-in", draw(_number), "--n-out", draw(_number)]
    if command == "advise":
        argv += ["--workload", draw(st.one_of(st.sampled_from(["n_in=64,n_out<=256", "n_in=1..10**9,n_out=4",
                                                                "n_req=0,n_in=8,n_out=8", "x.csv"]),
                                              st.text(max_size=20)))]
    if command == "sweep":
        argv += draw(st.sampled_from([["--plan"], ["--plan", "--json"], []]))
        if draw(st.booleans()):
            argv += ["--pairs", draw(st.one_of(st.just("96x300"), st.text(max_size=8)))]
    if command == "measure":
        argv += ["-p", draw(st.sampled_from(["n_req", "n_in", "seed", "note", "nope"])), draw(st.text(max_size=8))]
    for option in draw(st.lists(st.sampled_from(OPTIONS.get(command, ["--json"])), max_size=3, unique=True)):
        argv += [option] if option == "--json" else [option, draw(_number)]
    if command in ("models", "counts", "predict", "advise") and draw(st.booleans()):
        argv.append("--json")
    return argv


@FUZZ
@given(argv=_argv())
def test_every_command_ends_in_0_1_or_2_with_one_line(argv):
    with _sandbox():
        code, _, err = run_cli(argv)
    check_outcome(argv, code, err)


_IMPOSSIBLE = {  # (command's argv before the option, option, values out of range)
    "counts-n-in": (["counts", "--model", "Llama-3.2-1B"], "--n-in", st.one_of(st.integers(max_value=0),
                                                                              st.integers(min_value=MAX_CONTEXT))),
    "counts-batch": (["counts", "--model", "Llama-3.2-1B"], "--batch", st.one_of(st.integers(max_value=0),
                                                                                st.integers(min_value=MAX_BATCH + 1))),
    "predict-n-req": (["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8"], "--n-req",
                      st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_N_REQ + 1))),
    "predict-n-out": (["predict", "--model", "Llama-3.2-1B", "--n-in", "8"], "--n-out",
                      st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_CONTEXT))),
    "sweep-n-req": (["sweep", "--model", "Llama-3.2-1B"], "--n-req",
                    st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_N_REQ + 1))),
    "sweep-n-in": (["sweep", "--model", "Llama-3.2-1B", "--plan"], "--n-in",
                   st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_CONTEXT))),
    "sweep-ranks": (["sweep", "--model", "Llama-3.2-1B", "--plan"], "--ranks",
                    st.one_of(st.integers(max_value=0), st.integers(min_value=4097))),
    "sweep-seed": (["sweep", "--model", "Llama-3.2-1B"], "--seed",
                   st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63))),
    "sweep-min-window": (["sweep", "--model", "Llama-3.2-1B"], "--min-window",
                         st.sampled_from(["nan", "inf", "-inf", "-1", "1e9"])),
    "sweep-time-limit": (["sweep", "--model", "Llama-3.2-1B"], "--time-limit",
                         st.sampled_from(["nan", "inf", "-1", "0", "1e12"])),
    "advise-min-n-out": (["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=64,n_out<=256"], "--min-n-out",
                         st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_CONTEXT + 1))),
    "advise-max-truncation": (["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=64,n_out<=256"],
                              "--max-truncation", st.sampled_from(["nan", "inf", "-inf", "-0.1", "1.01", "1e9"])),
    "advise-quality-floor": (["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=64,n_out<=256"],
                             "--quality-floor", st.sampled_from(["nan", "inf", "-inf", "-0.1", "1.01", "1e9"])),
}


@FUZZ
@given(case=st.sampled_from(sorted(_IMPOSSIBLE)), data=st.data())
def test_impossible_values_are_usage_errors(case, data):
    head, option, values = _IMPOSSIBLE[case]
    value = data.draw(values)
    argv = [*head, option, str(value)]
    with _sandbox():
        code, _, err = run_cli(argv)
    check_outcome(argv, code, err)
    assert code == 2, (argv, err)


_control = st.text(st.characters(min_codepoint=0, max_codepoint=31) | st.characters(min_codepoint=127,
                                                                                     max_codepoint=159),
                   min_size=1, max_size=2)


@FUZZ
@given(command=st.sampled_from(["counts", "predict", "sweep", "measure"]), where=st.integers(0, 12), bad=_control,
       plan=st.booleans())
def test_control_characters_in_a_model_name_are_usage_errors(command, where, bad, plan):
    name = "Llama-3.2-1B"
    argv = [command, "--model", name[:where] + bad + name[where:]]
    argv += {"predict": ["--n-in", "8", "--n-out", "8"], "sweep": ["--plan"] if plan else []}.get(command, [])
    with _sandbox():
        code, _, err = run_cli(argv)
    check_outcome(argv, code, err)
    assert code == 2, (argv, err)


# -- the results reader ------------------------------------------------------------------------------------------


def _valid_results(folder: Path) -> Path:
    from energybook.measure import runner
    from energybook.measure.meter import SimulatedMeter
    from energybook.measure.protocol import SweepConfig
    from energybook.store.results import ResultsFile

    path = folder / "grid.csv"
    config = SweepConfig(n_in=[8, 16], n_out=[4, 8])
    with ResultsFile(path) as rf:
        rf.start(dict(gpu="simulated", gpu_uuid="u0", model="m", protocol=config.to_record(),
                      meter_method="simulated", test_data=True, device="cpu", command="cmd", started_at=runner.utc(),
                      host="h"))
        for n_in, n_out in [(8, 4), (8, 8), (16, 4)]:
            reading = SimulatedMeter(power_w=100.0).reading(0.0, 1.0)
            rf.append(runner.make_row("m", n_in, n_out, 10, 0, "prefix", reading, {"gpu": "simulated",
                                                                                   "gpu_uuid": "u0"},
                                      engine="torch", batch=10, waves=1), {"gpu_uuid": "u0", "measuring_s": 1.0})
    return path


def _sidecar(path: Path) -> Path:
    from energybook.store.results import sidecar_path

    return sidecar_path(path)


@pytest.fixture(scope="module")
def valid_files():
    with tempfile.TemporaryDirectory() as tmp:
        path = _valid_results(Path(tmp))
        yield path.read_bytes(), _sidecar(path).read_bytes()


_edit = st.one_of(
    st.tuples(st.just("cut"), st.integers(0, 10**4)),
    st.tuples(st.just("flip"), st.integers(0, 10**4), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**4), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 10**4), st.sampled_from([b"\n", b",", b'"', b"nan", b"-1", b"\r\n",
                                                                        b"\xff", b"{", b"null", b"1e400"])),
    st.tuples(st.just("replace"), st.binary(max_size=64)),
    st.tuples(st.just("delete"),),
)


def _apply(data: bytes, edit) -> bytes | None:
    kind = edit[0]
    if kind == "cut":
        return data[:edit[1] % (len(data) + 1)]
    if kind == "flip":
        i = edit[1] % max(1, len(data))
        return data[:i] + bytes([data[i] ^ edit[2]]) + data[i + 1:] if data else data
    if kind == "insert":
        i = edit[1] % (len(data) + 1)
        return data[:i] + edit[2] + data[i:]
    if kind == "replace":
        return edit[1]
    return None  # delete


def test_the_unchanged_files_load(valid_files):
    from energybook.store.results import sidecar_path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.csv"
        path.write_bytes(valid_files[0])
        sidecar_path(path).write_bytes(valid_files[1])
        assert len(energybook.load_measured(path, allow_test_data=True).data) == 3


@settings(FUZZ, max_examples=300)
@given(csv_edits=st.lists(_edit, max_size=2), side_edits=st.lists(_edit, max_size=2))
def test_the_reader_loads_valid_data_or_raises_a_data_error(valid_files, csv_edits, side_edits):
    from energybook.store.results import sidecar_path

    csv_bytes, side_bytes = valid_files
    for e in csv_edits:
        csv_bytes = None if csv_bytes is None else _apply(csv_bytes, e)
    for e in side_edits:
        side_bytes = None if side_bytes is None else _apply(side_bytes, e)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.csv"
        if csv_bytes is not None:
            path.write_bytes(csv_bytes)
        if side_bytes is not None:
            sidecar_path(path).write_bytes(side_bytes)
        try:
            run = energybook.load_measured(path, allow_test_data=True)
        except (energybook.DataError, FileNotFoundError) as exc:
            assert str(exc).strip(), exc
            return
        assert len(run.data) >= 0 and {"n_in", "n_out"} <= set(run.data.columns)
        assert (run.data["n_in"] > 0).all() and (run.data["n_out"] > 0).all()
