"""Kernel-time profile of one decode step and one prefill chunk (Llama 3.2 1B, dummy weights); not a test.

Usage: ``python benchmarks/profile_step.py [--batch 1000] [--context 192]``.
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from energybook.measure.torch_engine import TorchEngine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--context", type=int, default=192)
    a = ap.parse_args()
    eng = TorchEngine("Llama-3.2-1B", device="cuda")
    for graphs in (False, True):
        eng.generate(64, 16, a.batch, cuda_graphs=graphs)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            w = eng.generate(a.context, 33, a.batch, cuda_graphs=graphs)
        print(f"graphs={graphs}: prefill {(w.times.prefill_end - w.times.start) * 1e3:.1f} ms, "
              f"decode {(w.times.end - w.times.prefill_end) / 32 * 1e3:.2f} ms/step")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
