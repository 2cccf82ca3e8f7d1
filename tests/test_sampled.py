"""The sampled protocol's arithmetic (issue 22): the sample plan and the integration rule, against synthetic
energy curves with known answers."""

from __future__ import annotations

import math

import pytest

from energybook.measure import sampled as S
from energybook.model.complexity import GRID


def test_decode_contexts_cover_both_ends_with_a_geometric_ladder():
    c = S.decode_contexts(65, 8191, per_octave=2)
    assert c[0] == 65 and c[-1] == 8191 and list(c) == sorted(set(c))
    assert len(c) == math.ceil(math.log2(8191 / 65) * 2) + 1
    ratios = [b / a for a, b in zip(c, c[1:])]
    assert max(ratios) < 1.45 and min(ratios) > 1.35  # about 2 ** 0.5 each
    assert S.decode_contexts(100, 100) == (100,)
    with pytest.raises(ValueError, match="at least lo"):
        S.decode_contexts(10, 5)


def test_step_sum_is_exact_for_an_affine_cost_and_for_constants():
    xs = S.decode_contexts(65, 4159, per_octave=1)
    e = [0.5 + 1e-4 * x for x in xs]
    a, b = 100, 4000
    exact = sum(0.5 + 1e-4 * c for c in range(a, b + 1))
    assert S.step_sum(xs, e, a, b) == pytest.approx(exact, rel=1e-12)
    assert S.step_sum([7], [2.0], 7, 7) == 2.0
    assert S.step_sum(xs, e, 10, 5) == 0.0
    with pytest.raises(ValueError, match="outside the sampled"):
        S.step_sum(xs, e, 64, 100)
    with pytest.raises(ValueError, match="increase strictly"):
        S.step_sum([1, 1], [1, 1], 1, 1)


def test_step_sum_of_a_curved_cost_errs_less_the_denser_the_ladder():
    def cost(c):  # a decode step: fixed products, KV reads linear in c, and a little curvature
        return 0.3 + 2e-5 * c + 4e-10 * c * c

    a, b = 65, 8191
    exact = sum(cost(c) for c in range(a, b + 1))
    errors = []
    for per_octave in (1, 2, 4):
        xs = S.decode_contexts(a, b, per_octave)
        errors.append(abs(S.step_sum(xs, [cost(x) for x in xs], a, b) / exact - 1))
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 2e-3


def _grid_shapes(n_req=1000, memory_tokens=2_000_000):
    def limit(n_in, n_out):  # a KV-memory rule: tokens of cache that fit
        return min(1024, memory_tokens // (n_in + n_out))
    return S.shapes([(a, b) for a in GRID for b in GRID], n_req, limit)


def test_the_plan_covers_every_point_of_a_grid_with_far_fewer_pieces_than_steps():
    points = _grid_shapes()
    plan = S.sample_plan(points, per_octave=2)
    assert {(p.n_in, p.batch) for p in points} == set(plan.prefill)
    for p in points:
        lo, hi = p.contexts
        xs = plan.decode[p.batch]
        assert xs[0] <= lo and hi <= xs[-1]
    steps = sum(p.n_out - 1 for p in points)
    assert plan.n_samples < 150 < steps / 100
    rec = plan.to_record()
    assert rec["integration"] == S.INTEGRATION_RULE and set(rec["decode"]) == {str(b) for b in plan.decode}


def test_assemble_gives_the_known_answer_of_a_synthetic_gpu():
    """A GPU whose prefill costs 1 mJ per prompt token and whose decode step costs 0.2 J plus 10 uJ per key per
    request, at 700 W: the assembled point equals the sum over its real steps."""
    def prefill_j(n_in, batch):
        return 1e-3 * n_in * batch

    def step_j(batch, c):
        return 0.2 + 1e-5 * c * batch

    points = _grid_shapes()
    plan = S.sample_plan(points)
    prefill = {(n, b): (prefill_j(n, b), prefill_j(n, b) / 700) for n, b in plan.prefill}
    decode = {b: [(c, step_j(b, c), step_j(b, c) / 700) for c in cs] for b, cs in plan.decode.items()}
    for p in points:
        got = S.assemble(p, prefill, decode)
        want = p.waves * (prefill_j(p.n_in, p.batch) + sum(step_j(p.batch, p.n_in + t) for t in range(1, p.n_out)))
        assert got.energy_j == pytest.approx(want, rel=1e-9)
        assert got.power_w == pytest.approx(700)
        assert got.tokens_out == p.batch * p.waves * p.n_out
        assert got.tokens_per_j == pytest.approx(got.tokens_out / want, rel=1e-9)


def test_a_missing_or_impossible_piece_is_refused_by_name():
    p = S.PointShape(64, 256, 1000, 1)
    decode = {1000: [(65, 0.3, 0.0005), (319, 0.4, 0.0006)]}
    with pytest.raises(KeyError, match="no prefill measured at n_in 64, batch 1000"):
        S.assemble(p, {}, decode)
    with pytest.raises(KeyError, match="no decode steps measured at batch 1000"):
        S.assemble(p, {(64, 1000): (10.0, 0.02)}, {})
    with pytest.raises(ValueError, match="context 65.*not a positive"):
        S.assemble(p, {(64, 1000): (10.0, 0.02)}, {1000: [(65, math.nan, 0.0005), (319, 0.4, 0.0006)]})
    with pytest.raises(ValueError, match="outside the sampled"):
        S.assemble(p, {(64, 1000): (10.0, 0.02)}, {1000: [(65, 0.3, 0.0005), (300, 0.4, 0.0006)]})
    one = S.assemble(S.PointShape(64, 1, 1000, 1), {(64, 1000): (10.0, 0.02)}, {})
    assert one.energy_j == 10.0 and one.tokens_out == 1000


def test_the_lean_engines_pieces_run_at_the_asked_context_on_a_tiny_cpu_model(tmp_path):
    pytest.importorskip("torch")
    from energybook.measure.lean import pieces as P
    from energybook.measure.lean.engine import LeanEngine
    from tests.tiny import tiny_config

    eng = LeanEngine(tiny_config(tmp_path), device="cpu", max_batch=4, bucket_min=8, bucket_max=16)
    contexts = S.decode_contexts(9, 60, per_octave=2)
    with pytest.raises(RuntimeError, match="prepare batch 3"):
        P.decode_piece(eng, 3, 20)
    P.prepare_pieces(eng, 3, contexts, prompt_lengths=(8, 32))
    for c in contexts:
        run = P.decode_piece(eng, 3, c)
        run()
        assert abs(run.mean_context - c) <= P.STRIDE // 2  # the bucket may clip the stride
        assert int(eng._wave.pos.item()) == run.steps + round(run.mean_context - 1 - (run.steps - 1) / 2)
    tok = eng._wave.tok.clone()
    P.prefill_piece(eng, 32, 3)()
    assert eng._wave.tok.shape == tok.shape


def test_the_cache_is_filled_before_decode_pieces_and_refuses_an_unknown_fill(tmp_path):
    torch = pytest.importorskip("torch")
    from energybook.measure.lean import pieces as P
    from energybook.measure.lean.engine import LeanEngine
    from tests.tiny import tiny_config

    eng = LeanEngine(tiny_config(tmp_path), device="cpu", max_batch=4, bucket_min=8, bucket_max=16)
    with pytest.raises(RuntimeError, match="prepare a batch first"):
        P.fill_cache(eng)
    P.prepare_pieces(eng, 2, (9, 20))
    cache = eng._wave.cache.float()
    assert 0.9 < float(cache.std()) < 1.1 and float((cache == 0).float().mean()) < 0.01  # N(0, 1), not zeros
    first = cache.clone()
    P.fill_cache(eng, "random", seed=eng.seed)
    assert torch.equal(eng._wave.cache.float(), first)  # seeded: the same fill
    P.fill_cache(eng, "zeros")
    assert not eng._wave.cache.any()
    with pytest.raises(ValueError, match="cache fill must be one of"):
        P.fill_cache(eng, "ones")


def test_step_sum_extends_its_ends_flat_only_within_the_margin():
    xs, ys = [10, 20], [1.0, 2.0]
    want = 2 * 1.0 + sum(1 + (c - 10) / 10 for c in range(10, 21)) + 2 * 2.0
    assert S.step_sum(xs, ys, 8, 22, margin=2) == pytest.approx(want)
    with pytest.raises(ValueError, match="outside"):
        S.step_sum(xs, ys, 7, 20, margin=2)


def test_a_sampled_sweep_on_the_cpu_writes_every_point_and_resumes(tmp_path):
    """The loop's mechanics with the simulated meter (constant power): rows of every point, assembled from the
    pieces, and a rerun that measures nothing again. Its accuracy is a GPU validation, not a CPU test."""
    pytest.importorskip("torch")
    import json

    from energybook.measure.protocol import SweepConfig
    from energybook.measure.runner import engine_settings, run_sweep
    from energybook.store.results import load_measured
    from tests.tiny import tiny_config

    config = SweepConfig(n_in=[8, 24], n_out=[4, 20], n_req=6, max_batch=4, mode="sampled", engine="lean",
                         min_window_s=0.0, cooldown_s=0.0,
                         engine_settings=engine_settings("lean", bucket_min=8, bucket_max=16, compile=False))
    kw = dict(workspace=tmp_path / "data", device="cpu", allow_test_data=True, progress=False)
    res = run_sweep(tiny_config(tmp_path), config, **kw)
    assert res.measured == 4 and res.remaining == 0 and res.path.name == "sampled.csv"
    run = load_measured(res.path, allow_test_data=True)
    df = run.data
    assert set(df["mode"]) == {"sampled"} and set(df["window_kind"]) == {"sampled"}
    assert (df["tokens_out"] == df["batch"] * df["waves"] * df["n_out"]).all()
    assert (df["energy_j"] > df["prefill_energy_j"]).all() and (df["power_w"] > 0).all()
    side = json.loads(res.path.with_suffix(".json").read_text())
    log = side["points"]
    assert all(e["integration"] == S.INTEGRATION_RULE and e["decode_contexts"] for e in log.values())
    assert side["sample_plan"]["integration"] == S.INTEGRATION_RULE and side["sample_plan"]["prefill"]
    # each batch's whole GPU time (preparation included) is shared among its points: the measuring minutes
    assert side["measuring_minutes"] == pytest.approx(sum(e["measuring_s"] for e in log.values()) / 60, abs=1e-3)
    assert all(e["measuring_s"] * len(log) >= e["prepare_s"] for e in log.values())  # a share of the preparation
    again = run_sweep(tiny_config(tmp_path), config, **kw)
    assert again.measured == 0 and again.skipped == 4
    with pytest.raises(ValueError, match="sampled protocol measures with the lean engine"):
        run_sweep(tiny_config(tmp_path), config.replace(engine="hf", engine_settings=None), **kw)
