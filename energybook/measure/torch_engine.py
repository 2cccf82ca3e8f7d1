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
  Hopper), registered with transformers' ``AttentionInterface``; for decode, grouped-query heads
  are folded into the query length, so K/V are never repeated;
* logits for the last position only, argmax on the GPU, no host synchronisation per step;
* CUDA graphs for decode (the default for every batch): one graph per context bucket of 256
  tokens, attending to exactly each request's live context through flash attention's
  variable-length kernel, or, where that kernel is missing, to the bucket's slice of the cache
  under an additive mask over the not-yet-written positions.

Weights are random (``weights="dummy"``, normal with std 0.02, norms at 1) unless a local
checkpoint directory is given. Time and energy do not depend on the weights' values.

Used in :doc:`/book/experiment`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from energybook.measure.engines import EngineUnavailable
from energybook.model.complexity import check_positive

logger = logging.getLogger(__name__)

ATTN_NAME = "energybook_sdpa"
BUCKET = 256


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        raise EngineUnavailable("the torch engine needs PyTorch and transformers: "
                                "pip install 'energybook[gpu]'") from exc
    return torch


class _AttnState:
    """Decode-graph state read by :func:`_attention` (None outside a CUDA-graph decode).

    ``mask``: additive mask over a bucket's slice (``sdpa_mask`` graphs); ``varlen``: the tensors
    (cu_seqlens_q, cu_seqlens_k, seqused_k, max_k) of flash attention's variable-length path, which
    reads exactly the live context of every request inside a graph (``flash_varlen`` graphs).
    """

    mask = None
    varlen = None


def _flash_varlen_decode(query, key, value, scaling):
    """One decode token per request through ``aten._flash_attention_forward`` with ``seqused_k``.

    ``key``/``value`` are transposed views (B, K, S_max, h) of contiguous (B, S_max, K, h) buffers.
    """
    import torch

    b, h_q, _, d = query.shape
    cu_q, cu_k, used, max_k = _AttnState.varlen
    q = query.transpose(1, 2).reshape(b, h_q, d)
    k = key.transpose(1, 2).reshape(-1, key.shape[1], d)
    v = value.transpose(1, 2).reshape(-1, value.shape[1], d)
    out = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, 1, max_k, 0.0, False, False,
                                                  scale=scaling, seqused_k=used)[0]
    return out.view(b, 1, h_q, d)


def _attention(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, **kwargs):
    """SDPA over the live KV slice: causal for a prompt, unmasked for one decode token.

    Shapes: query (B, H, q, h); key, value (B, K, S, h). Returns (B, q, H, h).
    """
    import torch.nn.functional as F

    b, h_q, q_len, d = query.shape
    k_heads = key.shape[1]
    groups = h_q // k_heads
    if q_len == 1 and _AttnState.varlen is not None:
        return _flash_varlen_decode(query, key, value, scaling), None
    mask = _AttnState.mask if attention_mask is None else attention_mask
    if q_len == 1:
        # All query heads of one KV head attend to the same keys: fold them into the query axis.
        qg = query.reshape(b, k_heads, groups, d)
        out = F.scaled_dot_product_attention(qg, key, value, attn_mask=mask, scale=scaling)
        return out.reshape(b, 1, h_q, d), None
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None
                                         and key.shape[2] == q_len, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register :func:`_attention` with transformers under ``"energybook_sdpa"``; returns the name."""
    _torch()
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _attention)
    return ATTN_NAME


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


@dataclass
class WaveTimes:
    """Clock readings of one generated wave (``time.perf_counter`` seconds, device synchronised).

    Attributes:
        start: Before the prefill.
        prefill_end: After the prefill (the first output token exists).
        checkpoints: Tokens generated per request -> time at which they all exist.
        end: After the last decode step.
    """

    start: float
    prefill_end: float
    end: float
    checkpoints: dict[int, float] = field(default_factory=dict)


@dataclass
class Wave:
    """Result of :meth:`TorchEngine.generate`.

    Attributes:
        batch: Requests in the wave.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request (verified).
        times: Clock readings.
        cuda_graphs: Whether decode ran through CUDA graphs.
    """

    batch: int
    n_in: int
    n_out: int
    times: WaveTimes
    cuda_graphs: bool

    @property
    def tokens_in(self) -> int:
        """Prompt tokens of the wave."""
        return self.batch * self.n_in

    @property
    def tokens_out(self) -> int:
        """Generated tokens of the wave."""
        return self.batch * self.n_out

    @property
    def duration_s(self) -> float:
        """Wall time of the wave (seconds)."""
        return self.times.end - self.times.start


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
            ``max_position_embeddings`` to at least this (tokens); recorded in :attr:`settings`.
        seed: Seed of the random weights and prompts.
    """

    def __init__(self, model: str | Path, device: str | None = None, weights: str | None = None,
                 dtype: str | None = None, max_batch: int = 1024, cuda_graphs: bool | str = True,
                 graph_max_batch: int = 128, memory_fraction: float = 0.92, prefill_tokens: int = 16384,
                 min_positions: int = 8192, seed: int = 0):
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
        self.dtype = getattr(torch, dtype or self.arch.dtype)
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs
        self.graph_max_batch = graph_max_batch
        self.memory_fraction = memory_fraction
        self.prefill_tokens = prefill_tokens
        self.seed = seed
        self.settings: dict = {}
        self._build(cfg_dict, path if self.weights == "checkpoint" else None, min_positions)

    # ----- model -------------------------------------------------------------------------
    def _build(self, cfg_dict: dict, checkpoint: Path | None, min_positions: int) -> None:
        torch = self.torch
        from transformers import AutoConfig, AutoModelForCausalLM

        attn = register_attention()
        cfg = dict(cfg_dict)
        positions_extended = None
        if checkpoint is None and self.arch.position == "learned" and cfg.get("max_position_embeddings", 0) \
                < min_positions:
            positions_extended = [cfg.get("max_position_embeddings"), min_positions]
            cfg["max_position_embeddings"] = min_positions
        model_type = cfg.pop("model_type")
        for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
            cfg.pop(key, None)
        t0 = time.perf_counter()
        if checkpoint is not None:
            model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=self.dtype, attn_implementation=attn)
            model.to(self.device)
        else:
            config = AutoConfig.for_model(model_type, **cfg)
            config._attn_implementation = attn
            with self.device:
                model = AutoModelForCausalLM.from_config(config, dtype=self.dtype, attn_implementation=attn)
            gen = torch.Generator(device=self.device).manual_seed(self.seed)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                        p.fill_(1.0)
                    else:
                        p.normal_(0.0, 0.02, generator=gen)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.config = model.config
        self.vocab = int(model.config.vocab_size)
        self.lm_head = model.get_output_embeddings()
        self.WaveCache = _make_cache_class()
        self.graph_attention = self._pick_graph_attention()
        self.settings = {
            "engine": "torch", "attention": "sdpa (flash on Hopper) over the live KV slice",
            "kv_cache": "preallocated per wave at n_in+n_out, written in place", "decode_graphs": str(self.cuda_graphs),
            "graph_max_batch": self.graph_max_batch, "graph_attention": self.graph_attention,
            "graph_bucket": BUCKET, "greedy": "argmax on device, EOS ignored",
            "dtype": str(self.dtype).replace("torch.", ""), "weights": self.weights, "seed": self.seed,
            "max_batch": self.max_batch, "memory_fraction": self.memory_fraction,
            "prefill_tokens": self.prefill_tokens, "device": str(self.device),
            "max_position_embeddings_extended": positions_extended,
            "build_s": round(time.perf_counter() - t0, 2),
        }
        if positions_extended:
            logger.info("dummy weights: max_position_embeddings raised %s -> %s", *positions_extended)

    # ----- sizing ------------------------------------------------------------------------
    def cache_len(self, n_in: int, n_out: int) -> int:
        """Preallocated cache length for one wave (tokens): n_in + n_out rounded up to the bucket."""
        return int(math.ceil((n_in + n_out) / BUCKET) * BUCKET)

    def batch_limit(self, n_in: int, n_out: int) -> int:
        """Largest batch whose KV cache and activations fit in free device memory (requests)."""
        check_positive(n_in=n_in, n_out=n_out)
        if self.device.type != "cuda":
            return self.max_batch
        torch = self.torch
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        a = self.arch
        per_request = (a.kv_bytes_per_token * self.cache_len(n_in, n_out) // a.bytes_per_element
                       * self.dtype.itemsize)
        per_request += 4 * self.vocab * 4 + 64 * a.hidden_size * 4  # logits, argmax, decode activations
        chunk = min(self.prefill_tokens, n_in * self.max_batch)
        fixed = chunk * (3 * a.intermediate_size + 12 * a.hidden_size) * 2 + self.vocab * 64 * 4 + (1 << 30)
        usable = free * self.memory_fraction - fixed
        return max(0, min(self.max_batch, int(usable // per_request)))

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
            ValueError: for non-positive lengths or a batch above ``max_batch``.
            RuntimeError: when the generated token count differs from the one asked for.
        """
        check_positive(n_in=n_in, n_out=n_out, batch=batch)
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds max_batch {self.max_batch}")
        torch = self.torch
        clock = clock or self._clock
        checkpoints = sorted(set(checkpoints or []))
        if any(c < 1 or c > n_out for c in checkpoints):
            raise ValueError(f"checkpoints must lie in 1..n_out ({n_out}), got {checkpoints}")
        graphs = self.use_graphs(batch) if cuda_graphs is None else (cuda_graphs and self.device.type == "cuda")
        a = self.arch
        max_len = self.cache_len(n_in, n_out)
        dev = self.device
        gen = torch.Generator(device=dev).manual_seed(self.seed + 7919 * n_in + batch)
        prompts = torch.randint(0, self.vocab, (batch, n_in), device=dev, generator=gen)
        out = torch.full((batch, n_out), -1, dtype=torch.long, device=dev)
        positions = torch.arange(max_len, device=dev)
        cache = self.WaveCache(a.num_layers, batch, a.num_kv_heads, max_len, a.head_dim, self.dtype, dev)
        times = WaveTimes(start=0.0, prefill_end=0.0, end=0.0)

        def mark(k: int) -> None:
            if k in checkpoints:
                t = clock()
                times.checkpoints[k] = t
                if on_checkpoint is not None:
                    on_checkpoint(k, t)

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
        hidden = self.model.model(input_ids=input_ids, position_ids=position_ids, past_key_values=cache,
                                  use_cache=True).last_hidden_state
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
                _AttnState.mask = None
                _AttnState.varlen = None
                cache.graph_len = None
        cache.pos_t = None

    def _pick_graph_attention(self) -> str:
        """``flash_varlen`` when ``aten._flash_attention_forward`` with ``seqused_k`` matches SDPA here."""
        torch = self.torch
        if self.device.type != "cuda":
            return "none"
        try:
            import torch.nn.functional as F

            g = torch.Generator(device=self.device).manual_seed(0)
            b, h, k, d, s, used = 3, 8, 2, 64, 512, 300

            def r(*shape):
                return torch.randn(*shape, device=self.device, dtype=self.dtype, generator=g)

            q, kc, vc = r(b, h, 1, d), r(b, s, k, d), r(b, s, k, d)
            _AttnState.varlen = (torch.arange(b + 1, dtype=torch.int32, device=self.device),
                                 torch.arange(b + 1, dtype=torch.int32, device=self.device) * s,
                                 torch.full((b,), used, dtype=torch.int32, device=self.device), s)
            got = _flash_varlen_decode(q, kc.transpose(1, 2), vc.transpose(1, 2), d**-0.5)
            _AttnState.varlen = None
            kr = kc[:, :used].transpose(1, 2).repeat_interleave(h // k, 1)
            vr = vc[:, :used].transpose(1, 2).repeat_interleave(h // k, 1)
            ref = F.scaled_dot_product_attention(q.float(), kr.float(), vr.float()).transpose(1, 2)
            err = float((got.float() - ref).norm() / ref.norm())
            if err < 2e-2:
                return "flash_varlen"
            logger.warning("flash varlen decode disagrees with SDPA (rel. error %.3g): using masked SDPA", err)
        except Exception as exc:  # noqa: BLE001 - older torch: no seqused_k
            logger.warning("flash varlen decode unavailable (%s): using masked SDPA in graphs", exc)
        finally:
            _AttnState.varlen = None
        return "sdpa_mask"

    def release(self) -> None:
        """Free the model's device memory."""
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
