"""One grid point of an external engine: its report checked, its bench window located, its row; its files.

Everything here is shared by the engine modules (:mod:`.trtllm`, :mod:`.vllm`):

* **Reports are checked** (:func:`check_report`) before anything is recorded: a report with no output
  tokens, another number of requests, token counts other than ``n_req * n_in`` / ``n_req * n_out``, a
  duration that is not a positive number of seconds or is shorter than the meter's window resolution
  (:data:`MIN_DURATION_S`, NVML's ~100 ms counter update), or an output throughput above
  :data:`MAX_OUTPUT_TOKENS_PER_S` raises :class:`ReportError`; it never becomes a row.
* **The bench window** (:func:`bench_window`): the engine's own timed run, ending when its end-of-run line
  arrived and lasting the duration it reports.
* **Paths stay in the workspace** (:class:`BenchEngine`): each engine's files go to
  ``<workspace_dir>/<model slug>/`` and are checked to lie inside ``workspace_dir``
  (:class:`energybook.store.workspace.PathError` otherwise).

Used in :doc:`/book/experiment` and :doc:`/book/reproduce`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from energybook.measure.external.process import CommandRun, measure_command
from energybook.store.workspace import PathError, slug

logger = logging.getLogger(__name__)

NUM = r"([-+0-9.eE]+|nan|inf)"
"""A number as the engines print it (``nan`` and ``inf`` included), one regex group."""
MIN_DURATION_S = 0.1
"""Shortest timed run a report may claim (seconds) when the meter does not say its own ``update_period_s``:
NVML's energy counter updates about every 100 ms, so a shorter window cannot be measured."""
MAX_OUTPUT_TOKENS_PER_S = 1e7
"""Output tokens per second no engine reaches on one GPU (about a hundred times the fastest decoding reported):
a report above it has a wrong duration or wrong counts."""


class EngineReport(Protocol):
    """What :func:`check_report` and :class:`ExternalRun` read of an engine's parsed report."""

    @property
    def duration_s(self) -> float:
        """The engine's own duration of the timed run (seconds)."""

    @property
    def total_output_tokens(self) -> int | None:
        """Output tokens the engine reports (``None`` if it does not say)."""

    def counts(self) -> dict[str, tuple[float | None, bool]]:
        """Name -> (value or ``None`` if not reported, whether the value is an exact count)."""


class ReportError(RuntimeError):
    """The engine's report cannot be recorded: a figure contradicts the workload or is not a usable number.

    Attributes:
        engine: ``"trtllm"`` or ``"vllm"``.
        point: ``(n_in, n_out, n_req)`` asked for.
        problems: One sentence per bad figure.
        run: The measured command (its full output), when there was one.
        report: The parsed report, when it could be parsed.
    """

    def __init__(self, message: str, engine: str, point: tuple[int, int, int], problems: list[str],
                 run: CommandRun | None = None, report: EngineReport | None = None):
        super().__init__(message)
        self.engine, self.point, self.problems, self.run, self.report = engine, point, problems, run, report


DERIVED_TOLERANCE = 0.01
"""Relative tolerance for counts derived from throughputs that vLLM rounds to 2 decimals (at least one unit)."""


def _expected_counts(n_in: int, n_out: int, n_req: int) -> dict[str, int]:
    return {"requests": n_req, "output tokens": n_req * n_out, "input tokens": n_req * n_in,
            "input plus output tokens": n_req * (n_in + n_out)}


def _matches(value: float, expected: int, exact: bool) -> bool:
    if not math.isfinite(value):
        return False
    if exact:
        return abs(value - expected) < 0.5  # an exact count (a mean length times requests may carry float noise)
    return abs(value - expected) <= max(1.0, DERIVED_TOLERANCE * expected)


def _physics(report: EngineReport, n_out: int, n_req: int, min_duration_s: float) -> list[str]:
    """The duration and throughput that physics forbids: shorter than the meter can measure, or too fast."""
    d = report.duration_s
    if not (math.isfinite(d) and d > 0):
        return [f"its duration of the timed run is {d!r} s, not a positive number of seconds"]
    if d < min_duration_s:
        return [f"its duration of the timed run is {d:g} s, shorter than the meter's window resolution of "
                f"{min_duration_s:g} s (the energy counter's update period), so its energy cannot be measured: "
                "check that the engine ran the requests and reports seconds, or raise n_req so the run lasts longer"]
    tokens = report.counts()["output tokens"][0]
    tokens = n_req * n_out if tokens is None or not math.isfinite(tokens) else tokens
    if tokens / d > MAX_OUTPUT_TOKENS_PER_S:
        return [f"it reports {tokens / d:.3g} output tokens/s ({tokens:.0f} in {d:g} s), above the "
                f"{MAX_OUTPUT_TOKENS_PER_S:.0e} tokens/s no GPU reaches: its duration or its counts are wrong; "
                "check the engine's report"]
    return []


def report_problems(report: EngineReport, n_in: int, n_out: int, n_req: int,
                    min_duration_s: float = MIN_DURATION_S) -> list[str]:
    """What in ``report`` contradicts the workload asked for, or physics, one sentence per bad figure (empty: none).

    Checked: the duration is a positive, finite number of seconds, at least ``min_duration_s`` (the meter's
    window resolution), and gives at most :data:`MAX_OUTPUT_TOKENS_PER_S`; the output tokens are not zero; the
    requests, and the output, input and total tokens the engine reports (counts it does not report are
    skipped), equal ``n_req``, ``n_req * n_out``, ``n_req * n_in`` and ``n_req * (n_in + n_out)``; counts
    that vLLM's printed throughputs only approximate (``VllmReport.derived``) within
    :data:`DERIVED_TOLERANCE`.
    """
    problems = _physics(report, n_out, n_req, min_duration_s)
    expected = _expected_counts(n_in, n_out, n_req)
    for name, (value, exact) in report.counts().items():
        if value is None:
            continue
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        if name == "output tokens" and math.isfinite(value) and value <= 0:
            problems.append(f"it reports {shown} output tokens: it generated nothing (asked for {expected[name]})")
        elif not _matches(value, expected[name], exact):
            about = "" if exact else " (derived from its rounded throughputs)"
            problems.append(f"it reports {shown} {name}{about}, not the {expected[name]} asked for")
    return problems


def check_report(engine: str, report: EngineReport, n_in: int, n_out: int, n_req: int,
                 run: CommandRun | None = None, min_duration_s: float = MIN_DURATION_S) -> None:
    """Raise :class:`ReportError` if ``report`` is not a faithful record of the point asked for.

    Args:
        engine: The engine's name (for the message).
        report: The parsed report.
        n_in: Input tokens per request asked for.
        n_out: Output tokens per request asked for.
        n_req: Requests asked for.
        run: The command that produced the report (its log file is named in the message).
        min_duration_s: The meter's window resolution (seconds; its ``update_period_s``).

    Raises:
        ReportError: :func:`report_problems` found any; the message names the engine, the point and each
            bad figure, and says where the engine's full output is.
    """
    problems = report_problems(report, n_in, n_out, n_req, min_duration_s)
    if problems:
        raise _report_error(engine, (n_in, n_out, n_req), problems, run, report)


def _report_error(engine: str, point: tuple[int, int, int], problems: list[str], run: CommandRun | None,
                  report: EngineReport | None) -> ReportError:
    n_in, n_out, n_req = point
    log = run.log_path if run is not None else None
    where = (f"The engine's full output is in the log file {log}." if log
             else "The engine's full output is in the error's .run.")
    msg = (f"{engine} at n_in={n_in} n_out={n_out} n_req={n_req}: the engine's report cannot be recorded, so this "
           f"point was not: {'; '.join(problems)}. {where} Fix the engine's settings (or the grid) and rerun to "
           "resume; points finished before this one are kept.")
    return ReportError(msg, engine, point, problems, run, report)


def _parse(engine: str, point: tuple[int, int, int], run: CommandRun, parse) -> EngineReport:
    try:
        return parse()
    except ValueError as exc:  # no report, or not one we can read: nothing to record either
        raise _report_error(engine, point, [f"its report could not be read ({exc})"], run, None) from exc


# ----- one grid point -------------------------------------------------------------------------


@dataclass
class ExternalRun:
    """One grid point measured through an external engine's benchmark (its report already checked).

    Attributes:
        engine: ``"trtllm"`` or ``"vllm"``.
        version: The engine's installed version (``None`` if unknown).
        n_in: Input tokens per request.
        n_out: Output tokens per request asked for.
        n_req: Requests asked for.
        command: The full command line (shell-quoted).
        run: The measured process (output, exit status, process-window reading).
        report: The engine's parsed report (a ``TrtllmReport`` or a ``VllmReport``).
        bench: The meter's reading of the engine's timed run (``None`` if it could not be located).
    """

    engine: str
    version: str | None
    n_in: int
    n_out: int
    n_req: int
    command: str
    run: CommandRun
    report: EngineReport
    bench: object | None = None

    @property
    def reading(self):
        """The reading the row uses: the bench window if located, else the whole process."""
        r = self.bench if self.bench is not None else self.run.reading
        if r is None:
            raise RuntimeError(f"no meter reading for {self.engine} at n_in={self.n_in} n_out={self.n_out}: "
                               "the meter failed (see the log); the engine's output is in .run")
        return r

    @property
    def window(self) -> str:
        """``"bench"`` (the engine's timed run) or ``"process"`` (the whole command)."""
        return "bench" if self.bench is not None else "process"

    @property
    def tokens_in_expected(self) -> int:
        """Input tokens asked for: ``n_req * n_in``."""
        return self.n_req * self.n_in

    @property
    def tokens_out_expected(self) -> int:
        """Output tokens asked for: ``n_req * n_out``."""
        return self.n_req * self.n_out

    @property
    def engine_tokens_out(self) -> int | None:
        """Output tokens the engine reports having generated (``None`` if it does not say)."""
        return self.report.total_output_tokens

    @property
    def engine_tokens_in(self) -> int | None:
        """Input tokens the engine reports (``None`` if it does not say)."""
        value = self.report.counts()["input tokens"][0]
        return None if value is None else round(value)

    @property
    def tokens_match(self) -> bool:
        """Whether the engine's requests and token counts equal what was asked for (unknown counts pass).

        Always ``True`` for a point that ``TrtllmBenchEngine`` or ``VllmBenchEngine`` returned: a
        mismatch raises :class:`ReportError` there.
        """
        return not report_problems(self.report, self.n_in, self.n_out, self.n_req)

    @property
    def tokens_out(self) -> int:
        """Output tokens the energy is divided by: the engine's exact count if reported, else ``n_req * n_out``."""
        exact = self.report.counts()["output tokens"][1]
        return self.engine_tokens_out if self.engine_tokens_out is not None and exact else self.tokens_out_expected

    @property
    def energy_j(self) -> float:
        """Energy of the row's window by the meter's main method (joules)."""
        return self.reading.energy_j

    @property
    def j_per_token(self) -> float:
        """Energy per output token (joules)."""
        return self.energy_j / self.tokens_out if self.tokens_out else float("nan")

    @property
    def tokens_per_j(self) -> float:
        """Output tokens per joule."""
        return self.tokens_out / self.energy_j if self.energy_j > 0 else float("nan")

    def row(self) -> dict:
        """One row of the sweep's table: the torch engine's columns plus the engine's own figures.

        The runner reads ``tokens_out``, ``window`` (``"bench"`` or ``"process"``) and ``tokens_match`` (a bool);
        the other keys go to the sidecar's point log.
        """
        r, p = self.reading, self.run.reading
        nan = float("nan")
        return {
            "engine": self.engine, "engine_version": self.version, "n_in": self.n_in, "n_out": self.n_out,
            "n_req": self.n_req, "tokens_in": self.tokens_in_expected, "tokens_out": self.tokens_out,
            "energy_j": r.energy_j, "energy_j_power100": r.energy_j_power100,
            "energy_j_power500": r.energy_j_power500, "duration_s": r.duration_s, "power_w": r.power_w,
            "j_per_token": self.j_per_token, "tokens_per_j": self.tokens_per_j, "meter_method": r.method,
            "window": self.window,
            "energy_j_process": p.energy_j if p is not None else nan,
            "duration_s_process": self.run.duration_s,
            "engine_duration_s": self.report.duration_s, "engine_requests": self.report.num_requests,
            "engine_tokens_in": self.engine_tokens_in, "engine_tokens_out": self.engine_tokens_out,
            "tokens_match": bool(self.tokens_match), "command": self.command,
        }


def bench_window(run: CommandRun, meter, end_pattern: str, duration_s: float):
    """The meter's reading of the engine's timed run: ``duration_s`` ending when ``end_pattern`` arrived."""
    t_end = run.last_time_of(end_pattern)
    if t_end is None or not (duration_s > 0) or t_end - duration_s < run.t0:
        logger.warning("could not locate the engine's timed run in its output (end line %r); "
                       "using the whole process window", end_pattern)
        return None
    try:
        return meter.reading(t_end - duration_s, t_end)
    except Exception as exc:  # noqa: BLE001
        logger.warning("meter could not read the bench window (%s); using the whole process window", exc)
        return None


# ----- the engines' files ----------------------------------------------------------------------


def _workspace_dir(workspace_dir: str | Path | None, engine: str) -> Path:
    if workspace_dir is None:
        raise ValueError(f"the {engine} engine needs a workspace folder for its data sets, reports and logs "
                         "(the sweep passes <data>/.work/<engine>)")
    return Path(workspace_dir).expanduser().resolve()


def _inside(path: Path, root: Path, what: str, hint: str = "") -> Path:
    """``path`` if it lies inside ``root`` (after resolving ``..`` and links); :class:`PathError` otherwise."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise PathError(f"{what} {path} would lie outside the engine's workspace {root}"
                        + (f": {hint}" if hint else "")) from None
    return path


def _tag(n_in: int, n_out: int, n_req: int) -> str:
    return f"in{int(n_in)}_out{int(n_out)}_req{int(n_req)}"


def meter_resolution(meter) -> float:
    """The shortest window ``meter`` can measure (seconds): its ``update_period_s``, else :data:`MIN_DURATION_S`."""
    period = getattr(meter, "update_period_s", None)
    ok = isinstance(period, (int, float)) and not isinstance(period, bool) and math.isfinite(period) and period > 0
    return float(period) if ok else MIN_DURATION_S


class BenchEngine:
    """What the external engines share: their files for one model and the measurement of one point.

    Files: ``<workspace_dir>/<model slug>/{datasets,reports,logs}/``, each checked to lie inside
    ``workspace_dir``. Subclasses set :attr:`name`, :attr:`END_LINE` (the regex of the line that ends the
    engine's timed run), ``timeout_s`` and ``version``, and call :meth:`_init_files` from their constructor.
    """

    name: str
    END_LINE: str
    timeout_s: float
    version: str | None

    def _init_files(self, model: str, workspace_dir: str | Path | None) -> None:
        self.workspace_dir = _workspace_dir(workspace_dir, self.name)
        self.folder = _inside(self.workspace_dir / slug(model), self.workspace_dir, "the model's folder")

    def path(self, *parts: str) -> Path:
        """A file of this engine and model, checked to lie inside :attr:`workspace_dir`."""
        return _inside(self.folder.joinpath(*parts), self.workspace_dir, "the file")

    def _report_path(self, n_in: int, n_out: int, n_req: int) -> Path:
        """``reports/<point>.json``, its folder made and any earlier report of the point removed."""
        path = self.path("reports", f"{_tag(n_in, n_out, n_req)}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        return path

    def _measure(self, meter, point: tuple[int, int, int], cmd: list[str],
                 parse: Callable[[CommandRun], EngineReport]) -> ExternalRun:
        """Run ``cmd`` under the meter (logged to ``logs/<point>.log``), parse and check its report.

        Raises:
            CommandFailed: the command exited non-zero, ran past ``timeout_s`` or lost its log.
            ReportError: the report is missing, contradicts the point or is physically impossible.
        """
        n_in, n_out, n_req = point
        run = measure_command(cmd, meter, timeout_s=self.timeout_s, log_path=self.path("logs", f"{_tag(*point)}.log"))
        report = _parse(self.name, point, run, lambda: parse(run))
        check_report(self.name, report, n_in, n_out, n_req, run, meter_resolution(meter))
        bench = bench_window(run, meter, self.END_LINE, report.duration_s)
        return ExternalRun(self.name, self.version, n_in, n_out, n_req, run.command_line, run, report, bench)
