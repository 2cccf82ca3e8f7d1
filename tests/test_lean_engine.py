"""The lean engine on tiny float32 models (CPU): the same greedy tokens and logits as transformers from the same
weights for every family it runs, through the eager path and through the graphs' bucketed steps; FLOPs equal to
``complexity``'s exact counts; refusals by name; the runner drives it unchanged; the GPU benchmark's CPU half."""

import csv
import functools
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from energybook.measure import engines as EN  # noqa: E402
from energybook.measure import lean as LE  # noqa: E402
from energybook.measure.engines import EngineUnavailable, WaveEngine  # noqa: E402
from energybook.measure.lean import LeanEngine  # noqa: E402
from energybook.measure.lean import config as LC  # noqa: E402
from energybook.model import complexity as C  # noqa: E402

from .tiny import _SMALL, TINY_FAMILIES, tiny_config, tiny_family_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Buckets of 4 tokens below 64 keys, then 8: the tests' requests cross several.
TINY_BUCKETS = dict(bucket_min=4, bucket_max=8)
N_IN, N_OUT, BATCH = 6, 14, 2  # fed positions 6..18: buckets [4, 8), [8, 12), [12, 16), [16, 20)


def _config(tmp_path, key: str):
    """The transformers configuration of one tiny model per supported layout."""
    shipped = {"llama": "Llama-3.2-1B", "llama:bias": "Granite-3B-Code-Base", "qwen2": "Qwen2-1.5B",
               "opt": "OPT-1.3B"}
    if key in shipped:  # llama3 rotary scaling and tied embeddings; all biases (Granite Code's llama); q/k/v biases
        cfg = json.loads(tiny_config(tmp_path, shipped[key]).read_text())
    elif key in TINY_FAMILIES and key not in ("mistral", "granite"):  # (their own tiny configurations below)
        # falcon: Falcon-RW (ALiBi, multi-head, LayerNorms with biases, GELU); falcon:rotary, falcon:new,
        # falcon:new1, falcon:rotary-mha: its other layouts; gpt_neox (parallel residual, a quarter of each head
        # rotary), gpt_neox:sequential; starcoder2 (a window of 4 tokens), starcoder2:full; Gemma 2: windows of 4
        # tokens, a strong soft-cap
        cfg = json.loads(tiny_family_config(tmp_path, key).read_text())
    elif key == "phi3":  # fused qkv_proj and gate_up_proj in transformers' weights, a window of 4 tokens
        cfg = json.loads(tiny_family_config(tmp_path, "phi3").read_text())
    elif key == "mistral:window":  # a window of 4 tokens on every layer
        cfg = json.loads(tiny_family_config(tmp_path, "mistral").read_text())
    elif key == "mistral":
        cfg = dict(_SMALL, model_type="mistral", intermediate_size=128, num_key_value_heads=2, sliding_window=None,
                   tie_word_embeddings=False)
    else:  # granite with every multiplier away from 1
        cfg = dict(_SMALL, model_type="granite", intermediate_size=128, num_key_value_heads=2,
                   embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=4.0)
    from energybook.measure.torch_engine import transformers_config

    return transformers_config(cfg)


def _reference(tmp_path, key: str):
    """A transformers model with random weights of std 0.1 and norms near 1 (so that attention shapes the greedy
    tokens and every weight, norms included, is checked), EOS off."""
    cfg = _config(tmp_path, key)
    attn = "eager" if key == "gemma2" else "sdpa"  # transformers' SDPA path has no soft-capping
    ref = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            norm = "norm" in name or ".ln_" in name or name.startswith("ln_")  # Falcon's ln_attn, ln_mlp, ln_f
            p.copy_(1 + 0.1 * noise if p.ndim == 1 and norm and name.endswith("weight") else 0.1 * noise)
    ref.generation_config.eos_token_id = None  # the engine ignores EOS: generate must neither stop nor ban it
    return ref


@pytest.fixture(scope="module", params=["llama", "llama:bias", "qwen2", "mistral", "granite", "opt", "falcon", "gemma",
                                        "gemma2", "mistral:window", "qwen2:window", "falcon:rotary", "falcon:new",
                                        "falcon:new1", "falcon:rotary-mha", "gpt_neox", "gpt_neox:sequential",
                                        "starcoder2", "starcoder2:full", "phi3"])
def pair(request, tmp_path_factory):
    """(transformers model, lean engine re-packed from its weights)."""
    ref = _reference(tmp_path_factory.mktemp("cfg"), request.param)
    eng = LeanEngine.from_hf_model(ref, device="cpu", max_batch=8, **TINY_BUCKETS)
    eng.key = request.param
    return ref, eng


def _prompts(eng, n_in=N_IN, batch=BATCH):
    gen = torch.Generator().manual_seed(eng.seed + 7919 * n_in + batch)
    return torch.randint(0, eng.vocab, (batch, n_in), generator=gen)


def _hf_generate(ref, prompts, n_out):
    n_in = prompts.shape[1]
    return ref.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n_out, do_sample=False,
                        pad_token_id=0)[:, n_in:]


def test_it_is_a_wave_engine_and_registered(pair):
    _, eng = pair
    assert isinstance(eng, WaveEngine)
    assert EN.get_engine("lean").load() is LeanEngine and EN.get_engine("lean").kind == "wave"
    from energybook.measure.torch_engine import TorchEngine

    assert EN.get_engine("hf").load() is TorchEngine and EN.get_engine("torch").load() is TorchEngine


@pytest.mark.parametrize("way", ["exact", "masked", "split"])
def test_same_greedy_tokens_as_transformers(pair, way):
    """Eager exact-length decode, and the graphs' bucketed steps with each way of attending, cross 4 buckets."""
    ref, eng = pair
    if way not in ("exact", *eng.paths_available):
        pytest.skip(f"{way} is not a way of attending for {eng.key} (flash's prefix kernel: no ALiBi, no soft-cap)")
    eng.decode_attention = "masked" if way == "exact" else way
    eng.release_wave()  # the ways are chosen per bucket when a wave state is made
    eng.generate(N_IN, N_OUT, BATCH, return_tokens=True, static=way != "exact")
    assert len(eng._buckets(N_IN, N_OUT)) == 4
    assert torch.equal(eng.last_tokens, _hf_generate(ref, _prompts(eng), N_OUT)), (eng.key, way)
    assert eng.last_tokens.unique().numel() > 1  # attention shapes the tokens


class _StandInGraph:
    """A CUDA graph's stand-in on the CPU: ``replay`` runs the captured body eagerly."""

    def __init__(self, body):
        self.body, self.replays = body, 0

    def replay(self):
        self.replays += 1
        self.body()


def test_graph_path_with_stand_in_graphs(pair, monkeypatch):
    """The graph path's bookkeeping on the CPU: one graph per bucket, warm-ups and the capture-time replay writing
    into the cache before the wave, the device position, graphs reused by the next waves of the batch."""
    ref, eng = pair
    graphs = []

    def graph(body, pool, warmups, reset):
        for _ in range(warmups):
            reset()
            body()
        reset()
        g = _StandInGraph(body)
        g.replay()
        graphs.append(g)
        return g

    monkeypatch.setattr(eng, "_graph", graph)
    monkeypatch.setattr(eng, "_graphs_here", True)
    eng.decode_attention = "split" if "split" in eng.paths_available else "masked"
    eng.release_wave()
    try:
        wave = eng.generate(N_IN, N_OUT, BATCH, return_tokens=True)
        assert wave.cuda_graphs and len(graphs) == 4
        assert sum(g.replays for g in graphs) == len(graphs) + N_OUT - 1  # one at capture, then one per step
        assert torch.equal(eng.last_tokens, _hf_generate(ref, _prompts(eng), N_OUT))
        eng.generate(N_IN + 4, N_OUT - 4, BATCH, return_tokens=True)  # the same cache: no new graph
        assert len(graphs) == 4
        assert torch.equal(eng.last_tokens, _hf_generate(ref, _prompts(eng, N_IN + 4), N_OUT - 4))
        eng.require_prepared = True
        with pytest.raises(RuntimeError, match="not prepared"):
            eng.generate(N_IN, N_OUT + 8, BATCH)  # a longer cache
    finally:
        eng.require_prepared = False
        eng.release_wave()


@pytest.mark.parametrize("static", [False, True])
def test_prefill_and_decode_logits_match_transformers(pair, static):
    ref, eng = pair
    eng.decode_attention = "split" if "split" in eng.paths_available else "masked"
    eng.release_wave()
    prompts = _prompts(eng)
    ours = eng.greedy_logits(prompts, N_OUT, static=static)
    tokens = torch.stack([x.argmax(-1) for x in ours], dim=1)
    with torch.no_grad():
        theirs = ref(torch.cat([prompts, tokens], dim=1)).logits[:, N_IN - 1:N_IN - 1 + N_OUT]
    for i, logits in enumerate(ours):  # i = 0: the prefill's last position; then decode steps
        torch.testing.assert_close(logits, theirs[:, i], rtol=1e-4, atol=1e-4, msg=f"{eng.key}, output {i}")


def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs):
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (FlopCounterMode has no formula for it)."""
    b, heads, s_q, d = query
    return 2 * b * heads * s_q * key[2] * d + 2 * b * heads * s_q * key[2] * value[3]


def _count(fn) -> int:
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def test_flops_equal_the_exact_counts(pair):
    """Prefill and one eager decode step equal ``complexity`` exactly (a sliding window caps the keys a decode step
    reads); a bucketed step pays exactly its padded keys."""
    _, eng = pair
    a = eng.arch.replace(dtype="float32")
    n_in, batch = 37, 3
    eng.decode_attention = "masked"
    eng.release_wave()
    eng.prepare(n_in, 9, batch)
    w = eng._wave
    short = min(n_in, a.sliding_window or n_in)  # the CPU prefill of a windowed model computes every score
    prompts = torch.randint(0, eng.vocab, (batch, short))
    assert _count(lambda: eng._prefill(prompts, w, slice(0, batch))) == C.prefill(a, short, batch).flops
    w.pos.fill_(n_in)
    assert _count(lambda: eng._decode_step(w, "exact", 0, n_in + 1)) == C.decode_step(a, n_in, batch).flops
    dense = a.replace(sliding_window=None, sliding_layers=0)  # masked and split read the bucket's whole prefix
    ways = [p for p in ("masked", "split") if p in eng.paths_available and (p in LE.WINDOWED or not eng.windows)]
    for way in ways:  # position 37: bucket [36, 40)
        w.pos.fill_(n_in)
        assert _count(lambda way=way: eng._decode_step(w, way, 36, 40)) == C.decode_step(dense, 39, batch).flops
    if eng.windows:
        with pytest.raises(ValueError, match="does not apply a sliding window"):
            eng._attention_context(w, "split", 36, 40, a.sliding_window)


@pytest.mark.parametrize("window", [None, 8])
def test_flex_prefill_equals_explicit_attention(tmp_path, window):
    """The CUDA prefill of soft-capped or windowed models (FlexAttention: the cap as score_mod, causal and window as
    block mask) against the CPU's explicit products, through FlexAttention's reference implementation on the CPU."""
    import warnings

    eng = LeanEngine(tiny_family_config(tmp_path, "gemma2"), device="cpu")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, heads, 37, 16, generator=g) for heads in (4, 2, 2))
    explicit = eng._prefill_attention(q, k, v, window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        flex = eng._flex_prefill(q, k, v, window)
    torch.testing.assert_close(flex, explicit, rtol=1e-5, atol=1e-5)
    assert (37, window) in eng._block_masks


def test_bucket_edges_and_cache_length():
    assert LE.bucket_edges(100)[:3] == [0, 32, 64] and LE.bucket_edges(100)[-1] == 128
    edges = LE.bucket_edges(8192)
    widths = {b - a for a, b in zip(edges, edges[1:])}
    assert widths == {32, 64, 128, 256} and edges[-1] == 8192
    assert all((b - a) * 16 <= max(a, 512) for a, b in zip(edges, edges[1:]))  # padding at most 1/16 of the keys
    assert LE.bucket_edges(1 << 14, 32, 256)[-1] == 1 << 14
    with pytest.raises(ValueError, match="bucket_max"):
        LE.bucket_edges(10, 64, 32)


def test_engine_from_a_configuration_runs_the_runner_unchanged(tmp_path):
    """A tiny sweep through ``run_sweep`` with the simulated meter: rows, counts and the settings in the sidecar."""
    from energybook.measure.meter import SimulatedMeter
    from energybook.measure.protocol import SweepConfig
    from energybook.measure.runner import run_sweep

    eng = LeanEngine(tiny_config(tmp_path), device="cpu", max_batch=2, **TINY_BUCKETS)
    assert eng.weights == "dummy" and eng.settings["engine"] == "lean"
    config = SweepConfig(n_in=[8], n_out=[4, 16], n_req=3, max_batch=2, engine="lean", min_window_s=0.0,
                         cooldown_s=0.0, warmup_steps=2)
    res = run_sweep("tiny", config, engine=eng, device="cpu", allow_test_data=True, meter=SimulatedMeter(),
                    workspace=tmp_path, output=tmp_path / "grid.csv", progress=False)
    assert res.measured == 2 and res.complete
    with open(res.path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["n_out"]), int(r["tokens_out"]), r["engine"]) for r in rows] == [(4, 12, "lean"), (16, 48, "lean")]
    assert all(int(r["batch"]) == 2 and int(r["waves"]) == 2 for r in rows)
    sidecar = json.loads(res.path.with_suffix(".json").read_text())
    assert "lean" in json.dumps(sidecar) and "graph_buckets" in json.dumps(sidecar)


def test_generate_prepares_before_its_start_clock(tmp_path, caplog):
    eng = LeanEngine(tiny_config(tmp_path), device="cpu", max_batch=4, **TINY_BUCKETS)
    calls = []

    def clock():
        calls.append(eng._wave is not None and eng._ready(5, 9, 2, False))
        return float(len(calls))

    with caplog.at_level(logging.INFO, logger="energybook.measure.lean.engine"):
        wave = eng.generate(5, 9, 2, checkpoints=[1, 9], clock=clock)
    assert all(calls) and "preparing" in caplog.text  # ready at every clock reading, start included
    assert wave.tokens_out == 18 and sorted(wave.times.checkpoints) == [1, 9]
    strict = LeanEngine(tiny_config(tmp_path), device="cpu", require_prepared=True)
    with pytest.raises(RuntimeError, match="not prepared"):
        strict.generate(5, 9, 2)
    prep = strict.prepare(5, 9, 2)
    assert prep.graphs_captured == 0 and set(prep.paths.values()) == {"masked"}  # no graphs on the CPU
    assert strict.generate(5, 9, 2).tokens_out == 18
    with pytest.raises(ValueError, match="checkpoints"):
        strict.generate(5, 9, 2, checkpoints=[10])
    with pytest.raises(ValueError, match="max_batch"):
        strict.generate(5, 9, 2000)


def test_other_families_are_refused_by_name(tmp_path, monkeypatch):
    """Every shipped family runs; one whose record has no compute spec is refused by name, pointing to --engine hf."""
    import dataclasses

    from energybook.model import architecture as A

    assert "phi3" in LC.FAMILIES
    record = A.family("phi3")
    monkeypatch.setitem(A._RECORDS, "phi3", dataclasses.replace(record, compute=None))
    assert "phi3" not in LC.families()
    with pytest.raises(EngineUnavailable, match="does not run the 'phi3' family.*no compute spec.*--engine hf"):
        LeanEngine(tiny_family_config(tmp_path, "phi3"), device="cpu")


def test_unsupported_features_are_refused(tmp_path):
    path = tiny_config(tmp_path)
    cfg = json.loads(path.read_text())
    for change, match in [(dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn'.*--engine hf"),
                          (dict(hidden_act="gelu"), "gated FFNs with silu.*--engine hf"),
                          (dict(partial_rotary_factor=0.5), "partial rotary.*--engine hf")]:
        path.write_text(json.dumps(dict(cfg, **change)))
        with pytest.raises(EngineUnavailable, match=match):
            LeanEngine(path, device="cpu")
    falcon = json.loads(tiny_family_config(tmp_path, "falcon").read_text())  # Falcon-RW: ALiBi, sequential, MHA
    new = json.loads(tiny_family_config(tmp_path, "falcon:new").read_text())
    neox = json.loads(tiny_family_config(tmp_path, "gpt_neox").read_text())
    starcoder = json.loads(tiny_family_config(tmp_path, "starcoder2").read_text())
    for base, change, match in [(falcon, dict(multi_query=True), "ALiBi and multi-query attention.*--engine hf"),
                                (falcon, dict(parallel_attn=True), "ALiBi and parallel attention.*--engine hf"),
                                (new, dict(alibi=True), "ALiBi and .*the new decoder architecture.*--engine hf"),
                                (new, dict(parallel_attn=False), "new decoder architecture without parallel"),
                                (dict(new, new_decoder_architecture=False), dict(num_ln_in_parallel_attn=2),
                                 "two parallel LayerNorms.*--engine hf"),
                                (new, dict(activation="relu"), "'relu'.*--engine hf"),
                                (new, dict(rope_parameters=dict(rope_theta=1e4, partial_rotary_factor=0.5)),
                                 "partial rotary.*GPT-NeoX only.*--engine hf"),
                                (neox, dict(hidden_act="gelu_fast"), "'gelu_fast'.*not gated.*--engine hf"),
                                (neox, dict(rope_parameters=dict(rope_theta=1e4, partial_rotary_factor=0.1)),
                                 "partial rotary.*0.1, 1 of 16.*even.*--engine hf"),
                                (neox, dict(rope_parameters=dict(rope_theta=1e4, rope_type="yarn", factor=2.0)),
                                 "'yarn'.*--engine hf"),
                                (starcoder, dict(hidden_act="gelu_new"), "'gelu_new'.*--engine hf"),
                                (starcoder, dict(rope_parameters=dict(rope_theta=1e4, partial_rotary_factor=0.5)),
                                 "partial rotary.*--engine hf")]:
        path.write_text(json.dumps(dict(base, **change)))
        with pytest.raises(EngineUnavailable, match=match):
            LeanEngine(path, device="cpu")
    opt = json.loads(tiny_config(tmp_path, "OPT-1.3B").read_text())
    for change, match in [(dict(do_layer_norm_before=False), "post-LayerNorm.*--engine hf"),
                          (dict(activation_function="gelu"), "'gelu'.*--engine hf")]:
        path.write_text(json.dumps(dict(opt, **change)))
        with pytest.raises(EngineUnavailable, match=match):
            LeanEngine(path, device="cpu")
    with pytest.raises(ValueError, match="decode_attention"):
        LeanEngine(tiny_config(tmp_path), device="cpu", decode_attention="paged")
    with pytest.raises(ValueError, match="unknown model"):
        LeanEngine("No-Such-Model", device="cpu")
    with pytest.raises(ValueError, match="small_batch"):
        LeanEngine(tiny_config(tmp_path), device="cpu", small_batch=-1)


def test_small_batches_get_their_own_compilation(tmp_path, monkeypatch):
    """Decode at batches up to ``small_batch`` runs blocks compiled in ``compile_mode_small``; larger batches, and
    every batch when that mode is None, run the ``compile_mode`` ones (torch.compile recorded, not run)."""
    import torch

    modes = []
    monkeypatch.setattr(torch, "compile", lambda f, **kw: modes.append(kw["mode"]) or functools.partial(f))
    eng = LeanEngine(tiny_config(tmp_path), device="cpu", compile=True, compile_prefill=False, small_batch=4)
    assert modes == ["default"] * 4 + ["max-autotune-no-cudagraphs"] * 3  # the split way's tail keeps the default
    assert eng._small(4) and not eng._small(5) and eng._fns[True][:3] != eng._fns[False][:3]
    assert eng._fns[True][3] is eng._fns[False][3]
    assert eng.settings["compile_mode_small"] == "max-autotune-no-cudagraphs at batches <= 4"
    modes.clear()
    eng = LeanEngine(tiny_config(tmp_path), device="cpu", compile=True, compile_prefill=False,
                     compile_mode_small=None)
    assert modes == ["default"] * 4 and eng._fns[True] is eng._fns[False]
    assert eng.settings["compile_mode_small"] is None


@pytest.mark.parametrize("key", ["falcon:rotary", "falcon:new", "falcon:new1", "gpt_neox", "starcoder2"])
def test_fused_and_parallel_layouts_run_with_dummy_weights(tmp_path, key):
    """Dummy weights in the engine's layout (fused q, k, v rows; Falcon's one LayerNorm held as both of a parallel
    block's norms) generate, and their FLOPs equal the exact counts."""
    eng = LeanEngine(tiny_family_config(tmp_path, key), device="cpu", max_batch=4, **TINY_BUCKETS)
    a = eng.arch
    assert eng.weights == "dummy" and eng.settings["config"]["parallel"] == (key != "starcoder2")
    layer = eng.layers[0]
    assert layer.wqkv.shape == (a.q_width + 2 * a.kv_width, a.hidden_size)
    assert (layer.ffn_norm is layer.attn_norm) == (a.norms_per_layer == 1) == (key in ("falcon:rotary", "falcon:new1"))
    assert eng.generate(5, 9, 2, return_tokens=True).tokens_out == 18
    w = eng._wave
    prompts = torch.randint(0, eng.vocab, (2, 4))
    assert _count(lambda: eng._prefill(prompts, w, slice(0, 2))) == C.prefill(a.replace(dtype="float32"), 4, 2).flops


def test_gpt_neox_rotary_settings_as_transformers_reads_them(tmp_path):
    """GPT-NeoX's config.json names (``rotary_pct``, ``rotary_emb_base``; transformers 5's default fraction 0.25)
    and transformers 5's ``rope_parameters`` give the rotary dimensions and base transformers uses."""
    from energybook.model.architecture import Architecture

    cfg = json.loads(tiny_family_config(tmp_path, "gpt_neox").read_text())
    cfg.pop("rope_parameters")
    arch = Architecture.from_hf_config(cfg, name="neox")
    for change in ({}, dict(rotary_pct=0.5, rotary_emb_base=500), dict(rotary_pct=1.0)):
        ours = LE.read_config(arch, dict(cfg, **change))
        given = {k: v for k, v in dict(cfg, **change).items() if k not in ("model_type", "torch_dtype", "dtype")}
        params = transformers.AutoConfig.for_model("gpt_neox", **given).rope_parameters
        rotary = int(arch.head_dim * params["partial_rotary_factor"])
        assert (ours.rotary_dim or arch.head_dim, ours.rope_theta) == (rotary, params["rope_theta"]), change
        again = LE.read_config(arch, dict(cfg, rope_parameters=params))  # as transformers 5's to_dict writes it
        assert (again.rotary_dim, again.rope_theta) == (ours.rotary_dim, ours.rope_theta)
    assert LE.read_config(arch, dict(cfg, rotary_pct=0.5, use_parallel_residual=False)).parallel is False


def test_lengths_beyond_positions_are_refused_like_the_hf_engine(tmp_path, pair, caplog):
    _, eng = pair
    assert eng.weights == "hf_model"
    eng.check_lengths(1024, 1024)
    with pytest.raises(ValueError, match="exceeds the 2048 (learned )?positions"):
        eng.check_lengths(2048, 1)
    dummy = LeanEngine(tiny_config(tmp_path), device="cpu")
    with caplog.at_level(logging.WARNING):
        dummy.check_lengths(2048, 64)
    assert dummy.settings["positions_beyond_declared"] == [2048, 2112] and "dummy weights" in caplog.text
    with pytest.raises(ValueError, match="positive integer"):
        dummy.check_lengths(0, 4)
    opt = LeanEngine(tiny_config(tmp_path, "OPT-1.3B"), device="cpu")  # dummy learned positions: the grid's 8192
    opt.check_lengths(4096, 4096)
    with pytest.raises(ValueError, match="learned positions"):
        opt.check_lengths(4096, 4097)


def test_sliding_windows_are_applied_per_layer(tmp_path):
    """Which layers slide (Gemma 2's even layers, Qwen2's top layers, Mistral's all, ``layer_types`` first), and the
    ways chosen where a window binds: never ``split`` or ``varlen``, whose flash kernels take no window."""
    def windows(key, **changes):
        cfg = dict(json.loads(tiny_family_config(tmp_path, key).read_text()), **changes)
        if not changes:
            return LeanEngine(cfg, device="cpu").windows
        from energybook.model.architecture import Architecture

        return LE.layer_windows(Architecture.from_hf_config(cfg, name=key), cfg)

    assert windows("gemma2") == (4, None)
    assert windows("mistral") == (4, 4)
    assert windows("qwen2:window") == (None, 4)  # max_window_layers 1: layer 1 on
    assert windows("gemma2", layer_types=["full_attention", "sliding_attention"]) == (None, 4)
    assert LeanEngine(tiny_config(tmp_path), device="cpu").windows == ()
    eng = LeanEngine(tiny_family_config(tmp_path, "mistral"), device="cpu", decode_attention="split", **TINY_BUCKETS)
    eng.check_lengths(3000, 3000)  # no refusal: the window is applied
    w = eng._state(2, 16)
    assert eng._path(0, 4, w, tune=False) == "masked" and eng._path(4, 8, w, tune=False) == "masked"
    assert eng._binding(4) == {None} and eng._binding(8) == {4}
    plain = LeanEngine(tiny_family_config(tmp_path, "qwen2"), device="cpu", decode_attention="split", **TINY_BUCKETS)
    assert plain._path(4, 8, plain._state(2, 16), tune=False) == "split"


@pytest.mark.parametrize("key", ["qwen2", "gpt_neox", "falcon:new1"])
def test_checkpoint_folder_loads_real_weights(tmp_path, key):
    ref = _reference(tmp_path, key)
    ref.save_pretrained(tmp_path / "ckpt")
    loaded = LeanEngine(tmp_path / "ckpt", device="cpu", **TINY_BUCKETS)
    assert loaded.weights == "checkpoint" and loaded.settings["weights"] == "checkpoint"
    loaded.generate(N_IN, N_OUT, BATCH, return_tokens=True)
    assert torch.equal(loaded.last_tokens, _hf_generate(ref, _prompts(loaded), N_OUT))


def test_compiled_decode_smoke(tmp_path):
    """``compile=True`` on the CPU (inductor needs a C compiler): the same tokens as the eager engine."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler")
    eager = LeanEngine(tiny_config(tmp_path), device="cpu", decode_attention="split", **TINY_BUCKETS)
    eager.generate(5, 6, 2, return_tokens=True, static=True)
    try:
        compiled = LeanEngine(tiny_config(tmp_path), device="cpu", compile=True, compile_mode="default",
                              decode_attention="split", **TINY_BUCKETS)
        compiled.generate(5, 6, 2, return_tokens=True, static=True)
    except Exception as exc:  # noqa: BLE001 - inductor unavailable here
        pytest.skip(f"torch.compile unavailable: {exc}")
    assert compiled.settings["compile"] and torch.equal(compiled.last_tokens, eager.last_tokens)


# ----- the GPU benchmark's CPU half ------------------------------------------------------------------------
def _bench():
    return importlib.import_module("benchmarks.engine_targets")


def test_benchmark_arguments_plan_and_table(tmp_path):
    bench = _bench()
    args = bench.parse_args(["--quick", "--engines", "lean,hf", "--out", str(tmp_path)])
    assert args.engines == ["lean", "hf"] and bench.corners_for("lean", args) == [(64, 256)]
    full = bench.parse_args([])
    assert full.engines == list(bench.ENGINES) and bench.corners_for("lean", full) == list(bench.CORNERS)
    assert bench.corners_for("generate", full) == [(64, 256)]
    assert 4 * 60 < bench.estimate_seconds(full) < 9 * 60 and bench.estimate_seconds(args) < 3 * 60
    with pytest.raises(SystemExit):
        bench.parse_args(["--engines", "lean,sglang"])
    picked = bench.parse_args(["--quick", "--corners", "4096x64,64x256"])
    assert bench.corners_for("lean", picked) == [(4096, 64), (64, 256)] and bench.corners_for("hf", picked) == [
        (64, 256)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--corners", "4096-64"])
    result = bench.empty_result(full)
    result["engines"]["lean"] = {"tokens_per_j": {"64x256": 150.0, "64x4096": 45.0}, "step_ms_batch1000_ctx128": 6.5}
    result["engines"]["hf"] = {"tokens_per_j": {"64x256": 110.6}, "error": None}
    bench.headline(result, "lean")
    text = bench.table(result)
    assert "64x256" in text and "150.0" in text and "110.6" in text and ">= 140" in text
    assert set(result["tokens_per_j"]) == {"64x256", "64x4096", "4096x64", "4096x4096"}
    assert result["tokens_per_j"]["4096x64"] is None
    for key in ("gpu", "gpu_uuid", "engine", "commit", "step_ms_batch1000_ctx128", "batch1_bandwidth_fraction",
                "decode_attention_fraction_ctx2048", "prefill_fraction_of_peak", "grid_gpu_minutes_llama_3_2_1b"):
        assert key in result
    json.dumps(result)


def test_benchmark_grid_estimate_on_the_cpu(tmp_path):
    """The grid-time model runs on any engine's batch limits: positive, and longer with slower steps."""
    bench = _bench()
    eng = LeanEngine(tiny_config(tmp_path), device="cpu", max_batch=1024)
    fast = bench.grid_minutes(eng, step_s=lambda b, c: 0.005, prefill_flops_per_s=4e14, capture_s=0.03)
    slow = bench.grid_minutes(eng, step_s=lambda b, c: 0.010, prefill_flops_per_s=4e14, capture_s=0.03)
    assert 0 < fast["minutes"] < slow["minutes"] and fast["groups"] == 7
    compiled = bench.grid_minutes(eng, step_s=lambda b, c: 0.005, prefill_flops_per_s=4e14, capture_s=0.03,
                                  once_s=10.0)
    batches = {g.batch for g in _plan(eng)}
    assert compiled["minutes"] - fast["minutes"] == pytest.approx(10.0 * len(batches) / 60)
    assert fast["bound_minutes"] is None
    from energybook.model.roofline import GpuSpec

    spec = GpuSpec("test GPU", peak_flops=8e14, bandwidth_bytes_s=3e12, power_cap_w=700.0, source="test")
    bounded = bench.grid_minutes(eng, step_s=lambda b, c: 0.005, prefill_flops_per_s=4e14, capture_s=0.03, spec=spec)
    assert 0 < bounded["bound_minutes"] < bounded["minutes"] == fast["minutes"]


def _plan(eng):
    from energybook.measure.protocol import Point, plan

    points = [Point(a, b) for a in C.GRID for b in C.GRID]
    return plan(points, eng.batch_limit, 1000, 1024, "prefix")


def test_benchmark_sweeps_on_the_cpu(tmp_path):
    """The benchmark's corner sweeps (``run_sweep`` with the engine object) and its transformers adapter."""
    from energybook.measure.meter import SimulatedMeter

    bench = _bench()
    path = tiny_config(tmp_path)
    lean = LeanEngine(path, device="cpu", max_batch=64, **TINY_BUCKETS)
    quick = dict(device="cpu", allow_test_data=True, min_window_s=0.0, cooldown_s=0.0)
    out = bench.tokens_per_j(lean, "lean", [(8, 6), (8, 12)], SimulatedMeter(), tmp_path / "ws", warmup_steps=2,
                             n_req=12, **quick)
    assert set(out) == {"8x6", "8x12"} and all(v["tokens_per_j"] > 0 and v["batch"] == 12 for v in out.values())
    assert out["8x12"]["decode_ms_per_step"] > 0
    for static in (False, True):
        hf = bench.GenerateEngine(path, static=static, device="cpu", dtype="float32", max_batch=64)
        assert isinstance(hf, WaveEngine)
        res = bench.tokens_per_j(hf, "generate", [(8, 6)], SimulatedMeter(), tmp_path / f"ws{static}", n_req=4,
                                 **quick)
        assert res["8x6"]["tokens_per_j"] > 0 and res["8x6"]["prefill_s"] > 0
        assert hf.last_tokens.shape == (4, 6)
    assert bench.main(["--quick"]) == 2 if not torch.cuda.is_available() else True


def test_benchmark_step_model():
    bench = _bench()
    kv, bw = 32768, 2e12
    step = bench.step_model({1: 1e-3, 1000: 5e-3}, 64, kv, bw)
    assert step(1000, 64) == pytest.approx(5e-3) and step(1, 64) == pytest.approx(1e-3)
    assert step(1000, 2048) - step(1000, 64) == pytest.approx(1000 * 1984 * kv / bw)
    assert step(1, 64) < step(500, 64) < step(1000, 64)


def _gpu_logits():
    return importlib.import_module("benchmarks.gpu_logits")


def test_gpu_logits_record_arguments():
    bench = _gpu_logits()
    assert len(bench.parse_args([]).models) == 13
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "Llama-3.2-1B,No-Such-Model"])
    assert "ERROR" in bench.line({"model": "m", "error": "boom", "ok": False})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["Llama-3.2-1B", "Qwen2-1.5B", "Gemma-2-2B"])
def test_gpu_real_size_logits_match_transformers_in_bf16(model):
    """On the GPU: a real-size model (random bf16 weights), logits within bf16 tolerance of transformers' for every way
    of attending (no further from the float32 model than 1.5x transformers' own bf16 run), and the CUDA graphs'
    tokens equal to the same bucketed steps run eagerly (``benchmarks/gpu_logits.py``, which records all 13)."""
    bench = _gpu_logits()
    rec = bench.check_model(model, bench.parse_args(["--models", model]), torch, transformers)
    assert rec["ok"], bench.line(rec)


def test_teacher_forced_and_graph_logits(pair, monkeypatch):
    """``greedy_logits`` fed its own greedy tokens gives the same logits; through (stand-in) graphs, the logits the
    graphs copy out equal the eager bucketed steps' (what ``benchmarks/gpu_logits.py`` checks on a GPU)."""
    _, eng = pair
    eng.decode_attention = "masked"
    eng.release_wave()
    prompts = _prompts(eng)
    free = eng.greedy_logits(prompts, N_OUT, static=True)
    tokens = torch.stack([x.argmax(-1) for x in free], dim=1)
    forced = eng.greedy_logits(prompts, N_OUT, static=True, forced=tokens)
    assert all(torch.equal(a, b) for a, b in zip(free, forced))
    other = eng.greedy_logits(prompts, N_OUT, static=True, forced=torch.zeros_like(tokens))
    assert not torch.equal(other[-1], free[-1])  # the forced tokens are the ones fed

    def graph(body, pool, warmups, reset):
        reset()
        body()
        reset()
        return _StandInGraph(body)

    monkeypatch.setattr(eng, "_graph", graph)
    monkeypatch.setattr(eng, "_graphs_here", True)
    graphed = eng.greedy_logits(prompts, N_OUT, forced=tokens, graphs=True)
    for a, b in zip(graphed, free):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert eng._wave is None and not eng._probe


def test_benchmark_merges_another_runs_models_of_the_same_gpu(tmp_path, capsys):
    """``engine_targets.py --merge-models``: a second run's models join the targets' file, each with its own UUID
    and commit; a file of another GPU, or one without models, is refused with exit status 2."""
    bench = _bench()
    targets = dict(bench.empty_result(bench.parse_args([])), gpu="NVIDIA H100 80GB HBM3", gpu_uuid="GPU-a",
                   commit="c1")
    (tmp_path / "engine_targets.json").write_text(json.dumps(targets))
    other = dict(targets, gpu_uuid="GPU-b", commit="c2",
                 models={"OPT-1.3B": {"engine": "lean", "tokens_per_j": {"64x256": 150.0}, "error": None}})
    path = tmp_path / "models.json"
    path.write_text(json.dumps(other))
    assert bench.main(["--out", str(tmp_path), "--merge-models", str(path)]) == 0
    merged = json.loads((tmp_path / "engine_targets.json").read_text())
    assert merged["gpu_uuid"] == "GPU-a" and merged["models"]["OPT-1.3B"]["gpu_uuid"] == "GPU-b"
    assert merged["models"]["OPT-1.3B"]["commit"] == "c2"
    assert "OPT-1.3B (lean): 64x256 150" in (tmp_path / "engine_targets.txt").read_text()
    path.write_text(json.dumps(dict(other, gpu="NVIDIA H200")))
    assert bench.main(["--out", str(tmp_path), "--merge-models", str(path)]) == 2
    assert "same kind of GPU" in capsys.readouterr().err
    path.write_text(json.dumps(dict(other, models={})))
    assert bench.main(["--out", str(tmp_path), "--merge-models", str(path)]) == 2
    assert "no measured models" in capsys.readouterr().err
