"""The Triton decode-attention kernel against plain softmax attention, run by Triton's interpreter on the CPU.

Triton comes with PyTorch's CUDA builds; on a CPU-only install (CI) these tests are skipped, and the GPU test of
the lean engine (``tests/test_lean_engine.py``) checks the kernel in bf16 inside the engine's CUDA graphs.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from energybook.measure import triton_decode as T

ROOT = Path(__file__).resolve().parents[1]


def test_plan_splits_fills_the_gpu_and_covers_the_keys():
    assert T.plan_splits(8000, 160) == (1, 192)  # enough (request, KV head) pairs: one chunk
    splits, chunk = T.plan_splits(8, 8192)  # batch 1, 8 KV heads: split the keys
    assert splits * 8 >= 256 and splits * chunk >= 8192 and chunk % T.BLOCK_N == 0 and chunk >= T.MIN_CHUNK
    assert T.plan_splits(8, 100) == (1, 128)  # short contexts are never split below MIN_CHUNK keys
    with pytest.raises(ValueError, match="pairs and max_keys"):
        T.plan_splits(0, 10)


_SCRIPT = textwrap.dedent("""
    import json, math, sys
    import torch
    import triton.runtime.interpreter as I

    _orig = I._patch_lang_tensor

    def _patched(tensor, scope):  # NumPy 2 no longer turns a (1,)-array into an int; Triton 3.6's interpreter does
        _orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    I._patch_lang_tensor = _patched
    from energybook.measure import triton_decode as T

    torch.manual_seed(0)
    out = []
    for b, k, g, d, s, live, dtype, splits, *extra in json.loads(sys.argv[1]):
        opts = extra[0] if extra else {}
        dtype = getattr(torch, dtype)
        q = torch.randn(b, k, g, d, dtype=dtype)
        cache = torch.randn(2, b, s, k, d, dtype=dtype)  # the engine's layout: (2, B, S, K, h) of one layer
        kc, vc = cache[0], cache[1]
        kk = kc[:, :live].float().permute(0, 2, 1, 3)
        vv = vc[:, :live].float().permute(0, 2, 1, 3)
        logits = q.float() @ kk.transpose(-1, -2) / math.sqrt(d)
        slopes, cap, window = None, opts.get("softcap"), opts.get("window")
        if cap:  # Gemma 2's soft-capping of the scaled logits
            logits = torch.tanh(logits / cap) * cap
        if window:  # a sliding window: the last `window` live keys
            logits[..., : max(0, live - window)] = float("-inf")
        if opts.get("alibi"):  # ALiBi: per query head (KV head major) a slope times the key's position, scaled
            slopes = torch.rand(k * g) / math.sqrt(d)
            logits = logits + slopes.view(1, k, g, 1) * torch.arange(live).float()
        ref = torch.softmax(logits, -1) @ vv
        got = T.decode_attention(q, kc, vc, torch.tensor([live - 1]), 1 / math.sqrt(d), s,
                                 splits=tuple(splits) if splits else None, alibi=slopes, softcap=cap,
                                 window=window)
        out.append([list(got.shape), float((got.float() - ref).abs().max() / ref.abs().max())])
    print(json.dumps(out))
""")


@pytest.mark.skipif(not T.available(), reason="Triton is not installed (it comes with PyTorch's CUDA builds)")
def test_kernel_matches_softmax_attention_in_the_interpreter():
    """Grouped (G = 4, 3), multi-head (G = 1), a head dim that is not a power of two (80), one live key,
    live keys ending inside a block, several chunks with empty ones past the live keys, float32 and float16, ALiBi
    biases, soft-capped logits and sliding windows (split, with chunks wholly before the window)."""
    cases = [[3, 2, 4, 64, 300, 257, "float32", None],
             [3, 2, 4, 64, 300, 257, "float32", [5, 64]],  # chunks 4 and 5 hold no live key
             [2, 1, 1, 80, 130, 1, "float32", None],
             [2, 3, 1, 80, 130, 100, "float32", [3, 64]],
             [2, 2, 3, 64, 600, 599, "float16", [3, 256]],
             [2, 3, 1, 64, 300, 257, "float32", [3, 128], {"alibi": True}],  # multi-head with ALiBi, split
             [2, 2, 4, 64, 100, 77, "float32", None, {"alibi": True}],
             [2, 2, 2, 64, 300, 257, "float32", None, {"softcap": 0.5}],  # Gemma 2: soft-capped logits
             [2, 2, 2, 64, 300, 257, "float32", [5, 64], {"window": 100}],  # a window starting inside a block
             [2, 2, 2, 64, 300, 90, "float32", [5, 64], {"window": 100, "softcap": 2.0}]]  # the window not reached
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(cases)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for case, (shape, err) in zip(cases, got):
        b, k, g, d = case[:4]
        assert shape == [b, k, g, d]
        capped = len(case) > 8 and "softcap" in case[8]  # tanh through the sigmoid: a few ulps more
        assert err < (2e-3 if case[6] == "float16" else 5e-5 if capped else 1e-5), (case, err)


_ROUNDED_ALIBI = _SCRIPT.split("torch.manual_seed(0)")[0] + textwrap.dedent("""
    from energybook.measure.lean import alibi_slopes

    torch.manual_seed(0)
    b, k, h, s, live = 2, 8, 64, 512, 500  # positions past 256, where bf16 rounds them
    q, kc, vc = torch.randn(b, k, 1, h), torch.randn(b, s, k, h), torch.randn(b, s, k, h)
    slopes = alibi_slopes(64)[::8].to(torch.bfloat16).float()  # Falcon-RW-7B's, not powers of two
    n = torch.arange(s).float()

    def trunc(x):  # what Triton's interpreter does for a float32 -> bfloat16 cast
        return (x.contiguous().view(torch.int32) & -65536).view(torch.float32)

    def rtne(x):
        return x.to(torch.bfloat16).float()

    errs = {}
    got = T.decode_attention(q, kc, vc, torch.tensor([live - 1]), 1 / math.sqrt(h), s, alibi=slopes,
                             alibi_scale=1 / math.sqrt(h))
    for name, rnd in (("trunc", trunc), ("rtne", rtne)):
        for positions in ("rounded", "exact"):
            pos = rnd(n) if positions == "rounded" else n
            bias = rnd(slopes[:, None] * pos[None, :]) / math.sqrt(h)
            logits = q @ kc[:, :live].permute(0, 2, 3, 1) / math.sqrt(h) + bias.view(1, k, 1, -1)[..., :live]
            ref = torch.softmax(logits, -1) @ vc[:, :live].permute(0, 2, 1, 3)
            errs[f"{name} {positions}"] = float((got - ref).norm() / ref.norm())
    print(json.dumps(errs))
""")


@pytest.mark.skipif(not T.available(), reason="Triton is not installed (it comes with PyTorch's CUDA builds)")
def test_rounded_alibi_rounds_the_position_as_torch_does():
    """Falcon's ALiBi as transformers builds it, ``slopes.bfloat16() * positions``: torch casts the integer positions
    to bfloat16 before the product, so past 256 they are rounded too. The kernel matches that bias, under whichever
    rounding the interpreter applies to its casts, and not the one with exact positions (the cause of Falcon-RW's
    failed construction check on the GPU)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", _ROUNDED_ALIBI], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    errs = json.loads(res.stdout.strip().splitlines()[-1])
    best = min(errs, key=errs.get)
    assert best.endswith("rounded") and errs[best] < 1e-5, errs
    assert errs[best.replace("rounded", "exact")] > 1e-3, errs  # the check can tell the two biases apart


@pytest.mark.skipif(not T.available(), reason="Triton is not installed")
def test_chunks_that_do_not_cover_the_keys_are_refused():
    torch = pytest.importorskip("torch")
    q = torch.zeros(1, 1, 1, 16)
    kc = torch.zeros(1, 300, 1, 16)
    with pytest.raises(ValueError, match="do not cover"):
        T.decode_attention(q, kc, kc, torch.tensor([10]), 1.0, 300, splits=(2, 64))


def test_without_triton_the_kernel_says_what_to_do(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(T, "triton", None)
    assert not T.available()
    with pytest.raises(RuntimeError, match="choose another decode_attention"):
        T.decode_attention(torch.zeros(1, 1, 1, 16), torch.zeros(1, 4, 1, 16), torch.zeros(1, 4, 1, 16),
                           torch.tensor([0]), 1.0, 4)
