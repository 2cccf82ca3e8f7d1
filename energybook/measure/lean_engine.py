"""The lean engine's old module path: its names, re-exported from :mod:`energybook.measure.lean` (the package that
replaced this module), so that ``energybook.measure.lean_engine:LeanEngine`` and older imports keep working.

Used in :doc:`/book/experiment`.
"""

from energybook.measure.lean import *  # noqa: F403 - the old module's public names
from energybook.measure.lean import __all__  # noqa: F401
