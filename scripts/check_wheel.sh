#!/usr/bin/env bash
# The wheel job: build energybook's wheel, install it (not editable) into a fresh virtual environment with
# its base dependencies only (no torch, no book packages), and use it from a folder outside the checkout.
# A plain `pip install energybook` must find its model configurations, the study's tables and the
# measurement notebook (package data), and must never write into site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "+ building the wheel (from a copy of the tree, so that no build/ folder is left here)"
mkdir -p "$WORK/src"
tar --exclude=./.venv --exclude=./_build --exclude=./.git --exclude=./build --exclude=./dist -cf - . \
    | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
"$PYTHON" -m venv "$WORK/venv"
echo "+ installing $(basename "$WORK"/dist/*.whl) into a fresh venv (base dependencies only)"
# The base dependencies from the lock (exact versions, hashes), then the wheel itself.
"$WORK/venv/bin/python" -m pip install --quiet --require-hashes --no-deps -r requirements/base.txt
"$WORK/venv/bin/python" -m pip install --quiet --no-deps "$WORK"/dist/*.whl
"$WORK/venv/bin/python" -m pip check
mkdir -p "$WORK/elsewhere"
cd "$WORK/elsewhere"
if "$WORK/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "torch is installed in the base environment: the wheel job must run without it" >&2; exit 1
fi
"$WORK/venv/bin/energybook" models | tee models.txt
listed=$(($(wc -l < models.txt) - 1))
if [ "$listed" -ne 13 ]; then
    echo "energybook models listed $listed models, expected the 13 shipped ones" >&2; exit 1
fi
"$WORK/venv/bin/energybook" --version
"$WORK/venv/bin/python" -m energybook counts --model Llama-3.2-1B --n-in 64 --n-out 256
"$WORK/venv/bin/energybook" predict --model Llama-3.2-1B --n-in 64 --n-out 256 --json | tee predict.json
"$WORK/venv/bin/python" -c "import json; d = json.load(open('predict.json')); assert d['tokens_per_j'] > 0, d"
"$WORK/venv/bin/python" - <<'PY'
import energybook as eb
from energybook.measure.notebook import notebook_source
from energybook.store.workspace import Workspace

assert notebook_source().is_file(), notebook_source()
assert len(eb.paper_table2()) == 13
ws = Workspace.resolve()
assert "site-packages" not in str(ws.root), ws.root
try:
    Workspace(notebook_source().parent)
except ValueError as exc:
    assert "inside the installed package" in str(exc)
else:
    raise AssertionError("a workspace inside site-packages was accepted")
print("wheel ok:", eb.__version__, "workspace", ws.root)
PY
# The measurement commands need the gpu extra: without it they must say so, not crash.
set +e
"$WORK/venv/bin/energybook" sweep --model Llama-3.2-1B --n-in 64 --n-out 64 --no-progress 2> err.txt
rc=$?
set -e
cat err.txt
if [ "$rc" -ne 1 ] || ! grep -q "energybook: error:" err.txt || ! grep -qF 'pip install -e ".[gpu]"' err.txt; then
    echo "energybook sweep without the gpu extra should fail with a one-line error naming the install (exit 1)," \
         "got $rc" >&2; exit 1
fi
if ls "$WORK"/venv/lib/python*/site-packages/energybook/measured "$WORK"/venv/lib/python*/site-packages/measured \
    >/dev/null 2>&1; then
    echo "results were written into site-packages" >&2; exit 1
fi
echo "wheel job passed"
