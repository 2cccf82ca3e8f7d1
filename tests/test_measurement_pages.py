"""The measurement pages' heat maps are drawn by the chapters' plotting code and carry no raw log lines
(issue 25, item 5): the committed pages under book/measurements/, the template that makes new ones, the
redraw that brought the old pages in line, and the heat map's label colours."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
from PIL import Image

from energybook import resources
from energybook.report import plot
from energybook.report import provenance as P
from energybook.report.plot_grids import annotation_color
from energybook.report.plot_style import LABELS, MAX_WIDTH_IN
from energybook.store import results as R

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "book" / "measurements").glob("*.ipynb"))
LOG_LINE = re.compile(r"^(?:DEBUG|INFO) [\w.]+: ", re.M)
REDRAW = "energybook.report.provenance.redraw_measurement_figures"

pytestmark = pytest.mark.skipif(not PAGES, reason="no committed measurement page")


def _read(path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def _texts(nb) -> list[str]:
    """Every printed or displayed text of the notebook's outputs."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                texts.append(out["text"])
            texts += [v for k, v in (out.get("data") or {}).items() if k.startswith("text/") and isinstance(v, str)]
    return texts


def _figure_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"
            and any("image/png" in (o.get("data") or {}) for o in c.get("outputs", []))]


def _png(cell) -> bytes:
    return base64.b64decode(next(o["data"]["image/png"] for o in cell.outputs if "image/png" in (o.get("data") or {})))


def _data_file(cell) -> Path:
    return ROOT / cell.metadata["energybook"]["redrawn"]["data"]


# ----- the committed pages ------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_pages_print_no_raw_log_lines(page):
    nb = _read(page)
    for text in _texts(nb):
        assert not LOG_LINE.search(text), text
    assert "INFO energybook" not in page.read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_pages_heat_map_is_the_chapters_at_the_books_width(page):
    nb = _read(page)
    (cell,) = _figure_cells(nb)
    width, height = Image.open(io.BytesIO(_png(cell))).size
    assert width <= MAX_WIDTH_IN * 100 + 20, (width, height)  # at 100 dpi, a tight box's few pixels of margin
    # Drawn by the chapters' code: the template's cell, tagged, with the redraw's record and note.
    assert P.HEATMAP_TAG in cell.metadata["tags"] and "hide-input" in cell.metadata["tags"]
    assert "plot.heatmap(" in cell.source and "plot.stamp_source(" in cell.source and "imshow" not in cell.source
    assert cell.source == P._REDRAW_IMPORTS + P._template_heatmap_source()
    redrawn = cell.metadata["energybook"]["redrawn"]
    assert redrawn["by"] == REDRAW and re.fullmatch(r"\d{4}-\d{2}-\d{2}", redrawn["date"])
    assert redrawn["data"] == f"data/measured/nvidia-h100-80gb-hbm3/hf/{page.stem}/grid.csv"
    notes = [c for c in nb.cells if P.REDRAW_TAG in c.metadata.get("tags", [])]
    assert len(notes) == 1 and nb.cells[nb.cells.index(cell) + 1] is notes[0]
    note = notes[0].source
    assert "\n" not in note.strip() and REDRAW in note and redrawn["date"] in note and redrawn["data"] in note
    assert "log10" not in page.read_text()
    assert "<Figure size 460x400 with 2 Axes>" in json.dumps(cell.outputs)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_pages_tables_are_their_data_files(page):
    """The measured numbers on the page are those of the data file the figure was redrawn from."""
    nb = _read(page)
    (cell,) = _figure_cells(nb)
    run = R.load_measured(_data_file(cell))
    table = run.data[run.data.rep == 0].pivot_table(index="n_in", columns="n_out", values="tokens_per_j")
    shown = [o["data"]["text/plain"] for c in nb.cells for o in c.get("outputs", [])
             if c.source.rstrip().endswith("table.round(2)") and "data" in o]
    assert shown == [str(table.round(2))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_redrawing_a_page_changes_only_its_figure_and_twice_changes_nothing(page, tmp_path):
    path = tmp_path / page.name
    shutil.copy(page, path)
    data = _data_file(_figure_cells(_read(page))[0])
    P.redraw_measurement_figures(path, data)
    once = path.read_text()
    P.redraw_measurement_figures(path, R.load_measured(data))
    assert path.read_text() == once

    def without_png(nb):
        nb = copy.deepcopy(nb)
        for cell in _figure_cells(nb):
            for out in cell.outputs:
                out["data"].pop("image/png", None)
        return nbformat.writes(nb)

    # Everything but the PNG (which another matplotlib may rasterise differently) is the committed page's.
    assert without_png(_read(path)) == without_png(_read(page))
    # The cleaner agrees with the redrawn page: cleaning it changes nothing either.
    P.clean_measurement_notebook(path, R.load_measured(data).provenance)
    assert path.read_text() == once


# ----- the redraw on a page of an old template ------------------------------------------------

def _write_data(folder) -> Path:
    from energybook.store.workspace import Workspace

    path = Workspace(folder).results_path("NVIDIA H100 80GB HBM3", "M", engine="hf")
    rf = R.ResultsFile(path)
    rf.start({"model": "M", "gpu": "NVIDIA H100 80GB HBM3", "gpu_uuid": "GPU-abcdef12-3456", "meter_method": "counter",
              "device": "cuda", "test_data": True, "engine": {"engine": "hf"}, "started_at": "2026-03-01T10:00:00Z"})
    for n_in in (64, 128):
        for n_out in (64, 128):
            e = 100.0 * n_in / n_out
            rf.append({"model": "M", "n_in": n_in, "n_out": n_out, "rep": 0, "n_req": 10, "batch": 10, "energy_j": e,
                       "duration_s": 1.0, "tokens_out": 10 * n_out, "j_per_token": e / (10 * n_out),
                       "tokens_per_j": 10 * n_out / e,
                       "gpu": "NVIDIA H100 80GB HBM3", "gpu_uuid": "GPU-abcdef12-3456", "engine": "hf"})
    return path


def _old_page(path) -> None:
    v4 = nbformat.v4
    nb = v4.new_notebook()
    nb.cells = [
        v4.new_markdown_cell("# M: measuring its energy grid"),
        v4.new_code_cell("run()", outputs=[v4.new_output("stream", name="stdout", text=(
            "4 points measured\n\nINFO energybook.sweep: n_in 64 batch 10: prefill 1.00 s\n\n"
            "WARNING energybook.sweep: time limit reached\n3.45 minutes in this call\n"))]),
        v4.new_code_cell("table.round(2)", outputs=[v4.new_output(
            "execute_result", data={"text/plain": "  96.09  \n", "text/html": "<table>96.09</table>"},
            execution_count=1)]),
        v4.new_code_cell("ax.imshow(np.log10(table.values))", outputs=[v4.new_output(
            "display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 600x450 with 2 Axes>"})]),
        v4.new_markdown_cell("## Provenance"),
    ]
    nbformat.write(nb, str(path))


def test_redraw_replaces_the_old_figure_and_cuts_the_log_records(tmp_path):
    data = _write_data(tmp_path / "ws")
    page = tmp_path / "M.ipynb"
    _old_page(page)
    before = _read(page)
    P.redraw_measurement_figures(page, R.load_measured(data, allow_test_data=True), date="2026-12-08")
    once = page.read_text()
    P.redraw_measurement_figures(page, R.load_measured(data, allow_test_data=True))  # keeps the note's date
    assert page.read_text() == once
    nb = _read(page)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "code", "markdown", "markdown"]
    log = nb.cells[1].outputs[0]["text"]
    assert "INFO" not in log and "WARNING energybook.sweep: time limit reached" in log and "3.45 minutes" in log
    assert nb.cells[2].outputs == before.cells[2].outputs  # the measured table, byte for byte
    figure = nb.cells[3]
    assert P.HEATMAP_TAG in figure.metadata["tags"] and "plot.heatmap(" in figure.source
    assert Image.open(io.BytesIO(_png(figure))).size[0] <= MAX_WIDTH_IN * 100 + 20
    assert "redrawn on 2026-12-08" in nb.cells[4].source and REDRAW in nb.cells[4].source
    nbformat.write(nbformat.v4.new_notebook(), str(tmp_path / "none.ipynb"))
    with pytest.raises(ValueError, match="no figure"):
        P.redraw_measurement_figures(tmp_path / "none.ipynb", R.load_measured(data, allow_test_data=True))


def test_the_cleaner_cuts_raw_log_records_and_keeps_warnings(tmp_path):
    v4 = nbformat.v4
    nb = v4.new_notebook()
    nb.cells = [v4.new_markdown_cell("# M"), v4.new_code_cell("run()", outputs=[v4.new_output(
        "stream", name="stdout", text="9 points measured\nINFO energybook.engine: dummy weights\n\n"
                                      "DEBUG energybook.meter: tick\nWARNING energybook.sweep: out of memory\n")])]
    path = tmp_path / "M.ipynb"
    nbformat.write(nb, str(path))
    P.clean_measurement_notebook(path, {"model": "M", "runs": [{}]})
    text = _read(path).cells[2].outputs[0]["text"]
    kept = [line for line in text.splitlines() if line]
    assert kept == ["9 points measured", "WARNING energybook.sweep: out of memory"]


# ----- the template --------------------------------------------------------------------------

def test_template_draws_the_chapters_heat_map_and_keeps_the_sweeps_log_off_the_page():
    nb = _read(resources.path("notebooks", "measure.ipynb"))
    code = [c for c in nb.cells if c.cell_type == "code"]
    (heat,) = [c for c in code if P.HEATMAP_TAG in c.metadata.get("tags", [])]
    assert "plot.heatmap(" in heat.source and "plot.stamp_source(" in heat.source and "plot.set_theme()" in heat.source
    assert "imshow" not in heat.source and "figsize" not in heat.source  # the chapters' size
    sweep = next(c for c in code if "eb.run_sweep(" in c.source)
    quiet = 'logging.getLogger("energybook").setLevel(logging.WARNING)'
    assert quiet in sweep.source and sweep.source.index(quiet) < sweep.source.index("eb.run_sweep(")
    assert any("import logging" in c.source for c in code)


def test_the_heat_map_of_a_run_is_readable(tmp_path):
    """What the template's cell draws: plain tokens-per-joule labels on a log colour bar, dark labels on light
    cells, a footer naming the GPU."""
    run = R.load_measured(_write_data(tmp_path / "ws"), allow_test_data=True)
    with matplotlib.rc_context():
        fig = P.measurement_heatmap(run)
        try:
            ax, cbar = fig.axes
            assert cbar.get_ylabel() == LABELS["tokens_per_j"] == "efficiency (output tokens per joule)"
            ticks = [t.get_text() for t in cbar.get_yticklabels() if t.get_text()]
            assert ticks and all(re.fullmatch(r"[\d.]+", t) for t in ticks), ticks  # no 10^x, no log10
            assert fig.get_figwidth() <= MAX_WIDTH_IN
            texts = {t.get_text(): t.get_color() for t in ax.texts}
            values = run.data.tokens_per_j
            assert texts[f"{values.max():.3g}"] == "black" and texts[f"{values.min():.3g}"] == "white"
            footer = plot.source_footer(fig)
            assert footer is not None and "GPU-abcdef12-3456" in footer.get_text()
        finally:
            plt.close(fig)


# ----- the label colour ----------------------------------------------------------------------

def test_annotation_colour_is_dark_on_light_cells_and_light_on_dark_cells():
    viridis = matplotlib.colormaps["viridis"]
    assert annotation_color(viridis(1.0)) == "black"  # yellow top of viridis: never white on yellow
    assert annotation_color(viridis(0.85)) == "black"
    assert annotation_color(viridis(0.0)) == "white"  # dark purple bottom
    assert annotation_color(viridis(0.3)) == "white"
    rdbu = matplotlib.colormaps["RdBu"]
    assert annotation_color(rdbu(0.5)) == "black" and annotation_color(rdbu(0.0)) == "white"
    assert annotation_color((1.0, 1.0, 0.0)) == "black" and annotation_color((0, 0, 0, 1)) == "white"


def test_a_drawn_heat_map_labels_each_cell_by_its_own_colour():
    table = pd.DataFrame({"model": "M", "n_in": [64, 64, 128, 128], "n_out": [64, 128, 64, 128],
                          "tokens_per_j": [1.0, 3.0, 10.0, 30.0]})
    with matplotlib.rc_context():
        ax = plot.heatmap(table, "M")
        try:
            mesh = ax.collections[0]
            grid = table.pivot_table(index="n_in", columns="n_out", values="tokens_per_j").to_numpy()
            for text in ax.texts:
                x, y = text.get_position()
                value = grid[int(y), int(x)]
                assert text.get_color() == annotation_color(mesh.cmap(mesh.norm(value)))
            assert {t.get_text(): t.get_color() for t in ax.texts}["30"] == "black"
        finally:
            plt.close(ax.figure)
