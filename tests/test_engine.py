"""The torch engine on tiny random models (CPU): exact token counts, same tokens as transformers'
own greedy generate, clear errors for bad parameters."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from energybook.measure.torch_engine import TorchEngine  # noqa: E402

from .tiny import tiny_config  # noqa: E402


@pytest.fixture(scope="module", params=["Llama-3.2-1B", "OPT-1.3B", "Qwen2-1.5B"])
def engine(request, tmp_path_factory):
    return TorchEngine(tiny_config(tmp_path_factory.mktemp("cfg"), request.param), device="cpu", max_batch=8)


def test_generates_exactly_the_tokens_asked_for(engine):
    wave = engine.generate(n_in=5, n_out=9, batch=3, checkpoints=[1, 4, 9], return_tokens=True)
    assert engine.last_tokens.shape == (3, 9)
    assert int((engine.last_tokens < 0).sum()) == 0
    assert wave.tokens_out == 27 and wave.tokens_in == 15
    assert sorted(wave.times.checkpoints) == [1, 4, 9]
    assert wave.times.start <= wave.times.prefill_end <= wave.times.checkpoints[4] <= wave.times.end


def test_matches_transformers_greedy_generate(engine):
    engine.generate(n_in=6, n_out=7, batch=2, return_tokens=True)
    ours = engine.last_tokens
    gen = torch.Generator().manual_seed(engine.seed + 7919 * 6 + 2)
    prompts = torch.randint(0, engine.vocab, (2, 6), generator=gen)
    engine.model.config._attn_implementation = "sdpa"
    try:
        ref = engine.model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=7,
                                    min_new_tokens=7, do_sample=False, pad_token_id=0)[:, 6:]
    finally:
        engine.model.config._attn_implementation = "energybook_sdpa"
    assert torch.equal(ours, ref)


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


def test_learned_positions_are_extended_for_dummy_weights(tmp_path):
    eng = TorchEngine(tiny_config(tmp_path, "OPT-1.3B"), device="cpu", min_positions=4096)
    assert eng.settings["max_position_embeddings_extended"] == [2048, 4096]
    assert eng.config.max_position_embeddings == 4096


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
