"""The full-against-sampled comparison (energybook.report.protocols): errors, targets and refusals."""

from pathlib import Path

import pandas as pd
import pytest

from energybook.report import protocols as P
from energybook.store.loader import MeasuredRun


def _run(mode, values, path, **changes):
    prov = {"model": "m", "gpu": "NVIDIA H200", "gpu_uuid": "GPU-1", "engine": {"engine": "lean"},
            "protocol": {"mode": mode, "n_req": 1000, "max_batch": 1024, "seed": 0, "engine": "lean"},
            "measuring_minutes": 3.0 if mode == "full" else 0.5}
    for k, v in changes.items():
        if k in prov["protocol"]:
            prov["protocol"][k] = v
        else:
            prov[k] = v
    rows = [{"n_in": a, "n_out": b, "rep": 0, "batch": 1000, "tokens_per_j": v} for (a, b), v in values.items()]
    return MeasuredRun(pd.DataFrame(rows), prov, Path(path))


def test_errors_are_sampled_over_full_minus_one_on_common_points():
    full = _run("full", {(64, 64): 100.0, (64, 128): 200.0, (128, 64): 50.0}, "a/full.csv")
    sampled = _run("sampled", {(64, 64): 101.0, (64, 128): 196.0, (4096, 64): 1.0}, "a/sampled.csv")
    c = P.compare(full, sampled)
    assert c.n_points == 2 and list(c.table["n_out"]) == [64, 128]
    assert c.table["error_pct"].tolist() == pytest.approx([1.0, -2.0])
    assert c.mape_pct == pytest.approx(1.5) and c.max_abs_pct == pytest.approx(2.0)
    assert c.bias_pct == pytest.approx(-0.5)
    assert not c.passed  # MAPE 1.5% > 1%
    assert c.summary()["reference_minutes"] == 3.0 and c.summary()["gpu_uuid"] == "GPU-1"


def test_a_pair_within_both_targets_passes_and_one_point_beyond_fails():
    grid = {(64, n): 100.0 for n in (64, 128, 256, 512)}
    ok = P.compare(_run("full", grid, "f.csv"), _run("sampled", {k: 100.5 for k in grid}, "s.csv"))
    assert ok.passed
    bad = dict.fromkeys(grid, 100.0)
    bad[(64, 512)] = 97.0  # MAPE 0.75%, but one point 3% off
    assert not P.compare(_run("full", grid, "f.csv"), _run("sampled", bad, "s.csv")).passed


@pytest.mark.parametrize("change, word", [({"gpu_uuid": "GPU-2"}, "gpu_uuid"), ({"n_req": 100}, "n_req"),
                                          ({"engine": {"engine": "hf"}}, "engine"), ({"model": "x"}, "model")])
def test_files_that_differ_in_more_than_the_protocol_are_refused_by_name(change, word):
    grid = {(64, 64): 1.0}
    with pytest.raises(ValueError, match=f"differ in more than the protocol.*{word}"):
        P.compare(_run("full", grid, "f.csv"), _run("sampled", grid, "s.csv", **change))


def test_wrong_order_and_no_common_point_are_refused():
    f, s = _run("full", {(64, 64): 1.0}, "f.csv"), _run("sampled", {(128, 64): 1.0}, "s.csv")
    with pytest.raises(ValueError, match="pass the reference file"):
        P.compare(s, f)
    with pytest.raises(ValueError, match="share no"):
        P.compare(f, s)


def test_find_pairs_pairs_files_of_one_gpu_in_one_folder(tmp_path):
    import json

    def put(folder, name, uuid):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text("")
        (tmp_path / folder / name).with_suffix(".json").write_text(json.dumps({"gpu_uuid": uuid}))

    put("a", "full.csv", "GPU-1"), put("a", "sampled.csv", "GPU-1")
    put("a", "full-abcdef12.csv", "GPU-abcdef12"), put("a", "sampled-abcdef12.csv", "GPU-abcdef12")
    put("a", "full-64x256.csv", "GPU-1")  # an hf engine's single-point check: not a protocol file
    put("b", "full.csv", "GPU-1"), put("b", "sampled.csv", "GPU-2")  # two boards: never compared
    put("c", "sampled.csv", "GPU-1")
    a = tmp_path / "a"
    assert P.find_pairs(tmp_path) == [(a / "full-abcdef12.csv", a / "sampled-abcdef12.csv"),
                                      (a / "full.csv", a / "sampled.csv")]
