"""The sampled protocol against the reference: the same points of one model, on one GPU and one engine, measured
both ways in one results folder, compared in output tokens per joule. The reference is the study's protocol as our
sweeps run it: ``grid.csv`` (the default ``prefix`` mode: every wave of a point counted from one measured wave, read
at each output length's checkpoint) or ``full.csv`` (every wave of every point run to its end); the sampled file is
``sampled.csv``. A second board of the same GPU kind writes ``<stem>-<board>.csv`` beside them.

:func:`compare` pairs two loaded files point by point and refuses a pair that differs in anything but the protocol
(GPU, engine, model, requests, batch cap, weights, prompts, seed, engine settings); :func:`find_pairs` lists the
folders under a data folder that hold both files; :data:`TARGETS` holds the bounds the sampled protocol must meet
(issue 22). The comparison's error is ``sampled / reference - 1`` of ``tokens_per_j``, in percent.

Used in :doc:`/book/protocols`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook.report.provenance import measuring_minutes
from energybook.store.loader import MeasuredRun, load_measured
from energybook.store.workspace import sidecar_engine

#: What the sampled protocol must meet against the reference, in tokens/J: the mean absolute error (%) and the
#: largest absolute error of any point (%).
TARGETS = {"mape_pct": 1.0, "max_abs_pct": 2.5}
#: The protocols a sampled file is checked against: the sweeps' default (``prefix``) and ``full``.
REFERENCES = ("prefix", "full")
#: Protocol fields that must agree for two files to be compared (the mode is the one allowed difference).
_SAME = ("n_req", "max_batch", "seed", "weight_init", "prompts", "engine")


@dataclass(frozen=True)
class ProtocolCheck:
    """One model's sampled-against-reference comparison.

    Attributes:
        model, gpu, gpu_uuid, engine: What was measured, and where.
        reference: The reference file's protocol (``prefix`` or ``full``).
        table: One row per common point: n_in, n_out, batch, tokens_per_j_reference, tokens_per_j_sampled,
            error_pct (pandas DataFrame, sorted by n_in then n_out).
        reference_minutes, sampled_minutes: GPU-minutes each file's sidecar records (the whole file's).
        reference_path, sampled_path: The two results files.
    """

    reference: str
    model: str
    gpu: str
    gpu_uuid: str
    engine: str
    table: Any
    reference_minutes: float
    sampled_minutes: float
    reference_path: Path
    sampled_path: Path

    @property
    def n_points(self) -> int:
        return len(self.table)

    @property
    def mape_pct(self) -> float:
        """Mean absolute error of the sampled tokens/J (%)."""
        return float(self.table["error_pct"].abs().mean())

    @property
    def max_abs_pct(self) -> float:
        """Largest absolute error of a point (%)."""
        return float(self.table["error_pct"].abs().max())

    @property
    def bias_pct(self) -> float:
        """Mean signed error (%): positive when the sampled protocol reads more tokens per joule."""
        return float(self.table["error_pct"].mean())

    @property
    def passed(self) -> bool:
        """Whether both :data:`TARGETS` hold."""
        return self.mape_pct <= TARGETS["mape_pct"] and self.max_abs_pct <= TARGETS["max_abs_pct"]

    def summary(self) -> dict[str, Any]:
        """One line of the book's table (units in the keys)."""
        return {"model": self.model, "reference": self.reference, "gpu": self.gpu, "gpu_uuid": self.gpu_uuid,
                "engine": self.engine,
                "points": self.n_points, "mape_pct": round(self.mape_pct, 3),
                "max_abs_pct": round(self.max_abs_pct, 3), "bias_pct": round(self.bias_pct, 3),
                "passed": self.passed, "reference_minutes": round(self.reference_minutes, 2),
                "sampled_minutes": round(self.sampled_minutes, 2)}


def _engine(prov: dict[str, Any]) -> str:
    return str(sidecar_engine(prov))


def _differences(full: MeasuredRun, sampled: MeasuredRun) -> list[str]:
    pf, ps = full.provenance, sampled.provenance
    out = []
    for key in ("model", "gpu", "gpu_uuid"):
        if pf.get(key) != ps.get(key):
            out.append(f"{key} {pf.get(key)!r} against {ps.get(key)!r}")
    if _engine(pf) != _engine(ps):
        out.append(f"engine {_engine(pf)!r} against {_engine(ps)!r}")
    qf, qs = pf.get("protocol") or {}, ps.get("protocol") or {}
    for key in _SAME:
        if qf.get(key) != qs.get(key):
            out.append(f"protocol {key} {qf.get(key)!r} against {qs.get(key)!r}")
    if (pf.get("engine_settings") or None) != (ps.get("engine_settings") or None):
        out.append("engine settings differ")
    return out


def compare(full: MeasuredRun | str | Path, sampled: MeasuredRun | str | Path) -> ProtocolCheck:
    """Compare a reference file (prefix or full protocol) with a sampled one, point by point (the points both hold).

    Args:
        full, sampled: The reference and the sampled file: loaded runs
            (:func:`energybook.store.loader.load_measured`) or their CSV paths.

    Raises:
        ValueError: the files are not both of their mode, differ in anything but the protocol (named), or share
            no point.
    """
    import pandas as pd

    full = full if isinstance(full, MeasuredRun) else load_measured(full)
    sampled = sampled if isinstance(sampled, MeasuredRun) else load_measured(sampled)
    for run, modes in ((full, REFERENCES), (sampled, ("sampled",))):
        got = (run.provenance.get("protocol") or {}).get("mode")
        if got not in modes:
            raise ValueError(f"{run.path} was measured with protocol {got!r}, not {' or '.join(modes)}: pass the "
                             "reference file (full or prefix) first and the sampled one second")
    diff = _differences(full, sampled)
    if diff:
        raise ValueError(f"{full.path} and {sampled.path} differ in more than the protocol ({'; '.join(diff)}): "
                         "compare files measured on one GPU, with one engine and one set of settings")
    key = ["n_in", "n_out"]
    f = full.data.groupby(key, as_index=False).agg(batch=("batch", "first"), tokens_per_j_reference=("tokens_per_j",
                                                                                                 "mean"))
    s = sampled.data.groupby(key, as_index=False).agg(tokens_per_j_sampled=("tokens_per_j", "mean"))
    table = f.merge(s, on=key, how="inner").sort_values(key).reset_index(drop=True)
    if table.empty:
        raise ValueError(f"{full.path} and {sampled.path} share no (n_in, n_out) point")
    table["error_pct"] = 100 * (table["tokens_per_j_sampled"] / table["tokens_per_j_reference"] - 1)
    prov = full.provenance
    return ProtocolCheck(reference=str(prov.get("protocol", {}).get("mode")), model=str(prov.get("model")),
                         gpu=str(prov.get("gpu")), gpu_uuid=str(prov.get("gpu_uuid")), engine=_engine(prov),
                         table=pd.DataFrame(table),
                         reference_minutes=measuring_minutes(full.provenance),
                         sampled_minutes=measuring_minutes(sampled.provenance), reference_path=full.path,
                         sampled_path=sampled.path)


def find_pairs(data: str | Path) -> list[tuple[Path, Path]]:
    """The (reference, sampled) results files under ``data`` that one GPU measured in one results folder: ``grid``
    (prefix) or ``full``, and ``sampled``, each ``<stem>.csv`` or ``<stem>-<board>.csv`` (a file holds one GPU, and a
    second board's file is named after it), paired by the GPU UUIDs their sidecars record; sorted by path."""
    import re

    from energybook.store.loader import read_sidecar
    from energybook.store.writer import file_gpus

    def files(folder: Path, stem: str) -> list[Path]:
        return sorted(p for p in folder.glob(f"{stem}*.csv") if re.fullmatch(rf"{stem}(-[0-9a-f]{{8}})?", p.stem))

    pairs = []
    for folder in sorted({p.parent for p in Path(data).rglob("sampled*.csv")}):
        for ref in files(folder, "full") + files(folder, "grid"):
            boards = set(file_gpus(read_sidecar(ref)))
            pairs += [(ref, s) for s in files(folder, "sampled") if boards & set(file_gpus(read_sidecar(s)))]
    return pairs


def compare_all(data: str | Path) -> list[ProtocolCheck]:
    """:func:`compare` for every pair :func:`find_pairs` finds."""
    return [compare(f, s) for f, s in find_pairs(data)]


def error_heatmap(check: ProtocolCheck, ax=None, limit_pct: float = TARGETS["max_abs_pct"]):
    """The sampled protocol's error (%) over the (n_in, n_out) grid: one annotated cell per compared point, input
    length upward, on a diverging scale fixed at +-``limit_pct`` (the per-point bound) so that panels compare; the
    panel's title names the model, the GPU with its UUID, and the engine. Drawn by the chapters' heat map
    (:func:`energybook.report.plot_grids.heatmap`)."""
    from energybook.report.plot_grids import heatmap
    from energybook.report.plot_style import model_label

    ax = heatmap(check.table.assign(model=check.model), check.model, ax=ax, value="error_pct", log=False, center=0.0,
                 vmin=-limit_pct, vmax=limit_pct, fmt="+.1f",
                 cbar_label=f"sampled / {check.reference} - 1, tokens per joule (%)")
    ax.set_title(f"{model_label(check.model)}: {check.gpu}\n{check.gpu_uuid}, {check.engine} engine", fontsize=8)
    return ax
