"""A family added by one record (:data:`energybook.model.families.OLMO2`): once registered, both engines run OLMo 2,
and the lean engine's greedy tokens, logits and FLOPs equal transformers' and ``complexity``'s on a tiny model."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from energybook.measure.engines import EngineUnavailable  # noqa: E402
from energybook.measure.lean import LeanEngine  # noqa: E402
from energybook.measure.torch_engine import TorchEngine  # noqa: E402
from energybook.model import architecture as A  # noqa: E402
from energybook.model import complexity as C  # noqa: E402
from energybook.model.families import OLMO2  # noqa: E402

from .test_lean_engine import BATCH, N_IN, N_OUT, TINY_BUCKETS, _count, _hf_generate, _prompts  # noqa: E402
from .tiny import _SMALL  # noqa: E402

#: The tiny layout: GQA, untied embeddings; q/k norms over the whole projections, norms after each branch only.
TINY_OLMO2 = dict(_SMALL, intermediate_size=128, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                  eos_token_id=1)


@pytest.fixture
def registered(monkeypatch):
    """OLMo 2 registered for one test (the registries restored after it)."""
    monkeypatch.setattr(A, "_FAMILIES", dict(A._FAMILIES))
    monkeypatch.setattr(A, "_RECORDS", dict(A._RECORDS))
    assert A.register_family("olmo2", OLMO2) is OLMO2
    assert A.family("olmo2") is OLMO2


def _reference():
    """A transformers OLMo 2 with random weights of std 0.1 and norms near 1, EOS off."""
    cfg = transformers.AutoConfig.for_model("olmo2", **TINY_OLMO2)
    ref = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if p.ndim == 1 and "norm" in name else 0.1 * noise)
    ref.generation_config.eos_token_id = None
    return ref


def test_unregistered_olmo2_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown model_type 'olmo2'"):
        A.Architecture.from_hf_config(dict(TINY_OLMO2, model_type="olmo2"))


@pytest.mark.parametrize("way", ["exact", "masked", "split"])
def test_lean_greedy_tokens_and_logits_equal_transformers(registered, way):
    ref = _reference()
    eng = LeanEngine.from_hf_model(ref, device="cpu", max_batch=8, **TINY_BUCKETS)
    assert eng.config.qk_norm and not eng.config.pre_norms and eng.config.sandwich
    eng.decode_attention = "masked" if way == "exact" else way
    eng.generate(N_IN, N_OUT, BATCH, return_tokens=True, static=way != "exact")
    assert torch.equal(eng.last_tokens, _hf_generate(ref, _prompts(eng), N_OUT)), way
    assert eng.last_tokens.unique().numel() > 1
    prompts = _prompts(eng)
    ours = eng.greedy_logits(prompts, N_OUT, static=way != "exact")
    tokens = torch.stack([x.argmax(-1) for x in ours], dim=1)
    with torch.no_grad():
        theirs = ref(torch.cat([prompts, tokens], dim=1)).logits[:, N_IN - 1:N_IN - 1 + N_OUT]
    for i, logits in enumerate(ours):
        torch.testing.assert_close(logits, theirs[:, i], rtol=1e-4, atol=1e-4, msg=f"olmo2 {way}, output {i}")


def test_lean_flops_and_dummy_weights(registered):
    eng = LeanEngine(dict(TINY_OLMO2, model_type="olmo2", torch_dtype="float32"), device="cpu", max_batch=4,
                     **TINY_BUCKETS)
    layer = eng.layers[0]
    assert layer.attn_norm is None and layer.ffn_norm is None
    assert layer.q_norm.shape == (eng.arch.q_width,) and layer.k_norm.shape == (eng.arch.kv_width,)
    assert eng.generate(5, 6, 2).tokens_out == 12
    a, n_in, batch = eng.arch.replace(dtype="float32"), 9, 2
    eng.prepare(n_in, 4, batch)
    w = eng._wave
    prompts = torch.randint(0, eng.vocab, (batch, n_in))
    assert _count(lambda: eng._prefill(prompts, w, slice(0, batch))) == C.prefill(a, n_in, batch).flops
    w.pos.fill_(n_in)
    assert _count(lambda: eng._decode_step(w, "exact", 0, n_in + 1)) == C.decode_step(a, n_in, batch).flops


def test_the_hf_engine_runs_it_once_registered(tmp_path, registered):
    import json

    path = tmp_path / "olmo2.json"
    path.write_text(json.dumps(dict(TINY_OLMO2, model_type="olmo2", torch_dtype="float32")))
    eng = TorchEngine(path, device="cpu", max_batch=4)
    assert eng.generate(5, 6, 2).tokens_out == 12
    A.register_family("olmo2", lambda cfg: OLMO2.parse(cfg))  # a bare parser: counted, run by neither engine
    with pytest.raises(EngineUnavailable, match="does not run the 'olmo2' family"):
        TorchEngine(path, device="cpu", max_batch=4)
    with pytest.raises(EngineUnavailable, match="does not run the 'olmo2' family"):
        LeanEngine(json.loads(path.read_text()), device="cpu")
