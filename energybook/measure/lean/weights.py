"""The lean engine's weights: random (``"dummy"``, drawn as the ``hf`` engine draws them), or transformers' tensors
re-packed into one fused QKV matrix and one fused gate/up matrix per layer, on the device (:class:`Weights`); the
names come from the family's record (:class:`~energybook.model.families.WeightMap`), one table-driven packer for all.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from energybook.measure.engines import EngineUnavailable
from energybook.measure.lean.config import LeanConfig, _torch
from energybook.measure.lean.layers import Layer
from energybook.measure.wave import init_dummy_

logger = logging.getLogger(__name__)


class Weights:
    """One model's tensors on the device, as the lean engine computes with them.

    Args:
        name: The model's name (for messages).
        arch: Its :class:`~energybook.model.architecture.Architecture`.
        config: Its :class:`~energybook.measure.lean.config.LeanConfig`.
        device: The torch device.
        dtype: The torch dtype of the matrices.
        seed: Seed of the random weights.
        weight_init: Distribution of the random matrices (:func:`energybook.measure.protocol.parse_weight_init`).
        cfg: The Hugging Face configuration (the names of some families' weights follow it).

    Attributes:
        embed: Token embeddings (V, d).
        pos_embed: Learned position embeddings (OPT), or None.
        layers: One :class:`~energybook.measure.lean.layers.Layer` per decoder layer.
        norm: The final norm's weight; norm_b: its bias (LayerNorm) or None.
        lm_head: The LM head (V, d); the embeddings themselves when tied.
    """

    def __init__(self, name: str, arch, config: LeanConfig, device, dtype, seed: int = 0,
                 weight_init: str = "normal:0.02", cfg: dict | None = None):
        self.torch = _torch()
        self.name, self.arch, self.config, self.cfg = name, arch, config, dict(cfg or {})
        self.device, self.dtype, self.seed, self.weight_init = device, dtype, seed, weight_init
        self.max_positions = arch.max_position_embeddings
        self.embed = self.pos_embed = self.norm = self.norm_b = self.lm_head = None
        self.layers: list[Layer] = []

    def _new(self, *shape, fill: float | None = None):
        torch = self.torch
        t = torch.empty(*shape, dtype=self.dtype, device=self.device)
        if fill is None:
            return init_dummy_(t, self.weight_init, self._gen)
        return t.fill_(fill)

    def init_dummy(self) -> None:
        """Random weights as the ``hf`` engine draws them: normal, std 0.02; norm weights 1; seeded."""
        a = self.arch
        self._gen = self.torch.Generator(device=self.device).manual_seed(self.seed)
        c = self.config
        d, qkv, i = a.hidden_size, a.q_width + 2 * a.kv_width, a.intermediate_size
        i13 = 2 * i if c.gated else i
        self.embed = self._new(a.vocab_size, d)
        if c.positions == "learned":  # dummy weights: a table long enough for the study's grid
            self.pos_embed = self._new(max(self.max_positions, 8192) + c.position_offset, d)

        def norm_b():
            return self._new(d, fill=0.0) if c.layer_norm else None

        def norm_w(n=d):  # Gemma's (1 + weight) in float32, with weight 0; OLMo 2's weight 1 in float32
            if c.norm_offset:
                return self._norm_weight(self.torch.zeros(n))
            return self._norm_weight(self.torch.ones(n)) if c.norm_float32 else self._new(n, fill=1.0)

        def pre_w():
            return norm_w() if c.pre_norms else None

        self.layers = []
        for _ in range(a.num_layers):
            layer = Layer(
                attn_norm=pre_w(), wqkv=self._new(qkv, d), bqkv=self._new(qkv) if a.qkv_bias else None,
                wo=self._new(d, a.q_width), bo=self._new(d) if a.o_bias else None, ffn_norm=pre_w(),
                w13=self._new(i13, d), b13=self._new(i13) if a.mlp_bias else None, w2=self._new(d, i),
                b2=self._new(d) if a.mlp_bias else None, attn_norm_b=norm_b(), ffn_norm_b=norm_b(),
                post_attn_norm=norm_w() if c.sandwich else None, post_ffn_norm=norm_w() if c.sandwich else None,
                q_norm=norm_w(a.q_width) if c.qk_norm else None, k_norm=norm_w(a.kv_width) if c.qk_norm else None)
            if a.norms_per_layer == 1:  # Falcon's one LayerNorm before parallel attention and MLP
                layer.ffn_norm, layer.ffn_norm_b = layer.attn_norm, layer.attn_norm_b
            self.layers.append(layer)
        self.norm = norm_w()
        self.norm_b = norm_b()
        self.lm_head = self.embed if a.tie_word_embeddings else self._new(a.vocab_size, d)
        del self._gen

    def _norm_weight(self, w):
        """A norm's weight as the engine stores it: Gemma's ``1 + weight`` in float32 on the device; else as is."""
        if self.config.norm_offset:
            return (1.0 + w.detach().float()).to(self.device).contiguous()
        if self.config.norm_float32:
            return w.detach().float().to(self.device).contiguous()
        return w.detach().to(device=self.device, dtype=self.dtype).contiguous()

    def load_checkpoint(self, path: Path) -> None:
        """Real weights: transformers reads the checkpoint on the CPU; the engine re-packs and moves them."""
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as exc:  # pragma: no cover
            raise EngineUnavailable('loading a checkpoint needs transformers: pip install -e ".[gpu]" in a '
                                    'checkout of energybook') from exc
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        self.pack(model.state_dict())
        del model

    def pack(self, sd: dict) -> None:
        """Transformers' tensors, found by the family's :class:`~energybook.model.families.WeightMap`: separate q/k/v
        and gate/up products fused, fused QKV rows re-packed as all queries, keys, values
        (:data:`~energybook.measure.lean.config.QKV_LAYOUTS`); everything moved to the device."""
        from energybook.model.architecture import family

        a, c = self.arch, self.config
        names = family(a.model_type).weight_map(a, self.cfg)
        if names is None:
            raise EngineUnavailable(f"{self.name}: the {a.model_type!r} family's record names no weights for the "
                                    "lean engine to pack")
        prefix = next((p for p in names.prefixes if p + names.embed + ".weight" in sd), None)
        if prefix is None:
            raise ValueError(f"{self.name}: the weights lack {names.prefixes[0] + names.embed + '.weight'!r}")

        def get(name, required=True):
            t = sd.get(prefix + name)
            if t is None and required:
                raise ValueError(f"{self.name}: the weights lack {prefix + name!r}")
            return None if t is None else t.detach()

        def put(*parts):
            if parts[0] is None:
                return None
            return self.torch.cat(parts, dim=0).to(device=self.device, dtype=self.dtype).contiguous()

        def products(parts, bias: bool, qkv: bool = False):
            """(weight, bias or None) of the products ``parts``, fused in this order."""
            w = put(*(get(x + ".weight") for x in parts))
            b = put(*(get(x + ".bias") for x in parts)) if bias else None
            return (self._unfuse(w), self._unfuse(b)) if qkv else (w, b)

        def norm(name, within: str = ""):
            """(weight, bias or None) of the norm ``within + name``; (None, None) where the family has none."""
            if name is None:
                return None, None
            bias = put(get(within + name + ".bias")) if c.layer_norm else None
            return self._norm_weight(get(within + name + ".weight")), bias

        self.embed = put(get(names.embed + ".weight"))
        self.pos_embed = put(get(names.pos_embed + ".weight")) if names.pos_embed else None
        self.layers = []
        for n in range(a.num_layers):
            p = f"{names.layers}.{n}."
            (attn_norm, attn_norm_b), (ffn_norm, ffn_norm_b) = norm(names.attn_norm, p), norm(names.ffn_norm, p)
            wqkv, bqkv = products([p + x for x in names.qkv], a.qkv_bias, qkv=True)
            wo, bo = products([p + names.o], a.o_bias)
            w13, b13 = products([p + x for x in names.up], a.mlp_bias)
            w2, b2 = products([p + names.down], a.mlp_bias)
            self.layers.append(Layer(
                attn_norm=attn_norm, wqkv=wqkv, bqkv=bqkv, wo=wo, bo=bo, ffn_norm=ffn_norm, w13=w13, b13=b13, w2=w2,
                b2=b2, attn_norm_b=attn_norm_b, ffn_norm_b=ffn_norm_b,
                post_attn_norm=norm(names.post_attn_norm, p)[0], post_ffn_norm=norm(names.post_ffn_norm, p)[0],
                q_norm=norm(names.q_norm, p)[0], k_norm=norm(names.k_norm, p)[0]))
        self.norm, self.norm_b = norm(names.final_norm)
        head = next((sd[k + ".weight"] for k in names.lm_head if k + ".weight" in sd), None)
        self.lm_head = self.embed if a.tie_word_embeddings or head is None else put(head.detach())

    def _unfuse(self, t):
        """Transformers' fused QKV rows -> (H * h + 2 * K * h, ...) as all queries, keys, values."""
        a, layout = self.arch, self.config.qkv_layout
        if t is None or layout in ("stacked", "separate"):
            return t
        heads, kv, h = a.num_heads, a.num_kv_heads, a.head_dim
        if layout == "per_head":  # (H, 3, h): q, k, v of each head
            return t.reshape(heads, 3, h, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        g = t.reshape(kv, heads // kv + 2, h, *t.shape[1:])  # per KV head: its G queries, its key, its value
        return self.torch.cat([g[:, :-2].reshape(heads * h, *t.shape[1:]),
                               g[:, -2].reshape(kv * h, *t.shape[1:]), g[:, -1].reshape(kv * h, *t.shape[1:])])
