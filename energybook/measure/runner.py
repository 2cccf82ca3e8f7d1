"""Resumable energy sweeps: a :class:`~energybook.measure.protocol.SweepConfig`, an engine and a meter
in, a results file out.

:func:`run_sweep` measures every point of the config's grid that its results file does not hold yet:

* a **wave engine** (:class:`~energybook.measure.engines.WaveEngine`, the torch engine) is driven group by
  group (:func:`~energybook.measure.protocol.plan`): a warm-up at the group's real batch, the measured
  generation with the meter's windows at every ``n_out`` checkpoint, then a cool-down; groups run in a
  seeded shuffled order;
* a **command engine** (:class:`~energybook.measure.engines.CommandEngine`) runs one benchmark command
  per point under the meter.

Both build their rows with :func:`make_row` into one record type, :class:`energybook.store.results.Row`,
appended to the results file as each point finishes. The file is locked for the sweep's lifetime, so a
second writer is refused; a killed sweep resumes on rerun with no point lost or duplicated.

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import logging
import math
import platform
import random
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from energybook.measure import engines as EN
from energybook.measure import estimate, gpu_support
from energybook.measure.meter import MeterError
from energybook.measure.plan import merge_parts, model_name, part_files, results_stem
from energybook.measure.protocol import Group, Point, SweepConfig, plan
from energybook.measure.rows import Window, make_row, utc  # noqa: F401 - re-exported: this module's names before
from energybook.measure.rows import measuring as _measuring
from energybook.measure.settings import to_record as settings_record
from energybook.store import results as R
from energybook.store.peaks import find_peaks
from energybook.store.workspace import PathError, Workspace, checkout_root

logger = logging.getLogger(__name__)

WORKLOAD = ("n_req identical requests of exactly n_in random prompt tokens and n_out greedy output tokens "
            "(EOS ignored, counts verified); energy_j from NVML's total-energy counter")




def source_commit() -> str | None:
    """The git commit of the energybook checkout this package runs from (``+dirty`` when it has local
    changes), or None for an installed package."""
    root = checkout_root(Path(__file__).parent)
    if root is None:
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(meter, engine, engine_name: str) -> dict[str, Any]:
    """Versions and device facts for the provenance sidecar."""
    import energybook

    info: dict[str, Any] = dict(meter.device_info())
    info.update(python=platform.python_version(), host=platform.node(), energybook=energybook.__version__,
                energybook_commit=source_commit())
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, cuda=torch.version.cuda, transformers=transformers.__version__)
    except ImportError:  # pragma: no cover - an external engine on a machine without torch
        pass
    if EN.is_command_engine(engine):
        described = engine.describe()
        settings = getattr(engine, "settings", None)
        info.update(engine=described, engine_name=engine_name, dtype=None, device="cuda",
                    weights=getattr(settings, "load_format", None) or "as built")
        return info
    settings = dict(getattr(engine, "settings", {}) or {})
    info.update(engine=settings, engine_name=engine_name, dtype=settings.get("dtype"),
                weights=getattr(engine, "weights", "?"), device=settings.get("device"))
    return info


@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        path: The results CSV.
        measured: Points measured in this call.
        skipped: Points found already done.
        seconds: Wall time of this call (seconds).
        log: What happened besides measuring (time limit, out-of-memory retries).
        remaining: Points left for a rerun.
        config: The protocol that was measured.
    """

    path: Path
    measured: int
    skipped: int
    seconds: float
    log: list[str] = field(default_factory=list)
    remaining: int = 0
    config: SweepConfig | None = None

    @property
    def complete(self) -> bool:
        """Whether every point of the grid is in the file."""
        return self.remaining == 0


def _oom_types() -> tuple[type, ...]:
    try:
        import torch

        return (torch.cuda.OutOfMemoryError,)
    except ImportError:  # pragma: no cover
        return ()


def _default_meter(device: str, config: SweepConfig, external: bool = False):
    if str(device).startswith("cpu"):
        from energybook.measure.meter import SimulatedMeter

        return SimulatedMeter()
    from energybook.measure.meter import Meter

    kwargs = dict(poll_s=config.meter_poll_s, sampler=config.meter_sampler)
    if external:  # another process runs the work: nothing here to synchronise
        kwargs["sync"] = None
    return Meter.for_device(device, **kwargs)


def results_path(workspace: Workspace, output: str | Path | None, gpu: str, model: str, stem: str, *,
                 engine: str) -> Path:
    """The results CSV: ``output`` (checked to stay inside the workspace) or the workspace's default,
    ``measured/<gpu>/<engine>/<model>/<stem>.csv`` (``engine``: the registered name, ``torch`` filed as ``hf``)."""
    if output is None:
        return workspace.results_path(gpu, model, stem, engine=engine)
    out = Path(output).expanduser().resolve()
    if out.suffix != ".csv":
        raise PathError(f"--output {output} must name a .csv file (its sidecar is the same name with .json)")
    return workspace.inside(out)


def build_engine(model: str | Path, config: SweepConfig, *, device: str = "cuda",
                 workspace: Workspace | str | Path | None = None):
    """The engine a sweep of ``config`` measures with: ``config.engine`` built from ``config.engine_settings``
    (default: the engine's defaults), with the sweep's device, batch cap, seed and dummy data. Benchmarks build
    engines here too, so that they time what a sweep measures.

    Raises:
        ValueError: an unknown engine, or settings of another engine.
        energybook.measure.engines.EngineUnavailable: the engine cannot run here.
        energybook.measure.gpu_support.GpuUnsupported: the GPU cannot run the engine or the dtype asked for
            (:func:`energybook.measure.gpu_support.settings_for_device`).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    run: dict[str, Any] = dict(device=device, max_batch=config.max_batch, seed=config.seed)
    if (config.weight_init, config.prompts) != (SweepConfig.weight_init, SweepConfig.prompts):  # not default
        run.update(weight_init=config.weight_init, prompts=config.prompts)
    # what this GPU's generation runs: an engine it cannot run refused, bf16 fallen back to fp16 where it is missing
    settings = gpu_support.settings_for_device(config.engine, config.engine_settings, model, device)
    return EN.make_engine(config.engine, model, ws.engine_dir(config.engine), settings=settings, wave=run)


def engine_settings(engine: str, **fields: Any) -> Any:
    """The settings of a registered ``engine``: its defaults, with ``fields`` changed (checked).

    Example: ``engine_settings("lean", cuda_graphs=False, decode_attention="triton")``.

    Raises:
        ValueError: an unknown engine, an engine without settings, or a field it does not have or a value
            the field does not take.
    """
    from energybook.measure.settings import check

    cls = EN.get_engine(engine).settings_class()
    if cls is None:
        raise ValueError(f"the {engine} engine has no settings")
    unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"the {engine} engine has no setting {', '.join(unknown)}; it has "
                         f"{', '.join(cls.__dataclass_fields__)}")
    return check(cls(**fields))


def run_sweep(model: str | Path, config: SweepConfig | None = None, *, output: str | Path | None = None,
              workspace: Workspace | str | Path | None = None, engine: Any = None, meter=None, device: str = "cuda",
              allow_test_data: bool = False, command: str | None = None, progress: bool = True,
              stop_after: int | None = None, time_limit_s: float | None = None, **protocol: Any) -> SweepResult:
    """Measure a grid of points for one model, appending each finished point to its results file.

    Args:
        model: Shipped model name, config.json path or checkpoint directory (for an external engine:
            what its ``--model`` takes).
        config: The protocol; default ``SweepConfig(**protocol)``.
        output: Results CSV inside the workspace; default ``measured/<gpu>/<engine>/<model>/grid.csv``
            (``full.csv`` in full mode, ``<engine>-grid.csv`` for an external engine).
        workspace: The data folder (:meth:`energybook.store.workspace.Workspace.resolve`).
        engine: An engine's registered name (default ``config.engine``), or an engine object.
        meter: A meter (default: NVML on ``device``'s GPU; on the CPU, the simulated meter).
        device: ``"cuda"``, ``"cuda:N"``, or ``"cpu"`` with ``allow_test_data=True`` (tests).
        allow_test_data: Permit the CPU or a simulated meter; the data are labelled test data.
        command: The command line that regenerates the file (recorded in the sidecar).
        progress: Show a tqdm progress bar with an ETA.
        stop_after: Stop after this many points (tests of resumption).
        time_limit_s: Start no new group after this many seconds; a rerun resumes the rest.
        **protocol: :class:`SweepConfig` fields, when ``config`` is not given.

    Raises:
        ValueError: bad parameters (unknown model or engine, non-positive lengths, lengths the model
            cannot serve), checked before anything is measured.
        energybook.store.results.DataError: the results file is corrupt, edited, or locked by another sweep.
        RuntimeError: no GPU or NVML (``MeterUnavailable``), or test data not allowed.
    """
    t_start = time.perf_counter()
    folder_name = model_name(model)  # refuses a control character before anything runs
    if config is None:
        config = SweepConfig(**protocol)
    elif protocol:
        raise ValueError(f"give the protocol as config or as keywords, not both (got {sorted(protocol)})")
    if isinstance(engine, str):
        config = config.replace(engine=engine)
        engine = None
    if time_limit_s is not None and not (isinstance(time_limit_s, (int, float)) and time_limit_s > 0
                                         and math.isfinite(time_limit_s)):
        raise ValueError(f"time_limit_s must be a positive number of seconds, got {time_limit_s!r}")
    if str(device).startswith("cpu") and not allow_test_data:
        raise RuntimeError("device='cpu' measures nothing real: pass allow_test_data=True (tests only) or run on an "
                           "NVIDIA GPU with device='cuda'")
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    if config.mode == "sampled" and config.engine != "lean":
        raise ValueError(f"the sampled protocol measures with the lean engine, not {config.engine!r}: add "
                         "--engine lean, or use --mode prefix (or full) with this engine")
    if engine is None:
        engine = build_engine(model, config, device=device, workspace=ws)
    external = EN.is_command_engine(engine)
    if external and config.mode != "external":
        config = config.replace(mode="external")
    if not external:
        check = getattr(engine, "check_lengths", None)
        if check is not None:
            longest = max(config.points, key=lambda p: p.n_in + p.n_out)  # the grid's or the pairs' longest
            check(longest.n_in, longest.n_out)
    if meter is None:
        meter = _default_meter(device, config, external)
    simulated = getattr(meter, "method", "") == "simulated"
    if simulated and not allow_test_data:
        raise RuntimeError("a simulated meter measures nothing: pass allow_test_data=True (tests only)")
    env = environment(meter, engine, config.engine)
    settings = getattr(engine, "engine_settings", None)  # what make_engine built it with
    name = str(model) if external else getattr(engine, "name", None) or folder_name
    if external:
        name = Path(name).name if Path(name).exists() else name
    stem = f"{config.engine}-grid" if external else results_stem(config)
    path = results_path(ws, output, env.get("gpu", "gpu"), name, stem, engine=config.engine)
    if not external and part_files(path):  # a killed torchrun launch left them: merged, neither lost nor redone
        merged = merge_parts(path)
        if merged.parts:
            logger.warning("%s: merged %d points from %d part file(s) of an earlier launch", path, merged.merged,
                           len(merged.parts))
    if output is None:  # one file per GPU: another board of the same kind gets its own file beside the first
        board = R.gpu_file(path, env.get("gpu_uuid"))
        if board != path:
            logger.warning("%s holds another GPU's measurements; this GPU's go to %s", path, board.name)
            path = board
    test_data = bool(allow_test_data and (str(device).startswith("cpu") or simulated))
    prov = dict(env, model=name, protocol=config.to_record(), meter_method=getattr(meter, "method", "?"),
                test_data=test_data, command=command or " ".join(shlex.quote(a) for a in sys.argv),
                started_at=utc(), workload=WORKLOAD)
    if settings is not None:
        prov["engine_settings"] = settings_record(settings)
    peaks = find_peaks(ws, env.get("gpu_uuid", "none"))
    if peaks is not None:  # the measured peaks of this GPU (`energybook peaks`)
        prov["peaks_file"] = peaks.relative_to(ws.root).as_posix()
    with R.ResultsFile(path) as rf:
        rf.start(prov)
        done = rf.done()
        todo = [p for p in config.points if p.key not in done]
        skipped = len(config.points) - len(todo)
        loop = _sweep_commands if external else _sweep_waves
        if config.mode == "sampled" and not external:
            from energybook.measure.sampled_sweep import sweep_sampled  # it uses this module's row builder

            loop = sweep_sampled
        measured, log = loop(engine, meter, rf, todo, config, name, env, progress, stop_after, time_limit_s, t_start)
    return SweepResult(path, measured, skipped, time.perf_counter() - t_start, log, len(todo) - measured, config)




def _sweep_waves(engine, meter, rf: R.ResultsFile, todo: list[Point], config: SweepConfig, name: str, env,
                 progress: bool, stop_after: int | None, time_limit_s: float | None,
                 t_start: float) -> tuple[int, list[str]]:
    """The sweep loop of a wave engine: groups of points, shuffled, each warmed up and cooled down."""
    groups = plan(todo, engine.batch_limit, config.n_req, config.max_batch, config.mode)
    random.Random(config.seed).shuffle(groups)
    measured, log = 0, []
    arch = getattr(engine, "arch", None)
    if arch is not None and groups:
        sheet = estimate.datasheet(env.get("gpu"))  # this GPU's datasheet limits, where the table has them
        line = f"{name}: {estimate.eta(arch, groups, config, sheet.spec if sheet else None).text()}"
        if progress:  # before the bar starts, on the terminal the bar uses
            print(line, file=sys.stderr, flush=True)
        else:
            logger.info("%s", line)
        log.append(f"ETA {line}")
    invalid: set[tuple] = set()
    with _measuring(meter, progress, len(todo), f"{name} sweep") as bar:
        queue = list(groups)
        while queue:
            if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
                logger.warning("time limit reached with %d groups left: rerun the same command to resume", len(queue))
                log.append(f"stopped at the time limit, {len(queue)} groups left")
                break
            g = queue.pop(0)
            t_group = time.perf_counter()
            try:
                rows, short = measure_group(engine, meter, g, config, name, env)
            except MeterError as exc:
                key = (g.n_in, tuple(g.n_outs), g.rep, g.batch)
                if key in invalid:
                    raise RuntimeError(f"the meter refused the window of n_in {g.n_in}, n_out {g.n_outs} twice "
                                       f"({exc}): check the GPU and its driver (nvidia-smi), then rerun the same "
                                       "command to resume") from exc
                invalid.add(key)
                logger.warning("invalid meter window at n_in %d (%s): measuring the group again", g.n_in, exc)
                log.append(f"invalid meter window at n_in {g.n_in}: measured again ({exc})")
                queue.insert(0, g)
                continue
            except _oom_types() as exc:
                if g.batch == 1:
                    raise RuntimeError(f"out of GPU memory at n_in {g.n_in}, n_out {max(g.n_outs)} even with one "
                                       "request per wave: shorten the grid or use a GPU with more memory; the "
                                       "points measured so far are kept") from exc
                _free()
                g.batch = max(1, g.batch // 2)
                g.waves = math.ceil(config.n_req / g.batch)
                g.oom_retries += 1
                logger.warning("out of memory at n_in %d (%s): retrying with batch %d", g.n_in, exc, g.batch)
                log.append(f"OOM at n_in {g.n_in}: batch halved to {g.batch}")
                queue.insert(0, g)
                continue
            # The group's wall time (warm-up, windows, the cool-down to come) shared by its points.
            share = (time.perf_counter() - t_group + config.cooldown_s) / max(1, len(rows))
            for row in rows:
                rf.append(row, {"gpu_uuid": env.get("gpu_uuid"), "measuring_s": round(share, 3)})
                measured += 1
                if bar is not None:
                    bar.update(1)
                if stop_after is not None and measured >= stop_after:
                    return measured, log
            for n in short:  # too short alone: measure again, repeated back to back
                queue.insert(0, Group(g.n_in, [n], g.rep, g.batch, g.waves, g.oom_retries, repeat_alone=True))
            time.sleep(config.cooldown_s)
    return measured, log


def _sweep_commands(engine, meter, rf: R.ResultsFile, todo: list[Point], config: SweepConfig, name: str, env,
                    progress: bool, stop_after: int | None, time_limit_s: float | None,
                    t_start: float) -> tuple[int, list[str]]:
    """The sweep loop of a command engine: one benchmark command per point, in shuffled order.

    The engine's whole command line, its version, the energy of the whole process and the token
    counts it reported go into the sidecar's point log; the row holds the energy of its timed run.
    """
    random.Random(config.seed).shuffle(todo)
    measured, log = 0, []
    with _measuring(meter, progress, len(todo), f"{name} sweep ({engine.name})") as bar:
        build = engine.build(meter)
        if build is not None:
            log.append(f"built the engine: {build.command_line} ({build.duration_s:.0f} s)")
        for p in todo:
            if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
                log.append(f"stopped at the time limit, {len(todo) - measured} points left")
                break
            started = time.time()
            t_point = time.perf_counter()
            point = engine.run_point(meter, p.n_in, p.n_out, config.n_req)
            details = point.row()
            row = make_row(name, p.n_in, p.n_out, config.n_req, p.rep, "external", point.reading, env,
                           engine=config.engine, tokens_out=details["tokens_out"],
                           window_kind=details.get("window"), tokens_match=details.get("tokens_match"),
                           started=started, finished=time.time())
            info = {k: v for k, v in details.items() if k not in R.COLUMNS}
            rf.append(row, dict(info, measuring_s=round(time.perf_counter() - t_point + config.cooldown_s, 3)))
            measured += 1
            if bar is not None:
                bar.update(1)
            if stop_after is not None and measured >= stop_after:
                break
            time.sleep(config.cooldown_s)
    return measured, log


def _free() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass






def measure_group(engine, meter, g: Group, config: SweepConfig, name: str, env) -> tuple[list[R.Row], list[int]]:
    """Warm up, measure, and build the rows of one group; returns (rows, n_outs too short to keep)."""
    wall0 = time.time()
    n_max = g.n_outs[-1]
    n_req, mode = config.n_req, config.mode
    common = dict(engine=config.engine, batch=g.batch, waves=g.waves, oom_retries=g.oom_retries, started=wall0)
    engine.generate(g.n_in, min(n_max, config.warmup_steps + 1), g.batch, clock=meter.now)  # warm-up, real batch
    rows, short = [], []
    if mode == "full" or g.repeat_alone:
        # Complete runs: full mode runs every wave; a repeat runs one wave k times. Back to back in one window.
        if mode == "full":
            sizes = [math.ceil(n_req / g.waves)] * g.waves
            sizes[-1] = n_req - sum(sizes[:-1])
        else:
            sizes = [g.batch]
        t0 = meter.now()
        runs, prefills = 0, []
        while True:
            for b in sizes:
                w = engine.generate(g.n_in, n_max, b, clock=meter.now)
                prefills.append((w.times.start, w.times.prefill_end))
            runs += 1
            if w.times.end - t0 >= config.min_window_s:
                break
        t1 = w.times.end
        reading = meter.reading(t0, t1, end="before")
        prefill = Window(sum(meter.reading(a, b).energy_j for a, b in prefills), sum(b - a for a, b in prefills))
        scale = 1.0 / runs if mode == "full" else n_req / g.batch / runs
        row_mode = mode + ("+repeat" if g.repeat_alone else "")
        rows.append(make_row(name, g.n_in, n_max, n_req, g.rep, row_mode, reading, env, scale=scale, repeats=runs,
                             measured_waves=len(sizes) if mode == "full" else 1, prefill=prefill,
                             state=meter.state(t0, t1), finished=time.time(), **common))
        return rows, short
    w = engine.generate(g.n_in, n_max, g.batch, checkpoints=g.n_outs, clock=meter.now)
    logger.info("n_in %d batch %d n_out<=%d: prefill %.2f s, decode %.2f ms/step", g.n_in, g.batch, n_max,
                w.times.prefill_end - w.times.start, (w.times.end - w.times.prefill_end) / max(1, n_max - 1) * 1e3)
    t0 = w.times.start
    prefill_r = meter.reading(t0, w.times.prefill_end)
    prefill = Window(prefill_r.energy_j, prefill_r.duration_s)
    state = meter.state(t0, w.times.end)
    for n in g.n_outs:
        t1 = w.times.checkpoints[n]
        if t1 - t0 < config.min_window_s:
            short.append(n)
            continue
        reading = meter.reading(t0, t1, end="before" if n == n_max else "interp")
        rows.append(make_row(name, g.n_in, n, n_req, g.rep, mode, reading, env, scale=n_req / g.batch,
                             measured_waves=1, prefill=prefill, state=state, finished=time.time(), **common))
    return rows, short
