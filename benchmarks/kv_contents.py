"""Do the KV cache's contents move a decode step's energy? The sampled protocol (``--mode sampled``) times decode
steps with the cache filled directly to a context (:func:`energybook.measure.lean.pieces.fill_cache`: random
N(0, 1) values), not with the keys and values of real prompts. This measures one decode piece
(:func:`~energybook.measure.lean.pieces.decode_piece`, the sweep's own) at a few contexts with the cache holding:

* ``random``: the sampled protocol's fill;
* ``zeros``: what a freshly allocated cache holds;
* ``prefilled``: the keys and values of a real prefill of random prompts up to that context (the full protocol's);
* ``random`` again, last, to bound the drift of the board between windows.

Each is one energy window (the sweep's :func:`~energybook.measure.sampled_sweep.measure_piece`). Prints J and ms
per decode step and each fill's ratio to ``random``; writes the record with its provenance.

Usage: ``python -m benchmarks.kv_contents [OUT.json] [--model M] [--batch B] [--contexts C ...] [--window S]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

FILLS = ("random", "zeros", "prefilled", "random")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="kv_contents.json")
    ap.add_argument("--model", default="Llama-3.2-1B")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 4000])
    ap.add_argument("--window", type=float, default=2.0, help="seconds per energy window")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("kv_contents.py measures on an NVIDIA GPU: no CUDA device here", file=sys.stderr)
        return 2
    from energybook.measure.lean import pieces as P
    from energybook.measure.meter import Meter
    from energybook.measure.sampled_sweep import measure_piece

    eng = harness.build_engine(args.model, "lean", device="cuda")
    meter = Meter.for_device("cuda").start()
    prov = harness.provenance("cuda", engine="lean", settings=getattr(eng, "engine_settings", None), meter=meter)
    print(harness.say_provenance(prov), flush=True)
    rows = []
    try:
        for c in args.contexts:
            P.prepare_pieces(eng, args.batch, (c,), prompt_lengths=(c,))
            base = None
            for i, fill in enumerate(FILLS):
                P.fill_cache(eng, "zeros" if fill == "zeros" else "random", seed=i)
                if fill == "prefilled":
                    P.prefill_piece(eng, c, args.batch)()  # the keys and values of positions 0..c-1
                run = P.decode_piece(eng, args.batch, c)
                r = measure_piece(eng, meter, run, args.window)
                j, ms = r.energy_j / run.steps, r.duration_s / run.steps * 1e3
                base = base if base is not None else j
                rows.append({"model": args.model, "batch": args.batch, "context": c, "fill": fill, "order": i,
                             "j_per_step": j, "ms_per_step": ms, "power_w": r.energy_j / r.duration_s,
                             "ratio_to_random": j / base, "window_s": r.window_s, "ticks": r.ticks})
                print(f"context {c:5d} {fill:9s} {j:8.4f} J/step {ms:7.3f} ms/step {r.energy_j / r.duration_s:6.1f} W"
                      f"  x{j / base:.4f}", flush=True)
            eng.release_wave()
    finally:
        meter.stop()
    worst = max(abs(r["ratio_to_random"] - 1) for r in rows)
    print(f"largest difference from the random fill: {100 * worst:.2f}%")
    harness.write_record(args.out, {"rows": rows, "largest_difference_pct": 100 * worst,
                                    "protocol": f"one decode piece ({P.STRIDE + 1} steps) per window of at least "
                                                f"{args.window} s, fills in the order {list(FILLS)}"}, prov=prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
