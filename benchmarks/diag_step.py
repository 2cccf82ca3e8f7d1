"""Decode ms/step of the engine under the sweep's conditions (meter thread polling or not, graphs or eager)."""

import json
import sys

import torch

from energybook.measure.meter import Meter
from energybook.measure.torch_engine import TorchEngine

eng = TorchEngine("Llama-3.2-1B", device="cuda")
res = {}
for label, poll, graphs in (("eager_nometer", None, False), ("eager_poll2ms", 0.002, False),
                            ("eager_poll20ms", 0.02, False), ("graphs_poll2ms", 0.002, True)):
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
json.dump(res, open(sys.argv[1] if len(sys.argv) > 1 else "diag.json", "w"))
