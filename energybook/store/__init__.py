"""The store stage: measured results on disk, with their provenance.

* :mod:`~energybook.store.workspace`: the data folder and safe paths inside it;
* :mod:`~energybook.store.results`: the one entry point to a results CSV and its sidecar, re-exporting
  :mod:`~energybook.store.schema` (columns, cell types and ranges, file names), :mod:`~energybook.store.lock`
  (the writer's exclusive lock), :mod:`~energybook.store.writer` (written under the lock, atomically),
  :mod:`~energybook.store.loader` (checked when loaded) and :mod:`~energybook.store.merge` (the part files of a
  torchrun sweep merged into their file);
* :mod:`~energybook.store.catalog`: every results file of a workspace, each point counted once.
* :mod:`~energybook.store.bench`: the committed outputs of the GPU benchmarks, parsed from a folder the caller names.

This stage imports :mod:`energybook.model` at most.
"""
