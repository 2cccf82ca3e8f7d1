"""Reading the committed benchmark outputs (``energybook.store.bench`` parses, ``energybook.report.bench`` tabulates),
from a folder the caller names."""

from pathlib import Path

import pandas as pd
import pytest

from energybook.model import architecture
from energybook.report import bench as bench_results
from energybook.store import bench as store_bench

#: The checkout's committed benchmark outputs (the tests run in a checkout; the package never looks for them).
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

TABLE = """NVIDIA H100 80GB HBM3: device copy 2.93 TB/s (read + write), torch 2.11.0+cu130
model             K/H  batch  context  way                   us   KV GB/s  of copy  max err
Llama-3.2-1B    8/32      64      512  varlen             100.0     795.6     0.27  2.0e-03
Llama-3.2-1B    8/32      64      512  varlen_folded      110.0     785.3     0.27  2.0e-03
Llama-3.2-1B    8/32      64      512  sdpa_folded         50.0    1184.8     0.40  0.0e+00
"""


def test_decode_attention_parses_the_printed_table(tmp_path):
    p = tmp_path / "decode_attention.txt"
    p.write_text(TABLE)
    t = bench_results.decode_attention(p)
    assert list(t["way"]) == ["varlen", "varlen_folded", "sdpa_folded"]
    assert t["batch"].tolist() == [64, 64, 64] and t["us"].tolist() == [100.0, 110.0, 50.0]
    wide = bench_results.attention_speedups(t)
    row = wide.loc[("Llama-3.2-1B", 64, 512)]
    assert row["sdpa_folded / varlen"] == pytest.approx(0.5)
    assert row["varlen_folded / varlen"] == pytest.approx(1.1)


def test_decode_attention_names_a_wrong_file(tmp_path):
    p = tmp_path / "other.txt"
    p.write_text("something else entirely\n")
    with pytest.raises(ValueError, match="no table header"):
        bench_results.decode_attention(p)
    p.write_text(TABLE + "Llama-3.2-1B  8/32  64  truncated\n")
    with pytest.raises(ValueError, match="do not have 9 fields"):
        bench_results.decode_attention(p)


def test_attention_share_scales_one_layer_by_the_layer_count(tmp_path):
    p = tmp_path / "decode_attention.txt"
    p.write_text(TABLE)
    t = bench_results.decode_attention(p)
    layers = architecture.load("Llama-3.2-1B").num_layers
    bench = {"decode": [{"batch": 64, "context": 512, "graph_varlen_s": 0.004},
                        {"batch": 64, "context": 1024, "graph_varlen_s": 0.005}]}
    share = bench_results.attention_share(t, bench)
    assert len(share) == 1  # only the shape both benchmarks ran
    assert share["attention_ms"].iloc[0] == pytest.approx(0.1 * layers)
    assert share["share"].iloc[0] == pytest.approx(0.1 * layers / 4.0)


def test_committed_outputs_are_readable():
    t = bench_results.decode_attention(RESULTS)
    assert set(t["way"]) == {"varlen", "varlen_folded", "sdpa_folded"}
    assert set(t["model"]) == {"Llama-3.2-1B", "Qwen2-1.5B", "OPT-1.3B"}
    assert "decode" in bench_results.engine_benchmark(RESULTS)
    assert bench_results.engine_targets(RESULTS) is not None and len(bench_results.engine_corners(RESULTS))


def test_the_store_parses_a_folder_the_caller_names_and_the_report_reads_the_same():
    t = store_bench.decode_attention(RESULTS)
    assert t.equals(store_bench.decode_attention(RESULTS / "decode_attention.txt"))
    assert store_bench.engine_benchmark(RESULTS) == bench_results.engine_benchmark(RESULTS / "bench_engine.json")
    path, result = store_bench.engine_targets(RESULTS)
    assert path == RESULTS / "engine_targets.json" and "H100" in result["gpu"]


def test_the_folder_comes_from_the_caller_or_the_environment(tmp_path, monkeypatch):
    """No folder and no ``$ENERGYBOOK_BENCH_RESULTS``: an error naming both; the variable alone is enough."""
    monkeypatch.delenv(bench_results.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=r"results=.*ENERGYBOOK_BENCH_RESULTS"):
        bench_results.engine_benchmark()
    with pytest.raises(ValueError, match="ENERGYBOOK_BENCH_RESULTS"):
        bench_results.decode_attention()
    (tmp_path / "decode_attention.txt").write_text(TABLE)
    monkeypatch.setenv(bench_results.ENV_VAR, str(tmp_path))
    assert len(bench_results.decode_attention()) == 3
    assert bench_results.engine_targets() is None  # no engine_targets.json in that folder


def test_engine_targets_are_read_from_an_h100_run_only(tmp_path):
    """No committed H100 run: None (the book says so); an H100 run: the targets table with what meets the must;
    another GPU's run in the book's place: refused, naming the GPU."""
    import json

    from energybook.report import bench

    assert bench.engine_targets(tmp_path / "absent.json") is None
    targets = {"64x256": dict(study=120.71, today=110.6, must=140, aim=170, ge=True),
               "step_ms_batch1000_ctx128": dict(study=None, today=11.4, must=7, aim=5.5, ge=False),
               "batch1_bandwidth_fraction": dict(study=None, today=0.33, must=0.6, aim=0.8, ge=True)}
    result = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_uuid": "GPU-x", "commit": "abc", "engine": "lean",
              "targets": targets, "tokens_per_j": {"64x256": 150.0}, "step_ms_batch1000_ctx128": 7.5,
              "batch1_bandwidth_fraction": None}
    path = tmp_path / "engine_targets.json"
    path.write_text(json.dumps(result))
    table = bench.engine_targets(path)
    assert table.loc["64x256", "measured"] == 150.0 and bool(table.loc["64x256", "meets must"])
    assert not bool(table.loc["step_ms_batch1000_ctx128", "meets must"])  # 7.5 ms against <= 7
    assert table.loc["batch1_bandwidth_fraction", "meets must"] is None and table.attrs["gpu_uuid"] == "GPU-x"
    path.write_text(json.dumps(dict(result, gpu="NVIDIA H200")))
    with pytest.raises(ValueError, match="NVIDIA H200, not an H100"):
        bench.engine_targets(path)
    path.write_text(json.dumps(dict(result, targets={})))
    with pytest.raises(ValueError, match="no 'targets'"):
        bench.engine_targets(path)


def test_engine_corners_set_every_model_against_the_study_fit(tmp_path):
    """The headline model's corners and the merged models', each over the study's fitted surface; H100 runs only."""
    import json

    from energybook.model import paper
    from energybook.report import bench

    assert bench.engine_corners(tmp_path / "absent.json") is None
    result = {"gpu": "NVIDIA H100 80GB HBM3", "engine": "lean", "model": "Llama-3.2-1B",
              "tokens_per_j": {"64x256": 150.0, "4096x64": None},
              "models": {"OPT-1.3B": {"engine": "lean", "tokens_per_j": {"64x256": 120.0}}}}
    path = tmp_path / "engine_targets.json"
    path.write_text(json.dumps(result))
    t = bench.engine_corners(path).set_index(["model", "n_in", "n_out"])
    fit = paper.paper_surface("OPT-1.3B").set_index(["n_in", "n_out"]).loc[(64, 256), "tokens_per_j"]
    assert t.loc[("OPT-1.3B", 64, 256), "ratio"] == pytest.approx(120.0 / fit)
    assert pd.isna(t.loc[("Llama-3.2-1B", 4096, 64), "ratio"]) and len(t) == 3
    path.write_text(json.dumps(dict(result, gpu="NVIDIA H200")))
    with pytest.raises(ValueError, match="not an H100"):
        bench.engine_corners(path)
