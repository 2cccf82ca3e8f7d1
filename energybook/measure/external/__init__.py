"""Measure external inference engines (TensorRT-LLM, vLLM) through their own benchmark commands.

energybook runs the engine's benchmark as a subprocess and measures the GPU energy of exactly that run with
:class:`energybook.measure.meter.Meter`: the window opens just before the process starts and closes just
after it exits. The engine's printed report is kept, parsed and checked against the workload asked for.

* :mod:`~energybook.measure.external.process`: the process-group runner, :func:`measure_command` (time
  limit, the whole group stopped on a timeout, an interrupt or a failed log; the output teed to a log);
* :mod:`~energybook.measure.external.point`: what the engines share: the report checks
  (:func:`check_report`), the bench window, :class:`ExternalRun` (one point, its row) and the engine's
  files inside its workspace;
* :mod:`~energybook.measure.external.trtllm`: TensorRT-LLM's ``trtllm-bench`` (:class:`TrtllmBenchEngine`);
* :mod:`~energybook.measure.external.vllm`: vLLM's ``vllm bench throughput`` (:class:`VllmBenchEngine`).

Each engine module has a plugin function, ``register``, that registers its engine with
:func:`energybook.measure.engines.register_engine` when the registry loads its plugins (``PLUGINS`` there).

Two energy windows are recorded per point. The *process* window holds everything the command did: start-up,
weight loading, the engine's warm-up requests and the timed run. The *bench* window is the engine's own timed
run: it ends when the engine's end-of-run line arrives on its output and lasts the duration the engine
reports. ``energy_j`` is the bench window when it could be located, else the process window; the ``window``
column says which.

Neither engine is installed where this package was written and tested: these paths were exercised with
stand-in subprocesses that print the documented report formats, never with a real engine (untested).

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from energybook.measure.engines import EngineUnavailable
from energybook.measure.external.point import (
    DERIVED_TOLERANCE,
    MAX_OUTPUT_TOKENS_PER_S,
    MIN_DURATION_S,
    BenchEngine,
    EngineReport,
    ExternalRun,
    ReportError,
    bench_window,
    check_report,
    meter_resolution,
    report_problems,
)
from energybook.measure.external.process import (
    DEFAULT_TIMEOUT_S,
    KILL_GRACE_S,
    PACKAGES,
    READER_JOIN_S,
    TAIL_LINES,
    CommandFailed,
    CommandRun,
    check_timeout,
    installed_version,
    measure_command,
)
from energybook.measure.external.trtllm import (
    STUDY_TRTLLM,
    TrtllmBenchEngine,
    TrtllmReport,
    TrtllmSettings,
    parse_trtllm_report,
    parse_trtllm_report_json,
    trtllm_build_command,
    trtllm_engine_dir,
    trtllm_throughput_command,
    trtllm_version,
    write_trtllm_dataset,
)
from energybook.measure.external.vllm import (
    STUDY_VLLM,
    VllmBenchEngine,
    VllmReport,
    VllmSettings,
    parse_vllm_output,
    vllm_throughput_command,
    vllm_version,
)

__all__ = [
    "DEFAULT_TIMEOUT_S", "DERIVED_TOLERANCE", "KILL_GRACE_S", "MAX_OUTPUT_TOKENS_PER_S", "MIN_DURATION_S", "PACKAGES",
    "READER_JOIN_S", "STUDY_TRTLLM", "STUDY_VLLM", "TAIL_LINES", "BenchEngine", "CommandFailed", "CommandRun",
    "EngineReport", "EngineUnavailable", "ExternalRun", "ReportError", "TrtllmBenchEngine", "TrtllmReport",
    "TrtllmSettings", "VllmBenchEngine", "VllmReport", "VllmSettings", "bench_window", "check_report",
    "check_timeout", "installed_version", "measure_command", "meter_resolution", "parse_trtllm_report",
    "parse_trtllm_report_json", "parse_vllm_output", "report_problems", "trtllm_build_command",
    "trtllm_engine_dir", "trtllm_throughput_command", "trtllm_version", "vllm_throughput_command", "vllm_version",
    "write_trtllm_dataset",
]
