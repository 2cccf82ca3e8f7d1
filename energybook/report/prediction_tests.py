"""The physical model tested on data its frozen form never saw.

Errors on the grids the form was chosen on are development errors (:mod:`energybook.model.form`). This module
collects every committed measurement that is *not* development data, predicts each point with a stored calibration,
and reports the errors and the interval's coverage per model and per GPU. A point is test data when it is one of:

- ``"model after the freeze"``: a model outside the form's development models, measured on the calibration's GPU
  with the calibration's engine;
- ``"off-grid"``: a file of the seeded off-grid points (``offgrid*.csv``) of any model, on the calibration's GPU
  and engine;
- ``"other GPU"``: a measurement with the calibration's engine on another GPU. The calibration is moved there by
  that GPU's measured peaks alone (:func:`energybook.model.physics.transfer`): a peaks file of the board
  (``<data>/peaks/<uuid>.json``) when one exists, else the peaks that the engine benchmark measured on another
  board of the same GPU model (``engine_targets.json``), and the table says which.

Measurements are searched in the data folder and in the benchmarks' results folder (smoke runs of the measuring
path on other GPUs are stored there, with their sidecars). Files of another engine are not used: the calibration
describes one engine.

Regenerate the committed report (after committing, so that it names a clean commit)::

    python -m energybook.report.prediction_tests --form v1     # writes data/calibration/test-v1.json
    python -m energybook.report.prediction_tests --form v2     # and test-v2.json

Used in :doc:`/book/predict`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from energybook.model import form as F
from energybook.model import physics as P
from energybook.model.architecture import load as load_architecture
from energybook.model.attention_paths import check_attention
from energybook.store import catalog
from energybook.store.loader import load_measured
from energybook.store.peaks import find_peaks, load_peaks
from energybook.store.workspace import engine_slug, sidecar_engine

logger = logging.getLogger(__name__)

KINDS = ("model after the freeze", "off-grid", "other GPU")


@dataclass(frozen=True)
class BenchmarkPeaks:
    """A GPU's peaks as the engine benchmark measured them (``benchmarks/engine_targets.py``): the fields that
    :func:`energybook.model.physics.transfer` reads.

    Attributes:
        gpu: The GPU's name.
        gpu_uuid: The board the peaks were measured on.
        copy_bytes_per_s: Device-to-device copy bandwidth, bytes read + written (bytes/s).
        matmul_flops: bf16 matmul rate (FLOP/s).
        power_limit_w: The power limit NVML reported (watts).
        memory_bytes: Device memory (bytes); the calibration's own when the benchmark did not record it.
        file: The benchmark file.
    """

    gpu: str
    gpu_uuid: str
    copy_bytes_per_s: float
    matmul_flops: float
    power_limit_w: float
    memory_bytes: float
    file: str


@dataclass(frozen=True)
class UnseenFile:
    """One file of test data.

    Attributes:
        kind: One of :data:`KINDS`.
        model: The model measured.
        gpu: The GPU's name.
        gpu_uuid: The board's UUID.
        engine: The engine's folder name (``hf``).
        file: The results file, relative to its root where possible.
        data: Its rows.
        peaks: For ``"other GPU"``: what moved the calibration there (a peaks file's path or the benchmark's), and
            whether it is this board's own (``"own board"``) or another board of the same model.
    """

    kind: str
    model: str
    gpu: str
    gpu_uuid: str
    engine: str
    file: str
    data: pd.DataFrame = field(repr=False)
    peaks: dict[str, Any] = field(default_factory=dict)


def _shown(path: Path) -> str:
    parts = path.resolve().parts
    for anchor in ("data", "benchmarks"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor):])
    return str(path)


def benchmark_peaks(bench_root: str | Path, gpu: str, memory_bytes: float) -> BenchmarkPeaks | None:
    """The engine benchmark's measured peaks of a board of ``gpu`` (its name), or None when no benchmark of that
    GPU model is committed under ``bench_root``."""
    root = Path(bench_root)
    for path in sorted(root.glob("engine_targets.json")) + sorted(root.glob("*/engine_targets.json")):
        d = json.loads(path.read_text())
        peaks = d.get("peaks") or {}
        env = d.get("environment") or {}
        if d.get("gpu") == gpu and peaks.get("copy_Bps") and peaks.get("matmul_flops"):
            return BenchmarkPeaks(gpu=gpu, gpu_uuid=str(d.get("gpu_uuid")), copy_bytes_per_s=float(peaks["copy_Bps"]),
                                  matmul_flops=float(peaks["matmul_flops"]),
                                  power_limit_w=float(env.get("power_limit_w") or 700.0), memory_bytes=memory_bytes,
                                  file=_shown(path))
    return None


def _runs_under(root: Path) -> list:
    """Every results file with a sidecar under ``root`` that loads, as runs (a file that fails its checks is
    skipped with a warning)."""
    runs = []
    for csv in sorted(root.rglob("*.csv")):
        if not csv.with_suffix(".json").is_file():
            continue
        try:
            runs.append(load_measured(csv))
        except Exception as exc:  # noqa: BLE001 - a foreign or damaged file is not test data
            logger.debug("%s is not a results file: %s", csv, exc)
    return runs


def unseen_files(calibration: P.Calibration, data_root: str | Path | None = None,
              bench_root: str | Path | None = None) -> list[UnseenFile]:
    """Every committed file of test data for ``calibration`` (see the module docstring), development grids
    excluded."""
    developed = {Path(p).as_posix() for p, _, _ in F.DEVELOPED_ON}
    runs = list(catalog.measured_runs(data_root))
    if bench_root is not None and Path(bench_root).is_dir():
        runs += _runs_under(Path(bench_root))
    engine = calibration.engine_key
    sets = []
    for run in runs:
        shown = _shown(run.path)
        name = sidecar_engine(run.provenance)
        if shown in developed or not name or engine_slug(name) != engine:
            continue
        model = str(run.provenance.get("model") or run.data["model"].iloc[0])
        uuid = str(run.provenance.get("gpu_uuid") or run.data["gpu_uuid"].iloc[0])
        same_gpu = run.gpu == calibration.gpu_name
        peaks: dict[str, Any] = {}
        if not same_gpu:
            kind = "other GPU"
            own = find_peaks(data_root, uuid) if data_root is not None else None
            if own is not None:
                peaks = dict(file=_shown(Path(own)), board="own board", source=load_peaks(own))
            elif bench_root is not None and (bp := benchmark_peaks(bench_root, run.gpu, calibration.memory_bytes)):
                peaks = dict(file=bp.file, board=f"another board of the same model ({bp.gpu_uuid})", source=bp)
            else:
                logger.warning("%s: no measured peaks of %s; it cannot test a transfer (run `energybook peaks`)",
                               shown, run.gpu)
                continue
        elif run.path.stem.startswith("offgrid"):
            kind = "off-grid"
        elif model not in F.DEVELOPMENT_MODELS:
            kind = "model after the freeze"
        else:
            continue  # more data of a development model on its own GPU: not a test of the form
        sets.append(UnseenFile(kind=kind, model=model, gpu=run.gpu, gpu_uuid=uuid, engine=engine, file=shown,
                            data=run.data, peaks=peaks))
    return sets


def evaluate(sets: list[UnseenFile], calibration: P.Calibration, samples: int = 200) -> pd.DataFrame:
    """Each test point predicted with ``calibration`` (transferred for another GPU), one row per point.

    Columns: ``kind``, ``model``, ``gpu``, ``gpu_uuid``, ``file``, ``peaks``, ``n_in``, ``n_out``, ``n_req``,
    ``batch``, ``tokens_per_j`` (measured), ``predicted_tokens_per_j``, ``error_pct`` (predicted energy over
    measured, minus 1, in %), ``inside`` (the measured energy lies in the 95% interval), ``power_w`` (measured mean)
    and ``predicted_power_w``.
    """
    rows = []
    for s in sets:
        cal = calibration if not s.peaks else P.transfer(calibration, s.peaks["source"], s.peaks["file"])
        arch = load_architecture(s.model)
        for r in s.data.itertuples():
            row = dict(kind=s.kind, model=s.model, gpu=s.gpu, gpu_uuid=s.gpu_uuid, file=s.file,
                       peaks=(f"{s.peaks['file']} ({s.peaks['board']})" if s.peaks else ""),
                       n_in=int(r.n_in), n_out=int(r.n_out), n_req=int(r.n_req), batch=int(r.batch),
                       tokens_per_j=float(r.tokens_per_j), power_w=float(r.energy_j) / float(r.duration_s),
                       refused="")
            try:
                check_attention(arch, cal.engine_key, int(r.n_in), int(r.n_out), calibration=cal)
                p = P.predict(arch, int(r.n_in), int(r.n_out), batch=int(r.batch), n_req=int(r.n_req),
                              calibration=cal, samples=samples)
            except P.Refused as exc:  # an attention path or a workload the calibration never saw: no number
                # (check_attention's AttentionRefused is a Refused)
                rows.append(dict(row, predicted_tokens_per_j=np.nan, error_pct=np.nan, inside=False,
                                 predicted_power_w=np.nan, refused=str(exc)))
                continue
            rows.append(dict(row, predicted_tokens_per_j=p.tokens_per_j,
                             error_pct=100 * (p.energy_j / float(r.energy_j) - 1),
                             inside=bool(p.energy_low_j <= float(r.energy_j) <= p.energy_high_j),
                             predicted_power_w=p.power_w))
    return pd.DataFrame(rows)


def summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per (kind, model, GPU): ``points``, ``refused`` (points the model refused to predict), and over the points
    it predicted ``mape_pct``, ``bias_pct`` (mean signed error), ``worst_pct`` (largest absolute error) and
    ``coverage`` (share inside the 95% interval; nan when none was predicted)."""
    cols = ["kind", "model", "gpu", "points", "refused", "mape_pct", "bias_pct", "worst_pct", "coverage"]
    if points.empty:
        return pd.DataFrame(columns=cols)
    refused = points.groupby(["kind", "model", "gpu"], sort=False)["refused"].apply(lambda s: int((s != "").sum()))
    size = points.groupby(["kind", "model", "gpu"], sort=False).size()
    done = points[points["refused"] == ""]
    g = done.groupby(["kind", "model", "gpu"], sort=False)
    stats = pd.DataFrame({"mape_pct": g["error_pct"].apply(lambda e: float(np.mean(np.abs(e)))),
                         "bias_pct": g["error_pct"].mean(), "worst_pct": g["error_pct"].apply(
                             lambda e: float(np.max(np.abs(e)))), "coverage": g["inside"].mean()})
    out = pd.DataFrame({"points": size, "refused": refused}).join(stats)
    return out.reset_index()[cols]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(calibration: P.Calibration, data_root: str | Path | None, bench_root: str | Path | None,
           samples: int = 200) -> dict[str, Any]:
    """The committed report: every test point, the summary, what is missing, and provenance."""
    sets = unseen_files(calibration, data_root, bench_root)
    points = evaluate(sets, calibration, samples)
    kinds_found = set(points["kind"]) if len(points) else set()
    return dict(
        schema="energybook.prediction-test/1",
        errors_are="test errors: data the frozen form never saw (not development data)",
        calibration=calibration.describe(), form_version=calibration.form_version, form_hash=calibration.form_hash,
        points=json.loads(points.to_json(orient="records")), summary=json.loads(summary(points).to_json(
            orient="records")),
        missing=[k for k in KINDS if k not in kinds_found],
        provenance=dict(commit=_commit(), date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        command=f"python -m energybook.report.prediction_tests --form {calibration.form_version}",
        samples=samples,
                        files=sorted({s.file for s in sets})))


def read_report(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A committed report as (points, summary, the whole record).

    Raises:
        ValueError: a file of another schema, naming the command that writes one.
    """
    d = json.loads(Path(path).read_text())
    if d.get("schema") != "energybook.prediction-test/1":
        raise ValueError(f"{path} is not a prediction test report; write one with "
                         "`python -m energybook.report.prediction_tests --out FILE`")
    return pd.DataFrame(d["points"]), pd.DataFrame(d["summary"]), d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m energybook.report.prediction_tests",
                                 description="Test the stored calibration on data its frozen form never saw.")
    ap.add_argument("--form", default=None, help="the model form whose calibration is tested (v1, v2; default: the "
                    "newest)")
    ap.add_argument("--out", default=None, help="the JSON report to write (default: data/calibration/test-<form>.json "
                    "of the checkout)")
    ap.add_argument("--data", default=None, help="data folder (default: the checkout's data/)")
    ap.add_argument("--bench", default="benchmarks/results", help="benchmark results folder")
    ap.add_argument("--gpu", default=None, help="calibration GPU (default: the one calibrated for the engine)")
    ap.add_argument("--engine", default=None, help="calibration engine (default: hf)")
    ap.add_argument("--samples", type=int, default=200, help="parameter draws per point for the interval")
    args = ap.parse_args(argv)
    cal = P.load_calibration(args.gpu, engine=args.engine, form=args.form)
    rec = report(cal, args.data, args.bench, args.samples)
    out = Path(args.out) if args.out else catalog.measured_dir(args.data).parent / "calibration" / (
        f"test-{cal.form_version}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    s = pd.DataFrame(rec["summary"])
    print(s.to_string(index=False) if len(s) else "no test data committed yet")
    print(f"wrote {out}; missing kinds: {', '.join(rec['missing']) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["BenchmarkPeaks", "KINDS", "UnseenFile", "benchmark_peaks", "evaluate", "read_report", "report", "summary",
           "unseen_files"]
