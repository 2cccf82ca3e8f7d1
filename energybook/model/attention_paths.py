"""The attention paths an engine runs for a model and request lengths, whether the physical model describes each, and
the refusal of those that no calibration grid ran.

An engine does not run one attention kernel for every model. What the model asks of attention (a sliding window that
binds, Gemma 2's logit soft-capping, Falcon-RW's ALiBi bias) routes its layers to other kernels, and the head layout
(multi-head, grouped-query, multi-query) changes how the keys are read. :func:`attention_paths` lists, for an
architecture, an engine (``hf`` or ``lean``) and (n_in, n_out), every path the request takes, as
:class:`AttentionPath` records:

* ``causal-full`` (multi-head, K = H), ``grouped-query`` (1 < K < H) and ``multi-query`` (K = 1): plain causal
  attention, flash attention's kernels, listed when some layer or phase runs it;
* ``sliding-window``: a window shorter than the context (a window at least as long as n_in + n_out - 1 keys masks
  nothing: the request takes the plain path);
* ``logit-softcap`` and ``alibi``: every layer, in prefill and decode.

A path is *described* when the physical model (:mod:`energybook.model.physics_passes`) counts its work the way the
engine runs it and a calibration grid of that engine ran all its kernels (:attr:`AttentionPath.seen_in`: the
calibration's models, evaluated at the ends of its calibrated lengths). The shipped ``hf`` calibration's grids are
plain causal attention, multi-head and grouped-query, so a multi-query model is described (its kernels are those of
grouped-query attention, with one key/value head) while windows that bind, soft-capping and ALiBi are not.
:func:`check_attention` raises :class:`AttentionRefused` (a :class:`energybook.model.physics.Refused`) naming each
such path and the way out (measure the model, or allow the path by name for an estimate labelled uncalibrated), and
returns one warning per path let through.

Used in :doc:`/book/predict`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from energybook.model import architecture as A
from energybook.model import complexity as C
from energybook.model.architecture import Architecture
from energybook.model.physics import Refused
from energybook.model.physics_fit import Calibration, engine_key, read_calibration, stored_calibrations

#: The paths by name, in the order :func:`attention_paths` lists them (``--allow-path`` takes these names).
PATH_NAMES = ("causal-full", "grouped-query", "multi-query", "sliding-window", "logit-softcap", "alibi")
#: The engines whose paths are known (``"torch"`` names the ``hf`` engine).
ENGINES = ("hf", "lean")
#: The default of transformers' Gemma 2 configuration when ``attn_logit_softcapping`` is left out (the ``hf`` engine
#: runs transformers' configuration; the ``lean`` engine's compute spec reads no cap then).
GEMMA2_SOFTCAP = 50.0

#: What each kernel is, by the names :attr:`AttentionPath.kernels` use.
KERNELS = {
    "flash-causal": "SDPA with is_causal, flash attention on Hopper (tiles above the diagonal skipped)",
    "repeat-kv": "the key/value heads repeated to every query head before the prompt's attention (repeat_interleave)",
    "flash-varlen": "flash attention's variable-length decode kernel over exactly the live keys (seqused_k)",
    "flash-varlen-grouped": "flash attention's variable-length decode kernel, the query heads of each key/value head "
                            "packed together so that its keys are read once",
    "flash-varlen-window": "flash attention's variable-length decode kernel with window_size_left: the window's keys",
    "sdpa-masked-square": "SDPA under an additive (n, n) mask: flash attention takes no mask, so a masked kernel "
                          "(memory-efficient attention) computes every (query, key) pair of the square",
    "eager-products": "attention by explicit products: QK^T, the cap tanh(s / c) * c, an additive mask, a float32 "
                      "softmax and PV, the score matrix written to memory (the prompt's whole square; in decode the "
                      "256-token bucket's slice of the cache)",
    "sdpa-bucket-mask": "SDPA over the 256-token bucket's slice of the cache under an additive mask",
    "lean-flash-gqa": "SDPA with is_causal and enable_gqa (flash attention, the key/value heads not repeated)",
    "lean-decode": "the lean engine's decode ways (masked, split, varlen, triton), the fastest picked per bucket",
    "flex-window": "compiled FlexAttention with a causal, windowed block mask (blocks outside the band skipped)",
    "lean-decode-window": "the lean engine's windowed decode ways (triton reads the window's keys; masked the bucket)",
    "flex-softcap": "compiled FlexAttention with the cap as its score modification and a causal block mask",
    "lean-decode-biased": "the lean engine's decode ways that take a bias or a cap (masked SDPA, triton)",
}

_ROUTES = {"logit-softcap": "eager soft-capped attention", "alibi": "ALiBi-biased masked attention",
           "sliding-window": "sliding-window attention"}


@dataclass(frozen=True)
class AttentionPath:
    """One attention path an engine runs for a model at some lengths.

    Attributes:
        name: One of :data:`PATH_NAMES`.
        engine: ``"hf"`` or ``"lean"``.
        described: True when the physical model counts this path's work the way the engine runs it (``faithful``)
            and a calibration grid of the engine ran all its kernels (``seen_in`` not empty).
        runs: What the engine runs, prefill and decode.
        counted: How the physical model (:func:`energybook.model.physics_passes.pass_counts`) counts its work.
        faithful: Whether those counts follow the work the engine's kernels do.
        kernels: The kernels, names of :data:`KERNELS`.
        seen_in: The calibration's models whose grids ran every one of these kernels (empty: none).
        detail: What of the model takes this path (heads, window, cap).
        why_refused: Why the path is not described ("" when it is).
    """

    name: str
    engine: str
    described: bool
    runs: str
    counted: str
    faithful: bool
    kernels: tuple[str, ...]
    seen_in: tuple[str, ...]
    detail: str
    why_refused: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dict(self.__dict__, kernels=list(self.kernels), seen_in=list(self.seen_in))


class AttentionRefused(Refused):
    """A request whose attention takes a path that no calibration grid ran, or that the physical model does not count
    the way the engine runs it. The message names each path, what to measure, and the ``--allow-path`` that lets it
    through as an uncalibrated estimate.

    Attributes:
        paths: The refused paths.
    """

    def __init__(self, message: str, paths: tuple[AttentionPath, ...]):
        super().__init__(message)
        self.paths = paths


# ----- what a model asks of attention -----------------------------------------------------------
def _engine(engine: str) -> str:
    key = engine_key(engine)
    if key not in ENGINES:
        raise ValueError(f"no attention paths known for engine {engine!r}; known: {', '.join(ENGINES)} "
                         "(torch names hf)")
    return key


def _config(arch: Architecture, config: dict | None) -> dict:
    if config is not None:
        return config
    if arch.name in A.available():
        cfg = A.hf_config(arch.name)
        if cfg.get("model_type") == arch.model_type:
            return cfg
    return {}


def attention_softcap(arch: Architecture, engine: str, config: dict | None = None) -> float | None:
    """The attention logits' soft-cap the engine applies (Gemma 2's ``attn_logit_softcapping``), or None.

    Args:
        arch: The architecture.
        engine: ``"hf"`` or ``"lean"``.
        config: Its Hugging Face configuration; None: the shipped one of that name, if any.
    """
    if arch.model_type != "gemma2":
        return None
    cfg = _config(arch, config)
    default = GEMMA2_SOFTCAP if _engine(engine) == "hf" else None
    value = cfg.get("attn_logit_softcapping", default)
    return None if value is None else float(value)


def _heads(arch: Architecture) -> str:
    k, h = arch.num_kv_heads, arch.num_heads
    layout = "multi-head" if k == h else "multi-query" if k == 1 else f"grouped-query, {h // k} per group"
    return f"{h} query heads on {k} key/value head{'s' if k > 1 else ''} ({layout})"


def _layout(arch: Architecture) -> str:
    if arch.num_kv_heads == arch.num_heads:
        return "causal-full"
    return "multi-query" if arch.num_kv_heads == 1 else "grouped-query"


# ----- the paths ---------------------------------------------------------------------------------
_PLAIN_COUNT = ("prefill: n(n + 1)/2 (query, key) pairs per head and layer (flash skips the tiles above the "
                "diagonal) and 4 H h FLOPs per query and key; decode: exactly the live keys, and one attention block "
                "per request, key/value head and layer")


def _plain(arch: Architecture, engine: str) -> tuple[str, str, tuple[str, ...]]:
    name = _layout(arch)
    if engine == "hf":
        if name == "causal-full":
            runs = ("prefill: SDPA with is_causal (flash attention); decode: flash attention's variable-length "
                    "kernel over exactly the live keys, in one CUDA graph per 256-token bucket")
            return runs, _PLAIN_COUNT, ("flash-causal", "flash-varlen")
        runs = ("prefill: the key/value heads repeated to the query heads, then SDPA with is_causal (flash "
                "attention); decode: flash attention's variable-length kernel with the query heads of each key/value "
                "head packed together (each key/value head read once)")
        counted = _PLAIN_COUNT + "; the repeat's bytes in the elementwise term"
        if name == "multi-query":
            counted += "; with one key/value head: one decode block per request and layer"
        return runs, counted, ("repeat-kv", "flash-causal", "flash-varlen-grouped")
    prefill = ("flash-causal",) if name == "causal-full" else ("lean-flash-gqa",)
    runs = ("prefill: SDPA with is_causal (flash attention" + ("" if name == "causal-full" else ", enable_gqa") +
            "); decode: per 32..256-token bucket the fastest of masked SDPA, split flash, flash varlen and a Triton "
            "kernel, timed at the wave's batch")
    counted = _PLAIN_COUNT + "; the elementwise term counts the hf engine's unfused kernels, which this engine compiles"
    return runs, counted, prefill + ("lean-decode",)


def _window(arch: Architecture, engine: str, n_in: int, n_out: int, softcap: float | None
            ) -> tuple[str, str, bool, tuple[str, ...]]:
    w = arch.sliding_window
    in_prefill, in_decode = n_in > w, n_in + n_out - 1 > w
    if engine == "hf":
        if softcap is not None:
            runs = ("the window is a banded mask inside the soft-capped path: the prompt's attention computes the "
                    "whole n x n square, a decode step reads the whole bucket's slice of the cache")
            counted = ("prefill: the whole square on the sliding layers (n keys per query), as the engine computes "
                       "it; decode: the window's keys, where the engine reads the bucket's slice")
            return runs, counted, False, ("eager-products",)
        kernels = (("sdpa-masked-square",) if in_prefill else ()) + (("flash-varlen-window",) if in_decode else ())
        runs = ("prefill of a prompt longer than the window: SDPA under a banded additive mask (the memory-efficient "
                "kernel, every pair of the square computed); decode beyond the window: flash varlen with "
                "window_size_left, the window's keys only")
        counted = ("prefill: the whole n x n square on the sliding layers (n^2 pairs, n keys per query), as the "
                   "engine computes it; decode: the window's keys")
        return runs, counted, True, kernels
    kernels = (("flex-window",) if in_prefill else ()) + (("lean-decode-window",) if in_decode else ())
    runs = ("prefill of a prompt longer than the window: compiled FlexAttention with a windowed block mask (the "
            "blocks outside the band skipped); decode: the windowed ways (triton reads the window's keys, masked SDPA "
            "masks the rest of the bucket)")
    counted = "prefill: the band's pairs (sum of min(i, window)); decode: the window's keys"
    return runs, counted, True, kernels


def _softcap(engine: str) -> tuple[str, str, bool, tuple[str, ...]]:
    counted = ("as flash attention: causal pairs and 4 H h FLOPs per key; the score matrices written and read in "
               "float32, the tanh and the softmax of the explicit products have no term")
    if engine == "hf":
        runs = ("every layer by explicit products (QK^T, the cap, an additive causal mask, a float32 softmax, PV): "
                "the prompt over the whole n x n square, a decode step over the 256-token bucket's slice of the cache "
                "(flash kernels have no soft-capping)")
        return runs, counted, False, ("eager-products",)
    runs = ("prefill: compiled FlexAttention with the cap as its score modification; decode: masked SDPA by explicit "
            "products or the Triton kernel with the cap")
    return runs, "as flash attention: causal pairs; the cap's tanh on every pair has no term", False, (
        "flex-softcap", "lean-decode-biased")


def _alibi(engine: str) -> tuple[str, str, bool, tuple[str, ...]]:
    counted = ("as flash attention: causal pairs in the prompt and the live keys in decode; the whole square, the "
               "bias's reads and the bucket's padded keys are not counted")
    if engine == "hf":
        runs = ("prefill: SDPA under an additive mask holding the causal mask and the ALiBi bias (the "
                "memory-efficient kernel, every pair of the square computed); decode: masked SDPA with the bias over "
                "the 256-token bucket's slice (this PyTorch build's flash varlen takes no ALiBi)")
        return runs, counted, False, ("sdpa-masked-square", "sdpa-bucket-mask")
    runs = ("prefill: SDPA under a (1, H, n, n) mask holding the bias (the memory-efficient kernel, the whole "
            "square); decode: masked SDPA with the bias or the Triton kernel with the slopes")
    return runs, counted, False, ("sdpa-masked-square", "lean-decode-biased")


def _raw_paths(arch: Architecture, engine: str, n_in: int, n_out: int, config: dict | None
               ) -> list[tuple[str, str, str, bool, tuple[str, ...], str]]:
    """(name, runs, counted, faithful, kernels, detail) of every path, before the calibration is consulted."""
    softcap = attention_softcap(arch, engine, config)
    alibi = arch.position == "alibi"
    heads = _heads(arch)
    out = []
    window_binds = bool(arch.sliding_layers) and n_in + n_out - 1 > arch.sliding_window
    plain_runs = softcap is None and not alibi and (
        not window_binds or arch.sliding_layers < arch.num_layers or n_in <= arch.sliding_window)
    if plain_runs:
        runs, counted, kernels = _plain(arch, engine)
        detail = heads
        if arch.sliding_layers and not window_binds:
            detail += (f"; its sliding window of {arch.sliding_window} tokens is no shorter than the "
                       f"{n_in + n_out - 1} keys of the request: it masks nothing")
        out.append((_layout(arch), runs, counted, True, kernels, detail))
    if window_binds:
        runs, counted, faithful, kernels = _window(arch, engine, n_in, n_out, softcap)
        detail = (f"sliding window of {arch.sliding_window} tokens on {arch.sliding_layers} of {arch.num_layers} "
                  f"layers, shorter than the request's {n_in + n_out - 1} keys")
        out.append(("sliding-window", runs, counted, faithful, kernels, detail))
    if softcap is not None:
        runs, counted, faithful, kernels = _softcap(engine)
        out.append(("logit-softcap", runs, counted, faithful, kernels,
                    f"attn_logit_softcapping={softcap}; {heads}"))
    if alibi:
        runs, counted, faithful, kernels = _alibi(engine)
        out.append(("alibi", runs, counted, faithful, kernels, f"ALiBi position bias; {heads}"))
    return out


# ----- what the calibration's grids ran ---------------------------------------------------------
def _calibrations(engine: str, calibration: Calibration | None) -> list[Calibration]:
    if calibration is not None:
        if engine_key(calibration.engine or "hf") != engine:
            raise ValueError(f"the calibration is of the {engine_key(calibration.engine or 'hf')} engine, not "
                             f"the {engine} engine")
        return [calibration]
    return [read_calibration(path=s.path, engine=s.engine) for s in stored_calibrations() if s.engine == engine]


@functools.lru_cache(maxsize=64)
def _kernels_seen(engine: str, models: tuple[str, ...], n_in: tuple[int, ...], n_out: tuple[int, ...]
                  ) -> dict[str, frozenset[str]]:
    seen = {}
    for name in models:
        try:
            arch = A.load(name)
        except (ValueError, FileNotFoundError):  # a grid of a model not shipped: its paths are unknown here
            continue
        kernels: set[str] = set()
        for i in n_in:
            for o in n_out:
                for path in _raw_paths(arch, engine, i, o, None):
                    kernels |= set(path[4])
        seen[name] = frozenset(kernels)
    return seen


def calibrated_kernels(engine: str, calibration: Calibration | None = None) -> dict[str, frozenset[str]]:
    """The kernels each calibration model's grids ran (model name -> kernel names of :data:`KERNELS`).

    Args:
        engine: ``"hf"`` or ``"lean"``.
        calibration: The calibration; None: every shipped calibration of the engine (none: an empty dict).
    """
    engine = _engine(engine)
    out: dict[str, frozenset[str]] = {}
    for cal in _calibrations(engine, calibration):
        rng = cal.calibrated_range or {}
        models = tuple(sorted(rng.get("models", ())))
        n_in = tuple(sorted({int(v) for v in rng.get("n_in", (64,))}))
        n_out = tuple(sorted({int(v) for v in rng.get("n_out", (64,))}))
        for name, kernels in _kernels_seen(engine, models, n_in, n_out).items():
            out[name] = out.get(name, frozenset()) | kernels
    return out


def attention_paths(arch: Architecture, engine: str, n_in: int, n_out: int, config: dict | None = None,
                    calibration: Calibration | None = None) -> list[AttentionPath]:
    """Every attention path ``engine`` runs for ``arch`` at (n_in, n_out), in :data:`PATH_NAMES` order.

    Args:
        arch: The architecture.
        engine: ``"hf"`` (``"torch"``) or ``"lean"``.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        config: Its Hugging Face configuration (for Gemma 2's soft-cap); None: the shipped one of that name, if any.
        calibration: The calibration whose grids decide what was seen; None: every shipped calibration of the engine.

    Raises:
        ValueError: for an engine without known paths, or non-positive lengths.
    """
    C.check_positive(n_in=n_in, n_out=n_out)
    engine = _engine(engine)
    cals = _calibrations(engine, calibration)
    seen = calibrated_kernels(engine, calibration)
    out = []
    for name, runs, counted, faithful, kernels, detail in _raw_paths(arch, engine, n_in, n_out, config):
        seen_in = tuple(m for m, k in sorted(seen.items()) if set(kernels) <= k)
        described = faithful and bool(seen_in)
        why = "" if described else _why(arch, engine, name, faithful, seen_in, tuple(sorted(seen)), detail, bool(cals))
        out.append(AttentionPath(name, engine, described, runs, counted, faithful, kernels, seen_in, detail, why))
    return out


def _why(arch: Architecture, engine: str, name: str, faithful: bool, seen_in: tuple[str, ...],
         grids: tuple[str, ...], detail: str, has_calibration: bool) -> str:
    if name == "logit-softcap":
        what = f"logit soft-capping ({detail.split(';')[0]})"
    elif name == "alibi":
        what = "the ALiBi position bias"
    elif name == "sliding-window":
        what = f"a sliding window of {arch.sliding_window} tokens shorter than its context"
    else:
        what = f"{name} attention"
    route = _ROUTES.get(name, "plain causal attention")
    if not has_calibration:
        why = f"and no calibration of the {engine} engine exists, so no grid ran it"
    elif not seen_in:
        why = f"which no calibration grid ran (the grids of {', '.join(grids) or 'no model'})"
    else:
        why = f"which the grids of {', '.join(seen_in)} ran"
    text = f"{arch.name} runs {what} in the {engine} engine's {route} path, {why}"
    if not faithful:
        text += ", and the physical model does not count its work the way the engine runs it"
    return text


def check_attention(arch: Architecture, engine: str, n_in: int, n_out: int, allow: Iterable[str] = (),
                    config: dict | None = None, calibration: Calibration | None = None) -> list[str]:
    """Refuse a request whose attention takes a path the physical model does not describe, unless allowed by name.

    Args:
        arch: The architecture.
        engine: ``"hf"`` (``"torch"``) or ``"lean"``.
        n_in: Prompt length (tokens).
        n_out: Output length (tokens).
        allow: Path names (:data:`PATH_NAMES`) to let through as an uncalibrated estimate (``--allow-path``).
        config: Its Hugging Face configuration; None: the shipped one of that name, if any.
        calibration: The calibration the prediction uses; None: every shipped calibration of the engine.

    Returns:
        One warning per path let through by ``allow`` (empty when every path is described).

    Raises:
        AttentionRefused: naming every undescribed path not in ``allow``, why, and the way out.
        ValueError: for an unknown path name in ``allow``, an engine without known paths or non-positive lengths.
    """
    allow = tuple(allow)
    unknown = sorted(set(allow) - set(PATH_NAMES))
    if unknown:
        raise ValueError(f"unknown attention path(s) {unknown}; the paths: {', '.join(PATH_NAMES)}")
    paths = attention_paths(arch, engine, n_in, n_out, config, calibration)
    engine = _engine(engine)
    refused = tuple(p for p in paths if not p.described and p.name not in allow)
    if refused:
        sweep = f"energybook sweep --model {arch.name} --engine {engine}"
        raise AttentionRefused(
            "; ".join(p.why_refused for p in refused) + f". Measure the model ({sweep}) and calibrate with its grid "
            f"(scripts/calibrate.py), or pass {' '.join(f'--allow-path {p.name}' for p in refused)} to get an "
            "uncalibrated estimate, labelled as such", refused)
    return [f"uncalibrated estimate (--allow-path {p.name}): {p.why_refused}; counted: {p.counted}"
            for p in paths if not p.described]


def path_rows(archs: Iterable[Architecture], engine: str, n_in: int, n_out: int,
              calibration: Calibration | None = None) -> list[dict[str, Any]]:
    """One row per (model, path) for a table: ``model``, ``path``, ``described`` (``"yes"`` or ``"refused"``),
    ``detail``, ``runs``, ``counted`` and ``seen_in`` (the calibration models that ran its kernels)."""
    rows = []
    for arch in archs:
        for p in attention_paths(arch, engine, n_in, n_out, calibration=calibration):
            rows.append(dict(model=arch.name, path=p.name, described="yes" if p.described else "refused",
                             detail=p.detail, runs=p.runs, counted=p.counted,
                             seen_in=", ".join(p.seen_in) or "none"))
    return rows
