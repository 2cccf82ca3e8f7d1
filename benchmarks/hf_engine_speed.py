"""How fast is the hf (torch) engine on a GPU? Decode step, prefill and tokens per joule (not a test): Llama 3.2 1B,
dummy weights, the engine built as a sweep builds it (:func:`benchmarks.harness.build_engine`), steps timed by the
harness's CUDA-event timer.

Prints and writes (``--out`` folder, default benchmarks/results/; the files keep the names ``bench_engine.json``
and ``bench_engine.txt`` the book reads, the JSON with the harness's provenance):

* decode-step time and achieved HBM bandwidth (bytes of ``complexity.decode_step`` over the step
  time) as a fraction of the measured 3.0 TB/s copy bandwidth of the lent H100, at batch 1, 64,
  256 and contexts 128..8192, for the eager exact-length path and the CUDA-graph bucket path;
* prefill TFLOP/s (``complexity.prefill`` FLOPs over time) as a fraction of the measured
  798 TFLOP/s bf16 matrix product of the same H100;
* tokens per joule at n_in 64, n_out 256, N_req 1000 (one wave of 1000) for the engine and for
  plain ``generate`` (eager, dynamic cache), beside the study's 120.71 tok/J.

Usage: ``python -m benchmarks.hf_engine_speed [--out DIR] [--quick]`` (was ``benchmarks/bench_engine.py``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/hf_engine_speed.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

PEAK_BW = 3.0e12  # B/s, device-to-device copy measured on the lent H100 (KINDS.md, 2026-11-13)
PEAK_FLOPS = 798e12  # FLOP/s, 8192^3 bf16 matmul measured on the lent H100 (KINDS.md, 2026-11-13)
STUDY_TOK_J = 120.71
GENERATE_TOK_J = 97.0


def step_times(eng, batch: int, context: int, mode: str, steps: int = 20) -> float:
    """Median decode-step time (seconds) at a fixed context (:func:`benchmarks.harness.time_ms`: CUDA events)."""
    import torch

    from energybook.measure import torch_engine as E

    a = eng.arch
    max_len = eng.cache_len(context, 1)
    cache = eng.WaveCache(a.num_layers, batch, a.num_kv_heads, max_len, a.head_dim, eng.dtype, eng.device)
    for t in cache.keys + cache.values:
        t.normal_(0, 0.5)
    positions = torch.arange(max_len, device=eng.device)
    tok = torch.randint(0, eng.vocab, (batch, 1), device=eng.device)
    with torch.inference_mode():
        if mode == "eager":
            cache.pos = context

            def run():
                return eng._next_token(tok, positions[context:context + 1].view(1, 1), cache)
        else:
            graph_len = min(max_len, (context // E.BUCKET + 1) * E.BUCKET)
            pos_t = torch.full((1,), context, dtype=torch.long, device=eng.device)
            cache.pos_t, cache.pos = pos_t, context
            key_idx = positions[:graph_len].view(1, 1, 1, graph_len)
            neg = torch.finfo(eng.dtype).min
            cu_q = torch.arange(batch + 1, dtype=torch.int32, device=eng.device)
            varlen = (cu_q, cu_q * max_len, torch.full((batch,), context + 1, dtype=torch.int32,
                                                        device=eng.device), graph_len)

            def body():
                if mode == "graph_varlen":
                    E._AttnState.varlen = varlen
                else:
                    E._AttnState.mask = torch.where(key_idx <= pos_t, 0.0, neg).to(eng.dtype)
                cache.graph_len = graph_len
                return eng._next_token(tok, pos_t.view(1, 1), cache)

            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    body()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                body()
            E._AttnState.mask = None
            E._AttnState.varlen = None
            cache.graph_len = None

            def run():
                g.replay()
        step = harness.time_ms(run, device=eng.device, repeats=steps, warmup=3).median_s
    cache.keys.clear()
    cache.values.clear()
    torch.cuda.empty_cache()
    return step


def tok_per_j(meter, fn, tokens: int, min_window_s: float = 10.0) -> dict:
    """Run ``fn`` (after one warm-up) until the window reaches ``min_window_s``; energy by every method."""
    fn()  # warm-up at the real batch
    t0 = meter.now()
    import pynvml

    raw0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(meter._h)
    runs = 0
    while True:
        fn()
        runs += 1
        if time.perf_counter() - t0 >= min_window_s:
            break
    t1 = meter.now()
    raw1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(meter._h)
    r = meter.reading(t0, t1)
    out = {"runs": runs, "window_s": r.duration_s, "energy_j": r.energy_j, "energy_j_raw_counter": (raw1 - raw0) / 1e3,
           "energy_j_power100": r.energy_j_power100, "energy_j_power500": r.energy_j_power500,
           "power_w": r.power_w, "tokens_out": tokens * runs}
    for k in ("energy_j", "energy_j_raw_counter", "energy_j_power100", "energy_j_power500"):
        out["tokens_per_j" + k[len("energy_j"):]] = tokens * runs / out[k]
    out["s_per_run"] = r.duration_s / runs
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="fewer contexts (smoke run)")
    ap.add_argument("--skip-generate", action="store_true", help="skip the plain-generate baseline")
    args = ap.parse_args(argv)
    import torch
    import transformers

    from energybook.measure.meter import Meter
    from energybook.model import complexity as C

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
                 "torch": torch.__version__, "transformers": transformers.__version__,
                 "peak_bw_Bps": PEAK_BW, "peak_flops": PEAK_FLOPS,
                 "peaks_note": "measured on the lent H100 (copy 3.0 TB/s, bf16 8192^3 matmul 798 TFLOP/s), "
                               "not datasheet"}
    try:
        res["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,"
                                            "clocks.max.sm", "--format=csv"], capture_output=True, text=True).stdout
    except OSError:
        res["nvidia_smi"] = "n/a"
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    meter = Meter(sync=torch.cuda.synchronize).start()
    res["device"] = meter.device_info()
    say(f"GPU: {res['device']}  torch {torch.__version__}  transformers {transformers.__version__}")
    say(f"idle power: {meter.idle_power_w(2.0):.1f} W")
    tl = meter.timeline()
    dts = [b - a for a, b in zip(tl["tick_t"][1:], tl["tick_t"][2:])]
    if dts:
        res["counter_tick_s_median"] = statistics.median(dts)
        say(f"counter tick interval: median {statistics.median(dts) * 1e3:.1f} ms (n={len(dts)})")

    eng = harness.build_engine("Llama-3.2-1B", "hf", device="cuda", max_batch=1024)
    arch = eng.arch
    res["engine_settings"] = eng.settings
    # --- decode step vs context
    contexts = [128, 1024, 8192] if args.quick else [128, 256, 512, 1024, 2048, 4096, 8192]
    rows = []
    say("\ndecode step (Llama-3.2-1B, bf16): time, achieved bandwidth / 3.0 TB/s")
    modes = ["eager", "graph_mask"] + (["graph_varlen"] if eng.graph_attention == "flash_varlen" else [])
    say("ms per step and achieved bandwidth fraction for: " + ", ".join(modes))
    say(f"{'batch':>5s} {'context':>7s} {'GB/step':>8s} " + " ".join(f"{m + ' ms':>16s} {'bw':>5s}" for m in modes))
    for batch in (1, 64, 256, 1000):
        for ctx in contexts:
            need = arch.kv_bytes_per_token * (ctx + 256) * batch
            if need > 0.8 * torch.cuda.mem_get_info()[0]:
                continue
            if batch == 1000 and ctx > 1024:
                continue
            nbytes = C.decode_step(arch, ctx, batch).bytes
            row = {"batch": batch, "context": ctx, "bytes": nbytes}
            for m in modes:
                t = step_times(eng, batch, ctx, m)
                row[m + "_s"], row[m + "_bw_frac"] = t, nbytes / t / PEAK_BW
            rows.append(row)
            say(f"{batch:5d} {ctx:7d} {nbytes / 1e9:8.3f} "
                + " ".join(f"{row[m + '_s'] * 1e3:16.3f} {row[m + '_bw_frac']:5.2f}" for m in modes))
    res["decode"] = rows
    # --- prefill
    say("\nprefill: TFLOP/s / 798")
    pre = []
    for n_in, batch in ((64, 256), (512, 32), (2048, 8), (4096, 4)):
        ts = []
        for _ in range(4):
            w = eng.generate(n_in, 1, batch)
            ts.append(w.times.prefill_end - w.times.start)
        t = statistics.median(ts[1:])
        fl = C.prefill(arch, n_in, batch).flops
        pre.append({"n_in": n_in, "batch": batch, "s": t, "flops": fl, "tflops": fl / t / 1e12,
                    "frac": fl / t / PEAK_FLOPS})
        say(f"n_in {n_in:5d} batch {batch:4d}: {t * 1e3:8.2f} ms {fl / t / 1e12:7.1f} TFLOP/s "
            f"({fl / t / PEAK_FLOPS:.2f} of peak)")
    res["prefill"] = pre
    # --- tokens per joule at (64, 256, 1000)
    say("\ntokens per joule at n_in 64, n_out 256, 1000 requests in one wave")
    tj = {}
    for mode in ("eager", "graph_mask", "graph_varlen"):
        if mode == "graph_varlen" and eng.graph_attention != "flash_varlen":
            continue
        label = "engine_" + mode
        chosen = eng.graph_attention
        eng.graph_attention = "sdpa_mask" if mode == "graph_mask" else chosen
        r = tok_per_j(meter, lambda m=mode: eng.generate(64, 256, 1000, cuda_graphs=m != "eager"), 1000 * 256)
        eng.graph_attention = chosen
        tj[label] = r
        say(f"{label:16s}: {r['tokens_per_j']:7.2f} tok/J counter, {r['tokens_per_j_raw_counter']:7.2f} raw counter, "
            f"{r['tokens_per_j_power100']:7.2f} power100, {r['tokens_per_j_power500']:7.2f} power500; "
            f"{r['power_w']:.0f} W, {r['s_per_run']:.2f} s/run, {r['runs']} runs")
    if not args.skip_generate:
        gen = torch.Generator(device="cuda").manual_seed(1)
        ids = torch.randint(0, eng.vocab, (1000, 64), device="cuda", generator=gen)
        attn_name = eng.model.config._attn_implementation  # the engine's own, restored below
        eng.model.config._attn_implementation = "sdpa"

        def plain():
            with torch.inference_mode():
                eng.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=256, min_new_tokens=256,
                                   do_sample=False, pad_token_id=0)

        r = tok_per_j(meter, plain, 1000 * 256)
        eng.model.config._attn_implementation = attn_name
        tj["generate_eager_dynamic"] = r
        say(f"{'generate':16s}: {r['tokens_per_j']:7.2f} tok/J counter, {r['tokens_per_j_power500']:7.2f} power500; "
            f"{r['power_w']:.0f} W, {r['s_per_run']:.2f} s/run")
    say(f"study (TensorRT-LLM): {STUDY_TOK_J} tok/J; plain generate measured earlier: {GENERATE_TOK_J} tok/J")
    res["tokens_per_j"] = tj
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meter.stop()
    harness.write_record(out_dir / "bench_engine.json", res, meter=meter, engine="hf",
                         settings=harness.engine_config("hf", max_batch=1024).engine_settings)
    (out_dir / "bench_engine.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
