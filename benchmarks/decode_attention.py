"""Decode attention alone: is a shared key/value head read once per query head?

The open question of the comparison chapter: our efficiency falls further with the output length
than the study's TensorRT-LLM. The decode graphs run attention through flash attention's
variable-length kernel with one query row per request and every query head on its own; with
grouped-query attention a key/value head may then be read from memory once per query head.

This script times one decode step's attention, with the shapes of one layer of each model, for
three ways of running it on the same preallocated cache (B, S_max, K, h):

* ``varlen``: what the engine's graphs do (``aten._flash_attention_forward``, ``seqused_k``);
* ``varlen_folded``: the same kernel with the query heads of each key/value head folded into the
  query axis (``groups`` query rows per request, non-causal), so each key/value head is read once;
* ``sdpa_folded``: what the eager path does (``scaled_dot_product_attention`` over the live slice,
  query heads folded).

It prints microseconds per call and the KV bytes read once per step over that time, as a fraction
of the device-to-device copy bandwidth measured in the same run. Run on a GPU:

    python -m benchmarks.decode_attention | tee benchmarks/results/decode_attention.txt

Not run yet on real hardware when this file was written; its output file, once committed, is the
result. On a machine without CUDA it runs ``sdpa_folded`` only, on tiny sizes, as a smoke test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from energybook.model import architecture

if __package__ in (None, ""):  # run as a file (python benchmarks/decode_attention.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

MODELS = ("Llama-3.2-1B", "Qwen2-1.5B", "OPT-1.3B")


def _time(fn, device, repeats: int) -> float:
    """Median seconds per call after a warm-up (:func:`benchmarks.harness.time_ms`: CUDA events on a GPU)."""
    return harness.time_ms(fn, device=device, repeats=repeats, warmup=3).median_s


def copy_bandwidth(device, nbytes: int = 2 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write), the practical peak."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    return 2 * nbytes / _time(lambda: b.copy_(a), device, 10)


def kernels(q, k_cache, v_cache, context: int, device):
    """The three ways; each returns (B, H, h). ``k_cache``/``v_cache``: (B, S_max, K, h)."""
    b, h_q, d = q.shape
    k_heads = k_cache.shape[2]
    groups = h_q // k_heads
    scale = d ** -0.5
    used = torch.full((b,), context, dtype=torch.int32, device=device)
    s_max = k_cache.shape[1]
    cu_k = torch.arange(0, (b + 1) * s_max, s_max, dtype=torch.int32, device=device)
    k_flat = k_cache.reshape(-1, k_heads, d)
    v_flat = v_cache.reshape(-1, k_heads, d)

    def varlen():
        cu_q = torch.arange(b + 1, dtype=torch.int32, device=device)
        return torch.ops.aten._flash_attention_forward(q, k_flat, v_flat, cu_q, cu_k, 1, context, 0.0, False, False,
                                                       scale=scale, seqused_k=used)[0]

    def varlen_folded():
        # (B, K*G, h) -> (B*G, K, h): request i's rows are the G query heads of each KV head.
        qf = q.view(b, k_heads, groups, d).transpose(1, 2).reshape(b * groups, k_heads, d)
        cu_q = torch.arange(0, (b + 1) * groups, groups, dtype=torch.int32, device=device)
        out = torch.ops.aten._flash_attention_forward(qf, k_flat, v_flat, cu_q, cu_k, groups, context, 0.0, False,
                                                      False, scale=scale, seqused_k=used)[0]
        return out.view(b, groups, k_heads, d).transpose(1, 2).reshape(b, h_q, d)

    def sdpa_folded():
        qg = q.view(b, k_heads, groups, d)
        k = k_cache[:, :context].transpose(1, 2)
        v = v_cache[:, :context].transpose(1, 2)
        return F.scaled_dot_product_attention(qg, k, v, scale=scale).reshape(b, h_q, d)

    ways = {"sdpa_folded": sdpa_folded}
    if device.type == "cuda":
        ways = {"varlen": varlen, "varlen_folded": varlen_folded, **ways}
    return ways


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--context", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        args.batch, args.context, args.repeats = [2], [64], 3
        print("no CUDA device: smoke test of sdpa_folded on tiny sizes; no timings worth reading")
    else:
        bw = copy_bandwidth(device)
        print(f"{torch.cuda.get_device_name()}: device copy {bw / 1e12:.2f} TB/s (read + write), "
              f"torch {torch.__version__}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"{'model':<14}{'K/H':>7}{'batch':>7}{'context':>9}  {'way':<14}{'us':>10}{'KV GB/s':>10}{'of copy':>9}"
          f"{'max err':>9}")
    for name in MODELS:
        arch = architecture.load(name)
        h_q, k_heads, d = arch.num_heads, arch.num_kv_heads, arch.head_dim
        for b in args.batch:
            for c in args.context:
                gen = torch.Generator(device=device).manual_seed(0)
                q = torch.randn(b, h_q, d, device=device, dtype=dtype, generator=gen)
                k_cache = torch.randn(b, c, k_heads, d, device=device, dtype=dtype, generator=gen)
                v_cache = torch.randn(b, c, k_heads, d, device=device, dtype=dtype, generator=gen)
                ways = kernels(q, k_cache, v_cache, c, device)
                ref = ways["sdpa_folded"]().float()
                kv_bytes = 2 * b * c * k_heads * d * k_cache.element_size()
                for way, fn in ways.items():
                    try:
                        err = (fn().float() - ref).abs().max().item()
                        s = _time(fn, device, args.repeats)
                    except RuntimeError as exc:  # a kernel this build lacks
                        print(f"{name:<14}{k_heads:>3}/{h_q:<3}{b:>7}{c:>9}  {way:<14} unavailable: {exc}")
                        continue
                    frac = f"{kv_bytes / s / bw:>9.2f}" if device.type == "cuda" else f"{'-':>9}"
                    print(f"{name:<14}{k_heads:>3}/{h_q:<3}{b:>7}{c:>9}  {way:<14}{s * 1e6:>10.1f}"
                          f"{kv_bytes / s / 1e9:>10.1f}{frac}{err:>9.1e}")
                del q, k_cache, v_cache
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
