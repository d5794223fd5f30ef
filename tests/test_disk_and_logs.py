"""Disks, logs and odd paths (issue 40, F4, F5 and the minor items): prepare on a nearly full disk is one line
and keeps the old data (no h5py crash); scripts/train_all.sh's times.tsv holds one row per run whatever was
killed and rerun; a FIFO is named as one; space figures below 1 MiB are in KiB; --exp-dir / is refused."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train_teacher
from data.prepare import main as prepare_main
from tests.conftest import ROOT, cli_error, make_dataset
from tests.test_nothing_lost import one_line_error, prepare_args, snapshot
from utils import format_bytes


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    import nibabel as nib
    from tests.conftest import phantom
    folder = tmp_path / "scans"
    for n in range(2):
        (folder / f"patient00{n}").mkdir(parents=True)
        nib.save(nib.Nifti1Image(20 + 300 * phantom(16, 4, n), np.eye(4)), str(folder / f"patient00{n}" / "t1.nii.gz"))
    return folder


def test_prepare_overwrite_on_a_nearly_full_disk_is_one_line_and_keeps_the_data(scans, tmp_path, monkeypatch,
                                                                                 capsys):
    # F4: 140-200 KiB free made h5py segfault (exit 139) writing files whose arrays alone fitted.
    out = tmp_path / "out"
    prepare_main(prepare_args(scans, out))
    before = snapshot(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 180 << 10))
    err = one_line_error(prepare_main, prepare_args(scans, out, "--overwrite", "--seed", "1"), capsys)
    assert err.startswith("error: No space left on device") and "180.0 KiB free" in err
    assert snapshot(out) == before


def test_space_figures_below_a_mebibyte_are_in_kibibytes():
    assert [format_bytes(n) for n in (0, 512, 140 << 10, 3 << 20, 37 << 30)] == [
        "0 B", "512 B", "140.0 KiB", "3.0 MiB", "37.0 GiB"]


FAKE_TRAINER = """#!/usr/bin/env bash
# A training script's stand-in: killed once where KILL_AT names the run, finished otherwise.
if [ "$1" = -m ]; then exec {python} "$@"; fi
exp=''; resume=0
while [ $# -gt 0 ]; do [ "$1" = --exp-dir ] && exp=$2; [ "$1" = --resume ] && resume=1; shift; done
mkdir -p "$exp"
if [ $resume = 1 ] && [ -f "$exp/done" ]; then echo "$exp already finished 1 of 1 epochs; nothing to resume"; exit 0; fi
touch "$exp/model.pt"
if [ "$(basename "$exp")" = "${{KILL_AT:-}}" ] && [ ! -f "$exp/killed" ]; then touch "$exp/killed"; exit 137; fi
touch "$exp/done"
"""


@pytest.mark.slow  # train_all.sh killed and rerun: several training processes
def test_times_tsv_has_one_row_per_run_however_often_it_was_killed_and_rerun(tmp_path):
    # F5: killed and rerun twice, train_all.sh left 11 rows for 5 runs, finished runs logged as "resumed".
    fake = tmp_path / "python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable))
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "RESULTS": str(tmp_path / "r"), "KD_METHODS": "at"}

    def train_all(kill_at: str = "") -> int:
        return subprocess.run(["bash", "scripts/train_all.sh", str(tmp_path / "data"), "4x", "1"], cwd=ROOT,
                              env={**env, "KILL_AT": kill_at}, capture_output=True, text=True, timeout=120).returncode

    assert train_all("sft") != 0
    assert train_all("stdkd-at") != 0
    for _ in range(2):
        assert train_all() == 0
        rows = [line.split("\t") for line in (tmp_path / "r" / "4x" / "times.tsv").read_text().splitlines()]
        assert {row[0]: row[2] for row in rows} == {"teacher": "trained", "student": "trained", "sft": "resumed",
                                                    "stdkd-at": "resumed", "sftkd-at": "trained"}
        assert len(rows) == 5 and all(row[1].isdigit() for row in rows)
    assert not list((tmp_path / "r" / "4x").glob(".*"))


def test_a_fifo_is_named_as_one(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", size=16, train_volumes=1, slices=2)
    fifo = tmp_path / "mask.npy"
    os.mkfifo(fifo)
    err = cli_error(train_teacher.main, ["--data-root", str(data), "--exp-dir", str(tmp_path / "exp"), "--mask",
                                         str(fifo), "--epochs", "1", "--no-progress"], capsys)
    assert "is a FIFO" in err and "does not exist" not in err
    import evaluate
    ckpt = tmp_path / "best_model.pt"
    os.mkfifo(ckpt)
    err = cli_error(evaluate.main, ["--checkpoints", str(ckpt), "--data-root", str(data), "--acc", "4x",
                                    "--out-dir", str(tmp_path / "eval"), "--device", "cpu"], capsys)
    assert "is a FIFO" in err and "does not exist" not in err


@pytest.mark.parametrize("flag", ["--exp-dir", "--out-dir"])
def test_the_root_folder_is_refused_as_an_output_folder(flag):
    # Asked of the lock every tool takes first (training, evaluate.py, prepare): a regression must not write
    # into / from a test.
    from data.outputs import LOCK_NAME, folder_lock
    from utils import UserError
    with pytest.raises(UserError, match=f"{flag} / is the file system's root"):
        with folder_lock(Path("/"), flag):
            pass
    assert not Path("/", LOCK_NAME).exists()
