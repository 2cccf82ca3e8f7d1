"""The GPU benchmarks of energybook (not shipped in the wheel): scripts named for the question they answer, run as
``python -m benchmarks.<name>`` from the checkout (or ``python benchmarks/<name>.py``), on one harness
(:mod:`benchmarks.harness`): the engine a sweep builds, one timer, one JSON record with provenance. Their committed
outputs are under ``benchmarks/results/`` and are read through :mod:`energybook.store.bench`."""
