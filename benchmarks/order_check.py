"""Issue 12's order-independence checks on one GPU (not a test): is a point's energy the same whatever ran
before it in the process?

1. **Alone vs inside a sweep.** Each of ``--points`` is measured alone, each in a fresh process
   (``energybook sweep`` with that one point), then all of them together with their grid neighbours in one
   shuffled sweep (a second fresh process). Tokens per joule must agree within 1%.
2. **A scan of n_in** from 64 to 256 in steps of 16 at n_out 192 and batch 1000 (``max_batch`` 1000, N_req 1000),
   in one sweep: a smooth curve, no point more than 3% below the line through its two neighbours.

Every measurement goes through ``energybook sweep`` (the runner, its warm-up and the NVML meter by UUID) into a
fresh workspace under ``--out``; the files and a summary (``order_check.json``, ``order_check.txt``) stay there.

Usage (from the checkout, on the GPU)::

    PYTHONPATH=$PWD python3 benchmarks/order_check.py --out benchmarks/results/order_check [--engine lean]

``--dry-run`` prints the commands only; ``--allow-test-data --device cpu`` runs it on the CPU with the simulated
meter and a tiny model (what the tests do).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

#: Off-grid and grid points: the first is the n_in < 128 point that once ran alone 8.7% below the fit.
POINTS = ((96, 192), (64, 256), (512, 128))
SCAN_N_IN = tuple(range(64, 257, 16))
SCAN_N_OUT = 192
ALONE_TOL = 0.01
SCAN_TOL = 0.03


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the workspaces and the summary")
    ap.add_argument("--model", default="Llama-3.2-1B")
    ap.add_argument("--engine", default="lean")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n-req", type=int, default=1000)
    ap.add_argument("--points", nargs="*", default=[f"{a}x{b}" for a, b in POINTS], help="N_INxN_OUT")
    ap.add_argument("--scan", nargs="*", type=int, default=list(SCAN_N_IN), help="n_in of the scan")
    ap.add_argument("--scan-n-out", type=int, default=SCAN_N_OUT)
    ap.add_argument("--scan-batch", type=int, default=1000)
    ap.add_argument("--min-window", type=float, default=2.0)
    ap.add_argument("--cooldown", type=float, default=2.0)
    ap.add_argument("--allow-test-data", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    try:
        args.points = [tuple(int(x) for x in p.lower().split("x")) for p in args.points]
    except ValueError:
        ap.error(f"--points takes N_INxN_OUT, e.g. 96x192; got {args.points}")
    return args


def sweep_command(args, data: Path, n_in, n_out, n_req: int, max_batch: int = 1024) -> list[str]:
    """The ``energybook sweep`` command of one measurement, into workspace ``data``."""
    cmd = [sys.executable, "-m", "energybook.cli", "sweep", "--model", args.model, "--engine", args.engine,
           "--n-in", *map(str, n_in), "--n-out", *map(str, n_out), "--n-req", str(n_req), "--max-batch",
           str(max_batch), "--data", str(data), "--device", args.device, "--min-window", str(args.min_window),
           "--cooldown", str(args.cooldown), "--no-progress"]
    return cmd + (["--allow-test-data"] if args.allow_test_data else [])


def tokens_per_j(data: Path) -> dict[tuple[int, int], float]:
    """(n_in, n_out) -> tokens/J of every results file in a workspace."""
    out = {}
    for path in sorted(Path(data).rglob("*.csv")):
        if ".part-" in path.name:
            continue
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                out[(int(r["n_in"]), int(r["n_out"]))] = float(r["tokens_per_j"])
    return out


def alone_vs_sweep(alone: dict, together: dict, tol: float = ALONE_TOL) -> list[dict]:
    """Per point: tokens/J alone and in the sweep, their ratio, and whether they agree within ``tol``."""
    rows = []
    for key in sorted(alone):
        ratio = alone[key] / together[key]
        rows.append(dict(n_in=key[0], n_out=key[1], alone=alone[key], in_sweep=together[key], ratio=ratio,
                         ok=abs(ratio - 1) <= tol))
    return rows


def scan_dips(scan: dict[int, float], tol: float = SCAN_TOL) -> list[dict]:
    """Per interior n_in: its tokens/J against the line through its two neighbours; a dip below ``tol`` fails."""
    xs = sorted(scan)
    rows = []
    for a, b, c in zip(xs, xs[1:], xs[2:]):
        line = scan[a] + (scan[c] - scan[a]) * (b - a) / (c - a)
        rows.append(dict(n_in=b, tokens_per_j=scan[b], line=line, ratio=scan[b] / line,
                         ok=scan[b] / line >= 1 - tol))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    commands = []
    for n_in, n_out in args.points:
        commands.append(("alone", (n_in, n_out), out / f"alone-{n_in}x{n_out}",
                         sweep_command(args, out / f"alone-{n_in}x{n_out}", [n_in], [n_out], args.n_req)))
    # All points with grid neighbours, in one shuffled sweep (the runner shuffles its groups by seed).
    ins = sorted({a for a, _ in args.points} | {64, 128, 512})
    outs = sorted({b for _, b in args.points} | {128, 256})
    commands.append(("sweep", None, out / "sweep", sweep_command(args, out / "sweep", ins, outs, args.n_req)))
    commands.append(("scan", None, out / "scan", sweep_command(args, out / "scan", args.scan, [args.scan_n_out],
                                                              args.scan_batch, max_batch=args.scan_batch)))
    for kind, _, _, cmd in commands:
        print(f"[{kind}] {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    for kind, _, data, cmd in commands:
        data.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(cmd, text=True, capture_output=True)
        (data / "log.txt").write_text(res.stdout + res.stderr)
        if res.returncode:
            print(f"[{kind}] failed ({res.returncode}); its log: {data / 'log.txt'}\n{res.stderr[-2000:]}")
            return res.returncode
    together = tokens_per_j(out / "sweep")
    alone = {k: v for kind, key, data, _ in commands if kind == "alone" for k, v in tokens_per_j(data).items()}
    scan = {k[0]: v for k, v in tokens_per_j(out / "scan").items()}
    order, dips = alone_vs_sweep(alone, together), scan_dips(scan)
    summary = dict(model=args.model, engine=args.engine, n_req=args.n_req, alone_tolerance=ALONE_TOL,
                   scan_tolerance=SCAN_TOL, alone_vs_sweep=order, scan=dips, scan_n_out=args.scan_n_out,
                   scan_batch=args.scan_batch, passed=all(r["ok"] for r in order + dips),
                   commands=[shlex.join(c) for *_, c in commands], test_data=bool(args.allow_test_data))
    (out / "order_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"{args.model}, engine {args.engine}: alone (fresh process) vs inside one shuffled sweep"]
    lines += [f"  ({r['n_in']}, {r['n_out']}): alone {r['alone']:.3f}, in sweep {r['in_sweep']:.3f} tok/J, "
              f"ratio {r['ratio']:.4f} {'ok' if r['ok'] else 'FAIL'}" for r in order]
    lines += [f"scan of n_in at n_out {args.scan_n_out}, batch {args.scan_batch}: tok/J against the neighbours' line"]
    lines += [f"  n_in {r['n_in']:4d}: {r['tokens_per_j']:.3f} vs {r['line']:.3f} ({r['ratio']:.4f}) "
              f"{'ok' if r['ok'] else 'FAIL'}" for r in dips]
    lines.append("passed" if summary["passed"] else "FAILED")
    (out / "order_check.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
