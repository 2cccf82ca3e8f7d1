"""One page per study model, generated from its committed files, and the chapter that compares them.

A model's page shows everything the book holds about one of the study's 13 models (:data:`STUDY_ORDER`):

* its architecture beside the study's Table 2 (:meth:`ModelPage.architecture_table`);
* every committed results file of the model under ``<data>/measured/<gpu>/<engine>/<model>/``
  (:func:`model_runs`), each (GPU, engine, file) apart and never averaged across them: the grid's heat map
  (:meth:`ModelPage.grid_figure`, the chapters' :func:`energybook.report.plot_grids.heatmap`), the study's six
  formulas fitted per file by plain least squares, the study's method (:meth:`ModelPage.mape_table`,
  :meth:`ModelPage.theta_table`), the sweet spots (:meth:`ModelPage.sweet_spot_table`), and the mean power
  (``energy_j / duration_s``) and SM clock of every point (:meth:`ModelPage.power_figure`);
* the study's values for the model beside ours (Tables 2, 3 and 5 of :mod:`energybook.model.paper`);
* the physical model's prediction of its grid, labelled as a prediction (:meth:`ModelPage.predicted_figure`);
* links to its executed measurement notebooks under ``book/measurements/``.

A model without files says so, with the command that measures it
(:func:`energybook.report.tables.measure_command`). The pages themselves are thin: :data:`PAGE_TEMPLATE` with the
model's name, written by :func:`write_pages` (``python -m energybook.report.model_pages write book/models``); a test
checks that the committed pages equal :func:`render_page`'s, so that they never drift apart.

:func:`coverage_table`, :func:`size_table` and :func:`attention_summary` are the chapter's: which model is
measured on which GPU and engine, with its GPU-minutes, and the size and attention comparisons over the 13
models, the study's values beside ours where we measured.

Used in :doc:`/book/models`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from energybook.model import architecture as A
from energybook.model import fit as F
from energybook.model import formulas as FM
from energybook.model import paper
from energybook.model.complexity import GRID
from energybook.report.provenance import attach_sources, measuring_minutes
from energybook.report.tables import measure_command
from energybook.store import catalog
from energybook.store.results import MeasuredRun
from energybook.store.workspace import checkout_root

logger = logging.getLogger(__name__)

#: The study's 13 models in its order.
STUDY_ORDER = tuple(A.STUDY_ORDER)
#: Text of a value that the files do not hold.
NOT_RECORDED = "not recorded"
#: Text of a model (or a value of it) that no committed file measures.
NOT_MEASURED = "not measured yet"
#: A file is fitted when it has more distinct points than the Memory+FLOPs formula has coefficients.
_MIN_POINTS = 7


def slug(model: str) -> str:
    """The model's name as a label part: lower case, every other character run a hyphen (``llama-3-2-1b``)."""
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


def _check_model(model: str) -> str:
    if model not in STUDY_ORDER:
        raise ValueError(f"{model!r} is not one of the study's 13 models: {', '.join(STUDY_ORDER)}")
    return model


# ----- one results file of a model ----------------------------------------------------------------------------

@dataclass
class ModelRun:
    """One committed results file of a model, with its points (repeats of a point averaged within the file only).

    Attributes:
        run: The loaded file (checked against its sidecar).
        table: One row per (n_in, n_out) of the file: the file's numeric columns averaged over its repeats,
            ``reps``, ``j_per_token`` (J per output token), ``tokens_per_j`` and ``power_w`` (mean power,
            ``energy_j / duration_s``, watts); its ``attrs`` carry the file's GPU (name and UUID) and engine.
    """

    run: MeasuredRun
    table: pd.DataFrame = field(repr=False)

    @property
    def gpu(self) -> str:
        """The GPU's name as the sidecar records it."""
        return self.run.gpu

    @property
    def engine(self) -> str:
        """The engine's folder name (``hf``, ``lean``...)."""
        return self.run.engine

    @property
    def name(self) -> str:
        """The file's stem (``grid``, ``sampled``, ``full-512x128``...)."""
        return self.run.path.stem

    @property
    def label(self) -> str:
        """``"<gpu>, <engine> engine, <file>.csv"``: how tables and panels name the file."""
        return f"{self.gpu}, {self.engine} engine, {self.name}.csv"

    @property
    def short_label(self) -> str:
        """``"ours: <gpu without the maker>, <engine>, <file>"``: how a table's column names the file (the table's
        source line names the GPU in full, with its UUID)."""
        gpu = re.sub(r"^NVIDIA\s+", "", self.gpu)
        return f"ours: {gpu}, {self.engine}, {self.name}"

    @property
    def minutes(self) -> float:
        """GPU-minutes of measurement (:func:`energybook.report.provenance.measuring_minutes`)."""
        return measuring_minutes(self.run.provenance)

    @property
    def points(self) -> int:
        """Distinct (n_in, n_out) points of the file."""
        return len(self.table)

    @property
    def is_grid(self) -> bool:
        """Whether the file has enough points to fit the study's formulas (a grid, not a repeated point)."""
        return self.points >= _MIN_POINTS

    def has(self, column: str) -> bool:
        """Whether every point of the file records ``column`` (False for an absent or partly empty column)."""
        return column in self.table.columns and bool(self.table[column].notna().all())


def _point_table(run: MeasuredRun) -> pd.DataFrame:
    raw = run.data.copy()
    numeric = [c for c in raw.columns if c not in ("n_in", "n_out", "rep") and pd.api.types.is_numeric_dtype(raw[c])]
    for c in numeric:
        raw[c] = raw[c].astype(float)
    raw["n_in"] = raw["n_in"].astype(int)
    raw["n_out"] = raw["n_out"].astype(int)
    grouped = raw.groupby(["n_in", "n_out"], as_index=False)
    table = grouped[numeric].mean()
    table["reps"] = grouped.size()["size"].to_numpy()
    table.insert(0, "model", str(run.provenance.get("model", "?")))
    table["j_per_token"] = table["energy_j"] / table["tokens_out"]
    table["tokens_per_j"] = 1 / table["j_per_token"]
    table["power_w"] = table["energy_j"] / table["duration_s"]
    return attach_sources(table, [run])


def model_runs(model: str, root: str | Path | None = None,
               loaded: Sequence[MeasuredRun] | None = None) -> list[ModelRun]:
    """Every committed results file of ``model`` under ``<root>/measured/``, loaded and checked, in order of GPU,
    engine and file name (a grid first).

    Args:
        model: One of the study's models (its name as :data:`STUDY_ORDER` spells it).
        root: The data folder or its ``measured`` folder (default: the workspace, ``data/`` in a checkout).
        loaded: The workspace's runs already loaded (:func:`energybook.store.catalog.measured_runs`); read from
            ``root`` when None.

    Returns:
        One :class:`ModelRun` per file; none when the model is not measured yet.
    """
    _check_model(model)
    loaded = catalog.measured_runs(root) if loaded is None else loaded
    runs = [r for r in loaded if str(r.provenance.get("model")) == model]
    runs.sort(key=lambda r: (r.gpu, r.engine, r.path.stem != "grid", r.path.stem))
    return [ModelRun(r, _point_table(r)) for r in runs]


def notebooks(model: str, book: str | Path | None = None) -> list[Path]:
    """The executed measurement notebooks of ``model`` under ``book/measurements/`` (``<model>.ipynb`` and
    ``<model>-*.ipynb``), sorted; none outside a checkout."""
    if book is None:
        root = checkout_root()
        if root is None:
            return []
        book = root / "book"
    folder = Path(book) / "measurements"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.ipynb") if p.stem == model or p.stem.startswith(f"{model}-"))


def _study_row(table: pd.DataFrame, model: str) -> pd.Series | None:
    key = "model" if "model" in table.columns else "name"  # Table 2 names its models in ``name``
    rows = table[table[key] == model]
    return None if rows.empty else rows.iloc[0]


def _html_table(table: pd.DataFrame, formats=None, source=None):
    from energybook.report.analysis import scroll_table

    return scroll_table(table, formats, source=source if source is not None else "")


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def box(title: str, text: str, kind: str = "note"):
    """A MyST admonition as a Markdown cell output (a ``markdown_format: myst`` cell), fenced with four backticks so
    that its text may hold code blocks (:func:`energybook.report.provenance.admonition` uses three)."""
    from IPython.display import Markdown

    return Markdown(f"````{{admonition}} {title}\n:class: {kind}\n\n{text}\n````\n")


def not_measured_text(model: str) -> str:
    """The body of a model's "not measured yet" box: the commands that measure it."""
    return (f"No committed results file measures {model}: every measured part of this page is empty until one "
            f"does. On a machine with an NVIDIA GPU, measure it with\n\n"
            f"```bash\n{measure_command(model)}\n```\n\n"
            "(a run that stops resumes with the same command), then commit the results file with its sidecar "
            "under `data/measured/` and rebuild the book: this page regenerates from them.")


# ----- a model's page -----------------------------------------------------------------------------------------

@dataclass
class ModelPage:
    """Everything one model's page shows, built from its committed files and the study's tables.

    Attributes:
        model: The model's name.
        runs: Its results files (:func:`model_runs`).
        notebooks: Its executed measurement notebooks (:func:`notebooks`).
    """

    model: str
    runs: list[ModelRun]
    notebooks: list[Path] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        """Whether any committed file measures the model."""
        return bool(self.runs)

    @property
    def grids(self) -> list[ModelRun]:
        """The files with enough points to fit (:attr:`ModelRun.is_grid`)."""
        return [r for r in self.runs if r.is_grid]

    @property
    def architecture(self) -> A.Architecture:
        """The model's architecture (:func:`energybook.load_architecture`)."""
        return A.load(self.model)

    def _not_measured(self, what: str):
        return box(f"{what}: {NOT_MEASURED}", f"No committed results file measures {self.model}: the box at the top "
                   f"of this page gives the commands that measure it (`{measure_command(self.model)}`).",
                   "warning")

    # --- status ---------------------------------------------------------------------------------------------
    def status(self):
        """A box that says where the model is measured (GPU, engine, files, points, GPU-minutes), or that it is
        not measured yet with the commands that measure it (Markdown, for a ``markdown_format: myst`` cell)."""
        if not self.measured:
            return box(f"{self.model}: {NOT_MEASURED}", not_measured_text(self.model), "warning")
        lines = []
        for r in self.runs:
            minutes = f"{r.minutes:.1f} GPU-minutes" if np.isfinite(r.minutes) else f"GPU-minutes {NOT_RECORDED}"
            points = f"{r.points} point{'s' if r.points != 1 else ''}"
            lines.append(f"`{r.name}.csv` on the {r.gpu} with the {r.engine} engine: {points}, {minutes}, "
                         f"weights {r.run.provenance.get('weights', NOT_RECORDED)}, "
                         f"dtype {r.run.provenance.get('dtype', NOT_RECORDED)}")
        pairs = sorted({(r.gpu, r.engine) for r in self.runs})
        text = (f"{len(self.runs)} committed results file{'s' if len(self.runs) != 1 else ''} measure "
                f"{self.model}, on {len(pairs)} (GPU, engine) pair{'s' if len(pairs) != 1 else ''}; each file is "
                f"shown apart, never averaged with another:\n\n{_bullets(lines)}")
        if not any(r.engine == "lean" for r in self.runs):
            text += (f"\n\nNo file of the lean engine with the sampled protocol measures {self.model} yet; on a GPU: "
                     f"`{measure_command(self.model)}`.")
        return box(f"{self.model}: measured", text, "note")

    # --- architecture ---------------------------------------------------------------------------------------
    def architecture_table(self):
        """The architecture's facts (:func:`energybook.load_architecture`) beside the study's Table 2."""
        arch = self.architecture
        study = _study_row(paper.paper_table2(), self.model)
        facts = [
            ("parameters (billions)", arch.num_params / 1e9, study["params_billion_computed"] if study is not None
             else np.nan),
            ("layers", arch.num_layers, study["num_layers"] if study is not None else np.nan),
            ("hidden size", arch.hidden_size, study["hidden_size"] if study is not None else np.nan),
            ("FFN width", arch.intermediate_size, study["intermediate_size"] if study is not None else np.nan),
            ("query heads", arch.num_heads, study["num_heads"] if study is not None else np.nan),
            ("key/value heads", arch.num_kv_heads, study["num_kv_heads"] if study is not None else np.nan),
            ("head width", arch.head_dim, study["head_dim"] if study is not None else np.nan),
            ("vocabulary", arch.vocab_size, study["vocab_size"] if study is not None else np.nan),
            ("positions", arch.max_position_embeddings,
             study["max_position_embeddings"] if study is not None else np.nan),
        ]
        table = pd.DataFrame([(k, _fmt_fact(a), _fmt_fact(b)) for k, a, b in facts],
                             columns=["fact", "our record", "the study's Table 2"]).set_index("fact")
        more = pd.DataFrame({"our record": [
            "GQA" if arch.is_gqa else "MHA", arch.ffn_kind, arch.position, arch.dtype,
            f"{arch.kv_bytes_per_token / 1024:.0f}"]},
            index=pd.Index(["attention", "FFN", "position encoding", "dtype", "KV cache (KiB per token)"],
                           name="fact"))
        more["the study's Table 2"] = ["", study["ffn_kind"] if study is not None else "",
                                       study["position"] if study is not None else "",
                                       study["torch_dtype"] if study is not None else "", ""]
        return _html_table(pd.concat([table, more]).replace("", "-"))

    # --- the measured grid ----------------------------------------------------------------------------------
    def grid_figure(self, value: str = "tokens_per_j"):
        """The heat map of every fitted file (:attr:`grids`), one panel per file, on one shared colour scale;
        None when the model has no grid.

        Args:
            value: The column drawn (``tokens_per_j``: output tokens per joule by the energy counter).
        """
        import matplotlib.pyplot as plt

        from energybook.report.plot_grids import heatmap
        from energybook.report.plot_style import PANEL_WIDTH_IN

        grids = self.grids
        if not grids:
            return None
        values = np.concatenate([g.table[value].to_numpy(dtype=float) for g in grids])
        fig, axes = plt.subplots(len(grids), 1, figsize=(PANEL_WIDTH_IN, 4.3 * len(grids)), squeeze=False,
                                 layout="constrained")
        for ax, g in zip(axes[:, 0], grids):
            heatmap(g.table, self.model, ax=ax, value=value, vmin=float(values.min()), vmax=float(values.max()))
            ax.set_title(g.label, fontsize="small")
        return fig

    def grid_text(self):
        """Under the heat map: each grid's best and worst point and their ratio, beside the study's mean ratio
        and measured best point (Markdown); the "not measured yet" box without a grid."""
        if not self.grids:
            return self._not_measured("Measured grid")
        study = _study_row(paper.paper_table5(), self.model)
        lines = []
        for g in self.grids:
            e = F.extremes(g.table)
            lines.append(f"{g.label}: best point ({e.best.n_in}, {e.best.n_out}) at {e.best.tokens_per_j:.1f} "
                         f"output tokens per joule, worst ({e.worst.n_in}, {e.worst.n_out}) at "
                         f"{e.worst.tokens_per_j:.2f}, a ratio of {e.ratio:.1f}.")
        text = _bullets(lines)
        if study is not None:
            text += (f"\n\nThe study measured its best point for this model at "
                     f"({int(study['measured_best_n_in'])}, {int(study['measured_best_n_out'])}) (its Table 5), "
                     f"and a best-over-worst ratio of {paper.quoted('best_worst_ratio_mean'):.2f} on average over "
                     f"its 13 models (standard deviation {paper.quoted('best_worst_ratio_sd'):.2f}), with "
                     "TensorRT-LLM and the real weights.")
        repeats = [r for r in self.runs if not r.is_grid]
        if repeats:
            parts = []
            for r in repeats:
                points = ", ".join(f"({int(p.n_in)}, {int(p.n_out)}): {p.tokens_per_j:.1f} over {int(p.reps)} "
                                   "repeats" for p in r.table.itertuples())
                parts.append(f"{r.label} ({points})")
            text += ("\n\nRepeated single points, measured apart from the grid (output tokens per joule, mean over "
                     "the repeats): " + "; ".join(parts) + ".")
        return box("Best and worst points", text, "note")

    # --- fits -----------------------------------------------------------------------------------------------
    def fits(self) -> dict[str, dict[str, F.FitResult]]:
        """The study's six formulas fitted by plain least squares (its method) to each grid file, by
        :attr:`ModelRun.short_label` (:func:`energybook.model.fit.fit_all`)."""
        return {g.short_label: F.fit_all(g.table, weighting="none") for g in self.grids}

    def mape_table(self, fitted: dict[str, dict[str, F.FitResult]] | None = None):
        """In-sample MAPE (%) of each formula: ours per grid file beside the study's Table 3 for the model."""
        if not self.grids:
            return self._not_measured("Fits")
        fitted = self.fits() if fitted is None else fitted
        table = pd.DataFrame({label: {FM.FORMULAS[k].label: r.mape_pct for k, r in res.items()}
                              for label, res in fitted.items()})
        study = _study_row(paper.paper_table3(), self.model)
        if study is not None:
            table["the study (Table 3)"] = [float(study[k]) for k in FM.FORMULAS]
        return _html_table(table.rename_axis("formula (MAPE, %)"), "{:.2f}", source=[g.run for g in self.grids])

    def theta_table(self, fitted: dict[str, dict[str, F.FitResult]] | None = None):
        """The Memory+FLOPs coefficients (J per output token times the unit of each term): ours per grid file,
        with their standard errors, beside the study's Table 5."""
        if not self.grids:
            return None
        fitted = self.fits() if fitted is None else fitted
        cols = {}
        for label, res in fitted.items():
            est = res["memory_flops_model"].params
            cols[label] = {k: f"{p.value:.3g} ± {p.stderr:.2g}" for k, p in est.items()}
        table = pd.DataFrame(cols)
        study = _study_row(paper.paper_table5(), self.model)
        if study is not None:
            table["the study (Table 5)"] = [f"{float(study[k]):.3g}" for k in table.index]
        return _html_table(table.rename_axis("coefficient"), source=[g.run for g in self.grids])

    # --- sweet spots ----------------------------------------------------------------------------------------
    def sweet_spot_table(self, fitted: dict[str, dict[str, F.FitResult]] | None = None):
        """The best operating point by each estimate: per grid file the measured best point and the fit's
        sweet spot (the input whose n_out* costs least, n_out searched within the grid's outputs); the study's
        measured best point and estimated sweet spot (its Table 5), and the sweet spot of its coefficients over
        the same outputs."""
        rows = []
        fitted = (self.fits() if fitted is None else fitted) if self.grids else {}
        for g in self.grids:
            best = F.extremes(g.table).best
            rows.append((g.short_label, "measured best grid point", best.n_in, best.n_out))
            lo, hi = float(g.table["n_out"].min()), float(g.table["n_out"].max())
            spot = F.estimated_sweet_spot(fitted[g.short_label]["memory_flops_model"].values,
                                          n_in=sorted(g.table["n_in"].unique()), n_out_min=lo, n_out_max=hi)
            rows.append((g.short_label, f"Memory+FLOPs fit, n_out* ({spot.kind})", spot.n_in, spot.n_out))
        study = _study_row(paper.paper_table5(), self.model)
        if study is not None:
            rows.append(("the study", "measured best grid point (Table 5)", int(study["measured_best_n_in"]),
                         int(study["measured_best_n_out"])))
            rows.append(("the study", "estimated sweet spot (Table 5, unbounded n_out)",
                         int(study["estimated_best_n_in"]), int(study["estimated_best_n_out"])))
            spot = F.estimated_sweet_spot(paper.paper_thetas(self.model), n_in=list(GRID), n_out_min=min(GRID),
                                          n_out_max=max(GRID))
            rows.append(("the study", f"its coefficients, n_out* within the grid ({spot.kind})", spot.n_in,
                         spot.n_out))
        table = pd.DataFrame([(f"{src}: {what}", a, b) for src, what, a, b in rows],
                             columns=["estimate", "n_in", "n_out"]).set_index("estimate")
        return _html_table(table, source=[g.run for g in self.grids] or "")

    def sweet_spot_curve(self, fitted: dict[str, dict[str, F.FitResult]] | None = None):
        """n_out*(n_in), the sweet spot of every input (tokens): our fit per grid file and the study's
        coefficients (:func:`energybook.report.analysis.sweet_spot_table`)."""
        from energybook.report.analysis import sweet_spot_table

        thetas = {}
        if self.grids:
            fitted = self.fits() if fitted is None else fitted
            thetas = {label: res["memory_flops_model"].values for label, res in fitted.items()}
        thetas["the study (Table 5)"] = paper.paper_thetas(self.model)
        curve = sweet_spot_table(thetas)
        table = curve.pivot(index="n_in", columns="model", values="n_out_star")[list(thetas)]
        return _html_table(table.rename_axis("n_in (tokens)").rename_axis("n_out* (tokens)", axis=1), "{:.0f}",
                           source=[g.run for g in self.grids] or "")

    # --- power and clocks -----------------------------------------------------------------------------------
    def power_figure(self):
        """Heat maps of the mean power (``energy_j / duration_s``, watts) and, where the rows record it, the mean
        SM clock (MHz) of every point, per grid file, each quantity on one colour scale; None without a grid."""
        import matplotlib.pyplot as plt

        from energybook.report.plot_grids import heatmap
        from energybook.report.plot_style import PANEL_WIDTH_IN

        grids = self.grids
        if not grids:
            return None
        panels = [(g, "power_w", "mean power (W)") for g in grids]
        panels += [(g, "sm_clock_mhz", "mean SM clock (MHz)") for g in grids if g.has("sm_clock_mhz")]
        fig, axes = plt.subplots(len(panels), 1, figsize=(PANEL_WIDTH_IN, 4.3 * len(panels)), squeeze=False,
                                 layout="constrained")
        for ax, (g, value, label) in zip(axes[:, 0], panels):
            shown = [p.table[value].to_numpy(dtype=float) for p, v, _ in panels if v == value]
            lo, hi = float(np.min(np.concatenate(shown))), float(np.max(np.concatenate(shown)))
            heatmap(g.table, self.model, ax=ax, value=value, vmin=lo, vmax=hi, log=False, fmt=".0f",
                    cbar_label=label)
            ax.set_title(f"{label.split(' (')[0]}: {g.label}", fontsize="small")
        return fig

    def power_table(self):
        """Per file: mean power over its points (lowest, median, highest; watts), its power limit, the SM clock
        (MHz) and the highest temperature (Celsius), "not recorded" where its rows do not have them."""
        if not self.measured:
            return self._not_measured("Power and clocks")
        rows = {}
        for r in self.runs:
            t = r.table
            row = {"mean power, lowest (W)": f"{t['power_w'].min():.0f}",
                   "median (W)": f"{t['power_w'].median():.0f}",
                   "highest (W)": f"{t['power_w'].max():.0f}"}
            limit = r.run.provenance.get("power_limit_w")
            row["power limit (W)"] = (f"{t['power_limit_w'].max():.0f}" if r.has("power_limit_w")
                                      else f"{float(limit):.0f}" if isinstance(limit, (int, float)) else NOT_RECORDED)
            row["SM clock (MHz)"] = (f"{t['sm_clock_mhz'].min():.0f} to {t['sm_clock_mhz'].max():.0f}"
                                     if r.has("sm_clock_mhz") else NOT_RECORDED)
            row["highest temperature (°C)"] = (f"{t['temperature_max_c'].max():.0f}" if r.has("temperature_max_c")
                                               else NOT_RECORDED)
            rows[r.short_label] = row
        table = pd.DataFrame(rows).rename_axis("per point")
        return _html_table(table, source=[r.run for r in self.runs])

    # --- prediction -----------------------------------------------------------------------------------------
    def prediction(self) -> Prediction:
        """The physical model's prediction of the study's grid for this model (:func:`predicted_grid`)."""
        return predicted_grid(self.model)

    def predicted_figure(self, prediction: Prediction | None = None):
        """The heat map of the predicted efficiency (output tokens per joule), titled as a prediction; None when
        the physical model refuses the model."""
        from energybook.report.plot_grids import heatmap

        p = self.prediction() if prediction is None else prediction
        if p.table is None:
            return None
        small = float(p.table["tokens_per_j"].max()) < 10  # two digits where every value is small
        ax = heatmap(p.table, self.model, value="tokens_per_j", fmt=".2g" if small else None)
        ax.set_title(f"prediction, not a measurement ({p.gpu}, {p.engine} engine)", fontsize="small")
        return ax.figure

    def prediction_text(self, prediction: Prediction | None = None):
        """What the prediction is, what it was calibrated on and where it lies outside that (Markdown)."""
        p = self.prediction() if prediction is None else prediction
        if p.table is None:
            return box("Prediction: refused", f"The physical model refuses {self.model}: {p.refused}",
                              "warning")
        inside = self.model in p.calibrated_on
        text = (f"The physical model ({{doc}}`/book/predict`) predicts {self.model}'s grid from its configuration "
                f"alone, with the calibration of the {p.gpu} and the {p.engine} engine, fitted on the grids of "
                f"{', '.join(p.calibrated_on) or NOT_RECORDED}. ")
        text += ("This model is one of them, so the prediction is in sample: it shows how well the shared model "
                 "fits, not how well it predicts." if inside else
                 "This model is not one of them: the prediction is an extrapolation to another architecture.")
        text += f" Its best point is ({p.best_n_in}, {p.best_n_out}) at {p.best_tokens_per_j:.1f} tokens per joule"
        if self.model in set(paper.paper_table5()["model"]):
            best, _ = _study_best(self.model)
            text += (f"; the study's fitted surface (its formula with its Table 5 coefficients, measured with "
                     f"TensorRT-LLM) has its best at {best:.1f}.")
        else:
            text += "."
        if p.warnings:
            text += "\n\nWhere the grid lies outside what the calibration covered:\n\n" + _bullets(p.warnings)
        return box("A prediction, not a measurement", text, "note")

    # --- notebooks ------------------------------------------------------------------------------------------
    def notebook_text(self):
        """Links to the model's executed measurement notebooks (Markdown), or a line saying there are none."""
        if not self.notebooks:
            return box("Measurement notebook", f"No executed measurement notebook of {self.model} is "
                              "committed under `book/measurements/`: the files above came from sweeps run without "
                              "the notebook, or the model is not measured yet.", "note")
        links = [f"{{doc}}`{p.stem} </book/measurements/{p.stem}>`" for p in self.notebooks]
        return box("Measurement notebook", "The executed notebook of the sweep, with its own outputs, "
                          "provenance tables and GPU-minutes: " + ", ".join(links) + ".", "note")


def _fmt_fact(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return f"{float(value):.3f}"
    return f"{int(value)}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def load_page(model: str, root: str | Path | None = None, book: str | Path | None = None) -> ModelPage:
    """A model's page from its committed files.

    Args:
        model: One of the study's models.
        root: The data folder (default: the workspace, ``data/`` in a checkout).
        book: The book folder whose ``measurements/`` holds executed notebooks (default: the checkout's).
    """
    return ModelPage(model, model_runs(model, root), notebooks(model, book))


# ----- the physical model's prediction --------------------------------------------------------------------------

@dataclass
class Prediction:
    """The physical model's prediction of a model's grid.

    Attributes:
        model: The model.
        gpu: The calibration's GPU name.
        engine: The calibration's engine.
        calibrated_on: The models whose grids the calibration was fitted on.
        table: One row per grid point (``model``, ``n_in``, ``n_out``, ``j_per_token``, ``tokens_per_j``), or None
            when the model refuses.
        refused: Why the model refuses ("" when it does not).
        warnings: Where the grid lies outside the calibrated range, one sentence per kind.
    """

    model: str
    gpu: str
    engine: str
    calibrated_on: tuple[str, ...]
    table: pd.DataFrame | None
    refused: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def _best(self):
        return F.extremes(self.table).best

    @property
    def best_n_in(self) -> int:
        """Input length of the predicted best point (tokens)."""
        return self._best.n_in

    @property
    def best_n_out(self) -> int:
        """Output length of the predicted best point (tokens)."""
        return self._best.n_out

    @property
    def best_tokens_per_j(self) -> float:
        """Predicted efficiency at the best point (output tokens per joule)."""
        return self._best.tokens_per_j


def _summarise_warnings(found: list[str], n_points: int) -> tuple[str, ...]:
    """The prediction's warnings over a grid, one sentence per kind: a kind that names each point's own numbers
    (its batch, its positions, its power) is counted, the others are said once."""
    batch = [w for w in found if w.startswith("batch ")]
    positions = [w for w in found if "positions" in w and not w.startswith("batch ")]
    power = [w for w in found if w.startswith("the predicted mean power")]
    out = []
    if batch:
        rng = re.search(r"calibrated batches (\S+)", batch[0])
        out.append(f"{len(batch)} of the {n_points} points run waves of a batch outside the calibrated batches"
                   + (f" {rng.group(1)}" if rng else "") + " (requests per wave)")
    if positions:
        out.append(f"{len(positions)} of the {n_points} points need more positions than the model has (the measuring "
                   "engine extends its position table; a real checkpoint cannot run them)")
    if power:
        rng = re.search(r"measured mean powers (\S+ W)", power[0])
        out.append(f"{len(power)} of the {n_points} points have a predicted mean power outside the measured mean "
                   "powers" + (f" {rng.group(1)}" if rng else "") + " of the calibration grids")
    counted = set(batch) | set(positions) | set(power)
    out += list(dict.fromkeys(w for w in found if w not in counted))
    return tuple(out)


def predicted_grid(model: str, calibration=None, n_in=GRID, n_out=GRID) -> Prediction:
    """The physical model's prediction of ``model`` over the grid (:func:`energybook.model.physics.predict` at the
    engine's batch rule, the interval's parameter draws left out: fast enough for a page).

    Args:
        model: An architecture name.
        calibration: A calibration (default: the shipped one, :func:`energybook.model.physics.load_calibration`).
        n_in: Input lengths (tokens).
        n_out: Output lengths (tokens).

    Returns:
        The prediction; its ``table`` is None and ``refused`` says why when the physical model refuses a point.
    """
    from energybook.model import physics as P

    cal = calibration if calibration is not None else P.load_calibration()
    gpu, engine = cal.gpu_name or cal.gpu, cal.engine or "hf"
    on = tuple((cal.calibrated_range or {}).get("models", ()))
    arch = A.load(model)
    rows, found = [], []
    try:
        for a in n_in:
            for b in n_out:
                p = P.predict(arch, int(a), int(b), calibration=cal, samples=0)
                rows.append(dict(model=model, n_in=int(a), n_out=int(b), j_per_token=p.j_per_token,
                                 tokens_per_j=p.tokens_per_j))
                found += list(p.warnings)
    except ValueError as exc:  # physics.Refused, or a form the calibration does not know
        return Prediction(model, gpu, engine, on, None, refused=str(exc))
    return Prediction(model, gpu, engine, on, pd.DataFrame(rows), warnings=_summarise_warnings(found, len(rows)))


# ----- the chapter: coverage, size and attention over the 13 models ---------------------------------------------

def all_runs(root: str | Path | None = None) -> dict[str, list[ModelRun]]:
    """:func:`model_runs` of each of the 13 models, by model (an empty list for a model not measured yet); the
    workspace's files are read once."""
    loaded = catalog.measured_runs(root)
    return {m: model_runs(m, loaded=loaded) for m in STUDY_ORDER}


def page_links(runs: dict[str, list[ModelRun]]):
    """A list of the 13 models' pages with what each holds (Markdown for a ``markdown_format: myst`` cell).

    Args:
        runs: :func:`all_runs`.
    """
    from IPython.display import Markdown

    from energybook.report.plot_style import model_label

    lines = []
    for m in STUDY_ORDER:
        mine = runs.get(m, [])
        pairs = list(dict.fromkeys(f"{r.gpu}, {r.engine} engine" for r in mine))
        state = f"measured on {'; '.join(pairs)}" if mine else NOT_MEASURED
        lines.append(f"{{doc}}`{model_label(m)} <models/{m}>`: {state}")
    return Markdown(_bullets(lines) + "\n")


def coverage_table(root: str | Path | None = None, runs: dict[str, list[ModelRun]] | None = None) -> pd.DataFrame:
    """Which of the 13 models is measured on which GPU and engine: one row per (model, GPU, engine) with its files,
    grid points and GPU-minutes (:func:`energybook.report.provenance.measuring_minutes`, summed over the files),
    and one row saying "not measured yet" for a model without files.

    Args:
        root: The data folder (default: the workspace).
        runs: Already loaded runs by model (default: loaded from ``root``).
    """
    runs = all_runs(root) if runs is None else runs
    rows = []
    for m in STUDY_ORDER:
        mine = runs.get(m, [])
        if not mine:
            rows.append(dict(model=m, gpu=NOT_MEASURED, engine="-", files="-", points=np.nan, gpu_minutes=np.nan))
            continue
        for (gpu, engine) in dict.fromkeys((r.gpu, r.engine) for r in mine):
            group = [r for r in mine if (r.gpu, r.engine) == (gpu, engine)]
            minutes = [r.minutes for r in group if np.isfinite(r.minutes)]
            rows.append(dict(model=m, gpu=gpu, engine=engine, files=", ".join(f"{r.name}.csv" for r in group),
                             points=sum(r.points for r in group),
                             gpu_minutes=sum(minutes) if minutes else np.nan))
    table = pd.DataFrame(rows).set_index(["model", "gpu", "engine"])
    table.attrs["runs"] = [r.run for m in STUDY_ORDER for r in runs.get(m, [])]
    return table


def _study_best(model: str) -> tuple[float, float]:
    """The study's fitted surface (its Eq. 5 with Table 5's coefficients): its best efficiency over the grid and
    its efficiency at the longest request (4096, 4096), output tokens per joule."""
    surface = paper.paper_surface(model)
    corner = surface[(surface["n_in"] == max(GRID)) & (surface["n_out"] == max(GRID))]["tokens_per_j"]
    return float(surface["tokens_per_j"].max()), float(corner.iloc[0])


def size_table() -> pd.DataFrame:
    """The study's 13 models by size: parameters, attention and KV-cache bytes per token (our records), and the
    study's values: its fitted surface's best efficiency and its efficiency at the longest request (4096, 4096)
    (its Eq. 5 with Table 5's coefficients, output tokens per joule), its Memory+FLOPs MAPE (Table 3, %) and its
    estimated sweet spot (Table 5).

    Returns:
        One row per model, in order of size.
    """
    t3 = paper.paper_table3().set_index("model")
    t5 = paper.paper_table5().set_index("model")
    rows = []
    for m in STUDY_ORDER:
        arch = A.load(m)
        best, corner = _study_best(m)
        rows.append(dict(model=m, params_b=arch.num_params / 1e9, attention="GQA" if arch.is_gqa else "MHA",
                         kv_kib_per_token=arch.kv_bytes_per_token / 1024, study_best_tokens_per_j=best,
                         study_long_tokens_per_j=corner, study_mape_pct=float(t3.loc[m, "memory_flops_model"]),
                         study_sweet_spot=f"({int(t5.loc[m, 'estimated_best_n_in'])}, "
                                          f"{int(t5.loc[m, 'estimated_best_n_out'])})"))
    return pd.DataFrame(rows).set_index("model").sort_values("params_b", kind="stable")


def measured_grids(runs: dict[str, list[ModelRun]]) -> pd.DataFrame:
    """Our measured grids of the 13 models, one row per grid file (each GPU and engine apart): the model's
    parameters and attention, our best efficiency and our efficiency at (4096, 4096) (output tokens per joule,
    NaN where the file lacks the point), our Memory+FLOPs MAPE (%, plain least squares), and the study's values for
    the same model beside them.

    Args:
        runs: :func:`all_runs`.

    Returns:
        Indexed by (model, gpu, engine, file); empty when nothing is measured. Its ``attrs`` carry the files'
        GPUs and engines (:func:`energybook.report.provenance.source_line`).
    """
    sizes = size_table()
    rows, used = [], []
    for m in STUDY_ORDER:
        for g in (r for r in runs.get(m, []) if r.is_grid):
            used.append(g.run)
            rows.append(dict(model=m, gpu=g.gpu, engine=g.engine, file=f"{g.name}.csv",
                             params_b=sizes.loc[m, "params_b"], attention=sizes.loc[m, "attention"],
                             best_tokens_per_j=float(g.table["tokens_per_j"].max()),
                             long_tokens_per_j=_at(g.table, max(GRID), max(GRID)),
                             mape_pct=F.fit(g.table, "memory_flops_model", weighting="none").mape_pct,
                             study_best_tokens_per_j=sizes.loc[m, "study_best_tokens_per_j"],
                             study_long_tokens_per_j=sizes.loc[m, "study_long_tokens_per_j"],
                             study_mape_pct=sizes.loc[m, "study_mape_pct"]))
    columns = ["model", "gpu", "engine", "file", "params_b", "attention", "best_tokens_per_j", "long_tokens_per_j",
               "mape_pct", "study_best_tokens_per_j", "study_long_tokens_per_j", "study_mape_pct"]
    table = pd.DataFrame(rows, columns=columns).set_index(["model", "gpu", "engine", "file"])
    return attach_sources(table, used)


def _at(table: pd.DataFrame, n_in: int, n_out: int) -> float:
    hit = table[(table["n_in"] == n_in) & (table["n_out"] == n_out)]["tokens_per_j"]
    return float(hit.iloc[0]) if len(hit) else np.nan


#: Size bands of the comparison of attention kinds (billions of parameters, upper ends).
SIZE_BANDS = ((2.0, "about 1-2B"), (4.0, "about 2.5-3.5B"), (float("inf"), "about 6.5-9B"))


def size_band(params_b: float) -> str:
    """The :data:`SIZE_BANDS` band of a model of ``params_b`` billion parameters."""
    return next(name for top, name in SIZE_BANDS if params_b < top)


def attention_summary(sizes: pd.DataFrame, grids: pd.DataFrame) -> pd.DataFrame:
    """GQA against MHA within each size band: the study's medians over its models of the band, and ours per (GPU,
    engine) over the models we measured there, never pooled across GPUs or engines.

    Args:
        sizes: :func:`size_table`.
        grids: :func:`measured_grids`.

    Returns:
        One row per (size band, attention, source), where source is ``"the study"`` or ``"ours: <gpu>, <engine>
        engine"``: ``models`` (their names), ``best_tokens_per_j`` and ``long_tokens_per_j`` (medians, output
        tokens per joule: best grid point, and (4096, 4096)). A band with no measured model has no row of ours.
    """
    study = sizes.assign(band=[size_band(p) for p in sizes["params_b"]])
    ours = grids.reset_index()
    ours = ours.assign(band=[size_band(p) for p in ours["params_b"]], source=[
        f"ours: {g}, {e} engine" for g, e in zip(ours["gpu"], ours["engine"])])
    rows = []
    for _, band in SIZE_BANDS:
        for kind in ("GQA", "MHA"):
            s = study[(study["band"] == band) & (study["attention"] == kind)]
            if s.empty:
                continue
            rows.append(dict(band=band, attention=kind, source="the study", models=", ".join(s.index),
                             best_tokens_per_j=s["study_best_tokens_per_j"].median(),
                             long_tokens_per_j=s["study_long_tokens_per_j"].median()))
            o = ours[(ours["band"] == band) & (ours["attention"] == kind)]
            for source, g in o.groupby("source", sort=True):
                rows.append(dict(band=band, attention=kind, source=source, models=", ".join(dict.fromkeys(g["model"])),
                                 best_tokens_per_j=g["best_tokens_per_j"].median(),
                                 long_tokens_per_j=g["long_tokens_per_j"].median()))
    out = pd.DataFrame(rows).set_index(["band", "attention", "source"])
    out.attrs = dict(grids.attrs)
    return out


def size_figure(sizes: pd.DataFrame, grids: pd.DataFrame):
    """Best efficiency against parameters: the study's fitted surfaces for all 13 models (open markers) and our
    measured grids (filled), GQA (circles) and MHA (squares) apart, log axes; a figure of measurements carries
    their source line.

    Args:
        sizes: :func:`size_table`.
        grids: :func:`measured_grids`.
    """
    import matplotlib.pyplot as plt

    from energybook.report.plot_style import MAX_WIDTH_IN, log_axis, model_label, stamp_source

    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN, 4.2), layout="constrained")
    ours = grids.reset_index()
    for kind, marker, colour in (("GQA", "o", "C0"), ("MHA", "s", "C1")):
        s = sizes[sizes["attention"] == kind]
        ax.scatter(s["params_b"], s["study_best_tokens_per_j"], marker=marker, facecolors="none", edgecolors=colour,
                   s=55, label=f"the study, {kind} (its fitted surface)")
        o = ours[ours["attention"] == kind]
        if len(o):
            ax.scatter(o["params_b"], o["best_tokens_per_j"], marker=marker, color=colour, s=30,
                       label=f"ours, {kind} (measured)")
    right = sizes["params_b"].max() / 1.15  # labels of the rightmost points go to their left
    for m, r in sizes.iterrows():
        left = r["params_b"] > right
        ax.annotate(model_label(m), (r["params_b"], r["study_best_tokens_per_j"]), fontsize="xx-small",
                    xytext=(-4 if left else 4, 3), ha="right" if left else "left", textcoords="offset points")
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel("best efficiency (output tokens per joule)")
    ax.legend(fontsize="x-small", loc="upper right")
    if len(ours):
        stamp_source(fig, grids, models=list(dict.fromkeys(ours["model"])))
    return fig


# ----- the pages ---------------------------------------------------------------------------------------------

#: The one template of the 13 model pages (``{model}``, ``{slug}`` and ``{label}`` filled by :func:`render_page`).
PAGE_TEMPLATE = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

(sec-model-{slug})=
# {model}

This page gathers what the book holds about {label}: its architecture beside the study's, our
measurements of it, each results file apart (a GPU and an engine each, never averaged across them),
the study's formulas fitted to every grid, its sweet spots, its power and clocks, and the physical
model's prediction. Every number is computed when the book is built, from the committed files under
`data/measured/` and the study's tables shipped with the package. {{ref}}`sec-models` compares the 13 models.

<!-- Generated by `python -m energybook.report.model_pages write book/models` from the template in
energybook/report/model_pages.py: edit the template, not this page. -->

```{{code-cell}} ipython3
:tags: [parameters, remove-cell]

MODEL = "{model}"
```

```{{code-cell}} ipython3
:tags: [remove-cell]

import matplotlib.pyplot as plt

from energybook.report import model_pages, plot

plot.set_theme()
page = model_pages.load_page(MODEL)
fitted = page.fits()
prediction = page.prediction()
```

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  markdown_format: myst
---
page.status()
```

## Architecture

Our record of the architecture (the one the FLOP and byte counts and the physical model read) beside
the study's Table 2.

```{{code-cell}} ipython3
:tags: [remove-input]

page.architecture_table()
```

## The measured grid

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  figure:
    caption: Measured efficiency of {label}, output tokens per joule (energy counter), over the grid of
      input and output lengths, one panel per results file (its GPU, engine and file in the panel's title)
      on one shared log colour scale; input length increases upward. The line under the panels names
      each GPU (with its UUID) and engine.
    name: fig-model-grid-{slug}
  image:
    alt: Heat map of {label}'s measured output tokens per joule, rows the input lengths from 64 (bottom)
      to 4096 (top) tokens and columns the output lengths from 64 to 4096 tokens, every cell labelled with
      its value; one panel per GPU, engine and results file.
---
fig = page.grid_figure()
plt.show()
```

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  markdown_format: myst
---
page.grid_text()
```

## Fits

The study's six formulas ({{ref}}`sec-fitting`), fitted to each grid by plain least squares, the study's
method, and scored in sample by their MAPE, beside the study's values for the model.

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  markdown_format: myst
---
page.mape_table(fitted)
```

```{{code-cell}} ipython3
:tags: [remove-input]

page.theta_table(fitted)
```

## Sweet spots

The best operating point by each estimate ({{ref}}`sec-sweet-spots`): the measured best grid point, the
sweet spot of the Memory+FLOPs fit, and the study's. Then the sweet spot $n_{{out}}^*$ of every input
length, from our fits and from the study's coefficients, searched within the grid's output lengths.

```{{code-cell}} ipython3
:tags: [remove-input]

page.sweet_spot_table(fitted)
```

```{{code-cell}} ipython3
:tags: [remove-input]

page.sweet_spot_curve(fitted)
```

## Power and clocks

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  markdown_format: myst
---
page.power_table()
```

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  figure:
    caption: Mean power (watts, the point's energy over its duration) and, where the rows record it, mean
      SM clock (MHz) of every measured point of {label}, one panel per quantity and results file, each
      quantity on one shared colour scale; input length increases upward. The line under the panels
      names each GPU (with its UUID) and engine.
    name: fig-model-power-{slug}
  image:
    alt: Heat maps of {label}'s mean power in watts and mean SM clock in megahertz over the grid of input
      lengths (rows, 64 at the bottom to 4096 at the top) and output lengths (columns, 64 to 4096 tokens),
      every cell labelled with its value.
---
fig = page.power_figure()
plt.show()
```

## Predicted by the physical model

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  markdown_format: myst
---
page.prediction_text(prediction)
```

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  figure:
    caption: The physical model's prediction for {label}, output tokens per joule over the grid of input
      and output lengths (a prediction, not a measurement; the panel's title names the calibration's GPU
      and engine); input length increases upward.
    name: fig-model-predicted-{slug}
  image:
    alt: Heat map of {label}'s predicted output tokens per joule, rows the input lengths from 64 (bottom)
      to 4096 (top) tokens and columns the output lengths from 64 to 4096 tokens, every cell labelled with
      its value.
---
fig = page.predicted_figure(prediction)
plt.show()
```

## Measurement notebook

```{{code-cell}} ipython3
---
tags: [remove-input]
mystnb:
  markdown_format: myst
---
page.notebook_text()
```
"""


def render_page(model: str) -> str:
    """The page of ``model``: :data:`PAGE_TEMPLATE` with its name filled in."""
    from energybook.report.plot_style import model_label

    _check_model(model)
    return PAGE_TEMPLATE.format(model=model, slug=slug(model), label=model_label(model))


def page_path(folder: str | Path, model: str) -> Path:
    """Where a model's page lives: ``<folder>/<model>.md``."""
    return Path(folder) / f"{model}.md"


def write_pages(folder: str | Path, models: Sequence[str] = STUDY_ORDER) -> list[Path]:
    """Write the pages of ``models`` (default the study's 13) into ``folder``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for m in models:
        path = page_path(folder, m)
        path.write_text(render_page(m))
        written.append(path)
    return written


def stale_pages(folder: str | Path, models: Sequence[str] = STUDY_ORDER) -> list[Path]:
    """The pages under ``folder`` that are missing or differ from :func:`render_page` (write them again)."""
    return [page_path(folder, m) for m in models
            if not page_path(folder, m).is_file() or page_path(folder, m).read_text() != render_page(m)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m energybook.report.model_pages write FOLDER``: write the 13 pages (``check FOLDER``: exit 1 and
    name the pages that differ from the template)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("write", "check"):
        print("usage: python -m energybook.report.model_pages {write|check} FOLDER", file=sys.stderr)
        return 2
    if args[0] == "write":
        for p in write_pages(args[1]):
            print(p)
        return 0
    stale = stale_pages(args[1])
    for p in stale:
        print(f"{p} differs from the template: python -m energybook.report.model_pages write {args[1]}")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
