"""The ``hf`` engine's model (:mod:`energybook.measure.torch_engine`): what it builds the transformers model
from and around.

* :data:`FAMILIES` and :func:`_check_family`: the families it runs, and the refusal of any other before
  anything is built;
* :func:`transformers_config`: transformers' configuration object of a Hugging Face configuration dict;
* :func:`_attention_features`, :func:`_describe_attention`, :func:`_head_note`: what the model asks of attention
  and of its LM head, for the engine's ``settings``;
* :func:`_is_norm`: the norms whose weights dummy weights set to 1;
* :func:`_make_cache_class`: the ``WaveCache`` class, the KV cache of one wave.

Every name here is also importable from :mod:`energybook.measure.torch_engine`.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

from energybook.measure.engines import EngineUnavailable
from energybook.measure.hf_attention import _AttnState
from energybook.model.families import RECORDS

#: The ``model_type`` values this engine runs (and checks against transformers' greedy ``generate``).
FAMILIES = tuple(r.model_type for r in RECORDS)


def transformers_config(cfg: dict):
    """transformers' configuration object of a Hugging Face configuration dict: ``AutoConfig.for_model`` of its
    ``model_type``, without the keys that describe the file rather than the model (architectures, versions, the
    checkpoint's name, its dtype)."""
    from transformers import AutoConfig

    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "_name_or_path",
                                                      "torch_dtype", "dtype")}
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)



def _check_family(arch, cfg: dict) -> None:
    """Refuse, before anything is built or measured, a family or an attention this engine does not run."""
    from energybook.measure.engines import engine_names

    others = [f"--engine {n}" for n in engine_names() if n not in ("torch", "hf")]
    instead = f"measure it with another engine ({' or '.join(others)})" if others else "use another engine"
    from energybook.model.architecture import family

    # the shipped families' records, and any registered with a record of its own (a bare parser counts only)
    if arch.model_type not in FAMILIES and family(arch.model_type).weights is None:
        raise EngineUnavailable(f"the torch engine does not run the {arch.model_type!r} family ({arch.name}): it "
                                f"runs {', '.join(FAMILIES)}; {instead}")
    from energybook.model.families.compute import Unsupported, no_bidirectional

    try:
        no_bidirectional(arch, cfg)  # the records' one reading of that key
    except Unsupported as exc:
        raise ValueError(f"{exc} ({arch.model_type}); {instead}") from None


def _attention_features(arch, config) -> dict:
    """What the model asks of attention beyond causal softmax: recorded in ``settings`` and honoured.

    (transformers passes the same per layer: ``sliding_window`` and ``softcap`` to :func:`_attention`.)
    """
    softcap = getattr(config, "attn_logit_softcapping", None)
    return {"sliding_window": arch.sliding_window if arch.sliding_layers else None,
            "sliding_layers": arch.sliding_layers, "softcap": softcap, "alibi": arch.position == "alibi"}


def _describe_attention(features: dict) -> str:
    parts = ["sdpa (flash on Hopper) over the live KV slice"]
    if features["sliding_window"]:
        parts.append(f"sliding window of {features['sliding_window']} tokens on {features['sliding_layers']} "
                     "layer(s): banded mask in prefill, the window's keys in decode")
    if features["softcap"] is not None:
        parts.append(f"logit soft-capping at {features['softcap']} by explicit products (SDPA has none)")
    if features["alibi"]:
        parts.append("ALiBi bias added to the logits")
    return "; ".join(parts)


def _head_note(config) -> str | None:
    """The LM head runs on raw logits: say so when the model rescales them (the argmax is unchanged)."""
    scalings = [k for k in ("final_logit_softcapping", "logits_scaling")
                if getattr(config, k, None) not in (None, 1, 1.0)]
    if not scalings:
        return None
    return f"argmax of the raw logits: {', '.join(scalings)} is monotone and leaves the greedy tokens unchanged"


def _is_norm(module) -> bool:
    """LayerNorm and the RMSNorm classes of transformers (weights set to 1 for dummy weights)."""
    import torch

    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")


def _make_cache_class():
    from transformers.cache_utils import Cache

    class WaveCache(Cache):
        """KV cache of one wave, preallocated at its full length and written in place.

        ``update`` writes the new keys/values at :attr:`pos` (or at the device index
        :attr:`pos_t` while capturing a CUDA graph) and returns the live slice
        ``[:, :, :pos + q]`` (or the bucket's slice ``[:, :, :graph_len]``).
        """

        def __init__(self, num_layers, batch, kv_heads, max_len, head_dim, dtype, device):
            super().__init__(layers=[])
            import torch

            shape = (batch, max_len, kv_heads, head_dim)  # flash layout; attention sees (B, K, S, h) views
            self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
            self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
            self.max_len = max_len
            self.pos = 0
            self.rows = slice(None)
            self.graph_len: int | None = None
            self.pos_t = None

        def __len__(self):
            return len(self.keys)

        @property
        def is_compileable(self) -> bool:
            return False

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return self.pos

        def get_max_cache_shape(self, layer_idx: int = 0) -> int:
            return self.max_len

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            kc = self.keys[layer_idx][self.rows]
            vc = self.values[layer_idx][self.rows]
            if self.graph_len is not None:
                kc.index_copy_(1, self.pos_t, key_states.transpose(1, 2))
                vc.index_copy_(1, self.pos_t, value_states.transpose(1, 2))
                if _AttnState.varlen is not None:  # flash varlen reads the live length itself
                    return kc.transpose(1, 2), vc.transpose(1, 2)
                return kc[:, : self.graph_len].transpose(1, 2), vc[:, : self.graph_len].transpose(1, 2)
            q = key_states.shape[2]
            end = self.pos + q
            if end > self.max_len:
                raise RuntimeError(f"KV cache overflow: position {end} > preallocated {self.max_len}")
            kc[:, self.pos:end] = key_states.transpose(1, 2)
            vc[:, self.pos:end] = value_states.transpose(1, 2)
            return kc[:, :end].transpose(1, 2), vc[:, :end].transpose(1, 2)

    return WaveCache
