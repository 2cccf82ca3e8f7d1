"""The store stage: measured results on disk, with their provenance.

* :mod:`~energybook.store.workspace`: the data folder and safe paths inside it;
* :mod:`~energybook.store.results`: one results CSV and its sidecar, written under an exclusive lock
  and checked when loaded;
* :mod:`~energybook.store.catalog`: every results file of a workspace.

This stage imports :mod:`energybook.model` at most.
"""
