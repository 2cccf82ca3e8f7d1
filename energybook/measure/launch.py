"""Sweeps across GPUs and machines through torch's elastic launcher, ``torchrun``.

``energybook sweep`` started by ``torchrun`` runs as one *rank* per process. Nothing here starts processes
or schedules work at run time: torchrun starts the ranks (on one machine, or on several through its
rendezvous), restarts them if asked (``--max-restarts``), and every rank works out its own share from the
command line alone.

**Devices.** Rank ``r`` measures on ``cuda:LOCAL_RANK`` with its own meter
(:meth:`energybook.measure.meter.Meter.for_device`, which opens NVML by the torch device's UUID). On the CPU
(tests) every rank runs on ``"cpu"`` with a simulated meter of its own pretend device, UUID
``simulated-<LOCAL_RANK>`` (:class:`RankSimulatedMeter`). At start the ranks exchange their host, GPU name,
GPU UUID and plan over a gloo process group, and refuse to run when two ranks would share a GPU, when the GPUs
are of different models (the results folder is named after the GPU), when the plans differ, or when the
ranks do not see one data folder (a file written by rank 0 must be visible to every rank: on several
machines ``--data`` must be a shared file system).

**Plan** (:func:`make_plan`, a pure function of the models, the protocol and the number of ranks, so every
rank computes the same plan with no communication; ``energybook sweep ... --plan`` prints it):

* with at least as many models as ranks, the units are **whole models**; with fewer, they are **prefix
  groups**: all ``n_out`` of one ``(n_in, rep)`` of one model at one batch (one point in ``full`` mode), as
  :func:`energybook.measure.protocol.plan` groups them with the batch a nominal 80 GB GPU holds
  (:func:`nominal_batch_limit`; the engine regroups at the batch the real GPU holds);
* each unit's cost is an estimate in seconds (:func:`group_cost_s`): the roofline time
  (:mod:`energybook.model.roofline`) of its warm-up and its generation at a nominal GPU
  (:data:`NOMINAL_GPU`), plus the protocol's minimum windows and cool-downs. It is for balancing, not an
  ETA: the three grids measured on the H100 (1 to 1.5 B parameters) took 1.8 to 2.5 times this estimate;
* units go to ranks by greedy longest-processing-time: in order of decreasing cost (ties in the order of
  the command line, then ``rep``, ``n_in``), each to the least-loaded rank (ties to the lower rank). Costs
  are whole milliseconds, so the sums are exact on every machine.

**Files.** A model whose units all fall on one rank is *owned* by it: that rank writes
``<data>/measured/<gpu>/<engine>/<model>/grid.csv`` itself (an ordinary sweep, under the file's lock). A model shared
by several ranks is written by each of them into its own *part file* beside it, ``grid.part-<rank>.csv``: a
complete results file with its sidecar and its own lock, holding the points of that rank's units. After all
ranks are done (a barrier), rank 0 merges every part file into ``grid.csv`` (:func:`merge_parts`):

* under the locks of the grid and of every part; a part still locked by a writer refuses the merge
  (:class:`energybook.store.results.LockedError`), so an independent second writer is refused as before;
* every part is verified against its sidecar first (an edited one is refused, never re-blessed; an
  interrupted append is recovered), and a point found twice with different values refuses the merge before
  anything is written (the same point with identical values is one point, already merged);
* rows are copied verbatim, each with its GPU and GPU UUID; each run of a part is added to the grid's
  ``runs`` and each point's log entry keeps its times and GPU UUID, plus its part file and host;
* the part files are removed only after the merged ``grid.csv`` is checked to hold every one of their rows.

Until it is merged, a part file is a results file like any other (the catalog lists it, and loads it).

**Resuming.** Rerunning the same command recomputes the same plan; every rank skips the points already in
``grid.csv`` or in any part file of its model (a rank killed in an earlier launch, with any number of
ranks, left them there). An owner, and a plain ``energybook sweep`` outside torchrun, first merges the part
files a killed launch left, then measures what is missing. With ``torchrun --max-restarts N`` torchrun
itself restarts a group whose rank died, and the restarted ranks resume the same way.

The torchrun environment (:class:`Ranks`) lives in :mod:`energybook.measure.ranks`; the plan, the part files
and their merge in :mod:`energybook.measure.plan`. Their names are importable from here too.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from energybook.measure import runner
from energybook.measure.estimate import NOMINAL_GPU, NOMINAL_MEMORY_BYTES, group_cost_s, nominal_batch_limit  # noqa: F401
from energybook.measure.plan import (  # noqa: F401 - re-exported: names of this module before the split
    _PART,
    Merge,
    Plan,
    Unit,
    _keys,
    _Shard,
    done_keys,
    make_plan,
    merge_parts,
    model_name,
    part_files,
    part_path,
    results_stem,
    shard,
)
from energybook.measure.protocol import Point, SweepConfig  # noqa: F401
from energybook.measure.protocol import plan as group_points  # noqa: F401
from energybook.measure.ranks import (  # noqa: F401 - re-exported: names of this module before the split
    _START,
    _TORCHRUN_VARS,
    MAX_RANKS,
    Ranks,
    RankSimulatedMeter,
    launch_command,
    local_gpu_count,
)
from energybook.model import architecture as A  # noqa: F401
from energybook.store import results as R  # noqa: F401
from energybook.store.workspace import Workspace, slug

logger = logging.getLogger(__name__)

#: Tests only: ``"RANK:K"`` makes rank RANK kill itself (SIGKILL) after measuring K points in a launch's first
#: attempt (``TORCHELASTIC_RESTART_COUNT`` 0), to test resuming.
KILL_ENV = "ENERGYBOOK_LAUNCH_TEST_KILL"
#: How long a rank waits at the barrier for the slowest one (seconds): a grid of a large model takes hours.
BARRIER_TIMEOUT_S = 7 * 24 * 3600.0
#: How long a rank waits for its peers to join the launch (seconds).
STORE_TIMEOUT_S = 1800.0


# -- running ------------------------------------------------------------------------------------------------


sweep = runner.run_sweep
"""One model's sweep outside torchrun: :func:`energybook.measure.runner.run_sweep` (which first merges the part
files a killed launch left, so that their points are neither measured again nor lost)."""


class _Group:
    """The launch's gloo process group: gathers small facts and waits for every rank."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.dist = None

    def __enter__(self) -> _Group:
        if self.ranks.world_size > 1:
            import datetime

            import torch.distributed as dist

            r = self.ranks
            timeout = datetime.timedelta(seconds=BARRIER_TIMEOUT_S)
            # torchrun's store outlives a restart: keys of each attempt go under their own prefix, or a restarted
            # group reads its peers' addresses from the attempt before and never connects.
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), r.world_size,
                                  is_master=not agent and r.rank == 0,
                                  timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
            prefixed = dist.PrefixStore(f"energybook/{r.run_id}/attempt-{r.restart}", store)
            dist.init_process_group("gloo", store=prefixed, rank=r.rank, world_size=r.world_size, timeout=timeout)
            self.dist = dist
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.dist is not None and exc_type is None:  # after an error the peers may wait in a collective
            self.dist.destroy_process_group()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, by rank."""
        if self.dist is None:
            return [obj]
        out: list[Any] = [None] * self.ranks.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.dist is not None:
            self.dist.barrier()


def _check_peers(group: _Group, ranks: Ranks, info: dict, plan: Plan, ws: Workspace) -> None:
    """Refuse a launch whose ranks share a GPU, have GPUs of several models, differ in plan, or do not see one
    data folder (same verdict on every rank)."""
    token = ws.root / ".work" / "launch" / f"{slug(ranks.run_id)}-{ranks.restart}.token"
    nonce = ""
    if ranks.rank == 0:
        nonce = secrets.token_hex(8)
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text(nonce)
    facts = dict(host=platform.node(), gpu=info.get("gpu"), uuid=info.get("gpu_uuid"), plan=plan.fingerprint,
                 nonce=nonce)
    peers = group.gather(facts)
    try:
        sees = token.read_text() == peers[0]["nonce"]
    except OSError:
        sees = False
    seen = group.gather(sees)  # every rank has read the token once this returns
    if ranks.rank == 0:
        token.unlink(missing_ok=True)
    owners: dict[tuple, int] = {}
    for r, f in enumerate(peers):
        other = owners.setdefault((f["host"], f["uuid"]), r)
        if other != r:
            raise RuntimeError(f"ranks {other} and {r} both measure on GPU {f['uuid']} of {f['host']}: each rank "
                               "needs its own GPU (--nproc-per-node at most the GPUs of a machine; check "
                               "CUDA_VISIBLE_DEVICES)")
    gpus = sorted({str(f["gpu"]) for f in peers})
    if len(gpus) > 1:
        raise RuntimeError(f"the ranks have GPUs of several models ({', '.join(gpus)}): one launch measures on one GPU "
                           "model (its results folder is named after it); launch each kind separately")
    plans = sorted({f["plan"] for f in peers})
    if len(plans) > 1:
        raise RuntimeError(f"the ranks computed different plans ({', '.join(plans)}): run the same energybook and "
                           "the same command on every machine")
    blind = [r for r, ok in enumerate(seen) if not ok]
    if blind:
        raise RuntimeError(f"ranks {blind} do not see rank 0's data folder {ws.root}: on several machines give --data "
                           "a folder shared by all of them (NFS, or Lustre mounted with flock)")


def _kill_budget(ranks: Ranks) -> int | None:
    """Points this rank may measure before the test hook (:data:`KILL_ENV`) kills it; None without the hook."""
    spec = os.environ.get(KILL_ENV, "")
    if not spec or ranks.restart:
        return None
    rank, _, k = spec.partition(":")
    if not (rank.isdigit() and k.isdigit()):
        raise ValueError(f"{KILL_ENV}={spec!r}: give RANK:POINTS (tests only)")
    return int(k) if int(rank) == ranks.rank else None


def run_launch(models: Sequence[str | Path], config: SweepConfig, ranks: Ranks, *, output: str | Path | None = None,
               workspace: Workspace | str | Path | None = None, device: str = "cuda", allow_test_data: bool = False,
               command: str | None = None, time_limit_s: float | None = None,
               progress: bool = True, say: Callable[[str], None] = print) -> Plan:
    """This rank's part of a launch: its share of the plan, then (rank 0, after every rank is done) the merge.

    Args:
        models: Shipped model names, config.json files or checkpoint folders.
        config: The protocol.
        ranks: This process's place in the launch (:meth:`Ranks.from_env`).
        output: One results CSV instead of the default (with one model only).
        workspace: The data folder (shared by all machines of a launch).
        device: ``"cuda"`` (``cuda:LOCAL_RANK`` per rank) or ``"cpu"`` with ``allow_test_data`` (tests).
        allow_test_data: Permit the CPU and the simulated meter; the data are labelled test data.
        command: The command line recorded in the sidecars (default: :func:`launch_command`).
        time_limit_s: Start no new group after this many seconds (this rank's whole share).
        progress: Show a progress bar per model.
        say: Where the one-line reports go.

    Returns:
        The plan.

    Raises:
        ValueError: bad arguments (checked before anything runs, the same on every rank).
        RuntimeError: no GPU for this rank, two ranks on one GPU, ranks that disagree (module docstring).
        energybook.store.results.DataError: a results or part file is locked, edited, or conflicting.
    """
    t0 = time.perf_counter()
    if output is not None and len(models) > 1:
        raise ValueError("--output names one file: give one --model with it, or leave --output out")
    ranks.check_rendezvous()
    plan = make_plan(models, config, ranks.world_size)
    dev = ranks.device(device)
    if dev == "cpu" and not allow_test_data:
        raise RuntimeError("device='cpu' measures nothing real: pass --allow-test-data (tests only) or measure on "
                           "NVIDIA GPUs with --device cuda")
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    if dev == "cpu":
        meter = RankSimulatedMeter(ranks.local_rank)
    else:
        from energybook.measure.meter import Meter

        meter = Meter.for_device(dev, poll_s=config.meter_poll_s)
    info = meter.device_info()
    gpu = info.get("gpu", "gpu")
    tag = f"[rank {ranks.rank}/{ranks.world_size}]"
    common = dict(workspace=ws, device=dev, meter=meter, allow_test_data=allow_test_data,
                  command=command or launch_command(ranks, ["sweep", *map(str, models)]),
                  progress=progress)
    with _Group(ranks) as group:
        _check_peers(group, ranks, info, plan, ws)
        budget = _kill_budget(ranks)
        say(f"{tag} plan {plan.fingerprint} ({len(plan.units)} units by {plan.by}): measuring on {dev}, {gpu} "
            f"{info.get('gpu_uuid')}, {len(plan.for_rank(ranks.rank))} unit(s)")
        for model in plan.models_of(ranks.rank):
            name = model_name(model)
            grid = runner.results_path(ws, output, gpu, name, plan.stem, engine=config.engine)
            left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                say(f"{tag} {name}: not started (time limit); rerun the same command to resume")
                continue
            if budget == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            if plan.owner(name) == ranks.rank:  # run_sweep first merges the part files of an earlier launch
                cfg, path = config, output
            else:
                done = done_keys(grid)
                todo = [p for u in plan.for_rank(ranks.rank) if u.name == name for p in u.points if p.key not in done]
                if not todo:
                    say(f"{tag} {name}: nothing left of this rank's share")
                    continue
                cfg, path = shard(config, todo), part_path(grid, ranks.rank)
            res = runner.run_sweep(model, cfg, output=path, time_limit_s=left, stop_after=budget, **common)
            say(f"{tag} {name}: {res.measured} points measured, {res.skipped} already there, {res.remaining} left, "
                f"{res.seconds / 60:.2f} min -> {res.path}")
            if budget is not None:
                budget -= res.measured
                if budget <= 0:
                    os.kill(os.getpid(), signal.SIGKILL)  # the test hook: a rank dies with its work half done
        group.barrier()
        if ranks.rank == 0:
            for model in plan.models:
                name = model_name(model)
                grid = runner.results_path(ws, output, gpu, name, plan.stem, engine=config.engine)
                merged = merge_parts(grid)
                if merged.parts:
                    say(f"{tag} {grid}: merged {merged.merged} points from {len(merged.parts)} part file(s)")
                have = len(_keys(grid) & {p.key for p in config.points})
                missing = len(config.points) - have
                say(f"{tag} {grid}: {have} of {len(config.points)} points"
                    + (f"; {missing} left: rerun the same command to resume" if missing else ""))
    return plan
