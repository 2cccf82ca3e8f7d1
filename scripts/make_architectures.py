"""Write energybook/resources/architectures/<name>.json: Hugging Face configurations of the study's 13 models.

Regenerate with ``python scripts/make_architectures.py``. The values are transcribed from
``shared/reference/architectures.csv`` (see energybook/resources/architectures/README.md for the sources).
"""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "energybook" / "resources" / "architectures"


def llama(hidden, inter, layers, heads, kv, head_dim, vocab, max_pos, tied, rope_theta,
          rope_scaling=None, bias=False, dtype="bfloat16"):
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
        "vocab_size": vocab, "max_position_embeddings": max_pos, "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "rope_theta": rope_theta, "tie_word_embeddings": tied,
        "attention_bias": bias, "mlp_bias": bias, "torch_dtype": dtype,
    }
    if rope_scaling:
        cfg["rope_scaling"] = rope_scaling
    return cfg


def llama3_scaling(factor):
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def opt(hidden, ffn, layers, heads):
    return {
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": hidden,
        "ffn_dim": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "vocab_size": 50272, "max_position_embeddings": 2048, "activation_function": "relu",
        "do_layer_norm_before": True, "word_embed_proj_dim": hidden, "enable_bias": True,
        "tie_word_embeddings": True, "torch_dtype": "float16",
    }


def qwen2(hidden, inter, layers, heads, kv, vocab, tied):
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 131072,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": tied, "use_sliding_window": False, "sliding_window": 131072,
        "max_window_layers": layers, "torch_dtype": "bfloat16",
    }


def gemma2(hidden, inter, layers, heads, kv):
    return {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": 256, "vocab_size": 256000,
        "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "sliding_window": 4096, "tie_word_embeddings": True, "torch_dtype": "float32",
    }


FALCON_RW_7B = {
    "architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4096,
    "num_hidden_layers": 36, "num_attention_heads": 64, "num_kv_heads": 64, "vocab_size": 65024,
    "alibi": True, "bias": True, "multi_query": False, "new_decoder_architecture": False,
    "parallel_attn": False, "layer_norm_epsilon": 1e-5, "max_position_embeddings": 2048,
    "ffn_hidden_size": 16384, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
}

MODELS = {
    "Llama-3.2-1B": ("meta-llama/Llama-3.2-1B", llama(2048, 8192, 16, 32, 8, 64, 128256, 131072, True, 500000.0, llama3_scaling(32.0))),
    "Llama-3.2-3B": ("meta-llama/Llama-3.2-3B", llama(3072, 8192, 28, 24, 8, 128, 128256, 131072, True, 500000.0, llama3_scaling(32.0))),
    "Llama-3.1-8B": ("meta-llama/Llama-3.1-8B", llama(4096, 14336, 32, 32, 8, 128, 128256, 131072, False, 500000.0, llama3_scaling(8.0))),
    "OPT-1.3B": ("facebook/opt-1.3b", opt(2048, 8192, 24, 32)),
    "OPT-2.7B": ("facebook/opt-2.7b", opt(2560, 10240, 32, 32)),
    "OPT-6.7B": ("facebook/opt-6.7b", opt(4096, 16384, 32, 32)),
    "Qwen2-1.5B": ("Qwen/Qwen2-1.5B", qwen2(1536, 8960, 28, 12, 2, 151936, True)),
    "Qwen2-7B": ("Qwen/Qwen2-7B", qwen2(3584, 18944, 28, 28, 4, 152064, False)),
    "Gemma-2-2B": ("google/gemma-2-2b", gemma2(2304, 9216, 26, 8, 4)),
    "Gemma-2-9B": ("google/gemma-2-9b", gemma2(3584, 14336, 42, 16, 8)),
    "Granite-3B-Code-Base": ("ibm-granite/granite-3b-code-base-2k", llama(2560, 10240, 32, 32, 32, 80, 49152, 2048, True, 10000.0, bias=True)),
    "Granite-8B-Code-Base": ("ibm-granite/granite-8b-code-base-4k", llama(4096, 14336, 36, 32, 8, 128, 49152, 4096, True, 10000.0, bias=True)),
    "Falcon-RW-7B": ("tiiuae/falcon-rw-7b", FALCON_RW_7B),
}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (hf_id, cfg) in MODELS.items():
        cfg = {"_name_or_path": hf_id, **cfg}
        (OUT / f"{name}.json").write_text(json.dumps(cfg, indent=2) + "\n")
        print("wrote", OUT / f"{name}.json")
