"""Kernel-time profile of one decode step (Llama 3.2 1B, dummy weights); not a test.

``--engine hf`` (today's engine): a short ``generate`` with and without CUDA graphs, prefill included.
``--engine lean``: the lean engine's decode step run eagerly ``--steps`` times at ``--context`` for each way of
attending, with the kernels' CUDA time summed by name (graph replay runs the same kernels without the launch
gaps), then the graph-replayed step timed with CUDA events. ``--compile``: its dense blocks through
``torch.compile`` (mode ``--compile-mode``).

The engines are built as a sweep builds them (:func:`benchmarks.harness.build_engine`); the graph-replayed step is
timed by the harness's CUDA-event timer (median over ``--steps`` replays).

Usage: ``python -m benchmarks.profile_step [--engine lean] [--batch 1000] [--context 128] [--compile]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

if __package__ in (None, ""):  # run as a file (python benchmarks/profile_step.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402


def _hf(a) -> None:
    eng = harness.build_engine(a.model, "hf", device="cuda")
    for graphs in (False, True):
        eng.generate(64, 16, a.batch, cuda_graphs=graphs)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            w = eng.generate(a.context, 33, a.batch, cuda_graphs=graphs)
        print(f"graphs={graphs}: prefill {(w.times.prefill_end - w.times.start) * 1e3:.1f} ms, "
              f"decode {(w.times.end - w.times.prefill_end) / 32 * 1e3:.2f} ms/step")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def _lean(a) -> None:
    eng = harness.build_engine(a.model, "lean", device="cuda", compile=a.compile, compile_mode=a.compile_mode)
    print("ways of attending here:", ", ".join(eng.paths_available))
    eng.prepare(a.context, 2, a.batch)
    w = eng._wave
    lo, hi, _ = eng._buckets(a.context, 2)[0]
    for path in eng.paths_available:
        if path == "split" and lo == 0:
            continue
        with torch.inference_mode():
            for _ in range(2):
                w.pos.fill_(a.context)
                eng._decode_step(w, path, lo, hi)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(a.steps):
                    w.pos.fill_(a.context)
                    eng._decode_step(w, path, lo, hi)
                torch.cuda.synchronize()
        rows = sorted(((e.key, e.device_time_total / a.steps, e.count // a.steps) for e in prof.key_averages()
                       if e.device_time_total > 0), key=lambda r: -r[1])
        kernels = [r for r in rows if not r[0].startswith("aten::")]
        total = sum(r[1] for r in kernels)
        print(f"\nlean, {path}, compile={a.compile}: batch {a.batch}, context {a.context}: "
              f"{total / 1e3:.2f} ms of kernel time per step")
        for name, us, n in kernels[:16]:
            print(f"  {us:9.1f} us  {n:4d}x  {name[:90]}")
    print("\ngraph-replayed step (the engine's choice per bucket):", eng.settings["decode_attention_chosen"])
    g = w.graphs[lo]
    t = harness.time_ms(g.replay, device="cuda", repeats=a.steps, warmup=3, setup=lambda: w.pos.fill_(a.context))
    print(f"  {t.median_ms:.2f} ms per step (median of {a.steps})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=("hf", "lean"), default="hf")
    ap.add_argument("--model", default="Llama-3.2-1B")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--context", type=int, default=192)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default")
    a = ap.parse_args()
    (_lean if a.engine == "lean" else _hf)(a)


if __name__ == "__main__":
    main()
