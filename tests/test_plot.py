"""Tests of energybook.report.plot: the figures of the counting chapter, drawn off screen."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from energybook.model import paper as data  # noqa: E402
from energybook.report import plot  # noqa: E402


@pytest.fixture(scope="module")
def surfaces():
    return data.paper_surfaces()


def test_efficiency_curves_draw_one_line_per_model(surfaces):
    plot.set_theme()
    ax = plot.efficiency_curves(surfaces, n_in=64)
    assert len(ax.get_lines()) == surfaces["model"].nunique() == 13
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "output length n_out (tokens)"
    assert ax.get_title() == ""
    plt.close(ax.figure)


def test_efficiency_curves_reject_a_missing_input_length(surfaces):
    with pytest.raises(ValueError, match="n_in = 100"):
        plot.efficiency_curves(surfaces, n_in=100)


def test_efficiency_curves_reject_missing_columns(surfaces):
    with pytest.raises(ValueError, match="tokens_per_j"):
        plot.efficiency_curves(surfaces.drop(columns="tokens_per_j"))


def test_heatmap_is_the_7x7_grid(surfaces):
    ax = plot.heatmap(surfaces, "Llama-3.2-1B")
    assert len(ax.get_xticklabels()) == len(ax.get_yticklabels()) == 7
    assert ax.get_ylabel() == "input length n_in (tokens)"
    assert len(ax.texts) == 49
    plt.close(ax.figure)


def test_heatmap_rejects_an_unknown_model(surfaces):
    with pytest.raises(ValueError, match="not in the table"):
        plot.heatmap(surfaces, "GPT-5")
