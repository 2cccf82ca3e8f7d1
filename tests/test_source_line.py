"""Every figure and table of measurements names its GPU (name and UUID) and engine (issue 22, item 1)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from energybook.report import analysis, plot  # noqa: E402
from energybook.report import provenance as P  # noqa: E402
from energybook.report import views as V  # noqa: E402
from energybook.store.loader import MeasuredRun  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"
UUID_A = "GPU-b676fe77-a2fb-fa13-fd3b-9db31628fa95"
A100 = "NVIDIA A100-SXM4-40GB"
UUID_B = "GPU-0a1b2c3d-1111-2222-3333-444455556666"
GRID = [64, 256, 1024]


def _rows(model: str) -> pd.DataFrame:
    rows = [dict(model=model, n_in=a, n_out=b, n_req=10, energy_j=float(a + b), tokens_out=10 * b, duration_s=1.0)
            for a in GRID for b in GRID]
    t = pd.DataFrame(rows)
    t["j_per_token"] = t["energy_j"] / t["tokens_out"]
    t["tokens_per_j"] = 1 / t["j_per_token"]
    return t


def _run(model: str, gpu: str, uuid: str, engine: str = "torch") -> MeasuredRun:
    prov = {"model": model, "gpu": gpu, "gpu_uuid": uuid, "engine": {"engine": engine},
            "runs": [{"started_at": "2026-01-01T00:00:00Z", "gpu_uuid": uuid}]}
    return MeasuredRun(data=_rows(model), provenance=prov, path=Path(f"/nowhere/{model}/grid.csv"))


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture
def two_gpus() -> pd.DataFrame:
    """A measured table of two models, one measured on an H100 (hf engine), one on an A100 (vllm)."""
    runs = [_run("Llama-3.2-1B", H100, UUID_A), _run("OPT-1.3B", A100, UUID_B, engine="vllm")]
    table = pd.concat([r.data for r in runs], ignore_index=True)
    return P.attach_sources(table, runs)


def test_source_line_names_gpu_uuid_and_engine_from_the_sidecar():
    line = P.source_line(_run("Llama-3.2-1B", H100, UUID_A))
    assert line == f"measured on {H100} ({UUID_A}), hf engine"


def test_source_line_reads_the_engine_name_and_every_board_of_a_sidecar():
    prov = {"model": "Qwen2-1.5B", "gpu": H100, "gpu_uuid": UUID_B, "engine_name": "vllm",
            "runs": [{"gpu_uuid": UUID_A}, {"gpu_uuid": UUID_B}], "points": {"64x64x0": {"gpu_uuid": UUID_A}}}
    assert P.source_line(prov) == f"measured on {H100} ({UUID_A}, {UUID_B}), vllm engine"
    assert P.gpu_count(prov) == 2


def test_two_gpus_are_both_named(two_gpus):
    line = P.source_line(two_gpus)
    assert line == f"measured on {H100} ({UUID_A}), hf engine; {A100} ({UUID_B}), vllm engine"
    # A model's rows name only its own GPU, however the table was filtered.
    assert P.source_line(two_gpus[two_gpus["model"] == "OPT-1.3B"]) == f"measured on {A100} ({UUID_B}), vllm engine"
    assert P.source_line(two_gpus, models=["Llama-3.2-1B"]) == f"measured on {H100} ({UUID_A}), hf engine"


def test_a_table_without_measurements_gets_no_line():
    assert P.source_line(_rows("Llama-3.2-1B")) == ""
    assert P.source_line([]) == ""
    assert plot.stamp_source(plt.figure(), _rows("Llama-3.2-1B")) is None


def _footer(fig) -> str:
    texts = [t.get_text() for t in fig.texts if isinstance(t, plot.SourceFooter)]
    assert len(texts) == 1, [t.get_text() for t in fig.texts]
    return texts[0].replace("\n", " ")


def test_plot_functions_stamp_the_source_of_a_measured_table(two_gpus):
    ax = plot.heatmap(two_gpus, "Llama-3.2-1B")
    text = _footer(ax.figure)
    assert H100 in text and UUID_A in text and "hf engine" in text
    assert A100 not in text  # the heat map shows Llama only

    fig = plot.heatmaps(two_gpus)
    text = _footer(fig)
    for part in (H100, UUID_A, "hf engine", A100, UUID_B, "vllm engine"):
        assert part in text

    ax = plot.efficiency_curves(two_gpus, n_in=64)
    text = _footer(ax.figure)
    assert UUID_A in text and UUID_B in text

    ax = plot.efficiency_by_model(two_gpus, {"Llama-3.2-1B": "GQA", "OPT-1.3B": "MHA"})
    assert UUID_B in _footer(ax.figure)


def test_views_heat_maps_stamp_the_measured_views(two_gpus):
    views = V.energy_views(two_gpus)
    norm = V.shared_log_norm([views], "j_per_output_token", 1e3)
    fig = V.heatmap_panels({"OPT": views[views["model"] == "OPT-1.3B"]}, "j_per_output_token", norm, "mJ", scale=1e3)
    assert _footer(fig) == f"measured on {A100} ({UUID_B}), vllm engine"


def test_the_footer_sits_under_the_axes_and_their_legends(two_gpus):
    ax = plot.efficiency_curves(two_gpus, n_in=64)
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    footer = plot.source_footer(fig).get_window_extent(renderer)
    drawn = ax.get_tightbbox(renderer)
    assert footer.y1 < drawn.y0  # below everything the axes hold, its labels and legend included


def test_stamping_twice_names_each_source_once(two_gpus):
    fig, axes = plt.subplots(1, 2)
    plot.heatmap(two_gpus, "Llama-3.2-1B", ax=axes[0])
    plot.heatmap(two_gpus, "OPT-1.3B", ax=axes[1])
    plot.stamp_source(fig, two_gpus)
    text = _footer(fig)
    assert text.count(UUID_A) == 1 and text.count(UUID_B) == 1


def test_a_prediction_figure_is_not_stamped():
    ax = plot.efficiency_curves(_rows("Llama-3.2-1B"), n_in=64)
    assert plot.source_footer(ax.figure) is None


def test_tables_show_the_source_line(two_gpus):
    html = P.with_source(two_gpus).to_html()
    assert f"<caption>measured on {H100} ({UUID_A}), hf engine; {A100} ({UUID_B}), vllm engine</caption>" in html
    html = analysis.scroll_table(two_gpus[two_gpus["model"] == "OPT-1.3B"]).data
    assert f"measured on {A100} ({UUID_B}), vllm engine" in html and UUID_A not in html
    html = P.scroll_table(two_gpus.round(2))._repr_html_()
    assert UUID_A in html and UUID_B in html
    assert f"measured on {H100} ({UUID_A}), hf engine" in V.table_html(two_gpus[two_gpus["model"] == "Llama-3.2-1B"])


def test_the_repository_measured_table_names_its_h100():
    table = analysis.measured_table()
    if table.empty:
        pytest.skip("no measured data in this checkout")
    llama = table[table["model"] == "Llama-3.2-1B"]
    if llama.empty:
        pytest.skip("Llama-3.2-1B is not measured in this checkout")
    assert P.source_line(llama) == f"measured on {H100} ({UUID_A}), hf engine"
    assert UUID_A in _footer(plot.heatmap(table, "Llama-3.2-1B").figure)


def test_the_measurement_template_stamps_its_figure_and_captions_its_tables():
    import json

    from energybook import resources

    nb = json.loads(resources.path("notebooks", "measure.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("plot.heatmap(" in c and "plot.stamp_source(ax, run)" in c for c in code)
    assert sum("provenance.with_source(" in c for c in code) == 3


def test_cleaning_a_measurement_page_names_the_gpu_under_its_tables_and_figure(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Measuring"),
                nbformat.v4.new_code_cell("table.round(2)", outputs=[nbformat.v4.new_output(
                    "execute_result", data={"text/html": "<table><tr><td>1</td></tr></table>"}, execution_count=1)]),
                nbformat.v4.new_code_cell("prov = run.provenance", outputs=[nbformat.v4.new_output(
                    "execute_result", data={"text/html": "<table><tr><td>gpu</td></tr></table>"}, execution_count=2)]),
                nbformat.v4.new_code_cell("plot.heatmap(df)", outputs=[nbformat.v4.new_output(
                    "display_data", data={"image/png": "iVBORw0KGgo="})])]
    path = tmp_path / "Llama-3.2-1B.ipynb"
    nbformat.write(nb, str(path))
    prov = _run("Llama-3.2-1B", H100, UUID_A).provenance
    line = f"measured on {H100} ({UUID_A}), hf engine"
    P.clean_measurement_notebook(path, prov)
    once = path.read_text()
    P.clean_measurement_notebook(path, prov)
    assert path.read_text() == once  # cleaning twice changes nothing
    cells = nbformat.read(str(path), as_version=4).cells
    table, sidecar, figure = (c for c in cells if c.cell_type == "code")
    assert line in table.outputs[0]["data"]["text/html"]
    assert line not in sidecar.outputs[0]["data"]["text/html"]
    assert figure.metadata["mystnb"]["figure"]["caption"].endswith(f"Measured on {H100} ({UUID_A}), hf engine.")
