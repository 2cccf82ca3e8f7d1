"""The ``hf`` engine's attention (:mod:`energybook.measure.torch_engine`): the function transformers calls for
every attention layer, the mask it asks for, Falcon's adoption, and their registration.

* :func:`_attention`: SDPA over the live KV slice, honouring sliding windows, Gemma 2's soft-capping and Falcon's
  ALiBi; in a CUDA-graph decode it reads :class:`_AttnState` (the bucket's mask, or flash attention's
  variable-length tensors, :func:`_flash_varlen_decode`);
* :func:`_mask`: the (absent) mask transformers builds for it;
* :func:`register_attention`: both, with transformers' ``AttentionInterface`` and ``AttentionMaskInterface``,
  under :data:`ATTN_NAME`;
* Falcon on transformers releases whose Falcon does not call the ``AttentionInterface``
  (:func:`falcon_dispatches_attention`): :func:`_adopt_falcon_attention` gives each layer a subclass of its own
  ``FalconAttention`` that calls :func:`_attention`.

Every name here is also importable from :mod:`energybook.measure.torch_engine`.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

from energybook.measure.engines import EngineUnavailable
from energybook.measure.wave import causal_mask, softcapped_attention

#: The attention implementation's name. It must not contain "sdpa": transformers then checks the model's own
#: SDPA support and refuses Gemma 2 (its SDPA path has no soft-capping), which this function honours.
ATTN_NAME = "energybook_attention"
_OLD_ATTN_NAME = "energybook_sdpa"  # the name before; still registered (benchmarks/hf_engine_speed.py sets it)

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
