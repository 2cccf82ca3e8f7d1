"""`advise` by the request (issue #24): options ranked by joules per request and for the whole workload, within
the limits the user sets (--min-n-out, --max-truncation, --quality-floor) and the calibrated range, never by
joules per output token. No GPU, no torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from energybook import cli
from energybook.model import architecture as A
from energybook.model import physics as P
from energybook.report import advise as ADV

WORKLOAD = "n_in=512,n_out<=2048"


@pytest.fixture(scope="module")
def cal() -> P.Calibration:
    return P.load_calibration()


@pytest.fixture(scope="module")
def llama():
    return A.load("Llama-3.2-1B")


def _advise(llama, cal, spec: str = WORKLOAD, **limits) -> ADV.Advice:
    return ADV.advise(llama, ADV.parse_workload(spec), cal, **limits)


def _truncations(advice: ADV.Advice) -> list[ADV.Option]:
    return [o for o in advice.options if o.kind == "prompt truncation"]


# -- the wrong lesson: truncating a 512-token prompt to 16 tokens ----------------------------------------------


def test_a_512_token_prompt_is_not_truncated_unless_allowed(llama, cal):
    advice = _advise(llama, cal)
    assert _truncations(advice) == []
    assert all(o.prompt_tokens_truncated_per_request == 0 for o in advice.options)
    assert any("prompt truncation" in e and "max_truncation 0" in e for e in advice.excluded)
    # The old lesson: by joules per output token a truncation to the shortest calibrated prompt "wins"; allowed to
    # cut everything, it is still ranked by what a request costs, and never below the calibrated prompt lengths.
    anything = _advise(llama, cal, max_truncation=1)
    shortest = min(_truncations(anything), key=lambda o: o.cap)
    assert shortest.cap == cal.calibrated_range["n_in"][0]
    assert shortest.energy_j_per_output_token < anything.baseline.energy_j_per_output_token
    assert all(o.cap >= cal.calibrated_range["n_in"][0] for o in _truncations(anything))


def test_max_truncation_half_never_truncates_below_half(llama, cal):
    for spec in (WORKLOAD, "n_in=64..1000,n_out=256"):
        workload = ADV.parse_workload(spec)
        advice = ADV.advise(llama, workload, cal, max_truncation=0.5)
        assert _truncations(advice), spec
        for o in _truncations(advice):
            kept = np.minimum(workload.n_in, o.cap) / workload.n_in
            assert kept.min() >= 0.5, (spec, o.label)
            assert o.prompt_truncated_fraction <= 0.5
    caps = {o.cap for o in _truncations(_advise(llama, cal, max_truncation=0.5))}
    assert caps == {256}  # 512 -> 256 and no lower
    assert any("would cut more than 50% of a 512-token prompt" in e for e in _advise(llama, cal,
                                                                                     max_truncation=0.5).excluded)


def test_the_cli_truncates_only_what_max_truncation_allows(capsys):
    def labels(*extra: str) -> set[str]:
        assert cli.main(["advise", "--model", "Llama-3.2-1B", "--workload", WORKLOAD, "--json", *extra]) == 0
        return {o["label"] for o in json.loads(capsys.readouterr().out)["options"]}

    assert not any(label.startswith("prompt truncation") for label in labels())
    assert {label for label in labels("--max-truncation", "0.5") if "truncation" in label} == {"prompt truncation 256"}


# -- --min-n-out -------------------------------------------------------------------------------------------------


def test_no_output_cap_below_min_n_out(llama, cal):
    advice = _advise(llama, cal, "n_in=128,n_out<=4096", min_n_out=300)
    caps = sorted(o.cap for o in advice.options if o.kind == "output cap")
    assert caps and caps[0] == 300 and all(c >= 300 for c in caps)  # the limit itself is the cheapest allowed cap
    assert advice.best.label == "output cap 300"
    assert any("below the minimum output of 300 tokens" in e for e in advice.excluded)
    above = _advise(llama, cal, "n_in=128,n_out<=4096", min_n_out=5000)  # above every output: nothing to cap
    assert [o for o in above.options if o.kind == "output cap"] == [] and above.best is above.baseline


def test_the_cli_never_caps_below_min_n_out(capsys):
    assert cli.main(["advise", "--model", "OPT-1.3B", "--workload", "n_in=256,n_out=100..1000", "--min-n-out", "200",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    caps = [o["cap"] for o in out["options"] if o["kind"] == "output cap"]
    assert caps and min(caps) == 200 and out["limits"]["min_n_out"] == 200


# -- ranked by joules per request ----------------------------------------------------------------------------


def test_ranked_by_joules_per_request_where_joules_per_token_disagree(llama, cal):
    advice = _advise(llama, cal, min_n_out=256, max_truncation=0.5)
    by_label = {o.label: o for o in advice.options}
    cap, cut = by_label["output cap 256"], by_label["prompt truncation 256"]
    # Per output token the truncation is cheaper; per request the cap is: the request decides.
    assert cut.energy_j_per_output_token < cap.energy_j_per_output_token
    assert cap.energy_j_per_request < cut.energy_j_per_request
    labels = [o.label for o in advice.options]
    assert labels.index("output cap 256") < labels.index("prompt truncation 256")
    j = [o.energy_j_per_request for o in advice.options]
    assert j == sorted(j)
    assert advice.best is cap and advice.ranked[0] is cap
    assert min(advice.options, key=lambda o: o.energy_j_per_output_token) is not advice.best


def test_each_option_shows_the_trade_per_request_and_in_total(llama, cal):
    workload = ADV.parse_workload(WORKLOAD + ",n_req=400")
    advice = ADV.advise(llama, workload, cal, max_truncation=0.5)
    base = advice.baseline
    assert base.saving_j_per_request == 0 and base.saving_pct == 0 and base.requests_whole_fraction == 1
    assert base.output_tokens_per_request == pytest.approx(np.sum(workload.weight * workload.n_out))
    for o in advice.options:
        assert o.energy_j_total == pytest.approx(400 * o.energy_j_per_request)
        assert o.saving_j_per_request == pytest.approx(base.energy_j_per_request - o.energy_j_per_request)
        assert o.saving_j_total == pytest.approx(400 * o.saving_j_per_request)
        assert o.saving_pct == pytest.approx(100 * o.saving_j_per_request / base.energy_j_per_request)
        assert o.output_tokens_cut_per_request + o.output_tokens_per_request == pytest.approx(
            base.output_tokens_per_request)
        assert o.output_cut_fraction == pytest.approx(o.output_tokens_cut_per_request / base.output_tokens_per_request)
        assert o.prompt_truncated_fraction == pytest.approx(o.prompt_tokens_truncated_per_request / 512)
        assert 0 < o.saving_pct < 100 and 0 <= o.requests_whole_fraction < 1
    cap = next(o for o in advice.options if o.label == "output cap 1024")
    assert cap.requests_whole_fraction == pytest.approx(0.5)  # the spread's outputs up to 1024 are untouched
    frame = advice.to_frame()
    assert list(frame["label"]) == [base.label, *(o.label for o in advice.options)]
    assert {"energy_j_per_request", "energy_j_total", "saving_pct", "output_cut_fraction"} <= set(frame.columns)
    assert cap.j_per_request == cap.energy_j_per_request and cap.saving_j == cap.saving_j_total  # older names


# -- --quality-floor ---------------------------------------------------------------------------------------------


def test_the_quality_floor_keeps_that_share_of_requests_whole(llama, cal):
    advice = _advise(llama, cal, quality_floor=0.5, max_truncation=0.5)
    assert advice.options and all(o.requests_whole_fraction >= 0.5 for o in advice.options)
    assert {o.label for o in advice.options} == {"output cap 1024"}  # a truncation of a fixed prompt cuts them all
    assert any("quality_floor 0.5" in e for e in advice.excluded)
    whole = _advise(llama, cal, quality_floor=1, max_truncation=1)
    assert whole.options == [] and whole.best is whole.baseline


# -- the calibrated range ----------------------------------------------------------------------------------------


def test_no_option_outside_the_calibrated_range(llama, cal):
    rng = cal.calibrated_range
    advice = _advise(llama, cal, "n_in=16..8000,n_out<=6000", max_truncation=1)
    for o in advice.options:
        key = "n_out" if o.kind == "output cap" else "n_in"
        assert rng[key][0] <= o.cap <= rng[key][1], o.label
    assert any("outside the calibrated output lengths" in e for e in advice.excluded)  # caps 16 and 32
    # The workload's own requests outside the range are warned about, with their share.
    assert any("calibrated output lengths" in w and "of the requests" in w for w in advice.warnings)
    assert any("calibrated prompt lengths" in w for w in advice.warnings)
    assert _advise(llama, cal).warnings == []


def test_the_cli_warns_about_requests_outside_the_range(capsys):
    assert cli.main(["advise", "--model", "Llama-3.2-1B", "--workload", "n_in=32,n_out=128", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["warnings"] == ["n_in 32 is outside the calibrated prompt lengths 64..4096 tokens (every request)"]
    assert "energybook: warning: n_in 32 is outside" in captured.err


# -- the command's text, flags and the workload's bounds ---------------------------------------------------------


def test_the_text_shows_joules_per_request_and_the_total(capsys):
    assert cli.main(["advise", "--model", "Qwen2-1.5B", "--workload", WORKLOAD + ",n_req=500", "--min-n-out", "512",
                     "--max-truncation", "0.25", "--quality-floor", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "500 requests" in out and "J per request" in out and "J for the workload" in out
    assert "fewest joules per request: output cap 512" in out and "J/request" in out and "J total" in out
    assert "no output cap below 512 tokens; at most 25% of any prompt truncated; at least 10% of the requests" in out
    assert "not proposed: output cap 16, 32, 64, 128, 256: below the minimum output of 512 tokens" in out
    assert "per output token" not in out and "answer quality" in out


@pytest.mark.parametrize("flag, value, message", [
    ("--min-n-out", "0", r"--min-n-out must be 1..1048576 tokens"),
    ("--min-n-out", str(2**21), r"--min-n-out must be 1..1048576 tokens"),
    ("--max-truncation", "1.5", r"--max-truncation must be 0..1 (the fraction of a prompt that may be cut)"),
    ("--max-truncation", "nan", r"--max-truncation must be 0..1"),
    ("--quality-floor", "2", r"--quality-floor must be 0..1 (the fraction of the requests left whole)"),
    ("--quality-floor", "inf", r"--quality-floor must be 0..1"),
])
def test_bad_limits_are_one_line_usage_errors(flag, value, message, capsys):
    assert cli.main(["advise", "--model", "Llama-3.2-1B", "--workload", WORKLOAD, flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("energybook: error: ") and message in err and "\n" not in err


def test_the_help_names_the_limits(capsys):
    with pytest.raises(SystemExit):
        cli.main(["advise", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--min-n-out" in text and "--max-truncation" in text and "--quality-floor" in text
    assert "joules per request" in text and "0: no truncation" in text and "per output token" not in text


def test_limits_are_checked_in_the_api(llama, cal):
    workload = ADV.parse_workload(WORKLOAD)
    for bad in (dict(min_n_out=0), dict(min_n_out=1.5), dict(max_truncation=-0.1), dict(max_truncation=math.nan),
                dict(quality_floor=1.1)):
        with pytest.raises(ValueError, match="must be"):
            ADV.advise(llama, workload, cal, **bad)


def test_the_request_count_is_bounded(tmp_path, monkeypatch):
    assert ADV.parse_workload(f"n_in=8,n_out=8,n_req={10**7}").n_req == 10**7
    for bad in ("0", str(10**7 + 1), str(10**40), "1e3", "-5", "٣"):
        with pytest.raises(ValueError, match=r"n_req must be an integer 1\.\.10000000 \(requests\)"):
            ADV.parse_workload(f"n_in=8,n_out=8,n_req={bad}")
    monkeypatch.setattr(ADV, "MAX_N_REQ", 3)
    csv = tmp_path / "w.csv"
    csv.write_text("n_in,n_out\n" + "8,8\n" * 4)
    with pytest.raises(ValueError, match="has 4 requests; at most 3"):
        ADV.parse_workload(csv)


def test_the_plot_is_in_joules_per_request(llama, cal, tmp_path, monkeypatch):
    import matplotlib.figure

    seen = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (seen.append([ax.get_ylabel() for ax in fig.axes]), real(fig, *a, **k)))
    path = ADV.plot_advice(_advise(llama, cal, max_truncation=0.5), tmp_path / "a.png")
    assert path.stat().st_size > 1000
    assert seen == [["energy per request (J per request)"]]
