"""Kill -9 inside epoch 2, then --resume: the final weights are bit-identical to an uninterrupted run.

The runs interrupt themselves at an exact iteration through tests/interrupt.py, the loop's test hook, so nothing
depends on how fast the machine is."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from conftest import make_dataset, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 2 training volumes of 6 slices at batch 1: 12 iterations per epoch.
    return make_dataset(tmp_path_factory.mktemp("resume") / "data", size=32, slices=6)


def command(script: str, data: Path, exp: Path, *extra: str) -> list[str]:
    return [script, "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "3", "--batch-size", "1",
            "--no-progress", "--seed", "3", "--lr-step-size", "2", "--save-every-iters", "1", *extra]


def read_position(path: Path):
    ckpt = torch.load(path, weights_only=True)
    return ckpt["epoch"], ckpt["batch_in_epoch"]


def run_until(args: list[str], iteration: int, signal_name: str = "SIGKILL"):
    """Run ``python *args`` through tests/interrupt.py: it signals itself right after global ``iteration``."""
    return run_cli("tests/interrupt.py", str(iteration), signal_name, *args)


def kill_inside_epoch_2(args: list[str]) -> None:
    result = run_until(args, 17)  # iteration 5 of epoch 2
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert read_position(Path(args[args.index("--exp-dir") + 1]) / "model.pt") == (1, 5)


def assert_identical(a: Path, b: Path) -> None:
    ca = torch.load(a / "model.pt", weights_only=True)
    cb = torch.load(b / "model.pt", weights_only=True)
    assert ca["epoch"] == cb["epoch"] == 3
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for key in ca["extra"]:
        assert torch.equal(ca["extra"][key], cb["extra"][key]), key
    for pid, state in ca["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, cb["optimizer"]["state"][pid][name]), (pid, name)
    assert ca["scheduler"] == cb["scheduler"]
    assert ca.keys() == cb.keys()
    if "average" in ca:  # weight averaging: its state continues exactly too
        assert ca["average"]["ema"] is None or all(torch.equal(v, cb["average"]["ema"][k])
                                                   for k, v in ca["average"]["ema"].items())
        assert len(ca["average"]["snapshots"]) == len(cb["average"]["snapshots"])
        for sa, sb in zip(ca["average"]["snapshots"], cb["average"]["snapshots"]):
            assert all(torch.equal(v, sb[k]) for k, v in sa.items())
    assert ca["best_val_loss"] == cb["best_val_loss"]
    # The RNG states too: a resumed run draws nothing an uninterrupted one does not (rebuilding the
    # interrupted epoch's DataLoader iterator must not take an extra draw from the global torch RNG).
    (ra,), (rb,) = ca["rng_per_rank"], cb["rng_per_rank"]
    assert torch.equal(ra["torch"], rb["torch"]) and torch.equal(ra["numpy"]["key"], rb["numpy"]["key"])
    assert ra["python"] == rb["python"] and ra["numpy"]["pos"] == rb["numpy"]["pos"]


def teacher_args(data, exp):
    return command("train_teacher.py", data, exp, "--model", "student")


@pytest.fixture(scope="module")
def sft_checkpoint(data, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("sft") / "sft"
    result = run_cli("train_sft.py", "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    return exp / "best_model.pt"


# A small E2E-VarNet pair (models/nets/varnet.py): k-space states, a learned DC weight and a sensitivity model.
VARNET_SFT = ("--teacher-model", "varnet-teacher", "--student-model", "varnet-student", "--cascades", "3",
              "--teacher-depth", "2", "--teacher-width", "4", "--student-depth", "1", "--student-width", "4")


@pytest.fixture(scope="module")
def varnet_sft_checkpoint(data, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("varnet-sft") / "sft"
    result = run_cli("train_sft.py", "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1",
                     "--no-progress", *VARNET_SFT)
    assert result.returncode == 0, result.stderr
    return exp / "best_model.pt"


@pytest.mark.parametrize("kind", ["teacher", "augment", "sft", "kd", "ema-cosine", "average-last", "varnet",
                                  "varnet-sft", "varnet-kd"])
def test_kill_and_resume_is_bit_identical(tmp_path, data, sft_checkpoint, kind, request):
    def args(exp):
        if kind == "teacher":
            return teacher_args(data, exp)
        if kind == "varnet":
            return command("train_teacher.py", data, exp, "--model", "varnet-student", "--cascades", "3", "--depth",
                           "2", "--width", "4")
        if kind == "varnet-sft":
            return command("train_sft.py", data, exp, *VARNET_SFT)
        if kind == "varnet-kd":
            varnet_sft = str(request.getfixturevalue("varnet_sft_checkpoint"))
            return command("train_student_kd.py", data, exp, "--kd-method", "vid", "--teacher-checkpoint",
                           varnet_sft, "--init-from-sft", varnet_sft)
        if kind == "ema-cosine":
            return [*teacher_args(data, exp), "--ema", "0.9", "--lr-schedule", "cosine"]
        if kind == "average-last":
            return [*teacher_args(data, exp), "--average-last", "2"]
        if kind == "augment":
            return [*teacher_args(data, exp), "--augment"]
        if kind == "sft":
            return command("train_sft.py", data, exp)
        return command("train_student_kd.py", data, exp, "--kd-method", "vid", "--teacher-checkpoint",
                       str(sft_checkpoint), "--init-from-sft", str(sft_checkpoint))

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = run_cli(*args(straight))
    assert result.returncode == 0, result.stderr
    kill_inside_epoch_2(args(killed))
    result = run_cli(*args(killed), "--resume")
    assert result.returncode == 0, result.stderr
    assert_identical(straight, killed)
    best_a = torch.load(straight / "best_model.pt", weights_only=True)["model"]
    best_b = torch.load(killed / "best_model.pt", weights_only=True)["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_sigint_saves_and_says_how_to_resume(tmp_path, data):
    exp = tmp_path / "interrupted"
    args = teacher_args(data, exp)
    args[args.index("--save-every-iters") + 1] = "1000"
    result = run_until(args, 15, "SIGINT")
    assert result.returncode == 130
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    # Saved where it stopped, although --save-every-iters would not have saved there.
    assert read_position(exp / "model.pt") == (1, 3)


def test_resume_of_a_finished_run_does_nothing(tmp_path, data):
    exp = tmp_path / "done"
    args = teacher_args(data, exp)
    args[args.index("--epochs") + 1] = "1"
    assert run_cli(*args).returncode == 0
    before = (exp / "model.pt").read_bytes()
    result = run_cli(*args, "--resume")
    assert result.returncode == 0 and "nothing to resume" in result.stdout
    assert (exp / "model.pt").read_bytes() == before
