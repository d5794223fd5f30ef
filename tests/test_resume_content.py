"""--resume checks what it reads by content, not by name (issue 25, item 2): a mask file or data prepared again
under the same path and a replaced teacher checkpoint are refused, listing the difference; a moved copy of the
same data and flags given explicitly at their effective (default) value are accepted."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch

import train_student_kd
from models.checkpoints.format import model_payload
from models.checkpoints.io import save_checkpoint
from models.nets.dccnn import DCCNN, TEACHER
from models.nets.sft import SFTNet
from tests.conftest import cli_error, make_dataset


def kd_args(data: Path, exp: Path, teacher: Path, *extra: str) -> list[str]:
    return ["--data-root", str(data), "--exp-dir", str(exp), "--teacher-checkpoint", str(teacher), "--epochs", "1",
            "--batch-size", "2", "--no-progress", *extra]


def refusal(argv: list[str], capsys) -> str:
    err = cli_error(train_student_kd.main, argv, capsys)
    assert err.startswith("error: --resume: "), err
    return err


@pytest.fixture(scope="module")
def run_once(tmp_path_factory):
    """A finished one-epoch Std-KD run (AT, a standard teacher) on 16 x 16 data."""
    root = tmp_path_factory.mktemp("content")
    data = make_dataset(root / "data", size=16, train_volumes=2, slices=2)
    teacher = root / "t.pt"
    save_checkpoint(model_payload(DCCNN(TEACHER), "teacher", {"roles": {"model": "teacher"}}), teacher)
    train_student_kd.main(kd_args(data, root / "exp", teacher))
    return root


@pytest.fixture
def run(run_once, tmp_path) -> dict:
    """A copy of the run, its data and its teacher, for a test to change."""
    root = Path(shutil.copytree(run_once, tmp_path / "copy"))
    return {"data": root / "data", "exp": root / "exp", "teacher": root / "t.pt"}


def test_config_records_the_content(run):
    content = json.loads((run["exp"] / "config.json").read_text())["content"]
    assert set(content["masks"]) == {"4x"} and len(content["masks"]["4x"]) == 64
    assert sorted(content["data"]["train"]["4x"]) == ["vol00.h5", "vol01.h5"]
    assert list(content["data"]["validation"]["4x"]) == ["vol02.h5"]
    assert set(content["checkpoints"]) == {"teacher_checkpoint"}


def test_resume_refuses_data_prepared_again_with_another_seed(run, capsys):
    # Issue case 2: the same names and slice counts, but another mask and other k-space.
    before = (run["data"] / "mask_4x.npy").read_bytes()
    make_dataset(run["data"], size=16, train_volumes=2, slices=2, seed=3)
    assert (run["data"] / "mask_4x.npy").read_bytes() != before
    err = refusal(kd_args(run["data"], run["exp"], run["teacher"], "--resume", "--epochs", "2"), capsys)
    assert f"the 4x mask {run['data'] / 'mask_4x.npy'} has other contents" in err
    assert "train/acc_4x: vol00.h5 changed, vol01.h5 changed" in err and "validation/acc_4x: vol02.h5 changed" in err
    assert torch.load(run["exp"] / "model.pt", weights_only=True)["epoch"] == 1


def test_resume_refuses_a_changed_data_file_under_the_same_name(run, capsys):
    with h5py.File(run["data"] / "train" / "acc_4x" / "vol01.h5", "a") as f:
        f["volfs"][0, 0, 0] = 0.5
    err = refusal(kd_args(run["data"], run["exp"], run["teacher"], "--resume", "--epochs", "2"), capsys)
    assert "train/acc_4x: vol01.h5 changed" in err and "mask" not in err and "vol00" not in err


def test_resume_refuses_a_replaced_teacher_file(run, capsys):
    # Issue case 3: an SFT checkpoint copied over the standard teacher the run distils from.
    save_checkpoint(model_payload(SFTNet(), "sft", {"roles": {"model": "sft"}}), run["teacher"])
    err = refusal(kd_args(run["data"], run["exp"], run["teacher"], "--resume", "--epochs", "2"), capsys)
    assert f"--teacher-checkpoint {run['teacher']} is another file than the run's" in err


def test_resume_accepts_moved_data_and_explicit_defaults(run, tmp_path):
    # Issue list 6: --kd-weight 0.07 is AT's own weight and --student-model student the default student;
    # the data moved to another folder are the same files.
    moved = Path(shutil.move(run["data"], tmp_path / "moved"))
    train_student_kd.main(kd_args(moved, run["exp"], run["teacher"], "--resume", "--epochs", "2", "--kd-weight",
                                  "0.07", "--student-model", "student", "--cascades", "5"))
    assert torch.load(run["exp"] / "model.pt", weights_only=True)["epoch"] == 2


def test_resume_still_refuses_a_real_change(run, capsys):
    err = refusal(kd_args(run["data"], run["exp"], run["teacher"], "--resume", "--epochs", "2", "--kd-weight",
                          "0.08"), capsys)
    assert "--kd-weight 0.08 (the run: 0.07)" in err
    # An architecture flag against its None default is compared through the network it builds.
    err = refusal(kd_args(run["data"], run["exp"], run["teacher"], "--resume", "--epochs", "2", "--width", "16"),
                  capsys)
    assert "but these flags build a" in err
