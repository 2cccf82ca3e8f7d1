"""The study's Tables 3-5 over its 13 models, measured or not, beside the study's values, and the coefficient
statistics that match our grids (group-bootstrap intervals and sign shares, not classical p-values).

Every table here has one block of rows per model of :data:`energybook.model.architecture.STUDY_ORDER`: the
study's row (from :func:`energybook.model.paper.paper_table3` and :func:`~energybook.model.paper.paper_table5`)
where the study has one, then one row per measured grid of the model, each fitted on its own (one GPU, one
engine, one protocol: two engines' points never share a fit), or one row ``"not measured yet"`` with the command
that measures it (:func:`measure_command`). Each measured row names its GPU and engine; the table's caption names
the boards (:func:`energybook.report.provenance.source_line`).

The coefficient statistics come from :func:`energybook.model.stats.coefficient_statistics`: a bootstrap that
resamples whole prefix groups (the points of one input length share one generation, and its noise), its 95%
percentile interval, and the share of draws that keep the estimate's sign.

Used in :doc:`/book/fitting`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from energybook.model import fit as F
from energybook.model import formulas as FM
from energybook.model import paper as P
from energybook.model import stats as S
from energybook.model.architecture import PAPER_LABELS, STUDY_ORDER
from energybook.report import provenance
from energybook.report.analysis import measured_table

logger = logging.getLogger(__name__)

#: The file stems of a measured 7x7 grid, one per protocol: ``grid`` (prefix mode), ``sampled``, ``full``.
PROTOCOLS = ("grid", "sampled", "full")
#: The command that measures a model's grid on a GPU (the lean engine, the sampled protocol).
MEASURE_COMMAND = "energybook sweep --model {model} --engine lean --mode sampled"
#: What a model without a committed grid shows in place of its numbers.
NOT_MEASURED = "not measured yet"
#: The ``who`` of the study's rows.
STUDY = "study"
#: The ``who`` of our rows.
OURS = "ours"


def measure_command(model: str) -> str:
    """The command that measures ``model``'s grid: ``energybook sweep --model <model> --engine lean --mode sampled``."""
    return MEASURE_COMMAND.format(model=model)


def study_grids(root=None, protocols=PROTOCOLS, engine: str | None = None) -> pd.DataFrame:
    """Every committed 7x7 grid, of any GPU, engine and protocol, as one tidy table with a ``protocol`` column.

    Args:
        root: Folder of results files (default: the workspace's ``measured/``).
        protocols: File stems to read (:data:`PROTOCOLS`).
        engine: Keep only this engine's grids (all when None).

    Returns:
        The rows of :func:`energybook.report.analysis.measured_table` for each stem, with ``protocol``; its
        ``attrs`` name every GPU board and engine behind it. Empty when nothing is measured.
    """
    parts = [t.assign(protocol=name) for name in protocols
             if not (t := measured_table(root, name=name, engine=engine)).empty]
    if not parts:
        return pd.DataFrame(columns=["gpu", "engine", "protocol", "model", "n_in", "n_out", "j_per_token"])
    table = pd.concat(parts, ignore_index=True)
    return provenance.attach_sources(table, parts)


@dataclass(frozen=True)
class Grid:
    """One measured grid: the points of one model on one GPU, engine and protocol, fitted on their own.

    Attributes:
        model: The model (shipped name).
        gpu: The GPU's name as NVML reports it.
        engine: The engine's results folder name (``hf``, ``lean``...).
        protocol: The file stem (``grid``, ``sampled``, ``full``).
        table: Its points (``n_in``, ``n_out`` in tokens, ``j_per_token`` in joules per output token).
        source: Its source line: the GPU boards (name and UUID) and the engine.
    """

    model: str
    gpu: str
    engine: str
    protocol: str
    table: pd.DataFrame = field(repr=False, compare=False)
    source: str = ""

    @property
    def where(self) -> str:
        """GPU and engine in a few words, e.g. ``"NVIDIA H100 80GB HBM3, hf engine"`` (the protocol when it is not
        the default prefix-mode grid)."""
        text = f"{self.gpu}, {self.engine} engine"
        return text if self.protocol == "grid" else f"{text}, {self.protocol} protocol"

    @property
    def n_points(self) -> int:
        """Grid points measured."""
        return len(self.table)


def grids(table: pd.DataFrame, min_points: int = 8) -> list[Grid]:
    """The grids of a measured table, one per (model, GPU, engine, protocol), in the study's model order (other
    models after, in table order).

    Args:
        table: A measured table (:func:`study_grids` or :func:`energybook.report.analysis.measured_table`).
        min_points: Grids with fewer points are left out (a six-coefficient fit needs more than six).
    """
    if table.empty:
        return []
    keys = [c for c in ("gpu", "engine", "protocol") if c in table.columns]
    records = provenance.measurement_sources(table, models=list(table["model"].unique()))
    found = []
    for key, part in table.groupby(["model", *keys], sort=False, dropna=False):
        values = dict(zip(["model", *keys], key if isinstance(key, tuple) else (key,)))
        if len(part) < min_points:
            logger.warning("%s: only %d points; left out of the tables", values, len(part))
            continue
        gpu, engine = str(values.get("gpu", "unknown GPU")), str(values.get("engine", "unknown"))
        mine = [s for s in records if s.model == values["model"] and s.gpu == gpu and s.engine == engine]
        found.append(Grid(values["model"], gpu, engine, str(values.get("protocol", "grid")),
                          part.reset_index(drop=True), provenance.source_line(mine)))
    order = {m: i for i, m in enumerate(STUDY_ORDER)}
    return sorted(found, key=lambda g: order.get(g.model, len(order)))


def _models(found: list[Grid], models) -> list[str]:
    """The models in order, then measured models outside it, each once."""
    models = list(STUDY_ORDER if models is None else models)
    return list(dict.fromkeys(models + [g.model for g in found]))


def _rows(table: pd.DataFrame, models, study_row, our_rows, blank: dict) -> pd.DataFrame:
    found = grids(table)
    rows = []
    for m in _models(found, models):
        base = dict(model=m, label=PAPER_LABELS.get(m, m))
        ref = study_row(m)
        if ref is not None:
            rows.append(dict(base, who=STUDY, measured_on="the study's published table", status="published",
                             points=np.nan, command="", **ref))
        mine = [g for g in found if g.model == m]
        for g in mine:
            rows.append(dict(base, who=OURS, measured_on=g.where, status="measured", points=g.n_points, command="",
                             gpu=g.gpu, engine=g.engine, protocol=g.protocol, source=g.source, **our_rows(g)))
        if not mine:
            rows.append(dict(base, who=OURS, measured_on=f"{NOT_MEASURED}: {measure_command(m)}", status=NOT_MEASURED,
                             points=np.nan, command=measure_command(m), **blank))
    out = pd.DataFrame(rows)
    out.attrs = dict(table.attrs)  # the measured rows' GPUs and engines, for the caption
    return out


def table3(table: pd.DataFrame, study: pd.DataFrame | None = None, weighting: str = "none",
           models=None) -> pd.DataFrame:
    """Table 3 over the study's models: in-sample MAPE (%) of the six formulas, the study's row and ours.

    Args:
        table: Measured grids (:func:`study_grids`); each grid is fitted on its own.
        study: The study's Table 3 (default :func:`energybook.model.paper.paper_table3`).
        weighting: Weighting of our fits (``"none"``: plain least squares, the study's method).
        models: Models in order (default: :data:`~energybook.model.architecture.STUDY_ORDER`; measured models
            outside it follow).

    Returns:
        One row per study row and per measured grid, or ``"not measured yet"``: ``model``, ``label`` (the study's
        name), ``who`` (``"study"`` or ``"ours"``), ``measured_on``, ``status``, ``points``, ``command`` and one
        MAPE column (%) per formula key (NaN where not measured).
    """
    published = (P.paper_table3() if study is None else study).set_index("model")
    keys = list(FM.FORMULAS)

    def study_row(m):
        return {k: float(published.loc[m, k]) for k in keys} if m in published.index else None

    def ours(g: Grid):
        return {k: r.mape_pct for k, r in F.fit_all(g.table, weighting=weighting).items()}

    return _rows(table, models, study_row, ours, dict.fromkeys(keys, np.nan))


def table5(table: pd.DataFrame, study: pd.DataFrame | None = None, weighting: str = "none",
           models=None) -> pd.DataFrame:
    """Table 5 over the study's models: Memory+FLOPs coefficients, best grid point and estimated sweet spot.

    Args:
        table: Measured grids (:func:`study_grids`).
        study: The study's Table 5 (default :func:`energybook.model.paper.paper_table5`).
        weighting: Weighting of our fits.
        models: Models in order (see :func:`table3`).

    Returns:
        Rows as :func:`table3`'s, with ``theta0`` .. ``theta5`` (J per output token per unit of each basis term),
        ``best_n_in``, ``best_n_out`` (the measured best grid point, tokens) and ``n_out_star`` (tokens: the output
        length that minimises the fitted energy per token at the best input; NaN when the fit has no minimum).
    """
    published = (P.paper_table5() if study is None else study).set_index("model")
    thetas = [f"theta{i}" for i in range(6)]

    def study_row(m):
        if m not in published.index:
            return None
        r = published.loc[m]
        return dict({k: float(r[k]) for k in thetas}, best_n_in=int(r["measured_best_n_in"]),
                    best_n_out=int(r["measured_best_n_out"]), n_out_star=float(r["estimated_best_n_out"]))

    def ours(g: Grid):
        values = F.fit(g.table, "memory_flops_model", weighting=weighting).values
        best = F.extremes(g.table).best
        try:
            star = float(F.estimated_sweet_spot(values).n_out)
        except ValueError as exc:  # theta4 <= 0: no minimum in n_out
            logger.warning("%s: %s", g.model, exc)
            star = np.nan
        return dict(values, best_n_in=int(best.n_in), best_n_out=int(best.n_out), n_out_star=star)

    return _rows(table, models, study_row, ours, dict.fromkeys([*thetas, "best_n_in", "best_n_out", "n_out_star"],
                                                                   np.nan))


def coefficient_frame(table: pd.DataFrame, formula: str = "memory_flops_model", weighting: str = "none",
                      n_boot: int = 1000, seed: int = 0, models=None) -> pd.DataFrame:
    """Every coefficient of every measured grid with its group-bootstrap interval and sign share (our Table 4).

    Args:
        table: Measured grids (:func:`study_grids`).
        formula: Formula key.
        weighting: ``"none"`` (plain least squares) or ``"relative"``.
        n_boot: Bootstrap draws per grid.
        seed: Seed of the draws.
        models: Models in order (see :func:`table3`); each unmeasured one gets one row, ``"not measured yet"``.

    Returns:
        One row per (grid, coefficient): ``model``, ``label``, ``measured_on``, ``status``, ``command``,
        ``coefficient``, ``value`` (J per output token per unit of its term), ``boot_low``, ``boot_high`` (the 95%
        group-bootstrap interval), ``sign_share`` (0..1), ``sign_stable`` (>= 95% of draws keep the sign),
        ``excludes_zero``, ``se_classical``, ``se_bootstrap`` and ``p_classical`` (independent points assumed).
    """
    found = grids(table)
    rows = []
    for m in _models(found, models):
        base = dict(model=m, label=PAPER_LABELS.get(m, m))
        mine = [g for g in found if g.model == m]
        for g in mine:
            coefs = S.coefficient_statistics(g.table, formula, weighting, n_boot=n_boot, seed=seed)
            frame = S.statistics_frame(coefs)
            for name, r in frame.iterrows():
                rows.append(dict(base, measured_on=g.where, status="measured", command="", gpu=g.gpu,
                                 engine=g.engine, protocol=g.protocol, source=g.source, coefficient=name,
                                 **{k: r[k] for k in ("value", "boot_low", "boot_high", "sign_share", "sign_stable",
                                                      "excludes_zero", "se_classical", "se_bootstrap",
                                                      "p_classical")}))
        if not mine:
            rows.append(dict(base, measured_on=f"{NOT_MEASURED}: {measure_command(m)}", status=NOT_MEASURED,
                             command=measure_command(m), coefficient="", value=np.nan, boot_low=np.nan,
                             boot_high=np.nan, sign_share=np.nan, sign_stable=False, excludes_zero=False,
                             se_classical=np.nan, se_bootstrap=np.nan, p_classical=np.nan))
    out = pd.DataFrame(rows)
    out.attrs = dict(table.attrs)
    return out


def sign_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per coefficient of :func:`coefficient_frame`: in how many measured grids its interval excludes zero.

    Returns:
        One row per coefficient: ``grids`` (measured), ``excludes_zero`` (grids whose 95% interval lies on one side of
        zero), ``sign_stable`` (grids where >= 95% of draws keep the sign), ``min_sign_share`` and, for contrast,
        ``p_below_005`` (grids where the classical p-value is below 0.05).
    """
    measured = frame[frame["status"] == "measured"]
    if measured.empty:
        return pd.DataFrame(columns=["grids", "excludes_zero", "sign_stable", "min_sign_share", "p_below_005"])
    g = measured.groupby("coefficient", sort=False)
    return pd.DataFrame({"grids": g.size(), "excludes_zero": g["excludes_zero"].sum().astype(int),
                         "sign_stable": g["sign_stable"].sum().astype(int), "min_sign_share": g["sign_share"].min(),
                         "p_below_005": g["p_classical"].apply(lambda p: int((p < 0.05).sum()))})


def misleading_p_value(frame: pd.DataFrame, alpha: float = 0.05) -> pd.Series | None:
    """The row of :func:`coefficient_frame` whose classical p-value most overstates the evidence: among coefficients
    with p < ``alpha`` whose bootstrap interval includes zero, the one with the smallest p-value (None if none)."""
    suspect = frame[(frame["status"] == "measured") & (frame["p_classical"] < alpha) & ~frame["excludes_zero"]]
    if suspect.empty:
        return None
    return suspect.loc[suspect["p_classical"].idxmin()]


@dataclass(frozen=True)
class Verdict:
    """What the data say about one coefficient of one model, across weightings.

    Attributes:
        model: The model.
        coefficient: ``theta5``...
        kind: ``"positive"`` or ``"negative"`` (every weighting's interval lies on that side of zero),
            ``"changes sign"`` (the estimates' signs differ between weightings), or ``"not determined"``
            (an interval includes zero).
        min_sign_share: The smallest share of draws that keep the sign, over the weightings (0..1).
    """

    model: str
    coefficient: str
    kind: str
    min_sign_share: float

    @property
    def determined(self) -> bool:
        """Whether the data fix the coefficient's sign under every weighting."""
        return self.kind in ("positive", "negative")


def verdicts(frames: dict[str, pd.DataFrame], coefficient: str = "theta5") -> dict[str, Verdict]:
    """Model by model, whether the data fix a coefficient's sign, from :func:`coefficient_frame` by weighting.

    Args:
        frames: ``{weighting: coefficient_frame(table, weighting=weighting)}``.
        coefficient: The coefficient.

    Returns:
        A :class:`Verdict` per measured model (a model measured on several grids: every grid must agree).
    """
    rows = pd.concat([f.assign(weighting=w) for w, f in frames.items()])
    rows = rows[(rows["status"] == "measured") & (rows["coefficient"] == coefficient)]
    out = {}
    for m, r in rows.groupby("model", sort=False):
        signs = set(np.sign(r["value"]))
        if len(signs) > 1:
            kind = "changes sign"
        elif r["excludes_zero"].all():
            kind = "positive" if signs == {1.0} else "negative"
        else:
            kind = "not determined"
        out[m] = Verdict(m, coefficient, kind, float(r["sign_share"].min()))
    return out


def table5_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Ours over the study's, per measured grid of :func:`table5`'s frame: every coefficient and ``n_out_star``.

    Returns:
        One row per measured grid whose model the study has: ``model``, ``label``, ``measured_on``, ``theta0`` ..
        ``theta5`` and ``n_out_star`` (dimensionless ratios).
    """
    cols = [f"theta{i}" for i in range(6)] + ["n_out_star"]
    study = frame[frame["who"] == STUDY].set_index("model")[cols]
    ours = frame[(frame["who"] == OURS) & (frame["status"] == "measured") & frame["model"].isin(study.index)]
    ratios = ours[cols].to_numpy(dtype=float) / study.loc[ours["model"], cols].to_numpy(dtype=float)
    out = ours[["model", "label", "measured_on"]].reset_index(drop=True)
    out[cols] = ratios
    out.attrs = dict(frame.attrs)
    return out


def coefficient_by_weighting(frames: dict[str, pd.DataFrame], coefficient: str = "theta5",
                             study: pd.DataFrame | None = None) -> pd.DataFrame:
    """One coefficient per measured grid and weighting, with its bootstrap interval, sign share and the study's value.

    Args:
        frames: ``{weighting: coefficient_frame(table, weighting=weighting)}``.
        coefficient: The coefficient (``theta5``).
        study: The study's Table 5 (default :func:`energybook.model.paper.paper_table5`).

    Returns:
        One row per (grid, weighting): ``model``, ``label``, ``measured_on``, ``weighting``, ``value``, ``boot_low``,
        ``boot_high`` (J per output token per unit of the term), ``sign_share`` (0..1), ``excludes_zero``, ``study``
        (NaN where the study lacks the model) and ``study_over_ours``.
    """
    published = (P.paper_table5() if study is None else study).set_index("model")
    parts = [f[(f["status"] == "measured") & (f["coefficient"] == coefficient)].assign(weighting=w)
             for w, f in frames.items()]
    rows = pd.concat(parts, ignore_index=True)
    order = {m: i for i, m in enumerate(dict.fromkeys(rows["model"]))}
    rows = rows.sort_values(["model", "measured_on"], key=lambda c: c.map(order) if c.name == "model" else c,
                            kind="stable").reset_index(drop=True)
    rows["study"] = [float(published.loc[m, coefficient]) if m in published.index else np.nan for m in rows["model"]]
    rows["study_over_ours"] = rows["study"] / rows["value"]
    out = rows[["model", "label", "measured_on", "weighting", "value", "boot_low", "boot_high", "sign_share",
                "excludes_zero", "study", "study_over_ours"]]
    out.attrs = dict(next(iter(frames.values())).attrs) if frames else {}
    return out
