"""The one-command demo, shrunk (32 x 32, 1 epoch, 12 slices), end to end."""
from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def run_demo(out, *args):
    env = {**os.environ, "DEMO_OUT": str(out), "DEMO_SIZE": "32", "DEMO_EPOCHS": "1", "DEMO_SLICES": "12",
           "OMP_NUM_THREADS": "2"}
    return subprocess.run(["bash", "scripts/demo.sh", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_demo_writes_table_and_figure_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "table.md").read_text()
    for row in ("ZF", "CS (L1-wavelet)", "Teacher", "Student", "SFT teacher", "Std-KD (at)", "SFT-KD-Recon (at)"):
        assert f"| {row} |" in table, row
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "eval" / "metrics.csv") as f:
        models = {row["model"] for row in csv.DictReader(f)}
    assert models == {"ZF", "CS (L1-wavelet)", "teacher", "student", "sft", "stdkd-at", "sftkd-at"}
    # The demo's k-space is computed from magnitude images, and every record of the run says so.
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert (summary["image"], summary["kspace"]) == ("magnitude", "synthetic from magnitude")
    config = json.loads((out / "runs" / "4x" / "teacher" / "config.json").read_text())
    assert (config["image"], config["kspace"]) == ("magnitude", "synthetic from magnitude")
    assert "k-space: synthetic from magnitude (magnitude images)" in table
    # The table says what it scored: the test split, every scored slice of the one demo volume.
    with open(out / "eval" / "metrics.csv") as f:
        scored = [row for row in csv.DictReader(f) if row["model"] == "teacher"]
    assert f"\nScored on the test split, {len(scored)} slices of 1 volume.\n" in table
    # The figure shows the test slice with the median teacher PSNR and says so in its title.
    ranked = sorted(scored, key=lambda row: (float(row["PSNR"]), row["volume"], int(row["slice"])))
    median = ranked[(len(ranked) - 1) // 2]
    assert (f"title: test split, {median['volume']} slice {median['slice']}: the median teacher PSNR "
            f"({float(median['PSNR']):.2f} dB) of {len(scored)} slices of 1 volume") in result.stdout
    for run in ("teacher", "student", "sft", "stdkd-at", "sftkd-at"):
        assert list((out / "runs" / "4x" / run / "summary").glob("events.out.tfevents.*")), run
    assert "tensorboard --logdir" in result.stdout

    before = (out / "table.md").read_bytes()
    again = run_demo(out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (out / "table.md").read_bytes() == before


def test_multicoil_demo_says_what_it_ran_on(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, "--coils", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "multi-coil, 8 coils (simulated), maps: espirit" in table
    for row in ("ZF", "CS (L1-wavelet)", "Teacher", "SFT-KD-Recon (at)"):
        assert f"| {row} |" in table, row
    config = json.loads((out / "runs" / "4x" / "sftkd-at" / "config.json").read_text())
    assert (config["coils"], config["maps"], config["image"]) == (8, "espirit", "complex")
    bad = run_demo(tmp_path / "other", "--coils", "eight")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --coils needs a number")


def test_paper_protocol_runs_and_reruns_skip_finished_runs(tmp_path):
    from conftest import make_dataset
    data = make_dataset(tmp_path / "data", size=16, accs=("4x",), train_volumes=1, slices=4)
    env = {**os.environ, "EPOCHS": "1", "ACCS": "4x", "KD_METHODS": "at", "OMP_NUM_THREADS": "2",
           "TRAIN_FLAGS": "--no-progress"}
    results = tmp_path / "results"
    first = subprocess.run(["bash", "scripts/paper.sh", str(data), str(results)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (results / "table.md").read_text()
    assert "| SFT-KD-Recon (at) |" in table and "public SFT-KD-Recon evaluate.py's volume-wise" in table
    # The public protocol: padding 5, the SFT imitation weight 1 / (4 H W), two KD stages of EPOCHS each.
    assert "mask_4x.npy is not the public SFT-KD-Recon mask" in first.stderr  # 16 x 16 test data
    configs = {run: json.loads((results / "4x" / run / "config.json").read_text())
               for run in ("teacher", "sft", "stdkd-at", "sftkd-at")}
    assert {c["ref_padding"] for c in configs.values()} == {5}
    assert configs["sft"]["imitation_weight"] == 1 / (4 * 16 * 16)
    assert [(configs[r]["epochs"], configs[r]["feature_epochs"]) for r in ("stdkd-at", "sftkd-at")] == [(2, 1)] * 2
    assert configs["teacher"]["epochs"] == 1
    best = (results / "4x" / "sft" / "best_model.pt").read_bytes()
    second = subprocess.run(["bash", "scripts/paper.sh", str(data), str(results)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("nothing to resume") == 5
    assert (results / "4x" / "sft" / "best_model.pt").read_bytes() == best


def test_train_all_restarts_a_run_killed_before_its_first_checkpoint(tmp_path):
    from conftest import make_dataset
    data = make_dataset(tmp_path / "data", accs=("4x",), train_volumes=1, slices=2)
    results = tmp_path / "results"
    stale = results / "4x" / "teacher"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    env = {**os.environ, "RESULTS": str(results), "KD_METHODS": "", "OMP_NUM_THREADS": "2",
           "TRAIN_FLAGS": "--no-progress"}
    result = subprocess.run(["bash", "scripts/train_all.sh", str(data), "4x", "1"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (stale / "model.pt").is_file() and (stale / "config.json").read_text() != "{}"
