"""Time the Triton decode-attention kernel's settings on one GPU (not a test).

For one layer of each model, at each (batch, live keys), every (block, num_warps, num_stages) is timed with CUDA
events (median of 20 calls after warm-up) and its KV bytes over that time are given as a fraction of the device
copy bandwidth measured in the same run (read + write, as ``engine_targets.py`` counts it).

Usage: ``python3 -m benchmarks.triton_decode_tune [--models Llama-3.2-1B Qwen2-1.5B]``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
from pathlib import Path

import torch

from energybook.measure import triton_decode as T
from energybook.model import architecture

if __package__ in (None, ""):  # run as a file (python benchmarks/triton_decode_tune.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

SHAPES = ((1000, 128), (1000, 320), (256, 2048), (64, 2048), (8, 4096), (1, 4096), (256, 8192))
CONFIGS = list(itertools.product((32, 64, 128), (4, 8), (2, 3, 4)))


@functools.lru_cache(maxsize=1)
def _targets():
    """``benchmarks.engine_targets``: its copy-bandwidth measurement."""
    from benchmarks import engine_targets

    return engine_targets


def _median_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds per call (:func:`benchmarks.harness.time_ms`, CUDA events)."""
    return harness.time_ms(fn, device="cuda", repeats=repeats, warmup=3).median_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["Llama-3.2-1B", "Qwen2-1.5B"])
    a = ap.parse_args()
    copy_bw = _targets().copy_bandwidth(1 << 30)
    print(f"{torch.cuda.get_device_name()}: copy {copy_bw / 1e12:.2f} TB/s (read + write); defaults: block "
          f"{T.BLOCK_N}, warps {T.NUM_WARPS}, stages {T.NUM_STAGES}")
    for name in a.models:
        arch = architecture.load(name)
        k, g, h = arch.num_kv_heads, arch.num_heads // arch.num_kv_heads, arch.head_dim
        for batch, live in SHAPES:
            cache = torch.randn(2, batch, live + 64, k, h, device="cuda", dtype=torch.bfloat16)
            q = torch.randn(batch, k, g, h, device="cuda", dtype=torch.bfloat16)
            pos = torch.full((1,), live - 1, device="cuda", dtype=torch.long)
            nbytes = 2 * batch * live * k * h * 2
            best = []
            for block, warps, stages in CONFIGS:
                try:
                    ms = _median_ms(functools.partial(T.decode_attention, q, cache[0], cache[1], pos, 1 / math.sqrt(h),
                                                      live + 64, block=block, num_warps=warps, num_stages=stages))
                except Exception as exc:  # noqa: BLE001 - a setting this GPU cannot run
                    print(f"  block {block} warps {warps} stages {stages}: {type(exc).__name__}")
                    continue
                best.append((ms, block, warps, stages))
            best.sort()
            default = next(b for b in best if b[1:] == (T.BLOCK_N, T.NUM_WARPS, T.NUM_STAGES))
            print(f"{name:14s} batch {batch:5d} keys {live:5d}: default {default[0] * 1e3:8.1f} us "
                  f"({nbytes / (default[0] / 1e3) / copy_bw:.2f}); best "
                  + "; ".join(f"{b}/{w}/{s} {ms * 1e3:.1f} us ({nbytes / (ms / 1e3) / copy_bw:.2f})"
                              for ms, b, w, s in best[:3]))
            del cache


if __name__ == "__main__":
    main()
