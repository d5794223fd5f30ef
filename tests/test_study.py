"""scripts/study/study.sh end to end at a tiny size: two seeds, every arm of the controlled study (the no-KD arms N and
L included) at the network sizes STUDENT_FLAGS and TEACHER_FLAGS give, evaluation on the MNI152 test block and on a
second brain, the committed-data layout, and the report rebuilt from it alone."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from tests.test_prepare import synthetic_volume, write_nifti

pytestmark = pytest.mark.slow
RUNS = ["teacher", "student", "sft", "stdkd-imitation", "sftkd-imitation", "stdkd-sftinit-imitation",
        "stdkd-studentinit-imitation", "stdkd-sftinit-none", "stdkd-none"]


def study(tmp_path, **env):
    full = {**os.environ, "SEEDS": "1 2", "EPOCHS": "1", "SIZE": "16", "ACC": "4x", "KD_METHODS": "imitation",
            "PREPARE_FLAGS": "--max-slices-per-volume 12", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
            "DOCS": str(tmp_path / "docs"), **env}
    return subprocess.run(["bash", "scripts/study/study.sh", str(tmp_path / "study")], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=900)


def test_study_runs_every_arm_scores_two_test_sets_and_rebuilds_from_docs(tmp_path):
    brain = write_nifti(tmp_path / "other_brain.nii.gz", synthetic_volume(3, size=200, n_slices=16))  # ~ the demo's 233-pixel field of view
    # Non-default sizes, so that the flags are seen to reach every run (the map's widths are STUDENT_FLAGS).
    result = study(tmp_path, COLIN27=str(brain), NOKD="1", STUDENT_FLAGS="--width 8",
                   TEACHER_FLAGS="--width 12 --depth 4")
    assert result.returncode == 0, result.stderr[-3000:]
    docs = tmp_path / "docs"
    for seed in (1, 2):
        with open(docs / f"times_seed{seed}.tsv") as f:
            assert [row[0] for row in csv.reader(f, delimiter="\t")] == RUNS
        kd = json.loads((tmp_path / "study" / f"seed{seed}" / "4x" / "stdkd-sftinit-imitation" / "config.json")
                        .read_text())
        assert kd["seed"] == seed and kd["roles"]["teacher"] == "standard" and kd["roles"]["init"] == "sft-blocks"
        runs = tmp_path / "study" / f"seed{seed}" / "4x"
        no_kd = json.loads((runs / "stdkd-sftinit-none" / "config.json").read_text())
        alone = json.loads((runs / "stdkd-none" / "config.json").read_text())
        assert (no_kd["epochs"], no_kd["lr_step_size"], no_kd["roles"]["kd_method"]) == (1, 20, "none")
        # L: the base runs' epoch plus the KD run's, study.sh's StepLR step 20 scaled alike.
        assert (alone["epochs"], alone["lr_step_size"], alone["roles"]["init"]) == (2, 40, "scratch")
        for test_set in ("mni152", "colin27"):
            summary = json.loads((docs / test_set / f"seed{seed}" / "summary.json").read_text())
            assert summary["split"] == "test" and summary["test_set"] == test_set
            assert {roles.get("seed") for roles in summary["roles"].values() if roles} == {seed}
            with open(docs / test_set / f"seed{seed}" / "metrics.csv") as f:
                models = {row["model"] for row in csv.DictReader(f)}
            # The CS row's lambda is chosen on validation/: the Colin27 set is test-only, so it has none.
            cs = {"CS (L1-wavelet)"} if test_set == "mni152" else set()
            assert models == {"ZF", *cs, *(f"{run}-seed{seed}" for run in RUNS)}
    table = (docs / "table.md").read_text()
    for fragment in ("| **B - C (SFT teacher vs standard, both SFT blocks) (imitation)** (primary) | 4x mni152 | 2 |",
                     "| C - D (SFT blocks vs student init) (imitation) | 4x colin27 | 2 |",
                     "| Std teacher + student init (imitation) |", "| SFT blocks, no KD |",
                     "| Student alone, pre-training + KD epochs |",
                     "| B - N (SFT teacher's KD vs its blocks without KD) (imitation) | 4x colin27 | 2 |",
                     "| D - L (student pre-training + KD vs the student alone, same epochs) (imitation) | 4x mni152 | 2 |"):
        assert fragment in table, fragment
    assert (docs / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    teacher, student = {"cascades": 5, "depth": 4, "width": 12}, {"cascades": 5, "depth": 3, "width": 8}
    # SFT and every KD run have both sides; a KD run from an SFT checkpoint records its teacher side.
    expected = {"teacher": {"teacher": teacher}, "student": {"student": student},
                **{run: {"teacher": teacher, "student": student} for run in RUNS[2:]}}
    summary = json.loads((docs / "mni152" / "seed2" / "summary.json").read_text())
    for run in RUNS:
        config = json.loads((tmp_path / "study" / "seed2" / "4x" / run / "config.json").read_text())
        assert config["roles"]["nets"] == expected[run], run
        assert summary["roles"][f"{run}-seed2"]["nets"] == expected[run], run
    # The networks are built at those sizes, not only labelled with them.
    for run, (side, channels) in {"student": (None, 8), "teacher": (None, 12), "sft": ("student", 8),
                                  "stdkd-imitation": (None, 8), "sftkd-imitation": (None, 8),
                                  "stdkd-none": (None, 8)}.items():
        ckpt = torch.load(tmp_path / "study" / "seed2" / "4x" / run / "best_model.pt", weights_only=True)
        arch = ckpt["arch"][side] if side else ckpt["arch"]
        assert arch["channels"] == channels, run
    # The committed files alone rebuild the same table: no run folder needed.
    (docs / "table.md").unlink()
    rebuilt = subprocess.run(["bash", "scripts/study/study.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "REPORT_ONLY": "1", "DOCS": str(docs), "PYTHON": sys.executable})
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert (docs / "table.md").read_text() == table


def test_a_bad_student_flag_stops_the_study_before_anything_is_written(tmp_path):
    result = study(tmp_path, SEEDS="3", STUDENT_FLAGS="--width 8 --lr 0.1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: STUDENT_FLAGS takes only --width N and --depth N"), result.stderr
    assert not (tmp_path / "study").exists() and not (tmp_path / "docs").exists()
