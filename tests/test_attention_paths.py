"""The attention paths each engine runs (energybook.model.attention_paths): every study model's paths are described
or refused by name, windows that mask nothing are the plain path, multi-query attention is described, the refusal
names the feature and the way out, and the physical model counts a window the way each engine runs it."""

from __future__ import annotations

import dataclasses

import pytest

from energybook.model import architecture as A
from energybook.model import attention_paths as AP
from energybook.model import batch as B
from energybook.model import physics as P
from energybook.model import physics_passes as PP
from energybook.model.physics_fit import read_calibration

#: The path each study model takes on the hf engine at short lengths (its windows, if any, mask nothing there).
STUDY_PATHS = {
    "Llama-3.2-1B": "grouped-query", "OPT-1.3B": "causal-full", "Qwen2-1.5B": "grouped-query",
    "Gemma-2-2B": "logit-softcap", "OPT-2.7B": "causal-full", "Llama-3.2-3B": "grouped-query",
    "Granite-3B-Code-Base": "causal-full", "OPT-6.7B": "causal-full", "Qwen2-7B": "grouped-query",
    "Falcon-RW-7B": "alibi", "Granite-8B-Code-Base": "grouped-query", "Llama-3.1-8B": "grouped-query",
    "Gemma-2-9B": "logit-softcap",
}
REFUSED = {"Gemma-2-2B": ("logit soft-capping", "attn_logit_softcapping=50.0"),
           "Gemma-2-9B": ("logit soft-capping", "attn_logit_softcapping=50.0"),
           "Falcon-RW-7B": ("ALiBi", "ALiBi")}
#: Falcon-7B's layout (rotary, one key/value head for 71 query heads), the multi-query architecture.
FALCON_7B = dict(model_type="falcon", hidden_size=4544, num_attention_heads=71, num_hidden_layers=32, vocab_size=65024,
                 multi_query=True, parallel_attn=True, alibi=False, bias=False, torch_dtype="bfloat16")


def test_every_study_model_is_listed():
    assert sorted(STUDY_PATHS) == sorted(A.STUDY_ORDER)


@pytest.mark.parametrize("name", A.STUDY_ORDER)
def test_each_study_model_has_a_described_path_list(name):
    arch = A.load(name)
    paths = AP.attention_paths(arch, "hf", 64, 128)
    assert [p.name for p in paths] == [STUDY_PATHS[name]]
    for p in paths:
        assert p.name in AP.PATH_NAMES and p.engine == "hf"
        assert p.runs and p.counted and p.detail and p.kernels
        assert set(p.kernels) <= set(AP.KERNELS)
        assert p.described == (name not in REFUSED)
        assert (p.why_refused == "") == p.described
    if name not in REFUSED:
        assert AP.check_attention(arch, "hf", 64, 128) == []
        assert paths[0].seen_in  # some calibration model ran these kernels


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_soft_capping_and_alibi_are_refused_by_name_and_allowed_with_a_warning(name):
    arch = A.load(name)
    path = STUDY_PATHS[name]
    feature, detail = REFUSED[name]
    with pytest.raises(AP.AttentionRefused) as info:
        AP.check_attention(arch, "hf", 64, 128)
    message = str(info.value)
    assert isinstance(info.value, P.Refused)  # the CLI's refusals (exit 2)
    assert [p.name for p in info.value.paths] == [path]
    assert name in message and feature in message and detail in message
    assert "which no calibration grid ran" in message and "Llama-3.2-1B" in message
    assert f"energybook sweep --model {name} --engine hf" in message  # the way out: measure it
    assert f"--allow-path {path}" in message and "uncalibrated estimate, labelled as such" in message
    warnings = AP.check_attention(arch, "hf", 64, 128, allow=[path])
    assert len(warnings) == 1
    assert warnings[0].startswith(f"uncalibrated estimate (--allow-path {path})") and feature in warnings[0]
    with pytest.raises(AP.AttentionRefused):  # another path allowed does not let this one through
        AP.check_attention(arch, "hf", 64, 128, allow=["sliding-window"])


def _gemma_without_cap():
    cfg = dict(A.hf_config("Gemma-2-2B"), attn_logit_softcapping=None)
    return A.Architecture.from_hf_config(cfg, name="Gemma-2-2B-nocap"), cfg


def test_a_window_longer_than_the_context_is_the_plain_path():
    arch, cfg = _gemma_without_cap()
    w = arch.sliding_window
    plain = AP.attention_paths(arch, "hf", w - 96, 97, config=cfg)  # w keys at the last step: the window masks none
    assert [p.name for p in plain] == ["grouped-query"] and plain[0].described
    assert "masks nothing" in plain[0].detail
    assert AP.check_attention(arch, "hf", w - 96, 97, config=cfg) == []
    decode = AP.attention_paths(arch, "hf", w - 96, 98, config=cfg)  # one key more: the window binds in decode
    assert [p.name for p in decode] == ["grouped-query", "sliding-window"]
    assert decode[1].kernels == ("flash-varlen-window",) and not decode[1].described and decode[1].faithful
    both = AP.attention_paths(arch, "hf", w + 1, 8, config=cfg)  # and in the prompt: the masked square
    assert both[1].kernels == ("sdpa-masked-square", "flash-varlen-window")
    with pytest.raises(AP.AttentionRefused, match=f"a sliding window of {w} tokens shorter than its context"):
        AP.check_attention(arch, "hf", w + 1, 8, config=cfg)
    assert len(AP.check_attention(arch, "hf", w + 1, 8, config=cfg, allow=["sliding-window"])) == 1


def test_gemma_2_past_its_window_runs_both_uncalibrated_paths():
    arch = A.load("Gemma-2-2B")
    w = arch.sliding_window
    paths = AP.attention_paths(arch, "hf", w, w)
    assert [p.name for p in paths] == ["sliding-window", "logit-softcap"]
    assert not any(p.described or p.faithful for p in paths)
    with pytest.raises(AP.AttentionRefused, match="--allow-path sliding-window --allow-path logit-softcap"):
        AP.check_attention(arch, "hf", w, w)
    assert len(AP.check_attention(arch, "hf", w, w, allow=["sliding-window", "logit-softcap"])) == 2


def test_a_window_on_every_layer_leaves_no_plain_path_once_it_binds_in_the_prompt():
    cfg = dict(A.hf_config("Llama-3.2-1B"), model_type="mistral", sliding_window=256)
    arch = A.Architecture.from_hf_config(cfg, name="mistral-like")
    assert arch.sliding_layers == arch.num_layers
    assert [p.name for p in AP.attention_paths(arch, "hf", 512, 64, config=cfg)] == ["sliding-window"]
    assert [p.name for p in AP.attention_paths(arch, "hf", 128, 512, config=cfg)] == ["grouped-query", "sliding-window"]


def test_multi_query_is_described():
    arch = A.Architecture.from_hf_config(FALCON_7B, name="Falcon-7B")
    assert arch.num_kv_heads == 1
    paths = AP.attention_paths(arch, "hf", 512, 512, config=FALCON_7B)
    assert [p.name for p in paths] == ["multi-query"]
    gqa = AP.attention_paths(A.load("Llama-3.2-1B"), "hf", 512, 512)[0]
    assert paths[0].described and paths[0].kernels == gqa.kernels  # the grouped-query kernels, one KV head
    assert paths[0].seen_in == gqa.seen_in and "Llama-3.2-1B" in paths[0].seen_in
    assert "one decode block per request and layer" in paths[0].counted
    assert AP.check_attention(arch, "hf", 512, 512, config=FALCON_7B) == []


def test_what_was_seen_comes_from_the_calibration_grids():
    cal = read_calibration(engine="hf")
    assert set(AP.calibrated_kernels("hf", cal)) == set(cal.calibrated_range["models"])
    only_opt = dataclasses.replace(cal, calibrated_range=dict(cal.calibrated_range, models=["OPT-1.3B"]))
    llama = A.load("Llama-3.2-1B")
    assert AP.attention_paths(llama, "hf", 64, 64, calibration=only_opt)[0].seen_in == ()
    with pytest.raises(AP.AttentionRefused, match="grouped-query attention .*the grids of OPT-1.3B"):
        AP.check_attention(llama, "hf", 64, 64, calibration=only_opt)
    assert AP.check_attention(A.load("OPT-2.7B"), "hf", 64, 64, calibration=only_opt) == []


def test_the_lean_engine_has_its_own_paths_and_no_calibration_yet():
    llama = A.load("Llama-3.2-1B")
    (path,) = AP.attention_paths(llama, "lean", 64, 64)
    assert path.engine == "lean" and "lean-decode" in path.kernels and not path.described
    with pytest.raises(AP.AttentionRefused, match="no calibration of the lean engine exists"):
        AP.check_attention(llama, "lean", 64, 64)
    arch, cfg = _gemma_without_cap()
    window = AP.attention_paths(arch, "lean", arch.sliding_window + 1, 8, config=cfg)[1]
    assert window.name == "sliding-window" and window.kernels[0] == "flex-window" and window.faithful
    # transformers' Gemma 2 caps by default when the key is left out; the lean engine's spec reads no cap then
    bare = {k: v for k, v in A.hf_config("Gemma-2-2B").items() if k != "attn_logit_softcapping"}
    assert AP.attention_softcap(A.load("Gemma-2-2B"), "torch", bare) == AP.GEMMA2_SOFTCAP
    assert AP.attention_softcap(A.load("Gemma-2-2B"), "lean", bare) is None


def test_bad_arguments_are_refused_by_name():
    llama = A.load("Llama-3.2-1B")
    with pytest.raises(ValueError, match="unknown attention path"):
        AP.check_attention(llama, "hf", 64, 64, allow=["flash"])
    with pytest.raises(ValueError, match="no attention paths known for engine 'vllm'"):
        AP.attention_paths(llama, "vllm", 64, 64)
    with pytest.raises(ValueError):
        AP.attention_paths(llama, "hf", 0, 64)
    assert AP.attention_paths(llama, "torch", 64, 64)[0].engine == "hf"


def test_the_physical_model_counts_a_window_the_way_each_engine_runs_it():
    arch, _ = _gemma_without_cap()
    w, n = arch.sliding_window, arch.sliding_window + 100
    full, sliding = arch.num_layers - arch.sliding_layers, arch.sliding_layers
    band = full * n * (n + 1) / 2 + sliding * (w * (w + 1) / 2 + (n - w) * w)
    assert PP.causal_pairs(arch, n) == band  # the lean engine's FlexAttention skips the blocks outside the band
    assert PP.causal_pairs(arch, n, "square") == full * n * (n + 1) / 2 + sliding * n * n  # hf: the masked square
    assert PP.causal_pairs(arch, w, "square") == PP.causal_pairs(arch, w)  # a window that masks nothing
    hf = PP.pass_counts(arch, n, 3, n_req=2, batch=2, profile=B.HF_PROFILE)
    lean = PP.pass_counts(arch, n, 3, n_req=2, batch=2, profile=B.LEAN_PROFILE)
    pre_hf, pre_lean = hf.phase == 0, lean.phase == 0
    assert hf.attention_pairs[pre_hf].sum() == pytest.approx(2 * arch.num_heads * PP.causal_pairs(arch, n, "square"))
    assert lean.attention_pairs[pre_lean].sum() == pytest.approx(2 * arch.num_heads * band)
    att = 4 * arch.num_heads * arch.head_dim
    assert hf.attention_flops[pre_hf].sum() == pytest.approx(2 * att * n * arch.num_layers * n)
    assert lean.attention_flops[pre_lean].sum() == pytest.approx(2 * att * n * (full * n + sliding * w))
    # decode reads the window's keys in both engines
    assert hf.attention_pairs[~pre_hf].tolist() == lean.attention_pairs[~pre_lean].tolist()
    with pytest.raises(ValueError, match="'band' or 'square'"):
        PP.causal_pairs(arch, n, "triangle")


def test_windows_that_mask_nothing_leave_the_counts_unchanged():
    llama = A.load("Llama-3.2-1B")
    hf = PP.pass_counts(llama, 300, 20, n_req=4, batch=4, profile=B.HF_PROFILE)
    lean = PP.pass_counts(llama, 300, 20, n_req=4, batch=4, profile=B.LEAN_PROFILE)
    assert hf.attention_pairs[hf.phase == 0].sum() == lean.attention_pairs[lean.phase == 0].sum()
    assert PP.prefill_window(B.HF_PROFILE) == "square" and PP.prefill_window(B.LEAN_PROFILE) == "band"
