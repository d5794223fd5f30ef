"""scripts/study.sh end to end at a tiny size: two seeds, every arm, evaluation, report and plot."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_study_runs_every_arm_for_every_seed_and_reports_over_seeds(tmp_path):
    results = tmp_path / "study"
    env = {**os.environ, "SEEDS": "1 2", "EPOCHS": "1", "SIZE": "16", "ACC": "4x", "KD_METHODS": "imitation",
           "PREPARE_FLAGS": "--max-slices-per-volume 8", "OMP_NUM_THREADS": "2", "PYTHON": sys.executable}
    result = subprocess.run(["bash", "scripts/study.sh", str(results)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = ["teacher", "student", "sft", "sft0", "stdkd-imitation", "sftkd-imitation", "sft0kd-imitation"]
    for seed in (1, 2):
        with open(results / f"seed{seed}" / "4x" / "times.tsv") as f:
            timed = [row[0] for row in csv.reader(f, delimiter="\t")]
        assert timed == runs
        config = (results / f"seed{seed}" / "4x" / "sft0" / "config.json").read_text()
        assert f'"seed": {seed}' in config and '"imitation_weight": 0.0' in config and '"augment": true' in config
        with open(results / f"eval_seed{seed}" / "metrics.csv") as f:
            models = {row["model"] for row in csv.DictReader(f)}
        assert models == {"ZF", *(f"{run}-seed{seed}" for run in runs)}
    table = (results / "table.md").read_text()
    for row in ("| Teacher - Student | 4x |", "| SFT-KD-Recon (imitation) - Std-KD (imitation) | 4x |",
                "| SFT-KD-Recon, imitation 0 (imitation) - Std-KD (imitation) | 4x |", "| seed 1 | seed 2 |"):
        assert row in table, row
    assert (results / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.count("trained in") == 2
    assert "== sft0kd-imitation done in" in (results / "seed2" / "train.log").read_text()
