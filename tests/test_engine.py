"""The torch engine on tiny random models (CPU): exact token counts, same tokens as transformers'
own greedy generate for every family it runs, the attention features honoured (sliding windows,
Gemma 2's soft-capping, Falcon's ALiBi), lengths checked, clear errors for bad parameters."""

import copy
import json
import logging

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from energybook.measure import torch_engine as TE  # noqa: E402
from energybook.measure.engines import EngineUnavailable  # noqa: E402
from energybook.measure.torch_engine import TorchEngine  # noqa: E402
from energybook.model import architecture as A  # noqa: E402

from .tiny import TINY_FAMILIES, tiny_config, tiny_family_config  # noqa: E402


def test_every_registered_family_runs_here():
    assert set(TE.FAMILIES) == set(A.families())
    assert set(A.families()) == {k.split(":")[0] for k in TINY_FAMILIES}


@pytest.fixture(scope="module", params=sorted(TINY_FAMILIES))
def engine(request, tmp_path_factory):
    eng = TorchEngine(tiny_family_config(tmp_path_factory.mktemp("cfg"), request.param), device="cpu", max_batch=8)
    # Weights of std 0.1 rather than 0.02: attention then shapes the greedy tokens, so that a dropped
    # window, soft-cap or ALiBi bias changes them (checked by mutation when these tests were written).
    with torch.no_grad():
        for p in eng.model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    eng.key = request.param
    return eng


def test_generates_exactly_the_tokens_asked_for(engine):
    wave = engine.generate(n_in=5, n_out=9, batch=3, checkpoints=[1, 4, 9], return_tokens=True)
    assert engine.last_tokens.shape == (3, 9)
    assert int((engine.last_tokens < 0).sum()) == 0
    assert wave.tokens_out == 27 and wave.tokens_in == 15
    assert sorted(wave.times.checkpoints) == [1, 4, 9]
    assert wave.times.start <= wave.times.prefill_end <= wave.times.checkpoints[4] <= wave.times.end


def _reference(engine, prompts, n_out):
    """transformers' own greedy generate, same weights, its own attention and cache, EOS not stopping it."""
    family = engine.arch.model_type
    # Gemma 2: transformers refuses SDPA (no soft-capping). Falcon: its eager path adds ALiBi twice
    # (transformers 5.24), its SDPA path once, as Falcon does.
    impl = "eager" if family == "gemma2" else "sdpa"
    ref = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(engine.config), attn_implementation=impl,
                                                        dtype=torch.float32).eval()
    ref.load_state_dict(engine.model.state_dict())
    ref.generation_config.eos_token_id = None  # the engine ignores EOS: generate must neither stop nor ban it
    n_in = prompts.shape[1]
    return ref.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n_out, do_sample=False,
                        pad_token_id=0)[:, n_in:]


def test_matches_transformers_greedy_generate(engine):
    """Every family; prompts of 6 tokens and 7 new ones cross the 4-token windows of the tiny configs."""
    n_in, n_out, batch = 6, 7, 2
    engine.generate(n_in=n_in, n_out=n_out, batch=batch, return_tokens=True)
    gen = torch.Generator().manual_seed(engine.seed + 7919 * n_in + batch)
    prompts = torch.randint(0, engine.vocab, (batch, n_in), generator=gen)
    ref = _reference(engine, prompts, n_out)
    assert torch.equal(engine.last_tokens, ref), engine.key


def test_settings_record_the_attention_path(engine):
    s = engine.settings
    assert s["attention_path"].startswith(TE.ATTN_NAME)
    # Falcon goes through the AttentionInterface where transformers' Falcon calls it, else through a subclass.
    legacy = engine.arch.model_type == "falcon" and not TE.falcon_dispatches_attention()
    assert ("FalconAttention" in s["attention_path"]) == legacy
    features = s["attention_features"]
    window = {"qwen2:window": 4, "gemma2": 4, "mistral": 4, "phi3": 4, "starcoder2": 4}.get(engine.key)
    assert features["sliding_window"] == window
    assert (f"sliding window of {window} tokens" in s["attention"]) == bool(window)
    assert features["softcap"] == (0.05 if engine.key == "gemma2" else None)
    assert features["alibi"] == (engine.key == "falcon")
    assert s["max_positions"] == engine.config.max_position_embeddings


@pytest.mark.parametrize("window,softcap,alibi", [(4, None, False), (None, 0.5, False), (4, 0.5, False),
                                                  (None, None, True), (None, None, False)])
def test_graph_mask_path_equals_the_eager_decode(window, softcap, alibi):
    """The masked path of CUDA-graph decode (bucket slice + mask), run on the CPU, against eager decode."""
    g = torch.Generator().manual_seed(1)
    b, h, k, d, graph_len, live = 2, 4, 2, 8, 16, 11
    q = torch.randn(b, h, 1, d, generator=g)
    keys, values = torch.randn(b, k, graph_len, d, generator=g), torch.randn(b, k, graph_len, d, generator=g)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625]) if alibi else None
    kw = dict(scaling=d**-0.5, sliding_window=window, softcap=softcap, alibi_slopes=slopes)
    eager, _ = TE._attention(None, q, keys[:, :, :live], values[:, :, :live], **kw)
    pos = torch.tensor([live - 1])
    idx = torch.arange(graph_len).view(1, 1, 1, -1)
    neg = torch.finfo(torch.float32).min
    try:
        TE._AttnState.mask = torch.where(idx <= pos, 0.0, neg)
        TE._AttnState.sliding_mask = torch.where((idx <= pos) & (idx > pos - (window or 0)), 0.0, neg)
        TE._AttnState.window = window
        graphed, _ = TE._attention(None, q, keys, values, **kw)
    finally:
        TE._AttnState.mask = TE._AttnState.sliding_mask = TE._AttnState.window = None
    torch.testing.assert_close(graphed, eager)
    # and the eager decode against the plain definition
    kr, vr = keys[:, :, :live].repeat_interleave(h // k, 1), values[:, :, :live].repeat_interleave(h // k, 1)
    scores = (q @ kr.transpose(-1, -2)) * d**-0.5
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if alibi:
        scores = scores + (slopes.to(torch.bfloat16)[:, None] * torch.arange(live)).float().view(1, h, 1, -1) * d**-0.5
    if window:
        scores[..., : live - window] = neg
    want = (scores.softmax(-1) @ vr).transpose(1, 2)
    torch.testing.assert_close(eager, want)


def test_prefill_sliding_window_mask_is_banded():
    m = TE.causal_mask(5, 5, 2, "cpu", torch.float32) == 0
    assert m.int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    # queries that are the last 2 of 4 positions (a prompt after cached tokens)
    assert (TE.causal_mask(2, 4, None, "cpu", torch.float32) == 0).int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_prefill_in_chunks_gives_the_same_tokens(tmp_path):
    cfg = tiny_config(tmp_path)
    whole = TorchEngine(cfg, device="cpu", max_batch=8)
    whole.generate(4, 5, 6, return_tokens=True)
    chunked = TorchEngine(cfg, device="cpu", max_batch=8, prefill_tokens=8)  # two requests per chunk
    chunked.generate(4, 5, 6, return_tokens=True)
    assert torch.equal(whole.last_tokens, chunked.last_tokens)


def test_bad_parameters_raise_value_errors(tmp_path):
    eng = TorchEngine(tiny_config(tmp_path), device="cpu", max_batch=4)
    with pytest.raises(ValueError, match="n_in"):
        eng.generate(0, 4, 1)
    with pytest.raises(ValueError, match="max_batch"):
        eng.generate(4, 4, 5)
    with pytest.raises(ValueError, match="checkpoints"):
        eng.generate(4, 4, 1, checkpoints=[5])
    with pytest.raises(ValueError, match="unknown model"):
        TorchEngine("No-Such-Model", device="cpu")


def test_a_family_it_does_not_run_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "_FAMILIES", dict(A._FAMILIES))
    A.register_family("toy", A._FAMILIES["llama"])
    path = tmp_path / "toy.json"
    path.write_text(tiny_config(tmp_path).read_text().replace('"model_type": "llama"', '"model_type": "toy"'))
    assert A.Architecture.from_hf_config(path).model_type == "toy"
    with pytest.raises(EngineUnavailable, match="does not run the 'toy' family.*--engine trtllm or --engine vllm"):
        TorchEngine(path, device="cpu")


def test_bidirectional_attention_is_refused(tmp_path):
    path = tiny_family_config(tmp_path, "gemma")
    path.write_text(json.dumps(dict(json.loads(path.read_text()), use_bidirectional_attention=True)))
    with pytest.raises(ValueError, match="use_bidirectional_attention.*causal decoders only"):
        TorchEngine(path, device="cpu")


def test_learned_positions_are_extended_for_dummy_weights(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="energybook.measure.torch_engine"):
        eng = TorchEngine(tiny_config(tmp_path, "OPT-1.3B"), device="cpu", min_positions=4096)
    assert eng.settings["max_position_embeddings_extended"] == [2048, 4096]
    assert eng.config.max_position_embeddings == 4096 and eng.settings["max_positions"] == 4096
    assert "extended 2048 -> 4096" in caplog.text


def test_lengths_beyond_the_positions_are_refused_before_measuring(tmp_path):
    """OPT with n_in 8200 raised an IndexError deep inside the position embedding."""
    opt = TorchEngine(tiny_config(tmp_path, "OPT-1.3B"), device="cpu", min_positions=4096)
    opt.check_lengths(4000, 96)
    with pytest.raises(ValueError, match=r"tiny-OPT-1.3B: n_in \+ n_out = 4000 \+ 97 = 4097 tokens exceeds the 4096 "
                                         r"positions.*extended from 2048 to 4096"):
        opt.check_lengths(4000, 97)
    with pytest.raises(ValueError, match="8200 \\+ 1 = 8201 tokens exceeds the 4096 positions"):
        opt.generate(8200, 1, 1)
    llama = TorchEngine(tiny_config(tmp_path), device="cpu", max_batch=2)
    llama.check_lengths(2000, 60)  # dummy weights, rotary positions: served beyond the declared 2048, and said
    assert llama.settings["positions_beyond_declared"] == [2048, 2060]
    assert llama.generate(2000, 60, 1).n_out == 60
    folder = tmp_path / "llama-ckpt"
    llama.model.save_pretrained(folder)
    trained = TorchEngine(folder, device="cpu")  # real weights: the configuration's own limit
    with pytest.raises(ValueError, match="llama-ckpt.*2049 tokens exceeds the 2048 positions.*"
                                         "its max_position_embeddings"):
        trained.check_lengths(2000, 49)
    with pytest.raises(ValueError, match="n_out must be a positive integer"):
        llama.check_lengths(64, 0)


def test_loads_a_local_checkpoint_directory(tmp_path):
    """Users with weights pass a checkpoint folder: its weights are loaded, not random ones."""
    dummy = TorchEngine(tiny_config(tmp_path), device="cpu", max_batch=4, seed=3)
    folder = tmp_path / "ckpt"
    dummy.model.save_pretrained(folder)
    loaded = TorchEngine(folder, device="cpu", max_batch=4, seed=3)
    assert loaded.weights == "checkpoint" and dummy.weights == "dummy"
    for name, p in dummy.model.state_dict().items():
        assert torch.equal(p, loaded.model.state_dict()[name]), name
    dummy.generate(5, 6, 2, return_tokens=True)
    loaded.generate(5, 6, 2, return_tokens=True)
    assert torch.equal(dummy.last_tokens, loaded.last_tokens)
    other = TorchEngine(tiny_config(tmp_path), device="cpu", max_batch=4, seed=4)
    assert not torch.equal(other.model.lm_head.weight, loaded.model.lm_head.weight)


def test_loads_a_falcon_checkpoint_directory(tmp_path):
    """Falcon's attention is energybook's for a checkpoint too: through the AttentionInterface, or through the
    subclass on transformers releases whose Falcon does not call it."""
    dummy = TorchEngine(tiny_family_config(tmp_path, "falcon"), device="cpu", max_batch=4)
    folder = tmp_path / "falcon-ckpt"
    dummy.model.save_pretrained(folder)
    loaded = TorchEngine(folder, device="cpu", max_batch=4)
    expected = "FalconAttention" if TE.falcon_dispatches_attention() else "EnergybookFalconAttention"
    assert type(loaded.model.transformer.h[0].self_attention).__name__ == expected
    assert loaded.model.config._attn_implementation == TE.ATTN_NAME
    dummy.generate(5, 6, 2, return_tokens=True)
    loaded.generate(5, 6, 2, return_tokens=True)
    assert torch.equal(dummy.last_tokens, loaded.last_tokens)
