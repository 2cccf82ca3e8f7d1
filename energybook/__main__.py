"""``python -m energybook``: the ``energybook`` command (:mod:`energybook.cli`)."""

import sys

from energybook.cli import main

if __name__ == "__main__":
    sys.exit(main())
