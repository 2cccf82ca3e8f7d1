"""The ``energybook`` command.

Sub-commands:

* ``energybook models``: the shipped architectures with their sizes;
* ``energybook counts MODEL --n-in N --n-out M [--batch B]``: FLOPs and bytes of a workload;
* ``energybook book``: build the book from the committed data (CPU only);
* measurement sub-commands (``measure``, ``sweep``) are added by :mod:`energybook.sweep`.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _models(args: argparse.Namespace) -> int:
    from energybook import architecture as A

    print(f"{'model':24s} {'params (B)':>10s} {'layers':>6s} {'d':>5s} {'q/kv heads':>10s} {'FFN':>6s} "
          f"{'KV B/token':>10s} dtype")
    for name in A.available():
        a = A.load(name)
        print(f"{name:24s} {a.num_params / 1e9:10.3f} {a.num_layers:6d} {a.hidden_size:5d} "
              f"{a.num_heads:>4d}/{a.num_kv_heads:<5d} {a.ffn_kind:>6s} {a.kv_bytes_per_token:10d} {a.dtype}")
    return 0


def _counts(args: argparse.Namespace) -> int:
    from energybook import architecture as A
    from energybook import complexity as C

    arch = A.load(args.model)
    for method in C.METHODS:
        pre = C.prefill(arch, args.n_in, args.batch, method)
        step = C.decode_step(arch, args.n_in, args.batch, method)
        total = C.request(arch, args.n_in, args.n_out, args.batch, method)
        print(f"[{method}] {arch.name}, batch {args.batch}, n_in {args.n_in}, n_out {args.n_out}")
        print(f"  prefill           {pre.flops / 1e12:12.3f} TFLOP {pre.bytes / 1e9:10.3f} GB")
        print(f"  decode step (c={args.n_in}) {step.flops / 1e12:8.3f} TFLOP {step.bytes / 1e9:10.3f} GB")
        print(f"  whole workload    {total.flops / 1e12:12.3f} TFLOP {total.bytes / 1e9:10.3f} GB")
    return 0


def _book(args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(ROOT), "--all", "-W", "-n", "--keep-going"]
    if args.builder:
        cmd += ["--builder", args.builder]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``energybook`` command."""
    parser = argparse.ArgumentParser(prog="energybook", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the shipped architectures")
    p.set_defaults(func=_models)

    p = sub.add_parser("counts", help="FLOPs and bytes of a workload")
    p.add_argument("model", help="shipped model name or path to a config.json")
    p.add_argument("--n-in", type=int, default=64, help="prompt length (tokens)")
    p.add_argument("--n-out", type=int, default=256, help="output length (tokens)")
    p.add_argument("--batch", type=int, default=1, help="requests decoded together")
    p.set_defaults(func=_counts)

    p = sub.add_parser("book", help="build the book from the committed data (CPU only)")
    p.add_argument("--builder", default=None, help="Sphinx builder (default html)")
    p.set_defaults(func=_book)

    try:
        from energybook import sweep
    except ImportError:  # the measurement half is optional
        sweep = None
    if sweep is not None and hasattr(sweep, "add_cli"):
        sweep.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``energybook`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"energybook: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
