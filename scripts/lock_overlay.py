"""Write the floor job's overlay lock: the entries of a full lock (FLOOR_FULL, resolved with the oldest tested
transformers) that the test lock (TEST) does not pin the same way, to stdout.

``make test`` installs them with ``pip install --target`` and puts that folder first on ``PYTHONPATH`` for the
floor job, so the unit tests run again under the old transformers and its own dependencies. Run by ``make lock``.

``--select NAME LOCK`` prints one package's entry of a lock instead: ``make test`` installs torch's CPU build on its
own first (from PyTorch's CPU wheel index), so that no other package is looked up there.

Usage: python scripts/lock_overlay.py requirements/test.txt FLOOR_FULL > requirements/floor.txt
       python scripts/lock_overlay.py --select torch requirements/test.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def entries(text: str) -> dict[str, tuple[str, str]]:
    """``{normalised name: (version, the entry's whole text)}`` of a pip-compile lock with hashes."""
    out: dict[str, tuple[str, str]] = {}
    name = None
    for line in text.splitlines():
        m = _PIN.match(line)
        if m:
            name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            out[name] = (m.group(2), line + "\n")
        elif name and (line.startswith("    ") or not line.strip()):
            version, block = out[name]
            out[name] = (version, block + line + "\n")
        else:
            name = None
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--select":
        entry = entries(Path(argv[2]).read_text()).get(argv[1])
        if entry is None:
            print(f"{argv[2]} has no entry for {argv[1]}", file=sys.stderr)
            return 1
        sys.stdout.write(entry[1])
        return 0
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    test, full = (entries(Path(p).read_text()) for p in argv)
    differ = {n: e for n, e in full.items() if test.get(n, (None,))[0] != e[0]}
    if "transformers" not in differ:
        print(f"{argv[1]} pins the same transformers as {argv[0]}: nothing for the floor job to test", file=sys.stderr)
        return 1
    sys.stdout.write("# The floor job's overlay (make lock: scripts/lock_overlay.py): what the full resolution with\n"
                     "# requirements/floor.in pins differently from requirements/test.txt. Installed with --target,\n"
                     "# first on PYTHONPATH, by `make unit-floor`.\n")
    for name in sorted(differ):
        sys.stdout.write(differ[name][1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
