"""Does a decode step's speed depend on the meter's polling thread? Decode ms/step of the hf engine under the
sweep's conditions: eager with no meter, eager with the meter polling every 2 ms or 20 ms, and CUDA graphs with the
meter polling every 2 ms (Llama 3.2 1B, n_in 128, 256 steps, batch 1000; not a test).

The engine is built as a sweep builds it (:func:`benchmarks.harness.build_engine`) and the record carries the
harness's provenance. Was ``benchmarks/diag_step.py`` (its output: ``benchmarks/results/diag_step.txt``).

Usage: ``python -m benchmarks.step_vs_meter_thread [OUT.json]`` (default ``diag.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/step_vs_meter_thread.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

#: (label, meter polling period in seconds or None for no meter, CUDA graphs)
CONDITIONS = (("eager_nometer", None, False), ("eager_poll2ms", 0.002, False), ("eager_poll20ms", 0.02, False),
              ("graphs_poll2ms", 0.002, True))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import torch

    if not torch.cuda.is_available():
        print("step_vs_meter_thread.py measures on an NVIDIA GPU: no CUDA device here", file=sys.stderr)
        return 2
    from energybook.measure.meter import Meter

    eng = harness.build_engine("Llama-3.2-1B", "hf", device="cuda")
    res = {}
    for label, poll, graphs in CONDITIONS:
        m = Meter(sync=torch.cuda.synchronize, poll_s=poll).start() if poll else None
        eng.generate(128, 33, 1000, cuda_graphs=graphs)
        w = eng.generate(128, 256, 1000, cuda_graphs=graphs, checkpoints=[64, 128, 256],
                         clock=m.now if m else None)
        res[label] = (w.times.end - w.times.prefill_end) / 255 * 1e3
        print(f"{label:16s} {res[label]:7.2f} ms/step", flush=True)
        if m:
            m.stop()
    best = min(res, key=res.get)
    print("BEST", best)
    harness.write_record(argv[0] if argv else "diag.json", {"ms_per_step": res, "best": best}, device="cuda",
                         engine="hf", settings=harness.settings_record("hf"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
