"""Kill -9 at a random moment, then --resume: the final weights are bit-identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_dataset, run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 48 x 48 and batch 1 make an iteration slow enough (tens of ms) to be killed inside epoch 2.
    return make_dataset(tmp_path_factory.mktemp("resume") / "data", size=48, slices=6)


def command(script: str, data: Path, exp: Path, *extra: str) -> list[str]:
    return [script, "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "3", "--batch-size", "1",
            "--no-progress", "--seed", "3", "--lr-step-size", "2", "--save-every-iters", "1", *extra]


def read_position(path: Path):
    try:
        ckpt = torch.load(path, weights_only=True)
    except Exception:  # not there yet
        return None
    return ckpt["epoch"], ckpt["batch_in_epoch"]


def kill_inside_epoch_2(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    exp = Path(args[args.index("--exp-dir") + 1])
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            position = read_position(exp / "model.pt")
            if position is not None and (1, 1) <= position < (3, 0):
                break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert read_position(exp / "model.pt")[0] < 3


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
    assert ca["best_val_loss"] == cb["best_val_loss"]


def teacher_args(data, exp):
    return command("train_teacher.py", data, exp, "--model", "student")


@pytest.fixture(scope="module")
def sft_checkpoint(data, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("sft") / "sft"
    result = run_cli("train_sft.py", "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    return exp / "best_model.pt"


@pytest.mark.parametrize("kind", ["teacher", "augment", "sft", "kd"])
def test_kill_and_resume_is_bit_identical(tmp_path, data, sft_checkpoint, kind):
    def args(exp):
        if kind == "teacher":
            return teacher_args(data, exp)
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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = teacher_args(data, exp)
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while read_position(exp / "model.pt") is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    epoch, batch = read_position(exp / "model.pt")
    assert epoch < 50


def test_resume_of_a_finished_run_does_nothing(tmp_path, data):
    exp = tmp_path / "done"
    args = teacher_args(data, exp)
    args[args.index("--epochs") + 1] = "1"
    assert run_cli(*args).returncode == 0
    before = (exp / "model.pt").read_bytes()
    result = run_cli(*args, "--resume")
    assert result.returncode == 0 and "nothing to resume" in result.stdout
    assert (exp / "model.pt").read_bytes() == before
