"""The command line: one-line errors that say what to do, and a resume hint when a sweep stops.

The conventions shared by every command (exit statuses, --json, --version, --help, pipes) are in
test_cli_conventions.py."""

import pytest

from energybook import cli


def test_models_lists_the_shipped_ones(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 14 and out[1].startswith("Falcon-RW-7B")


def test_models_fails_loudly_without_package_data(monkeypatch, capsys):
    from energybook import resources

    def missing(*parts):
        raise FileNotFoundError("the package data architectures is missing: reinstall energybook")

    monkeypatch.setattr(resources, "path", missing)
    assert cli.main(["models"]) == 1  # a broken installation is a runtime error, not a usage error
    assert "reinstall energybook" in capsys.readouterr().err


def test_unknown_model_is_named(capsys):
    assert cli.main(["counts", "--model", "Llama-9", "--n-in", "64"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'Llama-9'" in err and "Llama-3.2-1B" in err


def test_interrupted_sweep_says_how_to_resume(monkeypatch, capsys):
    from energybook.measure import runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_sweep", interrupted)
    assert cli.main(["sweep", "--model", "Llama-3.2-1B"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_os_errors_are_one_line_with_the_resume_hint(monkeypatch, capsys):
    from energybook.measure import runner

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "run_sweep", disk_full)
    assert cli.main(["sweep", "--model", "Llama-3.2-1B"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun the same command to resume" in err


def test_output_with_several_models_is_refused(capsys):
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "OPT-1.3B", "--output", "x.csv"]) == 2
    assert "--output names one file" in capsys.readouterr().err


def test_several_models_are_measured_one_after_the_other(monkeypatch, capsys, tmp_path):
    from energybook.measure import runner

    seen = []

    def fake(model, config, **kw):
        seen.append((model, config.n_in))
        return runner.SweepResult(tmp_path / f"{model}.csv", 1, 0, 0.1, [], 0, config)

    monkeypatch.setattr(runner, "run_sweep", fake)
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "OPT-1.3B", "--n-in", "64"]) == 0
    assert seen == [("Llama-3.2-1B", (64,)), ("OPT-1.3B", (64,))]


def test_measure_refuses_unknown_notebook_parameters(capsys):
    assert cli.main(["measure", "--model", "Llama-3.2-1B", "-p", "n_reqs", "5"]) == 2
    assert "unknown notebook parameter" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sweep", "--model", "Llama-3.2-1B", "--engine", "sglang"]])
def test_unknown_engine_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "invalid choice" in capsys.readouterr().err


# -- issue 21, item 9: every number in a documented range, checked before anything runs ---------------------------


def _no_sweep(monkeypatch):
    """Make any sweep, launch or notebook a test failure: a refused argument must stop before them."""
    from energybook.measure import launch, notebook, runner

    def never(*a, **k):
        raise AssertionError("a sweep ran although its arguments are impossible")

    for mod, name in ((runner, "run_sweep"), (launch, "run_launch"), (notebook, "run_notebook")):
        monkeypatch.setattr(mod, name, never)


@pytest.mark.parametrize("argv, match", [
    (["sweep", "--model", "Llama-3.2-1B", "--plan", "--ranks", str(10**8)], r"--ranks must be 1\.\.4096"),
    (["sweep", "--model", "Llama-3.2-1B", "--plan", "--ranks", str(10**12)], r"--ranks must be 1\.\.4096"),
    (["sweep", "--model", "Llama-3.2-1B", "--plan", "--ranks", "0"], r"--ranks must be 1\.\.4096"),
    (["sweep", "--model", "Llama-3.2-1B", "--ranks", "2"], r"--ranks goes with --plan"),
    (["sweep", "--model", "Llama-3.2-1B", "--n-req", str(10**15)], r"n_req must be at most 10000000"),
    (["sweep", "--model", "Llama-3.2-1B", "--plan", "--n-req", str(10**15)], r"n_req must be at most"),
    (["sweep", "--model", "Llama-3.2-1B", "--n-in", str(10**9)], r"n_in must be at most 1048576"),
    (["sweep", "--model", "Llama-3.2-1B", "--max-batch", str(10**12)], r"max_batch must be at most"),
    (["sweep", "--model", "Llama-3.2-1B", "--seed", str(10**30)], r"seed must be at most"),
    (["sweep", "--model", "Llama-3.2-1B", "--time-limit", "nan"], r"--time-limit must be"),
    (["sweep", "--model", "Llama-3.2-1B", "--time-limit", "-1"], r"--time-limit must be"),
    (["sweep", "--model", "Llama-3.2-1B", "--engine", "vllm", "--timeout", "inf"], r"--timeout must be"),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8", "--n-req", str(10**11)],
     r"--n-req must be 1\.\.10000000"),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8", "--n-req", str(10**15)],
     r"--n-req must be 1\.\.10000000"),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", str(10**12)], r"--n-out must be 1\.\."),
    (["predict", "--model", "Llama-3.2-1B", "--n-in", "8", "--n-out", "8", "--batch", str(10**9)], r"--batch must be"),
    (["counts", "--model", "Llama-3.2-1B", "--n-in", str(10**15)], r"--n-in must be 1\.\.1048576"),
    (["counts", "--model", "Llama-3.2-1B", "--batch", str(10**15)], r"--batch must be 1\.\."),
    (["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=64,n_out=8", "--max-batch", "0"],
     r"--max-batch must be 1\.\."),
    (["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=64,n_out<=1000000000000"], r"n_out .*at most 1048576"),
])
def test_impossible_numbers_are_usage_errors_naming_the_range(argv, match, monkeypatch, capsys):
    """--ranks 1e8 ran for minutes, --ranks 1e12 and --n-req 1e15 gave tracebacks, --n-req 1e11 took 834 MB."""
    import re
    import time

    _no_sweep(monkeypatch)
    t0 = time.perf_counter()
    assert cli.main(argv) == 2
    assert time.perf_counter() - t0 < 20
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("energybook: error: ") and re.search(match, err), err


def test_pairs_and_a_grid_are_not_both_taken(monkeypatch, capsys):
    """--pairs silently replaced --n-in/--n-out."""
    _no_sweep(monkeypatch)
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "--pairs", "96x300", "--n-in", "64"]) == 2
    assert "--pairs" in capsys.readouterr().err
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "--pairs", "96x300", "--n-out", "64", "--plan"]) == 2
    assert "--pairs" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["sweep", "--model", "Llama-3.2-1B\n"],
    ["sweep", "--model", "Llama-3.2-1B", "bad\tname.json"],
    ["sweep", "--model", "Llama-3.2-1B", "--output", "grid\n.csv"],
    ["sweep", "--model", "Llama-3.2-1B", "--note", "two\nlines"],
    ["measure", "--model", "Llama-3.2-1B\r"],
    ["measure", "--model", "Llama-3.2-1B", "-p", "output", '"a\\nb.csv"'],
    ["counts", "--model", "Llama-3.2-1B\x00"],
])
def test_control_characters_are_refused_before_anything_runs(argv, monkeypatch, capsys):
    """A newline in a model name: the sweep exited 0, then its file never loaded."""
    _no_sweep(monkeypatch)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "control character" in err, err


def test_a_rank_without_torchruns_rendezvous_says_to_use_torchrun(monkeypatch, capsys):
    """RANK set without MASTER_ADDR gave a KeyError ('energybook: error: MASTER_ADDR')."""
    from energybook.measure import runner

    def never(*a, **k):
        raise AssertionError("measured without a launch")

    monkeypatch.setattr(runner, "run_sweep", never)
    for k in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "1")  # RANK alone: not a launch, and not a plain sweep either
    assert cli.main(["sweep", "--model", "Llama-3.2-1B"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchrun" in err and "unset RANK" in err, err
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # a launch's variables, but no rendezvous
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "--device", "cpu", "--allow-test-data", "--data",
                     "/nonexistent/never-created"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MASTER_ADDR" in err and "torchrun" in err and "unset RANK" in err, err
