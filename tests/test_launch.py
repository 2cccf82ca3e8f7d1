"""Sweeps across ranks through torchrun: the plan (deterministic, balanced, every point once), the merge of part
files (provenance kept, conflicts and locked or edited parts refused), and the real launcher with two CPU ranks,
the simulated meter and tiny models, including a killed rank resumed by the same command."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from energybook import cli  # noqa: E402
from energybook.measure import launch as L  # noqa: E402
from energybook.measure import runner  # noqa: E402
from energybook.measure.meter import SimulatedMeter  # noqa: E402
from energybook.measure.protocol import Point, SweepConfig  # noqa: E402
from energybook.store import results as R  # noqa: E402

from .tiny import tiny_config  # noqa: E402

STUDY = ["Llama-3.2-1B", "OPT-1.3B", "Qwen2-1.5B", "Llama-3.1-8B", "Gemma-2-9B"]
#: The launches' protocol, as the command line below gives it (min_window 0 and cooldown 0: tests only).
TINY = dict(n_in=[8, 16, 32], n_out=[4, 8], n_req=4, max_batch=4, min_window_s=0.0, cooldown_s=0.0)
ARGS = ["--device", "cpu", "--allow-test-data", "--n-in", "8", "16", "32", "--n-out", "4", "8", "--n-req", "4",
        "--max-batch", "4", "--min-window", "0", "--cooldown", "0", "--engine", "hf", "--graphs", "off",
        "--no-progress"]


# -- the plan -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_the_plan_is_deterministic_and_covers_every_point_once(world):
    config = SweepConfig(repeats=2)
    plan = L.make_plan(STUDY[:3], config, world)
    assert plan == L.make_plan(STUDY[:3], config, world) and plan.fingerprint == L.make_plan(STUDY[:3], config,
                                                                                             world).fingerprint
    assert plan.by == ("model" if world <= 3 else "group")
    for model in STUDY[:3]:
        got = [p.key for u in plan.units if u.model == model for p in u.points]
        assert sorted(got) == sorted(p.key for p in config.points)  # every point, once
    assert sorted(r for r in plan.ranks) == sorted(plan.ranks) and set(plan.ranks) <= set(range(world))
    assert sum(len(plan.for_rank(r)) for r in range(world)) == len(plan.units)


def test_prefix_groups_hold_all_n_out_of_one_n_in_and_rep():
    plan = L.make_plan(["Llama-3.2-1B"], SweepConfig(repeats=2), 4)
    assert plan.by == "group" and plan.owner("Llama-3.2-1B") is None
    for u in plan.units:
        assert {p.n_in for p in u.points} == {u.n_in} and {p.rep for p in u.points} == {u.rep}
    assert {(u.n_in, u.rep) for u in plan.units} == {(a, r) for a in SweepConfig().n_in for r in (0, 1)}
    assert "grid.part-3.csv" in plan.describe()


@pytest.mark.parametrize("models,world", [(STUDY, 2), (STUDY[:3], 8), (STUDY[:1], 3), (STUDY, 4)])
def test_longest_first_balances_the_estimated_cost(models, world):
    plan = L.make_plan(models, SweepConfig(), world)
    loads = plan.loads_ms
    assert sum(loads) == sum(u.cost_ms for u in plan.units)
    # greedy list scheduling: the busiest rank got its last unit while it was the least loaded
    assert max(loads) - min(loads) <= max(u.cost_ms for u in plan.units)
    assert max(loads) <= max(max(u.cost_ms for u in plan.units), sum(loads) / world * 4 / 3)


def test_costs_follow_the_work():
    plan = L.make_plan(["Llama-3.2-1B"], SweepConfig(), 7)
    cost = {u.n_in: u.cost_ms for u in plan.units}
    assert cost[4096] > cost[1024] > cost[64]  # longer prompts, longer generations
    big, small = (L.make_plan([m], SweepConfig(), 1).units[0].cost_ms for m in ("Llama-3.1-8B", "Llama-3.2-1B"))
    assert big > small
    assert L.nominal_batch_limit(L.A.load("OPT-1.3B"), 4096, 4096, 1024) < 1024 / 4  # MHA: KV-limited batches


def test_the_plan_refuses_what_it_cannot_place(tmp_path):
    with pytest.raises(ValueError, match="named twice"):
        L.make_plan(["Llama-3.2-1B", "Llama-3.2-1B"], SweepConfig(), 2)
    with pytest.raises(ValueError, match="benchmark command"):
        L.make_plan(["Llama-3.2-1B"], SweepConfig(engine="vllm"), 2)
    with pytest.raises(ValueError, match="positive integer"):
        L.make_plan(["Llama-3.2-1B"], SweepConfig(), 0)
    with pytest.raises(ValueError, match="unknown model"):
        L.make_plan(["Llama-9"], SweepConfig(), 1)


def test_the_plan_refuses_too_many_ranks_at_once():
    """--plan --ranks 1e8 ran for minutes, 1e12 ran out of memory."""
    import time

    t0 = time.perf_counter()
    for world in (L.MAX_RANKS + 1, 10**8, 10**12):
        with pytest.raises(ValueError, match=r"1\.\.4096"):
            L.make_plan(["Llama-3.2-1B"], SweepConfig(), world)
    assert time.perf_counter() - t0 < 5
    assert len(L.make_plan(["Llama-3.2-1B"], SweepConfig(), L.MAX_RANKS).loads_ms) == L.MAX_RANKS


def test_a_control_character_in_a_model_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="control character"):
        L.make_plan(["Llama-3.2-1B\n"], SweepConfig(), 2)
    with pytest.raises(ValueError, match="control character"):
        L.sweep("bad\tname.json", SweepConfig(), workspace=tmp_path, device="cpu")
    assert not any(tmp_path.iterdir())


def test_part_of_torchruns_environment_or_no_rendezvous_says_to_use_torchrun():
    """RANK set without MASTER_ADDR gave a KeyError."""
    with pytest.raises(ValueError, match="RANK set but not LOCAL_RANK, WORLD_SIZE.*torchrun.*unset RANK"):
        L.Ranks.from_env(dict(RANK="0"))
    with pytest.raises(ValueError, match="1..4096"):
        L.Ranks.from_env(dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(10**12)))
    ranks = L.Ranks(1, 1, 2, local_world_size=2)
    with pytest.raises(ValueError, match="not MASTER_ADDR, MASTER_PORT.*torchrun.*unset RANK"):
        ranks.check_rendezvous({})
    with pytest.raises(ValueError, match="MASTER_PORT"):
        ranks.check_rendezvous(dict(MASTER_ADDR="h", MASTER_PORT="x"))
    ranks.check_rendezvous(dict(MASTER_ADDR="h", MASTER_PORT="29500"))
    L.Ranks(0, 0, 1).check_rendezvous({})  # one rank needs no rendezvous


def test_a_share_measures_its_points_and_records_the_whole_protocol():
    config = SweepConfig(n_in=[8, 16], n_out=[4, 8])
    mine = [Point(16, 4), Point(8, 8)]
    part = L.shard(config, mine)
    assert part.to_record() == config.to_record()
    assert [p.key for p in part.points] == [(8, 8, 0), (16, 4, 0)]
    assert [p.key for p in part.replace(mode="full").points] == [(8, 8, 0), (16, 4, 0)]


def test_ranks_come_from_torchruns_environment():
    assert L.Ranks.from_env({}) is None
    env = dict(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2", GROUP_WORLD_SIZE="2",
               TORCHELASTIC_RUN_ID="abc", TORCHELASTIC_RESTART_COUNT="1")
    ranks = L.Ranks.from_env(env)
    assert (ranks.rank, ranks.local_rank, ranks.world_size, ranks.nnodes, ranks.restart) == (3, 1, 4, 2, 1)
    assert ranks.device("cuda") == "cuda:1" and ranks.device("cpu") == "cpu"
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        ranks.device("cuda:0")
    with pytest.raises(ValueError, match="integers"):
        L.Ranks.from_env(dict(env, RANK="x"))
    assert "--nnodes 2" in L.launch_command(ranks, ["sweep", "--model", "A"])
    one = L.Ranks(0, 0, 2, local_world_size=2)
    assert L.launch_command(one, ["sweep"]).startswith("torchrun --standalone --nproc-per-node 2 -m energybook.cli")
    meter = L.RankSimulatedMeter(1)
    assert meter.device_info()["gpu_uuid"] == "simulated-1" and meter.method == "simulated"


class _Peers:
    """A stand-in process group of two ranks: rank 1's facts are rank 0's with some changed."""

    def __init__(self, **other):
        self.other, self.calls = other, 0

    def gather(self, obj):
        self.calls += 1
        if self.calls == 1:
            return [obj, dict(obj, **{k: v for k, v in self.other.items() if k != "sees"})]
        return [obj, self.other.get("sees", obj)]


@pytest.mark.parametrize("other,match", [(dict(host="h", uuid="simulated-0"), "both measure on GPU simulated-0"),
                                         (dict(uuid="u1", gpu="NVIDIA A100"), "GPUs of several models"),
                                         (dict(uuid="u1", plan="0123"), "different plans"),
                                         (dict(uuid="u1", sees=False), "do not see rank 0's data folder")])
def test_a_launch_refuses_ranks_that_disagree(tmp_path, monkeypatch, other, match):
    monkeypatch.setattr(L.platform, "node", lambda: "h")
    ranks = L.Ranks(0, 0, 2, local_world_size=2, run_id="r1")
    plan = L.make_plan(["Llama-3.2-1B"], SweepConfig(), 2)
    info = L.RankSimulatedMeter(0).device_info()
    with pytest.raises(RuntimeError, match=match):
        L._check_peers(_Peers(**other), ranks, info, plan, L.Workspace(tmp_path))
    L._check_peers(_Peers(uuid="simulated-1"), ranks, info, plan, L.Workspace(tmp_path))  # agreeing peers pass
    assert not list((tmp_path / ".work" / "launch").iterdir())  # the token is gone


def test_measure_is_refused_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["measure", "--model", "Llama-3.2-1B"]) == 2
    assert "use `energybook sweep`" in capsys.readouterr().err


def test_plan_prints_the_shares_and_measures_nothing(tmp_path, capsys):
    assert cli.main(["sweep", "--model", "Llama-3.2-1B", "OPT-1.3B", "--plan", "--ranks", "3", "--data",
                     str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "by prefix group" in out and "rank 2:" in out and "OPT-1.3B n_in 4096 rep 0" in out
    assert not any(tmp_path.iterdir())


# -- merging part files -------------------------------------------------------------------------------------

CONFIG = SweepConfig(n_in=[8, 16], n_out=[4, 8])


def _prov(uuid, command="cmd"):
    return dict(gpu="simulated", gpu_uuid=uuid, model="m", protocol=CONFIG.to_record(), meter_method="simulated",
                test_data=True, device="cpu", command=command, started_at=runner.utc(), host="host-" + uuid)


def _row(n_in, n_out, uuid, power=100.0):
    reading = SimulatedMeter(power_w=power).reading(0.0, 1.0)
    return runner.make_row("m", n_in, n_out, 10, 0, "prefix", reading, {"gpu": "simulated", "gpu_uuid": uuid},
                           engine="torch", batch=10, waves=1)


def _write(path, uuid, points, power=100.0):
    with R.ResultsFile(path) as rf:
        rf.start(_prov(uuid))
        for n_in, n_out in points:
            rf.append(_row(n_in, n_out, uuid, power), {"gpu_uuid": uuid, "measuring_s": 30.0})


def test_merge_keeps_every_rows_gpu_and_removes_the_parts(tmp_path):
    grid = tmp_path / "grid.csv"
    _write(grid, "gpu-a", [(8, 4)])
    _write(L.part_path(grid, 1), "gpu-b", [(8, 8), (16, 4)])
    _write(L.part_path(grid, 2), "gpu-c", [(16, 8)])
    assert L.done_keys(grid) == {p.key for p in CONFIG.points}
    res = L.merge_parts(grid)
    assert (res.merged, res.already, [p.name for p in res.parts]) == (3, 0, ["grid.part-1.csv", "grid.part-2.csv"])
    assert L.part_files(grid) == [] and not R.sidecar_path(L.part_path(grid, 1)).exists()
    run = R.load_measured(grid, allow_test_data=True)
    uuid = dict(zip(zip(run.data.n_in, run.data.n_out), run.data.gpu_uuid))
    assert uuid == {(8, 4): "gpu-a", (8, 8): "gpu-b", (16, 4): "gpu-b", (16, 8): "gpu-c"}
    log = run.provenance["points"]
    assert log["16x8#0"]["gpu_uuid"] == "gpu-c" and log["16x8#0"]["part"] == "grid.part-2.csv"
    assert log["16x8#0"]["host"] == "host-gpu-c" and log["16x8#0"]["finished_at"]
    assert [r["gpu_uuid"] for r in run.provenance["runs"]] == ["gpu-a", "gpu-b", "gpu-c"]
    assert run.provenance["measuring_minutes"] == pytest.approx(4 * 0.5)  # every rank's GPU time, summed
    assert L.merge_parts(grid).merged == 0  # nothing left to merge


def test_merge_refuses_a_point_found_twice_with_other_values(tmp_path):
    grid = tmp_path / "grid.csv"
    _write(grid, "gpu-a", [(8, 4)])
    _write(L.part_path(grid, 0), "gpu-b", [(8, 8), (8, 4)], power=200.0)
    before = grid.read_bytes(), R.sidecar_path(grid).read_bytes()
    with pytest.raises(R.DataError, match="n_in=8, n_out=4, rep=0 is in both .*grid.csv.* with other values"):
        L.merge_parts(grid)
    assert (grid.read_bytes(), R.sidecar_path(grid).read_bytes()) == before  # nothing written
    assert L.part_files(grid) == [L.part_path(grid, 0)]


def test_merge_cut_short_is_finished_by_the_next_merge(tmp_path):
    grid = tmp_path / "grid.csv"
    part = L.part_path(grid, 1)
    _write(part, "gpu-b", [(8, 8), (16, 4)])
    kept = part.read_bytes(), R.sidecar_path(part).read_bytes()
    L.merge_parts(grid)
    part.write_bytes(kept[0])  # as if killed after writing grid.csv, before removing the part
    R.sidecar_path(part).write_bytes(kept[1])
    res = L.merge_parts(grid)
    assert (res.merged, res.already, len(res.parts)) == (0, 2, 1) and L.part_files(grid) == []
    assert len(R.load_measured(grid, allow_test_data=True).data) == 2


def test_merge_refuses_a_part_being_written_and_an_edited_part(tmp_path):
    grid = tmp_path / "grid.csv"
    part = L.part_path(grid, 0)
    _write(part, "gpu-b", [(8, 8)])
    writer = R.ResultsFile(part)
    writer.start(_prov("gpu-b"))  # a launch still writes it
    with pytest.raises(R.LockedError, match="being written by another sweep"):
        L.merge_parts(grid)
    writer.close()
    assert not grid.exists()
    part.write_text(part.read_text().replace(",8,8,10,", ",8,8,11,"))
    with pytest.raises(R.DataError, match="never re-blessed"):
        L.merge_parts(grid)
    assert not grid.exists() and L.part_files(grid) == [part]


def _write_protocol(path, uuid, points, config):
    with R.ResultsFile(path) as rf:
        rf.start(dict(_prov(uuid), protocol=config.to_record()))
        for n_in, n_out in points:
            rf.append(_row(n_in, n_out, uuid), {"gpu_uuid": uuid})


def test_merge_checks_every_parts_protocol_before_writing(tmp_path):
    grid = tmp_path / "grid.csv"
    _write(grid, "gpu-a", [(8, 4)])
    _write(L.part_path(grid, 1), "gpu-b", [(8, 8)])
    other = SweepConfig(n_in=[8, 16], n_out=[4, 8], n_req=20)
    _write_protocol(L.part_path(grid, 2), "gpu-c", [(16, 8)], other)
    before = grid.read_bytes(), R.sidecar_path(grid).read_bytes()
    with pytest.raises(R.DataError, match=r"grid.part-2.csv .*another protocol.*move .*aside") as exc:
        L.merge_parts(grid)
    assert "\n" not in str(exc.value)
    assert (grid.read_bytes(), R.sidecar_path(grid).read_bytes()) == before  # nothing written
    assert L.part_files(grid) == [L.part_path(grid, 1), L.part_path(grid, 2)]
    assert not list(tmp_path.glob(".*.lock"))


def test_a_resume_with_another_protocol_says_what_to_do_and_is_not_stuck(tmp_path):
    grid = tmp_path / "grid.csv"
    other = SweepConfig(n_in=[8, 16], n_out=[4, 8], n_req=20)
    _write(grid, "gpu-a", [(8, 4)])
    _write_protocol(L.part_path(grid, 1), "gpu-b", [(16, 8)], other)  # a killed launch with another protocol
    with pytest.raises(R.DataError, match=r"another protocol.*mv .*grid.part-1.csv") as exc:
        L.merge_parts(grid)
    assert "\n" not in str(exc.value)
    with R.ResultsFile(grid) as rf:  # the grid is untouched and still resumes with its own protocol
        rf.start(_prov("gpu-a"))
        rf.append(_row(16, 4, "gpu-a"), {"gpu_uuid": "gpu-a"})
    assert len(R.load_measured(grid, allow_test_data=True).data) == 2


def test_the_catalog_counts_a_point_once_when_a_merge_was_cut_short(tmp_path):
    from energybook.store import catalog

    grid = tmp_path / "measured" / "simulated" / "hf" / "m" / "grid.csv"
    grid.parent.mkdir(parents=True)
    part = L.part_path(grid, 1)
    _write(grid, "gpu-a", [(8, 4), (8, 8)])
    _write(part, "gpu-b", [(16, 4), (16, 8)])
    kept = part.read_bytes(), R.sidecar_path(part).read_bytes()
    L.merge_parts(grid)
    part.write_bytes(kept[0])  # as if killed after writing grid.csv, before removing the part
    R.sidecar_path(part).write_bytes(kept[1])
    table = catalog.measured_table(catalog.measured_runs(tmp_path, allow_test_data=True))
    assert len(table) == 4 and len(set(zip(table.n_in, table.n_out, table.rep))) == 4
    assert len(R.load_measured(tmp_path / "measured", allow_test_data=True)) == 4


def test_a_plain_sweep_merges_what_a_killed_launch_left(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    data = tmp_path / "data"
    config = SweepConfig(n_in=[8, 16], n_out=[4, 8], n_req=4, max_batch=4, min_window_s=0.0, cooldown_s=0.0,
                         engine="torch")
    grid = data / "measured" / "simulated" / "hf" / cfg.stem / "grid.csv"
    part = L.shard(config.replace(engine_settings=runner.engine_settings("torch", cuda_graphs=False)),
                   [Point(16, 4), Point(16, 8)])
    res = runner.run_sweep(cfg, part, output=L.part_path(grid, 1), workspace=data, device="cpu",
                           meter=L.RankSimulatedMeter(1), allow_test_data=True, progress=False)
    assert res.measured == 2 and res.remaining == 0
    argv = ["sweep", "--model", str(cfg), "--data", str(data), "--device", "cpu", "--allow-test-data", "--n-in", "8",
            "16", "--n-out", "4", "8", "--n-req", "4", "--max-batch", "4", "--min-window", "0", "--cooldown", "0",
            "--engine", "torch", "--graphs", "off", "--no-progress"]
    assert cli.main(argv) == 0
    # the part is merged into grid.csv, and this machine (another GPU) measures its own file: one GPU per file
    assert "4 points measured, 0 already there, 0 left" in capsys.readouterr().out
    run = R.load_measured(grid, allow_test_data=True)
    assert L.part_files(grid) == [] and len(run.data) == 2 and set(run.data.gpu_uuid) == {"simulated-1"}
    own = R.load_measured(grid.with_name("grid-none.csv"), allow_test_data=True)
    assert len(own.data) == 4 and set(own.data.gpu_uuid) == {"none"}


# -- the real launcher: two CPU ranks -----------------------------------------------------------------------


def _torchrun(tmp_path, models, *extra, env=None, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *extra,
           "-m", "energybook.cli", "sweep", "--model", *map(str, models), "--data", str(tmp_path / "data"), *ARGS]
    environ = {k: v for k, v in os.environ.items() if k not in ("ENERGYBOOK_DATA", L.KILL_ENV)}
    environ.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=180)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _check_complete(tmp_path, models, plan):
    """Every point once in each model's grid.csv, measured by the rank the plan gives it, with no part left."""
    for model in models:
        grid = tmp_path / "data" / "measured" / "simulated" / "hf" / L.model_name(model) / "grid.csv"
        run = R.load_measured(grid, allow_test_data=True)  # unique keys, checksums, UUIDs the sidecar lists
        assert sorted(zip(run.data.n_in, run.data.n_out, run.data.rep)) == sorted(p.key for p in
                                                                                 SweepConfig(**TINY).points)
        rank_of = {p.key: r for u, r in zip(plan.units, plan.ranks) if u.model == str(model) for p in u.points}
        for row in _rows(grid):
            key = (int(row["n_in"]), int(row["n_out"]), int(row["rep"]))
            assert row["gpu"] == "simulated" and row["gpu_uuid"] == f"simulated-{rank_of[key]}", row
            assert run.provenance["points"]["{}x{}#{}".format(*key)]["gpu_uuid"] == row["gpu_uuid"]
        assert L.part_files(grid) == []
        assert run.provenance["command"].startswith("torchrun --standalone --nproc-per-node 2 -m energybook.cli sweep")


def test_two_ranks_measure_two_models_each_on_its_own_device(tmp_path):
    models = [tiny_config(tmp_path), tiny_config(tmp_path, "OPT-1.3B")]
    plan = L.make_plan(models, SweepConfig(**TINY), 2)
    assert plan.by == "model" and sorted(plan.ranks) == [0, 1]
    proc = _torchrun(tmp_path, models)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"plan {plan.fingerprint}" in proc.stdout
    _check_complete(tmp_path, models, plan)


def test_a_killed_rank_resumes_with_the_same_command(tmp_path):
    models = [tiny_config(tmp_path)]
    plan = L.make_plan(models, SweepConfig(**TINY), 2)
    assert plan.by == "group" and plan.ranks == (0, 1, 0)
    grid = tmp_path / "data" / "measured" / "simulated" / "hf" / models[0].stem / "grid.csv"
    killed = _torchrun(tmp_path, models, env={L.KILL_ENV: "1:1"})  # rank 1 dies after its first point
    assert killed.returncode != 0
    assert not grid.exists()  # rank 0 never merged
    keys = [(int(r["n_in"]), int(r["n_out"]), r["gpu_uuid"]) for p in L.part_files(grid) for r in _rows(p)]
    assert len(keys) == len({k[:2] for k in keys}) < 6  # no point twice, some missing
    assert [k for k in keys if k[2] == "simulated-1"] == [(16, 4, "simulated-1")]
    again = _torchrun(tmp_path, models)  # the same command
    assert again.returncode == 0, again.stdout + again.stderr
    assert "6 of 6 points" in again.stdout
    _check_complete(tmp_path, models, plan)
    prov = json.loads(R.sidecar_path(grid).read_text())
    assert {r["gpu_uuid"] for r in prov["runs"]} == {"simulated-0", "simulated-1"}


def test_torchrun_restarts_a_dead_rank_and_the_group_resumes(tmp_path):
    models = [tiny_config(tmp_path)]
    proc = _torchrun(tmp_path, models, "--max-restarts", "1", env={L.KILL_ENV: "0:1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 of 6 points" in proc.stdout
    _check_complete(tmp_path, models, L.make_plan(models, SweepConfig(**TINY), 2))
