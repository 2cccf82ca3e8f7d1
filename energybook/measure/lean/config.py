"""The lean engine's configuration: what a model computes beyond its shape (:class:`LeanConfig`), read from a
Hugging Face configuration or refused by name (:func:`read_config`), with the rotary, ALiBi and sliding-window
tables it implies.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from energybook.measure.engines import EngineUnavailable

logger = logging.getLogger(__name__)

#: The ``model_type`` values this engine runs.
FAMILIES = ("llama", "mistral", "qwen2", "granite", "phi3", "gemma", "gemma2", "opt", "falcon", "gpt_neox",
            "starcoder2")
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


def _torch():
    """PyTorch, or a refusal that says how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover
        raise EngineUnavailable('the lean engine needs PyTorch: pip install -e ".[gpu]" in a checkout of '
                                'energybook') from exc
    return torch


@dataclass(frozen=True)
class LeanConfig:
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
        """Plain values for :attr:`~energybook.measure.lean.engine.LeanEngine.settings`."""
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}
        out["windows"] = list(self.windows)
        return out


def _instead(arch) -> str:
    return f"measure {arch.name} with --engine hf (energybook's transformers-based engine)"


def read_config(arch, cfg: dict) -> LeanConfig:
    """The :class:`LeanConfig` of a Hugging Face configuration dict, or a refusal.

    Reads both layouts of the rotary settings: ``rope_theta`` + ``rope_scaling`` (config.json files,
    transformers 4) and ``rope_parameters`` (transformers 5's ``to_dict``).

    Raises:
        EngineUnavailable: for a family outside :data:`FAMILIES` whose record
            (:func:`energybook.model.architecture.family`) names no ``compute`` fields, an activation outside
            :data:`GATED_ACTS` (or :data:`PLAIN_ACTS`), a rotary scaling other than :data:`ROPE_TYPES`, partial rotary
            embeddings outside GPT-NeoX, bidirectional attention, or a Falcon layout the engine does not run; the
            message says to use ``--engine hf``.
    """
    from energybook.model.architecture import family

    compute = family(arch.model_type).compute
    if arch.model_type not in FAMILIES and compute is None:
        raise EngineUnavailable(f"the lean engine does not run the {arch.model_type!r} family ({arch.name}): it "
                                f"runs {', '.join(FAMILIES)}; {_instead(arch)}")
    config = _read_family(arch, cfg)
    # a family registered with a record of its own (OLMo 2): read as Llama but for its record's compute fields
    return replace(config, **compute) if compute else config


def _read_family(arch, cfg: dict) -> LeanConfig:
    """Llama's layout and its relatives (mistral, qwen2, granite, phi3, Gemma, Gemma 2, and the families registered
    with ``compute`` fields); OPT, Falcon, GPT-NeoX and StarCoder2 through their own readers."""
    if arch.model_type == "opt":
        return _read_opt(arch, cfg)
    if arch.model_type == "falcon":
        return _read_falcon(arch, cfg)
    if arch.model_type == "gpt_neox":
        return _read_gpt_neox(arch, cfg)
    if arch.model_type == "starcoder2":
        return _read_starcoder2(arch, cfg)
    gemma = arch.model_type in ("gemma", "gemma2")
    if arch.model_type == "gemma2":
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    elif gemma:  # Gemma 1's legacy "gelu" means the tanh approximation (transformers rewrites it too)
        act = cfg.get("hidden_act") or "gelu_pytorch_tanh"
        act = "gelu_pytorch_tanh" if act == "gelu" else act
    else:
        act = cfg.get("hidden_act", "silu")
    if act not in GATED_ACTS:
        raise EngineUnavailable(f"{arch.name}: hidden_act {act!r}; the lean engine implements gated FFNs with "
                                f"{', '.join(GATED_ACTS)} only; {_instead(arch)}")
    _no_bidirectional(arch, cfg)
    rope = _read_rope(arch, cfg, partial_ok=arch.model_type == "phi3")  # Phi-4-mini's partial rotary
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
                     attn_softcap=_softcap(arch, cfg, "attn_logit_softcapping") if gemma2 else None,
                     final_softcap=_softcap(arch, cfg, "final_logit_softcapping") if gemma2 else None)
    multiplier = arch.hidden_size ** 0.5 if gemma else float(cfg.get("embedding_multiplier", 1.0)) if granite else 1.0
    return LeanConfig(
        rms_norm_eps=float(cfg.get("rms_norm_eps") or 1e-6), **rope,
        embedding_multiplier=multiplier, act=GATED_ACTS[act], windows=layer_windows(arch, cfg),
        residual_multiplier=float(cfg.get("residual_multiplier", 1.0)) if granite else 1.0,
        attention_scale=float(scale), logits_scaling=logits_scaling, **extra)


def _no_bidirectional(arch, cfg: dict) -> None:
    if cfg.get("use_bidirectional_attention"):
        raise EngineUnavailable(f"{arch.name}: use_bidirectional_attention is set; the lean engine runs causal "
                                f"decoders only; {_instead(arch)}")


def _read_rope(arch, cfg: dict, partial_ok: bool = False, partial_default: float = 1.0,
               theta_default: float = 10000.0) -> dict:
    """The rotary fields of :class:`LeanConfig` (``rope_theta``, ``rope_type``, ``rope_params``, ``rotary_dim``).

    Args:
        partial_ok: Partial rotary embeddings are applied (GPT-NeoX); else refused.
        partial_default: The family's rotary fraction when the configuration names none (GPT-NeoX: 0.25).
        theta_default: The family's rotary base when the configuration names none.

    Raises:
        EngineUnavailable: for a rotary scaling outside :data:`ROPE_TYPES`, or partial rotary embeddings where
            ``partial_ok`` is false (or covering an odd or zero number of dimensions).
    """
    params = dict(cfg.get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):  # per-layer-type parameters: one layer type here
        params = dict(params["full_attention"])
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(scaling, dict) or not isinstance(params, dict):
        raise EngineUnavailable(f"{arch.name}: rope_scaling must be an object; {_instead(arch)}")
    params = {**params, **scaling}
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    theta = cfg.get("rope_theta") or params.pop("rope_theta", None) or theta_default
    params.pop("rope_theta", None)
    if rope_type not in ROPE_TYPES:
        raise EngineUnavailable(f"{arch.name}: rotary scaling {rope_type!r}; the lean engine implements "
                                f"{', '.join(ROPE_TYPES)}; {_instead(arch)}")
    partial = params.pop("partial_rotary_factor", None)
    for key in ("partial_rotary_factor", "rotary_pct"):  # GPT-NeoX's config.json names it rotary_pct
        partial = cfg.get(key) if partial is None else partial
    partial = float(partial_default if partial is None else partial)
    rotary_dim = None
    if partial != 1.0:
        rotary_dim = int(arch.head_dim * partial)  # as transformers rounds it
        if not partial_ok or rotary_dim <= 0 or rotary_dim % 2:
            raise EngineUnavailable(f"{arch.name}: partial rotary embeddings ({partial}, {rotary_dim} of "
                                    f"{arch.head_dim} dimensions); the lean engine applies them to GPT-NeoX only, "
                                    f"over an even number of dimensions; {_instead(arch)}")
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


def _plain_act(arch, act: str) -> str:
    if act not in PLAIN_ACTS:
        raise EngineUnavailable(f"{arch.name}: activation {act!r}; the lean engine implements FFNs that are not "
                                f"gated with {', '.join(PLAIN_ACTS)} only; {_instead(arch)}")
    return PLAIN_ACTS[act]


def _read_gpt_neox(arch, cfg: dict) -> LeanConfig:
    """GPT-NeoX (Pythia): LayerNorms with biases, GELU FFN, partial rotary embeddings (``rotary_pct``, default 0.25;
    base ``rotary_emb_base``), a parallel residual (``use_parallel_residual``, default true) or a sequential one."""
    _no_bidirectional(arch, cfg)
    rope = _read_rope(arch, cfg, partial_ok=True, partial_default=0.25,
                      theta_default=float(cfg.get("rotary_emb_base") or 10000.0))
    return LeanConfig(rms_norm_eps=float(cfg.get("layer_norm_eps") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act=_plain_act(arch, cfg.get("hidden_act") or "gelu"),
                      parallel=bool(cfg.get("use_parallel_residual", True)), qkv_layout="per_head", **rope)


def _read_starcoder2(arch, cfg: dict) -> LeanConfig:
    """StarCoder2: LayerNorms with biases, GQA, rotary, biases everywhere (``use_bias``), a plain FFN (c_fc, c_proj)
    with ``hidden_act`` (tanh GELU), a sliding window on every layer when ``sliding_window`` is set."""
    _no_bidirectional(arch, cfg)
    return LeanConfig(rms_norm_eps=float(cfg.get("norm_epsilon") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act=_plain_act(arch, cfg.get("hidden_act") or "gelu_pytorch_tanh"),
                      windows=layer_windows(arch, cfg), **_read_rope(arch, cfg))


def _softcap(arch, cfg: dict, key: str) -> float | None:
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


def inv_freq(head_dim: int, config: LeanConfig):
    """Rotary inverse frequencies (head_dim / 2,), float32, as transformers computes them for this rope type
    (``head_dim``: the rotary dimensions, fewer than the head's with partial rotary embeddings)."""
    torch = _torch()
    base = config.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    p = config.rope_params
    if config.rope_type == "linear":
        return inv / p["factor"]
    if config.rope_type == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv


def _read_opt(arch, cfg: dict) -> LeanConfig:
    """OPT: pre-LayerNorm blocks with biases, ReLU FFN, learned positions (offset 2), no projection of the embeddings.

    Raises:
        EngineUnavailable: for OPT 350M's post-norm blocks or embedding projection, or another activation.
    """
    if not cfg.get("do_layer_norm_before", True):
        raise EngineUnavailable(f"{arch.name}: post-LayerNorm blocks (do_layer_norm_before false, OPT 350M); "
                                f"{_instead(arch)}")
    proj = cfg.get("word_embed_proj_dim")
    if proj not in (None, arch.hidden_size):
        raise EngineUnavailable(f"{arch.name}: word_embed_proj_dim {proj} differs from hidden_size "
                                f"{arch.hidden_size}; {_instead(arch)}")
    act = cfg.get("activation_function", "relu")
    if act != "relu" or not cfg.get("enable_bias", True) or not cfg.get("layer_norm_elementwise_affine", True):
        raise EngineUnavailable(f"{arch.name}: activation {act!r}, enable_bias {cfg.get('enable_bias', True)}, "
                                f"affine norms {cfg.get('layer_norm_elementwise_affine', True)}: the lean engine runs "
                                f"OPT's ReLU, biased, affine layout only; {_instead(arch)}")
    return LeanConfig(rms_norm_eps=1e-5, attention_scale=arch.head_dim ** -0.5, layer_norm=True, gated=False,
                      act="relu", positions="learned", position_offset=2)


def _read_falcon(arch, cfg: dict) -> LeanConfig:
    """Falcon's layouts: LayerNorms with biases, GELU, and

    * Falcon-RW: ALiBi, multi-head, sequential attention and MLP with two LayerNorms;
    * Falcon-7B's: rotary, multi-query (one KV head), attention and MLP in parallel from one LayerNorm (and the
      rotary multi-head or sequential variants of the old architecture);
    * the new decoder architecture (Falcon-40B, 180B, 11B): rotary, GQA (``num_kv_heads``), parallel attention and
      MLP from two LayerNorms (``ln_attn``, ``ln_mlp``; ``num_ln_in_parallel_attn`` 2, its default) or one (1).

    Raises:
        EngineUnavailable: for ALiBi outside Falcon-RW's layout, the new decoder architecture without parallel
            attention or the old one with two parallel LayerNorms (layouts transformers does not run either), or
            another activation.
    """
    alibi = bool(cfg.get("alibi", False))
    new = bool(cfg.get("new_decoder_architecture", False))
    parallel = bool(cfg.get("parallel_attn", True))
    multi_query = bool(cfg.get("multi_query", True))
    ln_parallel = cfg.get("num_ln_in_parallel_attn")
    if alibi:
        other = [name for name, bad in (("parallel attention", parallel), ("the new decoder architecture", new),
                                        ("multi-query attention", multi_query)) if bad]
        if other:
            raise EngineUnavailable(f"{arch.name}: Falcon with ALiBi and {', '.join(other)}; the lean engine runs "
                                    f"ALiBi in Falcon-RW's layout (sequential, multi-head) only; {_instead(arch)}")
    if new and not parallel:
        raise EngineUnavailable(f"{arch.name}: Falcon's new decoder architecture without parallel attention "
                                f"(parallel_attn false); {_instead(arch)}")
    if not new and parallel and ln_parallel == 2:
        raise EngineUnavailable(f"{arch.name}: Falcon's old decoder architecture with two parallel LayerNorms "
                                f"(num_ln_in_parallel_attn 2); {_instead(arch)}")
    act = cfg.get("activation", "gelu")
    if act != "gelu":
        raise EngineUnavailable(f"{arch.name}: activation {act!r}; {_instead(arch)}")
    rope = {} if alibi else _read_rope(arch, cfg)
    layout = "per_group" if new else "stacked" if multi_query else "per_head"
    return LeanConfig(rms_norm_eps=float(cfg.get("layer_norm_epsilon") or 1e-5), attention_scale=arch.head_dim ** -0.5,
                      layer_norm=True, gated=False, act="gelu", positions="alibi" if alibi else "rope",
                      parallel=parallel, qkv_layout=layout, **rope)


def alibi_slopes(heads: int):
    """ALiBi's slope of each head, as transformers' ``build_alibi_tensor`` computes them (float32, (heads,))."""
    import torch

    closest = 2 ** math.floor(math.log2(heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = torch.pow(torch.tensor(base, dtype=torch.float32), torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        n = min(closest, heads - closest)
        slopes = torch.cat([slopes, torch.pow(torch.tensor(extra, dtype=torch.float32),
                                              torch.arange(1, 1 + 2 * n, 2, dtype=torch.int32))])
    return slopes


def load_hf_config(model) -> tuple[dict, str, Path | None]:
    """(Hugging Face configuration dict, model name, checkpoint folder or None) of a shipped architecture name, a
    ``config.json`` path, a local checkpoint folder (config plus ``*.safetensors``/``*.bin``), or a dict.

    Raises:
        ValueError: for an unknown name (naming the shipped models).
    """
    from energybook.model import architecture as A

    if isinstance(model, dict):
        cfg = dict(model)
        return cfg, str(cfg.get("_name_or_path") or cfg.get("model_type") or "model").split("/")[-1], None
    path = Path(str(model))
    if path.is_dir() or path.suffix == ".json":
        cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        weights = path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
        return cfg, path.name if path.is_dir() else path.stem, path if weights else None
    return A.hf_config(str(model)), str(model), None  # hf_config raises ValueError naming the shipped models


def rope_tables(config: LeanConfig, head_dim: int, length: int, device, dtype) -> tuple:
    """Rotary cos/sin tables (positions ``length``, rotary dimensions) in ``dtype``, cast from float32 as transformers
    does; (None, None) without rotary positions."""
    if config.positions != "rope":
        return None, None
    torch = _torch()
    inv = inv_freq(config.rotary_dim or head_dim, config).to(device)
    freqs = torch.outer(torch.arange(length, device=device).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def alibi_bias(slopes, keys, arch, dtype):
    """The ALiBi bias (1, K, G, n) in ``dtype`` of keys at positions ``keys`` (n,), as transformers makes it: the slope
    (rounded to bfloat16) times the position, in bfloat16, then divided by sqrt(h), so that the attention's scale
    applies to it as to the logits. ``slopes``: :func:`alibi_slopes`."""
    torch = _torch()
    bias = (slopes.to(keys.device).to(torch.bfloat16)[:, None] * keys[None, :]).to(dtype) / math.sqrt(arch.head_dim)
    return bias.view(1, arch.num_kv_heads, arch.num_heads // arch.num_kv_heads, -1)

