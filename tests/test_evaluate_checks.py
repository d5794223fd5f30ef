"""evaluate.py checks what it scores against what a checkpoint was trained on (issue 25, item 3): acceleration
(unless --cross-acc, then labelled in summary.json and given its own row by report.py), slice size, mask
sampling pattern and files of its own training split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import train_teacher
from data.masks import mask_lines
from models.checkpoints.io import save_checkpoint
from scripts import report
from tests.conftest import cli_error, make_dataset


@pytest.fixture(scope="module")
def trained_5x(tmp_path_factory) -> dict:
    """A D3C5 student trained one epoch at 5x on 16 x 16 data that also holds 4x."""
    root = tmp_path_factory.mktemp("evalcheck")
    data = make_dataset(root / "data", size=16, accs=("4x", "5x"), train_volumes=1, slices=2)
    exp = root / "run"
    train_teacher.main(["--model", "student", "--data-root", str(data), "--exp-dir", str(exp), "--acc", "5x",
                        "--epochs", "1", "--batch-size", "2", "--no-progress"])
    return {"data": data, "checkpoint": exp / "best_model.pt", "root": root}


def eval_args(trained, out: Path, *extra: str, checkpoint: Path | None = None) -> list[str]:
    return ["--checkpoints", str(checkpoint or trained["checkpoint"]), "--data-root", str(trained["data"]),
            "--out-dir", str(out), "--device", "cpu", *extra]


def refused(argv: list[str], capsys) -> str:
    return cli_error(evaluate.main, argv, capsys)


def edited(trained, tmp_path: Path, **content) -> Path:
    """The trained checkpoint with entries of its recorded ``content`` replaced."""
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    ckpt["config"]["content"].update(content)
    path = tmp_path / "edited" / "best_model.pt"
    save_checkpoint(ckpt, path)
    return path


def test_a_5x_checkpoint_on_4x_data_is_refused(trained_5x, tmp_path, capsys):
    # Issue case 4: scored silently, it would be filed in the 4x row.
    out = tmp_path / "eval"
    err = refused(eval_args(trained_5x, out, "--acc", "4x"), capsys)
    assert f"--checkpoints {trained_5x['checkpoint']} was trained at 5x, but --acc 4x" in err and "--cross-acc" in err
    assert not out.exists()


def test_cross_acc_records_both_and_report_gives_its_own_row(trained_5x, tmp_path, capsys):
    native, cross = tmp_path / "eval_5x", tmp_path / "eval_4x"
    evaluate.main(eval_args(trained_5x, native, "--acc", "5x", "--names", "student"))
    evaluate.main(eval_args(trained_5x, cross, "--acc", "4x", "--cross-acc", "--names", "student"))
    summary = json.loads((cross / "summary.json").read_text())
    assert summary["acc"] == "4x" and summary["trained_acc"] == {"student": ["5x"]}
    assert json.loads((native / "summary.json").read_text())["trained_acc"] == {"student": ["5x"]}
    table, _ = report.collect([native, cross])
    assert set(table[("student", None)]) == {"5x"}
    assert set(table[("student@5x", None)]) == {"4x"}
    labels = [label for _, label in report.row_order(table)]
    assert labels == ["ZF", "CS (L1-wavelet)", "Student", "Student, trained at 5x"]


def test_another_slice_size_is_refused(trained_5x, tmp_path, capsys):
    path = edited(trained_5x, tmp_path, image_size=[32, 32])
    err = refused(eval_args(trained_5x, tmp_path / "eval", "--acc", "5x", checkpoint=path), capsys)
    assert "was trained on 32x32 slices" in err and "holds 16x16" in err


def test_another_mask_pattern_is_refused(trained_5x, tmp_path, capsys):
    path = edited(trained_5x, tmp_path, mask_lines={"5x": "columns"})
    err = refused(eval_args(trained_5x, tmp_path / "eval", "--acc", "5x", checkpoint=path), capsys)
    assert "trained with masks sampling whole columns" in err and "samples whole rows" in err


def test_its_own_training_files_are_refused(trained_5x, tmp_path, capsys):
    err = refused(eval_args(trained_5x, tmp_path / "eval", "--acc", "5x", "--split", "train"), capsys)
    assert "was trained on 1 of the 1 files of --split train (vol00.h5)" in err


def test_mask_lines():
    rows = np.zeros((4, 6), np.float32)
    rows[[0, 2]] = 1
    assert (mask_lines(rows), mask_lines(rows.T.copy())) == ("rows", "columns")
    rows[1, 1] = 1
    assert mask_lines(rows) == "2-D"
