"""Resumable energy sweeps over (n_in, n_out) grids, and the ``measure``/``sweep`` commands.

A sweep measures every point of a grid (default: the study's 7x7, powers of two 64..4096) for one
model, ``n_req`` identical requests per point, batched up to ``max_batch`` and as far as KV-cache
memory allows (balanced waves when not all fit). Two modes:

* ``prefix`` (default, fast): points of the same ``n_in`` and the same batch are prefixes of one
  generation; the counter is read at every ``n_out`` checkpoint. One wave is measured and counted
  ``n_req / batch`` times. A point whose window is shorter than ``min_window_s`` is measured again
  on its own, its wave repeated back to back until the window is long enough.
* ``full``: every point is a separate, complete run of all its waves (the reference the fast mode
  is checked against).

Every group of points gets a warm-up at the real batch and a cool-down, groups run in a seeded
shuffled order, and each finished point is appended atomically to the results CSV
(:mod:`energybook.results`), so a killed sweep resumes on rerun with no point lost or duplicated.

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from energybook import results as R
from energybook.complexity import GRID, check_positive

logger = logging.getLogger(__name__)

MODES = ("prefix", "full")
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "measure.ipynb"


@dataclass(frozen=True)
class Point:
    """One grid point and repetition: ``n_in`` prompt and ``n_out`` output tokens per request."""

    n_in: int
    n_out: int
    rep: int = 0

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.n_in, self.n_out, self.rep)


@dataclass
class Group:
    """Points measured by one generation (prefix mode) or one complete run (full mode).

    Attributes:
        n_in: Prompt tokens per request.
        n_outs: Output lengths measured (checkpoints), ascending.
        rep: Repetition index.
        batch: Requests per wave.
        waves: Waves needed for ``n_req`` requests.
        oom_retries: Times the batch was halved after running out of memory.
        repeat_alone: A point too short in its shared generation, measured again on its own with its
            wave repeated back to back.
    """

    n_in: int
    n_outs: list[int]
    rep: int
    batch: int
    waves: int
    oom_retries: int = 0
    repeat_alone: bool = False


def balanced_batch(n_req: int, limit: int) -> tuple[int, int]:
    """(batch, waves) for ``n_req`` requests when at most ``limit`` fit: equal waves, as few as possible."""
    if limit < 1:
        raise RuntimeError("not even one request fits in GPU memory at this length; use a shorter grid "
                           "or a GPU with more memory")
    waves = math.ceil(n_req / limit)
    return math.ceil(n_req / waves), waves


def check_grid(n_in, n_out, n_req: int, max_batch: int, repeats: int, mode: str) -> None:
    """Validate sweep parameters; raise ``ValueError`` naming the bad one."""
    for name, values in (("n_in", n_in), ("n_out", n_out)):
        if not values:
            raise ValueError(f"{name} grid is empty")
        for v in values:
            check_positive(**{name: v})
    check_positive(n_req=n_req, max_batch=max_batch, repeats=repeats)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def plan(points: list[Point], batch_limit: Callable[[int, int], int], n_req: int, max_batch: int,
         mode: str) -> list[Group]:
    """Group points into generations.

    Args:
        points: Points still to measure.
        batch_limit: (n_in, n_out) -> largest batch that fits in memory.
        n_req: Requests per point.
        max_batch: Batch cap.
        mode: ``"prefix"`` (shared generations) or ``"full"`` (one group per point).
    """
    by_key: dict[tuple[int, int, int], list[int]] = {}
    waves_of: dict[tuple[int, int, int], int] = {}
    groups = []
    for p in sorted(points, key=lambda p: (p.rep, p.n_in, p.n_out)):
        batch, waves = balanced_batch(n_req, min(n_req, max_batch, batch_limit(p.n_in, p.n_out)))
        if mode == "full":
            groups.append(Group(p.n_in, [p.n_out], p.rep, batch, waves))
            continue
        key = (p.rep, p.n_in, batch)
        by_key.setdefault(key, []).append(p.n_out)
        waves_of[key] = waves
    for (rep, n_in, batch), n_outs in by_key.items():
        groups.append(Group(n_in, sorted(n_outs), rep, batch, waves_of[(rep, n_in, batch)]))
    return groups


def environment(meter, engine) -> dict[str, Any]:
    """Versions and device facts for the provenance sidecar."""
    import energybook

    info: dict[str, Any] = dict(meter.device_info())
    info.update(python=platform.python_version(), host=platform.node(), energybook=energybook.__version__)
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, cuda=torch.version.cuda, transformers=transformers.__version__)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(engine, "describe"):  # an external engine (energybook.external)
        info.update(engine=engine.describe(), dtype=None, device="cuda",
                    weights=getattr(getattr(engine, "settings", None), "load_format", None) or "as built")
        return info
    settings = getattr(engine, "settings", {})
    info.update(engine=settings, dtype=settings.get("dtype"), weights=getattr(engine, "weights", "?"),
                device=settings.get("device"))
    return info


ENGINES = ("torch", "trtllm", "vllm")


def make_engine(name: str, model: str, device: str = "cuda", max_batch: int = 1024, seed: int = 0,
                engine_kwargs: dict | None = None, workspace: str | Path | None = None):
    """The engine a sweep drives: energybook's own ``torch`` engine, or ``trtllm``/``vllm`` through
    their benchmark commands (:mod:`energybook.external`).

    Args:
        name: ``"torch"``, ``"trtllm"`` or ``"vllm"``.
        model: Model name or path (for the external engines, what their ``--model`` takes).
        device: Device of the torch engine.
        max_batch: Batch cap of the torch engine.
        seed: Seed of the torch engine's random weights and prompts.
        engine_kwargs: Extra keyword arguments for the engine's constructor.
        workspace: Folder for the external engines' data sets, engines, reports and logs.

    Raises:
        ValueError: for an unknown engine name.
    """
    if name == "torch":
        from energybook.engine import TorchEngine

        return TorchEngine(model, device=device, max_batch=max_batch, seed=seed, **(engine_kwargs or {}))
    from energybook import external

    if name not in external.ENGINES:
        raise ValueError(f"unknown engine {name!r}; use one of {ENGINES}")
    folder = Path(workspace) if workspace else ROOT / "workspace" / name
    return external.ENGINES[name](model, folder, **(engine_kwargs or {}))


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


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
    """

    path: Path
    measured: int
    skipped: int
    seconds: float
    log: list[str] = field(default_factory=list)
    remaining: int = 0


def _oom_types() -> tuple[type, ...]:
    try:
        import torch

        return (torch.cuda.OutOfMemoryError,)
    except ImportError:  # pragma: no cover
        return ()


def run_sweep(model: str, output: str | Path | None = None, n_in=GRID, n_out=GRID, n_req: int = 1000,
              max_batch: int = 1024, repeats: int = 1, mode: str = "prefix", seed: int = 0,
              min_window_s: float = 2.0, warmup_steps: int = 32, cooldown_s: float = 2.0, device: str = "cuda",
              engine=None, meter=None, allow_test_data: bool = False, command: str | None = None,
              progress: bool = True, protocol_note: str = "", engine_kwargs: dict | None = None,
              stop_after: int | None = None, time_limit_s: float | None = None,
              meter_poll_s: float = 0.002, engine_name: str = "torch",
              workspace: str | Path | None = None) -> SweepResult:
    """Measure a grid of points for one model, appending each finished point to ``output``.

    Args:
        model: Shipped model name, config.json path or checkpoint directory.
        output: Results CSV; default ``data/measured/<gpu>/<model>/grid.csv`` (``full`` mode: ``full.csv``).
        n_in: Prompt lengths (tokens).
        n_out: Output lengths (tokens).
        n_req: Requests per point (the study: 1000).
        max_batch: Batch cap (the study: 1024).
        repeats: Measurements of every point (rows ``rep`` 0..repeats-1).
        mode: ``"prefix"`` or ``"full"`` (module docstring).
        seed: Seed of the shuffled order, the random weights and prompts.
        min_window_s: Shortest energy window (seconds); shorter points are repeated back to back.
        warmup_steps: Decode steps of the warm-up run before each group, at the group's batch.
        cooldown_s: Idle pause after each group (seconds).
        device: ``"cuda"``, or ``"cpu"`` with ``allow_test_data=True`` (tests).
        engine: An engine object (default: made by :func:`make_engine` from ``engine_name``).
        meter: A meter (default: :class:`energybook.meter.Meter`; on the CPU, the simulated meter).
        allow_test_data: Permit the CPU or a simulated meter; the data are labelled test data.
        command: The command line that regenerates the file (recorded in the sidecar).
        progress: Show a tqdm progress bar with an ETA.
        protocol_note: Free text stored with the protocol (why it differs from the study's, say).
        engine_kwargs: Extra arguments for the engine.
        stop_after: Stop after this many points (tests of resumption).
        time_limit_s: Start no new group after this many seconds; a rerun resumes the rest.
        meter_poll_s: Counter polling period of the meter thread (seconds).
        engine_name: ``"torch"`` (default), ``"trtllm"`` or ``"vllm"``: the external engines run their own
            benchmark command once per point, under the meter (:mod:`energybook.external`).
        workspace: Folder for the external engines' files.

    Raises:
        ValueError: bad parameters (unknown model, non-positive lengths, unknown mode).
        RuntimeError: no GPU/NVML (:class:`energybook.meter.MeterUnavailable`), or test data not allowed.
    """
    check_grid(list(n_in), list(n_out), n_req, max_batch, repeats, mode)
    t_start = time.perf_counter()
    if device.startswith("cpu") and not allow_test_data:
        raise RuntimeError("device='cpu' measures nothing real: pass allow_test_data=True (tests only) or run on an "
                           "NVIDIA GPU with device='cuda'")
    if engine is None:
        engine = make_engine(engine_name, model, device, max_batch, seed, engine_kwargs, workspace)
    external = hasattr(engine, "run_point")
    if meter is None:
        if device.startswith("cpu"):
            from energybook.meter import SimulatedMeter

            meter = SimulatedMeter()
        else:
            from energybook.meter import Meter

            sync = None
            try:
                import torch

                sync = torch.cuda.synchronize
            except ImportError:  # pragma: no cover
                pass
            meter = Meter(sync=sync, poll_s=meter_poll_s)
    if getattr(meter, "method", "") == "simulated" and not allow_test_data:
        raise RuntimeError("a simulated meter measures nothing: pass allow_test_data=True (tests only)")
    env = environment(meter, engine)
    name = str(model) if external else getattr(engine, "name", str(model))
    if output is None:
        stem = f"{engine.name}-grid" if external else ("grid" if mode == "prefix" else "full")
        output = R.default_path(env.get("gpu", "gpu"), name, stem)
    output = Path(output)
    protocol = {"meter_poll_s": meter_poll_s, "n_req": n_req, "max_batch": max_batch,
                "mode": "external" if external else mode, "engine": engine_name if external else "torch",
                "n_in": list(n_in), "n_out": list(n_out),
                "repeats": repeats, "min_window_s": min_window_s, "warmup_steps": warmup_steps,
                "cooldown_s": cooldown_s, "seed": seed,
                "wave_counting": mode == "prefix" and not external,
                "prefix_checkpoints": mode == "prefix" and not external, "note": protocol_note}
    test_data = bool(allow_test_data and (device.startswith("cpu") or getattr(meter, "method", "") == "simulated"))
    prov = dict(env, model=name, protocol=protocol, meter_method=getattr(meter, "method", "?"), test_data=test_data,
                command=command or " ".join(shlex.quote(a) for a in sys.argv), started_at=_utc(),
                workload="n_req identical requests of exactly n_in random prompt tokens and n_out greedy output tokens "
                         "(EOS ignored, counts verified); energy_j from NVML's total-energy counter")
    rf = R.ResultsFile(output)
    rf.start(prov)
    done = rf.done()
    todo = [Point(a, b, r) for r in range(repeats) for a in n_in for b in n_out if (a, b, r) not in done]
    skipped = repeats * len(n_in) * len(n_out) - len(todo)
    if external:
        return _sweep_external(engine, meter, rf, todo, skipped, n_req, name, seed, cooldown_s, progress,
                               stop_after, time_limit_s, t_start)
    groups = plan(todo, engine.batch_limit, n_req, max_batch, mode)
    random.Random(seed).shuffle(groups)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="point", desc=f"{name} sweep")
    measured = 0
    log: list[str] = []
    meter.start()
    try:
        queue = list(groups)
        while queue:
            if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
                logger.warning("time limit reached with %d groups left: rerun the same command to resume", len(queue))
                log.append(f"stopped at the time limit, {len(queue)} groups left")
                break
            g = queue.pop(0)
            try:
                rows, short = _measure_group(engine, meter, g, n_req, mode, min_window_s, warmup_steps, name, env)
            except _oom_types() as exc:
                if g.batch == 1:
                    raise
                _free(engine)
                g.batch = max(1, g.batch // 2)
                g.waves = math.ceil(n_req / g.batch)
                g.oom_retries += 1
                logger.warning("out of memory at n_in %d (%s): retrying with batch %d", g.n_in, exc, g.batch)
                log.append(f"OOM at n_in {g.n_in}: batch halved to {g.batch}")
                queue.insert(0, g)
                continue
            for row in rows:
                rf.append(row, {"gpu_uuid": env.get("gpu_uuid")})
                measured += 1
                if bar is not None:
                    bar.update(1)
                if stop_after is not None and measured >= stop_after:
                    return SweepResult(output, measured, skipped, time.perf_counter() - t_start, log)
            for n in short:  # too short alone: measure again, repeated back to back
                queue.insert(0, Group(g.n_in, [n], g.rep, g.batch, g.waves, g.oom_retries, repeat_alone=True))
            time.sleep(cooldown_s)
    finally:
        if bar is not None:
            bar.close()
        meter.stop()
    remaining = len(todo) - measured
    return SweepResult(output, measured, skipped, time.perf_counter() - t_start, log, remaining)


def _sweep_external(engine, meter, rf: R.ResultsFile, todo: list[Point], skipped: int, n_req: int, name: str,
                    seed: int, cooldown_s: float, progress: bool, stop_after: int | None,
                    time_limit_s: float | None, t_start: float) -> SweepResult:
    """The sweep loop for an external engine: one benchmark command per point, in shuffled order.

    The engine's whole command line, its version, the energy of the whole process and the token
    counts it reported go into the sidecar's point log; the row holds the energy of its timed run.
    """
    random.Random(seed).shuffle(todo)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="point", desc=f"{name} sweep ({engine.name})")
    measured, log = 0, []
    meter.start()
    try:
        build = engine.build(meter)
        if build is not None:
            log.append(f"built the engine: {build.command_line} ({build.duration_s:.0f} s)")
        for p in todo:
            if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
                log.append(f"stopped at the time limit, {len(todo) - measured} points left")
                break
            started = time.time()
            point = engine.run_point(meter, p.n_in, p.n_out, n_req)
            details = point.row()
            row = {k: v for k, v in details.items() if k in R.COLUMNS}
            row.update(model=name, rep=p.rep, mode="external", batch=None, waves=None, measured_waves=None,
                       window_s=details["duration_s"], repeats=1, gpu=meter.device_info().get("gpu"),
                       started_at=_utc(started), finished_at=_utc())
            info = {k: v for k, v in details.items() if k not in R.COLUMNS}
            rf.append(row, info)
            measured += 1
            if bar is not None:
                bar.update(1)
            if stop_after is not None and measured >= stop_after:
                break
            time.sleep(cooldown_s)
    finally:
        if bar is not None:
            bar.close()
        meter.stop()
    return SweepResult(rf.path, measured, skipped, time.perf_counter() - t_start, log, len(todo) - measured)


def _free(engine) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _row(name, g: Group, n_out: int, n_req: int, mode: str, reading, prefill, scale: float, repeats: int,
         measured_waves: int, state, env, started: float, finished: float) -> dict[str, Any]:
    energy = reading.energy_j * scale
    duration = reading.duration_s * scale
    tokens_out = n_req * n_out
    pre_e = prefill.energy_j * scale if prefill is not None else float("nan")
    pre_s = prefill.duration_s * scale if prefill is not None else float("nan")
    return {
        "model": name, "n_in": g.n_in, "n_out": n_out, "n_req": n_req, "batch": g.batch, "waves": g.waves,
        "measured_waves": measured_waves, "rep": g.rep, "mode": mode + ("+repeat" if g.repeat_alone else ""),
        "energy_j": energy, "energy_j_power500": reading.energy_j_power500 * scale,
        "energy_j_power100": reading.energy_j_power100 * scale, "duration_s": duration,
        "tokens_in": n_req * g.n_in, "tokens_out": tokens_out, "j_per_token": energy / tokens_out,
        "tokens_per_j": tokens_out / energy, "power_w": reading.power_w,
        "prefill_energy_j": pre_e, "prefill_s": pre_s, "decode_energy_j": energy - pre_e, "decode_s": duration - pre_s,
        "window_s": reading.duration_s, "repeats": repeats, "ticks": reading.ticks,
        "temperature_c": state.temperature_c, "temperature_max_c": state.temperature_max_c,
        "sm_clock_mhz": state.sm_clock_mhz, "power_limit_w": state.power_limit_w, "oom_retries": g.oom_retries,
        "gpu": env.get("gpu"), "started_at": _utc(started), "finished_at": _utc(finished),
    }


def _measure_group(engine, meter, g: Group, n_req: int, mode: str, min_window_s: float, warmup_steps: int,
                   name: str, env) -> tuple[list[dict[str, Any]], list[int]]:
    """Warm up, measure, and build the rows of one group; returns (rows, n_outs too short to keep)."""
    wall0 = time.time()
    n_max = g.n_outs[-1]
    engine.generate(g.n_in, min(n_max, warmup_steps + 1), g.batch, clock=meter.now)  # warm-up at the real batch
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
            if w.times.end - t0 >= min_window_s:
                break
        t1 = w.times.end
        reading = meter.reading(t0, t1, end="before")
        pre_e = sum(meter.reading(a, b).energy_j for a, b in prefills)
        pre_s = sum(b - a for a, b in prefills)
        prefill = _Window(pre_e, pre_s)
        scale = 1.0 / runs if mode == "full" else n_req / g.batch / runs
        state = meter.state(t0, t1)
        rows.append(_row(name, g, n_max, n_req, mode, reading, prefill, scale, runs,
                         len(sizes) if mode == "full" else 1, state, env, wall0, time.time()))
        return rows, short
    w = engine.generate(g.n_in, n_max, g.batch, checkpoints=g.n_outs, clock=meter.now)
    logger.info("n_in %d batch %d n_out<=%d: prefill %.2f s, decode %.2f ms/step", g.n_in, g.batch, n_max,
                w.times.prefill_end - w.times.start, (w.times.end - w.times.prefill_end) / max(1, n_max - 1) * 1e3)
    t0 = w.times.start
    prefill_r = meter.reading(t0, w.times.prefill_end)
    prefill = _Window(prefill_r.energy_j, prefill_r.duration_s)
    scale = n_req / g.batch
    state = meter.state(t0, w.times.end)
    for n in g.n_outs:
        t1 = w.times.checkpoints[n]
        if t1 - t0 < min_window_s:
            short.append(n)
            continue
        reading = meter.reading(t0, t1, end="before" if n == n_max else "interp")
        rows.append(_row(name, g, n, n_req, mode, reading, prefill, scale, 1, 1, state, env, wall0, time.time()))
    return rows, short


@dataclass
class _Window:
    energy_j: float
    duration_s: float


# ----- notebook and command line ----------------------------------------------------------
def run_notebook(model: str, output_notebook: str | Path | None = None, parameters: dict[str, Any] | None = None,
                 kernel: str = "python3", notebook: str | Path = NOTEBOOK) -> Path:
    """Execute ``notebooks/measure.ipynb`` with papermill; the executed copy goes under ``book/measurements/``.

    Args:
        model: Model to measure (the notebook's ``model`` parameter).
        output_notebook: Executed notebook path; default ``book/measurements/<model>.ipynb``.
        parameters: Other notebook parameters (``n_in``, ``n_out``, ``n_req``, ``max_batch``, ``output``, ...).
        kernel: Jupyter kernel name.
        notebook: The source notebook.
    """
    try:
        import papermill as pm
    except ImportError as exc:
        raise RuntimeError("`energybook measure` runs a notebook through papermill: pip install papermill ipykernel "
                           "(or pip install 'energybook[gpu]')") from exc
    params = dict(parameters or {}, model=model)
    out = Path(output_notebook) if output_notebook else ROOT / "book" / "measurements" / f"{model}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(notebook), str(out), parameters=params, kernel_name=kernel, cwd=str(ROOT),
                        progress_bar=False)
    name_notebook(out, _model_label(model))
    return out


def _model_label(model: str) -> str:
    """A shipped name as it is; a checkpoint folder by its name; ``.../NAME/config.json`` as NAME."""
    p = Path(model)
    if p.name == "config.json":
        return p.parent.name or model
    return p.stem if p.suffix == ".json" else p.name


def name_notebook(path: str | Path, name: str) -> None:
    """Put the model's name into an executed notebook's title, so the book's pages differ by model."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            cell.source = f"# {name}: measuring its energy grid\n" + cell.source.partition("\n")[2]
            break
    nbformat.write(nb, str(path))


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _sweep_cmd(args: argparse.Namespace) -> int:
    res = run_sweep(args.model, args.output, n_in=args.n_in, n_out=args.n_out, n_req=args.n_req,
                    max_batch=args.max_batch, repeats=args.repeats, mode=args.mode, seed=args.seed,
                    min_window_s=args.min_window, cooldown_s=args.cooldown, device=args.device,
                    command="energybook " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                    protocol_note=args.note, time_limit_s=args.time_limit, allow_test_data=args.allow_test_data,
                    meter_poll_s=args.meter_poll, engine_name=args.engine, workspace=args.workspace,
                    engine_kwargs=_engine_kwargs(args))
    print(f"{res.measured} points measured, {res.skipped} already there, {res.remaining} left, "
          f"{res.seconds / 60:.2f} min")
    print(f"{res.path}: results")
    return 0


def _engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.engine == "torch":
        return {"cuda_graphs": {"auto": "auto", "on": True, "off": False}[args.graphs]}
    kwargs: dict[str, Any] = {"timeout_s": args.timeout}
    if args.executable:
        kwargs["executable"] = args.executable
    if args.engine == "trtllm":
        kwargs.update(model_path=args.model_path, engine_dir=args.engine_dir)
    return kwargs


def _measure_cmd(args: argparse.Namespace) -> int:
    params = {k: _literal(v) for k, v in (args.parameter or [])}
    if args.output:
        params["output"] = args.output
    out = run_notebook(args.model, args.notebook_output, params, kernel=args.kernel)
    print(f"executed notebook: {out}")
    return 0


def add_cli(sub) -> None:
    """Add the ``sweep`` and ``measure`` sub-commands to the ``energybook`` parser."""
    p = sub.add_parser("sweep", help="measure energy over an (n_in, n_out) grid on the GPU (resumable)")
    p.add_argument("--model", required=True, help="shipped model name, config.json or checkpoint directory")
    p.add_argument("--output", default=None, help="results CSV (default data/measured/<gpu>/<model>/grid.csv)")
    p.add_argument("--n-in", type=int, nargs="+", default=list(GRID), help="prompt lengths (tokens)")
    p.add_argument("--n-out", type=int, nargs="+", default=list(GRID), help="output lengths (tokens)")
    p.add_argument("--n-req", type=int, default=1000, help="requests per point (study: 1000)")
    p.add_argument("--max-batch", type=int, default=1024, help="largest batch (study: 1024)")
    p.add_argument("--repeats", type=int, default=1, help="measurements per point")
    p.add_argument("--mode", choices=MODES, default="prefix", help="prefix (fast, shared generations) or full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-window", type=float, default=2.0, help="shortest energy window (seconds)")
    p.add_argument("--cooldown", type=float, default=2.0, help="idle pause after each group (seconds)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--note", default="", help="protocol note stored in the provenance")
    p.add_argument("--time-limit", type=float, default=None, help="start no new group after this (seconds)")
    p.add_argument("--graphs", choices=("auto", "on", "off"), default="on", help="CUDA graphs for decode")
    p.add_argument("--meter-poll", type=float, default=0.002, help="counter polling period (seconds)")
    p.add_argument("--allow-test-data", action="store_true", help="permit the CPU / simulated meter (tests only)")
    g = p.add_argument_group("engine", "energybook's torch engine, or TensorRT-LLM / vLLM through their benchmark "
                             "commands (these two are untested on real engines here)")
    g.add_argument("--engine", choices=ENGINES, default="torch", help="the engine that generates")
    g.add_argument("--workspace", default=None, help="trtllm/vllm: folder for data sets, engines, reports, logs")
    g.add_argument("--model-path", default=None, help="trtllm: local checkpoint folder (--model_path)")
    g.add_argument("--engine-dir", default=None, help="trtllm: an engine already built")
    g.add_argument("--executable", default=None, help="trtllm/vllm: the trtllm-bench or vllm command")
    g.add_argument("--timeout", type=float, default=None, help="trtllm/vllm: time limit per command (seconds)")
    p.set_defaults(func=_sweep_cmd)

    p = sub.add_parser("measure", help="run notebooks/measure.ipynb through papermill (executed copy in book/)")
    p.add_argument("--model", required=True)
    p.add_argument("--output", default=None, help="results CSV (notebook parameter 'output')")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="notebook parameter (JSON value), e.g. -p n_req 1000 -p n_in '[64,128]'")
    p.add_argument("--notebook-output", default=None,
                   help="executed notebook (default book/measurements/<model>.ipynb)")
    p.add_argument("--kernel", default="python3")
    p.set_defaults(func=_measure_cmd)
