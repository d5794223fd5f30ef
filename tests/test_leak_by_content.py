"""evaluate.py's leak check compares content, not names (issue 40, case 1): a training file copied into the
scored split under another name is refused, in the same data set (slice hashes, the check training start-up
runs: data/split_check.check_split) and from the checkpoint's own training data into another data set (the
whole-file hashes its config.json records)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import evaluate
import train_teacher
from tests.conftest import cli_error, make_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A D3C5 student trained one epoch at 4x on 16 x 16 data (public layout: no slice-hash attributes)."""
    root = tmp_path_factory.mktemp("leak")
    data = make_dataset(root / "data", size=16, train_volumes=1, slices=2)
    exp = root / "run"
    train_teacher.main(["--model", "student", "--data-root", str(data), "--exp-dir", str(exp), "--acc", "4x",
                        "--epochs", "1", "--batch-size", "2", "--no-progress"])
    return {"data": data, "checkpoint": exp / "best_model.pt"}


def scored_copy(trained, tmp_path: Path, into: Path) -> Path:
    """``into`` (a data folder) with the training volume copied into test/acc_4x under another name."""
    if not into.exists():
        shutil.copytree(trained["data"], into)
    (into / "test" / "acc_4x").mkdir(parents=True, exist_ok=True)
    shutil.copy(trained["data"] / "train" / "acc_4x" / "vol00.h5", into / "test" / "acc_4x" / "other.h5")
    return into


def evaluate_args(trained, data: Path, out: Path) -> list[str]:
    return ["--checkpoints", str(trained["checkpoint"]), "--data-root", str(data), "--acc", "4x", "--split", "test",
            "--out-dir", str(out), "--device", "cpu"]


def test_a_training_file_renamed_into_test_is_refused(trained, tmp_path, capsys):
    data = scored_copy(trained, tmp_path, tmp_path / "data")
    out = tmp_path / "eval"
    err = cli_error(evaluate.main, evaluate_args(trained, data, out), capsys)
    assert "leak in" in err and "train and test" in err and "other.h5" in err
    assert not (out / "summary.json").exists()


def test_a_copy_of_its_training_file_in_another_data_set_is_refused(trained, tmp_path, capsys):
    # Another data folder holding only a test split: no training data beside it to compare slice hashes with,
    # but the checkpoint records the content of every file it trained on.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(trained["data"] / "mask_4x.npy", other / "mask_4x.npy")
    scored_copy(trained, tmp_path, other)
    err = cli_error(evaluate.main, evaluate_args(trained, other, tmp_path / "eval"), capsys)
    assert "was trained on 1 of the 1 files of --split test (other.h5" in err


def test_unseen_test_data_is_scored(trained, tmp_path):
    data = make_dataset(tmp_path / "fresh", size=16, train_volumes=1, slices=2, seed=7)
    shutil.move(str(data / "validation"), str(data / "test"))
    evaluate.main(evaluate_args(trained, data, tmp_path / "eval"))
    assert (tmp_path / "eval" / "summary.json").is_file()
