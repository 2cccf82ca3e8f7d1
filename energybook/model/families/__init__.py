"""Model families as declarative records (:class:`Family`): the :class:`~energybook.model.architecture.Architecture`
fields a Hugging Face configuration of the family gives (its parser), and the names of its weights in transformers'
state dicts (:class:`WeightMap`), from which the lean engine packs its fused tensors.

:data:`RECORDS` holds the shipped families in registration order; :mod:`energybook.model.architecture` registers
them (:func:`~energybook.model.architecture.register_family` takes a parser or a :class:`Family`). :data:`OLMO2`
is a record shipped but not registered: ``register_family("olmo2", OLMO2)`` adds it.

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging

from energybook.model.families import falcon, gemma, gpt_neox, llama, opt, starcoder2
from energybook.model.families.olmo2 import OLMO2
from energybook.model.families.record import LLAMA_WEIGHTS, Family, Parser, WeightMap

logger = logging.getLogger(__name__)

__all__ = ["LLAMA_WEIGHTS", "OLMO2", "RECORDS", "Family", "Parser", "WeightMap"]


def _records() -> list[Family]:
    by_type = {f.model_type: f for m in (llama, gemma, opt, falcon, starcoder2, gpt_neox) for f in m.RECORDS}
    order = ("llama", "granite", "qwen2", "gemma2", "opt", "falcon", "mistral", "phi3", "gemma", "starcoder2",
             "gpt_neox")
    return [by_type[t] for t in order] + [f for t, f in by_type.items() if t not in order]


#: The shipped families, in registration order.
RECORDS: list[Family] = _records()
