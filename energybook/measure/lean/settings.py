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


def describe(engine, build_s: float) -> dict:
    """What the lean engine records with every measurement (its ``settings``): these settings as it resolved
    them, its attention paths and its build."""
    a = engine.arch
    return {
        "engine": "lean", "model_impl": "energybook.measure.lean_engine: fused QKV and gate/up weights",
        "attention_path": ("prefill: causal SDPA (flash on Hopper) over the chunk's own K/V; decode: query heads "
                           "folded per KV head (B, K, G, h); eager decode: SDPA over exactly the live context; "
                           "graphs: per bucket, " + engine.decode_attention),
        "prefill_gqa": engine.prefill_gqa, "decode_attention": engine.decode_attention,
        "decode_attention_available": list(engine.paths_available), "decode_attention_chosen": {},
        "graphs": str(engine.cuda_graphs), "graph_buckets": (f"per (batch, bucket); buckets {engine.bucket_min} tokens "
                                                           f"wide, then context/16, at most {engine.bucket_max}"),
        "bucket_min": engine.bucket_min, "bucket_max": engine.bucket_max,
        "compile": engine.compile, "compile_prefill": engine.compile_prefill,
        "compile_mode": engine.compile_mode if engine.compile or engine.compile_prefill else None,
        "compile_mode_small": (f"{engine.compile_mode_small} at batches <= {engine.small_batch}"
                               if engine.compile and engine.small_batch and engine.compile_mode_small else None),
        "kv_cache": "one (L, 2, B, S, K, h) tensor per batch, S a bucket edge >= n_in + n_out - 1, zeroed once, "
                    "written in place",
        "greedy": "argmax on device, EOS ignored", "lm_head": "last position only, (rows, d) products"
        + ("; argmax of raw logits (logits_scaling is monotone)" if engine.config.logits_scaling != 1.0 else ""),
        "config": engine.config.to_dict(), "family": a.model_type, "max_positions": engine.max_positions,
        "dtype": str(engine.dtype).replace("torch.", ""), "weights": engine.weights, "seed": engine.seed,
        "weight_init": engine.weight_init if engine.weights == "dummy" else None, "prompts": engine.prompts,
        "max_batch": engine.max_batch, "memory_fraction": engine.memory_fraction,
        "prefill_tokens": engine.prefill_tokens, "device": str(engine.device), "build_s": round(build_s, 2),
    }


# ----- lengths and sizes ------------------------------------------------------------------------------
