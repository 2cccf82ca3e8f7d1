"""The lean engine itself (:class:`LeanEngine`): construction, wave state, preparation (graphs, compiled blocks,
attention ways), prefill and decode steps, generation. The package docstring (:mod:`energybook.measure.lean`)
describes what it computes.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from energybook.measure.engines import EngineUnavailable
from energybook.measure.lean import graphs as G
from energybook.measure.lean.attention import DECODE_ATTENTION, WAYS, Auto, PrefillAttention, check_ways
from energybook.measure.lean.config import _torch, alibi_bias, alibi_slopes, load_hf_config, read_config, rope_tables
from energybook.measure.lean.graphs import Preparation, WaveState, ranges
from energybook.measure.lean.layers import BlockSpec, compiled
from energybook.measure.lean.logits import greedy_logits
from energybook.measure.lean.settings import describe
from energybook.measure.lean.weights import Weights
from energybook.measure.wave import Wave, WaveTimes, check_wave, checkpoint_marker, random_prompts
from energybook.measure.wave import batch_limit as wave_batch_limit
from energybook.model.batch import bucket_edges
from energybook.model.complexity import check_positive

logger = logging.getLogger(__name__)


class LeanEngine:
    """A gpt-fast-style engine for identical-length greedy generation (llama, mistral, qwen2, granite, Gemma, Gemma 2,
    OPT, Falcon, GPT-NeoX, StarCoder2).

    Args:
        model: Shipped architecture name (``"Llama-3.2-1B"``), a ``config.json`` path, a local checkpoint
            directory (config plus ``*.safetensors``/``*.bin``), or a Hugging Face configuration dict.
        device: ``"cuda"`` (default when available) or ``"cpu"`` (tests only).
        weights: ``"dummy"`` (random) or ``"checkpoint"``; inferred from ``model`` when None.
        dtype: Torch dtype name; defaults to the configuration's.
        max_batch: Largest batch (requests; the study's engines used 1024).
        cuda_graphs: True (default), ``"auto"`` (the same) or False (eager decode); off on the CPU.
        decode_attention: ``"auto"``, ``"masked"``, ``"split"``, ``"varlen"`` or ``"triton"`` (module docstring).
        bucket_min: Narrowest decode-graph bucket (tokens).
        bucket_max: Widest decode-graph bucket (tokens).
        compile: Wrap the dense blocks of a decode step in ``torch.compile``: True, False, or ``"auto"`` (the
            default: on CUDA when Triton, inductor's code generator, is importable; off on the CPU).
        compile_prefill: Wrap the prefill's dense blocks in ``torch.compile`` too (one compilation per chunk shape,
            made by :meth:`prepare` before any measured window): True, False, or ``"auto"`` (as ``compile``).
        compile_mode: The ``torch.compile`` mode (``"default"``: fused elementwise kernels around cuBLAS
            products; ``"max-autotune-no-cudagraphs"`` also times matmul kernels, minutes per batch size).
        compile_mode_small: The mode of decode steps at batches up to ``small_batch`` (default
            ``"max-autotune-no-cudagraphs"``: at batch 1 the step is a chain of matrix-vector products, and timing
            Triton's kernels for them, about 20 s per batch size on an H200, made it 15% faster there,
            ``benchmarks/results/h200/batch1_modes.json``); None: ``compile_mode`` at every batch.
        small_batch: Largest batch that uses ``compile_mode_small`` (requests; 0: none).
        memory_fraction: Share of free device memory the KV cache and activations may take.
        prefill_tokens: Tokens per prefill chunk (whole requests per chunk).
        min_positions: Accepted for the ``hf`` engine's interface; unused (no learned positions here).
        require_prepared: Raise in :meth:`generate` when its shapes were not prepared (rather than preparing
            them before the start clock).
        seed: Seed of the random weights and prompts.
        weight_init: Distribution of the dummy weights' matrices
            (:func:`energybook.measure.protocol.parse_weight_init`; default normal, std 0.02).
        prompts: ``"random"`` token ids, or one id ``"repeated"``.
        state_dict: Weights in transformers' names (``model.layers.0.self_attn.q_proj.weight``...), re-packed
            into fused tensors; sets ``weights="hf_model"``.

    Raises:
        EngineUnavailable: for a family or feature this engine does not implement (use ``--engine hf``), or
            when PyTorch or the CUDA device is missing.
        ValueError: for an unknown model or bad parameters.
    """

    def __init__(self, model: str | Path | dict, device: str | None = None, weights: str | None = None,
                 dtype: str | None = None, max_batch: int = 1024, cuda_graphs: bool | str = True,
                 decode_attention: str = "auto", bucket_min: int = 32, bucket_max: int = 256,
                 compile: bool | str = "auto", compile_mode: str = "default", compile_prefill: bool | str = "auto",
                 compile_mode_small: str | None = "max-autotune-no-cudagraphs", small_batch: int = 8,
                 memory_fraction: float = 0.92, prefill_tokens: int = 16384, min_positions: int | None = None,
                 require_prepared: bool = False, seed: int = 0, state_dict: dict | None = None,
                 weight_init: str = "normal:0.02", prompts: str = "random"):
        torch = _torch()
        from energybook.model.architecture import Architecture

        check_positive(max_batch=max_batch, prefill_tokens=prefill_tokens)
        bucket_edges(1, bucket_min, bucket_max)  # checks the bucket widths
        if decode_attention not in ("auto", *DECODE_ATTENTION):
            raise ValueError(f"decode_attention must be 'auto' or one of {DECODE_ATTENTION}, got {decode_attention!r}")
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be True, False or 'auto', got {cuda_graphs!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable("no CUDA device is visible to PyTorch: the lean engine measures on an NVIDIA "
                                    "GPU (device='cpu' is for tests only)")
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        t0 = time.perf_counter()
        cfg, self.name, checkpoint = load_hf_config(model)
        self.arch = Architecture.from_hf_config(cfg, name=self.name)
        self.config = read_config(self.arch, cfg)
        if state_dict is not None:
            self.weights = "hf_model"
        else:
            self.weights = weights or ("checkpoint" if checkpoint is not None else "dummy")
        if self.weights not in ("dummy", "checkpoint", "hf_model"):
            raise ValueError(f"weights must be 'dummy' or 'checkpoint', got {weights!r}")
        if self.weights == "checkpoint" and checkpoint is None:
            raise ValueError(f"weights='checkpoint' needs a checkpoint directory, got {model!r}")
        self.dtype = getattr(torch, dtype or self.arch.dtype)
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs
        self.decode_attention = decode_attention
        self.bucket_min, self.bucket_max = bucket_min, bucket_max
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
        if compile == "auto":
            from energybook.measure import triton_decode

            compile = self.device.type == "cuda" and triton_decode.available()
        self.compile = bool(compile)
        if compile_prefill not in (True, False, "auto"):
            raise ValueError(f"compile_prefill must be True, False or 'auto', got {compile_prefill!r}")
        self.compile_prefill = self.compile if compile_prefill == "auto" else bool(compile_prefill)
        self.compile_mode = compile_mode
        if isinstance(small_batch, bool) or not isinstance(small_batch, int) or small_batch < 0:
            raise ValueError(f"small_batch must be a whole number >= 0 (requests), got {small_batch!r}")
        self.compile_mode_small, self.small_batch = compile_mode_small, small_batch
        self.memory_fraction = memory_fraction
        self.prefill_tokens = prefill_tokens
        self.require_prepared = require_prepared
        self.seed = seed
        from energybook.measure.protocol import check_dummy_data

        check_dummy_data(weight_init, prompts)
        self.weight_init, self.prompts = weight_init, prompts
        self.vocab = self.arch.vocab_size
        self.max_positions = self.arch.max_position_embeddings
        self.last_tokens = None
        self._wave: WaveState | None = None
        self._graphs_here = self.device.type == "cuda"  # (the tests' stand-in graphs set it on the CPU)
        self._rope_len = 0
        wts = Weights(self.name, self.arch, self.config, self.device, self.dtype, seed, weight_init, cfg)
        if state_dict is not None:
            wts.pack(state_dict)
        elif self.weights == "checkpoint":
            wts.load_checkpoint(checkpoint)
        else:
            wts.init_dummy()
        self.embed, self.pos_embed, self.layers = wts.embed, wts.pos_embed, wts.layers
        self.norm, self.norm_b, self.lm_head = wts.norm, wts.norm_b, wts.lm_head
        self.spec = BlockSpec.of(self.config)
        self._grow_rope(min(self.max_positions, 8192) + 1)
        self.alibi = alibi_slopes(self.arch.num_heads).to(self.device) if self.config.positions == "alibi" else None
        self.windows = self.config.windows
        self._embed_scale = torch.tensor(self.config.embedding_multiplier, dtype=self.dtype, device=self.device)
        self._probe = False  # graphs copy their logits into the wave state (greedy_logits(graphs=True) only)
        # decode's blocks (True: small batches' own compilation) and the prefill's
        self._fns, self._prefill_fns = compiled(torch, self.compile, self.compile_prefill, compile_mode,
                                                compile_mode_small, small_batch)
        self.runner = G.GraphRunner(torch, self.device)
        self.ways = {name: way(self) for name, way in WAYS.items()}
        self.auto = Auto(self)
        self.paths_available = check_ways(self, self.ways)
        self.prefill = PrefillAttention(self)
        self.prefill_gqa = self.prefill.gqa
        self.settings = describe(self, time.perf_counter() - t0)

    # ----- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_hf_model(cls, model, **kwargs) -> LeanEngine:
        """The engine with the weights of a transformers ``*ForCausalLM`` model, re-packed into fused tensors.

        Args:
            model: A transformers model of a family in :data:`FAMILIES`.
            **kwargs: Other constructor arguments (``device``, ``bucket_min``...); ``dtype`` defaults to the
                model's.
        """
        cfg = model.config.to_dict()
        kwargs.setdefault("dtype", str(next(model.parameters()).dtype).replace("torch.", ""))
        return cls(cfg, state_dict=model.state_dict(), **kwargs)

    def _grow_rope(self, length: int) -> None:
        """Cos/sin tables (positions, h) of at least ``length`` positions (:func:`~.config.rope_tables`)."""
        if length > self._rope_len:
            self.cos, self.sin = rope_tables(self.config, self.arch.head_dim, length, self.device, self.dtype)
            self._rope_len = length

    def check_lengths(self, n_in: int, n_out: int) -> None:
        """Refuse a request longer than the positions the model serves (sliding windows are applied, not refused).

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request.

        Raises:
            ValueError: when ``n_in + n_out`` exceeds ``max_position_embeddings`` with checkpoint weights (dummy
                weights serve longer contexts with a warning, recorded in :attr:`settings` as
                ``positions_beyond_declared``, as the ``hf`` engine does: rotary positions are computed), or
                beyond the learned positions of OPT's weights.
        """
        check_positive(n_in=n_in, n_out=n_out)
        table = getattr(self, "pos_embed", None)
        if table is not None and n_in + n_out > table.shape[0] - self.config.position_offset:
            raise ValueError(f"{self.name}: n_in + n_out = {n_in + n_out} tokens exceeds the "
                             f"{table.shape[0] - self.config.position_offset} learned positions of its weights; use "
                             "shorter lengths")
        if n_in + n_out <= self.max_positions:
            return
        if self.weights == "dummy":
            declared = self.settings.get("positions_beyond_declared", [self.max_positions, 0])
            self.settings["positions_beyond_declared"] = [declared[0], max(declared[1], n_in + n_out)]
            logger.warning("%s declares %d positions; dummy weights with rotary positions serve %d (recorded in the "
                           "provenance as positions_beyond_declared)", self.name, self.max_positions, n_in + n_out)
            return
        raise ValueError(f"{self.name}: n_in + n_out = {n_in} + {n_out} = {n_in + n_out} tokens exceeds the "
                         f"{self.max_positions} positions the model serves (its max_position_embeddings); use "
                         "shorter lengths")

    def edges(self, limit: int) -> list[int]:
        """Bucket edges covering ``limit`` keys (:func:`bucket_edges` with this engine's widths)."""
        return bucket_edges(limit, self.bucket_min, self.bucket_max)

    def cache_len(self, n_in: int, n_out: int) -> int:
        """Preallocated cache length for one wave (tokens): the bucket edge at or above n_in + n_out - 1 keys."""
        return self.edges(n_in + n_out - 1)[-1]

    @property
    def profile(self):
        """This engine's :class:`~energybook.model.batch.EngineProfile`: its memory fraction, chunk and buckets."""
        import dataclasses

        from energybook.model.batch import LEAN_PROFILE

        return dataclasses.replace(LEAN_PROFILE, memory_fraction=self.memory_fraction,
                                   prefill_tokens=self.prefill_tokens, bucket_min=self.bucket_min,
                                   bucket_max=self.bucket_max)

    def batch_limit(self, n_in: int, n_out: int) -> int:
        """Largest batch whose KV cache and activations fit (requests): the one batch rule
        (:func:`energybook.measure.wave.batch_limit`), from the memory free at the first batch decision (memory
        held by this engine's current wave state counts as free: it is released for a new batch)."""
        return wave_batch_limit(self, n_in, n_out, self._wave.nbytes if self._wave is not None else 0)

    def use_graphs(self, batch: int) -> bool:
        """Whether decode at this batch runs through CUDA graphs (always on CUDA unless turned off)."""
        return self._graphs_here and bool(self.cuda_graphs)

    # ----- wave state, buckets, preparation ---------------------------------------------------------------
    def _state(self, batch: int, cache_len: int) -> WaveState:
        """The wave state of this batch, at least ``cache_len`` long; a new one frees the old one first."""
        w = self._wave
        if w is not None and w.batch == batch and w.cache_len >= cache_len:
            return w
        self.release_wave()
        self._grow_rope(cache_len + 1)
        alibi = self._alibi_bias if self.alibi is not None else None
        self._wave = WaveState.allocate(self.torch, self.arch, self.dtype, self.device, batch, cache_len, alibi)
        return self._wave

    def _alibi_bias(self, keys):
        """The ALiBi bias (1, K, G, n) of keys at positions ``keys`` (n,) (:func:`~.config.alibi_bias`)."""
        return alibi_bias(self.alibi, keys, self.arch, self.dtype)

    def release_wave(self) -> None:
        """Free the wave state: KV cache, graphs and their memory pool."""
        if self._wave is None:
            return
        self._wave.graphs.clear()
        self._wave = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def _buckets(self, n_in: int, n_out: int) -> list[tuple[int, int, int]]:
        """(lo, hi, steps) for the decode steps of a request: fed positions n_in .. n_in + n_out - 2."""
        return G.plan(self.edges(n_in + n_out - 1), n_in, n_out)

    def _path(self, lo: int, hi: int, w: WaveState, tune: bool) -> str:
        """The attention way of a bucket: the configured one, or (``"auto"``) the fastest that passed the checks."""
        return self.auto.choose(lo, hi, w, tune)

    def prepare(self, n_in: int, n_out: int, batch: int, cuda_graphs: bool | None = None) -> Preparation:
        """Make everything a wave of these lengths uses, before any measured window.

        Allocates the wave state (KV cache, buffers), runs the prefill once at its chunk shapes (kernel selection,
        allocator growth), compiles the decode blocks (``compile=True``), picks the attention way of every bucket
        the decode steps touch, and captures and replays one CUDA graph per bucket not captured before. The
        state and graphs are kept for the next waves of the same batch; a new batch or a longer cache frees them.

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request.
            batch: Requests in the wave.
            cuda_graphs: Override the engine's choice for decode.
        """
        t0 = time.perf_counter()
        check_positive(n_in=n_in, n_out=n_out, batch=batch)
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds max_batch {self.max_batch}")
        self.check_lengths(n_in, n_out)
        graphs = self.use_graphs(batch) if cuda_graphs is None else (bool(cuda_graphs) and self._graphs_here)
        torch = self.torch
        w = self._state(batch, self.cache_len(n_in, n_out))
        captured, paths = 0, {}
        with torch.inference_mode():
            chunk = max(1, self.prefill_tokens // n_in)
            for rows in {min(chunk, batch), batch % chunk or min(chunk, batch)}:
                if (rows, n_in) not in w.prefill_shapes:
                    self._prefill(torch.zeros(rows, n_in, dtype=torch.long, device=self.device), w, slice(0, rows))
                    w.prefill_shapes.add((rows, n_in))
            for lo, hi, _ in self._buckets(n_in, n_out):
                if lo not in w.paths:
                    w.paths[lo] = self._path(lo, hi, w, tune=graphs)
                paths[lo] = w.paths[lo]
                if graphs and lo not in w.graphs:
                    w.graphs[lo] = self._capture(w, lo, hi, w.paths[lo], warmups=1 if w.graphs else 2)
                    captured += 1
            if graphs and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        self.settings["decode_attention_chosen"][f"batch {batch}"] = ranges(
            {lo: (hi, w.paths[lo]) for lo, hi, _ in self._buckets(n_in, n_out)},
            self.settings["decode_attention_chosen"].get(f"batch {batch}", ""))
        prep = Preparation(captured, len(w.graphs), paths, time.perf_counter() - t0)
        if captured:
            logger.info("%s: prepared (n_in %d, n_out %d, batch %d): %d graphs captured (%d held), %.1f s", self.name,
                        n_in, n_out, batch, captured, len(w.graphs), prep.seconds)
        return prep

    def _ready(self, n_in: int, n_out: int, batch: int, graphs: bool) -> bool:
        w = self._wave
        if w is None or w.batch != batch or w.cache_len < self.cache_len(n_in, n_out):
            return False
        chunk = max(1, self.prefill_tokens // n_in)
        if not all((r, n_in) in w.prefill_shapes for r in {min(chunk, batch), batch % chunk or min(chunk, batch)}):
            return False
        need = [lo for lo, _, _ in self._buckets(n_in, n_out)]
        return all(lo in w.paths and (not graphs or lo in w.graphs) for lo in need)

    def _capture(self, w: WaveState, lo: int, hi: int, path: str, warmups: int):
        """The CUDA graph of one decode step of bucket [lo, hi), warmed up, captured and replayed once."""

        def body():
            self._decode_step(w, path, lo, hi)

        return self._graph(body, w.pool, warmups, reset=lambda: w.pos.fill_(lo))

    def _graph(self, body: Callable[[], None], pool, warmups: int, reset: Callable[[], Any]):
        """:meth:`~energybook.measure.lean.graphs.GraphRunner.capture` of ``body``.

        (The tests replace this method with a stand-in whose ``replay`` calls ``body``, to run the graph path's
        bookkeeping on the CPU.)
        """
        return self.runner.capture(body, pool, warmups, reset)


    # ----- forward passes ---------------------------------------------------------------------------------
    def _prefill(self, tokens, w: WaveState, rows: slice):
        """Prefill ``tokens`` (b, n) into cache rows ``rows``; returns the raw logits of the last position (b, V)."""

        a, c = self.arch, self.config
        b, n = tokens.shape
        heads, kv = a.num_heads, a.num_kv_heads
        pre, post, final = self._prefill_fns
        x = self._embed(tokens, self.torch.arange(n, device=tokens.device))
        cos = sin = None
        if self.cos is not None:
            cos, sin = self.cos[:n].unsqueeze(1), self.sin[:n].unsqueeze(1)  # (n, 1, h)
        for n_layer, layer in enumerate(self.layers):
            q, k, v = pre(x, layer.attn_norm, layer.wqkv, layer.bqkv, cos, sin, c.rms_norm_eps, heads, kv,
                          layer.attn_norm_b, c.layer_norm, layer.q_norm, layer.k_norm)
            w.cache[n_layer, 0, rows, :n] = k
            w.cache[n_layer, 1, rows, :n] = v
            attn = self._prefill_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           self.windows[n_layer] if self.windows else None)
            x = post(x, attn.transpose(1, 2).reshape(b, n, heads * a.head_dim), layer, self.spec)
        return final(x[:, -1].contiguous(), self.norm, self.lm_head, c.rms_norm_eps, self.norm_b, c.layer_norm,
                     c.final_softcap)

    def _embed(self, tokens, positions):
        """Token embeddings (Granite's multiplier applied), plus the learned position embeddings where the model has
        them (``positions`` broadcast against ``tokens``' last axis: (n,) for a prompt, (1,) for a decode step)."""
        import torch.nn.functional as F

        c = self.config
        x = F.embedding(tokens, self.embed)
        if c.embedding_in_dtype:  # Gemma: sqrt(d), rounded to the model's dtype first (a device tensor made once)
            x = x * self._embed_scale
        elif c.embedding_multiplier != 1.0:
            x = x * c.embedding_multiplier
        if c.positions == "learned":
            x = x + F.embedding(positions + c.position_offset, self.pos_embed)
        return x

    def _prefill_attention(self, q, k, v, window: int | None = None):
        """:meth:`~energybook.measure.lean.attention.PrefillAttention.attend`."""
        return self.prefill.attend(q, k, v, window)

    def _flex_prefill(self, q, k, v, window: int | None):
        """:meth:`~energybook.measure.lean.attention.PrefillAttention.flex`."""
        return self.prefill.flex(q, k, v, window)

    @property
    def _block_masks(self) -> dict:
        return self.prefill.block_masks


    def _binds(self, n_layer: int, hi: int) -> int | None:
        """Layer ``n_layer``'s sliding window when it can bind with up to ``hi`` live keys, else None."""
        win = self.windows[n_layer] if self.windows else None
        return win if win is not None and hi > win else None

    def _binding(self, hi: int) -> set:
        """The windows (None: full attention) that the layers attend through with up to ``hi`` live keys."""
        return {self._binds(n, hi) for n in range(len(self.windows))} if self.windows else {None}

    def _attention_context(self, w: WaveState, path: str, lo: int, hi: int, window: int | None = None):
        """Per-step tensors of one attention way (:meth:`~energybook.measure.lean.attention.Way.context`)."""
        return self.ways[path].context(w, lo, hi, window)

    def _attend(self, path: str, q, kc, vc, ctx, lo: int = 0):
        """Decode attention of one way (:meth:`~energybook.measure.lean.attention.Way.attend`)."""
        return self.ways[path].attend(q, kc, vc, ctx, lo)


    def _small(self, batch: int) -> bool:
        """Whether a decode step of this batch runs the small-batch compilation (``compile_mode_small``)."""
        return batch <= self.small_batch

    def _decode_step(self, w: WaveState, path: str, lo: int, hi: int, logits_out: list | None = None):
        """One decode step of every request from the device state: feeds ``w.tok`` at ``w.pos``, writes K/V,
        attends, and stores the greedy token at ``w.out[:, pos + 1]`` and in ``w.tok``; advances ``w.pos``.

        ``path`` ``"exact"`` (eager, ``hi`` = live keys) or a graph way over bucket [lo, hi).
        """

        a, c = self.arch, self.config
        b = w.batch
        heads, kv = a.num_heads, a.num_kv_heads
        groups, h = heads // kv, a.head_dim
        pre, post, final, _ = self._fns[self._small(b)]
        x = self._embed(w.tok, w.pos)
        cos = sin = None
        if self.cos is not None:
            cos, sin = self.cos.index_select(0, w.pos).unsqueeze(0), self.sin.index_select(0, w.pos).unsqueeze(0)
        ctxs = {win: self._attention_context(w, path, lo, hi, win) for win in self._binding(hi)}
        for n_layer, layer in enumerate(self.layers):
            ctx = ctxs[self._binds(n_layer, hi)]
            q, new_kv = pre(x, layer.attn_norm, layer.wqkv, layer.bqkv, cos, sin, c.rms_norm_eps, heads, kv,
                            layer.attn_norm_b, c.layer_norm, layer.q_norm, layer.k_norm)
            w.cache[n_layer].index_copy_(2, w.pos, new_kv.unsqueeze(2))  # K and V at pos, one kernel
            kc, vc = w.cache[n_layer, 0], w.cache[n_layer, 1]
            attn = self._attend(path, q.reshape(b, kv, groups, h), kc, vc, ctx, lo)
            x = post(x, attn.reshape(b, heads * h), layer, self.spec)
        logits, nxt = final(x, self.norm, self.lm_head, c.rms_norm_eps, self.norm_b, c.layer_norm, c.final_softcap)
        if logits_out is not None:
            logits_out.append(logits)
        if self._probe:
            w.logits.copy_(logits)
        w.out.index_copy_(1, w.pos + 1, nxt.unsqueeze(1))
        w.tok.copy_(nxt)
        w.pos.add_(1)

    # ----- generation -------------------------------------------------------------------------------------
    def _clock(self) -> float:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def generate(self, n_in: int, n_out: int, batch: int, checkpoints: list[int] | None = None,
                 on_checkpoint: Callable[[int, float], None] | None = None, clock: Callable[[], float] | None = None,
                 cuda_graphs: bool | None = None, return_tokens: bool = False, static: bool | None = None):
        """Generate one wave: ``batch`` requests of ``n_in`` random prompt tokens, ``n_out`` new tokens each.

        Whatever :meth:`prepare` has not made yet for these shapes is made first, before the start clock, and
        logged (or refused with ``require_prepared``); no graph is ever captured between ``times.start`` and
        ``times.end``.

        Args:
            n_in: Prompt tokens per request.
            n_out: Tokens generated per request (EOS ignored).
            batch: Requests in the wave.
            checkpoints: Output counts (tokens per request) at which to synchronise and read the clock.
            on_checkpoint: Called with (tokens per request, time) at each checkpoint.
            clock: Device-synchronised clock (defaults to ``torch.cuda.synchronize`` + ``perf_counter``).
            cuda_graphs: Override the engine's choice for decode.
            return_tokens: Keep the generated token ids (``self.last_tokens``, batch x n_out, on the CPU).
            static: Run the graphs' bucketed step eagerly (the CPU's way to test the graph path); default: as
                the graphs.

        Returns:
            A :class:`~energybook.measure.torch_engine.Wave`.

        Raises:
            ValueError: for non-positive lengths, lengths beyond :meth:`check_lengths`, a batch above
                ``max_batch`` or checkpoints outside 1..n_out.
            RuntimeError: when the generated token count differs from the one asked for, or (``require_prepared``)
                when the shapes were not prepared.
        """
        checkpoints = check_wave(self, n_in, n_out, batch, checkpoints)
        torch = self.torch
        clock = clock or self._clock
        marks = set(checkpoints)
        graphs = self.use_graphs(batch) if cuda_graphs is None else (bool(cuda_graphs) and self._graphs_here)
        static = graphs if static is None else bool(static)
        if not self._ready(n_in, n_out, batch, graphs):
            if self.require_prepared:
                raise RuntimeError(f"{self.name}: (n_in {n_in}, n_out {n_out}, batch {batch}) was not prepared: call "
                                   "prepare() before the measured window")
            logger.info("%s: preparing (n_in %d, n_out %d, batch %d) inside generate, before its start clock",
                        self.name, n_in, n_out, batch)
            self.prepare(n_in, n_out, batch, cuda_graphs=graphs)
        w = self._wave
        plan = self._buckets(n_in, n_out)
        dev = self.device
        prompts = random_prompts(torch, self.vocab, self.seed, n_in, batch, dev, self.prompts)
        w.out[:, n_in:n_in + n_out].fill_(-1)
        times = WaveTimes(start=0.0, prefill_end=0.0, end=0.0)
        mark = checkpoint_marker(times, marks, clock, on_checkpoint)

        with torch.inference_mode():
            times.start = clock()
            chunk = max(1, self.prefill_tokens // n_in)
            for b0 in range(0, batch, chunk):
                rows = slice(b0, min(batch, b0 + chunk))
                nxt = self._prefill(prompts[rows], w, rows).argmax(-1)
                w.tok[rows] = nxt
                w.out[rows, n_in] = nxt
            w.pos.fill_(n_in)
            times.prefill_end = clock()
            mark(1)
            i = 1
            for lo, hi, steps in plan:
                graph = w.graphs.get(lo) if graphs else None
                for _ in range(steps):
                    if graph is not None:
                        graph.replay()
                    elif static:
                        self._decode_step(w, w.paths[lo], lo, hi)
                    else:
                        self._decode_step(w, "exact", 0, n_in + i)
                    i += 1
                    mark(i)
            times.end = clock()
            tokens = w.out[:, n_in:n_in + n_out]
            missing = int((tokens < 0).sum())
        if missing:
            raise RuntimeError(f"token count check failed: {missing} of {batch * n_out} output tokens missing")
        self.last_tokens = tokens.cpu().clone() if return_tokens else None
        return Wave(batch, n_in, n_out, times, graphs)

    def greedy_logits(self, prompts, n_out: int, static: bool = False, forced=None, graphs: bool = False) -> list:
        """Logits of a greedy generation from given prompts: the prefill's last position, then every decode step.

        For comparisons with other implementations (the tests, ``benchmarks/gpu_logits.py``). Granite's
        ``logits_scaling`` is applied.

        Args:
            prompts: Token ids (batch, n_in).
            n_out: Tokens to generate (the list has n_out entries, each (batch, V), float32 on the CPU).
            static: Decode through the graphs' bucketed steps (eagerly) rather than exact-length attention.
            forced: Token ids (batch, n_out - 1 or more) fed instead of the greedy ones (teacher forcing), so that
                two implementations are scored on the same continuation.
            graphs: Decode through CUDA graphs captured for this call (their logits copied out at each step).
        """
        return greedy_logits(self, prompts, n_out, static, forced, graphs)

    def release(self) -> None:
        """Free the wave state and the weights' device memory."""
        self.release_wave()
        self.embed = self.lm_head = self.norm = self.norm_b = self.pos_embed = None
        self.layers = []
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
