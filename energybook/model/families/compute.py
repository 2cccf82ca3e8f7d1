"""A family's compute spec (:class:`ComputeSpec`): what a model computes beyond its
:class:`~energybook.model.architecture.Architecture`'s shape (norms, rotary scaling, activations, soft caps, sliding
windows, how transformers fuses q, k and v), read from a Hugging Face configuration by the reader its family record
names (:attr:`~energybook.model.families.record.Family.compute`), or refused with :class:`Unsupported`.

The lean engine runs every family whose record has a compute spec (:mod:`energybook.measure.lean`).

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class Unsupported(ValueError):
    """A configuration asks for something the compute spec cannot express (the message says what)."""


ROPE_TYPES = ("default", "linear", "llama3")
#: Activations of a gated FFN: the configuration's name -> the engine's (SiLU; Gemma's tanh-approximated GELU).
GATED_ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
#: Activations of an FFN that is not gated (GPT-NeoX, StarCoder2): the configuration's name -> the engine's.
PLAIN_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
#: Layouts of a fused QKV matrix in transformers' weights (:mod:`~.weights`): ``"per_head"`` (q, k, v
#: of head 0, then head 1, ...: GPT-NeoX, multi-head Falcon), ``"per_group"`` (the G queries, key and value of KV
#: head 0, then of KV head 1, ...: Falcon's new decoder architecture) and ``"stacked"`` (all queries, then all keys,
#: then all values: multi-query Falcon, the engine's own layout).
QKV_LAYOUTS = ("per_head", "per_group", "stacked")


@dataclass(frozen=True)
class ComputeSpec:
    """What the model computes beyond the :class:`~energybook.model.architecture.Architecture`'s shape.

    Attributes:
        rms_norm_eps: Epsilon of every RMSNorm.
        rope_theta: Rotary base (wavelength scale).
        rope_type: ``"default"``, ``"linear"`` or ``"llama3"``.
        rope_params: The scaling parameters of ``rope_type`` (factor, low/high_freq_factor,
            original_max_position_embeddings).
        embedding_multiplier: Granite: the token embeddings are multiplied by it (1 elsewhere).
        residual_multiplier: Granite: each block's output is multiplied by it before the residual add.
        attention_scale: Softmax scale of attention: head_dim ** -0.5, or Granite's attention_multiplier.
        logits_scaling: Granite: the logits are divided by it (greedy tokens do not change).
        layer_norm: LayerNorm with a bias (OPT) instead of RMSNorm; its epsilon is ``rms_norm_eps``.
        gated: A SiLU-gated FFN (gate and up products); False: one product and ``act``.
        act: The activation of an FFN that is not gated: ``"relu"`` (OPT), ``"gelu"`` (Falcon, GPT-NeoX) or
            ``"gelu_tanh"`` (StarCoder2).
        positions: ``"rope"`` (rotary), ``"learned"`` (OPT: a table of position embeddings added to the token
            embeddings, read at position + ``position_offset``) or ``"alibi"`` (Falcon-RW: a bias of each query head's
            slope times the key's position, added to the attention logits).
        position_offset: The learned table's offset (OPT's 2).
        embedding_in_dtype: Gemma: the embedding multiplier (sqrt(d)) is rounded to the model's dtype before the
            product, as transformers does.
        norm_offset: Gemma: RMSNorm scales by ``1 + weight``; the engine stores ``1 + weight`` in float32 and
            multiplies in float32 before the cast, as transformers' Gemma norms do.
        sandwich: Gemma 2, OLMo 2: a norm after attention and after the FFN, before each residual add.
        pre_norms: A norm before attention and before the FFN (False: OLMo 2, whose only norms follow the branches).
        qk_norm: OLMo 2: RMSNorms over the whole query and key projections before the rotary embedding.
        norm_float32: Norm weights kept in float32 and multiplied in float32 before the cast (OLMo 2's norms;
            Gemma's through ``norm_offset``).
        attn_softcap: Gemma 2: each scaled attention logit ``s`` becomes ``attn_softcap * tanh(s / attn_softcap)``.
        final_softcap: Gemma 2: the logits become ``final_softcap * tanh(logits / final_softcap)`` (computed in the
            measured step, as the model does; greedy tokens do not change).
        windows: The sliding window of each layer (tokens; None for a full-attention layer), or () when no layer
            slides.
        rotary_dim: Partial rotary embeddings (GPT-NeoX's ``rotary_pct``): rotary on the first ``rotary_dim``
            dimensions of each query and key head, the others passed through; None: the whole head.
        parallel: Attention and FFN read the same block input and are summed, ``x + (ffn(norm2(x)) + attn(norm1(x)))``
            (GPT-NeoX's ``use_parallel_residual``, Falcon's ``parallel_attn``; Falcon's single-norm layouts hold one
            norm as both); False: sequential, ``x + attn``, then its FFN.
        qkv_layout: How transformers' weights fuse q, k and v (:data:`QKV_LAYOUTS`), or ``"separate"`` (q_proj,
            k_proj, v_proj).
    """

    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_params: dict = field(default_factory=dict)
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_scale: float = 0.125
    logits_scaling: float = 1.0
    layer_norm: bool = False
    gated: bool = True
    act: str = "silu"
    positions: str = "rope"
    position_offset: int = 0
    embedding_in_dtype: bool = False
    norm_offset: bool = False
    sandwich: bool = False
    pre_norms: bool = True
    qk_norm: bool = False
    norm_float32: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    windows: tuple = ()
    rotary_dim: int | None = None
    parallel: bool = False
    qkv_layout: str = "separate"

    def to_dict(self) -> dict:
        """Plain values (the lean engine records them in its settings)."""
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}
        out["windows"] = list(self.windows)
        return out


def no_bidirectional(arch, cfg: dict) -> None:
    if cfg.get("use_bidirectional_attention"):
        raise Unsupported(f"{arch.name}: use_bidirectional_attention is set; energybook's engines run causal "
                          "decoders only")


def read_rope(arch, cfg: dict, partial_ok: bool = False, partial_default: float = 1.0,
               theta_default: float = 10000.0) -> dict:
    """The rotary fields of :class:`ComputeSpec` (``rope_theta``, ``rope_type``, ``rope_params``, ``rotary_dim``).

    Args:
        partial_ok: Partial rotary embeddings are applied (GPT-NeoX); else refused.
        partial_default: The family's rotary fraction when the configuration names none (GPT-NeoX: 0.25).
        theta_default: The family's rotary base when the configuration names none.

    Raises:
        Unsupported: for a rotary scaling outside :data:`ROPE_TYPES`, or partial rotary embeddings where
            ``partial_ok`` is false (or covering an odd or zero number of dimensions).
    """
    params = dict(cfg.get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):  # per-layer-type parameters: one layer type here
        params = dict(params["full_attention"])
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(scaling, dict) or not isinstance(params, dict):
        raise Unsupported(f"{arch.name}: rope_scaling must be an object")
    params = {**params, **scaling}
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    theta = cfg.get("rope_theta") or params.pop("rope_theta", None) or theta_default
    params.pop("rope_theta", None)
    if rope_type not in ROPE_TYPES:
        raise Unsupported(f"{arch.name}: rotary scaling {rope_type!r}; the lean engine implements "
                          f"{', '.join(ROPE_TYPES)}")
    partial = params.pop("partial_rotary_factor", None)
    for key in ("partial_rotary_factor", "rotary_pct"):  # GPT-NeoX's config.json names it rotary_pct
        partial = cfg.get(key) if partial is None else partial
    partial = float(partial_default if partial is None else partial)
    rotary_dim = None
    if partial != 1.0:
        rotary_dim = int(arch.head_dim * partial)  # as transformers rounds it
        if not partial_ok or rotary_dim <= 0 or rotary_dim % 2:
            raise Unsupported(f"{arch.name}: partial rotary embeddings ({partial}, {rotary_dim} of "
                              f"{arch.head_dim} dimensions); the lean engine applies them to GPT-NeoX only, "
                              f"over an even number of dimensions")
    if rope_type == "llama3":
        params.setdefault("original_max_position_embeddings", arch.max_position_embeddings)
        missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in params]
        if missing:
            raise ValueError(f"{arch.name}: llama3 rotary scaling lacks {missing}")
    if rope_type == "linear" and "factor" not in params:
        raise ValueError(f"{arch.name}: linear rotary scaling lacks 'factor'")
    return dict(rope_theta=float(theta), rope_type=rope_type, rotary_dim=rotary_dim,
                rope_params={k: v for k, v in params.items() if k in ("factor", "low_freq_factor", "high_freq_factor",
                                                                       "original_max_position_embeddings")})


def plain_act(arch, act: str) -> str:
    if act not in PLAIN_ACTS:
        raise Unsupported(f"{arch.name}: activation {act!r}; the lean engine implements FFNs that are not "
                          f"gated with {', '.join(PLAIN_ACTS)} only")
    return PLAIN_ACTS[act]


def softcap(arch, cfg: dict, key: str) -> float | None:
    value = cfg.get(key)
    if value is None:
        return None
    if float(value) <= 0:
        raise ValueError(f"{arch.name}: {key} must be positive or null, got {value}")
    return float(value)


def layer_windows(arch, cfg: dict) -> tuple:
    """The sliding window of each layer (None: full attention), or () when no layer slides.

    ``layer_types`` decides where a configuration has it; otherwise Gemma 2 slides on its even layers (0, 2, ...;
    transformers' default) and every other family on its top ``sliding_layers`` layers (all of them for Mistral
    and StarCoder2; those from ``max_window_layers`` on for Qwen2).
    """
    if not arch.sliding_layers:
        return ()
    n = arch.num_layers
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n:
        slides = [t == "sliding_attention" for t in types]
    elif arch.model_type == "gemma2":
        slides = [i % 2 == 0 for i in range(n)]
    else:
        slides = [i >= n - arch.sliding_layers for i in range(n)]
    if sum(slides) != arch.sliding_layers:
        raise ValueError(f"{arch.name}: {sum(slides)} layers slide by layer_types, the architecture counts "
                         f"{arch.sliding_layers}")
    return tuple(arch.sliding_window if s else None for s in slides)


def read_llama_like(arch, cfg: dict) -> ComputeSpec:
    """Llama's layout and its relatives (mistral, qwen2, granite, phi3, Gemma, Gemma 2, and the families registered
    with ``compute`` fields): their compute spec."""
    gemma = arch.model_type in ("gemma", "gemma2")
    if arch.model_type == "gemma2":
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    elif gemma:  # Gemma 1's legacy "gelu" means the tanh approximation (transformers rewrites it too)
        act = cfg.get("hidden_act") or "gelu_pytorch_tanh"
        act = "gelu_pytorch_tanh" if act == "gelu" else act
    else:
        act = cfg.get("hidden_act", "silu")
    if act not in GATED_ACTS:
        raise Unsupported(f"{arch.name}: hidden_act {act!r}; the lean engine implements gated FFNs with "
                          f"{', '.join(GATED_ACTS)} only")
    no_bidirectional(arch, cfg)
    rope = read_rope(arch, cfg, partial_ok=arch.model_type == "phi3")  # Phi-4-mini's partial rotary
    granite = arch.model_type == "granite"
    scale = float(cfg.get("attention_multiplier", 1.0)) if granite else arch.head_dim ** -0.5
    logits_scaling = float(cfg.get("logits_scaling", 1.0)) if granite else 1.0
    if logits_scaling <= 0:
        raise ValueError(f"{arch.name}: logits_scaling must be positive, got {logits_scaling}")
    extra = {}
    if gemma:
        gemma2 = arch.model_type == "gemma2"
        if gemma2 and cfg.get("query_pre_attn_scalar"):
            scale = float(cfg["query_pre_attn_scalar"]) ** -0.5
        extra = dict(embedding_in_dtype=True, norm_offset=True, sandwich=gemma2,
                     attn_softcap=softcap(arch, cfg, "attn_logit_softcapping") if gemma2 else None,
                     final_softcap=softcap(arch, cfg, "final_logit_softcapping") if gemma2 else None)
    multiplier = arch.hidden_size ** 0.5 if gemma else float(cfg.get("embedding_multiplier", 1.0)) if granite else 1.0
    return ComputeSpec(
        rms_norm_eps=float(cfg.get("rms_norm_eps") or 1e-6), **rope,
        embedding_multiplier=multiplier, act=GATED_ACTS[act], windows=layer_windows(arch, cfg),
        residual_multiplier=float(cfg.get("residual_multiplier", 1.0)) if granite else 1.0,
        attention_scale=float(scale), logits_scaling=logits_scaling, **extra)
