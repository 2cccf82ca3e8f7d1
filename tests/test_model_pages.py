"""The 13 model pages: generated from one template (and equal to it), built from whatever files exist, each
(GPU, engine) file apart, and "not measured yet" with the command where there are none."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from energybook.model import physics  # noqa: E402
from energybook.report import model_pages as mp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "book" / "models"
MEASURED = ROOT / "data" / "measured"
H100 = "NVIDIA H100 80GB HBM3"
#: A committed grid copied into temporary data folders (a model with a grid and nothing else).
MODEL = "Qwen2-1.5B"
SOURCE = MEASURED / "nvidia-h100-80gb-hbm3" / "hf" / MODEL


def _copy_grid(root: Path, gpu_slug: str = "nvidia-h100-80gb-hbm3", gpu: str | None = None) -> Path:
    """Copy the committed grid of :data:`MODEL` and its sidecar into ``root/measured/<gpu_slug>/hf/<model>/``; with
    ``gpu``, as if measured on that GPU (its rows' and sidecar's GPU renamed, the checksum recomputed)."""
    folder = root / "measured" / gpu_slug / "hf" / MODEL
    folder.mkdir(parents=True)
    csv, side = folder / "grid.csv", folder / "grid.json"
    shutil.copy(SOURCE / "grid.csv", csv)
    shutil.copy(SOURCE / "grid.json", side)
    if gpu is not None:
        csv.write_text(csv.read_text().replace(f",{H100},", f",{gpu},"))
        prov = json.loads(side.read_text())
        prov["gpu"] = gpu
        prov["sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
        if "size" in prov:
            prov["size"] = csv.stat().st_size
        side.write_text(json.dumps(prov))
    return folder


# --- the pages equal the template --------------------------------------------------------------------------------
def test_the_pages_are_the_template_for_each_of_the_13_models():
    assert sorted(p.stem for p in PAGES.glob("*.md")) == sorted(mp.STUDY_ORDER)
    stale = mp.stale_pages(PAGES)
    assert not stale, (f"{[p.name for p in stale]} differ from the template: run "
                       "`python -m energybook.report.model_pages write book/models`")
    for m in mp.STUDY_ORDER:
        text = (PAGES / f"{m}.md").read_text()
        assert f'MODEL = "{m}"' in text and f"(sec-model-{mp.slug(m)})=" in text
        assert "model_pages.load_page(MODEL)" in text


def test_the_drift_check_catches_an_edited_page(tmp_path):
    written = mp.write_pages(tmp_path)
    assert len(written) == 13 and mp.stale_pages(tmp_path) == []
    assert mp.main(["check", str(tmp_path)]) == 0
    page = tmp_path / "OPT-1.3B.md"
    page.write_text(page.read_text().replace("## Fits", "## Fits, edited by hand"))
    assert mp.stale_pages(tmp_path) == [page]
    assert mp.main(["check", str(tmp_path)]) == 1
    assert mp.render_page("OPT-1.3B").count('MODEL = "OPT-1.3B"') == 1
    with pytest.raises(ValueError, match="13 models"):
        mp.render_page("GPT-2")


# --- a model without data -------------------------------------------------------------------------------------
def test_a_model_without_data_says_not_measured_yet_with_the_command(tmp_path):
    (tmp_path / "measured").mkdir()
    page = mp.load_page("Gemma-2-9B", root=tmp_path, book=tmp_path)
    assert not page.measured and page.runs == []
    status = page.status().data
    assert "not measured yet" in status
    assert "energybook sweep --model Gemma-2-9B --engine lean --mode sampled" in status
    assert status.startswith("````{admonition}")  # the box holds code blocks: four backticks
    assert page.grid_figure() is None and page.power_figure() is None and page.theta_table() is None
    for box in (page.grid_text(), page.mape_table(), page.power_table()):
        assert "not measured yet" in box.data and "energybook sweep --model Gemma-2-9B" in box.data
    assert "No executed measurement notebook" in page.notebook_text().data
    cover = mp.coverage_table(root=tmp_path)
    assert len(cover) == 13
    assert set(cover.index.get_level_values("gpu")) == {mp.NOT_MEASURED}


def test_the_prediction_is_labelled_and_a_refusal_is_said(tmp_path, monkeypatch):
    page = mp.load_page("Gemma-2-9B", root=tmp_path, book=tmp_path)
    pred = page.prediction()
    assert pred.table is not None and len(pred.table) == 49
    assert any("parameters, outside the calibrated model sizes" in w for w in pred.warnings)
    assert "A prediction, not a measurement" in page.prediction_text(pred).data
    fig = page.predicted_figure(pred)
    assert "prediction, not a measurement" in fig.axes[0].get_title()
    plt.close(fig)

    def refuse(*args, **kwargs):
        raise physics.Refused("the weights alone do not fit")

    monkeypatch.setattr(physics, "predict", refuse)
    refused = page.prediction()
    assert refused.table is None and "do not fit" in refused.refused
    assert page.predicted_figure(refused) is None
    assert "refuses" in page.prediction_text(refused).data


# --- a model with data ---------------------------------------------------------------------------------------------
def test_a_measured_grid_shows_its_gpu_and_engine(tmp_path):
    _copy_grid(tmp_path)
    page = mp.load_page(MODEL, root=tmp_path, book=tmp_path)
    assert page.measured and [r.label for r in page.runs] == [f"{H100}, hf engine, grid.csv"]
    status = page.status().data
    assert H100 in status and "hf engine" in status and "not measured yet" not in status
    fig = page.grid_figure()
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [f"{H100}, hf engine, grid.csv"]
    plt.close(fig)
    mape = page.mape_table().data
    assert f"measured on {H100} (GPU-" in mape and "hf engine" in mape and "the study (Table 3)" in mape
    fitted = page.fits()
    short = "ours: H100 80GB HBM3, hf, grid"
    assert list(fitted) == [short] and len(fitted[short]) == 6 and short in mape
    power = page.power_table().data
    assert "SM clock (MHz)" in power and mp.NOT_RECORDED not in power  # the grid records its SM clock
    table = page.runs[0].table
    assert (table["power_w"] - table["energy_j"] / table["duration_s"]).abs().max() < 1e-9


def test_a_missing_clock_is_said_not_recorded(tmp_path):
    folder = _copy_grid(tmp_path)
    csv, side = folder / "grid.csv", folder / "grid.json"
    lines = csv.read_text().splitlines()
    col = lines[0].split(",").index("sm_clock_mhz")
    emptied = [lines[0]] + [",".join("" if i == col else c for i, c in enumerate(line.split(",")))
                            for line in lines[1:]]
    csv.write_text("\n".join(emptied) + "\n")
    prov = json.loads(side.read_text())
    prov["sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    side.write_text(json.dumps(prov))
    page = mp.load_page(MODEL, root=tmp_path, book=tmp_path)
    assert not page.runs[0].has("sm_clock_mhz")
    assert mp.NOT_RECORDED in page.power_table().data
    fig = page.power_figure()
    assert [ax.get_title().split(":")[0] for ax in fig.axes if ax.get_title()] == ["mean power"]
    plt.close(fig)


def test_two_gpus_files_of_one_model_are_shown_apart(tmp_path):
    _copy_grid(tmp_path)
    _copy_grid(tmp_path, "nvidia-h200", gpu="NVIDIA H200")
    page = mp.load_page(MODEL, root=tmp_path, book=tmp_path)
    labels = [r.label for r in page.runs]
    assert labels == [f"{H100}, hf engine, grid.csv", "NVIDIA H200, hf engine, grid.csv"]
    assert "2 (GPU, engine) pairs" in page.status().data
    fig = page.grid_figure()
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == labels
    plt.close(fig)
    shorts = ["ours: H100 80GB HBM3, hf, grid", "ours: H200, hf, grid"]
    assert [r.short_label for r in page.runs] == shorts and list(page.fits()) == shorts
    assert all(short in page.power_table().data for short in shorts)
    assert all(short in page.sweet_spot_table().data for short in shorts)
    cover = mp.coverage_table(root=tmp_path)
    rows = cover.loc[MODEL]
    assert sorted(rows.index.get_level_values("gpu")) == [H100, "NVIDIA H200"]
    assert list(rows["points"]) == [49, 49]  # each GPU's file alone, never pooled
    grids = mp.measured_grids(mp.all_runs(tmp_path))
    assert len(grids) == 2
    summary = mp.attention_summary(mp.size_table(), grids)
    sources = {s for _, _, s in summary.index}
    assert {f"ours: {H100}, hf engine", "ours: NVIDIA H200, hf engine", "the study"} <= sources


def test_the_committed_measurement_notebook_is_linked():
    page = mp.load_page("Llama-3.2-1B")
    assert [p.name for p in page.notebooks] == ["Llama-3.2-1B.ipynb"]
    assert "{doc}`Llama-3.2-1B </book/measurements/Llama-3.2-1B>`" in page.notebook_text().data


def test_size_table_holds_the_study_for_all_13_models():
    sizes = mp.size_table()
    assert sorted(sizes.index) == sorted(mp.STUDY_ORDER)
    assert list(sizes["params_b"]) == sorted(sizes["params_b"])
    assert sizes["study_best_tokens_per_j"].notna().all() and (sizes["study_long_tokens_per_j"] > 0).all()
    assert set(sizes["attention"]) == {"GQA", "MHA"}
    assert mp.size_band(1.3) == "about 1-2B" and mp.size_band(8.0) == "about 6.5-9B"
