"""The lean engine's settings: one frozen record of :class:`~energybook.measure.lean.engine.LeanEngine`'s
options (its docstring explains each), from which a sweep builds it and which its sidecar records.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

from dataclasses import dataclass

from energybook.measure.lean.attention import DECODE_ATTENTION
from energybook.measure.settings import DTYPES, option

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes the lean engine takes."""


@dataclass(frozen=True)
class LeanSettings:
    """The lean engine's settings."""

    dtype: str | None = option(None, "weights and activations dtype (none: the configuration's)", choices=DTYPES)
    cuda_graphs: bool | str = option(True, "CUDA graphs for decode (auto: the same as on for the lean engine)",
                                     flag="--graphs", choices=("auto",))
    decode_attention: str = option("auto", "decode attention way (auto: the fastest, tuned per bucket)",
                                   choices=("auto", *DECODE_ATTENTION))
    bucket_min: int = option(32, "narrowest decode-graph bucket (tokens)", low=1, high=2 ** 20)
    bucket_max: int = option(256, "widest decode-graph bucket (tokens)", low=1, high=2 ** 20)
    compile: bool | str = option("auto", "torch.compile the decode step's dense blocks (auto: on CUDA with Triton)",
                                 choices=("auto",))
    compile_mode: str = option("default", "torch.compile mode", choices=COMPILE_MODES)
    compile_prefill: bool | str = option("auto", "torch.compile the prefill's dense blocks too",
                                         choices=("auto",))
    compile_mode_small: str | None = option("max-autotune-no-cudagraphs", "torch.compile mode at batches up to "
                                            "--small-batch (none: --compile-mode)", choices=COMPILE_MODES)
    small_batch: int = option(8, "largest batch that uses --compile-mode-small (requests; 0: none)", low=0,
                              high=2 ** 20)
    memory_fraction: float = option(0.92, "share of free GPU memory the KV cache and activations may take",
                                    low=0.05, high=1.0)
    prefill_tokens: int = option(16384, "tokens per prefill chunk", low=1, high=2 ** 24)
