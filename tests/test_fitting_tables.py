"""Tables 3-5 over the study's 13 models, measured or not, and the coefficient statistics of the fitting chapter
(energybook.report.tables), on synthetic grids with a known truth and on the committed grids (CPU, seconds)."""

import numpy as np
import pandas as pd
import pytest

from energybook.model import fit as FIT
from energybook.model import formulas as FM
from energybook.model import paper as D
from energybook.model.architecture import STUDY_ORDER
from energybook.report import provenance as PV
from energybook.report import tables as T

H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"


def grid(model, thetas, noise=0.003, seed=0, gpu=H100, engine="hf", protocol="grid"):
    """A 7x7 grid of one model from ``thetas``, with relative noise shared by each prefix group (n_in) and its own."""
    t = FIT.predict_grid(thetas)
    rng = np.random.default_rng(seed)
    shared = {n: rng.standard_normal() for n in t["n_in"].unique()}
    t["j_per_token"] *= 1 + noise * (t["n_in"].map(shared) + rng.standard_normal(len(t)))
    return t.assign(model=model, gpu=gpu, engine=engine, protocol=protocol, batch=1000)


@pytest.fixture(scope="module")
def two_engines():
    """Llama on two engines (different GPUs), Qwen on one, and one model the study does not have."""
    parts = [grid("Llama-3.2-1B", D.paper_thetas("Llama-3.2-1B"), seed=1),
             grid("Llama-3.2-1B", {k: 1.3 * v for k, v in D.paper_thetas("Llama-3.2-1B").items()}, seed=2,
                  gpu=H200, engine="lean", protocol="sampled"),
             grid("Qwen2-1.5B", D.paper_thetas("Qwen2-1.5B"), seed=3),
             grid("Tiny-Model", D.paper_thetas("OPT-1.3B"), seed=4)]
    table = pd.concat(parts, ignore_index=True)
    sources = [PV.Source("Llama-3.2-1B", H100, "GPU-aaaa", "hf"), PV.Source("Llama-3.2-1B", H200, "GPU-bbbb", "lean"),
               PV.Source("Qwen2-1.5B", H100, "GPU-cccc", "hf"), PV.Source("Tiny-Model", H100, "GPU-dddd", "hf")]
    return PV.attach_sources(table, sources)


def test_commands_name_the_model():
    assert T.measure_command("Gemma-2-9B") == "energybook sweep --model Gemma-2-9B --engine lean --mode sampled"


def test_grids_never_mix_engines_and_name_their_boards(two_engines):
    found = T.grids(two_engines)
    assert [(g.model, g.engine) for g in found] == [("Llama-3.2-1B", "hf"), ("Llama-3.2-1B", "lean"),
                                                    ("Qwen2-1.5B", "hf"), ("Tiny-Model", "hf")]
    assert all(g.n_points == 49 for g in found)
    hf, lean = found[0], found[1]
    assert hf.where == f"{H100}, hf engine" and lean.where == f"{H200}, lean engine, sampled protocol"
    assert "GPU-aaaa" in hf.source and "GPU-bbbb" not in hf.source and "GPU-bbbb" in lean.source
    few = two_engines[(two_engines["model"] == "Qwen2-1.5B") & (two_engines["n_in"] == 64)]
    assert T.grids(few) == []  # 7 points cannot fix six coefficients


def test_table3_covers_the_study_models_measured_or_not(two_engines):
    t3 = T.table3(two_engines)
    models = list(dict.fromkeys(t3["model"]))
    assert models == STUDY_ORDER + ["Tiny-Model"]
    study = t3[t3["who"] == T.STUDY].set_index("model")
    published = D.paper_table3().set_index("model")
    assert list(study.index) == STUDY_ORDER
    assert np.allclose(study[list(FM.FORMULAS)], published.loc[STUDY_ORDER, list(FM.FORMULAS)])
    ours = t3[t3["who"] == T.OURS]
    missing = ours[ours["status"] == T.NOT_MEASURED]
    assert set(missing["model"]) == set(STUDY_ORDER) - {"Llama-3.2-1B", "Qwen2-1.5B"}
    assert (missing.groupby("model").size() == 1).all()
    assert all(r.command == T.measure_command(r.model) and r.command in r.measured_on for r in missing.itertuples())
    assert missing[list(FM.FORMULAS)].isna().all().all()
    llama = ours[ours["model"] == "Llama-3.2-1B"]
    assert list(llama["engine"]) == ["hf", "lean"] and (llama["points"] == 49).all()
    # Each engine's grid is fitted on its own: the formula the grid was drawn from fits it closely.
    assert (llama["memory_flops_model"] < 1.5).all() and (llama["baseline1_const"] > 20).all()
    assert "GPU-aaaa" in PV.source_line(t3) and "GPU-bbbb" in PV.source_line(t3)


def test_table5_recovers_the_thetas_and_sweet_spots(two_engines):
    t5 = T.table5(two_engines)
    ours = t5[(t5["who"] == T.OURS) & (t5["status"] == "measured")]
    assert len(ours) == 4
    study = t5[t5["who"] == T.STUDY].set_index("model")
    assert study.loc["Qwen2-1.5B", "n_out_star"] == D.paper_table5().set_index("model").loc["Qwen2-1.5B",
                                                                                             "estimated_best_n_out"]
    ratios = T.table5_ratios(t5).set_index(["model", "measured_on"])
    assert "Tiny-Model" not in ratios.index.get_level_values("model")  # the study has no such model
    hf = ratios.loc[("Llama-3.2-1B", f"{H100}, hf engine")]
    lean = ratios.loc[("Llama-3.2-1B", f"{H200}, lean engine, sampled protocol")]
    for k in ("theta0", "theta2", "theta4"):  # the terms the grid pins down
        assert hf[k] == pytest.approx(1.0, rel=0.1) and lean[k] == pytest.approx(1.3, rel=0.1)
    assert hf["n_out_star"] == pytest.approx(1.0, rel=0.2)
    assert t5.loc[t5["status"] == T.NOT_MEASURED, "theta0"].isna().all()


def test_coefficient_frame_gives_intervals_and_sign_shares(two_engines):
    frame = T.coefficient_frame(two_engines, n_boot=200)
    measured = frame[frame["status"] == "measured"]
    assert len(measured) == 4 * 6 and (frame["status"] == T.NOT_MEASURED).sum() == len(STUDY_ORDER) - 2
    assert measured["sign_share"].between(0, 1).all()
    assert (measured["boot_low"] <= measured["value"]).all() and (measured["value"] <= measured["boot_high"]).all()
    assert (measured["excludes_zero"] == ((measured["boot_low"] > 0) | (measured["boot_high"] < 0))).all()
    t0 = measured[measured["coefficient"] == "theta0"]
    assert (t0["sign_share"] == 1).all() and t0["excludes_zero"].all()
    # Shared noise within a prefix group: the group bootstrap is wider than the classical error assumes.
    ratio = (measured["se_bootstrap"] / measured["se_classical"]).median()
    assert ratio > 1
    summary = T.sign_summary(frame)
    assert list(summary.index) == [f"theta{i}" for i in range(6)] and (summary["grids"] == 4).all()
    assert summary.loc["theta0", "excludes_zero"] == 4 and summary["min_sign_share"].between(0, 1).all()


def test_a_null_theta5_is_not_determined_and_a_real_one_is():
    null = {**D.paper_thetas("Llama-3.2-1B"), "theta5": 0.0}
    real = {**D.paper_thetas("Llama-3.2-1B"), "theta5": 2.0}
    table = pd.concat([grid("Llama-3.2-1B", null, noise=0.01, seed=5), grid("OPT-1.3B", real, noise=0.002, seed=6)])
    frames = {w: T.coefficient_frame(table, weighting=w, n_boot=300) for w in ("none", "relative")}
    v = T.verdicts(frames)
    assert v["OPT-1.3B"].kind == "positive" and v["OPT-1.3B"].determined
    assert v["Llama-3.2-1B"].kind in ("not determined", "changes sign") and not v["Llama-3.2-1B"].determined
    by_w = T.coefficient_by_weighting(frames, "theta5")
    assert list(by_w["model"].unique()) == ["Llama-3.2-1B", "OPT-1.3B"] and set(by_w["weighting"]) == {"none",
                                                                                                      "relative"}
    opt = by_w[(by_w["model"] == "OPT-1.3B") & (by_w["weighting"] == "none")].iloc[0]
    assert opt["study"] == D.paper_thetas("OPT-1.3B")["theta5"]
    assert opt["study_over_ours"] == pytest.approx(opt["study"] / opt["value"])


def _frame(rows):
    base = dict(status="measured", label="M", measured_on="here", coefficient="theta5")
    return pd.DataFrame([dict(base, **r) for r in rows])


def test_verdicts_read_signs_and_intervals():
    pos = _frame([dict(model="a", value=1.0, excludes_zero=True, sign_share=0.99)])
    undetermined = _frame([dict(model="a", value=1.0, excludes_zero=False, sign_share=0.9)])
    neg = _frame([dict(model="a", value=-1.0, excludes_zero=True, sign_share=0.97)])
    assert T.verdicts({"none": pos, "relative": pos})["a"].kind == "positive"
    assert T.verdicts({"none": pos, "relative": undetermined})["a"].kind == "not determined"
    assert T.verdicts({"none": pos, "relative": undetermined})["a"].min_sign_share == 0.9
    assert T.verdicts({"none": pos, "relative": neg})["a"].kind == "changes sign"
    assert T.verdicts({"none": neg, "relative": neg})["a"].kind == "negative"


def test_the_misleading_p_value_is_a_small_p_with_an_interval_across_zero():
    frame = _frame([dict(model="a", coefficient="theta1", p_classical=1e-6, excludes_zero=False, sign_share=0.8),
                    dict(model="a", coefficient="theta2", p_classical=1e-9, excludes_zero=True, sign_share=1.0),
                    dict(model="b", coefficient="theta5", p_classical=0.01, excludes_zero=False, sign_share=0.9),
                    dict(model="b", coefficient="theta3", p_classical=0.5, excludes_zero=False, sign_share=0.6)])
    worst = T.misleading_p_value(frame)
    assert (worst["model"], worst["coefficient"]) == ("a", "theta1")
    assert T.misleading_p_value(frame[frame["coefficient"].isin(["theta2", "theta3"])]) is None


# --- the committed grids -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def committed():
    table = T.study_grids()
    if table.empty:
        pytest.skip("no committed grid")
    return table


def test_the_committed_grids_fill_the_tables(committed):
    assert set(committed["protocol"]) <= set(T.PROTOCOLS)
    t3 = T.table3(committed)
    measured = t3[t3["status"] == "measured"]
    assert len(measured) == len(T.grids(committed)) >= 1
    assert all(g in r for g, r in zip(measured["gpu"], measured["measured_on"]))
    assert all(f"{e} engine" in r for e, r in zip(measured["engine"], measured["measured_on"]))
    assert all("GPU-" in s for s in measured["source"])
    assert set(t3["model"]) >= set(STUDY_ORDER)
    frame = T.coefficient_frame(committed, n_boot=200)
    assert frame.loc[frame["status"] == "measured", "sign_share"].between(0, 1).all()


def test_without_any_grid_every_study_model_is_one_row_to_measure():
    empty = pd.DataFrame(columns=["gpu", "engine", "protocol", "model", "n_in", "n_out", "j_per_token"])
    t3 = T.table3(empty)
    ours = t3[t3["who"] == T.OURS]
    assert list(ours["model"]) == STUDY_ORDER and (ours["status"] == T.NOT_MEASURED).all()
    assert len(t3) == 2 * len(STUDY_ORDER)
    frame = T.coefficient_frame(empty)
    assert len(frame) == len(STUDY_ORDER) and T.sign_summary(frame).empty
    assert T.misleading_p_value(frame) is None and T.table5_ratios(T.table5(empty)).empty
