"""torchrun with 2 CPU processes (gloo): rank 0 alone writes, and the run matches 1 process at the same global batch."""
from __future__ import annotations


import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_dataset, run_cli

pytestmark = pytest.mark.slow


def torchrun(*args: str):
    return run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args)


def epoch_losses(exp) -> list[float]:
    events = EventAccumulator(str(exp / "summary"))
    events.Reload()
    return [e.value for e in events.Scalars("train/epoch_loss")]


@pytest.mark.parametrize("script", ["train_teacher.py", "train_sft.py"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, script):
    data = make_dataset(tmp_path / "data", train_volumes=2, slices=4)
    common = ["--data-root", str(data), "--epochs", "1", "--no-progress", "--seed", "5"]
    two, one = tmp_path / "two", tmp_path / "one"
    result = torchrun(script, *common, "--exp-dir", str(two), "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(script, *common, "--exp-dir", str(one), "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((two / "summary").glob("events.out.tfevents.*"))) == 2  # rank 0's scalars + hparams
    assert sorted(p.name for p in two.iterdir()) == ["best_model.pt", "checksums.json", "config.json", "model.pt",
                                                     "summary"]
    assert torch.load(two / "model.pt", weights_only=True)["world_size"] == 2
    assert epoch_losses(two) == pytest.approx(epoch_losses(one), rel=1e-5)
    a = torch.load(two / "model.pt", weights_only=True)["model"]
    b = torch.load(one / "model.pt", weights_only=True)["model"]
    for key in a:
        # Adam divides by sqrt(v): float32 reduction-order noise on near-zero gradients can change single
        # elements' early steps by a fraction of lr (1e-3), never by more.
        assert float((a[key] - b[key]).abs().max()) < 1e-3, key


def test_resume_with_another_world_size_warns(tmp_path):
    data = make_dataset(tmp_path / "data", train_volumes=2, slices=4)
    exp = tmp_path / "run"
    common = ["train_teacher.py", "--model", "student", "--data-root", str(data), "--exp-dir", str(exp),
              "--no-progress", "--batch-size", "2"]
    assert torchrun(*common, "--epochs", "1").returncode == 0
    result = run_cli(*common, "--epochs", "2", "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not bit-identical" in result.stderr
    assert torch.load(exp / "model.pt", weights_only=True)["epoch"] == 2


def test_two_stage_kd_with_a_learnable_loss_runs_under_torchrun(tmp_path):
    from models.checkpoints.format import model_payload
    from models.nets.dccnn import DCCNN, TEACHER
    from models.checkpoints.io import save_checkpoint
    data = make_dataset(tmp_path / "data", train_volumes=2, slices=4)
    save_checkpoint(model_payload(DCCNN(TEACHER), "teacher"), tmp_path / "teacher.pt")
    exp = tmp_path / "kd"
    result = torchrun("train_student_kd.py", "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "2",
                      "--batch-size", "2", "--no-progress", "--kd-method", "vid", "--feature-epochs", "1",
                      "--teacher-checkpoint", str(tmp_path / "teacher.pt"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(exp / "model.pt", weights_only=True)["epoch"] == 2
