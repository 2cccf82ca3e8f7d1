#!/usr/bin/env bash
# The measuring runbook: models measured in parts that each fit one lent-machine call, resumed by the next call.
#
#   bash benchmarks/runbook.sh DATA SECONDS MODEL [MODEL ...]
#   bash benchmarks/runbook.sh DATA SECONDS study     # the study's 13 models, smallest first (STUDY_ORDER)
#
# DATA: the data folder that the next call brings back (only CSV and JSON files are written there);
# SECONDS: the time this call may spend measuring. In order: the GPU's peaks (`energybook peaks`, once per GPU),
# then each model with the lean engine and the sampled protocol (`energybook sweep --mode sampled`), each sweep
# given `--time-limit` of what is left; a model already complete in DATA is skipped by its own sweep (it resumes),
# so rerunning the same command in the next call goes on where this one stopped. Files are per GPU: results go
# to DATA/measured/<gpu>/lean/<model>/sampled.csv, and a file never takes another GPU's rows (the writer refuses).
# Extra sweep flags: RUNBOOK_FLAGS="--n-req 100" bash benchmarks/runbook.sh ...
set -uo pipefail
DATA=${1:?data folder}; SECONDS_LEFT=${2:?seconds}; shift 2
[ $# -ge 1 ] || { echo "usage: bash benchmarks/runbook.sh DATA SECONDS MODEL [MODEL ...]" >&2; exit 2; }
if [ "$*" = study ]; then  # smallest first: each call adds whole models, and the book is whole after each
  # shellcheck disable=SC2046
  set -- $(python3 -c "from energybook.model.architecture import STUDY_ORDER; print(' '.join(STUDY_ORDER))")
fi
T0=$(date +%s)
left() { echo $(( SECONDS_LEFT - ($(date +%s) - T0) )); }
mkdir -p "$DATA"
nvidia-smi -L || { echo "runbook: no GPU here (nvidia-smi failed)" >&2; exit 1; }
UUID=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -n 1)
if [ ! -f "$DATA/peaks/$UUID.json" ]; then
  python3 -m energybook peaks --data "$DATA" || echo "runbook: peaks failed; going on with the sweeps" >&2
fi
for M in "$@"; do
  L=$(left)
  if [ "$L" -lt 60 ]; then echo "runbook: $(( L )) s left: $M and the models after it wait for the next call"; break; fi
  echo "runbook: $M, at most $L s"
  # shellcheck disable=SC2086
  python3 -m energybook sweep --model "$M" --engine lean --mode sampled --data "$DATA" --time-limit "$L" \
    --no-progress ${RUNBOOK_FLAGS:-} || echo "runbook: $M stopped (rc $?); the same command resumes it" >&2
done
echo "runbook: done in $(( $(date +%s) - T0 )) s; files:"
find "$DATA" -name '*.csv' | sort
