"""FLOP and byte counts: the closed forms, their properties, and a check against PyTorch."""

import pytest

from energybook.model import architecture as A
from energybook.model import complexity as C

LLAMA = A.load("Llama-3.2-1B")


@pytest.mark.parametrize("arch", A.study_models(), ids=lambda a: a.name)
@pytest.mark.parametrize("n_in,n_out", [(64, 64), (64, 4096), (4096, 64), (1000, 333)])
def test_textbook_sum_equals_published_closed_form(arch, n_in, n_out):
    assert C.request(arch, n_in, n_out, method="textbook").flops == pytest.approx(
        C.textbook_total_flops(arch, n_in, n_out), rel=1e-12)


@pytest.mark.parametrize("arch", A.study_models(), ids=lambda a: a.name)
def test_exact_request_equals_step_by_step_sum(arch):
    n_in, n_out = 100, 5000  # crosses Gemma 2's sliding window
    steps = sum((C.decode_step(arch, c) for c in range(n_in, n_in + n_out - 1)), C.Cost(0, 0))
    total = C.prefill(arch, n_in) + steps
    got = C.request(arch, n_in, n_out)
    assert got.flops == pytest.approx(total.flops, rel=1e-12)
    assert got.bytes == pytest.approx(total.bytes, rel=1e-12)


def test_decode_is_about_two_flops_per_parameter():
    step = C.decode_step(LLAMA, context=0)
    # Every weight except the embedding table is used in one multiply-accumulate per token.
    params = LLAMA.num_params - LLAMA.embedding_params + LLAMA.lm_head_params
    assert step.flops == pytest.approx(2 * params, rel=0.01)


def test_batching_shares_the_weights():
    one, many = C.decode_step(LLAMA, 512, batch=1), C.decode_step(LLAMA, 512, batch=1000)
    assert many.flops == pytest.approx(1000 * one.flops)
    assert many.bytes < 1000 * one.bytes / 10
    assert many.intensity > 50 * one.intensity
    assert one.bytes == pytest.approx(C.weight_bytes(LLAMA), rel=0.02)


def test_gqa_reads_a_quarter_of_the_kv_cache_of_mha():
    mha = LLAMA.replace(num_kv_heads=LLAMA.num_heads)
    gqa_kv = C.decode_step(LLAMA, 4096, 256).bytes - C.decode_step(LLAMA, 0, 256).bytes
    mha_kv = C.decode_step(mha, 4096, 256).bytes - C.decode_step(mha, 0, 256).bytes
    assert gqa_kv == pytest.approx(mha_kv / 4, rel=1e-9)


def test_exact_counts_differ_from_textbook_for_gated_ffn_and_lm_head():
    # Llama 3.2 1B: gated 4x FFN (3 matrices) and GQA: 2*(4+... ) d^2 vs the textbook 24 d^2.
    exact = C.linear_flops_per_token(LLAMA) / LLAMA.num_layers
    d = LLAMA.hidden_size
    assert exact == 2 * (d * d + 2 * d * 512 + d * d) + 2 * 3 * d * 4 * d
    assert C.decode_step(LLAMA, 0).flops > C.decode_step(LLAMA, 0, method="textbook").flops


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_in=0, n_out=1), "n_in must be a positive integer"),
    (dict(n_in=64, n_out=-3), "n_out must be a positive integer"),
    (dict(n_in=64, n_out=64, batch=0), "batch must be a positive integer"),
    (dict(n_in=64.5, n_out=64), "n_in must be a positive integer"),
    (dict(n_in=64, n_out=64, method="magic"), "unknown method 'magic'"),
])
def test_bad_lengths_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.request(LLAMA, **kwargs)


def test_negative_context_is_named():
    with pytest.raises(ValueError, match="context must be a non-negative integer"):
        C.decode_step(LLAMA, -1)
