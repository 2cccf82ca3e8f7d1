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
