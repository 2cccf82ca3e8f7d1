"""`energybook predict` and `advise` refuse an attention path no calibration grid ran, by name, and let it through
with --allow-path as a labelled, uncalibrated estimate (on stderr and in the JSON's warnings)."""

from __future__ import annotations

import json

from energybook import cli


def test_predict_refuses_soft_capping_by_name(capsys):
    assert cli.main(["predict", "--model", "Gemma-2-2B", "--n-in", "64", "--n-out", "128"]) == 2
    err = capsys.readouterr().err
    assert "logit soft-capping" in err and "--allow-path logit-softcap" in err


def test_allowed_path_is_labelled_in_the_json(capsys):
    assert cli.main(["predict", "--model", "Gemma-2-2B", "--n-in", "64", "--n-out", "128", "--allow-path",
                     "logit-softcap", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any(w.startswith("uncalibrated estimate (--allow-path logit-softcap)") for w in out["warnings"])


def test_a_plain_causal_model_needs_no_allowance(capsys):
    assert cli.main(["predict", "--model", "Llama-3.2-1B", "--n-in", "64", "--n-out", "128", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not any("uncalibrated estimate" in w for w in out["warnings"])


def test_advise_refuses_alibi_by_name(capsys):
    assert cli.main(["advise", "--model", "Falcon-RW-7B", "--workload", "n_in=512,n_out=256"]) == 2
    assert "ALiBi" in capsys.readouterr().err


def test_an_unknown_path_name_is_a_usage_error(capsys):
    try:
        code = cli.main(["predict", "--model", "Gemma-2-2B", "--n-in", "64", "--n-out", "128", "--allow-path", "x"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "invalid choice" in capsys.readouterr().err
