"""Issue 12's engine targets, measured side by side in one run on one GPU (not a test).

For Llama 3.2 1B (dummy bf16 weights) it compares

* ``generate``: plain transformers ``generate`` (dynamic cache, SDPA);
* ``static_compile``: transformers' static cache, which ``generate`` compiles itself (``torch.compile``,
  mode ``reduce-overhead``); a failure is caught and recorded;
* ``hf``: today's engine (:class:`energybook.measure.torch_engine.TorchEngine`);
* ``lean``: the new engine (:class:`energybook.measure.lean_engine.LeanEngine`) with its defaults (on CUDA its
  dense blocks through ``torch.compile``, mode ``--compile-mode``); ``lean_eager`` (not in the default run) is
  the same with ``compile=False``.

The hf and lean engines are built as a sweep builds them (:func:`benchmarks.harness.build_engine`); every time is
taken by the harness's timer (CUDA events) and the record names its provenance (:func:`benchmarks.harness.provenance`).

Tokens per joule are measured under the study's protocol by energybook's own runner, exactly as the grids
are: :func:`energybook.measure.runner.run_sweep` with the engine object, in a temporary workspace, prefix mode,
N_req 1000, max_batch 1024, KV-limited batches, one measured wave per point (counted N_req / batch times),
``min_window_s`` 1.0 and ``cooldown_s`` 1.0, the meter :meth:`energybook.measure.meter.Meter.for_device`. The
lean engine is measured at the four corners (64, 256), (64, 4096), (4096, 64), (4096, 4096); ``hf`` at
(64, 256) and (4096, 64) (``--hf-corners all`` for the four; its full grids are committed); the two
transformers baselines at (64, 256). ``static_compile`` warms up at the measured shape (``warmup_steps``
n_out - 1), so that its compilation stays outside the window.

Beside them, for ``lean`` and ``hf``: the decode step at batch 1000 and context 128 (CUDA events over graph
replays), the batch-1 step as a fraction of the device copy bandwidth measured in the same run (bytes of
``complexity.decode_step``), decode attention alone at context 2048 (batches 64 and 256, every way the lean
engine has, as a fraction of copy bandwidth), prefill FLOP/s as a fraction of a measured 8192^3 bf16 matmul,
and an estimate of the GPU-minutes of the full 7x7 grid (the runner's plan and the lean engine's batch limits,
with measured step, prefill and capture times; a model, checked against the corners' measured wall times).

Writes ``engine_targets.json`` (issue 12's shape plus a per-engine breakdown) and ``engine_targets.txt``
under ``--out``. Prints the GPU's name and UUID, torch and transformers versions, the date and a time
estimate (about 8 minutes on an H100 for the default run; ``--quick``: only (64, 256) and the step timings).

Usage (from the checkout, nothing installed but torch, transformers and nvidia-ml-py)::

    python3 -m benchmarks.engine_targets --out benchmarks/results
    python3 -m benchmarks.engine_targets --quick --engines lean,hf
"""

from __future__ import annotations

import argparse
import bisect
import csv
import gc
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/engine_targets.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

MODEL = "Llama-3.2-1B"
#: Engines of the default run, in the order they run (the headline first).
ENGINES = ("lean", "hf", "generate", "static_compile")
KNOWN = ("lean", "lean_eager", "hf", "generate", "static_compile")
CORNERS = ((64, 256), (64, 4096), (4096, 64), (4096, 4096))
HF_CHEAP = ((64, 256), (4096, 64))
N_REQ, MAX_BATCH = 1000, 1024

#: Issue 12's table: (study, today, must, aim); ``ge`` says whether larger is better.
TARGETS = {
    "64x256": dict(study=120.71, today=110.6, must=140, aim=170, ge=True),
    "64x4096": dict(study=51.9, today=32.9, must=42, aim=52, ge=True),
    "4096x64": dict(study=4.22, today=3.20, must=4.0, aim=4.5, ge=True),
    "4096x4096": dict(study=19.3, today=12.3, must=15, aim=20, ge=True),
    "step_ms_batch1000_ctx128": dict(study=None, today=11.4, must=7, aim=5.5, ge=False),
    "batch1_bandwidth_fraction": dict(study=None, today=0.33, must=0.6, aim=0.8, ge=True),
    "decode_attention_fraction_ctx2048": dict(study=None, today=0.69, must=0.9, aim=0.9, ge=True),
    "prefill_fraction_of_peak": dict(study=None, today=0.46, must=0.6, aim=0.7, ge=True),
    "grid_gpu_minutes_llama_3_2_1b": dict(study=None, today=18.6, must=10, aim=6, ge=False),
}

#: What each top-level figure is.
DEFINITIONS = {
    "tokens_per_j": "run_sweep, prefix mode, N_req 1000, max_batch 1024, KV-limited batches, one measured wave",
    "step_ms_batch1000_ctx128": "one decode step (graph replay, CUDA events), batch 1000, 128 tokens cached",
    "batch1_bandwidth_fraction": "complexity.decode_step bytes at batch 1, context 128, over the step time, over the "
                                 "device copy bandwidth measured in the run",
    "decode_attention_fraction_ctx2048": "one layer's decode attention, batch 256, 2048 live keys, the fastest way "
                                         "the engine has: KV bytes over time over copy bandwidth",
    "prefill_fraction_of_peak": "lowest over four prefill shapes of complexity.prefill FLOPs over time over a "
                                "measured 8192^3 bf16 matmul",
    "grid_gpu_minutes_llama_3_2_1b": "estimate (grid_model): the runner's plan of the 7x7 grid with measured step, "
                                     "prefill and capture times; not a measured grid",
}

#: Expected seconds on an H100 (for the printed estimate): per engine build and side measurements, per corner.
_EST_FIXED = {"lean": 45, "lean_eager": 30, "hf": 20, "generate": 10, "static_compile": 120}
_EST_CORNER = {(64, 256): 8, (64, 4096): 70, (4096, 64): 25, (4096, 4096): 105}
_EST_SLOWER = {"lean": 0.9, "lean_eager": 1.0, "hf": 1.3, "generate": 2.5, "static_compile": 1.5}


# ----- arguments, plan, estimate ---------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``--engines`` is returned as a list in run order."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results", help="folder for engine_targets.json and .txt")
    ap.add_argument("--quick", action="store_true", help="only (64, 256) and the step timings")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated subset of {','.join(KNOWN)} (default {','.join(ENGINES)})")
    ap.add_argument("--headline", default="lean", choices=("lean", "lean_eager"),
                    help="the engine whose figures fill the top-level keys")
    ap.add_argument("--hf-corners", choices=("cheap", "all"), default="cheap",
                    help="hf engine: (64, 256) and (4096, 64), or all four corners")
    ap.add_argument("--models", nargs="*", default=[],
                    help="extra models measured at the corners (lean, or hf where lean refuses): Qwen2-1.5B OPT-1.3B")
    ap.add_argument("--compile-mode", default="default",
                    help="lean: the torch.compile mode of its decode blocks")
    ap.add_argument("--corners", default=None,
                    help="lean engines: these corners only, as N_INxN_OUT,... (default: the four, or (64, 256) "
                         "with --quick)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--merge-models", default=None, metavar="FILE",
                    help="no measuring: add the 'models' of another run's engine_targets.json (same kind of GPU) to "
                         "the one under --out")
    args = ap.parse_args(argv)
    if args.corners is not None:
        try:
            args.corners = [tuple(int(x) for x in c.split("x")) for c in args.corners.split(",") if c]
        except ValueError:
            ap.error(f"--corners takes N_INxN_OUT pairs such as 4096x64, got {args.corners!r}")
        if not args.corners or any(len(c) != 2 or min(c) < 1 for c in args.corners):
            ap.error(f"--corners takes N_INxN_OUT pairs such as 4096x64, got {args.corners!r}")
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = sorted(set(names) - set(KNOWN))
    if unknown:
        ap.error(f"unknown engine(s) {unknown}: choose from {', '.join(KNOWN)}")
    args.engines = [n for n in KNOWN if n in names]
    if args.engines and args.headline not in args.engines:
        args.headline = next((n for n in ("lean", "lean_eager") if n in args.engines), args.headline)
    return args


def corners_for(engine: str, args: argparse.Namespace) -> list[tuple[int, int]]:
    """The (n_in, n_out) corners measured for ``engine``."""
    if getattr(args, "corners", None) and engine in ("lean", "lean_eager"):
        return list(args.corners)
    if args.quick or engine in ("generate", "static_compile"):
        return [(64, 256)]
    if engine == "hf" and args.hf_corners == "cheap":
        return list(HF_CHEAP)
    return list(CORNERS)


def estimate_seconds(args: argparse.Namespace) -> float:
    """Expected wall time of the run on an H100 (seconds), from per-stage guesses; printed before it starts."""
    total = 20.0  # peaks, meter, process start
    for e in args.engines:
        total += _EST_FIXED[e] + sum(_EST_CORNER[c] * _EST_SLOWER[e] + 2 for c in corners_for(e, args))
    if not args.quick:
        total += sum(_EST_FIXED["lean"] + sum(_EST_CORNER.values()) * 1.3 for _ in args.models)
    return total


# ----- results ----------------------------------------------------------------------------------------------
def empty_result(args: argparse.Namespace) -> dict:
    """The JSON of issue 12 with nothing measured yet."""
    return {"gpu": None, "gpu_uuid": None, "engine": args.headline, "commit": None,
            "tokens_per_j": {f"{a}x{b}": None for a, b in CORNERS},
            "step_ms_batch1000_ctx128": None, "batch1_bandwidth_fraction": None,
            "decode_attention_fraction_ctx2048": None, "prefill_fraction_of_peak": None,
            "grid_gpu_minutes_llama_3_2_1b": None,
            "model": MODEL, "targets": TARGETS,
            "protocol": dict(n_req=N_REQ, max_batch=MAX_BATCH, mode="prefix", min_window_s=1.0, cooldown_s=1.0,
                             measured_waves=1, runner="energybook.measure.runner.run_sweep"),
            "definitions": DEFINITIONS,
            "engines": {}, "models": {}, "environment": {}, "peaks": {}, "quick": args.quick,
            "engines_run": list(args.engines)}


def headline(result: dict, engine: str) -> None:
    """Copy ``engine``'s figures into the top-level keys of issue 12's shape."""
    e = result["engines"].get(engine) or {}
    result["engine"] = engine
    result["tokens_per_j"] = {k: (e.get("tokens_per_j") or {}).get(k) for k in result["tokens_per_j"]}
    for key in ("step_ms_batch1000_ctx128", "batch1_bandwidth_fraction", "decode_attention_fraction_ctx2048",
                "prefill_fraction_of_peak", "grid_gpu_minutes_llama_3_2_1b"):
        result[key] = e.get(key)


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(result: dict) -> str:
    """The side-by-side table: one row per figure, the study, today, must, aim, then every engine."""
    names = list(result["engines"])
    head = f"{'figure':<36}{'study':>8}{'today':>8}{'must':>9}{'aim':>9}" + "".join(f"{n:>15}" for n in names)
    lines = [f"{result.get('model', MODEL)} on {result.get('gpu')} ({result.get('gpu_uuid')}), "
             f"headline engine {result.get('engine')}, commit {result.get('commit')}", head, "-" * len(head)]
    for key, t in TARGETS.items():
        sign = ">=" if t["ge"] else "<="
        row = (f"{key:<36}{_fmt(t['study']):>8}{_fmt(t['today']):>8}{sign + ' ' + _fmt(t['must'], 1):>9}"
               f"{sign + ' ' + _fmt(t['aim'], 1):>9}")
        for n in names:
            e = result["engines"][n] or {}
            v = (e.get("tokens_per_j") or {}).get(key) if key[0].isdigit() else e.get(key)
            row += f"{_fmt(v):>15}"
        lines.append(row)
    head = result.get("engine")
    if head in result["engines"]:
        e = result["engines"][head] or {}
        met = []
        for key, t in TARGETS.items():
            v = (e.get("tokens_per_j") or {}).get(key) if key[0].isdigit() else e.get(key)
            if v is not None:
                met.append(v >= t["must"] if t["ge"] else v <= t["must"])
        lines.append(f"{head}: {sum(met)} of {len(met)} measured figures meet the 'must' column")
    for n in names:
        err = (result["engines"][n] or {}).get("error")
        if err:
            lines.append(f"{n}: FAILED: {err.splitlines()[0][:200]}")
    for name, m in (result.get("models") or {}).items():
        lines.append(f"{name} ({m.get('engine')}): " + ", ".join(f"{k} {_fmt(v)} tok/J"
                                                                for k, v in (m.get("tokens_per_j") or {}).items()))
    return "\n".join(lines) + "\n"


# ----- the grid-time model ------------------------------------------------------------------------------------
def grid_minutes(engine, step_s, prefill_flops_per_s: float, capture_s: float, cooldown_s: float = 2.0,
                 min_window_s: float = 2.0, warmup_steps: int = 32, points: list | None = None,
                 once_s: float = 0.0, spec=None) -> dict:
    """GPU-minutes of the 7x7 grid as the runner would measure it (prefix mode, the grids' defaults).

    The runner's plan (:func:`energybook.measure.protocol.plan`) with ``engine.batch_limit``; per group: graph
    captures (``capture_s`` per bucket of the lean engine), a warm-up (prefill + ``warmup_steps`` steps), the
    measured generation (prefill + n_max - 1 steps), points shorter than ``min_window_s`` repeated alone back to
    back, and the cool-down.

    Args:
        engine: An engine with ``arch`` and ``batch_limit`` (and ``edges`` for the buckets, when it has them).
        step_s: (batch, context) -> seconds of one decode step.
        prefill_flops_per_s: Prefill rate (FLOP/s).
        capture_s: Seconds to capture one graph.
        cooldown_s: Pause after each group (seconds).
        min_window_s: Shortest energy window (seconds).
        warmup_steps: Decode steps of the warm-up.
        points: (n_in, n_out) pairs; default the 7x7 grid.
        once_s: Seconds once per distinct batch size (compilation, kernel selection).
        spec: The GPU's measured peaks (:class:`energybook.model.roofline.GpuSpec`); when given, ``bound_minutes``
            is the roofline of the same groups' measured waves (:func:`energybook.model.roofline.measuring_bounds`),
            the floor under ``minutes`` that no engine goes below.
    """
    from energybook.measure.protocol import Point, plan
    from energybook.model import complexity as C

    arch = engine.arch
    points = [Point(a, b) for a, b in (points or [(a, b) for a in C.GRID for b in C.GRID])]
    groups = plan(points, engine.batch_limit, N_REQ, MAX_BATCH, "prefix")

    def prefill(n_in, batch):
        return C.prefill(arch, n_in, batch).flops / prefill_flops_per_s

    def decode(n_in, n, batch):  # steps at contexts n_in .. n_in + n - 2; step_s is taken as linear in the context
        return 0.0 if n < 2 else (n - 1) * step_s(batch, n_in + (n - 2) / 2)

    total = once_s * len({g.batch for g in groups})
    for g in groups:
        n_max = max(g.n_outs)
        edges = getattr(engine, "edges", None)
        buckets = len(engine._buckets(g.n_in, n_max)) if edges is not None else (n_max + 255) // 256
        total += buckets * capture_s
        total += prefill(g.n_in, g.batch) + decode(g.n_in, min(n_max, warmup_steps + 1), g.batch)
        total += prefill(g.n_in, g.batch) + decode(g.n_in, n_max, g.batch) + cooldown_s
        for n in g.n_outs:
            window = prefill(g.n_in, g.batch) + decode(g.n_in, n, g.batch)
            if window < min_window_s:
                total += math.ceil(min_window_s / window) * window + cooldown_s
    bound = None
    if spec is not None:
        import pandas as pd

        from energybook.model import roofline as R

        rows = pd.DataFrame([dict(n_in=g.n_in, n_out=max(g.n_outs), batch=g.batch) for g in groups])
        bound = float(R.measuring_bounds(arch, rows, spec)["time_s"].sum()) / 60  # one row per (n_in, batch)
    return {"minutes": total / 60, "bound_minutes": bound, "groups": len(groups), "points": len(points),
            "method": "model: the runner's plan, measured step/prefill/capture times, prefix mode, cooldown "
                      f"{cooldown_s} s, min_window {min_window_s} s; not a measured grid"}


# ----- measurements (GPU) -------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _median_time(fn, repeats: int = 10, warmup: int = 2, device: str = "cuda") -> float:
    """Median seconds per call of ``fn`` (:func:`benchmarks.harness.time_ms`: CUDA events on a CUDA device)."""
    return harness.time_ms(fn, device=device, repeats=repeats, warmup=warmup).median_s


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write), the practical peak."""
    torch = _torch()
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.nbytes / _median_time(lambda: b.copy_(a))


def matmul_peak(n: int = 8192) -> float:
    """FLOP/s of an n^3 bf16 matrix product."""
    torch = _torch()
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    return 2 * n**3 / _median_time(lambda: a @ b)


def lean_step_s(eng, batch: int, context: int) -> tuple[float, float, float]:
    """(seconds of one graph-replayed decode step at this batch and context, capture seconds per graph, one-time
    seconds of this batch).

    The first preparation of a batch also compiles its dense blocks (``compile``) and selects kernels; a second
    one, two buckets further on, captures graphs only: its seconds per graph are the capture cost, and what the
    first took beyond that is the batch's one-time cost.
    """
    prep = eng.prepare(context, 2, batch)
    w = eng._wave
    lo = eng._buckets(context, 2)[0][0]
    g = w.graphs[lo]
    step = harness.time_ms(g.replay, device=eng.device, repeats=20, warmup=3,
                           setup=lambda: w.pos.fill_(context)).median_s
    if not prep.graphs_captured:
        return step, float("nan"), 0.0
    nxt = eng.prepare(context, 2 + 2 * (eng._buckets(context, 2)[0][1] - lo), batch)
    capture = nxt.seconds / nxt.graphs_captured if nxt.graphs_captured else prep.seconds / prep.graphs_captured
    once = max(0.0, prep.seconds - capture * prep.graphs_captured)
    return step, capture, once


def lean_attention(eng, batch: int, context: int, copy_bw: float) -> dict:
    """Decode attention alone (one layer) at ``context`` live keys, every way the lean engine has."""
    torch = _torch()
    a = eng.arch
    eng.release_wave()
    w = eng._state(batch, eng.cache_len(context, 1))
    w.cache.normal_(0, 0.5)
    edges = eng.edges(context)
    lo, hi = edges[-2], edges[-1]
    q = torch.randn(batch, a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_dim, device="cuda",
                    dtype=eng.dtype)
    kc, vc = w.cache[0, 0], w.cache[0, 1]
    kv_bytes = 2 * batch * context * a.kv_width * eng.dtype.itemsize
    out = {"batch": batch, "context": context, "bucket": [lo, hi], "ways": {}}
    with torch.inference_mode():
        w.pos.fill_(context - 1)
        for way in eng.paths_available:
            ctx = eng._attention_context(w, way, lo, hi)
            fn = lambda way=way, ctx=ctx: eng._attend(way, q, kc, vc, ctx, lo)  # noqa: E731
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g):
                fn()
            t = _median_time(g.replay, repeats=20)
            out["ways"][way] = {"us": t * 1e6, "fraction_of_copy": kv_bytes / t / copy_bw}
            del g
    out["best"] = max(out["ways"], key=lambda k: out["ways"][k]["fraction_of_copy"])
    eng.release_wave()
    return out


def prefill_fractions(eng, peak: float) -> list[dict]:
    """Prefill of whole waves (chunked as in the grids) at four shapes: FLOP/s over the measured matmul peak."""
    from energybook.model import complexity as C

    rows = []
    for n_in, batch in ((64, 1024), (512, 128), (2048, 32), (4096, 16)):
        ts = []
        for _ in range(3):
            wave = eng.generate(n_in, 1, batch)
            ts.append(wave.times.prefill_end - wave.times.start)
        t = statistics.median(ts)
        flops = C.prefill(eng.arch, n_in, batch).flops
        rows.append({"n_in": n_in, "batch": batch, "s": t, "tflops": flops / t / 1e12, "fraction": flops / t / peak})
    return rows


class GenerateEngine:
    """transformers' ``generate`` as a wave engine, so that the runner measures it like the others.

    Args:
        model: Shipped architecture name or a config.json path.
        static: Static cache (on CUDA, ``generate`` compiles the forward itself) rather than the dynamic cache.
        seed: Seed of the random weights (normal, std 0.02; norms 1) and of the prompts (as the engines draw them).
        max_batch: Largest batch (requests).
        device: ``"cuda"``, or ``"cpu"`` (tests).
        dtype: Torch dtype name of the weights.
    """

    def __init__(self, model: str | Path, static: bool = False, seed: int = 0, max_batch: int = MAX_BATCH,
                 device: str = "cuda", dtype: str = "bfloat16"):
        torch = _torch()
        import transformers

        from energybook.model import architecture as A

        path = Path(str(model))
        cfg = json.loads(path.read_text()) if path.suffix == ".json" else dict(A.hf_config(str(model)))
        self.arch = A.Architecture.from_hf_config(cfg, name=path.stem if path.suffix == ".json" else str(model))
        from energybook.measure.torch_engine import transformers_config

        config = transformers_config(cfg)
        self.device = torch.device(device)
        with self.device:
            self.model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                                                       attn_implementation="sdpa").eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if p.ndim == 1 and "norm" in n:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02, generator=gen)
        self.model.generation_config.eos_token_id = None
        self.name, self.weights, self.seed = self.arch.name, "dummy", seed
        self.static, self.max_batch = static, max_batch
        self.vocab = self.arch.vocab_size
        self.settings = {"engine": "static_compile" if static else "generate", "dtype": dtype, "device": device,
                         "attention": "sdpa",
                         "cache": "static (generate compiles the forward on CUDA)" if static else "dynamic",
                         "transformers": transformers.__version__, "weights": "dummy", "seed": seed}

    def check_lengths(self, n_in: int, n_out: int) -> None:
        if n_in + n_out > self.arch.max_position_embeddings:
            raise ValueError("too long")

    def batch_limit(self, n_in: int, n_out: int) -> int:
        torch = _torch()
        if self.device.type != "cuda":
            return self.max_batch
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        per_request = self.arch.kv_bytes_per_token * (n_in + n_out) * 2 + self.vocab * 4 * 3
        return max(1, min(self.max_batch, int((free * 0.8 - (4 << 30)) // per_request)))

    def generate(self, n_in: int, n_out: int, batch: int, checkpoints=None, clock=None, **kwargs):
        torch = _torch()
        import transformers

        from energybook.measure.torch_engine import Wave, WaveTimes

        if any(c != n_out for c in (checkpoints or [])):
            raise ValueError("the generate baselines read the clock at the end only (one n_out per group)")
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        clock = clock or (lambda: (sync(), time.perf_counter())[1])
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 7919 * n_in + batch)
        prompts = torch.randint(0, self.vocab, (batch, n_in), device=self.device, generator=gen)
        times = WaveTimes(start=0.0, prefill_end=0.0, end=0.0)

        class FirstCall(transformers.LogitsProcessor):
            """Reads the clock at its first call: the prefill's logits exist."""

            def __call__(self, input_ids, scores):
                if not times.prefill_end:
                    times.prefill_end = clock()
                return scores

        kw = dict(attention_mask=torch.ones_like(prompts), max_new_tokens=n_out, do_sample=False, pad_token_id=0,
                  logits_processor=transformers.LogitsProcessorList([FirstCall()]))
        if self.static:
            kw["cache_implementation"] = "static"
        times.start = clock()
        out = self.model.generate(prompts, **kw)
        times.end = clock()
        if out.shape != (batch, n_in + n_out):
            raise RuntimeError(f"generate produced {tuple(out.shape)} tokens, not {(batch, n_in + n_out)}")
        times.checkpoints[n_out] = times.end
        self.last_tokens = out[:, n_in:].cpu()
        return Wave(batch, n_in, n_out, times, self.static)

    def release(self) -> None:
        del self.model


def tokens_per_j(engine, name: str, corners, meter, workdir: Path, warmup_steps: int | None = None,
                 n_req: int = N_REQ, device: str = "cuda", allow_test_data: bool = False, min_window_s: float = 1.0,
                 cooldown_s: float = 1.0) -> dict:
    """The corners through ``run_sweep`` (one sweep per n_in), as the grids are measured.

    Args:
        engine: A wave engine object.
        name: Its name (the rows' ``engine`` column).
        corners: (n_in, n_out) pairs.
        meter: The meter (``Meter.for_device``; a simulated one in tests).
        workdir: The temporary workspace.
        warmup_steps: Decode steps of the runner's warm-up; None: n_out - 1 (the measured shape).
        n_req: Requests per point.
        device: The device.
        allow_test_data: For the CPU tests.
        min_window_s: Shortest energy window (seconds).
        cooldown_s: Pause after each group (seconds).

    Returns:
        ``"<n_in>x<n_out>"`` -> the row's figures, ``decode_ms_per_step`` and the sweep's wall time.
    """
    from energybook.measure.protocol import SweepConfig
    from energybook.measure.runner import run_sweep

    out = {}
    for n_in in sorted({a for a, _ in corners}):
        n_outs = sorted(b for a, b in corners if a == n_in)
        config = SweepConfig(n_in=[n_in], n_out=n_outs, n_req=n_req, max_batch=MAX_BATCH, mode="prefix",
                             min_window_s=min_window_s, cooldown_s=cooldown_s, engine=name,
                             warmup_steps=max(n_outs) - 1 if warmup_steps is None else warmup_steps,
                             note="benchmarks/engine_targets.py")
        t0 = time.perf_counter()
        res = run_sweep(engine.name, config, engine=engine, meter=meter, device=device, workspace=workdir,
                        output=workdir / name / f"n_in{n_in}.csv", progress=False, allow_test_data=allow_test_data,
                        command="benchmarks/engine_targets.py")
        wall = time.perf_counter() - t0
        with open(res.path, newline="") as fh:
            for row in csv.DictReader(fh):
                key = f"{row['n_in']}x{row['n_out']}"
                batch, n = int(row["batch"]), int(row["n_out"])
                decode_s = float(row["decode_s"]) if row.get("decode_s") else float("nan")
                out[key] = {k: _num(row.get(k)) for k in ("tokens_per_j", "power_w", "duration_s", "energy_j",
                                                         "batch", "waves", "prefill_s", "decode_s", "repeats",
                                                         "sm_clock_mhz", "temperature_c")}
                out[key]["decode_ms_per_step"] = (decode_s / (n_req / batch) / (n - 1) * 1e3) if n > 1 else None
                out[key]["sweep_wall_s"] = wall
                out[key]["throttle_reasons"] = row.get("throttle_reasons")
    return out


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _free():
    torch = _torch()
    gc.collect()
    torch.cuda.empty_cache()
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


def engine_spec(name: str, args) -> tuple[str, dict]:
    """The registered engine and its settings fields of a benchmark's engine name (``lean_eager``: ``lean`` with
    ``compile=False``)."""
    if name == "hf":
        return "hf", {}
    return "lean", {"compile": "auto" if name == "lean" else False, "compile_mode": args.compile_mode}


def measure_engine(name: str, args, meter, peaks: dict, workdir: Path, say) -> dict:
    """Build one engine, measure its side figures (lean, hf) and its corners; errors are recorded, not raised.

    A failure of the side figures is recorded under ``side_error`` and the corners are still measured.
    """
    rec: dict = {"error": None, "side_error": None}
    t0 = time.perf_counter()
    eng = None
    try:
        if name in ("lean", "lean_eager", "hf"):
            engine, settings = engine_spec(name, args)
            eng = harness.build_engine(MODEL, engine, device=args.device, max_batch=MAX_BATCH, **settings)
            rec["engine_settings"] = harness.settings_record(engine, **settings)
        else:
            eng = GenerateEngine(MODEL, static=name == "static_compile")
        rec["build_s"] = time.perf_counter() - t0
        rec["settings"] = eng.settings
        say(f"[{name}] built in {rec['build_s']:.1f} s")
        step_s = None
        try:
            if name in ("lean", "lean_eager"):
                step_s = _lean_side(eng, name, rec, peaks, say)
            elif name == "hf":
                _hf_side(eng, name, rec, peaks, say)
        except Exception as exc:  # noqa: BLE001 - the corners are the targets: measure them anyway
            rec["side_error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
            say(f"[{name}] side measurements FAILED: {type(exc).__name__}: {exc}")
            if hasattr(eng, "release_wave"):
                eng.release_wave()
            _free()
        corners = corners_for(name, args)
        tj = tokens_per_j(eng, name, corners, meter, workdir, warmup_steps=None if name == "static_compile" else 32)
        rec["corners"] = tj
        rec["tokens_per_j"] = {k: v["tokens_per_j"] for k, v in tj.items()}
        if "64x256" in tj:
            rec["decode_ms_per_step_64x256"] = tj["64x256"]["decode_ms_per_step"]
        if step_s is not None:
            gm = rec["grid_model"]
            check = {}
            for n_in in sorted({a for a, _ in corners}):
                pts = [(a, b) for a, b in corners if a == n_in]
                model = grid_minutes(eng, step_s, gm["prefill_flops_per_s"], rec["capture_s_per_graph"],
                                     cooldown_s=1.0, min_window_s=1.0, points=pts,
                                     once_s=rec.get("first_prepare_s_per_batch", 0.0))
                check[f"n_in {n_in}"] = {"model_s": model["minutes"] * 60,
                                         "measured_s": tj[f"{pts[0][0]}x{pts[0][1]}"]["sweep_wall_s"]}
            gm["check_against_corner_sweeps"] = check
            say(f"[{name}] grid model against the corner sweeps: " + ", ".join(
                f"{k}: model {v['model_s']:.0f} s, measured {v['measured_s']:.0f} s" for k, v in check.items()))
        say(f"[{name}] tokens/J: " + ", ".join(f"{k} {v:.2f}" for k, v in rec["tokens_per_j"].items()))
    except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others
        rec["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
        say(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
    finally:
        if eng is not None and hasattr(eng, "release"):
            try:
                eng.release()
            except Exception:  # noqa: BLE001
                pass
        del eng
        _free()
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def _lean_side(eng, name: str, rec: dict, peaks: dict, say):
    """The lean engine's step, attention, prefill and grid-time figures; returns the step-time model."""
    from energybook.model import complexity as C

    arch = eng.arch
    t1000, capture, once = lean_step_s(eng, 1000, 128)
    t1, _, _ = lean_step_s(eng, 1, 128)
    rec["step_ms_batch1000_ctx128"] = t1000 * 1e3
    rec["batch1_step_ms_ctx128"] = t1 * 1e3
    rec["batch1_bandwidth_fraction"] = C.decode_step(arch, 128, 1).bytes / t1 / peaks["copy_Bps"]
    rec["capture_s_per_graph"] = capture if math.isfinite(capture) else 0.03
    rec["first_prepare_s_per_batch"] = once  # compilation and kernel selection, once per batch size
    say(f"[{name}] step: batch 1000 ctx 128 {t1000 * 1e3:.2f} ms; batch 1 ctx 128 {t1 * 1e3:.3f} ms "
        f"({rec['batch1_bandwidth_fraction']:.2f} of copy bandwidth); capture {capture * 1e3:.0f} ms/graph, "
        f"{once:.1f} s once per batch size")
    if name == "lean_eager":  # attention and prefill do not depend on compilation: the lean engine's figures hold
        eng.release_wave()
        return None
    att = [lean_attention(eng, b, 2048, peaks["copy_Bps"]) for b in (64, 256)]
    rec["decode_attention"] = att
    # The headline is batch 256, as today's 0.69 (flash varlen, benchmarks/results/decode_attention.txt).
    rec["decode_attention_fraction_ctx2048"] = att[-1]["ways"][att[-1]["best"]]["fraction_of_copy"]
    for x in att:
        say(f"[{name}] attention batch {x['batch']} ctx 2048: " + ", ".join(
            f"{k} {v['us']:.0f} us ({v['fraction_of_copy']:.2f})" for k, v in x["ways"].items()))
    rec["prefill"] = prefill_fractions(eng, peaks["matmul_flops"])
    rec["prefill_fraction_of_peak"] = min(r["fraction"] for r in rec["prefill"])
    say(f"[{name}] prefill fractions of peak: " + ", ".join(f"({r['n_in']}, {r['batch']}) {r['fraction']:.2f}"
                                                            for r in rec["prefill"]))
    samples = {b: lean_step_s(eng, b, 64)[0] for b in (1, 64, 256, 512, 1000)}
    eng.release_wave()
    bw = max(x["ways"][x["best"]]["fraction_of_copy"] for x in att) * peaks["copy_Bps"]
    step_s = step_model(samples, 64, arch.kv_bytes_per_token, bw)
    rate = statistics.median(r["tflops"] for r in rec["prefill"]) * 1e12
    from energybook.model.roofline import GpuSpec

    spec = GpuSpec("this GPU", peak_flops=peaks["matmul_flops"], bandwidth_bytes_s=peaks["copy_Bps"],
                   power_cap_w=700.0, source="measured in this run (the cap does not enter a time)")
    grid = grid_minutes(eng, step_s, rate, rec["capture_s_per_graph"], once_s=once, spec=spec)
    rec["grid_gpu_minutes_llama_3_2_1b"] = grid["minutes"]
    rec["grid_model"] = dict(grid, step_samples_ms={b: s * 1e3 for b, s in samples.items()},
                             attention_bandwidth_Bps=bw, prefill_flops_per_s=rate)
    say(f"[{name}] grid estimate: {grid['minutes']:.1f} GPU-minutes ({grid['groups']} groups; roofline of the "
        f"measured waves {grid['bound_minutes']:.1f})")
    return step_s


def step_model(samples: dict, context: int, kv_bytes_per_token: float, bandwidth: float):
    """A decode-step time model (seconds) from steps measured at one context: the batch's measured step, less its
    KV reads at ``context``, interpolated linearly in the batch, plus ``batch * context`` KV reads at ``bandwidth``.

    Args:
        samples: batch -> measured step (seconds) at ``context``; at least two batches.
        context: The context of the samples (tokens).
        kv_bytes_per_token: KV-cache bytes per token over all layers.
        bandwidth: Bytes per second of decode attention.
    """
    bs = sorted(samples)
    base = {b: samples[b] - b * context * kv_bytes_per_token / bandwidth for b in bs}

    def step_s(batch: float, ctx: float) -> float:
        j = min(max(1, bisect.bisect_left(bs, batch)), len(bs) - 1)
        b0, b1 = bs[j - 1], bs[j]
        linear = base[b0] + (base[b1] - base[b0]) * (batch - b0) / (b1 - b0)
        return max(linear, 0.0) + batch * ctx * kv_bytes_per_token / bandwidth

    return step_s


def _hf_side(eng, name: str, rec: dict, peaks: dict, say) -> None:
    """Today's engine: step at batch 1000 and batch 1 (its own graphs, benchmarks/hf_engine_speed.py), prefill."""
    from benchmarks import hf_engine_speed as bench
    from energybook.model import complexity as C

    mode = "graph_varlen" if eng.graph_attention == "flash_varlen" else "graph_mask"
    t1000 = bench.step_times(eng, 1000, 128, mode)
    t1 = bench.step_times(eng, 1, 128, mode)
    rec["step_ms_batch1000_ctx128"] = t1000 * 1e3
    rec["batch1_step_ms_ctx128"] = t1 * 1e3
    rec["batch1_bandwidth_fraction"] = C.decode_step(eng.arch, 128, 1).bytes / t1 / peaks["copy_Bps"]
    rec["prefill"] = prefill_fractions(eng, peaks["matmul_flops"])
    rec["prefill_fraction_of_peak"] = min(r["fraction"] for r in rec["prefill"])
    say(f"[{name}] step: batch 1000 ctx 128 {t1000 * 1e3:.2f} ms ({mode}); batch 1 {t1 * 1e3:.3f} ms; "
        f"prefill fraction {rec['prefill_fraction_of_peak']:.2f}")


def environment(meter) -> dict:
    """The run's provenance (:func:`benchmarks.harness.provenance`) from an open meter: GPU, UUID, driver, versions,
    commit, date and command."""
    return harness.provenance(meter=meter)


def merge_models(target: Path, other: Path) -> dict:
    """Add ``other``'s measured models to the engine_targets.json at ``target`` (rewritten, with its .txt).

    The extra models take a run of their own when the targets' run fills a call's time limit; both runs must be
    on the same kind of GPU, each model keeps its own GPU UUID and commit.

    Raises:
        ValueError: when either file lacks a GPU, the GPUs' names differ, or ``other`` has no model.
    """
    a, b = (json.loads(Path(p).read_text()) for p in (target, other))
    if not a.get("gpu") or not b.get("gpu") or a["gpu"] != b["gpu"]:
        raise ValueError(f"{other} was measured on {b.get('gpu')!r} and {target} on {a.get('gpu')!r}: the models "
                         "join a file of the same kind of GPU only")
    if not b.get("models"):
        raise ValueError(f"{other} has no measured models (run engine_targets.py --models ... there)")
    for name, rec in b["models"].items():
        a.setdefault("models", {})[name] = dict(rec, gpu_uuid=b.get("gpu_uuid"), commit=b.get("commit"),
                                                 source=str(other))
    target.write_text(json.dumps(a, indent=1, default=str))
    txt = target.with_suffix(".txt")
    head = txt.read_text().split("\n\n")[0] if txt.exists() else ""
    txt.write_text(head + f"\n(models merged from {other})\n\n" + table(a))
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge_models:
        try:
            merged = merge_models(Path(args.out) / "engine_targets.json", Path(args.merge_models))
        except (OSError, ValueError) as exc:
            print(f"engine_targets.py --merge-models: {exc}", file=sys.stderr)
            return 2
        print(f"merged {', '.join(merged['models'])} into {Path(args.out) / 'engine_targets.json'}")
        return 0
    torch = _torch()
    if not torch.cuda.is_available():
        print("engine_targets.py measures on an NVIDIA GPU: no CUDA device here", file=sys.stderr)
        return 2
    from energybook.measure.meter import Meter

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    t_start = time.perf_counter()

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    result = empty_result(args)
    meter = Meter.for_device(args.device)
    env = environment(meter)
    result.update(gpu=env.get("gpu"), gpu_uuid=env.get("gpu_uuid"), commit=env.get("commit"), environment=env)
    say(f"GPU {env.get('gpu')} {env.get('gpu_uuid')}, driver {env.get('driver')}; torch {env['torch']} (CUDA "
        f"{env['cuda']}), transformers {env['transformers']}; {env['date']}; commit {env['commit']}")
    est = estimate_seconds(args)
    say(f"engines {', '.join(args.engines)}; expected about {est / 60:.1f} minutes on an H100")
    result["estimated_s"] = est
    peaks = {"copy_Bps": copy_bandwidth(), "matmul_flops": matmul_peak()}
    result["peaks"] = peaks
    say(f"measured peaks: copy {peaks['copy_Bps'] / 1e12:.2f} TB/s (read + write), bf16 8192^3 matmul "
        f"{peaks['matmul_flops'] / 1e12:.0f} TFLOP/s")
    with tempfile.TemporaryDirectory(prefix="engine_targets_") as tmp:
        workdir = Path(tmp)
        for name in args.engines:
            result["engines"][name] = measure_engine(name, args, meter, peaks, workdir, say)
            say(f"[{name}] done in {result['engines'][name]['wall_s']:.0f} s; "
                f"{(time.perf_counter() - t_start) / 60:.1f} minutes so far")
            _write(out_dir, result, lines)
        if not args.quick:
            for model in args.models:
                result["models"][model] = _extra_model(model, args, meter, workdir, say)
                _write(out_dir, result, lines)
    meter.close()
    if args.headline in result["engines"]:
        headline(result, args.headline)
    result["wall_s"] = time.perf_counter() - t_start
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    say(f"total {result['wall_s'] / 60:.1f} minutes (estimate was {est / 60:.1f})")
    say()
    say(table(result))
    _write(out_dir, result, lines)
    return 0


def _extra_model(model: str, args, meter, workdir: Path, say) -> dict:
    """Corners of another model with the lean engine, or the hf engine where the lean one refuses it."""
    from energybook.measure.engines import EngineUnavailable

    rec: dict = {"error": None}
    eng = None
    try:
        try:
            eng = harness.build_engine(model, "lean", device=args.device, max_batch=MAX_BATCH)
            rec["engine"] = "lean"
        except EngineUnavailable as exc:
            say(f"[{model}] lean refuses it ({exc}); hf engine")
            eng = harness.build_engine(model, "hf", device=args.device, max_batch=MAX_BATCH)
            rec["engine"] = "hf"
        rec["engine_settings"] = harness.settings_record(rec["engine"])
        tj = tokens_per_j(eng, rec["engine"], list(CORNERS), meter, workdir / model, warmup_steps=32)
        rec["corners"] = tj
        rec["tokens_per_j"] = {k: v["tokens_per_j"] for k, v in tj.items()}
        say(f"[{model}] tokens/J ({rec['engine']}): "
            + ", ".join(f"{k} {v:.2f}" for k, v in rec["tokens_per_j"].items()))
    except Exception as exc:  # noqa: BLE001
        rec["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
        say(f"[{model}] FAILED: {exc}")
    finally:
        if eng is not None:
            eng.release()
        del eng
        _free()
    return rec


def _write(out_dir: Path, result: dict, lines: list[str]) -> None:
    (out_dir / "engine_targets.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "engine_targets.txt").write_text("\n".join(lines) + "\n\n" + table(result))


if __name__ == "__main__":
    sys.exit(main())
