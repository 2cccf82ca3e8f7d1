"""vLLM measured through ``vllm bench throughput`` on its random data set with fixed lengths, a plugin engine.

:func:`vllm_throughput_command` runs one grid point (the benchmark sets ``ignore_eos``, so every request
yields ``n_out`` tokens); :func:`parse_vllm_output` reads the JSON it writes and its printed ``Throughput:``
line. :class:`VllmBenchEngine` measures a point and :func:`register` registers it as the ``vllm`` engine
(:func:`energybook.measure.engines.register_engine`).

vLLM is not installed where this package was written and tested: this path was exercised with stand-in
programs that print the documented report formats, never with the real engine (untested).

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from energybook.measure.engines import register_engine
from energybook.measure.external.point import NUM, BenchEngine, ExternalRun
from energybook.measure.external.process import (
    DEFAULT_TIMEOUT_S,
    PACKAGES,
    check_timeout,
    installed_version,
    timeout_option,
)
from energybook.measure.settings import option

PACKAGES["vllm"] = ("vLLM", "vllm")


def vllm_version() -> str | None:
    """Installed vLLM version (``importlib.metadata``), or ``None`` if it is not installed."""
    return installed_version("vllm")


@dataclass(frozen=True)
class VllmSettings:
    """Engine settings passed to ``vllm bench throughput`` (vLLM's engine arguments).

    Attributes:
        load_format: ``"dummy"`` for random weights (no checkpoint download; speed as with real
            weights), ``None`` to load the checkpoint.
        max_num_seqs: Most sequences per iteration (the study's max_batch_size).
        max_num_batched_tokens: Most tokens per iteration (the study's max_num_tokens); ``None``: vLLM's default.
        max_model_len: Longest request (tokens); ``None``: the model's own.
        dtype: Weights and activations dtype; ``None``: vLLM's ``auto``.
        tensor_parallel_size: GPUs per model.
        extra: Further arguments, appended as given.
    """

    load_format: str | None = "dummy"
    max_num_seqs: int | None = 1024
    max_num_batched_tokens: int | None = 8192
    max_model_len: int | None = 8192
    dtype: str | None = None
    tensor_parallel_size: int = 1
    extra: tuple[str, ...] = ()


STUDY_VLLM = VllmSettings()
"""vLLM settings mirroring the study's TensorRT-LLM build (1024 sequences, 8192 tokens, 8192 max length)."""


def vllm_throughput_command(model: str, n_in: int, n_out: int, n_req: int, output_json: str | Path,
                            settings: VllmSettings = STUDY_VLLM, executable: str = "vllm") -> list[str]:
    """``vllm bench throughput --model M --dataset-name random --input-len n_in --output-len n_out ...``.

    From vllm/benchmarks/throughput.py: without a data set path the benchmark falls back to its
    random data set; ``--dataset-name random`` says so explicitly (its default is ``sharegpt``).
    ``--input-len``/``--output-len`` set the lengths (newer versions map them onto
    ``--random-input-len``/``--random-output-len``); ``--random-range-ratio`` is left at its default,
    which gives every request exactly these lengths (0.0 in current versions, symmetric range;
    1.0 in older ``benchmark_throughput.py``, range [ratio*len, len]). ``run_vllm`` sets
    ``SamplingParams(ignore_eos=True, max_tokens=expected_output_len)``, so EOS is ignored.

    Args:
        model: Hugging Face model name or local checkpoint folder.
        n_in: Input tokens per request.
        n_out: Output tokens per request.
        n_req: Number of requests (``--num-prompts``).
        output_json: File the benchmark writes its results to (``--output-json``).
        settings: Engine settings (default :data:`STUDY_VLLM`, dummy weights).
        executable: The ``vllm`` command.
    """
    s = settings
    cmd = [executable, "bench", "throughput", "--model", str(model), "--dataset-name", "random",
           "--input-len", str(n_in), "--output-len", str(n_out), "--num-prompts", str(n_req),
           "--output-json", str(output_json)]
    if s.load_format:
        cmd += ["--load-format", s.load_format]
    for flag, value in (("--max-num-seqs", s.max_num_seqs), ("--max-num-batched-tokens", s.max_num_batched_tokens),
                        ("--max-model-len", s.max_model_len), ("--dtype", s.dtype)):
        if value is not None:
            cmd += [flag, str(value)]
    if s.tensor_parallel_size != 1:
        cmd += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    return cmd + list(s.extra)


@dataclass
class VllmReport:
    """The figures ``vllm bench throughput`` reports.

    Attributes:
        elapsed_time_s: The engine's own duration of ``llm.generate`` over all requests (seconds).
        num_requests: Requests run.
        total_num_tokens: Prompt plus output tokens of all requests.
        requests_per_second: Requests per second.
        tokens_per_second: Prompt plus output tokens per second.
        total_prompt_tokens: Prompt tokens (printed "Total num prompt tokens:"; ``None`` if absent).
        total_output_tokens: Output tokens (printed "Total num output tokens:", else the JSON's total less the
            printed prompt tokens, else derived from the printed output tokens/s; ``None`` if none is there).
        derived: Names of the figures derived from throughputs that vLLM prints rounded to 2 decimals
            (approximate), rather than counted by vLLM.
    """

    elapsed_time_s: float
    num_requests: int
    total_num_tokens: int | None
    requests_per_second: float
    tokens_per_second: float
    total_prompt_tokens: int | None = None
    total_output_tokens: int | None = None
    derived: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        """The engine's own duration of the timed run (seconds)."""
        return self.elapsed_time_s

    def counts(self) -> dict[str, tuple[float | None, bool]]:
        """The counts :func:`check_report` checks: name -> (value or ``None`` if not reported, exact)."""
        return {"requests": (self.num_requests, "num_requests" not in self.derived),
                "output tokens": (self.total_output_tokens, "total_output_tokens" not in self.derived),
                "input tokens": (self.total_prompt_tokens, True),
                "input plus output tokens": (self.total_num_tokens, "total_num_tokens" not in self.derived)}


_VLLM_THROUGHPUT = re.compile(r"Throughput:\s*" + NUM + r"\s*requests/s,\s*" + NUM + r"\s*total tokens/s"
                              r"(?:,\s*" + NUM + r"\s*output tokens/s)?")


def parse_vllm_output(stdout: str, output_json: str | Path | dict | None = None) -> VllmReport:
    """Parse ``vllm bench throughput``'s results: the ``--output-json`` file, else its printed lines.

    JSON keys (vllm/benchmarks/throughput.py, ``main``): ``elapsed_time``, ``num_requests``,
    ``total_num_tokens``, ``requests_per_second``, ``tokens_per_second``. Printed lines:
    ``Throughput: R requests/s, T total tokens/s, O output tokens/s``, ``Total num prompt tokens:  P``,
    ``Total num output tokens:  N``. Without the JSON, elapsed time and token totals are derived from
    the throughput line (rounded to 2 decimals by vLLM), so they are approximate.

    Raises:
        ValueError: Neither the JSON nor a ``Throughput:`` line is there.
    """
    prompt = re.findall(r"^\s*Total num prompt tokens:\s*(\d+)", stdout, flags=re.MULTILINE)
    output = re.findall(r"^\s*Total num output tokens:\s*(\d+)", stdout, flags=re.MULTILINE)
    tp = _VLLM_THROUGHPUT.findall(stdout)
    data = None
    if isinstance(output_json, dict):
        data = output_json
    elif output_json is not None and Path(output_json).is_file():
        data = json.loads(Path(output_json).read_text(encoding="utf-8"))
    n_prompt = int(prompt[-1]) if prompt else None
    n_output = int(output[-1]) if output else None
    if data is not None:
        try:
            rep = VllmReport(float(data["elapsed_time"]), int(data["num_requests"]), int(data["total_num_tokens"]),
                             float(data["requests_per_second"]), float(data["tokens_per_second"]), n_prompt, n_output)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a vllm bench throughput JSON: missing {exc}") from None
        if rep.total_output_tokens is None and n_prompt is not None:
            rep.total_output_tokens = rep.total_num_tokens - n_prompt  # both counted by vLLM
        elif rep.total_output_tokens is None and tp and tp[-1][2] and math.isfinite(rep.elapsed_time_s):
            rep.total_output_tokens = round(float(tp[-1][2]) * rep.elapsed_time_s)
            rep.derived = ("total_output_tokens",)
        return rep
    if not tp:
        raise ValueError("no vllm bench throughput results: no --output-json file and no "
                         "'Throughput: ... requests/s, ... total tokens/s' line in the output")
    rps, tps, ops = tp[-1]
    derived = ["elapsed_time_s", "num_requests"]
    total = n_prompt + n_output if n_prompt is not None and n_output is not None else None
    elapsed = total / float(tps) if total is not None and float(tps) > 0 else float("nan")
    n_req = round(float(rps) * elapsed) if math.isfinite(elapsed) else 0
    if n_output is None and ops and math.isfinite(elapsed):
        n_output = round(float(ops) * elapsed)
        derived.append("total_output_tokens")
    return VllmReport(elapsed, n_req, total, float(rps), float(tps), n_prompt, n_output, tuple(derived))




class VllmBenchEngine(BenchEngine):
    """vLLM measured through ``vllm bench throughput`` on its random data set with fixed lengths.

    Files: ``<workspace_dir>/<model slug>/`` holds ``reports/`` and ``logs/``.

    Args:
        model: Hugging Face model name or local checkpoint folder.
        workspace_dir: Folder for this engine's files (the sweep passes ``<data>/.work/vllm``).
        settings: Engine settings (default :data:`STUDY_VLLM`: dummy weights, 1024 sequences).
        timeout_s: Time limit per command (seconds; positive and finite).
        executable: The ``vllm`` command (a name on PATH or a full path).

    Raises:
        ValueError: ``timeout_s`` is not a positive, finite number, or there is no ``workspace_dir``.
    """

    name = "vllm"
    END_LINE = r"^Throughput:"  # printed right after llm.generate returns (throughput.py, main)

    def __init__(self, model: str, workspace_dir: str | Path | None, settings: VllmSettings = STUDY_VLLM,
                 timeout_s: float = DEFAULT_TIMEOUT_S, executable: str = "vllm"):
        self.timeout_s = check_timeout(timeout_s)
        self.model, self.settings, self.executable = model, settings, executable
        self._init_files(model, workspace_dir)

    @property
    def version(self) -> str | None:
        """Installed vLLM version, or ``None``."""
        return vllm_version()

    def build(self, meter=None) -> None:
        """Nothing to build: vLLM loads the model in every ``vllm bench throughput`` run."""
        return None

    def describe(self) -> dict:
        """Engine name, version and settings, for the sweep's provenance sidecar."""
        return {"engine": self.name, "engine_version": self.version, "model": self.model,
                "settings": asdict(self.settings), "workspace": str(self.folder), "timeout_s": self.timeout_s}

    def run_point(self, meter, n_in: int, n_out: int, n_req: int) -> ExternalRun:
        """Measure one grid point with ``vllm bench throughput``, check and parse its results.

        Raises:
            CommandFailed: the command exited non-zero, ran past ``timeout_s`` or could not write its log.
            ReportError: the results are missing, contradict the point or are physically impossible
                (:func:`~energybook.measure.external.point.check_report`).
        """
        out_json = self._report_path(n_in, n_out, n_req)
        cmd = vllm_throughput_command(self.model, n_in, n_out, n_req, out_json, self.settings, self.executable)
        return self._measure(meter, (n_in, n_out, n_req), cmd, lambda run: parse_vllm_output(run.stdout, out_json))


@dataclass(frozen=True)
class VllmOptions:
    """The ``vllm`` engine's settings in a sweep (its engine settings are :data:`STUDY_VLLM`, the study's)."""

    timeout_s: float = timeout_option()
    executable: str = option("vllm", "the benchmark command (a name on PATH or a full path)")


def register() -> None:
    """The plugin: register :class:`VllmBenchEngine` as the ``vllm`` engine (labelled untested)."""
    register_engine("vllm", "command", VllmBenchEngine, tested=False,
                    summary="vLLM through `vllm bench throughput` (untested here)", settings=VllmOptions)
