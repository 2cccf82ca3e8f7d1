"""A launch's plan and files (:mod:`energybook.measure.launch`, whose docstring tells the rules): the names of
results and part files, a rank's share of a grid (:func:`shard`), who measures what (:func:`make_plan`), and the
merge of part files (:func:`merge_parts`). Everything here is a pure function of its arguments or of the files.

Every name here is also importable from :mod:`energybook.measure.launch`.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook.measure import engines as EN
from energybook.measure.estimate import group_cost_s, nominal_batch_limit
from energybook.measure.protocol import Point, SweepConfig
from energybook.measure.protocol import plan as group_points
from energybook.measure.ranks import MAX_RANKS
from energybook.model import architecture as A
from energybook.model.batch import profile_for
from energybook.store import results as R

_PART = re.compile(r"\.part-([0-9]+)$")


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
    """The results file's name without ``.csv`` for a wave engine: ``grid`` (prefix mode), ``full`` or ``sampled``."""
    return "grid" if config.mode == "prefix" else config.mode


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
