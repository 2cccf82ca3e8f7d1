"""The ``energybook`` command.

Sub-commands:

* ``energybook models``: the shipped architectures with their sizes;
* ``energybook counts --model M --n-in N --n-out M [--batch B]``: FLOPs and bytes of a workload;
* ``energybook sweep --model M [M ...]``: measure energy over an (n_in, n_out) grid on the GPU (resumable); under
  ``torchrun`` each rank measures its share on its own GPU (:mod:`energybook.measure.launch`), ``--plan``
  prints the shares;
* ``energybook measure --model M [M ...]``: the same through the papermill notebook, executed copy kept;
* ``energybook predict --model M --n-in A --n-out B``: the energy of a workload on a calibrated GPU, from the
  configuration alone (the physical model, :mod:`energybook.model.physics`); it refuses (exit 2) what cannot run
  (weights and KV cache beyond the GPU's memory, an explicit ``--batch`` included; n_in + n_out beyond the model's
  positions) and warns, on stderr and in the JSON's ``warnings``, outside the calibrated range;
* ``energybook advise --model M --workload FILE_OR_SPEC``: a workload's energy per request and in total, and the
  output caps or prompt truncations within the user's limits (``--min-n-out``, ``--max-truncation``,
  ``--quality-floor``) and the calibrated range, ranked by joules per request (:mod:`energybook.report.advise`);
* ``energybook book``: build the book from the committed data (CPU only, in a checkout).

The conventions of Python tools: ``python -m energybook`` runs it too and ``--version`` prints the version;
``--help`` shows the defaults; the commands that print results (``models``, ``counts``, ``predict``,
``advise`` and ``sweep --plan``) take ``--json`` and then print one JSON document on stdout, with the units
in the key names (``energy_j``, ``duration_s``, ``flops``, ``bytes`` ...). Errors are one line on stderr that
names the problem and what to do. Exit status: 0 done, 1 a runtime error (no GPU or NVML, a corrupt data
file, an engine failure), 2 a usage error (a bad argument or parameter, an unknown model), 130 interrupted
(an interrupted sweep says how to resume), 141 a closed pipe (``energybook models | head -1``, quietly).

Every number has a range, checked before anything runs and named in ``--help`` (lengths 1..2**20 tokens with
n_in + n_out at most 2**20, requests and batches 1..10**7, ``--ranks`` 1..4096, times finite and positive;
:mod:`energybook.measure.protocol`); text arguments (models, paths, notes) may not hold control characters.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import energybook
from energybook.model.complexity import GRID

logger = logging.getLogger(__name__)

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141
"""Exit statuses besides 0 (141 = 128 + SIGPIPE, what a shell reports for a tool that a closed pipe stops)."""
MAX_SECONDS = 366 * 24 * 3600
"""Longest --time-limit and --timeout (seconds: a year)."""
INSTALL_GPU = 'pip install -e ".[gpu]" in a checkout of energybook'
"""How to get the GPU packages (energybook is installed from its repository, not from an index)."""


def _in_range(option: str, value: Any, high: float, low: float = 1, what: str = "", strict: bool = False) -> None:
    """Refuse ``value`` of ``option`` outside low..high (above ``low`` when ``strict``; NaN never) as a usage error
    naming the range."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and low <= value <= high and not (strict and value == low)
    if not ok:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        span = f"above {num(low)} and at most {num(high)}" if strict else f"{num(low)}..{num(high)}"
        raise ValueError(f"{option} must be {span}{what}, got {value!r}")


def _check_lengths(n_in: int, n_out: int) -> None:
    from energybook.measure.protocol import MAX_CONTEXT

    for option, v in (("--n-in", n_in), ("--n-out", n_out)):
        if v > MAX_CONTEXT:
            raise ValueError(f"{option} must be 1..{MAX_CONTEXT} tokens (the longest context), got {v}")
    if n_in + n_out > MAX_CONTEXT:
        raise ValueError(f"--n-in + --n-out must be at most {MAX_CONTEXT} tokens (the longest context), got "
                         f"{n_in + n_out}")


def _check_text(args: argparse.Namespace) -> None:
    """Refuse a control character in any text argument (names and paths end up in results files, one a line)."""
    from energybook.measure.protocol import check_text

    for dest, value in sorted(vars(args).items()):
        if dest == "func":
            continue
        option = "MODEL" if dest == "model_arg" else "--" + dest.replace("_", "-")
        for v in (value if isinstance(value, list) else [value]):
            for item in (v if isinstance(v, list) else [v]):
                if isinstance(item, str):
                    check_text(option, item)


def _print_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document (numpy scalars as plain numbers)."""
    print(json.dumps(obj, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _models(args: argparse.Namespace) -> int:
    from energybook.model import architecture as A

    archs = [A.load(name) for name in A.available()]  # available() raises when the package data are missing
    if args.json:
        _print_json({"models": [dict(model=a.name, params=a.num_params, layers=a.num_layers, hidden_size=a.hidden_size,
                                     heads=a.num_heads, kv_heads=a.num_kv_heads, ffn=a.ffn_kind,
                                     kv_bytes_per_token=a.kv_bytes_per_token, dtype=a.dtype) for a in archs]})
        return 0
    print(f"{'model':24s} {'params (B)':>10s} {'layers':>6s} {'d':>5s} {'q/kv heads':>10s} {'FFN':>6s} "
          f"{'KV B/token':>10s} dtype")
    for a in archs:
        print(f"{a.name:24s} {a.num_params / 1e9:10.3f} {a.num_layers:6d} {a.hidden_size:5d} "
              f"{a.num_heads:>4d}/{a.num_kv_heads:<5d} {a.ffn_kind:>6s} {a.kv_bytes_per_token:10d} {a.dtype}")
    return 0


def _counts(args: argparse.Namespace) -> int:
    from energybook.model import architecture as A
    from energybook.model import complexity as C

    if args.model and args.model_arg and args.model != args.model_arg:
        raise ValueError(f"two models given ({args.model_arg!r} and --model {args.model!r}): give one, with --model")
    model = args.model or args.model_arg
    if not model:
        raise ValueError("give the model with --model NAME (a shipped name, see `energybook models`, or a "
                         "config.json path)")
    _check_lengths(args.n_in, args.n_out)
    _in_range("--batch", args.batch, _max_batch())
    arch = A.load(model)
    counts = {method: dict(prefill=C.prefill(arch, args.n_in, args.batch, method),
                           decode_step=C.decode_step(arch, args.n_in, args.batch, method),
                           workload=C.request(arch, args.n_in, args.n_out, args.batch, method))
              for method in C.METHODS}
    if args.json:  # per method, FLOPs and bytes of the prefill, of one decode step at context n_in, of the whole
        _print_json(dict(model=arch.name, n_in=args.n_in, n_out=args.n_out, batch=args.batch,
                         **{m: {k: dict(flops=c.flops, bytes=c.bytes) for k, c in parts.items()}
                            for m, parts in counts.items()}))
        return 0
    for method, c in counts.items():
        pre, step, total = c["prefill"], c["decode_step"], c["workload"]
        print(f"[{method}] {arch.name}, batch {args.batch}, n_in {args.n_in}, n_out {args.n_out}")
        print(f"  prefill           {pre.flops / 1e12:12.3f} TFLOP {pre.bytes / 1e9:10.3f} GB")
        print(f"  decode step (c={args.n_in}) {step.flops / 1e12:8.3f} TFLOP {step.bytes / 1e9:10.3f} GB")
        print(f"  whole workload    {total.flops / 1e12:12.3f} TFLOP {total.bytes / 1e9:10.3f} GB")
    return 0


def _predict_cmd(args: argparse.Namespace) -> int:
    from energybook.measure.protocol import MAX_N_REQ
    from energybook.model import architecture as A
    from energybook.model import physics as P

    _check_lengths(args.n_in, args.n_out)
    _in_range("--batch", args.batch, _max_batch())
    _in_range("--max-batch", args.max_batch, _max_batch())
    _in_range("--n-req", args.n_req, MAX_N_REQ, what=" requests")
    arch = A.load(args.model)
    cal = _calibration(args.gpu, args.engine)
    if args.gpu_peaks:
        cal = _transferred(cal, args.gpu_peaks)
    # An attention path no calibration grid ran is refused by name (exit 2), or let through by --allow-path.
    path_warnings = _attention_check(arch, cal, args.n_in, args.n_out, args.allow_path)
    pred = P.predict(arch, args.n_in, args.n_out, batch=args.batch, max_batch=args.max_batch, n_req=args.n_req,
                     calibration=cal, strict=True)  # refuses what cannot run: memory, positions (exit 2)
    pred = dataclasses.replace(pred, warnings=tuple(path_warnings) + pred.warnings)
    for warning in pred.warnings:  # outside the calibrated range: on stderr, and in the JSON under "warnings"
        print(f"energybook: warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json(dict(pred.to_dict(), calibration=cal.describe()))
        return 0
    d = pred.to_dict()
    print(f"{arch.name} on {cal.target_gpu} ({cal.engine_key} engine): {args.n_req} requests of n_in {args.n_in}, "
          f"n_out {args.n_out}, batch {pred.batch} in {pred.waves} wave(s)")
    print(f"  calibration               {_calibration_line(cal)}")
    print(f"  joules per output token   {pred.j_per_token:10.4g} J   (95% interval {pred.j_per_token_low:.4g} .. "
          f"{pred.j_per_token_high:.4g})")
    print(f"  joules per total token    {pred.j_per_total_token:10.4g} J")
    print(f"  joules per request        {pred.j_per_request:10.4g} J   (95% interval {d['j_per_request_low']:.4g} .. "
          f"{d['j_per_request_high']:.4g})")
    print(f"  output tokens per joule   {pred.tokens_per_j:10.4g}")
    print(f"  time                      {pred.duration_s:10.4g} s   (prefill {pred.prefill_s:.4g} s, "
          f"decode {pred.decode_s:.4g} s)")
    print(f"  mean power                {pred.power_w:10.4g} W")
    print(f"  energy                    {pred.energy_j:10.4g} J   (prefill {pred.prefill_energy_j:.4g} J, "
          f"decode {pred.decode_energy_j:.4g} J)")
    return 0


def _calibration_flags(p: argparse.ArgumentParser) -> None:
    """The flags that pick a calibration and the attention paths it may be stretched to (predict and advise)."""
    from energybook.model.attention_paths import PATH_NAMES

    p.add_argument("--gpu", default=None, help="the calibrated GPU: a name, slug or short name (h100, "
                   "nvidia-h100-80gb-hbm3, 'NVIDIA H100 80GB HBM3'); default: the one GPU calibrated for the "
                   "engine (an error naming the choices when there are several)")
    p.add_argument("--engine", default="hf", help="the engine the calibration measured (one calibration per "
                   "GPU and engine; default hf, the only engine calibrated so far)")
    p.add_argument("--allow-path", action="append", default=[], choices=PATH_NAMES, metavar="PATH",
                   help="let an attention path that no calibration grid ran through, as an uncalibrated estimate "
                   "labelled in the warnings (repeatable): " + ", ".join(PATH_NAMES))


def _attention_check(arch, cal, n_in: int, n_out: int, allow) -> list[str]:
    """:func:`energybook.model.attention_paths.check_attention` for a command: the warnings of the paths let through."""
    from energybook.model.attention_paths import check_attention

    return check_attention(arch, cal.engine_key, int(n_in), int(n_out), allow=allow or (), calibration=cal)


def _max_batch() -> int:
    from energybook.measure.protocol import MAX_BATCH

    return MAX_BATCH


def _calibration(gpu: str | None, engine: str | None):
    """The shipped calibration of (``gpu``, ``engine``): a usage error for an uncalibrated pair (the message lists
    the calibrations and the command that makes one), a runtime error (exit 1) for a damaged file or one fitted with
    another model form than this code's."""
    from energybook.model import physics as P

    try:
        return P.load_calibration(gpu, engine=engine)
    except P.FormMismatch as exc:
        raise RuntimeError(str(exc)) from None  # fitted with another form of the model: names both hashes
    except P.CalibrationNotFound:
        raise  # names the calibrations that exist and the command that makes one
    except ValueError as exc:
        raise RuntimeError(f"{exc}: the calibration shipped with energybook is damaged; reinstall energybook "
                           "(pip install -e . in a checkout)") from None


def _transferred(cal, peaks_file: str):
    """``cal`` moved to the GPU of a peaks file (:func:`energybook.model.physics.transfer`); a file that is not a
    peaks file is a usage error naming it."""
    from energybook.model import physics as P
    from energybook.store.peaks import load_peaks
    from energybook.store.schema import DataError

    path = Path(peaks_file)
    if not path.is_file():
        raise ValueError(f"--gpu-peaks {peaks_file}: no such file; give a peaks file that `energybook peaks` wrote "
                         "(<data>/peaks/<gpu-uuid>.json)")
    try:
        peaks = load_peaks(path)
    except DataError as exc:
        raise ValueError(f"--gpu-peaks: {exc}") from None
    return P.transfer(cal, peaks, path)


def _calibration_line(cal) -> str:
    """One line naming a calibration: GPU, engine, file, commit, and the transfer if any."""
    d = cal.describe()
    line = f"{d['gpu']} --engine {d['engine']} ({Path(d['file']).name}, commit {str(d['commit'])[:12]})"
    return f"{line}; {cal.transferred}" if cal.transferred else line


def _advise_cmd(args: argparse.Namespace) -> int:
    from energybook.measure.protocol import MAX_CONTEXT
    from energybook.model import architecture as A
    from energybook.report import advise as ADV

    _in_range("--max-batch", args.max_batch, _max_batch())
    _in_range("--min-n-out", args.min_n_out, MAX_CONTEXT, what=" tokens (no output cap below it)")
    _in_range("--max-truncation", args.max_truncation, 1, low=0, what=" (the fraction of a prompt that may be cut)")
    _in_range("--quality-floor", args.quality_floor, 1, low=0, what=" (the fraction of the requests left whole)")
    arch = A.load(args.model)
    cal = _calibration(args.gpu, args.engine)
    path = Path(args.workload.strip())
    if path.suffix.lower() == ".csv" and not path.is_file():
        raise ValueError(f"--workload {args.workload}: no such file; give a CSV with n_in and n_out columns or a "
                         'spec such as "n_in=512,n_out<=2048"')
    workload = ADV.parse_workload(args.workload)
    longest = int(max(workload.n_in)) + int(max(workload.n_out))
    if longest > MAX_CONTEXT:
        raise ValueError(f"--workload {args.workload}: n_in + n_out must be at most {MAX_CONTEXT} tokens (the longest "
                         f"context), got {longest}")
    from energybook.model import physics as P

    n_in, n_out = max(zip(workload.n_in, workload.n_out), key=lambda pair: int(pair[0]) + int(pair[1]))
    if why := P.positions_beyond(arch, int(n_in), int(n_out)):  # what cannot run is refused (exit 2)
        raise P.Refused(f"--workload {args.workload}: {why}")
    path_warnings = _attention_check(arch, cal, int(n_in), int(n_out), args.allow_path)
    advice = ADV.advise(arch, workload, cal, max_batch=args.max_batch, min_n_out=args.min_n_out,
                        max_truncation=args.max_truncation, quality_floor=args.quality_floor)
    base, best = advice.baseline, advice.best
    plot = ADV.plot_advice(advice, args.plot) if args.plot else None
    warnings = path_warnings + list(advice.warnings)
    for w in warnings:  # paths let through, requests outside the calibrated range: stderr, and the JSON's "warnings"
        print(f"energybook: warning: {w}", file=sys.stderr)
    if args.json:
        limits = dataclasses.asdict(advice.limits)
        _print_json(dict(model=arch.name, gpu=cal.gpu, calibration=cal.describe(), workload=workload.source,
                         n_req=workload.n_req,
                         limits=limits, ranked_by="energy_j_per_request", baseline=base.to_dict(),
                         options=[o.to_dict() for o in advice.options], best=best.label, excluded=advice.excluded,
                         warnings=warnings, warning=advice.warning, plot=None if plot is None else str(plot)))
        return 0
    print(f"{arch.name} on {cal.gpu_name}: workload {workload.source} ({workload.n_req} requests)")
    print(f"  calibration: {_calibration_line(cal)}")
    print(f"  as given: {base.energy_j_per_request:.4g} J per request, {base.energy_j_total:.4g} J for the workload "
          f"({base.output_tokens_per_request:.0f} output and {base.prompt_tokens_per_request:.0f} prompt tokens per "
          "request on average)")
    print(f"  limits: {advice.limits.describe()}")
    print("  options, fewest joules per request first (cut: tokens per request removed, and their share):")
    print(f"  {'option':26s} {'J/request':>10s} {'J total':>10s} {'saved J/req':>11s} {'saved':>6s} "
          f"{'output cut':>15s} {'prompt cut':>15s} {'whole':>6s}")
    for o in advice.ranked:
        print(f"  {o.label:26s} {o.energy_j_per_request:10.4g} {o.energy_j_total:10.4g} "
              f"{o.saving_j_per_request:11.4g} {o.saving_pct:5.1f}% "
              f"{o.output_tokens_cut_per_request:7.0f} ({o.output_cut_fraction:4.0%}) "
              f"{o.prompt_tokens_truncated_per_request:7.0f} ({o.prompt_truncated_fraction:4.0%}) "
              f"{o.requests_whole_fraction:5.0%}")
    if best is base:
        print("  fewest joules per request: the workload as given (no cap or truncation within the limits lowers it)")
    else:
        print(f"  fewest joules per request: {best.label} ({best.energy_j_per_request:.4g} J per request, saves "
              f"{best.saving_j_per_request:.4g} J ({best.saving_pct:.1f}%) per request, {best.saving_j_total:.4g} J "
              f"in total; cuts {best.output_tokens_cut_per_request:.0f} output and "
              f"{best.prompt_tokens_truncated_per_request:.0f} prompt tokens per request, leaves "
              f"{best.requests_whole_fraction:.0%} of the requests whole)")
    for line in advice.excluded:
        print(f"  not proposed: {line}")
    print(f"  note: {advice.warning}")
    if plot is not None:
        print(f"  plot: {plot}")
    return 0


def _book(args: argparse.Namespace) -> int:
    from energybook.store.workspace import checkout_root

    root = checkout_root()
    if root is None:
        raise RuntimeError("`energybook book` builds the book of a checkout: run it inside a clone of the "
                           "energybook repository")
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(root), "--all", "-W", "-n", "--keep-going"]
    if args.builder:
        cmd += ["--builder", args.builder]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=root)


def _command_line() -> str:
    return "energybook " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _config(args: argparse.Namespace):
    from energybook.measure import engines as EN
    from energybook.measure.protocol import SweepConfig
    from energybook.measure.settings import from_flags

    if args.pairs and (args.n_in or args.n_out):
        raise ValueError("--pairs gives the points, --n-in/--n-out a grid: give one of them")
    settings = from_flags(args, args.engine, EN.get_engine(args.engine).settings_class(), EN.settings_classes())
    return SweepConfig(n_in=args.n_in or GRID, n_out=args.n_out or GRID, n_req=args.n_req, max_batch=args.max_batch,
                       repeats=args.repeats, mode=args.mode, seed=args.seed, min_window_s=args.min_window,
                       cooldown_s=args.cooldown, meter_poll_s=args.meter_poll, meter_sampler=args.meter_sampler,
                       weight_init=args.weight_init, prompts=args.prompts, pairs=_pairs(args.pairs),
                       engine=args.engine, note=args.note, engine_settings=settings)


def _pairs(specs) -> tuple[tuple[int, int], ...]:
    """``["96x300", ...]`` -> ((96, 300), ...); a clear error for anything else."""
    out = []
    for spec in specs or ():
        a, sep, b = str(spec).lower().partition("x")
        if not (sep and a.isdigit() and b.isdigit()):
            raise ValueError(f"--pairs takes N_INxN_OUT (e.g. 96x300), got {spec!r}")
        out.append((int(a), int(b)))
    return tuple(out)


def _sweep_cmd(args: argparse.Namespace) -> int:
    from energybook.measure import launch, runner
    from energybook.measure.protocol import check_text

    config = _config(args)  # checked before anything runs
    from energybook.measure.launch import MAX_RANKS

    if args.ranks is not None and not args.plan:
        raise ValueError("--ranks goes with --plan (a launch has the ranks torchrun starts)")
    _in_range("--ranks", args.ranks, MAX_RANKS)
    _in_range("--time-limit", args.time_limit, MAX_SECONDS, low=0, what=" seconds", strict=True)
    for model in args.model:
        check_text("--model", str(model))  # refused before a launch plans anything
    if args.json and not args.plan:
        raise ValueError("--json goes with --plan: a sweep writes its results to CSV files")
    if args.output and len(args.model) > 1:
        raise ValueError("--output names one file: give one --model with it, or leave --output out")
    ranks = launch.Ranks.from_env()  # None outside torchrun
    if args.plan:
        world = args.ranks if args.ranks is not None else (ranks.world_size if ranks else launch.local_gpu_count())
        plan = launch.make_plan(args.model, config, world)
        if ranks is None or ranks.rank == 0:
            _print_json(_plan_dict(plan)) if args.json else print(plan.describe())
        return 0
    common = dict(output=args.output, workspace=args.data, device=args.device, time_limit_s=args.time_limit,
                  allow_test_data=args.allow_test_data, progress=not args.no_progress)
    if ranks is not None:
        launch.run_launch(args.model, config, ranks, command=launch.launch_command(ranks, sys.argv[1:]), **common)
        return 0
    for model in args.model:
        res = runner.run_sweep(model, config, command=_command_line(), **common)
        print(f"{model}: {res.measured} points measured, {res.skipped} already there, {res.remaining} left, "
              f"{res.seconds / 60:.2f} min")
        print(f"{res.path}: results")
    return 0


def _peaks_cmd(args: argparse.Namespace) -> int:
    _in_range("--window", args.window, 60, low=1, what=" seconds")
    from energybook.measure.peaks import describe, measure_peaks
    from energybook.store.peaks import save_peaks
    from energybook.store.workspace import Workspace

    ws = Workspace.resolve(args.data)  # checked before the GPU is touched
    peaks = measure_peaks(args.device, window_s=args.window, command=_command_line())
    path = save_peaks(peaks, ws)
    if args.json:
        _print_json(dict(peaks.to_record(), path=str(path)))
    else:
        print(describe(peaks))
        print(f"{path}: peaks")
    return 0


def _plan_dict(plan) -> dict[str, Any]:
    """A launch plan (:class:`energybook.measure.launch.Plan`) as JSON-ready data: per rank, its units."""
    ranks = [dict(rank=r, est_duration_s=load / 1e3,
                  units=[dict(model=u.name, n_in=u.n_in, rep=u.rep, n_points=len(u.points),
                              est_duration_s=u.cost_ms / 1e3, file=plan.target(u, r)) for u in plan.for_rank(r)])
             for r, load in enumerate(plan.loads_ms)]
    return dict(plan=plan.fingerprint, models=list(plan.models), world_size=plan.world_size, by=plan.by,
                n_units=len(plan.units), ranks=ranks)


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _measure_cmd(args: argparse.Namespace) -> int:
    from energybook.measure.launch import Ranks
    from energybook.measure.notebook import run_notebook
    from energybook.measure.protocol import SweepConfig

    ranks = Ranks.from_env()
    if ranks is not None and ranks.world_size > 1:
        raise ValueError("`energybook measure` runs the notebook on one GPU: under torchrun use `energybook sweep`, "
                         "which shares the work among the ranks")
    params = {k: _literal(v) for k, v in (args.parameter or [])}
    names = set(SweepConfig.__dataclass_fields__) | {"output", "device", "allow_test_data", "command",
                                                     "time_limit_s", "settings", "workspace"}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}; known: {sorted(names)}")
    SweepConfig(**{k: v for k, v in params.items() if k in SweepConfig.__dataclass_fields__})  # check first
    from energybook.measure.protocol import check_text

    for k, v in params.items():
        if isinstance(v, str):
            check_text(f"-p {k}", v)
    if args.output:
        params["output"] = args.output
    if len(args.model) > 1 and (args.output or args.notebook_output):
        raise ValueError("--output and --notebook-output name one file: give one --model with them")
    params.setdefault("command", _command_line())
    logging.getLogger("papermill").setLevel(logging.INFO)  # the notebook's output, live in this terminal
    for model in args.model:
        out = run_notebook(model, args.notebook_output, params, kernel=args.kernel, workspace=args.data)
        print(f"executed notebook: {out}")
    return 0


def _add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    from energybook.measure import engines as EN
    from energybook.measure.protocol import MAX_BATCH, MAX_CONTEXT, MAX_N_REQ, MODES, PROMPTS, SAMPLERS
    from energybook.measure.settings import add_flags

    grid = " ".join(map(str, GRID))
    p.add_argument("--n-in", type=int, nargs="+", default=None,
                   help=f"prompt lengths (tokens, 1..{MAX_CONTEXT}; default: {grid})")
    p.add_argument("--n-out", type=int, nargs="+", default=None,
                   help=f"output lengths (tokens, 1..{MAX_CONTEXT}, n_in + n_out at most that; default: {grid})")
    p.add_argument("--pairs", nargs="+", default=None, metavar="N_INxN_OUT",
                   help="explicit (n_in, n_out) points instead of the grid (not with --n-in/--n-out), e.g. 96x300 "
                   "1500x700")
    p.add_argument("--n-req", type=int, default=1000, help=f"requests per point (1..{MAX_N_REQ}; study: 1000)")
    p.add_argument("--max-batch", type=int, default=1024, help=f"largest batch (1..{MAX_BATCH}; study: 1024)")
    p.add_argument("--repeats", type=int, default=1, help="measurements per point (1..100)")
    p.add_argument("--mode", "--protocol", choices=MODES, default="prefix",
                   help="prefix (shared generations), full (every wave to its end) or sampled (assembled from measured "
                        "prefills and decode steps; lean engine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled order, the dummy weights and the prompts "
                   "(0..2**63-1)")
    p.add_argument("--min-window", type=float, default=2.0, help="shortest energy window (seconds, 0..3600)")
    p.add_argument("--cooldown", type=float, default=2.0, help="idle pause after each group (seconds, 0..3600)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N (the meter reads that GPU, by UUID)")
    p.add_argument("--note", default="", help="protocol note stored in the provenance")
    p.add_argument("--time-limit", type=float, default=None, help="start no new group after this (seconds, "
                   "above 0, at most a year)")
    p.add_argument("--meter-poll", type=float, default=0.002, help="counter polling period (seconds)")
    p.add_argument("--meter-sampler", choices=SAMPLERS, default="thread",
                   help="sample NVML in a thread of this process or in a child process")
    p.add_argument("--weight-init", default="normal:0.02",
                   help="dummy weights: normal:STD, zeros or student_t:DF:STD (weight sensitivity)")
    p.add_argument("--prompts", choices=PROMPTS, default="random", help="random prompt tokens or one repeated token")
    p.add_argument("--allow-test-data", action="store_true", help="permit the CPU / simulated meter (tests only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("engine", "energybook's torch engine, or TensorRT-LLM / vLLM through their benchmark "
                             "commands (these two are untested on real engines here)")
    g.add_argument("--engine", choices=EN.engine_names(), default="lean",
                   help="the engine that generates (hf: the transformers-based one, which measured the H100 grids)")
    s = p.add_argument_group("engine settings", "each engine's settings (energybook.engine_settings), one flag per "
                             "field; the engines that take a flag are named in its help, and the sidecar records "
                             "every field")
    add_flags(s, EN.settings_classes())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except the empty ones (None, False, "") that would say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``energybook`` command."""
    parser = argparse.ArgumentParser(prog="energybook", description=__doc__.split("\n\n")[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {energybook.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, formatter_class=_HelpFormatter)
    json_help = "print one JSON document on stdout (units in the key names)"

    p = add("models", help="list the shipped architectures")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=_models)

    model_help = "shipped model name, or a config.json / checkpoint directory of any registered family"
    p = add("counts", help="FLOPs and bytes of a workload")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("model_arg", nargs="?", default=None, metavar="MODEL", help="the model, as --model (older form)")
    p.add_argument("--n-in", type=int, default=64, help="prompt length (tokens, 1..2**20)")
    p.add_argument("--n-out", type=int, default=256, help="output length (tokens; n_in + n_out 2..2**20)")
    p.add_argument("--batch", type=int, default=1, help="requests decoded together (1..10**7)")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=_counts)

    p = add("predict", help="predict the energy of a workload on a calibrated GPU (no GPU needed)")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--n-in", type=int, required=True, help="prompt length (tokens, 1..2**20)")
    p.add_argument("--n-out", type=int, required=True, help="output length (tokens; n_in + n_out 2..2**20)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch", type=int, default=None, help="requests per wave (default: the engine's KV-memory rule)")
    g.add_argument("--max-batch", type=int, default=1024, help="the engine's batch cap (1..10**7)")
    p.add_argument("--n-req", type=int, default=1000, help="requests (1..10**7)")
    _calibration_flags(p)
    p.add_argument("--gpu-peaks", "--peaks", dest="gpu_peaks", default=None, metavar="PATH",
                   help="predict for another GPU from its measured peaks (a file of `energybook peaks`): "
                   "the calibration's bandwidths, matmul rates and power cap scaled by the ratio of the peaks; "
                   "the output says 'transferred from <GPU> by peaks of <uuid>'")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=_predict_cmd)

    p = add("advise", help="a workload's energy per request and the length caps that lower it within your limits "
            "(no GPU needed)",
            description="Price a workload with the physical model and propose output caps or prompt truncations, "
            "ranked by joules per request (the mean over the workload's requests) with the total for the workload. "
            "Only options within the limits below and the calibrated range are proposed; requests outside that "
            "range are warned about. A cap or truncation can cost answer quality, which no energy model measures.")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--workload", required=True, help='a CSV with n_in and n_out columns, or a spec such as '
                   '"n_in=512,n_out<=2048,n_req=1000" (n_req 1..10**7)')
    p.add_argument("--min-n-out", type=int, default=None, help="propose no output cap below this many tokens "
                   "(1..2**20; default: none besides the calibrated output lengths)")
    p.add_argument("--max-truncation", type=float, default=0.0, help="the largest fraction of any prompt that a "
                   "truncation may cut, 0..1 (0: no truncation; 0.5: no prompt cut below half its length)")
    p.add_argument("--quality-floor", type=float, default=0.0, help="the least fraction of the requests, 0..1, "
                   "that an option must leave whole (output not cut, prompt not truncated)")
    p.add_argument("--max-batch", type=int, default=1024, help="the engine's batch cap (1..10**7)")
    _calibration_flags(p)
    p.add_argument("--plot", default=None, help="write a plot of the options to this PNG file")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=_advise_cmd)

    p = add("book", help="build the book from the committed data (CPU only, in a checkout)")
    p.add_argument("--builder", default=None, help="Sphinx builder (default: html)")
    p.set_defaults(func=_book)

    data_help = "data folder (default: $ENERGYBOOK_DATA, else data/ of the checkout you are in, else here)"
    p = add("sweep", help="measure energy over an (n_in, n_out) grid on the GPU (resumable)")
    p.add_argument("--model", required=True, nargs="+", help="shipped model names, config.json files or "
                   "checkpoint directories, measured one after the other")
    p.add_argument("--output", default=None,
                   help="results CSV (default: <data>/measured/<gpu>/<engine>/<model>/grid.csv)")
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--plan", action="store_true", help="print how a torchrun launch shares the work among its "
                   "ranks, and measure nothing")
    p.add_argument("--ranks", type=int, default=None, help="with --plan: the number of ranks, 1..4096 (default: "
                   "torchrun's WORLD_SIZE, else the GPUs here)")
    p.add_argument("--json", action="store_true", help="with --plan: " + json_help)
    _add_sweep_arguments(p)
    p.set_defaults(func=_sweep_cmd)

    p = add("measure", help="measure through the papermill notebook (executed copy kept)")
    p.add_argument("--model", required=True, nargs="+", help="models, measured one after the other")
    p.add_argument("--output", default=None, help="results CSV (notebook parameter 'output')")
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="notebook parameter (JSON value), e.g. -p n_req 1000 -p n_in '[64,128]'")
    p.add_argument("--notebook-output", default=None,
                   help="executed notebook (default: book/measurements/<model>.ipynb in a checkout)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel that runs the notebook")
    p.set_defaults(func=_measure_cmd)

    p = add("peaks", help="measure this GPU's peaks (copy bandwidth, bf16 matmul, idle power, power cap, SM clock, "
                          "memory) into <data>/peaks/<gpu-uuid>.json")
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N (the meter reads that GPU, by UUID)")
    p.add_argument("--window", type=float, default=2.0, help="seconds each rate is measured over (1..60)")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=_peaks_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``energybook`` console script (and of ``python -m energybook``).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or :data:`EXIT_RUNTIME`, :data:`EXIT_USAGE`, :data:`EXIT_INTERRUPTED` or
        :data:`EXIT_BROKEN_PIPE` (argparse's own usage errors exit 2 through ``SystemExit``).
    """
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here rather than as "Exception ignored" at exit
    except BrokenPipeError:
        # The reader went away (`energybook models | head -1`): the recipe of Python's signal module docs,
        # stdout to devnull so that the flush at exit says nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    resume = args.command in ("sweep", "measure")
    try:
        _check_text(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        hint = " Every point finished so far is saved: rerun the same command to resume." if resume else ""
        print(f"energybook: interrupted.{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except ImportError as exc:
        print(f"energybook: error: {exc}: install the GPU packages with {INSTALL_GPU}", file=sys.stderr)
        return EXIT_RUNTIME
    except MemoryError:
        print("energybook: error: out of memory: use smaller lengths or fewer requests, or a machine with more "
              "memory", file=sys.stderr)
        return EXIT_RUNTIME
    except (ValueError, LookupError, RuntimeError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"energybook: error: {message}{_resume_hint(exc) if resume else ''}", file=sys.stderr)
        return _exit_status(exc)


def _exit_status(exc: Exception) -> int:
    """:data:`EXIT_USAGE` for bad input (ValueError, LookupError: a bad parameter, an unknown model), else
    :data:`EXIT_RUNTIME` (RuntimeError, OSError: no GPU or NVML, an engine failure; and a corrupt data file,
    :class:`~energybook.store.results.DataError`, although it is a ValueError)."""
    from energybook.store.results import DataError

    if isinstance(exc, (ValueError, LookupError)) and not isinstance(exc, DataError):
        return EXIT_USAGE
    return EXIT_RUNTIME


def _resume_hint(exc: BaseException) -> str:
    """Why a sweep stopped after it may have measured points: say that they are kept."""
    from energybook.measure.engines import EngineUnavailable

    if isinstance(exc, (ValueError, EngineUnavailable)) or type(exc).__name__ == "MeterUnavailable":
        return ""  # refused before anything was measured
    return " Points finished before the error are saved: fix the cause and rerun the same command to resume."


if __name__ == "__main__":
    sys.exit(main())
