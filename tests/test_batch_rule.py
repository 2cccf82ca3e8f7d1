"""The one batch rule (energybook.model.batch): the engines' profiles, the committed grids' batches, its users."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from energybook.model import architecture as A
from energybook.model import batch as B
from energybook.model import complexity as C
from energybook.model import physics as P

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "data" / "measured" / "nvidia-h100-80gb-hbm3" / "hf"
HF_GRIDS = sorted(H100.glob("*/*.csv"))
LEAN_CORNERS = ROOT / "benchmarks" / "results" / "h100" / "lean_corners.csv"
ENGINE_TARGETS = ROOT / "benchmarks" / "results" / "engine_targets.json"


def _calibrated_free(arch: A.Architecture) -> float:
    """The free memory after the weights (bytes) of the shipped H100 calibration's ``memory_bytes``: no sweep
    recorded its free memory, so this one value (chosen by scripts/calibrate.py) stands for all of them."""
    return P.load_calibration("h100").memory_bytes - arch.num_params * arch.bytes_per_element


# (model, n_in, n_out, free bytes, max_batch, hf batch, lean batch): what TorchEngine.batch_limit and
# LeanEngine.batch_limit computed at commit 472965f for that free memory (after the weights), in the model's dtype.
ENGINE_VALUES = [
    ("Llama-3.2-1B", 64, 256, 8.19e10, 1024, 1024, 1024),
    ("Llama-3.2-1B", 4096, 64, 8.19e10, 1024, 500, 505),
    ("Llama-3.2-1B", 4096, 4096, 6e10, 1024, 193, 195),
    ("OPT-1.3B", 64, 4096, 8.14e10, 1024, 84, 84),
    ("OPT-1.3B", 2048, 512, 3e10, 64, 49, 49),
    ("Qwen2-1.5B", 1000, 3000, 7.77e10, 1024, 572, 578),
    ("Qwen2-1.5B", 7, 1, 5e9, 4096, 197, 0),
    ("Gemma-2-2B", 20000, 63, 7e10, 1024, 14, 13),
]


@pytest.mark.parametrize("name,n_in,n_out,free,max_batch,hf,lean", ENGINE_VALUES)
def test_the_profiles_give_what_the_engines_computed(name, n_in, n_out, free, max_batch, hf, lean):
    from energybook import resources

    arch = A.load(resources.path("architectures", f"{name}.json"))  # the configuration's dtype, as they ran it
    assert B.batch_limit(arch, n_in, n_out, free, B.HF_PROFILE, max_batch) == hf
    assert B.batch_limit(arch, n_in, n_out, free, B.LEAN_PROFILE, max_batch) == lean


def test_cache_lengths_and_buckets():
    assert B.cache_len(B.HF_PROFILE, 64, 64) == 256  # n_in + n_out rounded up to 256
    assert B.cache_len(B.HF_PROFILE, 4096, 64) == 4352
    assert B.cache_len(B.LEAN_PROFILE, 64, 256) == 320  # 319 keys, 32-token buckets below 1024
    assert B.cache_len(B.LEAN_PROFILE, 4096, 4096) == 8192
    assert B.bucket_edges(1100) == [*range(0, 1024 + 1, 32), 1088, 1152]
    assert B.profile_edges(B.HF_PROFILE, 600) == [0, 256, 512, 768]
    with pytest.raises(ValueError, match="bucket_max"):
        B.bucket_edges(10, 64, 32)
    with pytest.raises(ValueError, match="memory_fraction"):
        B.EngineProfile("x", memory_fraction=1.5)


def test_the_lean_engine_buckets_agree():
    lean_engine = pytest.importorskip("energybook.measure.lean_engine")
    for limit in (1, 31, 33, 1023, 1025, 5000, 70000):
        assert B.bucket_edges(limit) == lean_engine.bucket_edges(limit)


def test_the_rule_is_pure_and_monotone():
    """The batch depends on the point and the baseline only: the same call gives the same batch whatever ran
    before, less memory or longer requests never give more, and :func:`free_for_batch` inverts it."""
    arch = A.load("Llama-3.2-1B")
    for profile in (B.HF_PROFILE, B.LEAN_PROFILE):
        first = B.batch_limit(arch, 4096, 64, 60e9, profile)
        B.batch_limit(arch, 64, 4096, 80e9, profile)
        assert B.batch_limit(arch, 4096, 64, 60e9, profile) == first
        assert B.batch_limit(arch, 4096, 4096, 60e9, profile) < first
        assert B.batch_limit(arch, 4096, 64, 50e9, profile) < first
        assert B.batch_limit(arch, 4096, 64, 1e9, profile) == 0
        low, high = B.free_for_batch(arch, 4096, 64, first, profile)
        assert low <= 60e9 < high
        assert B.batch_limit(arch, 4096, 64, low * (1 + 1e-12), profile) == first
        assert B.batch_limit(arch, 4096, 64, high * (1 - 1e-12), profile) == first
    assert B.profile_for("lean") is B.LEAN_PROFILE and B.profile_for("torch") is B.HF_PROFILE
    with pytest.raises(ValueError, match="no batch profile"):
        B.profile_for("vllm")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _planned(row: dict[str, str], n_req: int, max_batch: int, limit: int) -> tuple[int, int]:
    """(batch, waves) the runner records for a limit: the balanced plan, halved once per OOM retry."""
    batch, waves = C.balanced_batch(n_req, min(n_req, max_batch, limit))
    for _ in range(int(row["oom_retries"])):
        batch = max(1, batch // 2)
        waves = math.ceil(n_req / batch)
    return batch, waves


@pytest.mark.parametrize("path", HF_GRIDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_rule_reproduces_every_committed_hf_batch(path):
    """Every (batch, waves) of the hf engine's committed H100 grids, from the rule with one free-memory value.

    The sidecars record the engine's settings (memory fraction 0.92, prefill_tokens 16384, max_batch 1024) but
    not the free memory: the calibration's ``memory_bytes`` less the weights stands for it, and the free memory
    each grid allows on its own (the intersection over its points of :func:`free_for_batch`) contains it.
    """
    side = json.loads(path.with_suffix(".json").read_text())
    engine = side["engine"]
    profile = B.profile_for(engine["engine"])
    assert (engine["memory_fraction"], engine["prefill_tokens"]) == (profile.memory_fraction, profile.prefill_tokens)
    max_batch = int(engine["max_batch"])
    arch = A.load(path.parent.name)
    free = _calibrated_free(arch)
    low, high = 0.0, math.inf
    for row in _rows(path):
        n_in, n_out, n_req, batch, waves = (int(row[k]) for k in ("n_in", "n_out", "n_req", "batch", "waves"))
        assert row["oom_retries"] == "0"
        limit = B.batch_limit(arch, n_in, n_out, free, profile, max_batch)
        assert _planned(row, n_req, max_batch, limit) == (batch, waves), (n_in, n_out)
        top = max_batch if waves == 1 else min(max_batch, math.ceil(n_req / (waves - 1)) - 1)
        low = max(low, B.free_for_batch(arch, n_in, n_out, batch, profile, max_batch)[0])
        high = min(high, B.free_for_batch(arch, n_in, n_out, top, profile, max_batch)[1])
    assert low <= free < high


def test_the_rule_reproduces_the_committed_lean_corners():
    """The lean engine's committed corners (Llama 3.2 1B, H100 80GB): (64, 256) at batch 1000; (4096, 64) planned
    at 500 in 2 waves, which ran out of memory once (``oom_retries`` 1) and ran at 250 in 4 waves."""
    side = json.loads(LEAN_CORNERS.with_suffix(".json").read_text())
    assert side["engine"]["engine"] == "lean"
    arch = A.load(side["model"])
    free = _calibrated_free(arch)
    rows = {(int(r["n_in"]), int(r["n_out"])): r for r in _rows(LEAN_CORNERS)}
    for (n_in, n_out), row in rows.items():
        limit = B.batch_limit(arch, n_in, n_out, free, B.LEAN_PROFILE, int(side["engine"]["max_batch"]))
        assert _planned(row, int(row["n_req"]), 1024, limit) == (int(row["batch"]), int(row["waves"]))
    assert C.balanced_batch(1000, B.batch_limit(arch, 4096, 64, free, B.LEAN_PROFILE)) == (500, 2)
    assert rows[(4096, 64)]["oom_retries"] == "1"


def test_the_engine_benchmark_batches_depend_on_what_ran_before():
    """The lean corners of engine_targets.json (read before each point, after other points and engines) need
    free memories that no single baseline has: (64, 4096) at 334 needs more than 55 GB, (4096, 4096) at 62
    (125 halved by an OOM) less than 45 GB. The rule with one baseline per sweep removes that dependence."""
    corners = json.loads(ENGINE_TARGETS.read_text())["engines"]["lean"]["corners"]
    arch = A.load("Llama-3.2-1B")
    wide = corners["64x4096"]
    assert (wide["batch"], wide["waves"]) == (334, 3)
    needs = B.free_for_batch(arch, 64, 4096, 334, B.LEAN_PROFILE)[0]
    long = corners["4096x4096"]
    assert C.balanced_batch(1000, int(long["batch"])) != (long["batch"], long["waves"])  # not a plan: an OOM halving
    planned = C.balanced_batch(1000, 2 * int(long["batch"]) + 1)
    assert planned == (125, 8)
    allows = B.free_for_batch(arch, 4096, 4096, 142, B.LEAN_PROFILE)[1]  # 125 in 8 waves: a limit of 125..142
    assert allows < needs


def test_the_estimate_and_the_physical_model_use_the_rule():
    from energybook.measure import estimate

    arch = A.load("OPT-1.3B")
    free = estimate.NOMINAL_MEMORY_BYTES - arch.num_params * arch.bytes_per_element
    for n_in, n_out in ((64, 64), (4096, 4096), (2048, 512)):
        for profile in (B.HF_PROFILE, B.LEAN_PROFILE):
            assert estimate.nominal_batch_limit(arch, n_in, n_out, 1024, profile=profile) == max(
                1, B.batch_limit(arch, n_in, n_out, free, profile, 1024))
        assert P.batch_limit(arch, n_in, n_out, 84e9, 1024) == B.batch_limit(
            arch, n_in, n_out, 84e9 - arch.num_params * arch.bytes_per_element, B.HF_PROFILE, 1024)
    assert estimate.nominal_batch_limit(arch, 4096, 4096, 1024, memory_bytes=1e9) == 1  # at least one
    cal = dataclasses.replace(P.load_calibration("h100"), engine="lean")
    lean = P.batch_limit(arch, 4096, 4096, cal.memory_bytes, 1024, B.LEAN_PROFILE)
    assert P.schedule(arch, 4096, 4096, cal, n_req=1000) == C.balanced_batch(1000, lean)


def test_an_engines_batch_does_not_depend_on_what_ran_before():
    """The engines' batch_limit (measure.wave.batch_limit) budgets from the memory free at its first decision: a
    point gets the same batch first or after others that left memory held (free memory falling between calls)."""
    from types import SimpleNamespace

    from energybook.measure import wave
    from energybook.model import architecture as A
    from energybook.model import batch as B

    free = iter([60e9, 40e9, 20e9, 10e9])

    def engine():
        cuda = SimpleNamespace(empty_cache=lambda: None, mem_get_info=lambda device: (int(next(free)), 80e9))
        return SimpleNamespace(torch=SimpleNamespace(cuda=cuda), device=SimpleNamespace(type="cuda"),
                               arch=A.load("Llama-3.2-1B"), profile=B.LEAN_PROFILE, max_batch=1024,
                               dtype=SimpleNamespace(itemsize=2), settings={})

    first = engine()
    alone = wave.batch_limit(first, 4096, 64)
    after = engine()
    wave.batch_limit(after, 64, 4096)
    wave.batch_limit(after, 64, 256)
    assert wave.batch_limit(after, 4096, 64) == B.batch_limit(after.arch, 4096, 64, 40e9, B.LEAN_PROFILE, 1024, 2)
    assert after.settings["free_baseline_bytes"] == 40e9
    assert alone == B.batch_limit(first.arch, 4096, 64, 60e9, B.LEAN_PROFILE, 1024, 2) > 0
    cpu = SimpleNamespace(device=SimpleNamespace(type="cpu"), max_batch=7)
    assert wave.batch_limit(cpu, 64, 64) == 7
