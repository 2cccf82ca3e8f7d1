"""The model stage: what a forward pass costs and how energy follows from it.

* :mod:`~energybook.model.architecture`: the cost-relevant shape of a model, from its configuration,
  with a public registry of model families;
* :mod:`~energybook.model.complexity`: exact FLOPs and bytes of prefill and decode;
* :mod:`~energybook.model.formulas`: the study's energy formulas as lmfit models;
* :mod:`~energybook.model.fit`: fitting them, intervals, sweet spots, cross-validation;
* :mod:`~energybook.model.paper`: the study's published tables.

Nothing here measures or reads measured data: this stage imports no other stage.
"""
