"""The ``torch`` engine: greedy generation of identical requests with Hugging Face models.

The workload is the SweetSpot study's: ``batch`` requests of exactly ``n_in`` random prompt tokens,
each generating exactly ``n_out`` tokens (EOS ignored, counts verified). All requests of a wave
have the same length, so no padding and no attention masks are needed: the prefill is plain
causal attention and a decode step attends to every cached token.

What makes it fast and faithful, on top of the stock ``transformers`` model:

* :class:`WaveCache`, a KV cache preallocated once per wave at exactly ``n_in + n_out`` tokens
  (rounded up to the CUDA-graph bucket), written in place; each layer's update returns the
  *live* slice, so attention cost follows the live context, never a padded maximum;
* attention through ``torch.nn.functional.scaled_dot_product_attention`` (flash kernel on
  Hopper), registered with transformers' ``AttentionInterface`` (Falcon, whose modelling code picks
  its attention class by name, gets a subclass of its own ``FalconAttention`` that calls the same
  function); for decode, grouped-query heads are folded into the query length, so K/V are never
  repeated. What the model asks of attention is honoured, never dropped: sliding windows (a banded
  mask for a prompt longer than the window, the window's keys only in decode), Gemma 2's logit
  soft-capping (``softcap``: explicit products, as SDPA has none) and Falcon's ALiBi bias;
* logits for the last position only, argmax on the GPU, no host synchronisation per step;
* CUDA graphs for decode (the default for every batch): one graph per context bucket of 256
  tokens, attending to exactly each request's live context through flash attention's
  variable-length kernel, or, where that kernel is missing, to the bucket's slice of the cache
  under an additive mask over the not-yet-written positions.

Weights are random (``weights="dummy"``, normal with std 0.02, norms at 1) unless a local
checkpoint directory is given. Time and energy do not depend on the weights' values.

The engine runs the families in :data:`FAMILIES` (every shipped record of :mod:`energybook.model.families`), and any
registered later with a record of its own (:func:`~energybook.model.architecture.register_family`), and refuses any
other by name in its constructor, before anything is measured.
:meth:`TorchEngine.check_lengths` refuses a request longer than the positions the model serves.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from energybook.measure.engines import EngineUnavailable
from energybook.measure.wave import (  # noqa: F401 - re-exported: the hf engine's names before wave.py
    Wave,
    WaveTimes,
    causal_mask,
    check_wave,
    checkpoint_marker,
    init_dummy_,
    random_prompts,
    softcapped_attention,
)
from energybook.measure.wave import batch_limit as wave_batch_limit
from energybook.model.complexity import check_positive
from energybook.model.families import RECORDS

logger = logging.getLogger(__name__)

#: The attention implementation's name. It must not contain "sdpa": transformers then checks the model's own
#: SDPA support and refuses Gemma 2 (its SDPA path has no soft-capping), which this function honours.
ATTN_NAME = "energybook_attention"
_OLD_ATTN_NAME = "energybook_sdpa"  # the name before; still registered (benchmarks/bench_engine.py sets it)
BUCKET = 256

#: The ``model_type`` values this engine runs (and checks against transformers' greedy ``generate``).
FAMILIES = tuple(r.model_type for r in RECORDS)

#: Attention arguments of transformers models outside :data:`FAMILIES` that :func:`_attention` does not implement.
_REFUSED_KWARGS = ("s_aux", "sinks")


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        raise EngineUnavailable("the torch engine needs PyTorch and transformers: "
                                'pip install -e ".[gpu]" in a checkout of energybook') from exc
    return torch


class _AttnState:
    """Decode-graph state read by :func:`_attention` (None outside a CUDA-graph decode).

    ``mask``: additive mask over a bucket's slice (``sdpa_mask`` graphs), ``sliding_mask`` the same for
    the sliding-window layers (window ``window``); ``varlen``: the tensors (cu_seqlens_q, cu_seqlens_k,
    seqused_k, max_k) of flash attention's variable-length path, which reads exactly the live context of
    every request inside a graph (``flash_varlen`` graphs).
    """

    mask = None
    sliding_mask = None
    window = None
    varlen = None


def _flash_varlen_decode(query, key, value, scaling, sliding_window=None, alibi_slopes=None):
    """One decode token per request through ``aten._flash_attention_forward`` with ``seqused_k``.

    ``key``/``value`` are transposed views (B, K, S_max, h) of contiguous (B, S_max, K, h) buffers. A
    sliding window keeps the last ``sliding_window`` keys (flash's ``window_size_left``); ALiBi slopes go to
    flash's own bias (relative to the query, which changes no softmax row).
    """
    import torch

    b, h_q, _, d = query.shape
    cu_q, cu_k, used, max_k = _AttnState.varlen
    q = query.transpose(1, 2).reshape(b, h_q, d)
    k = key.transpose(1, 2).reshape(-1, key.shape[1], d)
    v = value.transpose(1, 2).reshape(-1, value.shape[1], d)
    extra = {}
    if sliding_window:
        extra.update(window_size_left=sliding_window - 1, window_size_right=0)
    if alibi_slopes is not None:
        extra["alibi_slopes"] = _flash_slopes(alibi_slopes, scaling)
    out = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, 1, max_k, 0.0, False, False,
                                                  scale=scaling, seqused_k=used, **extra)[0]
    return out.view(b, 1, h_q, d)


def _flash_slopes(slopes, scaling):
    """ALiBi slopes for flash attention, which adds ``-slope * |i - j|`` to the scaled logits.

    (PyTorch 2.11's flash build refuses ALiBi, so Falcon's decode graphs take ``sdpa_mask``; where a build
    takes it, :meth:`TorchEngine._pick_graph_attention` checks this convention against the eager path.)
    """
    import torch

    return (slopes.to(torch.bfloat16).float() * scaling).contiguous()


def _alibi_bias(slopes, start: int, length: int, scaling: float, dtype):
    """Falcon's ALiBi bias (H, length) for key positions start.. start+length-1: ``slope * j * scaling``.

    As transformers' ``build_alibi_tensor``, slope times position is taken in bfloat16 before the cast.
    """
    import torch

    positions = torch.arange(start, start + length, device=slopes.device)
    return (slopes.to(torch.bfloat16)[:, None] * positions).to(dtype) * scaling


def transformers_config(cfg: dict):
    """transformers' configuration object of a Hugging Face configuration dict: ``AutoConfig.for_model`` of its
    ``model_type``, without the keys that describe the file rather than the model (architectures, versions, the
    checkpoint's name, its dtype)."""
    from transformers import AutoConfig

    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "_name_or_path",
                                                      "torch_dtype", "dtype")}
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _attention(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, sliding_window=None,
               softcap=None, alibi_slopes=None, **kwargs):
    """SDPA over the live KV slice: causal for a prompt, unmasked for one decode token.

    What the layer asks for is honoured: ``sliding_window`` (a banded mask for a prompt longer than the
    window; in decode, the window's keys only), ``softcap`` (Gemma 2's logit soft-capping, by explicit
    products) and ``alibi_slopes`` (Falcon's ALiBi, passed by energybook's Falcon attention).

    Shapes: query (B, H, q, h); key, value (B, K, S, h). Returns (B, q, H, h).

    Raises:
        NotImplementedError: for attention arguments it does not implement (attention sinks).
    """
    import torch.nn.functional as F

    if alibi_slopes is None and type(module).__name__.endswith("FalconAttention"):
        # Falcon: the engine's requests are never padded, so its mask is causal and is built here; Falcon-RW's
        # ALiBi, which transformers folds into that mask, is taken from the module's slopes instead.
        attention_mask = None
        if module.config.alibi:
            alibi_slopes = _falcon_slopes(module, query.device)
    for name in _REFUSED_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"energybook's attention does not implement {name!r}: measure this model "
                                      "with another engine")
    b, h_q, q_len, d = query.shape
    k_heads = key.shape[1]
    groups = h_q // k_heads
    scaling = d**-0.5 if scaling is None else scaling
    if q_len == 1 and _AttnState.varlen is not None:
        return _flash_varlen_decode(query, key, value, scaling, sliding_window, alibi_slopes), None
    k_len = key.shape[2]
    k_start = 0  # position of the first key
    mask = attention_mask
    if q_len == 1 and _AttnState.mask is not None:  # CUDA-graph decode over the bucket's slice
        if sliding_window and sliding_window != _AttnState.window:
            raise RuntimeError(f"a layer asks for a sliding window of {sliding_window} tokens, the decode graph "
                               f"masks {_AttnState.window}")
        mask = _AttnState.sliding_mask if sliding_window else _AttnState.mask
    elif q_len == 1:
        if sliding_window and k_len > sliding_window:  # eager decode: the window's keys only
            key, value = key[:, :, -sliding_window:], value[:, :, -sliding_window:]
            k_start = k_len - sliding_window
    elif mask is None and (k_len != q_len or (sliding_window and k_len > sliding_window)
                           or softcap is not None or alibi_slopes is not None):
        mask = causal_mask(q_len, k_len, sliding_window, query.device, query.dtype)
    if q_len == 1:
        # All query heads of one KV head attend to the same keys: fold them into the query axis.
        query = query.reshape(b, k_heads, groups, d)
        bias_shape = (1, k_heads, groups, -1)
    else:
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        bias_shape = (1, h_q, 1, -1)
    if alibi_slopes is not None:
        bias = _alibi_bias(alibi_slopes, k_start, key.shape[2], scaling, query.dtype).view(bias_shape)
        mask = bias if mask is None else mask + bias
    if softcap is not None:
        out = softcapped_attention(query, key, value, mask, scaling, softcap)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None and q_len > 1,
                                             scale=scaling)
    if q_len == 1:
        return out.reshape(b, 1, h_q, d), None
    return out.transpose(1, 2).contiguous(), None


def falcon_dispatches_attention() -> bool:
    """Whether this transformers' Falcon attention calls the ``AttentionInterface`` (the public extension point).

    Newer releases do; older ones (5.17 among them) pick a whole attention class by name from a private table,
    and then :func:`_adopt_falcon_attention` gives each layer energybook's subclass after the model is built.
    """
    from transformers.models.falcon import modeling_falcon as mf

    return not hasattr(mf, "FALCON_ATTENTION_CLASSES")


def _falcon_slopes(module, device):
    """Falcon-RW's ALiBi slopes (H,), float32, as transformers' ``build_alibi_tensor`` makes them; cached on the
    attention module."""
    import torch
    from transformers.models.falcon import modeling_falcon as mf

    slopes = getattr(module, "_eb_slopes", None)
    if slopes is None or slopes.device != device:
        ones = torch.ones(1, 2, dtype=torch.long, device=device)
        alibi = mf.build_alibi_tensor(ones, module.num_heads, dtype=torch.float32)  # (H, 1, 2): 0, slope
        slopes = alibi.view(module.num_heads, 2)[:, 1].contiguous()
        module._eb_slopes = slopes
    return slopes


def _falcon_split(module, fused):
    """Query (B, H, S, h), key and value (B, K, S, h) of Falcon's fused QKV output (B, S, ...), for each of its
    three layouts: grouped (new decoder), multi-query, and interleaved per head."""
    b, s, _ = fused.shape
    hd = module.head_dim
    if module.new_decoder_architecture:
        qkv = fused.view(b, s, module.num_kv_heads, module.num_heads // module.num_kv_heads + 2, hd)
        query = qkv[:, :, :, :-2].reshape(b, s, module.num_heads, hd)
        key, value = qkv[:, :, :, -2], qkv[:, :, :, -1]
    elif module.multi_query:
        query, key, value = fused.view(b, s, module.num_heads + 2, hd).split([module.num_heads, 1, 1], dim=2)
    else:
        query, key, value = fused.view(b, s, module.num_heads, 3, hd).unbind(3)
    return (x.transpose(1, 2) for x in (query, key, value))


def _adopt_falcon_attention(model) -> int:
    """Give every Falcon attention module of ``model`` energybook's forward (transformers releases whose Falcon
    does not call the ``AttentionInterface``); returns how many modules were adopted.

    The modules keep their weights, projections and rotary embedding: only the class changes, to a subclass of
    transformers' own ``FalconAttention`` whose forward calls :func:`_attention` with the ALiBi slopes, as the
    ``AttentionInterface`` path does on newer releases.
    """
    from transformers.models.falcon import modeling_falcon as mf

    class EnergybookFalconAttention(mf.FalconAttention):
        """Falcon attention through energybook's :func:`_attention` (same weights as ``FalconAttention``)."""

        def forward(self, hidden_states, alibi=None, attention_mask=None, position_ids=None, layer_past=None,
                    use_cache=False, output_attentions=False, position_embeddings=None, **kwargs):
            b, s, _ = hidden_states.shape
            query, key, value = _falcon_split(self, self.query_key_value(hidden_states))
            if not self.config.alibi:
                cos, sin = position_embeddings
                query, key = mf.apply_rotary_pos_emb(query, key, cos, sin)
            if layer_past is not None:
                key, value = layer_past.update(key, value, self.layer_idx)
            out, _ = _attention(self, query, key, value, None, scaling=self.inv_norm_factor)
            return self.dense(out.reshape(b, s, self.num_heads * self.head_dim)), None

    adopted = 0
    for module in model.modules():
        if type(module) is mf.FalconAttention:
            module.__class__ = EnergybookFalconAttention
            adopted += 1
    return adopted


def _mask(config=None, dtype=None, device=None, **kwargs):
    """The attention mask transformers builds for :data:`ATTN_NAME`: none, as :func:`_attention` builds what it
    needs (the engine's requests are never padded).

    Only Falcon-RW's ALiBi path insists on a mask to fold its bias into: it gets a single zero, which broadcasts,
    and :func:`_attention` takes the slopes from the module instead.
    """
    import torch

    if config is not None and getattr(config, "model_type", None) == "falcon" and getattr(config, "alibi", False):
        return torch.zeros(1, 1, 1, 1, dtype=dtype, device=device)
    return None


def register_attention() -> str:
    """Register :func:`_attention` with transformers' ``AttentionInterface``, and its mask (:func:`_mask`) with
    ``AttentionMaskInterface``, under :data:`ATTN_NAME`; returns the name."""
    _torch()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name in (ATTN_NAME, _OLD_ATTN_NAME):
        AttentionInterface.register(name, _attention)
        AttentionMaskInterface.register(name, _mask)
    return ATTN_NAME


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
    if cfg.get("use_bidirectional_attention"):
        raise ValueError(f"{arch.name} ({arch.model_type}): use_bidirectional_attention is set; the torch engine "
                         f"runs causal decoders only; {instead}")


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


class TorchEngine:
    """In-process PyTorch/transformers engine for identical-length greedy generation.

    Args:
        model: Shipped architecture name (``"Llama-3.2-1B"``), a ``config.json`` path, or a local
            checkpoint directory (config plus weights, loaded with ``from_pretrained``).
        device: ``"cuda"`` (default when available) or ``"cpu"`` (tests only).
        weights: ``"dummy"`` (random) or ``"checkpoint"``; inferred from ``model`` when None.
        dtype: Torch dtype name; defaults to the configuration's (the study used native dtypes).
        max_batch: Largest batch (the study's engines used 1024).
        cuda_graphs: True (default: every decode batch through CUDA graphs), False, or ``"auto"``
            (graphs only for batches up to :attr:`graph_max_batch`). In a sweep the eager path ran at
            0.64-0.90 of the graphs' tokens/J on an H100 (``benchmarks/results/graphs_off_*``).
        graph_max_batch: Largest batch decoded through CUDA graphs in ``"auto"`` mode.
        memory_fraction: Share of the free device memory the KV cache and activations may take.
        prefill_tokens: Tokens per prefill chunk (requests are prefilled in chunks of this size).
        min_positions: For dummy weights of models with learned positions (OPT), raise
            ``max_position_embeddings`` to at least this (tokens); logged as a warning and recorded in
            :attr:`settings` (``max_position_embeddings_extended``).
        seed: Seed of the random weights and prompts.
        weight_init: Distribution of the dummy weights' matrices
            (:func:`energybook.measure.protocol.parse_weight_init`; default normal, std 0.02).
        prompts: ``"random"`` token ids, or one id ``"repeated"``.

    Raises:
        EngineUnavailable: for a family outside :data:`FAMILIES` (naming it and the engines to use
            instead), or when PyTorch, transformers or the CUDA device is missing.
        ValueError: for an unknown model, bad parameters, or a configuration asking for attention this
            engine does not implement (bidirectional attention).
    """

    def __init__(self, model: str | Path, device: str | None = None, weights: str | None = None,
                 dtype: str | None = None, max_batch: int = 1024, cuda_graphs: bool | str = True,
                 graph_max_batch: int = 128, memory_fraction: float = 0.92, prefill_tokens: int = 16384,
                 min_positions: int = 8192, seed: int = 0, weight_init: str = "normal:0.02",
                 prompts: str = "random"):
        torch = _torch()
        from energybook.model import architecture as A

        check_positive(max_batch=max_batch, prefill_tokens=prefill_tokens)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable("no CUDA device is visible to PyTorch: the torch engine measures on an "
                                    "NVIDIA GPU (device='cpu' is for tests only)")
        self.device = torch.device(device)
        self.torch = torch
        path = Path(str(model))
        checkpoint = path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
        self.weights = weights or ("checkpoint" if checkpoint else "dummy")
        if self.weights not in ("dummy", "checkpoint"):
            raise ValueError(f"weights must be 'dummy' or 'checkpoint', got {weights!r}")
        if path.is_dir() or path.suffix == ".json":
            cfg_dict = json.loads((path / "config.json" if path.is_dir() else path).read_text())
            self.name = path.name if path.is_dir() else path.stem
        else:
            cfg_dict = A.hf_config(str(model))  # raises ValueError naming the shipped models
            self.name = str(model)
        self.arch = A.Architecture.from_hf_config(cfg_dict, name=self.name)
        _check_family(self.arch, cfg_dict)
        self.dtype = getattr(torch, dtype or self.arch.dtype)
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs
        self.graph_max_batch = graph_max_batch
        self.memory_fraction = memory_fraction
        self.prefill_tokens = prefill_tokens
        self.seed = seed
        from energybook.measure.protocol import check_dummy_data

        check_dummy_data(weight_init, prompts)
        self.weight_init, self.prompts = weight_init, prompts
        self.settings: dict = {}
        self._build(cfg_dict, path if self.weights == "checkpoint" else None, min_positions)

    # ----- model -------------------------------------------------------------------------
    def _build(self, cfg_dict: dict, checkpoint: Path | None, min_positions: int) -> None:
        torch = self.torch
        from transformers import AutoModelForCausalLM

        attn = register_attention()
        falcon_legacy = self.arch.model_type == "falcon" and not falcon_dispatches_attention()
        build_attn = "sdpa" if falcon_legacy else attn  # such a Falcon knows no other name; adopted below
        cfg = dict(cfg_dict)
        positions_extended = None
        declared = self.arch.max_position_embeddings
        if checkpoint is None and self.arch.position == "learned" and declared < min_positions:
            positions_extended = [declared, min_positions]
            cfg["max_position_embeddings"] = min_positions
        t0 = time.perf_counter()
        if checkpoint is not None:
            model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=self.dtype, attn_implementation=build_attn)
            model.to(self.device)
        else:
            config = transformers_config(cfg)
            config._attn_implementation = build_attn
            with self.device:
                model = AutoModelForCausalLM.from_config(config, dtype=self.dtype, attn_implementation=build_attn)
            gen = torch.Generator(device=self.device).manual_seed(self.seed)
            norms = {id(m.weight) for m in model.modules() if _is_norm(m) and getattr(m, "weight", None) is not None}
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.ndim == 1 and (id(p) in norms or ("norm" in name and name.endswith("weight"))):
                        p.fill_(1.0)
                    else:
                        init_dummy_(p, self.weight_init, gen)
        if falcon_legacy:
            _adopt_falcon_attention(model)
            model.config._attn_implementation = attn
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.config = model.config
        self.vocab = int(model.config.vocab_size)
        self.lm_head = model.get_output_embeddings()
        self.decoder = model.base_model  # .model (Llama, OPT, ...), .transformer (Falcon), .gpt_neox (GPT-NeoX)
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        self.max_positions = int(model.config.max_position_embeddings)
        self.attention = _attention_features(self.arch, model.config)
        self.WaveCache = _make_cache_class()
        self.graph_attention = self._pick_graph_attention()
        self.settings = {
            "engine": "torch", "attention": _describe_attention(self.attention),
            "attention_path": (f"{attn}: energybook's FalconAttention subclass -> _attention" if falcon_legacy
                               else f"{attn}: AttentionInterface -> _attention"),
            "attention_features": self.attention,
            "max_positions": self.max_positions,
            "kv_cache": "preallocated per wave at n_in+n_out, written in place", "decode_graphs": str(self.cuda_graphs),
            "graph_max_batch": self.graph_max_batch, "graph_attention": self.graph_attention,
            "graph_bucket": BUCKET, "greedy": "argmax on device, EOS ignored",
            "dtype": str(self.dtype).replace("torch.", ""), "weights": self.weights, "seed": self.seed,
            "weight_init": self.weight_init if self.weights == "dummy" else None, "prompts": self.prompts,
            "max_batch": self.max_batch, "memory_fraction": self.memory_fraction,
            "prefill_tokens": self.prefill_tokens, "device": str(self.device),
            "max_position_embeddings_extended": positions_extended,
            "build_s": round(time.perf_counter() - t0, 2),
        }
        head = _head_note(model.config)
        if head:
            self.settings["lm_head"] = head
        if positions_extended:
            logger.warning("%s: dummy weights: learned positions (max_position_embeddings) extended %s -> %s; "
                           "the checkpoint serves %s", self.name, *positions_extended, positions_extended[0])

    def check_lengths(self, n_in: int, n_out: int) -> None:
        """Refuse a request longer than the positions the model serves.

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request.

        Raises:
            ValueError: naming the model, the lengths and the limit when ``n_in + n_out`` exceeds
                ``max_position_embeddings`` (or the learned positions extended for dummy weights). Dummy
                weights with rotary or ALiBi positions, which are computed rather than looked up, serve
                longer contexts with a warning, recorded in :attr:`settings` as ``positions_beyond_declared``.
        """
        check_positive(n_in=n_in, n_out=n_out)
        if n_in + n_out <= self.max_positions:
            return
        if self.weights == "dummy" and self.arch.position in ("rope", "alibi"):
            # Rotary and ALiBi positions are computed, not looked up: with random weights a longer context
            # costs what it would cost a model trained for it. Said in the log and the provenance.
            declared = self.settings.get("positions_beyond_declared", [self.max_positions, 0])
            self.settings["positions_beyond_declared"] = [declared[0], max(declared[1], n_in + n_out)]
            logger.warning("%s declares %d positions; dummy weights with %s positions serve %d (recorded in the "
                           "provenance as positions_beyond_declared)", self.name, self.max_positions,
                           self.arch.position, n_in + n_out)
            return
        extended = self.settings.get("max_position_embeddings_extended")
        why = (f"learned positions extended from {extended[0]} to {extended[1]} for dummy weights (min_positions)"
               if extended else "its max_position_embeddings")
        raise ValueError(f"{self.name}: n_in + n_out = {n_in} + {n_out} = {n_in + n_out} tokens exceeds the "
                         f"{self.max_positions} positions the model serves ({why}); use shorter lengths"
                         + ("" if extended or self.arch.position != "learned" or self.weights != "dummy"
                            else " or a larger min_positions"))

    # ----- sizing ------------------------------------------------------------------------
    def cache_len(self, n_in: int, n_out: int) -> int:
        """Preallocated cache length for one wave (tokens): n_in + n_out rounded up to the bucket."""
        return int(math.ceil((n_in + n_out) / BUCKET) * BUCKET)

    @property
    def profile(self):
        """This engine's :class:`~energybook.model.batch.EngineProfile`, with its memory fraction and chunk size."""
        import dataclasses

        from energybook.model.batch import HF_PROFILE

        return dataclasses.replace(HF_PROFILE, memory_fraction=self.memory_fraction,
                                   prefill_tokens=self.prefill_tokens)

    def batch_limit(self, n_in: int, n_out: int) -> int:
        """Largest batch whose KV cache and activations fit (requests): the one batch rule
        (:func:`energybook.measure.wave.batch_limit`), from the memory free at the first batch decision."""
        return wave_batch_limit(self, n_in, n_out)

    def use_graphs(self, batch: int) -> bool:
        """Whether decode at this batch runs through CUDA graphs."""
        if self.device.type != "cuda":
            return False
        if self.cuda_graphs == "auto":
            return batch <= self.graph_max_batch
        return bool(self.cuda_graphs)

    # ----- generation --------------------------------------------------------------------
    def _clock(self) -> float:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def generate(self, n_in: int, n_out: int, batch: int, checkpoints: list[int] | None = None,
                 on_checkpoint: Callable[[int, float], None] | None = None, clock: Callable[[], float] | None = None,
                 cuda_graphs: bool | None = None, return_tokens: bool = False) -> Wave:
        """Generate one wave: ``batch`` requests of ``n_in`` random prompt tokens, ``n_out`` new tokens each.

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request (EOS ignored).
            batch: Requests in the wave.
            checkpoints: Output counts (tokens per request) at which to synchronise and read the clock;
                points of the same ``n_in`` and batch are prefixes of one generation.
            on_checkpoint: Called with (tokens per request, time) at each checkpoint.
            clock: Device-synchronised clock (defaults to ``torch.cuda.synchronize`` + ``perf_counter``).
            cuda_graphs: Override the engine's choice for decode.
            return_tokens: Keep the generated token ids (``self.last_tokens``, shape batch x n_out).

        Raises:
            ValueError: for non-positive lengths, lengths beyond :meth:`check_lengths`, or a batch above
                ``max_batch``.
            RuntimeError: when the generated token count differs from the one asked for.
        """
        checkpoints = check_wave(self, n_in, n_out, batch, checkpoints)
        torch = self.torch
        clock = clock or self._clock
        graphs = self.use_graphs(batch) if cuda_graphs is None else (cuda_graphs and self.device.type == "cuda")
        a = self.arch
        max_len = self.cache_len(n_in, n_out)
        dev = self.device
        prompts = random_prompts(torch, self.vocab, self.seed, n_in, batch, dev, self.prompts)
        out = torch.full((batch, n_out), -1, dtype=torch.long, device=dev)
        positions = torch.arange(max_len, device=dev)
        cache = self.WaveCache(a.num_layers, batch, a.num_kv_heads, max_len, a.head_dim, self.dtype, dev)
        times = WaveTimes(start=0.0, prefill_end=0.0, end=0.0)
        mark = checkpoint_marker(times, checkpoints, clock, on_checkpoint)

        with torch.inference_mode():
            times.start = clock()
            chunk = max(1, self.prefill_tokens // n_in)
            for b0 in range(0, batch, chunk):
                rows = slice(b0, min(batch, b0 + chunk))
                cache.rows, cache.pos = rows, 0
                out[rows, 0] = self._next_token(prompts[rows], positions[:n_in].unsqueeze(0), cache).squeeze(1)
            cache.rows = slice(None)
            times.prefill_end = clock()
            mark(1)
            if graphs:
                self._decode_graphs(cache, out, positions, n_in, n_out, mark)
            else:
                tok = out[:, :1]
                for i in range(1, n_out):
                    pos = n_in + i - 1
                    cache.pos = pos
                    out[:, i:i + 1] = self._next_token(tok, positions[pos:pos + 1].view(1, 1), cache)
                    tok = out[:, i:i + 1]
                    mark(i + 1)
            times.end = clock()
            missing = int((out < 0).sum())
        if missing or out.shape != (batch, n_out):
            raise RuntimeError(f"token count check failed: {missing} of {batch * n_out} output tokens missing")
        self.last_tokens = out.cpu() if return_tokens else None
        del cache
        return Wave(batch, n_in, n_out, times, graphs)

    def _next_token(self, input_ids, position_ids, cache):
        """Greedy next token (B, 1) from the last position: the LM head runs on (B, d) rows only.

        (Slicing the hidden states inside the stock forward, ``logits_to_keep=1``, hands the LM head a
        strided 3-D input, which cuBLAS ran as a batched product re-reading the V x d weight per row.)
        """
        hidden = self.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=True,
                              **{self._cache_kw: cache}).last_hidden_state
        logits = self.lm_head(hidden[:, -1].contiguous())
        return logits.argmax(-1, keepdim=True)

    def _decode_graphs(self, cache, out, positions, n_in: int, n_out: int, mark) -> None:
        """Decode steps 1..n_out-1 through one CUDA graph per context bucket of 256 tokens.

        With ``graph_attention == "flash_varlen"`` attention reads exactly the live context of every
        request (``seqused_k``); with ``"sdpa_mask"`` it reads the bucket's slice under an additive mask.
        """
        torch = self.torch
        batch = out.shape[0]
        dev = self.device
        pos_t = torch.full((1,), n_in, dtype=torch.long, device=dev)  # position of the token fed in
        tok_buf = out[:, :1].clone()
        cache.pos_t = pos_t
        varlen = self.graph_attention == "flash_varlen"
        if varlen:
            cu_q = torch.arange(batch + 1, dtype=torch.int32, device=dev)
            cu_k = cu_q * cache.max_len
            used = torch.empty(batch, dtype=torch.int32, device=dev)
        neg_inf = torch.finfo(self.dtype).min
        window = self.attention["sliding_window"]
        stream = torch.cuda.Stream(device=dev)
        i = 1
        while i < n_out:
            pos = n_in + i - 1
            graph_len = min(cache.max_len, (pos // BUCKET + 1) * BUCKET)
            steps = min(n_out - i, graph_len - pos)  # steps whose fed position lies in this bucket
            key_idx = positions[:graph_len].view(1, 1, 1, graph_len)

            def body(graph_len=graph_len, key_idx=key_idx, pos=pos):
                if varlen:
                    used.copy_((pos_t + 1).expand(batch))
                    _AttnState.varlen = (cu_q, cu_k, used, graph_len)
                else:
                    _AttnState.mask = torch.where(key_idx <= pos_t, 0.0, neg_inf).to(self.dtype)
                    if window:
                        seen = (key_idx <= pos_t) & (key_idx > pos_t - window)
                        _AttnState.sliding_mask = torch.where(seen, 0.0, neg_inf).to(self.dtype)
                        _AttnState.window = window
                cache.graph_len = graph_len
                cache.pos = int(pos)
                nxt = self._next_token(tok_buf, pos_t.view(1, 1), cache)
                out.index_copy_(1, pos_t - (n_in - 1), nxt)
                tok_buf.copy_(nxt)
                pos_t.add_(1)

            try:
                stream.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(stream):
                    body()  # one real step, eager, also the capture's warm-up
                torch.cuda.current_stream(dev).wait_stream(stream)
                mark(i + 1)
                i += 1
                if steps > 1:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        body()
                    for _ in range(steps - 1):
                        g.replay()
                        mark(i + 1)
                        i += 1
                    del g
            finally:
                _AttnState.mask = _AttnState.sliding_mask = _AttnState.window = None
                _AttnState.varlen = None
                cache.graph_len = None
        cache.pos_t = None

    def _pick_graph_attention(self) -> str:
        """``flash_varlen`` when ``aten._flash_attention_forward`` with ``seqused_k`` matches SDPA here.

        The check uses the model's attention features (a sliding window, ALiBi) against :func:`_attention`'s
        eager path; soft-capping (Gemma 2), which flash's aten kernel lacks, always takes ``sdpa_mask``.
        """
        torch = self.torch
        if self.device.type != "cuda":
            return "none"
        if self.attention["softcap"] is not None:
            logger.info("%s: logit soft-capping: decode graphs use masked attention by explicit products", self.name)
            return "sdpa_mask"
        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            b, h, k, d, s, used = 3, 8, 2, 64, 512, 300
            window = 64 if self.attention["sliding_window"] else None
            slopes = None
            if self.attention["alibi"]:
                slopes = torch.tensor([2.0 ** (-(i + 1)) for i in range(h)], device=self.device)

            def r(*shape):
                return torch.randn(*shape, device=self.device, dtype=self.dtype, generator=g)

            q, kc, vc = r(b, h, 1, d), r(b, s, k, d), r(b, s, k, d)
            _AttnState.varlen = (torch.arange(b + 1, dtype=torch.int32, device=self.device),
                                 torch.arange(b + 1, dtype=torch.int32, device=self.device) * s,
                                 torch.full((b,), used, dtype=torch.int32, device=self.device), s)
            got = _flash_varlen_decode(q, kc.transpose(1, 2), vc.transpose(1, 2), d**-0.5, window, slopes)
            _AttnState.varlen = None
            ref, _ = _attention(None, q.float(), kc[:, :used].transpose(1, 2).float(),
                                vc[:, :used].transpose(1, 2).float(), scaling=d**-0.5, sliding_window=window,
                                alibi_slopes=slopes)
            err = float((got.float() - ref).norm() / ref.norm())
            if err < 2e-2:
                return "flash_varlen"
            logger.warning("flash varlen decode disagrees with SDPA (rel. error %.3g; window %s, ALiBi %s): "
                           "using masked SDPA", err, window, slopes is not None)
        except Exception as exc:  # noqa: BLE001 - older torch: no seqused_k, window or ALiBi
            logger.warning("flash varlen decode unavailable (%s): using masked SDPA in graphs", exc)
        finally:
            _AttnState.varlen = None
        return "sdpa_mask"

    def release(self) -> None:
        """Free the model's device memory."""
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
