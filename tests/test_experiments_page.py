"""The study's other experiments (energybook.report.experiments): their plans agree with the runner's, each shows
"not measured yet" with its command and points while no file exists, a committed-like file is drawn and names its
GPU, and the recheck flags a point beyond its bound. The results files here are written by hand and marked as test
data (fabricated rows, tests only)."""

from __future__ import annotations

import html
import importlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from energybook.model import paper  # noqa: E402
from energybook.model.complexity import GRID  # noqa: E402
from energybook.report import experiments as E  # noqa: E402
from energybook.report import plot  # noqa: E402
from energybook.report import protocols as PC  # noqa: E402
from energybook.store import results as R  # noqa: E402
from energybook.store.loader import MeasuredRun  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"
UUID = "GPU-b676fe77-a2fb-fa13-fd3b-9db31628fa95"
FOLDER = "nvidia-h100-80gb-hbm3"


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _write(path: Path, model: str, cells, tokens_per_j, mode: str = "prefix", **protocol) -> Path:
    """A results file with its sidecar, as a sweep writes it, marked as test data; ``tokens_per_j(n_in, n_out)``
    gives each row's efficiency (fabricated)."""
    proto = {"n_req": 1000, "max_batch": 1024, "mode": mode, "seed": 0, "engine": "lean",
             "n_in": sorted({a for a, _ in cells}), "n_out": sorted({b for _, b in cells}), **protocol}
    rf = R.ResultsFile(path)
    rf.start({"model": model, "gpu": H100, "gpu_uuid": UUID, "driver": "580.0", "meter_method": "counter",
              "weights": "dummy", "dtype": "bfloat16", "device": "cuda", "test_data": True,
              "started_at": "2026-03-01T10:00:00Z", "engine_name": "lean", "engine": {"engine": "lean"},
              "protocol": proto, "command": f"energybook sweep --model {model}"})
    n_req = proto["n_req"]
    for a, b in cells:
        t = float(tokens_per_j(a, b))
        tokens = n_req * b
        rf.append({"model": model, "n_in": a, "n_out": b, "rep": 0, "n_req": n_req, "batch": min(n_req, 1024),
                   "mode": mode, "energy_j": tokens / t, "energy_j_power500": tokens / t,
                   "energy_j_power100": tokens / t, "duration_s": 10.0, "tokens_in": n_req * a, "tokens_out": tokens,
                   "j_per_token": 1 / t, "tokens_per_j": t, "power_w": tokens / t / 10.0, "gpu": H100,
                   "gpu_uuid": UUID, "engine": "lean"}, {"gpu_uuid": UUID})
    rf.close()
    return path


def _footer(fig) -> str:
    texts = [t.get_text() for t in fig.texts if isinstance(t, plot.SourceFooter)]
    assert len(texts) == 1
    return texts[0].replace("\n", " ")


# --- the plans ------------------------------------------------------------------------------------------------
def test_the_plans_are_the_runners(tmp_path):
    """Every file benchmarks/study_experiments.py writes is a planned run here, with the same model, points,
    requests, batch cap, weights and prompts, and nothing else is planned."""
    from energybook import cli

    bench = importlib.import_module("benchmarks.study_experiments")
    parser = cli.build_parser()
    cmds = bench.commands("lean", FOLDER, str(tmp_path))
    for key in ("request_count", "batch_size", "batch_axis", "weights"):
        runner = {}
        for name, argv in cmds[key]:
            a = parser.parse_args(argv[1:])
            assert Path(a.output) == tmp_path / "experiments" / FOLDER / "lean" / key / f"{name}.csv"
            runner[name] = (a.model[0], tuple(sorted((i, o) for i in a.n_in for o in a.n_out)), a.n_req, a.max_batch,
                            a.weight_init, a.prompts, a.mode)
        ours = {r.name: (r.model, tuple(sorted(r.points)), r.n_req, r.max_batch, r.weight_init, r.prompts, r.mode)
                for r in E.EXPERIMENTS[key].runs}
        assert ours == runner, key
        assert E.EXPERIMENTS[key].commands == (f"python benchmarks/study_experiments.py --run {key} --engine lean",)
        assert key in bench.EXPERIMENTS


def test_the_recheck_has_one_distinct_cell_per_study_model_and_a_command_the_cli_takes():
    from energybook import cli
    from energybook.model.architecture import STUDY_ORDER

    exp = E.EXPERIMENTS["recheck"]
    assert [r.model for r in exp.runs] == STUDY_ORDER
    cells = [r.points[0] for r in exp.runs]
    assert len(set(cells)) == len(cells) and all(a in GRID and b in GRID for a, b in cells)
    parser = cli.build_parser()
    for run, command in zip(exp.runs, exp.commands):
        a = parser.parse_args(command.split()[1:])
        assert a.mode == "full" and a.engine == "lean" and a.output is None and a.model == [run.model]
        assert a.pairs == [f"{run.points[0][0]}x{run.points[0][1]}"]


def test_the_study_numbers_come_from_the_table():
    assert E.EXPERIMENTS["batch_size"].study_table().loc["batch_llama32_1b_peak_max_batch_64", "value"] == "48.90"
    assert set(E.EXPERIMENTS["request_count"].study_table()["where"]) == {
        paper.quoted_table().set_index("key").loc["nreq10_falcon_rw_tokens_per_j_min", "where"]} | {
        paper.quoted_table().set_index("key").loc["falcon_rw_tokens_per_j_peak", "where"]}
    assert E.EXPERIMENTS["weights"].study_table().empty
    summary = E.EXPERIMENTS["batch_size"].study_summary()
    assert "48.90 tokens/J" in set(summary["the study"]) and summary["where"].str.endswith(", v1").all()


# --- not measured yet -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(E.EXPERIMENTS))
def test_not_measured_lists_the_command_and_every_point(key, tmp_path):
    exp = E.EXPERIMENTS[key]
    assert exp.files(tmp_path) == {} and exp.missing(tmp_path) == exp.runs and exp.load(tmp_path) == []
    shown = exp.not_measured()
    page = html.unescape(shown._repr_html_())
    assert "Not measured yet" in page and exp.lands in page
    for command in exp.commands:
        assert command in page and command in repr(shown)
    table = shown.table()
    assert table["files"].sum() == len(exp.runs)
    for run in exp.runs:
        row = table[(table["model"] == run.model) & (table["N_req"] == run.n_req) & (table["max_batch"] ==
                                                                                     run.max_batch)]
        assert len(row) >= 1
        text = " ".join(row["points"])
        if "grid" not in run.points_text and "n_out 64..4096" not in run.points_text:
            assert all(f"({a}, {b})" in text for a, b in run.points), (run.name, text)
        else:
            assert run.points_text in text


@pytest.mark.parametrize("draw", [E.request_count_figure, E.batch_size_figure, E.batch_axis_figure, E.weights_figure,
                                  E.weights_table, E.recheck_table])
def test_every_figure_and_table_says_not_measured_without_files(draw, tmp_path):
    shown = draw(data=tmp_path)
    assert isinstance(shown, E.NotMeasured) and shown.runs == shown.experiment.runs


def test_points_text_names_the_grid_a_row_or_the_cells():
    assert E.points_text([(a, b) for a in GRID for b in GRID]).startswith("7 x 7 grid")
    assert E.points_text([(64, b) for b in GRID]) == "n_in 64, n_out 64..4096 (7 points)"
    assert E.points_text([(512, 512), (64, 256)]) == "(64, 256), (512, 512)"


# --- a committed-like file is drawn -----------------------------------------------------------------------------
def _batch_files(root: Path) -> dict[int, float]:
    """Two batch-size files (max_batch 64 and 1024, N_req 1000): tokens/J 10 max_batch^0.25 / (n_out / 256)^0.1."""
    base = {}
    for mb in (64, 1024):
        path = root / "experiments" / FOLDER / "lean" / "batch_size" / f"llama-3.2-1b-maxbatch{mb}-nreq1000.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, "Llama-3.2-1B", [(64, b) for b in GRID], lambda a, b, mb=mb: 10 * mb ** 0.25 / (b / 256) ** 0.1,
               max_batch=mb)
        base[mb] = 10 * mb ** 0.25
    return base


def test_the_batch_size_figure_draws_a_committed_file_beside_the_study_and_names_the_gpu(tmp_path):
    base = _batch_files(tmp_path)
    exp = E.EXPERIMENTS["batch_size"]
    assert len(exp.missing(tmp_path)) == len(exp.runs) - 2
    with pytest.raises(R.DataError, match="not a real GPU measurement"):
        exp.load(tmp_path)  # test data never reach a page
    runs = exp.load(tmp_path, allow_test_data=True)
    fig = E.batch_size_figure(runs)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    text = _footer(fig)
    assert H100 in text and UUID in text and "lean engine" in text
    n256 = fig.axes[0]
    ours = [ln for ln in n256.get_lines() if ln.get_label().startswith("ours")]
    assert len(ours) == 1 and list(ours[0].get_xdata()) == [64, 1024]
    assert list(ours[0].get_ydata()) == pytest.approx([base[64], base[1024]], rel=1e-4)
    study = [ln for ln in n256.get_lines() if ln.get_label() == "the study"]
    assert list(study[0].get_ydata()) == [paper.quoted("llama32_1b_tokens_per_j_nin64_nout256")]
    n4096 = [ln for ln in fig.axes[1].get_lines() if ln.get_label() == "the study"][0]
    assert sorted(n4096.get_ydata()) == sorted([paper.quoted("batch_llama32_1b_nout4096_max_batch_1024"),
                                                paper.quoted("batch_llama32_1b_nout4096_max_batch_256")])
    peak = [ln for ln in fig.axes[2].get_lines() if ln.get_label().startswith("ours")][0]
    best = (64 / 256) ** -0.1  # the best output length is the shortest
    assert list(peak.get_ydata()) == pytest.approx([base[64] * best, base[1024] * best], rel=1e-4)
    files = E.files_table(runs)
    assert list(files["points"]) == [7, 7] and set(files["GPU"]) == {H100}


def test_the_request_count_figure_draws_the_grids_range_and_the_cells(tmp_path):
    exp = E.EXPERIMENTS["request_count"]
    root = tmp_path / "experiments" / FOLDER / "lean" / "request_count"
    root.mkdir(parents=True)
    grid = [(a, b) for a in GRID for b in GRID]
    for n_req in (10, 1000):
        _write(root / f"falcon-rw-7b-nreq{n_req}.csv", "Falcon-RW-7B", grid,
               lambda a, b, n=n_req: n ** 0.5 * b / a, n_req=n_req)
    _write(root / "llama-3.2-1b-64x256-nreq100.csv", "Llama-3.2-1B", [(64, 256)], lambda a, b: 50.0, n_req=100)
    fig = E.request_count_figure(exp.load(tmp_path, allow_test_data=True))
    assert len(fig.axes) == 2 and UUID in _footer(fig)
    high = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("ours, highest")][0]
    low = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("ours, lowest")][0]
    assert list(high.get_xdata()) == [10, 1000]
    assert list(high.get_ydata()) == pytest.approx([10 ** 0.5 * 64, 1000 ** 0.5 * 64], rel=1e-4)
    assert list(low.get_ydata()) == pytest.approx([10 ** 0.5 / 64, 1000 ** 0.5 / 64], rel=1e-4)
    study = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("the study")][0]
    assert paper.quoted("falcon_rw_tokens_per_j_peak") in list(study.get_ydata())
    cell = [ln for ln in fig.axes[1].get_lines() if ln.get_label().startswith("(64, 256)")][0]
    assert list(cell.get_ydata()) == [50.0]


def test_the_weights_bars_are_the_change_from_the_default(tmp_path):
    root = tmp_path / "experiments" / FOLDER / "lean" / "weights"
    root.mkdir(parents=True)
    cells = list(E.WEIGHT_CELLS)
    _write(root / "llama-3.2-1b-normal-0.02.csv", "Llama-3.2-1B", cells, lambda a, b: 100.0)
    _write(root / "llama-3.2-1b-zeros.csv", "Llama-3.2-1B", cells, lambda a, b: 110.0, weight_init="zeros")
    _write(root / "llama-3.2-1b-student_t-3-0.02.csv", "Llama-3.2-1B", cells, lambda a, b: 99.0 if a == 64 else 102.0,
           weight_init="student_t:3:0.02")
    runs = E.EXPERIMENTS["weights"].load(tmp_path, allow_test_data=True)
    table = E.weights_table(runs)
    zeros = table[table["variant"] == "all zeros"]
    assert len(zeros) == len(cells) and zeros["tokens_per_j_change_pct"].tolist() == pytest.approx([10.0] * 6)
    spread = E.weight_spread(table)
    assert spread.random_max_abs_pct == pytest.approx(2.0) and spread.zeros_max_pct == pytest.approx(10.0)
    assert spread.cells == 6 and pd.isna(spread.repeated_max_pct)
    fig = E.weights_figure(runs)
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == sorted([10.0] * 6 + [-1.0] * 3 + [2.0] * 3)
    assert UUID in _footer(fig) and "change in output tokens per joule" in fig.axes[0].get_ylabel()


# --- the recheck --------------------------------------------------------------------------------------------------
def _run(model, mode, values):
    prov = {"model": model, "gpu": H100, "gpu_uuid": UUID, "engine_name": "lean", "engine": {"engine": "lean"},
            "protocol": {"mode": mode, "n_req": 1000, "max_batch": 1024, "seed": 0, "engine": "lean"}}
    rows = [{"n_in": a, "n_out": b, "rep": 0, "batch": 1000, "tokens_per_j": v} for (a, b), v in values.items()]
    return MeasuredRun(pd.DataFrame(rows), prov, Path(f"/nowhere/{model}/{mode}.csv"))


def test_the_recheck_flags_a_point_beyond_two_percent():
    a, b = E.RECHECK_CELLS["OPT-1.3B"], E.RECHECK_CELLS["Qwen2-1.5B"]
    ok = PC.compare(_run("OPT-1.3B", "full", {a: 100.0, (64, 64): 1.0}),
                    _run("OPT-1.3B", "sampled", {a: 101.5, (64, 64): 5.0}))  # its cell 1.5% off; another cell ignored
    bad = PC.compare(_run("Qwen2-1.5B", "full", {b: 100.0}), _run("Qwen2-1.5B", "sampled", {b: 97.5}))
    table = E.recheck_table([ok, bad])
    assert list(table["model"]) == ["OPT-1.3B", "Qwen2-1.5B"]
    assert [(r.n_in, r.n_out) for r in table.itertuples()] == [a, b]
    assert table["difference_pct"].tolist() == pytest.approx([1.5, -2.5])
    assert table["within_bound"].tolist() == [True, False]
    assert E.recheck_table([bad], bound_pct=3.0)["within_bound"].tolist() == [True]
    from energybook.report.provenance import source_line

    assert UUID in source_line(table) and "lean engine" in source_line(table)


def test_the_recheck_finds_a_models_full_and_sampled_files(tmp_path):
    model = "Llama-3.2-1B"
    cell = E.RECHECK_CELLS[model]
    folder = tmp_path / "measured" / FOLDER / "lean" / model
    folder.mkdir(parents=True)
    _write(folder / "full.csv", model, [cell], lambda a, b: 100.0, mode="full", pairs=[list(cell)])
    assert E.recheck(tmp_path, allow_test_data=True) == []  # no sampled file beside it yet
    _write(folder / "sampled.csv", model, [cell, (64, 64)], lambda a, b: 103.0, mode="sampled")
    checks = E.recheck(tmp_path, allow_test_data=True)
    assert len(checks) == 1
    table = E.recheck_table(checks)
    assert table["difference_pct"].tolist() == pytest.approx([3.0]) and table["within_bound"].tolist() == [False]
