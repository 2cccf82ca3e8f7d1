"""The exact FLOP counts against torch.utils.flop_counter.FlopCounterMode on tiny random models.

One tiny model per registered family (the study's llama, granite, qwen2, gemma2, opt, falcon, and
mistral, phi3, gemma, starcoder2, gpt_neox), plus variants (``family:variant``) where a family has
two layouts, built with transformers on the CPU. Prefill and one decode step must agree within 1%,
and the parameter count must be the model's own.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from energybook.model import complexity as C  # noqa: E402
from energybook.model.architecture import Architecture  # noqa: E402

BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=320, max_position_embeddings=256)
TINY = {
    "llama": dict(BASE, intermediate_size=160, num_key_value_heads=2, head_dim=32, attention_bias=True),
    "granite": dict(BASE, intermediate_size=160, num_key_value_heads=2),
    "qwen2": dict(BASE, intermediate_size=176, num_key_value_heads=1, tie_word_embeddings=False),
    "gemma2": dict(BASE, intermediate_size=128, num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=24),
    "opt": dict(BASE, ffn_dim=256, word_embed_proj_dim=64),
    "falcon": dict(BASE, alibi=True, bias=True, multi_query=False, new_decoder_architecture=False,
                   parallel_attn=False),
    "falcon:new": dict(BASE, new_decoder_architecture=True, num_kv_heads=2, ffn_hidden_size=96),
    "mistral": dict(BASE, intermediate_size=160, num_key_value_heads=2, head_dim=24),
    # fused qkv_proj and gate_up_proj: the same products as separate matrices
    "phi3": dict(BASE, intermediate_size=160, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1),
    "gemma": dict(BASE, intermediate_size=128, num_key_value_heads=1, head_dim=24),
    "starcoder2": dict(BASE, intermediate_size=192, num_key_value_heads=2, bos_token_id=1, eos_token_id=1),
    "gpt_neox": dict(BASE, intermediate_size=224, rotary_pct=0.25),
}
N_IN = 37


def _tiny(key):
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(key.split(":")[0], **TINY[key])
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    arch = Architecture.from_hf_config(cfg.to_dict(), name=key).replace(dtype="float32")
    return model, arch, cfg


def _count(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY))
def test_exact_counts_match_flop_counter(family):
    """(Under the old code the five newer families raised ``unknown model_type``.)"""
    model, arch, cfg = _tiny(family)
    assert arch.num_params == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, N_IN))
    out, prefill = _count(lambda: model(ids, use_cache=True, logits_to_keep=1))
    nxt = out.logits[:, -1:].argmax(-1)
    _, step = _count(lambda: model(nxt, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1))
    err_prefill = C.prefill(arch, N_IN).flops / prefill - 1
    err_step = C.decode_step(arch, N_IN).flops / step - 1
    print(f"{family}: prefill error {err_prefill:+.4%}, decode-step error {err_step:+.4%}")
    assert abs(err_prefill) < 0.01
    assert abs(err_step) < 0.01


def test_every_registered_family_is_checked():
    from energybook.model.architecture import families

    assert set(families()) <= {k.split(":")[0] for k in TINY}
