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

The attention function, its mask, Falcon's adoption and their registration live in
:mod:`energybook.measure.hf_attention`; the families, the configuration, the attention features and the
KV cache class in :mod:`energybook.measure.hf_model`. Their names are importable from here too.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from energybook.measure.engines import EngineUnavailable
from energybook.measure.hf_attention import (  # noqa: F401 - re-exported: names of this module before the split
    _OLD_ATTN_NAME,
    _REFUSED_KWARGS,
    ATTN_NAME,
    _adopt_falcon_attention,
    _alibi_bias,
    _attention,
    _AttnState,
    _falcon_slopes,
    _falcon_split,
    _flash_slopes,
    _flash_varlen_decode,
    _mask,
    _torch,
    falcon_dispatches_attention,
    register_attention,
)
from energybook.measure.hf_model import (  # noqa: F401 - re-exported: names of this module before the split
    FAMILIES,
    _attention_features,
    _check_family,
    _describe_attention,
    _head_note,
    _is_norm,
    _make_cache_class,
    transformers_config,
)
from energybook.measure.settings import DTYPES, option
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
from energybook.model.families import RECORDS  # noqa: F401 - re-exported: a name of this module before the split

logger = logging.getLogger(__name__)

BUCKET = 256


@dataclass(frozen=True)
class HfSettings:
    """The hf (``torch``) engine's settings: the options of :class:`TorchEngine` (its docstring explains them)."""

    dtype: str | None = option(None, "weights and activations dtype (none: the configuration's)", choices=DTYPES)
    cuda_graphs: bool | str = option(True, "CUDA graphs for decode (auto: small batches only)", flag="--graphs",
                                     choices=("auto",))
    graph_max_batch: int = option(128, "largest batch decoded through graphs with --graphs auto (requests)",
                                  low=1, high=2 ** 20)
    memory_fraction: float = option(0.92, "share of free GPU memory the KV cache and activations may take",
                                    low=0.05, high=1.0)
    prefill_tokens: int = option(16384, "tokens per prefill chunk", low=1, high=2 ** 24)
    min_positions: int | None = option(8192, "learned positions raised to at least this for dummy weights (OPT; "
                                       "tokens)", low=1, high=2 ** 24)


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
