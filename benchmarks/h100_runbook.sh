#!/usr/bin/env bash
# Does the lean engine meet its targets on an H100? The H100 records of the engine targets (issue 12), in parts
# that each fit one 10-minute call of the lent machine (run from the checkout, on one H100; nothing is installed but
# what the machine has; the scripts run as modules of the benchmarks package, python3 -m benchmarks.<name>, with the
# checkout on PYTHONPATH). Every part writes under OUT and names the GPU,
# its UUID and the commit; copy the files to benchmarks/results/ (engine_targets.json where the book reads it).
#
#   bash benchmarks/h100_runbook.sh OUT targets   # the four engines side by side, the targets (about 8 min)
#   bash benchmarks/h100_runbook.sh OUT model OPT-1.3B    # one more model at the four corners (about 5.5 min);
#   bash benchmarks/h100_runbook.sh OUT model Qwen2-1.5B  # then, on any machine, into the targets' file:
#       python3 -m benchmarks.engine_targets --merge-models OUT/OPT-1.3B/engine_targets.json --out OUT
#   bash benchmarks/h100_runbook.sh OUT logits    # the 13 study architectures' logits against transformers
#   bash benchmarks/h100_runbook.sh OUT order     # alone against inside a sweep, and the n_in scan
#   bash benchmarks/h100_runbook.sh OUT profile   # the kernel-time profile the comparison chapter explains
#   bash benchmarks/h100_runbook.sh OUT grid [PREV] # the 7x7 grid with the lean engine, 7.5 minutes of groups per
#                                                 # call; PREV: the folder a previous call brought back (its
#                                                 # lean-grid/, copied into the checkout), resumed where it stopped.
#                                                 # The sidecar's measuring minutes are the issue's grid figure.
#
# The times are those of H200 runs of the same scripts (benchmarks/results/h200/), an H100 being slower at
# long contexts; set ENERGYBOOK_COMMIT when the checkout on the machine has no git metadata.
set -uo pipefail
OUT=${1:?usage: h100_runbook.sh OUT targets|model|logits|order|profile|grid}
PART=${2:?usage: h100_runbook.sh OUT targets|model|logits|order|profile|grid}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export ENERGYBOOK_COMMIT=${ENERGYBOOK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpu.txt"
if ! grep -q "H100" "$OUT/gpu.txt"; then
    echo "h100_runbook.sh: this GPU is not an H100; the issue's figures are H100 figures (for a diagnostic on" \
         "another GPU, run the scripts themselves and keep their files apart, as benchmarks/results/h200/ does)" >&2
    exit 2
fi
case "$PART" in
    targets) python3 -m benchmarks.engine_targets --out "$OUT" ;;
    model) M=${3:?usage: h100_runbook.sh OUT model MODEL}
           python3 -m benchmarks.engine_targets --out "$OUT/$M" --engines "" --models "$M" ;;
    logits) python3 -m benchmarks.gpu_logits --out "$OUT/gpu_logits" ;;
    order) python3 -m benchmarks.order_check --out "$OUT/order_check" --engine lean ;;
    profile) for b in 1000 1; do
                 python3 -m benchmarks.profile_step --engine lean --batch "$b" --context 128 --compile \
                     --steps 20 > "$OUT/profile_lean_batch$b.txt" 2>&1
             done
             tail -n 4 "$OUT"/profile_lean_batch*.txt ;;
    grid) mkdir -p "$OUT/lean-grid"
          if [ -n "${3:-}" ]; then cp "$3/grid.csv" "$3/grid.json" "$OUT/lean-grid/" || exit 2; fi
          python3 -m energybook.cli sweep --engine lean --model Llama-3.2-1B --data "$OUT/lean-grid" \
              --output "$OUT/lean-grid/grid.csv" \
              --time-limit 450 --no-progress ;;
    *) echo "h100_runbook.sh: unknown part '$PART': choose targets, model, logits, order, profile or grid" >&2
       exit 2 ;;
esac
