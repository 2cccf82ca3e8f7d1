"""The study's other experiments, and ours beside them: what each measures, where its files land, and its
figures and tables.

Five experiments beyond the 7x7 grids, each an :class:`Experiment` in :data:`EXPERIMENTS`:

* ``request_count``: requests per point, N_req 10, 100 and 1000, over Falcon-RW 7B's grid and at three cells
  of Llama 3.2 1B (the study's request-count experiment);
* ``batch_size``: the engine's largest batch, max_batch 64 to 1024, for Llama 3.2 1B at n_in 64 with N_req 128
  and 1000 (the study's batch-size experiment);
* ``batch_axis``: max_batch 1 to 1024 at four cells for three models, the batch axis of the physical model;
* ``weights``: the dummy weights' distribution (zeros, N(0, 0.02), N(0, 0.006), Student-t with 3 degrees of
  freedom) and one repeated prompt token against random ones, for Llama 3.2 1B;
* ``recheck``: one full-protocol point per model, at a cell that differs from model to model, against the
  sampled protocol's value of the same cell, within :data:`RECHECK_BOUND_PCT`.

The first four are run by ``benchmarks/study_experiments.py`` (its ``--run`` names), which writes
``<data>/experiments/<gpu-folder>/<experiment>/<name>.csv``; the plans here repeat that script's (a test checks
that they agree). The recheck's file is an ordinary results file, ``<data>/measured/<gpu>/lean/<model>/full.csv``,
beside the model's ``sampled.csv``, compared by :func:`energybook.report.protocols.compare`.

Each figure or table function draws the committed files when they exist, and otherwise returns a
:class:`NotMeasured`: the points planned and the command that measures them. Nothing here measures.

Used in :doc:`/book/study_experiments`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from energybook.model import paper
from energybook.model.complexity import GRID
from energybook.store.loader import MeasuredRun, load_measured
from energybook.store.workspace import Workspace, engine_slug, slug

logger = logging.getLogger(__name__)

#: The script that runs the study's experiments (relative to the checkout).
RUNNER = "benchmarks/study_experiments.py"
#: The engine the experiments are measured with.
ENGINE = "lean"
#: The largest difference (%) allowed between a full-protocol point and the sampled protocol's value.
RECHECK_BOUND_PCT = 2.0
#: The default dummy weights, the reference of the weight-sensitivity experiment.
DEFAULT_WEIGHTS = "normal:0.02"

#: Human names of the weight kinds and prompt kinds (``--weight-init``, ``--prompts``).
VARIANT_LABELS = {
    "zeros": "all zeros",
    "normal:0.02": "N(0, 0.02)",
    "normal:0.006": "N(0, 0.006)",
    "student_t:3:0.02": "Student-t(3), std 0.02",
    "repeated": "N(0, 0.02), one repeated prompt token",
}


@dataclass(frozen=True)
class PlannedRun:
    """One results file that an experiment's command writes.

    Attributes:
        name: The file's stem (``llama-3.2-1b-maxbatch64-nreq128``; ``full`` for a recheck).
        model: The model measured.
        points: The (n_in, n_out) cells (tokens).
        n_req: Requests per point.
        max_batch: The engine's largest batch (requests).
        weight_init: The dummy weights (``--weight-init``).
        prompts: ``random`` prompt tokens or one ``repeated`` token (``--prompts``).
        mode: The protocol (``prefix``, ``full`` or ``sampled``).
    """

    name: str
    model: str
    points: tuple[tuple[int, int], ...]
    n_req: int = 1000
    max_batch: int = 1024
    weight_init: str = DEFAULT_WEIGHTS
    prompts: str = "random"
    mode: str = "prefix"

    @property
    def variant(self) -> str:
        """The weights and prompts, as :data:`VARIANT_LABELS` names them."""
        key = "repeated" if self.prompts == "repeated" else self.weight_init
        return VARIANT_LABELS.get(key, key)

    @property
    def points_text(self) -> str:
        """The points in short: ``7 x 7 grid``, ``n_in 64, n_out 64..4096``, or the cells listed."""
        return points_text(self.points)


def points_text(points) -> str:
    """(n_in, n_out) cells in a few words: the whole grid, a grid row, or the cells listed."""
    points = sorted(set(points))
    full = [(a, b) for a in GRID for b in GRID]
    if points == full:
        return f"{len(GRID)} x {len(GRID)} grid (n_in, n_out {GRID[0]}..{GRID[-1]})"
    n_ins = {a for a, _ in points}
    if len(n_ins) == 1 and [b for _, b in points] == list(GRID):
        return f"n_in {points[0][0]}, n_out {GRID[0]}..{GRID[-1]} ({len(GRID)} points)"
    return ", ".join(f"({a}, {b})" for a, b in points)


@dataclass(frozen=True)
class Experiment:
    """One experiment beyond the grids: what the study did, what we run, and where its files land.

    Attributes:
        key: Its name (the runner's ``--run`` name; ``recheck`` for the sampled protocol's recheck).
        title: A short title.
        study: Where the study reports it (its section or experiment, as ``quoted.csv`` names it), or why it is
            ours alone.
        study_keys: Keys of the study's numbers for it in ``quoted.csv`` (:func:`energybook.model.paper.quoted`).
        runs: The results files its commands write.
        commands: The commands that measure it, run from the checkout on a GPU.
    """

    key: str
    title: str
    study: str
    study_keys: tuple[str, ...]
    runs: tuple[PlannedRun, ...]
    commands: tuple[str, ...]

    @property
    def lands(self) -> str:
        """Where its files land, relative to the data folder."""
        if self.key == "recheck":
            return f"measured/<gpu>/{engine_slug(ENGINE)}/<model>/full.csv"
        return f"experiments/<gpu>/{engine_slug(ENGINE)}/{self.key}/<name>.csv"

    def pattern(self, run: PlannedRun) -> str:
        """The glob (relative to the data folder) of ``run``'s file on any GPU."""
        if self.key == "recheck":
            return f"measured/*/{engine_slug(ENGINE)}/{slug(run.model)}/{run.name}.csv"
        return f"experiments/*/{engine_slug(ENGINE)}/{self.key}/{run.name}.csv"

    def plan_table(self) -> pd.DataFrame:
        """The planned files, grouped where only the points or the file differ: model, points, N_req, max_batch,
        weights and prompts, protocol, files (one row per group)."""
        rows = [{"model": r.model, "N_req": r.n_req, "max_batch": r.max_batch, "weights and prompts": r.variant,
                 "protocol": r.mode, "points": r.points, "file": r.name} for r in self.runs]
        table = pd.DataFrame(rows)
        keys = ["model", "N_req", "max_batch", "weights and prompts", "protocol"]
        out = table.groupby(keys, sort=False, as_index=False).agg(
            points=("points", lambda s: points_text([p for pts in s for p in pts])),
            files=("file", lambda s: len(s)))
        return out[["model", "points", "N_req", "max_batch", "weights and prompts", "protocol", "files"]]

    def study_table(self) -> pd.DataFrame:
        """The study's numbers for it (``quoted.csv`` rows: value, unit, what, where, scope, version); empty when the
        study has none."""
        table = paper.quoted_table().set_index("key")
        return table.loc[list(self.study_keys), ["value", "unit", "what", "where", "scope", "version"]]

    def study_summary(self) -> pd.DataFrame:
        """The study's numbers for it, narrow enough for a phone: indexed by what each is, with the number and its
        unit (``the study``), its scope, and where the study prints it with the version."""
        t = self.study_table()
        return pd.DataFrame({"the study": t["value"] + " " + t["unit"], "scope": t["scope"],
                             "where": t["where"] + ", " + t["version"]}).set_index(pd.Index(t["what"], name="what"))

    def files(self, data: str | Path | None = None) -> dict[PlannedRun, list[Path]]:
        """The committed files of each planned run that exist (with their sidecars), on any GPU."""
        root = Workspace.resolve(data).root
        found = {}
        for run in self.runs:
            paths = sorted(p for p in root.glob(self.pattern(run)) if p.with_suffix(".json").exists())
            if paths:
                found[run] = paths
        return found

    def missing(self, data: str | Path | None = None) -> tuple[PlannedRun, ...]:
        """The planned runs without a committed file."""
        have = self.files(data)
        return tuple(r for r in self.runs if r not in have)

    def load(self, data: str | Path | None = None, allow_test_data: bool = False) -> list[MeasuredRun]:
        """Its committed files, loaded and checked (:func:`energybook.store.loader.load_measured`); none when
        nothing is committed.

        Args:
            data: The data folder (default: the workspace, ``data/`` in a checkout or ``$ENERGYBOOK_DATA``).
            allow_test_data: Accept simulated or CPU data (tests only).
        """
        return [load_measured(p, allow_test_data=allow_test_data)
                for paths in self.files(data).values() for p in paths]

    def not_measured(self, runs: tuple[PlannedRun, ...] | None = None) -> NotMeasured:
        """What stands in for its figure or table while (some of) its files are missing."""
        return NotMeasured(self, self.runs if runs is None else tuple(runs))


@dataclass(frozen=True)
class NotMeasured:
    """An experiment (or part of one) without committed files: its planned points and the command that measures
    it. Displayed as HTML in a notebook (:meth:`_repr_html_`).

    Attributes:
        experiment: The experiment.
        runs: The planned runs that are missing.
    """

    experiment: Experiment
    runs: tuple[PlannedRun, ...]

    def table(self) -> pd.DataFrame:
        """The missing runs' points (:meth:`Experiment.plan_table` of those runs)."""
        part = Experiment(self.experiment.key, self.experiment.title, self.experiment.study,
                          self.experiment.study_keys, self.runs, self.experiment.commands)
        return part.plan_table()

    @property
    def commands(self) -> tuple[str, ...]:
        return self.experiment.commands

    def _repr_html_(self) -> str:
        from html import escape

        cmds = "\n".join(self.commands)
        table = self.table().to_html(index=False, border=0, classes="dataframe")
        return ('<div class="eb-not-measured" style="text-align: left;"><p><strong>Not measured yet.</strong> The '
                'command that measures it, run from the checkout on a GPU:</p>'
                f'<pre style="white-space: pre-wrap;"><code>{escape(cmds)}</code></pre>'
                f'<div class="eb-scroll" style="overflow-x: auto; max-width: 100%;">{table}</div>'
                f'<p style="font-size: 0.8em; color: #666;">Files land in <code>data/{escape(self.experiment.lands)}'
                '</code> with their provenance sidecars.</p></div>')

    def __repr__(self) -> str:
        return (f"not measured yet: {self.experiment.key}\n" + "\n".join(self.commands) + "\n"
                + self.table().to_string(index=False))


# ----- the plans (those of benchmarks/study_experiments.py, and the recheck) ----------------------------------

def _runner_command(key: str) -> str:
    return f"python {RUNNER} --run {key} --engine {ENGINE}"


def _grid_row(n_in: int) -> tuple[tuple[int, int], ...]:
    return tuple((n_in, b) for b in GRID)


def _request_count() -> Experiment:
    runs = []
    for n_req in (10, 100, 1000):
        runs.append(PlannedRun(f"falcon-rw-7b-nreq{n_req}", "Falcon-RW-7B", tuple((a, b) for a in GRID for b in GRID),
                               n_req=n_req))
        for a, b in ((64, 256), (512, 512), (4096, 64)):
            runs.append(PlannedRun(f"llama-3.2-1b-{a}x{b}-nreq{n_req}", "Llama-3.2-1B", ((a, b),), n_req=n_req))
    keys = ("nreq10_falcon_rw_tokens_per_j_min", "nreq10_falcon_rw_tokens_per_j_max",
            "nreq1000_falcon_rw_tokens_per_j_min", "falcon_rw_tokens_per_j_peak")
    return Experiment("request_count", "Requests per point", _where(keys[0]), keys, tuple(runs),
                      (_runner_command("request_count"),))


def _batch_size() -> Experiment:
    runs = tuple(PlannedRun(f"llama-3.2-1b-maxbatch{mb}-nreq{n_req}", "Llama-3.2-1B", _grid_row(64), n_req=n_req,
                            max_batch=mb)
                 for n_req in (128, 1000) for mb in (64, 128, 256, 512, 1024))
    keys = ("llama32_1b_tokens_per_j_nin64_nout256", "batch_llama32_1b_peak_max_batch_64",
            "batch_llama32_1b_nout4096_max_batch_1024", "batch_llama32_1b_nout4096_max_batch_256")
    return Experiment("batch_size", "The engine's largest batch", _where(keys[1]), keys, runs,
                      (_runner_command("batch_size"),))


#: The models and cells of the batch axis (the runner's: a small and a large grouped-query model, and Gemma 2).
BATCH_AXIS_MODELS = ("Llama-3.2-1B", "Qwen2-7B", "Gemma-2-9B")
BATCH_AXIS_CELLS = ((64, 256), (64, 2048), (1024, 256), (2048, 1024))
BATCH_AXIS_MAX_BATCH = (1, 8, 64, 256, 1024)


def _batch_axis() -> Experiment:
    runs = tuple(PlannedRun(f"{model.lower()}-{a}x{b}-maxbatch{mb}", model, ((a, b),), n_req=min(1000, 4 * max(mb, 8)),
                            max_batch=mb)
                 for model in BATCH_AXIS_MODELS for mb in BATCH_AXIS_MAX_BATCH for a, b in BATCH_AXIS_CELLS)
    return Experiment("batch_axis", "A batch axis for the physical model",
                      "not in the study: its formulas have no batch term, a limitation it states", (), runs,
                      (_runner_command("batch_axis"),))


#: The weight kinds of the weight-sensitivity experiment (``--weight-init``), the default first.
WEIGHT_KINDS = ("normal:0.02", "zeros", "normal:0.006", "student_t:3:0.02")
#: Its cells: every (n_in, n_out) of these lengths.
WEIGHT_CELLS = tuple((a, b) for a in (64, 2048) for b in (64, 256, 2048))


def _weights() -> Experiment:
    runs = [PlannedRun(f"llama-3.2-1b-{w.replace(':', '-')}", "Llama-3.2-1B", WEIGHT_CELLS, weight_init=w)
            for w in ("zeros", "normal:0.02", "normal:0.006", "student_t:3:0.02")]
    runs.append(PlannedRun("llama-3.2-1b-repeated-prompt", "Llama-3.2-1B", WEIGHT_CELLS, prompts="repeated"))
    return Experiment("weights", "What dummy weights cost",
                      "not in the study: it does not vary the weights; this book measures random ones", (),
                      tuple(runs), (_runner_command("weights"),))


#: The recheck's cell per model: one each, all different, spread over the grid; the larger models get the cells
#: whose full protocol is short (fewer requests fit a wave of a long context, and every wave runs to its end).
RECHECK_CELLS = {
    "Llama-3.2-1B": (4096, 4096), "OPT-1.3B": (2048, 1024), "Qwen2-1.5B": (1024, 2048), "Gemma-2-2B": (512, 4096),
    "OPT-2.7B": (4096, 256), "Llama-3.2-3B": (256, 2048), "Granite-3B-Code-Base": (128, 1024),
    "OPT-6.7B": (2048, 128), "Qwen2-7B": (64, 512), "Falcon-RW-7B": (1024, 64), "Granite-8B-Code-Base": (512, 256),
    "Llama-3.1-8B": (256, 128), "Gemma-2-9B": (128, 64),
}


def recheck_command(model: str, cell: tuple[int, int]) -> str:
    """The sweep that measures a model's recheck point in the full protocol (into its ``full.csv``)."""
    return (f"energybook sweep --model {model} --engine {ENGINE} --mode full --pairs {cell[0]}x{cell[1]} "
            "--data data")


def _recheck() -> Experiment:
    runs = tuple(PlannedRun("full", model, (cell,), mode="full") for model, cell in RECHECK_CELLS.items())
    return Experiment("recheck", "The sampled protocol, checked again on every model",
                      "not in the study: a check of our sampled protocol against the full one", (), runs,
                      tuple(recheck_command(r.model, r.points[0]) for r in runs))


def _where(key: str) -> str:
    return str(paper.quoted_table().set_index("key").loc[key, "where"])


#: The experiments by key, in the book's order.
EXPERIMENTS: dict[str, Experiment] = {e.key: e for e in (_request_count(), _batch_size(), _batch_axis(), _weights(),
                                                         _recheck())}


# ----- measured tables -------------------------------------------------------------------------------------

def measured_table(runs: list[MeasuredRun]) -> pd.DataFrame:
    """The rows of an experiment's files in one tidy table, each with its file's stem (``file``), GPU, largest batch
    (``max_batch``), weights and prompts (``weight_init``, ``prompts``, ``variant``), carrying where it was measured
    (:func:`energybook.report.provenance.attach_sources`)."""
    from energybook.report.provenance import attach_sources

    parts = []
    for r in runs:
        proto = r.provenance.get("protocol") or {}
        weight = proto.get("weight_init", DEFAULT_WEIGHTS)
        prompts = proto.get("prompts", "random")
        variant = VARIANT_LABELS.get("repeated" if prompts == "repeated" else weight, weight)
        parts.append(r.data.assign(file=Path(r.path).stem, gpu=str(r.provenance.get("gpu", "?")),
                                   max_batch=int(proto.get("max_batch", 1024)), weight_init=weight, prompts=prompts,
                                   variant=variant))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return attach_sources(table, runs)


def _mean(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Repeats averaged: one row per ``by`` group with mean tokens_per_j and power_w."""
    return table.groupby(by, as_index=False).agg(tokens_per_j=("tokens_per_j", "mean"), power_w=("power_w", "mean"))


def _gpu(table: pd.DataFrame, gpu: str) -> str:
    """A legend's GPU suffix: the GPU's name where the table holds several GPUs, nothing otherwise."""
    return f" ({gpu})" if table["gpu"].nunique() > 1 else ""


def _runs(key: str, runs, data) -> list[MeasuredRun]:
    return EXPERIMENTS[key].load(data) if runs is None else list(runs)


# ----- figures ---------------------------------------------------------------------------------------------

_STUDY_STYLE = dict(marker="*", markersize=11, color="black", linestyle="none", zorder=5)


def _study_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], **_STUDY_STYLE, label="the study")


def request_count_figure(runs: list[MeasuredRun] | None = None, data: str | Path | None = None):
    """Output tokens per joule against the requests per point: Falcon-RW 7B's lowest and highest cell of its grid
    beside the study's, and Llama 3.2 1B at its three cells.

    Args:
        runs: The experiment's loaded files (default: the committed ones, :meth:`Experiment.load`).
        data: The data folder to load them from.

    Returns:
        A matplotlib Figure stamped with its GPUs and engine, or a :class:`NotMeasured` when no file exists.
    """
    import matplotlib.pyplot as plt

    from energybook.report.plot_style import LABELS, log_axis, model_label, stamp_source

    exp = EXPERIMENTS["request_count"]
    runs = _runs("request_count", runs, data)
    if not runs:
        return exp.not_measured()
    table = measured_table(runs)
    models = [m for m in ("Falcon-RW-7B", "Llama-3.2-1B") if m in set(table["model"])]
    fig, axes = plt.subplots(len(models), 1, figsize=(5.0, 3.4 * len(models)), squeeze=False, layout="constrained")
    n_reqs = sorted({r.n_req for r in exp.runs})
    for ax, model in zip(axes[:, 0], models):
        rows = _mean(table[table["model"] == model], ["gpu", "n_req", "n_in", "n_out"])
        if model == "Falcon-RW-7B":
            span = rows.groupby(["gpu", "n_req"], as_index=False)["tokens_per_j"].agg(["min", "max"])
            for gpu, g in span.groupby("gpu"):
                ax.vlines(g["n_req"], g["min"], g["max"], color="C0", linewidth=2)
                ax.plot(g["n_req"], g["max"], "o-", color="C0", label=f"ours, highest cell{_gpu(table, gpu)}")
                ax.plot(g["n_req"], g["min"], "s--", color="C0", label=f"ours, lowest cell{_gpu(table, gpu)}")
            study = [(10, paper.quoted("nreq10_falcon_rw_tokens_per_j_min")),
                     (10, paper.quoted("nreq10_falcon_rw_tokens_per_j_max")),
                     (1000, paper.quoted("nreq1000_falcon_rw_tokens_per_j_min")),
                     (1000, paper.quoted("falcon_rw_tokens_per_j_peak"))]
            ax.plot([s[0] for s in study], [s[1] for s in study], **_STUDY_STYLE,
                    label="the study, lowest and highest cell")
        else:
            for (a, b), g in rows.groupby(["n_in", "n_out"]):
                for gpu, h in g.groupby("gpu"):
                    ax.plot(h["n_req"], h["tokens_per_j"], "o-", label=f"({a}, {b}){_gpu(table, gpu)}")
        ax.set_xscale("log")
        ax.set_xticks(n_reqs, [str(n) for n in n_reqs])
        ax.minorticks_off()
        log_axis(ax, "y")
        ax.set_xlabel("requests per point N_req")
        ax.set_ylabel(LABELS["tokens_per_j"])
        ax.set_title(model_label(model))
        ax.legend(frameon=False, fontsize="x-small", loc="best")
    stamp_source(fig, table)
    return fig


def batch_size_figure(runs: list[MeasuredRun] | None = None, data: str | Path | None = None,
                      n_outs: tuple[int, ...] = (256, 4096), peak: bool = True):
    """Output tokens per joule of Llama 3.2 1B at n_in 64 against the engine's largest batch, one panel per output
    length (and one for the best output length), one line per N_req, beside the study's numbers.

    Args:
        runs: The experiment's loaded files (default: the committed ones).
        data: The data folder to load them from.
        n_outs: Output lengths of the panels (tokens).
        peak: Add a panel of the best output length at each largest batch (the study's peak efficiencies).

    Returns:
        A matplotlib Figure stamped with its GPUs and engine, or a :class:`NotMeasured` when no file exists.
    """
    import matplotlib.pyplot as plt

    from energybook.report.plot_style import LABELS, _log2_axis, stamp_source

    exp = EXPERIMENTS["batch_size"]
    runs = _runs("batch_size", runs, data)
    if not runs:
        return exp.not_measured()
    table = measured_table(runs)
    rows = _mean(table[table["n_in"] == 64], ["gpu", "n_req", "max_batch", "n_out"])
    study = {256: [(1024, paper.quoted("llama32_1b_tokens_per_j_nin64_nout256"))],
             4096: [(1024, paper.quoted("batch_llama32_1b_nout4096_max_batch_1024")),
                    (256, paper.quoted("batch_llama32_1b_nout4096_max_batch_256"))],
             "peak": [(1024, paper.quoted("llama32_1b_tokens_per_j_nin64_nout256")),
                      (64, paper.quoted("batch_llama32_1b_peak_max_batch_64"))]}
    panels = [*n_outs, *(["peak"] if peak else [])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(5.0, 2.6 * len(panels) + 0.6), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    batches = sorted({r.max_batch for r in exp.runs})
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "peak":
            part = rows.groupby(["gpu", "n_req", "max_batch"], as_index=False)["tokens_per_j"].max()
            ax.set_title("n_in 64, best output length at each batch")
        else:
            part = rows[rows["n_out"] == panel]
            ax.set_title(f"n_in 64, n_out {panel}")
        for (gpu, n_req), g in part.groupby(["gpu", "n_req"]):
            g = g.sort_values("max_batch")
            ax.plot(g["max_batch"], g["tokens_per_j"], "o-", label=f"ours, N_req {n_req}{_gpu(table, gpu)}")
        points = study.get(panel, [])
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], **_STUDY_STYLE, label="the study")
        _log2_axis(ax, batches, "x")
        ax.legend(frameon=False, fontsize="x-small", loc="best")
    fig.supylabel(LABELS["tokens_per_j"])
    axes[-1, 0].set_xlabel("the engine's largest batch max_batch (requests)")
    stamp_source(fig, table)
    return fig


def batch_axis_figure(runs: list[MeasuredRun] | None = None, data: str | Path | None = None):
    """Output tokens per joule against the engine's largest batch, one panel per model, one line per cell.

    Returns:
        A matplotlib Figure stamped with its GPUs and engine, or a :class:`NotMeasured` when no file exists.
    """
    import matplotlib.pyplot as plt

    from energybook.report.plot_style import LABELS, _log2_axis, log_axis, model_label, stamp_source

    exp = EXPERIMENTS["batch_axis"]
    runs = _runs("batch_axis", runs, data)
    if not runs:
        return exp.not_measured()
    table = measured_table(runs)
    models = [m for m in BATCH_AXIS_MODELS if m in set(table["model"])]
    fig, axes = plt.subplots(len(models), 1, figsize=(5.0, 2.8 * len(models) + 0.6), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    for ax, model in zip(axes[:, 0], models):
        rows = _mean(table[table["model"] == model], ["gpu", "max_batch", "n_in", "n_out"])
        for (gpu, a, b), g in rows.groupby(["gpu", "n_in", "n_out"]):
            g = g.sort_values("max_batch")
            ax.plot(g["max_batch"], g["tokens_per_j"], "o-", label=f"({a}, {b}){_gpu(table, gpu)}")
        _log2_axis(ax, BATCH_AXIS_MAX_BATCH, "x")
        log_axis(ax, "y")
        ax.set_title(model_label(model))
        ax.legend(frameon=False, fontsize="x-small", loc="best", title="(n_in, n_out)", title_fontsize="x-small")
    fig.supylabel(LABELS["tokens_per_j"])
    axes[-1, 0].set_xlabel("the engine's largest batch max_batch (requests)")
    stamp_source(fig, table)
    return fig


def weights_table(runs: list[MeasuredRun] | None = None, data: str | Path | None = None):
    """Each weight or prompt kind against the default N(0, 0.02) with random prompts, cell by cell: tokens/J and
    power, and their change from the default (%); repeats averaged. Carries where it was measured.

    Returns:
        A table (model, gpu, n_in, n_out, variant, tokens_per_j, power_w, tokens_per_j_change_pct,
        power_change_pct; the changes are missing where the default's file is), or a :class:`NotMeasured`.
    """
    from energybook.report.provenance import attach_sources

    exp = EXPERIMENTS["weights"]
    runs = _runs("weights", runs, data)
    if not runs:
        return exp.not_measured()
    table = measured_table(runs)
    rows = _mean(table, ["model", "gpu", "n_in", "n_out", "variant"])
    ref = rows[rows["variant"] == VARIANT_LABELS[DEFAULT_WEIGHTS]][["model", "gpu", "n_in", "n_out", "tokens_per_j",
                                                                    "power_w"]]
    out = rows.merge(ref, on=["model", "gpu", "n_in", "n_out"], how="left", suffixes=("", "_ref"))
    out["tokens_per_j_change_pct"] = 100 * (out["tokens_per_j"] / out["tokens_per_j_ref"] - 1)
    out["power_change_pct"] = 100 * (out["power_w"] / out["power_w_ref"] - 1)
    out = out.drop(columns=["tokens_per_j_ref", "power_w_ref"])
    order = {v: i for i, v in enumerate(VARIANT_LABELS.values())}
    out = out.sort_values(["gpu", "n_in", "n_out", "variant"], key=lambda s: s.map(order) if s.name == "variant"
                          else s).reset_index(drop=True)
    return attach_sources(out, table)


@dataclass(frozen=True)
class WeightSpread:
    """How far the weights and prompts move tokens/J from the default, over the measured cells (%).

    Attributes:
        random_max_abs_pct: The largest change of any random distribution (N(0, 0.006), Student-t) at any cell.
        zeros_min_pct, zeros_max_pct: All-zero weights' smallest and largest change.
        repeated_min_pct, repeated_max_pct: One repeated prompt token's smallest and largest change.
        cells: The cells compared.
    """

    random_max_abs_pct: float
    zeros_min_pct: float
    zeros_max_pct: float
    repeated_min_pct: float
    repeated_max_pct: float
    cells: int


def weight_spread(table: pd.DataFrame) -> WeightSpread:
    """:class:`WeightSpread` of a :func:`weights_table` (NaN where a kind has no file)."""
    t = table.dropna(subset=["tokens_per_j_change_pct"])

    def change(labels) -> pd.Series:
        return t.loc[t["variant"].isin(labels), "tokens_per_j_change_pct"]

    random = change([VARIANT_LABELS["normal:0.006"], VARIANT_LABELS["student_t:3:0.02"]])
    zeros, repeated = change([VARIANT_LABELS["zeros"]]), change([VARIANT_LABELS["repeated"]])
    nan = float("nan")
    return WeightSpread(float(random.abs().max()) if len(random) else nan,
                        float(zeros.min()) if len(zeros) else nan, float(zeros.max()) if len(zeros) else nan,
                        float(repeated.min()) if len(repeated) else nan,
                        float(repeated.max()) if len(repeated) else nan,
                        int(t[["n_in", "n_out"]].drop_duplicates().shape[0]))


def weights_figure(runs: list[MeasuredRun] | None = None, data: str | Path | None = None):
    """A bar chart: each weight or prompt kind's change in tokens/J from the default N(0, 0.02), one group of bars
    per cell; the absolute tokens/J where the default's file is missing.

    Returns:
        A matplotlib Figure stamped with its GPUs and engine, or a :class:`NotMeasured` when no file exists.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from energybook.report.plot_style import LABELS, stamp_source

    table = weights_table(runs, data)
    if isinstance(table, NotMeasured):
        return table
    relative = table["tokens_per_j_change_pct"].notna().any()
    value = "tokens_per_j_change_pct" if relative else "tokens_per_j"
    shown = table[table["variant"] != VARIANT_LABELS[DEFAULT_WEIGHTS]] if relative else table
    shown = shown.dropna(subset=[value])
    cells = [tuple(c) for c in shown[["n_in", "n_out"]].drop_duplicates().sort_values(["n_in", "n_out"]).values]
    variants = [v for v in VARIANT_LABELS.values() if v in set(shown["variant"])]
    gpus = list(dict.fromkeys(shown["gpu"]))
    fig, ax = plt.subplots(figsize=(5.0, 3.6), layout="constrained")
    bars = max(len(variants) * len(gpus), 1)
    width = 0.8 / bars
    x = np.arange(len(cells))
    k = 0
    for j, gpu in enumerate(gpus):
        for variant in variants:
            i = list(VARIANT_LABELS.values()).index(variant)
            part = shown[(shown["variant"] == variant) & (shown["gpu"] == gpu)].set_index(["n_in", "n_out"])
            values = [float(part.loc[c, value]) if c in part.index else np.nan for c in cells]
            label = variant if len(gpus) == 1 else f"{variant} ({gpu})"
            ax.bar(x + (k - (bars - 1) / 2) * width, values, width=width, color=f"C{i}", label=label,
                   hatch=None if j == 0 else "//")
            k += 1
    ax.set_xticks(x, [f"({a},\n{b})" for a, b in cells], fontsize="small")
    ax.set_xlabel("cell (n_in, n_out) (tokens)")
    if relative:
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("change in output tokens per joule\nfrom N(0, 0.02) weights (%)")
    else:
        ax.set_ylabel(LABELS["tokens_per_j"])
    ax.legend(frameon=False, fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.38), ncol=2)
    stamp_source(fig, table)
    return fig


# ----- the sampled protocol's recheck ----------------------------------------------------------------------------

def recheck(data: str | Path | None = None, allow_test_data: bool = False) -> list:
    """Each model's committed full-protocol file (:data:`RECHECK_CELLS`' run) against the ``sampled.csv`` beside it,
    as :func:`energybook.report.protocols.compare` makes it; a pair that cannot be compared (no sampled file, other
    settings) is logged and left out.

    Returns:
        A list of :class:`energybook.report.protocols.ProtocolCheck`.
    """
    from energybook.report.protocols import compare

    checks = []
    for paths in EXPERIMENTS["recheck"].files(data).values():
        for full in paths:
            sampled = full.with_name("sampled.csv")
            if not sampled.exists():
                logger.warning("%s has no sampled.csv beside it: measure the model's grid with `energybook sweep "
                               "--model <model> --engine lean --mode sampled`", full)
                continue
            try:
                checks.append(compare(load_measured(full, allow_test_data=allow_test_data),
                                      load_measured(sampled, allow_test_data=allow_test_data)))
            except ValueError as exc:
                logger.warning("recheck of %s not made: %s", full, exc)
    return checks


def recheck_table(checks: list | None = None, data: str | Path | None = None,
                  bound_pct: float = RECHECK_BOUND_PCT) -> pd.DataFrame | NotMeasured:
    """The recheck, one row per model: its cell, the sampled and the full protocol's tokens/J, the difference (%)
    and whether it is within ``bound_pct``. A model's row is its planned cell (:data:`RECHECK_CELLS`) where the
    comparison holds it, else every cell the two files share. Carries the GPUs and engines it was measured on.

    Args:
        checks: :class:`energybook.report.protocols.ProtocolCheck` objects (default: :func:`recheck` of the
            committed files).
        data: The data folder.
        bound_pct: The largest difference allowed (%).

    Returns:
        The table (model, n_in, n_out, tokens_per_j_sampled, tokens_per_j_full, difference_pct, within_bound), or a
        :class:`NotMeasured` when no model has both files.
    """
    from energybook.report.provenance import SOURCE_ATTR, SOURCES_ATTR, Source, source_line

    exp = EXPERIMENTS["recheck"]
    checks = recheck(data) if checks is None else list(checks)
    if not checks:
        return exp.not_measured()
    rows, sources = [], []
    for c in checks:
        t = c.table
        cell = RECHECK_CELLS.get(c.model)
        pick = t[(t["n_in"] == cell[0]) & (t["n_out"] == cell[1])] if cell else t
        for r in (pick if len(pick) else t).itertuples():
            rows.append({"model": c.model, "gpu": c.gpu, "n_in": int(r.n_in), "n_out": int(r.n_out),
                         "tokens_per_j_sampled": float(r.tokens_per_j_sampled),
                         "tokens_per_j_full": float(r.tokens_per_j_reference),
                         "difference_pct": float(r.error_pct),
                         "within_bound": bool(abs(r.error_pct) <= bound_pct)})
        sources.append(Source(c.model, c.gpu, c.gpu_uuid, c.engine))
    table = pd.DataFrame(rows)
    table.attrs[SOURCES_ATTR] = tuple((s.model, s.gpu, s.uuid, s.engine) for s in sources)
    table.attrs[SOURCE_ATTR] = source_line(sources)
    return table


def overview(data: str | Path | None = None) -> pd.DataFrame:
    """One row per experiment: its title, where the study reports it, the files planned and those committed."""
    rows = []
    for exp in EXPERIMENTS.values():
        have = sum(len(p) for p in exp.files(data).values())
        rows.append({"experiment": exp.title, "in the study": exp.study, "files planned": len(exp.runs),
                     "files committed": have})
    return pd.DataFrame(rows)


def files_table(runs: list[MeasuredRun]) -> pd.DataFrame:
    """The committed files behind an experiment's figure: file, model, GPU, points, GPU-minutes."""
    from energybook.report.provenance import measuring_minutes

    return pd.DataFrame([{"file": Path(r.path).stem, "model": r.provenance.get("model", "?"),
                          "GPU": r.provenance.get("gpu", "?"), "points": len(r.data),
                          "GPU-minutes": round(measuring_minutes(r.provenance), 1)} for r in runs])
