"""Batch-1 decode of the lean engine under torch.compile's modes (a diagnostic for issue 12's batch-1 target).

At batch 1 a decode step reads every weight once and does little else: its time over the weight and KV bytes is
the fraction of the copy bandwidth the step reaches (``engine_targets.py``'s ``batch1_bandwidth_fraction``). The
products are then matrix-vector products; inductor's ``default`` mode leaves them to cuBLAS, while
``max-autotune-no-cudagraphs`` also times its own Triton kernels for each shape. This script builds the engine once
per mode (decode blocks compiled, prefill not), and times one graph-replayed step at batch 1 and at batch 1000,
context 128, with ``engine_targets.lean_step_s``.

Usage (on the GPU)::

    ENERGYBOOK_COMMIT=$(git rev-parse --short HEAD) python3 -m benchmarks.batch1_modes \\
        --out benchmarks/results/h200/batch1_modes.json [--modes default,max-autotune-no-cudagraphs]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/batch1_modes.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

MODES = ("default", "max-autotune-no-cudagraphs")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="Llama-3.2-1B")
    ap.add_argument("--modes", type=lambda s: [m for m in s.split(",") if m], default=list(MODES))
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",") if b], default=[1, 1000])
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/batch1_modes.json")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("batch1_modes.py measures on an NVIDIA GPU: no CUDA device here", file=sys.stderr)
        return 2
    from benchmarks.engine_targets import copy_bandwidth, lean_step_s
    from energybook.model import complexity as C

    env = harness.provenance("cuda", engine="lean")
    copy = copy_bandwidth()
    result = {"gpu": env.get("gpu"), "gpu_uuid": env.get("gpu_uuid"), "commit": env.get("commit"), "environment": env,
              "model": args.model, "context": args.context, "copy_Bps": copy, "modes": {}}
    print(f"GPU {env.get('gpu')} {env.get('gpu_uuid')}; commit {env.get('commit')}; copy {copy / 1e12:.2f} TB/s",
          flush=True)
    for mode in args.modes:
        t0 = time.perf_counter()
        settings = dict(compile=True, compile_mode=mode, compile_prefill=False, compile_mode_small=None)
        eng = harness.build_engine(args.model, "lean", device="cuda", **settings)
        rec = {"engine_settings": harness.settings_record("lean", **settings)}
        for batch in args.batches:
            step, capture, once = lean_step_s(eng, batch, args.context)
            cost = C.decode_step(eng.arch, args.context, batch)
            rec[str(batch)] = {"step_ms": step * 1e3, "bandwidth_fraction": cost.bytes / step / copy,
                               "tflops": cost.flops / step / 1e12, "once_s": once, "capture_s": capture}
            print(f"{mode:28s} batch {batch:5d}: {step * 1e3:.3f} ms, {cost.bytes / step / copy:.2f} of copy "
                  f"bandwidth, {cost.flops / step / 1e12:.0f} TFLOP/s; compile once {once:.0f} s", flush=True)
        rec["wall_s"] = time.perf_counter() - t0
        result["modes"][mode] = rec
        eng.release()
        del eng
        torch.cuda.empty_cache()
        harness.write_record(args.out, result, prov=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
