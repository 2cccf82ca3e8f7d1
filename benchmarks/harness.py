"""The benchmarks' one harness: the engine a sweep builds, one timer, one JSON record with provenance.

* :func:`build_engine`: an engine built exactly as a sweep builds it, through the package's public API
  (``energybook.build_engine`` with a ``SweepConfig`` whose ``engine_settings`` come from
  ``energybook.engine_settings``); benchmarks never call an engine's constructor themselves.
* :func:`time_ms`: milliseconds per call, by CUDA events (synchronised) on a CUDA device and by
  ``time.perf_counter`` on the CPU; a :class:`Timing` holds every sample and their median.
* :func:`provenance` and :func:`write_record`: a JSON record naming the GPU (name, UUID, driver; through
  ``Meter.for_device(device).device_info()`` where NVML is there, else marked absent), the torch, transformers and
  energybook versions, the commit (``$ENERGYBOOK_COMMIT`` or the checkout's), the date (UTC), the command line,
  and the engine with its settings.

Example::

    from benchmarks import harness

    eng = harness.build_engine("Llama-3.2-1B", "lean", device="cuda", max_batch=1024, compile=False)
    t = harness.time_ms(lambda: eng.generate(64, 2, 8), device="cuda", repeats=5)
    harness.write_record("out/step.json", {"step_ms": t.median_ms, "timing": t.to_record()}, device="cuda",
                         engine="lean", settings=harness.engine_config("lean", compile=False).engine_settings)
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The environment variable that names the commit when the checkout on the machine has no git metadata.
COMMIT_ENV = "ENERGYBOOK_COMMIT"


# ----- the engine factory ------------------------------------------------------------------------------------
def engine_config(engine: str, *, max_batch: int | None = None, seed: int | None = None, **settings: Any):
    """The :class:`energybook.SweepConfig` a sweep of ``engine`` with these settings would have (its other fields
    the defaults); ``settings`` are the engine's settings fields (``energybook.engine_settings``)."""
    import energybook as eb

    kw: dict[str, Any] = {}
    if max_batch is not None:
        kw["max_batch"] = max_batch
    if seed is not None:
        kw["seed"] = seed
    return eb.SweepConfig(engine=engine, engine_settings=eb.engine_settings(engine, **settings), **kw)


def build_engine(model: str | Path, engine: str = "lean", *, device: str = "cuda", max_batch: int | None = None,
                 seed: int | None = None, workspace: str | Path | None = None, **settings: Any):
    """The engine ``engine`` for ``model``, built as a sweep builds it (``energybook.build_engine``).

    Args:
        model: Shipped model name, config.json path or checkpoint directory.
        engine: A registered engine (``lean``, ``hf``...).
        device: ``"cuda"``, ``"cuda:N"`` or ``"cpu"`` (tests).
        max_batch: Batch cap (default: the sweep's, 1024).
        seed: Seed of the weights and prompts (default: the sweep's, 0).
        workspace: The data folder a command engine works in (default: a temporary folder; wave engines use none).
        **settings: Fields of the engine's settings (``energybook.engine_settings(engine, **settings)``).

    Raises:
        ValueError: an unknown engine or setting, or a value the setting does not take.
        energybook.EngineUnavailable: the engine cannot run here.
    """
    import tempfile

    import energybook as eb

    config = engine_config(engine, max_batch=max_batch, seed=seed, **settings)
    if workspace is None:
        workspace = tempfile.mkdtemp(prefix=f"energybook-bench-{engine}-")
    return eb.build_engine(model, config, device=device, workspace=workspace)


# ----- the timer ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Milliseconds per call of every timed sample, and how they were taken."""

    samples_ms: list[float]
    clock: str  # "cuda_events" or "perf_counter"
    number: int = 1  # calls per sample (each sample is the mean of these)
    warmup: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def median_s(self) -> float:
        return self.median_ms / 1e3

    def to_record(self) -> dict[str, Any]:
        """The JSON form: median, min, mean, every sample (ms per call), the clock and the counts."""
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "mean_ms": self.mean_ms,
                "samples_ms": list(self.samples_ms), "clock": self.clock, "number": self.number,
                "warmup": self.warmup}


def _is_cuda(device: Any) -> bool:
    return str(getattr(device, "type", device)).startswith("cuda")


def time_ms(fn: Callable[[], Any], *, device: Any = "cuda", repeats: int = 10, warmup: int = 2, number: int = 1,
            setup: Callable[[], Any] | None = None) -> Timing:
    """Milliseconds per call of ``fn``: ``warmup`` untimed calls, then ``repeats`` samples of ``number`` calls each.

    On a CUDA device each sample is the time between two CUDA events recorded around the calls on the current
    stream, the device synchronised before the first event and the end event waited on; on the CPU (tests) it is
    ``time.perf_counter`` around the calls.

    Args:
        fn: What is timed (a kernel launch, a graph replay, a decode step).
        device: Where ``fn`` runs: a torch device or its name.
        repeats: Timed samples (at least 1).
        warmup: Untimed calls first.
        number: Calls per sample; a sample is their mean.
        setup: Run before every call, outside the timed span on the CPU and before the start event on CUDA
            (e.g. reset a position buffer before a graph replay).
    """
    if repeats < 1 or number < 1 or warmup < 0:
        raise ValueError(f"time_ms needs repeats >= 1, number >= 1, warmup >= 0; got {repeats}, {number}, {warmup}")
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    samples = []
    if _is_cuda(device):
        import torch

        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if setup is not None and number == 1:
                setup()
            start.record()
            for _ in range(number):
                if setup is not None and number > 1:
                    setup()
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / number)
        return Timing(samples, "cuda_events", number, warmup)
    for _ in range(repeats):
        total = 0.0
        for _ in range(number):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            total += time.perf_counter() - t0
        samples.append(total / number * 1e3)
    return Timing(samples, "perf_counter", number, warmup)


# ----- the record --------------------------------------------------------------------------------------------
def gpu_info(device: Any = "cuda", meter: Any = None) -> dict[str, Any]:
    """The GPU's name, UUIDs, driver and power limit from NVML (``Meter.for_device(device).device_info()``, or
    ``meter``'s), or the same keys as None with ``nvml`` saying why they are absent."""
    if meter is not None:
        return dict(meter.device_info(), nvml="present")
    try:
        from energybook.measure.meter import Meter

        probe = Meter.for_device(device)
    except Exception as exc:  # noqa: BLE001 - no NVML, no GPU, a CPU device: provenance says so
        return {"gpu": None, "gpu_uuid": None, "cuda_uuid": None, "driver": None, "power_limit_w": None,
                "nvml": f"absent: {type(exc).__name__}: {exc}"}
    try:
        return dict(probe.device_info(), nvml="present")
    finally:
        probe.close()


def commit() -> str | None:
    """``$ENERGYBOOK_COMMIT``, else the checkout's commit (``energybook.measure.runner.source_commit``)."""
    from energybook.measure.runner import source_commit

    return os.environ.get(COMMIT_ENV) or source_commit()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken: recorded as None
        return None


def provenance(device: Any = "cuda", *, engine: str | None = None, settings: Any = None, meter: Any = None,
               argv: list[str] | None = None) -> dict[str, Any]:
    """Where, when and how a benchmark ran: the GPU (:func:`gpu_info`), versions, commit, date, command, engine.

    Args:
        device: The device measured.
        engine: The engine's registered name, if any.
        settings: The engine's settings (an instance of its settings class; recorded with
            ``energybook.measure.settings.to_record``) or a plain dict (an engine's ``settings`` property).
        meter: A meter already open on the GPU (its ``device_info`` is used instead of opening another).
        argv: The command line (default ``sys.argv``).
    """
    import energybook
    from energybook.measure import settings as S

    info = gpu_info(device, meter)
    torch_version = _version("torch")
    cuda = None
    if torch_version is not None:
        import torch

        cuda = torch.version.cuda
    if settings is not None and S.is_settings(settings):
        settings = S.to_record(settings)
    argv = list(sys.argv if argv is None else argv)
    info.update(device=str(device), torch=torch_version, cuda=cuda, transformers=_version("transformers"),
                energybook=energybook.__version__, python=platform.python_version(), host=platform.node(),
                commit=commit(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                command=shlex.join(["python", *argv]) if argv else None, engine=engine, engine_settings=settings)
    return info


def record(data: dict[str, Any], prov: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the provenance under ``"provenance"``, and the GPU, its UUID and the commit at the top."""
    return {"gpu": prov.get("gpu"), "gpu_uuid": prov.get("gpu_uuid"), "commit": prov.get("commit"), **data,
            "provenance": prov}


def write_record(path: str | Path, data: dict[str, Any], *, device: Any = "cuda", engine: str | None = None,
                 settings: Any = None, meter: Any = None, prov: dict[str, Any] | None = None) -> Path:
    """Write ``data`` as JSON to ``path`` with its provenance (:func:`provenance`, or ``prov``); returns the path.
    Values JSON does not know (a torch dtype, a Path) are written as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if prov is None:
        prov = provenance(device, engine=engine, settings=settings, meter=meter)
    path.write_text(json.dumps(record(data, prov), indent=1, default=str) + "\n")
    return path


def say_provenance(prov: dict[str, Any]) -> str:
    """One line of the provenance for a benchmark's printed header."""
    return (f"GPU {prov.get('gpu')} {prov.get('gpu_uuid')}, driver {prov.get('driver')}; torch {prov.get('torch')} "
            f"(CUDA {prov.get('cuda')}), transformers {prov.get('transformers')}, energybook "
            f"{prov.get('energybook')}; {prov.get('date')}; commit {prov.get('commit')}")


def settings_record(engine: str, **settings: Any) -> dict[str, Any]:
    """The engine's settings as recorded (``energybook.measure.settings.to_record`` of
    ``energybook.engine_settings(engine, **settings)``): every field, with the class's name."""
    import energybook as eb
    from energybook.measure.settings import to_record

    return to_record(eb.engine_settings(engine, **settings))
