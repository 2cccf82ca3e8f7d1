"""Tests of energybook.report.plot: the book's figures, drawn off screen, and the figure rules."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from energybook.model import paper as data  # noqa: E402
from energybook.report import plot  # noqa: E402

THREE = ["Llama-3.2-1B", "OPT-1.3B", "Qwen2-1.5B"]
#: The width of the book's text column on a phone 390 px wide (CSS px); tests/test_book_html.py checks
#: that no figure is shown there below 0.6 of its size.
PHONE_PX = 340


@pytest.fixture(scope="module")
def surfaces():
    return data.paper_surfaces()


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _labels(ticklabels):
    return [t.get_text() for t in ticklabels]


def test_efficiency_curves_draw_one_line_per_model(surfaces):
    plot.set_theme()
    ax = plot.efficiency_curves(surfaces, n_in=64)
    assert len(ax.get_lines()) == surfaces["model"].nunique() == 13
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "output length n_out (tokens)"
    assert ax.get_title() == ""


def test_thirteen_lines_are_distinguishable_and_humanly_labelled(surfaces):
    ax = plot.efficiency_curves(surfaces, n_in=64)
    lines = ax.get_lines()
    styles = {(tuple(np.round(matplotlib.colors.to_rgb(ln.get_color()), 3)), ln.get_marker(), ln.get_linestyle())
              for ln in lines}
    assert len(styles) == 13
    # No two lines share both colour and dash: each one can be told apart without its marker.
    assert len({(c, ls) for c, _, ls in styles}) == 13
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Llama 3.2 1B" in legend and "Falcon-RW 7.5B" in legend
    assert not any("-" in t and " " not in t for t in legend), legend  # no code names like "OPT-1.3B"


def test_model_styles_are_the_same_whichever_models_a_figure_shows():
    alone = plot.model_styles(["OPT-1.3B"])["OPT-1.3B"]
    among = plot.model_styles(THREE)["OPT-1.3B"]
    assert alone == among
    family = plot.model_styles(["OPT-1.3B", "OPT-2.7B", "Llama-3.2-1B"])
    assert family["OPT-1.3B"]["color"] == family["OPT-2.7B"]["color"] != family["Llama-3.2-1B"]["color"]
    assert family["OPT-1.3B"]["marker"] != family["OPT-2.7B"]["marker"]
    assert "NewModel-1B" in plot.model_styles(["NewModel-1B"])


def test_efficiency_curves_with_a_reference_draw_dashed_twins(surfaces):
    three = surfaces[surfaces["model"].isin(THREE)]
    ax = plot.efficiency_curves(three, n_in=64, models=THREE, reference=three)
    lines = ax.get_lines()
    assert len(lines) == 6 and sum(ln.get_linestyle() == "--" for ln in lines) == 3
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-2:] == ["our measurement", "the study's fit"]


def test_efficiency_curves_reject_a_missing_input_length(surfaces):
    with pytest.raises(ValueError, match="n_in = 100"):
        plot.efficiency_curves(surfaces, n_in=100)


def test_efficiency_curves_reject_missing_columns(surfaces):
    with pytest.raises(ValueError, match="tokens_per_j"):
        plot.efficiency_curves(surfaces.drop(columns="tokens_per_j"))


def test_heatmap_is_the_7x7_grid_with_n_in_increasing_upward(surfaces):
    ax = plot.heatmap(surfaces, "Llama-3.2-1B")
    assert len(ax.get_xticklabels()) == len(ax.get_yticklabels()) == 7
    assert ax.get_ylabel() == "input length n_in (tokens)"
    assert len(ax.texts) == 49
    positions = ax.get_yticks()
    labels = [int(t) for t in _labels(ax.get_yticklabels())]
    assert list(np.argsort(positions)) == list(range(7))
    assert labels == sorted(labels) and labels[0] == 64  # the lowest row is the shortest input
    # The cell at the bottom left is (n_in 64, n_out 64).
    llama = surfaces[surfaces["model"] == "Llama-3.2-1B"].set_index(["n_in", "n_out"])
    bottom_left = [t for t in ax.texts if t.get_position() == (0.5, 0.5)][0]
    assert bottom_left.get_text() == f"{llama.loc[(64, 64), 'tokens_per_j']:.3g}"


def test_heatmap_log_colour_bar_has_plain_number_ticks(surfaces):
    ax = plot.heatmap(surfaces, "Llama-3.2-1B")
    cbar_ax = ax.figure.axes[-1]
    labels = _labels(cbar_ax.get_yticklabels())
    assert labels and all(lbl.replace(".", "").isdigit() for lbl in labels), labels
    assert "10" in labels and "100" in labels


def test_heatmap_rejects_an_unknown_model(surfaces):
    with pytest.raises(ValueError, match="not in the table"):
        plot.heatmap(surfaces, "GPT-5")


def test_heatmaps_share_one_colour_scale_one_panel_per_row(surfaces):
    fig = plot.heatmaps(surfaces, models=THREE)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Llama 3.2 1B", "OPT 1.3B", "Qwen2 1.5B"]
    norms = {(ax.collections[0].norm.vmin, ax.collections[0].norm.vmax) for ax in panels}
    assert len(norms) == 1
    vmin, vmax = norms.pop()
    three = surfaces[surfaces["model"].isin(THREE)]["tokens_per_j"]
    assert vmin == pytest.approx(three.min()) and vmax == pytest.approx(three.max())
    assert isinstance(panels[0].collections[0].norm, LogNorm)
    assert len(fig.axes) == 4  # three panels and one colour bar
    assert fig.get_figwidth() <= plot.PANEL_WIDTH_IN  # shown at >= 0.6 of its size on a phone
    columns = {round(ax.get_position().x0, 2) for ax in panels}
    assert len(columns) == 1  # one panel per row
    assert not any(ax.texts for ax in panels)  # small multiples carry no cell labels
    # The output lengths are labelled once, under the last panel.
    assert [bool(ax.get_xlabel()) for ax in panels] == [False, False, True]
    two = plot.heatmaps(surfaces, models=THREE, ncols=2)
    assert len({round(ax.get_position().x0, 2) for ax in two.axes if ax.get_title()}) == 2
    assert two.get_figwidth() <= plot.MAX_WIDTH_IN


def test_default_figures_fit_a_phone(surfaces):
    """Every figure the module draws on its own is at most MAX_WIDTH_IN wide (a phone shows the book's
    text column at about 340 px: a wider figure is scaled below 0.6 and its labels stop reading), and a
    single heat map's cell labels are no smaller than the axis tick labels."""
    three = surfaces[surfaces["model"].isin(THREE)]
    spots = pd.DataFrame({"model": ["Llama-3.2-1B"] * 2, "n_in": [64, 128], "n_out_star": [200.0, 280.0]})
    figures = [plot.efficiency_curves(surfaces, n_in=64).figure, plot.heatmap(surfaces, "Llama-3.2-1B").figure,
               plot.heatmaps(three), plot.residuals(three.assign(residual_pct=1.0)),
               plot.mape_dots(pd.DataFrame({k: [100.0, 2.0] for k in plot.SCHEME_LABELS},
                                           index=["baseline1_const", "memory_flops_model"])).figure,
               plot.sweet_spot_curves(spots).figure,
               plot.efficiency_by_model(three, {m: "GQA" for m in THREE}, models=THREE).figure,
               plot.correlation_matrix(pd.DataFrame(np.eye(2), index=["theta0", "theta1"],
                                                    columns=["theta0", "theta1"])).figure]
    for fig in figures:
        assert fig.get_figwidth() <= plot.MAX_WIDTH_IN, fig.get_figwidth()
        # What the page shows: the tight box around everything drawn, legends below the axes included.
        fig.canvas.draw()
        drawn = fig.get_tightbbox(fig.canvas.get_renderer()).width
        assert drawn <= PHONE_PX / 0.6 / 100, (fig.axes[0].get_xlabel(), drawn)
    ax = plot.heatmap(surfaces, "Llama-3.2-1B")
    assert ax.figure.get_figwidth() <= plot.PANEL_WIDTH_IN
    tick = ax.get_xticklabels()[0].get_fontsize()
    assert min(t.get_fontsize() for t in ax.texts) >= tick


def test_a_one_value_grid_still_gets_a_labelled_log_scale(surfaces):
    one = surfaces[(surfaces["model"] == "Llama-3.2-1B") & (surfaces["n_in"] == 64) & (surfaces["n_out"] == 64)]
    ax = plot.heatmap(one, "Llama-3.2-1B")
    norm = ax.collections[0].norm
    assert norm.vmin < one["tokens_per_j"].iloc[0] < norm.vmax


def test_heatmaps_centred_ratio_scale_is_symmetric(surfaces):
    t = surfaces[surfaces["model"].isin(THREE)].assign(ratio=lambda d: d["tokens_per_j"] / d["tokens_per_j"].median())
    fig = plot.heatmaps(t, models=THREE, value="ratio", center=1.0)
    norm = fig.axes[0].collections[0].norm
    assert norm.vmin * norm.vmax == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in the table"):
        plot.heatmaps(t, models=["GPT-5"])


def test_log_ticks_and_format_number():
    assert plot.log_ticks(2, 120) == [2, 5, 10, 20, 50, 100]
    narrow = plot.log_ticks(0.6, 1.6)
    assert len(narrow) >= 3 and all(0.6 <= t <= 1.6 for t in narrow)
    with pytest.raises(ValueError):
        plot.log_ticks(0, 10)
    assert [plot.format_number(x) for x in (1, 2.5, 0.05, 1000, 120.7)] == ["1", "2.5", "0.05", "1000", "121"]


def test_human_labels():
    assert plot.model_label("Llama-3.2-1B") == "Llama 3.2 1B"
    assert plot.model_label("Some-Model") == "Some Model"
    assert plot.formula_label("baseline1_const") == "Baseline 1"
    assert plot.formula_label("memory_flops_model") == "Memory+FLOPs"


def test_mape_dots_use_formula_names_and_a_labelled_log_axis():
    t = pd.DataFrame({"in_sample": [100.0, 1.5], "kfold": [110.0, 2.0]}, index=["baseline1_const", "flops_model"])
    ax = plot.mape_dots(t)
    assert _labels(ax.get_yticklabels()) == ["Baseline 1", "FLOPs-based"]
    assert ax.get_xscale() == "log"
    assert "100" in _labels(ax.get_xticklabels())
    assert [x.get_text() for x in ax.get_legend().get_texts()] == ["in sample", "random folds"]


def test_correlation_matrix_and_residuals(surfaces):
    corr = pd.DataFrame(np.eye(3), index=["theta0", "theta1", "theta2"], columns=["theta0", "theta1", "theta2"])
    ax = plot.correlation_matrix(corr)
    assert len(ax.texts) == 9 and "-0.00" not in _labels(ax.texts)
    assert _labels(ax.get_yticklabels())[-1] == r"$\theta_0$"  # the first coefficient at the top
    t = surfaces[surfaces["model"].isin(THREE)].assign(residual_pct=0.5)
    fig = plot.residuals(t, models=THREE)
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 3 and all(len(a.get_lines()) == 7 + 1 for a in panels)


def test_sweet_spot_curves_and_efficiency_by_model(surfaces):
    spots = pd.DataFrame({"model": ["Llama-3.2-1B"] * 3, "n_in": [64, 128, 256], "n_out_star": [200.0, 280.0, 400.0]})
    ax = plot.sweet_spot_curves(spots, reference=spots.assign(n_out_star=spots["n_out_star"] * 2))
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    three = surfaces[surfaces["model"].isin(THREE)]
    ax = plot.efficiency_by_model(three, {"Llama-3.2-1B": "GQA", "OPT-1.3B": "MHA", "Qwen2-1.5B": "GQA"},
                                  models=THREE)
    assert _labels(ax.get_xticklabels()) == ["Llama 3.2 1B", "OPT 1.3B", "Qwen2 1.5B"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["GQA", "MHA"]


def test_log2_axis_labels_every_grid_value_in_plain_tokens():
    _, ax = plt.subplots()
    ax.plot([64, 4096], [1, 2])
    plot.log2_axis(ax, [64, 256, 1024, 4096])
    assert ax.get_xscale() == "log"
    assert _labels(ax.get_xticklabels()) == ["64", "256", "1024", "4096"]


def test_measuring_time_draws_a_pair_of_bars_per_group():
    table = pd.DataFrame({"model": ["Llama-3.2-1B"] * 2, "n_in": [64, 64], "batch": [500, 1000],
                          "n_out": [4096, 1024], "window_s": [90.0, 19.0], "bound_s": [51.0, 7.6]})
    ax = plot.measuring_time(table, "Llama-3.2-1B")
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == [7.6, 19.0, 51.0, 90.0]
    assert "(s)" in ax.get_xlabel() and len(ax.get_yticks()) == 2
    with pytest.raises(ValueError, match="no rows for model"):
        plot.measuring_time(table, "OPT-1.3B")
