"""GPU diagnostic (not a test): does the meter's sampler change the speed of decode?

Known finding (``benchmarks/results/diag_step.txt``, lent H100 VM): eager decode at batch 1000 ran at
~70 ms/step with no meter thread and ~14.8 ms/step with the meter's 2 ms polling thread awake
(13.4 ms with CUDA graphs). This script times decode steps of the torch engine (Llama-3.2-1B, dummy
weights) at batch 1000, n_in 64, n_out 128, eager and with CUDA graphs, under four conditions:

* ``none``: no sampler at all;
* ``thread``: the meter's NVML sampler in a thread of this process (``Meter(sampler="thread")``);
* ``process``: the meter's NVML sampler in a child process (``Meter(sampler="process")``): this
  process gets no extra thread;
* ``sleeper``: a plain extra thread that only sleeps ``--poll-s`` in a loop, and touches no NVML.

Conditions and modes are interleaved and repeated (the order is reversed on every other repeat), so
a drift of the GPU's state shows as a difference between repeats, not between conditions. Each run
records ms/step, the process's CPU time and context switches during the timed generation, and the
SM clock, temperature and clock-event reasons read from NVML just before and after it (outside the
timed window). With a meter, the decode window's energy per token is read too.

Hypotheses this is meant to tell apart (none is established):

* H1, an idle vCPU: when the only busy thread blocks (on a full CUDA launch queue, or in a
  synchronisation), the VM's vCPU goes idle and takes long to wake; any thread that wakes every
  few ms keeps it out of deep idle. Predicts ``sleeper`` about as fast as ``thread``.
* H2, NVML itself: the meter's NVML calls (driver ioctls) change something on the driver or GPU
  side. Predicts ``thread`` and ``process`` fast, ``sleeper`` slow.
* H3, something inside this process (GIL hand-offs, how the CUDA runtime's waiting thread spins or
  yields) depends on a second thread of the same process. Predicts ``thread`` and ``sleeper``
  fast, ``process`` slow.
* H4, none of the above: the GPU's state (clocks, temperature, throttling) or the order of runs.
  Predicts differences between repeats, or recorded clocks and reasons that differ with the speed.

Prints the GPU name and UUIDs, the torch version and the date, a table per run and a summary
(median ms/step per mode and condition), and writes everything as JSON to ``--out``. About 1-3
minutes on one H100/H200; ``--max-seconds`` (default 220) stops starting new runs past a budget.

The engine is built as a sweep builds it (:func:`benchmarks.harness.build_engine`).

Usage: ``python -m benchmarks.meter_sampler --out benchmarks/results/meter_sampler.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/meter_sampler.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

MODES = ("eager", "graphs")
CONDITIONS = ("none", "thread", "process", "sleeper")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("meter_sampler.json"), help="JSON results file")
    p.add_argument("--model", default="Llama-3.2-1B")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--n-in", type=int, default=64)
    p.add_argument("--n-out", type=int, default=128)
    p.add_argument("--warmup-steps", type=int, default=16, help="decode steps of the warm-up before every run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--poll-s", type=float, default=0.002, help="meter polling period and sleeper period (s)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    p.add_argument("--max-seconds", type=float, default=220.0, help="start no new run after this many seconds")
    args = p.parse_args(argv)
    for name in ("batch", "n_in", "n_out", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.n_out < 2:
        p.error("--n-out must be at least 2 (one decode step)")
    return args


def plan_runs(modes, conditions, repeats: int) -> list[tuple[int, str, str]]:
    """(repeat, mode, condition) in run order: every pair once per repeat, reversed on odd repeats."""
    pairs = [(m, c) for m in modes for c in conditions]
    runs = []
    for rep in range(repeats):
        runs += [(rep, m, c) for m, c in (pairs if rep % 2 == 0 else pairs[::-1])]
    return runs


class Sleeper:
    """An extra thread that only sleeps ``period_s`` in a loop (no NVML, no GPU)."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self.wakeups = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sleeper", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            time.sleep(self.period_s)
            self.wakeups += 1

    def __enter__(self) -> Sleeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def usage() -> dict:
    """This process's CPU times and context switches so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "vol_cs": r.ru_nvcsw, "invol_cs": r.ru_nivcsw}


def usage_delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Median ms/step per mode and condition (``"mode/condition" -> {median, min, max, n}``)."""
    groups: dict[str, list[float]] = {}
    for r in runs:
        if r.get("ms_per_step") is not None:
            groups.setdefault(f"{r['mode']}/{r['condition']}", []).append(r["ms_per_step"])
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in groups.items()}


def _f(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def format_table(runs: list[dict]) -> str:
    """One line per run, then the summary."""
    head = (f"{'rep':>3} {'mode':6} {'sampler':8} {'ms/step':>8} {'prefill s':>9} {'cpu s':>6} {'vol cs':>7} "
            f"{'invol cs':>8} {'SM MHz':>11} {'J/token':>8}  reasons / note")
    lines = [head, "-" * len(head)]
    for r in runs:
        u = r.get("usage") or {}
        clocks = f"{_f(r.get('sm_mhz_before'), '.0f')}/{_f(r.get('sm_mhz_after'), '.0f')}"
        lines.append(f"{r['rep']:>3} {r['mode']:6} {r['condition']:8} {_f(r.get('ms_per_step'), '8.2f')} "
                     f"{_f(r.get('prefill_s'), '9.3f')} {_f(u.get('cpu_s'), '6.2f')} {_f(u.get('vol_cs'), '7d')} "
                     f"{_f(u.get('invol_cs'), '8d')} {clocks:>11} {_f(r.get('j_per_token'), '8.4f')}  "
                     f"{r.get('throttle_reasons') or ''} {r.get('note') or ''}".rstrip())
    lines += ["", f"{'mode/sampler':20} {'median':>8} {'min':>8} {'max':>8} {'n':>3}  (ms/step)"]
    for k, s in summarize(runs).items():
        lines.append(f"{k:20} {s['median']:8.2f} {s['min']:8.2f} {s['max']:8.2f} {s['n']:>3}")
    return "\n".join(lines)


def _gpu_state(nv, handle) -> dict:
    """SM clock, temperature and active clock-event reasons, read once (outside the timed window)."""
    from energybook.measure import meter as M

    out = {}
    try:
        out["sm_mhz"] = float(nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM))
        out["temp_c"] = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
    except Exception:  # noqa: BLE001
        pass
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        try:
            out["reasons"] = M.decode_reasons(int(getattr(nv, name)(handle)), M._reason_bits(nv))
            break
        except Exception:  # noqa: BLE001
            continue
    return out


def run_one(engine, args, mode: str, condition: str, rep: int, probe) -> dict:
    """Warm up, then time one generation under ``condition``."""
    from energybook.measure.meter import Meter, MeterError

    graphs = mode == "graphs"
    row: dict = {"rep": rep, "mode": mode, "condition": condition}
    meter = sleeper = None
    if condition in ("thread", "process"):
        meter = Meter.for_device(args.device, poll_s=args.poll_s, sampler=condition).start()
    elif condition == "sleeper":
        sleeper = Sleeper(args.poll_s).__enter__()
    try:
        engine.generate(args.n_in, args.warmup_steps + 1, args.batch, cuda_graphs=graphs)
        before = _gpu_state(probe._nv, probe._h)
        u0 = usage()
        w = engine.generate(args.n_in, args.n_out, args.batch, cuda_graphs=graphs)
        u1 = usage()
        after = _gpu_state(probe._nv, probe._h)
    finally:
        if sleeper is not None:
            sleeper.__exit__()
            row["sleeper_wakeups"] = sleeper.wakeups
    t = w.times
    u = usage_delta(u0, u1)
    u["cpu_s"] = u["user_s"] + u["sys_s"]
    row.update(ms_per_step=(t.end - t.prefill_end) / (args.n_out - 1) * 1e3, prefill_s=t.prefill_end - t.start,
               wall_s=t.end - t.start, cuda_graphs=w.cuda_graphs, usage=u,
               sm_mhz_before=before.get("sm_mhz"), sm_mhz_after=after.get("sm_mhz"),
               temp_c_before=before.get("temp_c"), temp_c_after=after.get("temp_c"),
               reasons_before=before.get("reasons"), reasons_after=after.get("reasons"))
    if meter is not None:
        try:
            r = meter.reading(t.prefill_end, t.end, end="before")
            row.update(j_per_token=r.energy_j / (args.batch * (args.n_out - 1)), power_w=r.power_w, ticks=r.ticks,
                       samples=r.samples, throttle_reasons=r.throttle_reasons)
        except MeterError as exc:
            row["note"] = f"meter: {exc}"
        finally:
            meter.close()
    else:
        row["throttle_reasons"] = "|".join(sorted({x for x in (before.get("reasons"), after.get("reasons")) if x}))
    return row


def header(probe, args) -> dict:
    """What ran where and when."""
    import torch

    idx = torch.cuda.current_device() if args.device == "cuda" else int(str(args.device).split(":")[1])
    info = probe.device_info()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(idx), "gpu_uuid": info["gpu_uuid"], "cuda_uuid": info["cuda_uuid"],
            "driver": info["driver"], "power_limit_w": info["power_limit_w"], "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    try:
        import torch
    except ImportError:
        print("meter_sampler: needs PyTorch with CUDA", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("meter_sampler: needs a CUDA GPU (none is visible to torch)", file=sys.stderr)
        return 2
    from energybook.measure.meter import Meter

    probe = Meter.for_device(args.device)  # never started: device facts and the before/after state reads
    res = {"header": header(probe, args), "runs": [],
           "provenance": harness.provenance(args.device, meter=probe, engine="hf",
                                            settings=harness.settings_record("hf", cuda_graphs=True))}
    h = res["header"]
    print(f"{h['date_utc']}  {h['gpu']}  {h['gpu_uuid']} (torch: {h['cuda_uuid']})  driver {h['driver']}  "
          f"torch {h['torch']} (CUDA {h['cuda']})  {h['cpu_affinity']} CPUs  host {h['host']}", flush=True)
    engine = harness.build_engine(args.model, "hf", device=args.device, max_batch=max(1024, args.batch),
                                  cuda_graphs=True)
    res["engine"] = engine.settings
    res["engine_settings"] = harness.settings_record("hf", cuda_graphs=True)
    print(f"{args.model}: batch {args.batch}, n_in {args.n_in}, n_out {args.n_out}; graph attention "
          f"{engine.graph_attention}; built in {engine.settings.get('build_s')} s", flush=True)
    for rep, mode, condition in plan_runs(args.modes, args.conditions, args.repeats):
        if time.perf_counter() - t_start > args.max_seconds:
            res["truncated"] = f"stopped at the --max-seconds budget ({args.max_seconds:.0f} s)"
            print(res["truncated"], flush=True)
            break
        row = run_one(engine, args, mode, condition, rep, probe)
        res["runs"].append(row)
        print(f"  rep {rep} {mode:6} {condition:8} {row['ms_per_step']:7.2f} ms/step", flush=True)
    res["summary"] = summarize(res["runs"])
    res["seconds"] = time.perf_counter() - t_start
    print()
    print(format_table(res["runs"]))
    print(f"\n{res['seconds']:.0f} s in all")
    probe.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
