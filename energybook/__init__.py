"""energybook: the energy of LLM inference, measured on a GPU and modelled from FLOPs and bytes.

The package behind the energybook Jupyter Book. It reproduces and extends the SweetSpot study
(arXiv 2602.05695): architectures (:mod:`energybook.architecture`), FLOP and byte counts
(:mod:`energybook.complexity`), the energy formulas (:mod:`energybook.formulas`), fitting and
sweet spots (:mod:`energybook.fit`), data sets with provenance (:mod:`energybook.data`) and
plots (:mod:`energybook.plot`). Measuring needs an NVIDIA GPU: see :mod:`energybook.meter`,
:mod:`energybook.engine` and :mod:`energybook.sweep`.
"""

__version__ = "0.1.0"
