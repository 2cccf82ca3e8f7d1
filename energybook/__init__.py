"""energybook: the energy of LLM inference, measured on a GPU and modelled from FLOPs and bytes.

The package behind the energybook Jupyter Book, which follows and extends the SweetSpot study
(arXiv 2602.05695). Its stages, in the order imports run:

* :mod:`energybook.model`: architectures, FLOP and byte counts, the energy formulas and their fits,
  the study's tables;
* :mod:`energybook.store`: results files with provenance, in a workspace;
* :mod:`energybook.measure`: the meter, the engines and the resumable sweep (needs an NVIDIA GPU);
* :mod:`energybook.report`: the book's tables, figures and provenance pages.

The names below are the public API that the book's notebooks call, e.g.::

    import energybook as eb
    arch = eb.load_architecture("Llama-3.2-1B")
    eb.request_cost(arch, n_in=64, n_out=256)

They are imported on first use, so ``import energybook`` stays light and needs no GPU packages.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: Public name -> (module, attribute).
_API = {
    # model
    "Architecture": ("energybook.model.architecture", "Architecture"),
    "load_architecture": ("energybook.model.architecture", "load"),
    "available_models": ("energybook.model.architecture", "available"),
    "register_family": ("energybook.model.architecture", "register_family"),
    "study_models": ("energybook.model.architecture", "study_models"),
    "Cost": ("energybook.model.complexity", "Cost"),
    "prefill_cost": ("energybook.model.complexity", "prefill"),
    "decode_step_cost": ("energybook.model.complexity", "decode_step"),
    "request_cost": ("energybook.model.complexity", "request"),
    "GRID": ("energybook.model.complexity", "GRID"),
    "formula": ("energybook.model.formulas", "get"),
    "FitResult": ("energybook.model.fit", "FitResult"),
    "fit": ("energybook.model.fit", "fit"),
    "fit_all": ("energybook.model.fit", "fit_all"),
    "cross_validate": ("energybook.model.fit", "cross_validate"),
    "extremes": ("energybook.model.fit", "extremes"),
    "estimated_sweet_spot": ("energybook.model.fit", "estimated_sweet_spot"),
    "predict_grid": ("energybook.model.fit", "predict_grid"),
    "GpuSpec": ("energybook.model.roofline", "GpuSpec"),
    "point_bound": ("energybook.model.roofline", "point_bound"),
    "predict": ("energybook.model.physics", "predict"),
    "load_calibration": ("energybook.model.physics", "load_calibration"),
    "Prediction": ("energybook.model.physics", "Prediction"),
    "paper_table2": ("energybook.model.paper", "paper_table2"),
    "paper_table3": ("energybook.model.paper", "paper_table3"),
    "paper_table5": ("energybook.model.paper", "paper_table5"),
    "paper_surface": ("energybook.model.paper", "paper_surface"),
    # store
    "Workspace": ("energybook.store.workspace", "Workspace"),
    "Row": ("energybook.store.results", "Row"),
    "MeasuredRun": ("energybook.store.results", "MeasuredRun"),
    "DataError": ("energybook.store.results", "DataError"),
    "LockedError": ("energybook.store.results", "LockedError"),
    "load_measured": ("energybook.store.results", "load_measured"),
    "measured_runs": ("energybook.store.catalog", "measured_runs"),
    # measure
    "SweepConfig": ("energybook.measure.protocol", "SweepConfig"),
    "SweepResult": ("energybook.measure.runner", "SweepResult"),
    "run_sweep": ("energybook.measure.runner", "run_sweep"),
    "build_engine": ("energybook.measure.runner", "build_engine"),
    "engine_settings": ("energybook.measure.runner", "engine_settings"),
    "run_notebook": ("energybook.measure.notebook", "run_notebook"),
    "Meter": ("energybook.measure.meter", "Meter"),
    "MeterUnavailable": ("energybook.measure.meter", "MeterUnavailable"),
    "EngineUnavailable": ("energybook.measure.engines", "EngineUnavailable"),
    "make_engine": ("energybook.measure.engines", "make_engine"),
    "register_engine": ("energybook.measure.engines", "register_engine"),
    # report
    "measured_table": ("energybook.report.analysis", "measured_table"),
    "energy_views": ("energybook.report.views", "energy_views"),
    "advise": ("energybook.report.advise", "advise"),
    "parse_workload": ("energybook.report.advise", "parse_workload"),
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'energybook' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
