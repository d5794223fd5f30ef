"""The metric registry (models/evaluation/metrics.py): a new metric is one entry, and it reaches the training
loop's validation logs, report.py's table and contrasts.py's contrasts as its entry says."""
from __future__ import annotations

import json

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_teacher
from conftest import make_dataset
from models.evaluation import metrics
from models.evaluation.metrics import SLICE_METRICS, Metric
from models.evaluation.sets import METRIC_SETS
from scripts import report


def mean_absolute_error(target: np.ndarray, recon: np.ndarray) -> float:
    return float(np.mean(np.abs(target - recon)))


MAE = Metric("MAE", mean_absolute_error, 5, validation=True, table=True, contrasts=True)


def test_the_registry_drives_every_consumer():
    assert [m.name for m in metrics.used_for("validation")] == ["PSNR", "SSIM"]
    assert report.table_metrics() == ("PSNR", "SSIM")
    # evaluate.py's paper set writes every registered metric, in registry order.
    assert METRIC_SETS["paper"].metrics == tuple(m.name for m in SLICE_METRICS)
    assert METRIC_SETS["paper"].columns == ["model", "volume", "slice", *(m.name for m in SLICE_METRICS)]


def test_a_new_metric_is_logged_in_validation(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "SLICE_METRICS", (*SLICE_METRICS, MAE))
    data = make_dataset(tmp_path / "data", size=16, train_volumes=1, val_volumes=1, slices=2)
    exp = tmp_path / "exp"
    train_teacher.main(["--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1", "--no-progress",
                        "--batch-size", "2", "--model", "student"])
    epoch_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1"))
    assert ", MAE 0." in epoch_line
    events = EventAccumulator(str(exp / "summary"))
    events.Reload()
    logged = events.Scalars("val/mae")
    assert len(logged) == 1 and 0 < logged[0].value < 1


def test_a_new_metric_is_a_column_of_the_table_and_a_contrast(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "SLICE_METRICS", (*SLICE_METRICS, MAE))
    kd = lambda teacher, init: {"model": "kd", "teacher": teacher, "init": init, "kd_method": "at"}  # noqa: E731
    roles = {"m-B": kd("sft", "sft-blocks"), "m-C": kd("standard", "sft-blocks")}
    dirs = []
    for seed in (1, 2):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        lines = ["model,volume,slice,PSNR,SSIM,NMSE,HFEN-LoG,VIF,MAE"]
        for name, mae in (("m-B", 0.01), ("m-C", 0.02)):
            lines += [f"{name},v,{s},30.0,0.9,0.01,0.1,0.9,{mae + 0.001 * (s + seed)}" for s in range(4)]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
        (folder / "summary.json").write_text(json.dumps(
            {"acc": "4x", "split": "test", "roles": {k: {**v, "seed": seed} for k, v in roles.items()}}))
        dirs.append(folder)
    report.main(["--eval-dirs", *map(str, dirs), "--out-dir", str(tmp_path / "out"), "--contrasts"])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| Method | PSNR 4x | SSIM 4x | MAE 4x |" in table
    assert "| SFT-KD-Recon (at) | 30.00 ± 0.00 † | 0.9000 ± 0.0000 † | 0.01300 ± 0.00071 † |" in table
    assert "Contrasts, MAE (MAE;" in table
    row = next(line for line in table.splitlines() if line.startswith("| **B - C") and "| -0.01000 |" in line)
    assert "| 4x | 2 |" in row
