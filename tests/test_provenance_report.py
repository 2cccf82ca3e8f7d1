"""Tests of energybook.report.provenance (no GPU: results files are written by hand, marked as test data)."""

from __future__ import annotations

import json
import math

import pytest

from energybook.report import provenance as P
from energybook.store import results as R
from energybook.store.workspace import Workspace


def _write_run(folder, model="Llama-3.2-1B", test_data=True, points=((64, 64), (64, 128))):
    path = Workspace(folder).results_path("NVIDIA H100 80GB HBM3", model, engine="torch")
    rf = R.ResultsFile(path)
    rf.start({"model": model, "gpu": "NVIDIA H100 80GB HBM3", "driver": "580.0", "torch": "2.11", "cuda": "13.0",
              "transformers": "5.17", "energybook": "0.1.0", "meter_method": "counter", "weights": "dummy",
              "dtype": "bfloat16", "device": "cuda", "test_data": test_data, "started_at": "2026-03-01T10:00:00Z",
              "engine": {"engine": "torch", "max_batch": 1024, "attention": "sdpa"},
              "protocol": {"n_req": 1000, "max_batch": 1024, "mode": "prefix", "n_in": [64], "n_out": [64, 128]},
              "command": "energybook sweep --model " + model})
    for n_in, n_out in points:
        e = 1000.0 + n_out
        rf.append({"model": model, "n_in": n_in, "n_out": n_out, "rep": 0, "n_req": 1000, "batch": 1000,
                   "energy_j": e, "energy_j_power500": e * 1.02, "energy_j_power100": e * 0.99,
                   "duration_s": 5.0, "tokens_out": 1000 * n_out, "j_per_token": e / (1000 * n_out)})
    return path


def test_no_folder_gives_no_runs(tmp_path):
    assert P.result_files(tmp_path / "absent") == []
    assert P.measured_runs(tmp_path / "absent") == []
    assert P.measured_table([]).empty
    assert P.run_table([]).empty
    assert P.timeline_files(tmp_path / "absent") == []


def test_env_variable_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYBOOK_DATA", str(tmp_path))
    assert P.measured_dir() == tmp_path / "measured"
    assert P.measured_dir(tmp_path / "x") == tmp_path / "x"


def test_test_data_are_refused_unless_allowed(tmp_path):
    _write_run(tmp_path)
    with pytest.raises(R.DataError, match="not a real GPU measurement"):
        P.measured_runs(tmp_path)
    runs = P.measured_runs(tmp_path, allow_test_data=True)
    assert len(runs) == 1 and len(runs[0].data) == 2


def test_tables_from_sidecars(tmp_path):
    _write_run(tmp_path)
    _write_run(tmp_path, model="OPT-1.3B", points=((64, 64),))
    runs = P.measured_runs(tmp_path, allow_test_data=True)
    table = P.run_table(runs)
    assert list(table["model"]) == ["Llama-3.2-1B", "OPT-1.3B"]
    assert table["sha256 ok"].all()
    assert list(table["rows"]) == [2, 1]
    assert table.loc[0, "date"] == "2026-03-01"
    assert table.loc[0, "engine"] == "torch"
    env = P.environment_table(runs)
    assert env.loc["GPU"].tolist() == ["NVIDIA H100 80GB HBM3"] * 2
    assert env.loc["weights"].iloc[0] == "dummy"
    proto = P.protocol_table(runs)
    assert proto.loc["n_req"].iloc[0] == "1000"
    assert "energybook sweep" in proto.loc["command"].iloc[0]
    rows = P.measured_table(runs)
    assert len(rows) == 3 and "source" in rows


def test_checksum_mismatch_is_an_error(tmp_path):
    path = _write_run(tmp_path)
    path.write_text(path.read_text() + "\n")
    with pytest.raises(R.DataError, match="sha256"):
        P.measured_runs(tmp_path, allow_test_data=True)


def test_method_summary(tmp_path):
    _write_run(tmp_path)
    rows = P.measured_table(P.measured_runs(tmp_path, allow_test_data=True))
    s = P.method_summary(rows)
    assert math.isclose(s.loc["Llama-3.2-1B", ("power500", "mean (%)")], 2.0, rel_tol=1e-4)
    assert math.isclose(s.loc["Llama-3.2-1B", ("power100", "max (%)")], -1.0, rel_tol=1e-4)
    assert s.loc["Llama-3.2-1B", ("power500", "points")] == 2


def test_replay_meter_applies_the_integration_rules():
    # Constant 200 W: counter ticks every 0.1 s, power samples every 0.1 s.
    ts = [i * 0.1 for i in range(31)]
    m = P.replay_meter(ts, [200.0 * t * 1000 for t in ts], ts, [200.0] * len(ts))
    r = m.reading(0.55, 2.05, wait=False)
    assert math.isclose(r.energy_j, 300.0, rel_tol=1e-9)
    assert math.isclose(r.energy_j_power100, 300.0, rel_tol=1e-9)
    assert math.isclose(r.energy_j_power500, 300.0, rel_tol=1e-9)
    assert r.method == "counter"


def test_versions_lists_python_and_packages():
    v = P.versions(("numpy", "surely-not-a-package-xyz"))
    assert v.loc["surely-not-a-package-xyz", "version"] == "not installed"
    assert v.loc["python", "version"].count(".") == 2


def test_timeline_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run_timeline.json").write_text(json.dumps({"power_t": [0], "power_w": [1]}))
    (tmp_path / "a" / "bad_timeline.json").write_text("{")
    assert [p.name for p in P.timeline_files(tmp_path)] == ["run_timeline.json"]


def test_measuring_minutes_and_gpu_count():
    prov = {"gpu_uuid": "GPU-b", "runs": [{"gpu_uuid": "GPU-a"}, {"gpu_uuid": "GPU-b"}],
            "points": {"64x64#0": {"started_at": "2026-03-01T10:00:00Z", "finished_at": "2026-03-01T10:01:00Z"},
                       "64x128#0": {"started_at": "2026-03-01T10:00:00Z", "finished_at": "2026-03-01T10:03:00Z"},
                       "128x64#0": {"started_at": "2026-03-01T11:00:00Z", "finished_at": "2026-03-01T11:00:30Z",
                                    "gpu_uuid": "GPU-c"}}}
    # group 1: 10:00 -> 10:03 (3 min, the shorter point is inside it); group 2: 0.5 min; the hour between is not counted
    assert P.measuring_minutes(prov) == pytest.approx(3.5)
    assert P.measuring_minutes(dict(prov, measuring_minutes=4.25)) == 4.25  # what the sweeps recorded wins
    assert P.gpu_count(prov) == 3
    assert math.isnan(P.measuring_minutes({"points": {"64x64#0": {"started_at": None}}}))
    assert P.gpu_count({}) == 0


def test_scroll_table_wraps_the_html_and_keeps_the_values():
    import pandas as pd

    t = P.scroll_table(pd.DataFrame({"a": [1.25, 2.5]}, index=["x", "y"]))
    html = t._repr_html_()
    assert html.startswith('<div class="eb-scroll" style="overflow-x: auto')
    assert "<table" in html and "1.25" in html and "2.5" in html
    assert "1.25" in repr(t)


def test_run_summary_settings_and_differences(tmp_path):
    _write_run(tmp_path)
    _write_run(tmp_path, model="OPT-1.3B", points=((64, 64),))
    runs = P.measured_runs(tmp_path, allow_test_data=True)
    summary = P.run_summary(runs)
    assert list(summary.index) == ["Llama-3.2-1B, grid", "OPT-1.3B, grid"]
    assert list(summary["points"]) == [2, 1]
    assert (summary["checksum"] == "ok").all()
    assert len(summary.columns) <= 5  # narrow enough for a phone
    shared = P.shared_settings(runs)
    assert shared.loc["GPU", "value"] == "NVIDIA H100 80GB HBM3"
    assert shared.loc["weights", "value"] == "dummy"
    assert "command" not in shared.index
    diff = P.run_differences(runs)
    assert list(diff.index) == ["Llama-3.2-1B, grid", "OPT-1.3B, grid"]
    assert "GPU" not in diff.columns  # the same for both runs
    assert P.run_commands(runs)["OPT-1.3B, grid"] == "energybook sweep --model OPT-1.3B"
    assert P.run_summary([]).empty and P.shared_settings([]).empty and P.run_differences([]).empty


def test_checked_points_and_short_window_cells(tmp_path):
    import pandas as pd

    path = _write_run(tmp_path)
    full = path.with_name("full-64x64.csv")
    path.rename(full)
    R.sidecar_path(path).rename(R.sidecar_path(full))
    runs = P.measured_runs(tmp_path, allow_test_data=True)
    assert P.checked_points(runs) == {("Llama-3.2-1B", 64, 64), ("Llama-3.2-1B", 64, 128)}
    grid = pd.DataFrame({"model": ["M", "M", "M"], "n_in": [64, 64, 128], "n_out": [64, 128, 64],
                         "window_s": [1.1, 1.9, 3.0], "energy_j": [100.0, 200.0, 300.0],
                         "energy_j_power500": [90.0, 200.0, 300.0]})
    cells = P.short_window_cells(grid, {("M", 64, 128)})
    assert list(cells.index) == [("M", 64), ("M", 128)]  # the n_in = 128 row is left out
    assert cells.loc[("M", 64), "power500 vs counter (%)"] == pytest.approx(-10.0)
    assert list(cells["complete-run check"]) == ["no", "yes"]
    assert "counter updates" not in cells  # the table has no ticks column
    with_ticks = P.short_window_cells(grid.assign(ticks=[11.0, 19.0, 30.0]), set())
    assert list(with_ticks["counter updates"]) == [11, 19]
    assert list(with_ticks["complete-run check"]) == ["no", "no"]


def test_tick_period():
    import pandas as pd

    t = pd.DataFrame({"window_s": [1.0, 2.0, 5.0], "ticks": [10, 0, 50]})
    assert list(P.tick_period_s(t)) == [pytest.approx(0.1), pytest.approx(0.1)]


def test_measurement_note_states_the_sidecars_minutes():
    prov = {"gpu": "NVIDIA H100 80GB HBM3", "runs": [{"gpu_uuid": "GPU-a"}, {"gpu_uuid": "GPU-a"}],
            "points": {"64x64#0": {"started_at": "2026-03-01T10:00:00Z", "finished_at": "2026-03-01T10:12:30Z"}}}
    note = P.measurement_note(prov, {"min_window_s": 1.0, "model": "M"})
    assert "12.5 GPU-minutes" in note and "2 calls" in note and "on 1 NVIDIA H100 80GB HBM3 board, in" in note
    assert "`min_window_s = 1.0`" in note and "`model = M`" in note


def _fake_executed_notebook(path):
    import nbformat

    v4 = nbformat.v4
    nb = v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": "/work/main/notebooks/measure.ipynb",
                                "output_path": "/work/main/book/measurements/M.ipynb",
                                "parameters": {"model": "M", "min_window_s": 1.0, "workspace": "/work/main/data"}}
    nb.cells = [
        v4.new_markdown_cell("# M: measuring its energy grid\n\nSome text."),
        v4.new_code_cell("model = 'x'", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("# Parameters\nmodel = 'M'", metadata={"tags": ["injected-parameters"]}),
        v4.new_code_cell("import pandas as pd"),
        v4.new_code_cell("run()", outputs=[
            v4.new_output("stream", name="stdout", text=(
                "9 points measured\n/work/main/data/measured/gpu/M/grid.csv: results\n\n\n\n"
                "M sweep:  11%|█         | 1/9 [00:20<02:44, 20.57s/point]INFO energybook.sweep: prefill 8.02 s\n\n"
                "M sweep: 100%|██████████| 9/9 [03:13<00:00, 22.58s/point]\n3.45 minutes\n")),
            v4.new_output("stream", name="stderr", text="/opt/x/tqdm/auto.py:21: TqdmWarning: IProgress not found\n"),
        ]),
        v4.new_code_cell("table", outputs=[v4.new_output(
            "execute_result", data={"text/html": "<table><tr><td>96.09</td></tr></table>", "text/plain": "96.09"},
            execution_count=1)]),
        v4.new_code_cell("plot()", outputs=[v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=",
                                                                                "text/plain": "<Figure>"})]),
    ]
    nbformat.write(nb, str(path))


def test_clean_measurement_notebook(tmp_path):
    import nbformat

    path = tmp_path / "M.ipynb"
    _fake_executed_notebook(path)
    prov = {"gpu": "H100", "model": "M", "runs": [{}],
            "points": {"a": {"started_at": "2026-03-01T10:00:00Z", "finished_at": "2026-03-01T10:03:00Z"}}}
    P.clean_measurement_notebook(path, prov)
    first = path.read_text()
    P.clean_measurement_notebook(path, prov)
    assert path.read_text() == first  # idempotent
    nb = nbformat.read(str(path), as_version=4)
    assert "/work/" not in first and "/opt/" not in first
    assert "TqdmWarning" not in first and "s/point]" not in first
    assert "papermill" in nb.metadata and "input_path" not in nb.metadata["papermill"]
    assert nb.cells[1].cell_type == "markdown" and P.NOTE_TAG in nb.cells[1].metadata["tags"]
    assert "3.0 GPU-minutes" in nb.cells[1].source and "`min_window_s = 1.0`" in nb.cells[1].source
    assert sum(P.NOTE_TAG in c.metadata.get("tags", []) for c in nb.cells) == 1
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all("remove-cell" in c.metadata["tags"] for c in code[:3])  # parameters, injected, imports
    log = code[3].outputs
    assert [o["name"] for o in log] == ["stdout"]
    assert "INFO energybook.sweep" not in log[0]["text"]  # raw log records are cut out (issue 25, item 5)
    assert "9 points measured" in log[0]["text"] and "3.45 minutes" in log[0]["text"]
    assert "data/measured/gpu/M/grid.csv: results" in log[0]["text"] and "\n\n\n" not in log[0]["text"]
    table = code[4].outputs[0]["data"]
    assert table["text/plain"] == "96.09" and "96.09" in table["text/html"]
    assert table["text/html"].count('class="eb-scroll"') == 1
    figure = code[5].metadata["mystnb"]
    assert figure["figure"]["name"] == "fig-measured-m" and figure["image"]["alt"].startswith("Heat map of M")
    assert "hide-input" in code[5].metadata["tags"]
    assert P.measurement_notes([path]) == {"M": nb.cells[1].source}
