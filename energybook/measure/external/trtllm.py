"""TensorRT-LLM measured through ``trtllm-bench`` (the SweetSpot study's engine, 0.21.0), a plugin engine.

:func:`write_trtllm_dataset` writes the synthetic requests (token ids, exactly ``n_in`` input and ``n_out``
output tokens each), :func:`trtllm_build_command` builds the engine once with the study's settings
(:data:`STUDY_TRTLLM`: TP 1, PP 1, max sequence 8192, max batch size 1024, max tokens 8192) and
:func:`trtllm_throughput_command` runs one grid point; :func:`parse_trtllm_report` reads the printed report
and :func:`parse_trtllm_report_json` its ``--report_json`` file. :class:`TrtllmBenchEngine` measures a point
and :func:`register` registers it as the ``trtllm`` engine (:func:`energybook.measure.engines.register_engine`).

TensorRT-LLM is not installed where this package was written and tested: this path was exercised with
stand-in programs that print the documented report formats, never with the real engine (untested).

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from energybook.measure.engines import register_engine
from energybook.measure.external.point import NUM, BenchEngine, ExternalRun, _inside, _tag
from energybook.measure.external.process import (
    DEFAULT_TIMEOUT_S,
    PACKAGES,
    CommandRun,
    check_timeout,
    installed_version,
    measure_command,
    timeout_option,
)
from energybook.measure.settings import option

logger = logging.getLogger(__name__)

PACKAGES["trtllm-bench"] = ("TensorRT-LLM", "tensorrt-llm")


def trtllm_version() -> str | None:
    """Installed TensorRT-LLM version (``importlib.metadata``), or ``None`` if it is not installed."""
    return installed_version("tensorrt-llm")


def write_trtllm_dataset(path: str | Path, n_in: int, n_out: int, n_req: int, vocab_size: int = 32000,
                         low_id: int = 100, seed: int = 0) -> Path:
    """Write the synthetic workload in the JSON-lines format that ``trtllm-bench`` reads.

    One request per line: ``{"task_id": i, "input_ids": [n_in token ids], "output_tokens": n_out}``.
    Format: TensorRT-LLM docs, "Preparing a Dataset" in docs/source/performance/perf-benchmarking.md
    (https://nvidia.github.io/TensorRT-LLM/performance/perf-benchmarking.html): keys ``task_id``
    (unique), ``input_ids`` (list of ints; ``prompt`` must then be absent) and ``output_tokens`` (int);
    one complete JSON entry per line. The reader is ``create_dataset_from_stream`` in
    tensorrt_llm/bench/utils/data.py (it stops at the first empty line, so there are none). The
    study's own tool, ``prepare_dataset.py token-norm-dist --input-stdev 0 --output-stdev 0``
    (benchmarks/cpp/prepare_dataset.py), writes the same keys with random token ids.

    Token ids are drawn uniformly from ``[low_id, vocab_size)`` with a fixed seed; the default
    32000 lies inside the vocabulary of every model of the study, and ids below 100 (where the
    special tokens of most tokenizers sit) are avoided. ``trtllm-bench`` ends generation on EOS
    only when ``--eos_id`` is given (default -1: EOS disabled), so every request yields ``n_out`` tokens.

    Args:
        path: File to write (parent folders are created).
        n_in: Input tokens per request.
        n_out: Output tokens per request.
        n_req: Number of requests.
        vocab_size: Token ids stay below this.
        low_id: Token ids start at this.
        seed: Seed of the token ids.

    Returns:
        The path written.
    """
    if min(n_in, n_out, n_req) < 1:
        raise ValueError(f"n_in, n_out and n_req must be positive (got {n_in}, {n_out}, {n_req})")
    if not 0 <= low_id < vocab_size:
        raise ValueError(f"need 0 <= low_id < vocab_size (got {low_id}, {vocab_size})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_req):
            ids = [rng.randrange(low_id, vocab_size) for _ in range(n_in)]
            f.write(json.dumps({"task_id": i, "input_ids": ids, "output_tokens": n_out}, separators=(",", ":")))
            f.write("\n")
    return path


@dataclass(frozen=True)
class TrtllmSettings:
    """Engine build settings for ``trtllm-bench build``.

    Flag names as in tensorrt_llm/bench/build/build.py (``--tp_size``, ``--pp_size``, ``--max_seq_len``,
    ``--max_batch_size``, ``--max_num_tokens``, ``--quantization``, ``--no_weights_loading``) and the
    docs' "Other Build Modes" (``trtllm-bench ... build --max_seq_len 4096 --max_batch_size 1024
    --max_num_tokens 2048``). ``--max_batch_size`` and ``--max_num_tokens`` are one option group (both or
    neither) and exclude ``--dataset``; without ``--dataset``, ``--max_seq_len`` is required.

    Attributes:
        tp_size: Tensor-parallel shards.
        pp_size: Pipeline-parallel stages.
        max_seq_len: Longest request, prompt plus output (tokens).
        max_batch_size: Most requests the in-flight batcher schedules at once.
        max_num_tokens: Most tokens the batcher schedules in one iteration.
        quantization: ``None`` for the checkpoint's own dtype (the study did not state one), or e.g. ``"FP8"``.
        dummy_weights: Build with dummy weights (``--no_weights_loading True``): no checkpoint download;
            the engine's speed is that of the real one, its text is not.
    """

    tp_size: int = 1
    pp_size: int = 1
    max_seq_len: int = 8192
    max_batch_size: int = 1024
    max_num_tokens: int = 8192
    quantization: str | None = None
    dummy_weights: bool = False


STUDY_TRTLLM = TrtllmSettings()
"""The SweetSpot study's build: TP 1, PP 1, max sequence 8192, max batch size 1024, max tokens 8192."""


def _trtllm_global(model: str, model_path: str | Path | None, workspace: str | Path | None) -> list[str]:
    # Global options come before the sub-command (docs, "trtllm-bench" reference: --model/-m,
    # --model_path, --workspace/-w, --log_level).
    cmd = ["trtllm-bench", "--model", model]
    if model_path is not None:
        cmd += ["--model_path", str(model_path)]
    if workspace is not None:
        cmd += ["--workspace", str(workspace)]
    return cmd


def trtllm_build_command(model: str, model_path: str | Path | None = None, workspace: str | Path | None = None,
                         settings: TrtllmSettings = STUDY_TRTLLM) -> list[str]:
    """``trtllm-bench --model M [--model_path P] [--workspace W] build ...`` with explicit engine settings.

    Args:
        model: Hugging Face model name (used by trtllm-bench for its configuration and in the report).
        model_path: Local checkpoint folder, if the weights are not to be fetched by name.
        workspace: trtllm-bench's workspace (default ``/tmp``); the engine lands in
            :func:`trtllm_engine_dir` of it.
        settings: Build settings (default: the study's).
    """
    s = settings
    cmd = _trtllm_global(model, model_path, workspace) + [
        "build", "--tp_size", str(s.tp_size), "--pp_size", str(s.pp_size), "--max_seq_len", str(s.max_seq_len),
        "--max_batch_size", str(s.max_batch_size), "--max_num_tokens", str(s.max_num_tokens)]
    if s.quantization:
        cmd += ["--quantization", s.quantization]
    if s.dummy_weights:
        cmd += ["--no_weights_loading", "True"]
    return cmd


def trtllm_engine_dir(workspace: str | Path, model: str, settings: TrtllmSettings = STUDY_TRTLLM) -> Path:
    """Where ``trtllm-bench build`` saves the engine: ``WORKSPACE/MODEL/tp_T_pp_P`` (build.py)."""
    return Path(workspace, model, f"tp_{settings.tp_size}_pp_{settings.pp_size}")


def trtllm_throughput_command(model: str, dataset: str | Path, engine_dir: str | Path,
                              model_path: str | Path | None = None, workspace: str | Path | None = None,
                              backend: str | None = "tensorrt", report_json: str | Path | None = None,
                              extra: tuple[str, ...] = ()) -> list[str]:
    """``trtllm-bench --model M throughput --dataset D --engine_dir E --backend tensorrt [--report_json F]``.

    ``--backend tensorrt`` runs the built engine; it is said explicitly because TensorRT-LLM 1.0 made
    the PyTorch backend the default (NVIDIA/TensorRT-LLM issue #8223; 0.21.0 ran the TRT engine by
    default; issue #5450 shows this exact command form). Pass ``backend=None`` to leave it out.
    ``--report_json`` (tensorrt_llm/bench/benchmark/throughput.py) writes the report as JSON beside
    the printed one. EOS stays disabled (``--eos_id`` default -1), so each request yields its
    ``output_tokens``.
    """
    cmd = _trtllm_global(model, model_path, workspace) + [
        "throughput", "--dataset", str(dataset), "--engine_dir", str(engine_dir)]
    if backend:
        cmd += ["--backend", backend]
    if report_json is not None:
        cmd += ["--report_json", str(report_json)]
    return cmd + list(extra)


@dataclass
class TrtllmReport:
    """The figures ``trtllm-bench throughput`` reports.

    Attributes:
        num_requests: Requests completed.
        request_throughput_req_s: Requests per second.
        output_throughput_tok_s: Output tokens per second ("Total Output Throughput"; "Token
            Throughput" in 0.17-era reports).
        total_token_throughput_tok_s: Input plus output tokens per second (``nan`` if not reported).
        total_latency_ms: First request start to last request end (milliseconds).
        avg_input_length: Mean input tokens per request.
        avg_output_length: Mean output tokens per request.
        version: TensorRT-LLM version the report names, if any.
    """

    num_requests: int
    request_throughput_req_s: float
    output_throughput_tok_s: float
    total_token_throughput_tok_s: float
    total_latency_ms: float
    avg_input_length: float
    avg_output_length: float
    version: str | None = None

    @property
    def duration_s(self) -> float:
        """The engine's own duration of the timed run (seconds)."""
        return self.total_latency_ms / 1000.0

    @property
    def total_output_tokens(self) -> int:
        """Output tokens of the whole run: mean output length times requests."""
        return round(self.avg_output_length * self.num_requests)

    @property
    def total_input_tokens(self) -> int:
        """Input tokens of the whole run: mean input length times requests."""
        return round(self.avg_input_length * self.num_requests)

    def counts(self) -> dict[str, tuple[float | None, bool]]:
        """The counts :func:`check_report` checks: name -> (value or ``None`` if not reported, exact)."""
        n = self.num_requests
        return {"requests": (n, True), "output tokens": (self.avg_output_length * n, True),
                "input tokens": (self.avg_input_length * n if math.isfinite(self.avg_input_length) else None, True)}


# Labels of the printed report, from ReportUtility.report_statistics in
# tensorrt_llm/bench/dataclasses/reporting.py and the sample outputs in
# docs/source/performance/perf-benchmarking.md (0.17-era "Token Throughput (tokens/sec)").
_TRT_LABELS = {
    "num_requests": [r"Number of requests:"],
    "request_throughput_req_s": [r"Request Throughput \(req/sec\):"],
    "output_throughput_tok_s": [r"Total Output Throughput \(tokens/sec\):", r"Token Throughput \(tokens/sec\):"],
    "total_token_throughput_tok_s": [r"Total Token Throughput \(tokens/sec\):"],
    "total_latency_ms": [r"Total Latency \(ms\):"],
    "avg_input_length": [r"Average Input Length \(tokens\):"],
    "avg_output_length": [r"Average Output Length \(tokens\):"],
}
_TRT_REQUIRED = ("num_requests", "request_throughput_req_s", "output_throughput_tok_s", "total_latency_ms",
                 "avg_output_length")


def _find_number(text: str, labels: list[str]) -> float | None:
    for label in labels:
        hits = re.findall(r"^\s*" + label + r"\s*" + NUM + r"\s*$", text, flags=re.MULTILINE)
        if hits:
            return float(hits[-1])  # the last report in the output
    return None


def parse_trtllm_report(text: str) -> TrtllmReport:
    """Parse the report that ``trtllm-bench throughput`` prints (its last one, if several).

    Raises:
        ValueError: A required figure is missing; the message names it.
    """
    values = {k: _find_number(text, labels) for k, labels in _TRT_LABELS.items()}
    missing = [k for k in _TRT_REQUIRED if values[k] is None]
    if missing:
        raise ValueError(f"not a trtllm-bench throughput report: no {', '.join(missing)} "
                         "(expected lines such as 'Request Throughput (req/sec):' and 'Total Latency (ms):')")
    version = re.findall(r"^\s*TensorRT[- ]LLM Version:\s*(\S+)", text, flags=re.MULTILINE)
    nan = float("nan")
    return TrtllmReport(
        num_requests=int(values["num_requests"]),
        request_throughput_req_s=values["request_throughput_req_s"],
        output_throughput_tok_s=values["output_throughput_tok_s"],
        total_token_throughput_tok_s=nan if values["total_token_throughput_tok_s"] is None
        else values["total_token_throughput_tok_s"],
        total_latency_ms=values["total_latency_ms"],
        avg_input_length=nan if values["avg_input_length"] is None else values["avg_input_length"],
        avg_output_length=values["avg_output_length"],
        version=version[-1] if version else None,
    )


def parse_trtllm_report_json(source: str | Path | dict) -> TrtllmReport:
    """Parse the file ``trtllm-bench throughput --report_json F`` writes.

    Keys from ``ReportUtility.get_statistics_dict`` (tensorrt_llm/bench/dataclasses/reporting.py):
    ``engine.version``, ``request_info.{num_requests, avg_input_length, avg_output_length}``,
    ``performance.{total_latency_ms, request_throughput_req_s, system_output_throughput_tok_s,
    system_total_throughput_tok_s}``.
    """
    d = source if isinstance(source, dict) else json.loads(Path(source).read_text(encoding="utf-8"))
    try:
        req, perf = d["request_info"], d["performance"]
        return TrtllmReport(
            num_requests=int(req["num_requests"]),
            request_throughput_req_s=float(perf["request_throughput_req_s"]),
            output_throughput_tok_s=float(perf["system_output_throughput_tok_s"]),
            total_token_throughput_tok_s=float(perf.get("system_total_throughput_tok_s", float("nan"))),
            total_latency_ms=float(perf["total_latency_ms"]),
            avg_input_length=float(req.get("avg_input_length", float("nan"))),
            avg_output_length=float(req["avg_output_length"]),
            version=(d.get("engine") or {}).get("version"),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a trtllm-bench report JSON: missing {exc}") from None




class TrtllmBenchEngine(BenchEngine):
    """TensorRT-LLM measured through ``trtllm-bench`` (the study's engine and protocol).

    Build the engine once with :meth:`build`, then :meth:`run_point` per grid point: it writes the
    point's data set, runs ``trtllm-bench throughput`` under the meter, checks the report and builds the point.

    Files: ``<workspace_dir>/<model slug>/`` holds ``datasets/``, ``reports/`` and ``logs/`` and is
    trtllm-bench's ``--workspace``, so the engine it builds lands in ``<that folder>/<model>/tp_T_pp_P``
    (``build.py`` derives it from ``--model`` itself); that folder must lie inside ``workspace_dir`` too.

    Args:
        model: Hugging Face model name (``--model``).
        workspace_dir: Folder for this engine's files (the sweep passes ``<data>/.work/trtllm``).
        model_path: Local checkpoint folder (``--model_path``), if any.
        settings: Build settings (default: the study's).
        engine_dir: An engine already built (anywhere; :meth:`build` then builds nothing). Default: where
            :meth:`build` puts it.
        timeout_s: Time limit per command (seconds; positive and finite).
        vocab_size: Synthetic token ids stay below this.
        executable: The ``trtllm-bench`` command (a name on PATH or a full path).

    Raises:
        ValueError: ``timeout_s`` is not a positive, finite number, or there is no ``workspace_dir``.
        energybook.store.workspace.PathError: the engine trtllm-bench would build for ``model`` (an absolute
            path, or one with ``..``) would lie outside ``workspace_dir``.
    """

    name = "trtllm"
    # Logged when the timed run ends: "Benchmark complete." (perf-benchmarking.md sample output) and, in newer
    # versions, "Benchmark done. Reporting results..." (throughput.py); the last such line ends the timed run.
    END_LINE = r"Benchmark (complete|done)"

    def __init__(self, model: str, workspace_dir: str | Path | None, model_path: str | Path | None = None,
                 settings: TrtllmSettings = STUDY_TRTLLM, engine_dir: str | Path | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, vocab_size: int = 32000, executable: str = "trtllm-bench"):
        self.timeout_s = check_timeout(timeout_s)
        self.model, self.model_path, self.settings = model, model_path, settings
        self._init_files(model, workspace_dir)
        self.workspace = self.folder  # trtllm-bench --workspace
        self.prebuilt = engine_dir is not None
        if self.prebuilt:
            self.engine_dir = Path(engine_dir)
        else:
            self.engine_dir = _inside(
                trtllm_engine_dir(self.workspace, model, settings), self.workspace_dir, "the engine trtllm-bench saves",
                f"trtllm-bench saves its engine in <workspace>/<model>/tp_T_pp_P, derived from --model {model!r}; "
                "name the model by its Hugging Face name (org/model) and give a local checkpoint as model_path "
                "(--model-path), or pass an engine already built as engine_dir")
        self.vocab_size, self.executable = vocab_size, executable
        self.build_run: CommandRun | None = None

    @property
    def version(self) -> str | None:
        """Installed TensorRT-LLM version, or ``None``."""
        return trtllm_version()

    def _cmd(self, cmd: list[str]) -> list[str]:
        return [self.executable, *cmd[1:]]

    def build_command(self) -> list[str]:
        """The ``trtllm-bench build`` command for this engine."""
        return self._cmd(trtllm_build_command(self.model, self.model_path, self.workspace, self.settings))

    def build(self, meter) -> CommandRun | None:
        """Build the engine (``trtllm-bench build``), measured like any command; skipped if it exists.

        Raises:
            FileNotFoundError: ``engine_dir`` was given but holds no engine (``config.json``), or the build
                finished without leaving one where trtllm-bench was expected to save it.
        """
        if (self.engine_dir / "config.json").is_file():
            logger.info("engine already built in %s", self.engine_dir)
            return None
        if self.prebuilt:
            raise FileNotFoundError(f"no built engine in {self.engine_dir} (no config.json): build it there, or "
                                    f"leave engine_dir (--engine-dir) out to let energybook build it in "
                                    f"{self.workspace_dir}")
        self.build_run = measure_command(self.build_command(), meter, timeout_s=self.timeout_s,
                                         log_path=self.path("logs", "build.log"))
        if not (self.engine_dir / "config.json").is_file():
            raise FileNotFoundError(f"trtllm-bench build finished but left no engine in {self.engine_dir}: this "
                                    "TensorRT-LLM version saves it elsewhere; find 'ENGINE SAVED' in "
                                    f"{self.build_run.log_path} and pass that folder as engine_dir (--engine-dir)")
        return self.build_run

    def describe(self) -> dict:
        """Engine name, version, settings and build command, for the sweep's provenance sidecar."""
        return {"engine": self.name, "engine_version": self.version, "model": self.model,
                "model_path": str(self.model_path) if self.model_path else None,
                "settings": asdict(self.settings), "engine_dir": str(self.engine_dir),
                "workspace": str(self.workspace), "timeout_s": self.timeout_s,
                "build_command": shlex.join(self.build_command())}

    def run_point(self, meter, n_in: int, n_out: int, n_req: int) -> ExternalRun:
        """Measure one grid point: write its data set, run ``trtllm-bench throughput``, check and parse the report.

        Raises:
            ValueError: ``n_in + n_out`` exceeds the engine's ``max_seq_len``.
            CommandFailed: the command exited non-zero, ran past ``timeout_s`` or could not write its log.
            ReportError: the report is missing, contradicts the point or is physically impossible
                (:func:`~energybook.measure.external.point.check_report`).
        """
        if n_in + n_out > self.settings.max_seq_len:
            raise ValueError(f"n_in + n_out = {n_in + n_out} exceeds the engine's max_seq_len "
                             f"{self.settings.max_seq_len}")
        dataset = write_trtllm_dataset(self.path("datasets", f"{_tag(n_in, n_out, n_req)}.jsonl"), n_in, n_out,
                                       n_req, vocab_size=self.vocab_size)
        report_json = self._report_path(n_in, n_out, n_req)
        cmd = self._cmd(trtllm_throughput_command(self.model, dataset, self.engine_dir, self.model_path,
                                                  self.workspace, report_json=report_json))
        point = self._measure(meter, (n_in, n_out, n_req), cmd,
                              lambda run: parse_trtllm_report_json(report_json) if report_json.is_file()
                              else parse_trtllm_report(run.stdout + "\n" + run.stderr))
        point.version = point.version or point.report.version
        return point


@dataclass(frozen=True)
class TrtllmOptions:
    """The ``trtllm`` engine's settings in a sweep (its build is :data:`STUDY_TRTLLM`, the study's)."""

    model_path: str | None = option(None, "local checkpoint folder (trtllm-bench --model_path)")
    engine_dir: str | None = option(None, "an engine already built (trtllm-bench --engine_dir)")
    timeout_s: float = timeout_option()
    executable: str = option("trtllm-bench", "the benchmark command (a name on PATH or a full path)")


def register() -> None:
    """The plugin: register :class:`TrtllmBenchEngine` as the ``trtllm`` engine (labelled untested)."""
    register_engine("trtllm", "command", TrtllmBenchEngine, tested=False,
                    summary="TensorRT-LLM through trtllm-bench (untested here)", settings=TrtllmOptions)
