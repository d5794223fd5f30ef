"""The metric sets of ``evaluate.py --metrics``: which metric functions score slices or volumes, the CSV each
writes, its summary.json entry, and the mean +- std statistics and table of their rows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from models.evaluation.metrics import FASTMRI_METRICS, METRICS, PUBLIC_VOLUME_METRICS

CSV_COLUMNS = ["model", "volume", "slice", *METRICS]


@dataclass(frozen=True)
class MetricSet:
    """One metric set of --metrics: its metric functions (name -> fn(target, recon) -> float, on (H, W) slices
    or on (S, H, W) volumes as ``per_volume`` says), the CSV it writes with that file's columns, and the
    summary.json entry of its statistics (None: the top level of summary.json)."""

    functions: Mapping[str, Callable[[np.ndarray, np.ndarray], float]]
    per_volume: bool
    file: str
    columns: list[str]
    summary_key: str | None

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.functions)


METRIC_SETS = {
    "paper": MetricSet(METRICS, False, "metrics.csv", CSV_COLUMNS, None),
    "fastmri": MetricSet(FASTMRI_METRICS, True, "metrics_fastmri.csv", ["model", "volume", *FASTMRI_METRICS],
                         "fastmri"),
    "public-volume": MetricSet(PUBLIC_VOLUME_METRICS, True, "metrics_public_volume.csv",
                               ["model", "volume", *PUBLIC_VOLUME_METRICS], "public_volume"),
}
METRIC_CHOICES = {**{name: (name,) for name in METRIC_SETS}, "all": tuple(METRIC_SETS)}


def score(metric_set: MetricSet, target: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """Every metric of ``metric_set`` for one slice (H, W) or one volume (S, H, W), compared in float64."""
    return score_with(metric_set.functions, target, recon)


def score_with(functions: Mapping[str, Callable[[np.ndarray, np.ndarray], float]], target: np.ndarray,
               recon: np.ndarray) -> dict[str, float]:
    """:func:`score` with the metric functions (name -> fn(target, recon)) given: evaluate.py's float64
    comparison for a subset of a metric set (scripts/compression.py scores PSNR and SSIM only)."""
    target, recon = target.astype(np.float64), recon.astype(np.float64)
    return {name: fn(target, recon) for name, fn in functions.items()}


def summarize(rows: list[dict], metrics: Sequence[str] = tuple(METRICS)) -> dict[str, dict[str, dict]]:
    """``{model: {metric: {"mean", "std", "n"}}}`` over rows (slices or volumes; ``ddof=0``), models in
    first-seen order."""
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        per_model = values.setdefault(row["model"], {metric: [] for metric in metrics})
        for metric in metrics:
            per_model[metric].append(row[metric])
    return {model: {metric: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                    for metric, v in per_metric.items()}
            for model, per_metric in values.items()}


def format_table(summary: dict, metrics: Sequence[str] = tuple(METRICS)) -> str:
    """A fixed-width text table: model | one column per metric (default PSNR | SSIM | NMSE | HFEN-LoG | VIF),
    each mean +- std."""
    digits = {"PSNR": 2, "SSIM": 4, "NMSE": 4, "HFEN-LoG": 4, "HFN": 4, "VIF": 4}
    header = ["model", *(f"{m} mean +- std" for m in metrics)]
    lines = [[model, *(f"{stats[m]['mean']:.{digits[m]}f} +- {stats[m]['std']:.{digits[m]}f}" for m in metrics)]
             for model, stats in summary.items()]
    widths = [max(len(r[c]) for r in [header, *lines]) for c in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths))
    return "\n".join([fmt(header), "-+-".join("-" * w for w in widths), *map(fmt, lines)])

