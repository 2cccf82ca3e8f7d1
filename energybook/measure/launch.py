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
``<data>/measured/<gpu>/<model>/grid.csv`` itself (an ordinary sweep, under the file's lock). A model shared
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

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook.measure import engines as EN
from energybook.measure import runner
from energybook.measure.estimate import NOMINAL_GPU, NOMINAL_MEMORY_BYTES, group_cost_s, nominal_batch_limit  # noqa: F401
from energybook.measure.meter import SimulatedMeter
from energybook.measure.protocol import Point, SweepConfig
from energybook.measure.protocol import plan as group_points
from energybook.model import architecture as A
from energybook.model.batch import profile_for
from energybook.store import results as R
from energybook.store.workspace import Workspace, slug

logger = logging.getLogger(__name__)

#: Tests only: ``"RANK:K"`` makes rank RANK kill itself (SIGKILL) after measuring K points in a launch's first
#: attempt (``TORCHELASTIC_RESTART_COUNT`` 0), to test resuming.
KILL_ENV = "ENERGYBOOK_LAUNCH_TEST_KILL"
#: How long a rank waits at the barrier for the slowest one (seconds): a grid of a large model takes hours.
BARRIER_TIMEOUT_S = 7 * 24 * 3600.0
#: How long a rank waits for its peers to join the launch (seconds).
STORE_TIMEOUT_S = 1800.0
_PART = re.compile(r"\.part-([0-9]+)$")
#: Most ranks a launch (and ``--plan --ranks``) may have.
MAX_RANKS = 4096
#: torchrun's variables: a process with some of them set is in a launch, or misconfigured.
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
_START = ("start the sweep with torchrun (torchrun --standalone --nproc-per-node N -m energybook.cli sweep ...), or "
          "unset RANK, LOCAL_RANK and WORLD_SIZE for a plain sweep")


# -- ranks --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a torchrun launch (torchrun's environment variables).

    Attributes:
        rank: Global rank, 0 .. world_size - 1 (``RANK``).
        local_rank: Rank on this machine (``LOCAL_RANK``): the GPU it measures on.
        world_size: Ranks in the launch (``WORLD_SIZE``).
        local_world_size: Ranks on this machine (``LOCAL_WORLD_SIZE``).
        nnodes: Machines (``GROUP_WORLD_SIZE``).
        run_id: The rendezvous id (``TORCHELASTIC_RUN_ID``).
        restart: How many times torchrun restarted the group (``TORCHELASTIC_RESTART_COUNT``).
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int = 1
    nnodes: int = 1
    run_id: str = "none"
    restart: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Ranks | None:
        """The launch this process runs in, or None outside torchrun (``RANK``, ``LOCAL_RANK`` or ``WORLD_SIZE``
        unset).

        Raises:
            ValueError: torchrun's variables are not integers, or the rank is not below the world size.
        """
        env = os.environ if env is None else env
        if not any(k in env for k in _TORCHRUN_VARS):
            return None
        missing = [k for k in _TORCHRUN_VARS if k not in env]
        if missing:
            given = [k for k in _TORCHRUN_VARS if k in env]
            raise ValueError(f"{', '.join(given)} set but not {', '.join(missing)} (torchrun sets them all): {_START}")
        try:
            world = int(env["WORLD_SIZE"])
            out = cls(rank=int(env["RANK"]), local_rank=int(env["LOCAL_RANK"]), world_size=world,
                      local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
                      nnodes=int(env.get("GROUP_WORLD_SIZE", 1)), run_id=env.get("TORCHELASTIC_RUN_ID", "none"),
                      restart=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))
        except ValueError:
            raise ValueError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them): start the "
                             "sweep with torchrun, or unset them") from None
        if not (0 <= out.rank < world and 0 <= out.local_rank):
            raise ValueError(f"RANK={out.rank} is not a rank of WORLD_SIZE={world}: start the sweep with torchrun")
        if world > MAX_RANKS:
            raise ValueError(f"WORLD_SIZE={world}: a launch has 1..{MAX_RANKS} ranks")
        return out

    def check_rendezvous(self, env: dict[str, str] | None = None) -> None:
        """Refuse a launch of several ranks without torchrun's rendezvous (``MASTER_ADDR``, ``MASTER_PORT``).

        Raises:
            ValueError: naming the missing variables and how to start the launch.
        """
        env = os.environ if env is None else env
        if self.world_size <= 1:
            return
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise ValueError(f"RANK={self.rank} of WORLD_SIZE={self.world_size} is set but not {', '.join(missing)} "
                             f"(torchrun sets them): {_START}")
        if not env["MASTER_PORT"].isdigit():
            raise ValueError(f"MASTER_PORT={env['MASTER_PORT']!r} is not a port number: {_START}")

    def device(self, requested: str) -> str:
        """This rank's torch device: ``cuda:LOCAL_RANK`` for ``"cuda"``, ``"cpu"`` for ``"cpu"`` (tests).

        Raises:
            ValueError: ``cuda:N`` with several ranks per machine (each rank has its own GPU), or another device.
        """
        d = str(requested)
        if d.startswith("cpu"):
            return "cpu"
        if d == "cuda":
            return f"cuda:{self.local_rank}"
        if d.startswith("cuda:") and self.local_world_size == 1:
            return d
        if d.startswith("cuda:"):
            raise ValueError(f"--device {d} under torchrun with {self.local_world_size} ranks per machine: each rank "
                             "measures on cuda:LOCAL_RANK; leave --device at cuda and choose the GPUs with "
                             "CUDA_VISIBLE_DEVICES")
        raise ValueError(f"--device {d}: a launch measures on cuda (cuda:LOCAL_RANK per rank), or cpu for tests")


def launch_command(ranks: Ranks, argv: Sequence[str]) -> str:
    """The command line that reruns a launch, for the provenance: torchrun with this launch's shape.

    Args:
        ranks: The launch.
        argv: The arguments after ``energybook`` (``sweep --model ...``).
    """
    shape = ("--standalone" if ranks.nnodes == 1 else f"--nnodes {ranks.nnodes} --rdzv-backend c10d "
             "--rdzv-endpoint HOST:PORT")
    return (f"torchrun {shape} --nproc-per-node {ranks.local_world_size} -m energybook.cli "
            + " ".join(shlex.quote(a) for a in argv))


def local_gpu_count() -> int:
    """The CUDA devices torch sees here (1 without torch or a GPU): ``--plan``'s default number of ranks."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA install
        return 1


class RankSimulatedMeter(SimulatedMeter):
    """The simulated meter of a rank's pretend device (tests on the CPU): constant power times wall time,
    UUID ``simulated-<local_rank>``, so that rows show which rank measured them.

    Args:
        local_rank: The rank on its machine.
        power_w: The constant power to report (watts).
    """

    def __init__(self, local_rank: int, power_w: float = 100.0):
        super().__init__(power_w=power_w)
        self.uuid = f"simulated-{int(local_rank)}"

    def device_info(self) -> dict:
        """The simulated meter's facts, with this pretend device's UUID."""
        return dict(super().device_info(), gpu_uuid=self.uuid)


# -- names and files ----------------------------------------------------------------------------------------


def model_name(model: str | Path) -> str:
    """The name a model's results folder is named after, as the torch engine names it: a checkpoint folder's
    name, a ``config.json``'s stem, or the shipped name.

    Raises:
        ValueError: a control character in the model (results files record its name on one line).
    """
    from energybook.measure.protocol import check_text

    check_text("model", str(model))
    p = Path(str(model))
    if p.is_dir():
        return p.name
    if p.suffix == ".json":
        return p.stem
    return str(model)


def results_stem(config: SweepConfig) -> str:
    """The results file's name without ``.csv`` for a wave engine: ``grid`` (prefix mode) or ``full``."""
    return "grid" if config.mode == "prefix" else "full"


def part_path(grid: Path, rank: int) -> Path:
    """Rank ``rank``'s part file of a results file: ``grid.csv`` -> ``grid.part-<rank>.csv``."""
    grid = Path(grid)
    return grid.with_name(f"{grid.stem}.part-{int(rank)}{grid.suffix}")


def part_files(grid: Path) -> list[Path]:
    """The part files beside a results file, by rank."""
    grid = Path(grid)
    if not grid.parent.is_dir():
        return []
    found = []
    for p in grid.parent.glob(f"{grid.stem}.part-*{grid.suffix}"):
        m = _PART.search(p.stem)
        if m and p.stem[:m.start()] == grid.stem:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _keys(path: Path) -> set[tuple[int, int, int]]:
    return {tuple(int(r[k]) for k in R.KEY) for r in R.ResultsFile(path).rows()}


def done_keys(grid: Path) -> set[tuple[int, int, int]]:
    """Keys (n_in, n_out, rep) of the points already in a results file or in any of its part files."""
    done = _keys(grid)
    for p in part_files(grid):
        done |= _keys(p)
    return done


class _Shard(SweepConfig):
    """A grid's protocol that measures only some of its points (a rank's share of a shared model).

    Its fields, and so the protocol its sidecar records, are the whole grid's (a part file is part of that
    grid); only :attr:`points` is narrowed. Not a dataclass of its own: :meth:`replace` keeps the share.
    """

    def __init__(self, config: SweepConfig, keys):
        super().__init__(**{f.name: getattr(config, f.name) for f in dataclasses.fields(SweepConfig)})
        object.__setattr__(self, "_keys", frozenset(tuple(k) for k in keys))

    @property
    def points(self) -> list[Point]:
        """The grid's points in this share."""
        return [p for p in super().points if p.key in self._keys]

    def replace(self, **changes: Any) -> _Shard:
        whole = SweepConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SweepConfig)})
        return _Shard(dataclasses.replace(whole, **changes), self._keys)


def shard(config: SweepConfig, points: Sequence[Point]) -> SweepConfig:
    """``config`` narrowed to ``points`` for :func:`energybook.measure.runner.run_sweep`: it measures only
    those, and records the whole grid's protocol."""
    return _Shard(config, [p.key for p in points])


# -- the plan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A piece of work the plan gives to one rank: a whole model, or one prefix group of it.

    Attributes:
        model: The model as given on the command line.
        name: Its results folder's name (:func:`model_name`).
        n_in: The group's prompt length (tokens); None for a whole model.
        rep: The group's repetition; None for a whole model.
        points: The points it measures.
        cost_ms: Estimated time (milliseconds, :func:`group_cost_s`).
    """

    model: str
    name: str
    n_in: int | None
    rep: int | None
    points: tuple[Point, ...]
    cost_ms: int

    @property
    def label(self) -> str:
        """``model`` or ``model n_in N rep R``."""
        return self.name if self.n_in is None else f"{self.name} n_in {self.n_in} rep {self.rep}"


@dataclass(frozen=True)
class Plan:
    """Who measures what in a launch (:func:`make_plan`).

    Attributes:
        models: The models, in command-line order.
        world_size: Ranks.
        by: ``"model"`` (whole models) or ``"group"`` (prefix groups).
        units: The units, in canonical order (models, then rep, n_in, n_out).
        ranks: The rank of each unit.
        stem: The results file's name without ``.csv`` (``grid`` or ``full``).
    """

    models: tuple[str, ...]
    world_size: int
    by: str
    units: tuple[Unit, ...]
    ranks: tuple[int, ...]
    stem: str = "grid"

    def for_rank(self, rank: int) -> list[Unit]:
        """The units of one rank, in canonical order."""
        return [u for u, r in zip(self.units, self.ranks) if r == rank]

    def ranks_of(self, name: str) -> set[int]:
        """The ranks that measure a model (by its results name)."""
        return {r for u, r in zip(self.units, self.ranks) if u.name == name}

    def owner(self, name: str) -> int | None:
        """The rank that measures all of a model, or None when several share it."""
        ranks = self.ranks_of(name)
        return next(iter(ranks)) if len(ranks) == 1 else None

    def models_of(self, rank: int) -> list[str]:
        """The models a rank measures (as given on the command line), in command-line order."""
        mine = {u.model for u in self.for_rank(rank)}
        return [m for m in self.models if m in mine]

    @property
    def loads_ms(self) -> list[int]:
        """Estimated time of each rank (milliseconds)."""
        loads = [0] * self.world_size
        for u, r in zip(self.units, self.ranks):
            loads[r] += u.cost_ms
        return loads

    @property
    def fingerprint(self) -> str:
        """A short hash of the assignment: equal on every rank of a launch."""
        rows = [[u.name, u.n_in, u.rep, [list(p.key) for p in u.points], u.cost_ms, r]
                for u, r in zip(self.units, self.ranks)]
        text = json.dumps([self.world_size, self.by, self.stem, rows], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def target(self, unit: Unit, rank: int) -> str:
        """The file a rank writes a unit's points to: ``grid.csv`` for an owned model, else its part file."""
        return f"{self.stem}.csv" if self.owner(unit.name) is not None else f"{self.stem}.part-{rank}.csv"

    def describe(self) -> str:
        """The plan as text: per rank, its estimated minutes and its units with their files."""
        why = ("at least as many models as ranks" if self.by == "model" else "fewer models than ranks")
        lines = [f"plan {self.fingerprint}: {len(self.models)} model(s) on {self.world_size} rank(s), by "
                 f"{'whole model' if self.by == 'model' else 'prefix group'} ({why}), {len(self.units)} units",
                 "estimated minutes: roofline at a nominal GPU plus warm-ups, minimum windows and cool-downs "
                 "(for balancing, not an ETA)"]
        for r, load in enumerate(self.loads_ms):
            units = self.for_rank(r)
            lines.append(f"rank {r}: est. {load / 60e3:.2f} min, {len(units)} unit(s), "
                         f"{sum(len(u.points) for u in units)} points")
            for u in units:
                lines.append(f"  {u.label:40s} {len(u.points):4d} points  est. {u.cost_ms / 60e3:8.2f} min  -> "
                             f"{self.target(u, r)}")
        return "\n".join(lines)


def make_plan(models: Sequence[str | Path], config: SweepConfig, world_size: int) -> Plan:
    """Plan a launch: units (whole models or prefix groups), priced and assigned by greedy
    longest-processing-time (module docstring). A pure function of its arguments.

    Args:
        models: Shipped model names, config.json files or checkpoint folders.
        config: The protocol.
        world_size: Ranks.

    Raises:
        ValueError: no models, one results folder named twice, an unknown model, an engine that runs
            benchmark commands (TensorRT-LLM, vLLM), or a world size below 1.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"the number of ranks must be a positive integer, got {world_size!r}")
    if world_size > MAX_RANKS:
        raise ValueError(f"the number of ranks must be 1..{MAX_RANKS}, got {world_size}")
    models = [str(m) for m in models]
    if not models:
        raise ValueError("give at least one --model")
    if EN.get_engine(config.engine).kind != "wave":
        raise ValueError(f"--engine {config.engine} runs its own benchmark command, which a launch does not place on "
                         "a GPU: measure it with a plain `energybook sweep`, one GPU at a time")
    names = [model_name(m) for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"the models {twice} are named twice (their results would share a folder): give each once")
    by = "model" if len(models) >= world_size else "group"
    units = []
    for model, name in zip(models, names):
        arch = A.load(model)
        limit = functools.partial(nominal_batch_limit, arch, max_batch=config.max_batch,
                                  profile=profile_for(config.engine))
        groups = group_points(config.points, limit, config.n_req, config.max_batch,
                              "full" if config.mode == "full" else "prefix")
        groups.sort(key=lambda g: (g.rep, g.n_in, g.n_outs))
        pieces = [Unit(model, name, g.n_in, g.rep, tuple(Point(g.n_in, n, g.rep) for n in g.n_outs),
                       max(1, round(group_cost_s(arch, g, config) * 1000))) for g in groups]
        if by == "model":
            pts = tuple(p for u in pieces for p in u.points)
            units.append(Unit(model, name, None, None, pts, sum(u.cost_ms for u in pieces)))
        else:
            units.extend(pieces)
    loads = [0] * world_size
    ranks = [0] * len(units)
    for i in sorted(range(len(units)), key=lambda i: (-units[i].cost_ms, i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        ranks[i] = r
        loads[r] += units[i].cost_ms
    return Plan(tuple(models), world_size, by, tuple(units), tuple(ranks), results_stem(config))


# -- merging part files -------------------------------------------------------------------------------------


#: What :func:`merge_parts` did: the results file, the parts merged (and removed), the points copied and those
#: already there, the parts skipped (:class:`energybook.store.merge.Absorbed`).
Merge = R.Absorbed


def merge_parts(grid: str | Path) -> Merge:
    """Merge the part files of a results file into it, then remove them: :func:`energybook.store.merge.absorb`
    (module docstring).

    Args:
        grid: The results CSV (``.../grid.csv``); its part files are ``grid.part-<rank>.csv`` beside it.

    Returns:
        What was merged.

    Raises:
        energybook.store.results.LockedError: the results file or a part is being written.
        energybook.store.results.DataError: a part or the results file differs from its sidecar, holds
            another model, protocol or GPU, a CSV without a sidecar has rows, or a point is found twice
            with different values. Nothing is written then.
    """
    return R.absorb(grid, part_files(Path(grid)))


# -- running ------------------------------------------------------------------------------------------------


def _leftover_parts(ws: Workspace, output: str | Path | None, name: str, stem: str) -> bool:
    """Whether a launch left part files of this model (under any GPU's folder, or beside ``output``)."""
    if output is not None:  # resolved as run_sweep resolves it
        return bool(part_files(Path(output).expanduser().resolve()))
    return any(part_files(folder / slug(name) / f"{stem}.csv") for folder in ws.measured_dir.glob("*")
               if folder.is_dir())


def sweep(model: str | Path, config: SweepConfig, *, output: str | Path | None = None,
          workspace: Workspace | str | Path | None = None, device: str = "cuda", meter=None,
          **kwargs: Any) -> runner.SweepResult:
    """One model's sweep outside torchrun: :func:`energybook.measure.runner.run_sweep`, after merging the part
    files a killed launch left (so their points are neither measured again nor lost).

    Args:
        model: Shipped model name, config.json path or checkpoint directory.
        config: The protocol.
        output: Results CSV inside the workspace (default ``measured/<gpu>/<model>/grid.csv``).
        workspace: The data folder.
        device: ``"cuda"``, ``"cuda:N"`` or ``"cpu"`` (tests).
        meter: A meter (default: the device's, as ``run_sweep`` makes it).
        **kwargs: Other :func:`~energybook.measure.runner.run_sweep` arguments.

    Raises:
        energybook.store.results.LockedError: a launch is still writing a part file of this model.
    """
    model_name(model)  # refuses a control character before anything runs
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    if EN.get_engine(config.engine).kind == "wave" and _leftover_parts(ws, output, model_name(model),
                                                                       results_stem(config)):
        if meter is None:
            meter = runner._default_meter(device, config)
        grid = runner.results_path(ws, output, meter.device_info().get("gpu", "gpu"), model_name(model),
                                   results_stem(config))
        merged = merge_parts(grid)
        if merged.parts:
            logger.warning("%s: merged %d points from %d part file(s) of an earlier launch", grid, merged.merged,
                           len(merged.parts))
    return runner.run_sweep(model, config, output=output, workspace=ws, device=device, meter=meter, **kwargs)


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
               command: str | None = None, time_limit_s: float | None = None, engine_kwargs: dict | None = None,
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
        engine_kwargs: Extra arguments for the engine's constructor.
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
                  engine_kwargs=engine_kwargs, progress=progress)
    with _Group(ranks) as group:
        _check_peers(group, ranks, info, plan, ws)
        budget = _kill_budget(ranks)
        say(f"{tag} plan {plan.fingerprint} ({len(plan.units)} units by {plan.by}): measuring on {dev}, {gpu} "
            f"{info.get('gpu_uuid')}, {len(plan.for_rank(ranks.rank))} unit(s)")
        for model in plan.models_of(ranks.rank):
            name = model_name(model)
            grid = runner.results_path(ws, output, gpu, name, plan.stem)
            left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                say(f"{tag} {name}: not started (time limit); rerun the same command to resume")
                continue
            if budget == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            if plan.owner(name) == ranks.rank:
                merged = merge_parts(grid)
                if merged.parts:
                    say(f"{tag} {grid}: merged {merged.merged} points from {len(merged.parts)} part file(s)")
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
                grid = runner.results_path(ws, output, gpu, name, plan.stem)
                merged = merge_parts(grid)
                if merged.parts:
                    say(f"{tag} {grid}: merged {merged.merged} points from {len(merged.parts)} part file(s)")
                have = len(_keys(grid) & {p.key for p in config.points})
                missing = len(config.points) - have
                say(f"{tag} {grid}: {have} of {len(config.points)} points"
                    + (f"; {missing} left: rerun the same command to resume" if missing else ""))
    return plan
