"""The GPU benchmarks are not tests, but they must at least start: smoke runs on the CPU. They are modules of the
``benchmarks`` package and import one another normally."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    return importlib.import_module(f"benchmarks.{name}")


def test_decode_attention_folded_heads_match_unfolded_attention(capsys):
    bench = _load("decode_attention")
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in bench.MODELS]
    assert [r[0] for r in rows] == list(bench.MODELS) and all(r[4] == "sdpa_folded" for r in rows)
    # The folded form the benchmark times is the same attention as one query head at a time.
    b, k_heads, groups, d, c = 2, 2, 3, 8, 5
    q = torch.randn(b, k_heads * groups, d)
    k_cache, v_cache = torch.randn(b, c, k_heads, d), torch.randn(b, c, k_heads, d)
    got = bench.kernels(q, k_cache, v_cache, c, torch.device("cpu"))["sdpa_folded"]()
    k = k_cache.transpose(1, 2).repeat_interleave(groups, dim=1)
    v = v_cache.transpose(1, 2).repeat_interleave(groups, dim=1)
    want = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k, v).squeeze(2)
    assert torch.allclose(got, want, atol=1e-5)


def test_order_check_judges_agreement_and_dips(capsys):
    bench = _load("order_check")
    rows = bench.alone_vs_sweep({(96, 192): 100.0, (64, 256): 91.0}, {(96, 192): 100.5, (64, 256): 100.0})
    assert {(r["n_in"], r["ok"]) for r in rows} == {(96, True), (64, False)}  # 0.5% agrees, 9% does not
    dips = bench.scan_dips({64: 100.0, 80: 99.0, 96: 98.0, 112: 90.0, 128: 96.0})
    assert [(r["n_in"], r["ok"]) for r in dips] == [(80, True), (96, True), (112, False)]
    assert bench.main(["--out", "unused", "--dry-run", "--points", "96x192"]) == 0
    out = capsys.readouterr().out
    assert out.count("[alone]") == 1 and "[sweep]" in out and "--n-in 64 80 96" in out


def test_study_experiments_are_ordinary_sweeps_inside_the_data_folder(tmp_path, capsys):
    from energybook import cli

    bench = _load("study_experiments")
    cmds = bench.commands("lean", "gpu-x", str(tmp_path))
    assert [len(cmds[e]) for e in bench.EXPERIMENTS] == [12, 10, 60, 5, 2]
    parser = cli.build_parser()
    for exp, entries in cmds.items():
        for _name, argv in entries:
            args = parser.parse_args(argv[1:])  # every command is one the CLI accepts
            folder = "measured" if exp == "offgrid" else f"experiments/gpu-x/lean/{exp}"
            assert args.output.startswith(str(tmp_path / folder)) and args.engine == "lean"
    weights = {a.weight_init for a in (parser.parse_args(v[1:]) for _, v in cmds["weights"])}
    assert weights == {"zeros", "normal:0.02", "normal:0.006", "student_t:3:0.02"}
    assert bench.main(["--data", str(tmp_path)]) == 0 and capsys.readouterr().out.count("energybook sweep") == 89
    offgrid = parser.parse_args(cmds["offgrid"][0][1][1:])
    assert len(offgrid.pairs) == 12 and offgrid.output.endswith("Llama-3.2-1B/offgrid.csv")


def test_h100_runbook_runs_on_an_h100_only(tmp_path):
    """``benchmarks/h100_runbook.sh`` refuses any GPU but an H100 (the issue's figures are H100 figures) and an
    unknown part, each with exit status 2 and a message that names it (a stand-in ``nvidia-smi`` names the GPU)."""
    import os
    import subprocess

    script = ROOT / "benchmarks" / "h100_runbook.sh"
    fake = tmp_path / "bin"
    fake.mkdir()

    def run(gpu: str, part: str):
        (fake / "nvidia-smi").write_text(f"#!/bin/sh\necho 'GPU 0: NVIDIA {gpu} (UUID: GPU-0000)'\n")
        (fake / "nvidia-smi").chmod(0o755)
        env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", ENERGYBOOK_COMMIT="test")
        return subprocess.run(["bash", str(script), str(tmp_path / "out"), part], capture_output=True, text=True,
                              env=env, timeout=60)

    h200 = run("H200", "targets")
    assert h200.returncode == 2 and "not an H100" in h200.stderr
    bogus = run("H100 80GB HBM3", "everything")
    assert bogus.returncode == 2 and "unknown part 'everything'" in bogus.stderr
    assert (tmp_path / "out" / "gpu.txt").read_text().startswith("GPU 0: NVIDIA H100")


def test_the_runbook_refuses_a_call_without_models_or_gpu(tmp_path):
    import shutil
    import subprocess

    import pytest

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "runbook.sh"
    usage = subprocess.run([bash, str(script), str(tmp_path), "60"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash benchmarks/runbook.sh" in usage.stderr
    env = {"PATH": str(tmp_path)}  # no nvidia-smi on this PATH
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    nogpu = subprocess.run([bash, str(script), str(tmp_path / "d"), "60", "Llama-3.2-1B"], capture_output=True,
                           text=True, env=env)
    assert nogpu.returncode == 1 and "no GPU here" in nogpu.stderr


def test_the_runbook_measures_the_study_models_smallest_first(tmp_path):
    """``runbook.sh DATA SECONDS study`` sweeps the 13 study models in STUDY_ORDER (each call adds whole models),
    peaks first; a fake nvidia-smi and a python3 that records the energybook commands stand in for the GPU."""
    import shutil
    import subprocess
    import sys

    import pytest

    from energybook.model.architecture import STUDY_ORDER

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "runbook.sh"
    log = tmp_path / "calls.txt"
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho GPU-test-uuid\n")
    (tmp_path / "python3").write_text(f'#!/bin/sh\nif [ "$1" = -m ]; then echo "$@" >> {log}; exit 0; fi\n'
                                      f'exec {sys.executable} "$@"\n')
    for f in ("nvidia-smi", "python3"):
        (tmp_path / f).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PYTHONPATH": str(script.parents[1])}
    run = subprocess.run([bash, str(script), str(tmp_path / "d"), "3600", "study"], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("-m energybook peaks")
    assert [c.split("--model ")[1].split()[0] for c in calls[1:]] == STUDY_ORDER
    assert all("--engine lean --mode sampled" in c for c in calls[1:])
