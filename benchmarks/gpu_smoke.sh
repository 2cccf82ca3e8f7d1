#!/usr/bin/env bash
# End-to-end check of the measuring half on one GPU (not data for the book): the meter's GPU by UUID
# under CUDA_VISIBLE_DEVICES, a small sweep with `energybook sweep`, its resume, a second writer refused,
# and `energybook measure` running the sweep inside the notebook's kernel.
# Usage: bash benchmarks/gpu_smoke.sh OUT_DIR
set -uo pipefail
OUT=${1:?output folder}
mkdir -p "$OUT"
WS=$(mktemp -d)
export PYTHONUNBUFFERED=1
eb() { python3 -m energybook.cli "$@"; }
{
date -u +%Y-%m-%dT%H:%M:%SZ
nvidia-smi -L
nvidia-smi --query-gpu=name,uuid,driver_version,power.limit --format=csv
python3 - <<'PY'
import os
import torch
from energybook.measure.meter import Meter
for dev in ("cuda", "cuda:0"):
    m = Meter.for_device(dev)
    info = m.device_info()
    print(dev, "CUDA_VISIBLE_DEVICES=", os.environ.get("CUDA_VISIBLE_DEVICES"), "->", info["gpu"], info["gpu_uuid"],
          "torch", info["cuda_uuid"])
    assert info["gpu_uuid"].endswith(info["cuda_uuid"]), info
try:
    Meter.for_device("cuda:1")
except Exception as exc:
    print("cuda:1 refused:", type(exc).__name__, exc)
PY
CUDA_VISIBLE_DEVICES=0 python3 -c "
from energybook.measure.meter import Meter; i = Meter.for_device('cuda').device_info(); print('with CUDA_VISIBLE_DEVICES=0:', i['gpu_uuid'])"
ARGS=(sweep --model Llama-3.2-1B --n-in 64 512 --n-out 64 256 --n-req 200 --data "$WS" --min-window 1 --cooldown 0.5
      --no-progress)
echo "+ energybook ${ARGS[*]}"
time eb "${ARGS[@]}"
echo "+ the same command again (resume: nothing left)"
eb "${ARGS[@]}"
echo "+ two writers into one file: the second is refused"
eb "${ARGS[@]}" --n-out 64 128 --output "$WS/measured/two.csv" > "$OUT/w1.txt" 2>&1 &
sleep 8
eb sweep --model Llama-3.2-1B --n-in 64 512 --n-out 64 128 --n-req 200 --data "$WS" --output "$WS/measured/two.csv" \
   --no-progress; echo "second writer exit status $?"
wait; tail -3 "$OUT/w1.txt"
echo "+ energybook measure (papermill, the sweep in the notebook's kernel)"
eb measure --model Qwen2-1.5B --data "$WS" -p n_in '[64]' -p n_out '[64, 128]' -p n_req 100 -p min_window_s 1.0 \
   -p cooldown_s 0.5 --notebook-output "$WS/Qwen2-1.5B.ipynb" 2>&1 | grep -v "^\s*$" | tail -25
python3 - "$WS" <<'PY'
import sys
from energybook.store import results as R
from energybook.store.catalog import result_files
for p in result_files(sys.argv[1] + "/measured"):
    run = R.load_measured(p)
    d = run.data
    print(p.relative_to(sys.argv[1]), len(d), "rows; gpu_uuid", set(d.gpu_uuid), "sidecar", run.provenance["gpu_uuid"])
    print(d[["n_in", "n_out", "batch", "energy_j", "power_w", "tokens_per_j", "ticks", "samples", "meter_errors",
             "throttle_reasons"]].to_string(index=False))
PY
grep -c "/tmp/\|/root" "$WS/Qwen2-1.5B.ipynb" | sed 's/^/local paths in the executed notebook: /'
} 2>&1 | tee "$OUT/gpu_smoke.txt"
cp "$WS"/measured/*/*/Llama-3.2-1B/grid.csv "$OUT/llama_grid.csv" 2>/dev/null
cp "$WS"/measured/*/*/Llama-3.2-1B/grid.json "$OUT/llama_grid.json" 2>/dev/null
cp "$WS/Qwen2-1.5B.ipynb" "$OUT/" 2>/dev/null
