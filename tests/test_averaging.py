"""Weight averaging (models/training/averaging.py) and the cosine schedule: the averages are the textbook ones,
the model gets its own weights back, and a run with --ema validates and saves the averaged weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_dataset, run_cli
from models.training.averaging import WeightAverage


def weights_after(model: nn.Module, value: float) -> dict:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_ema_is_the_exponential_moving_average_and_applied_restores_the_weights():
    model = nn.Linear(3, 2)
    average = WeightAverage(model, ema_decay=0.5)
    for value in (1.0, 3.0, 7.0):  # three optimiser steps leave the weights at 1, 3, 7
        weights_after(model, value)
        average.after_step()
    expected = 0.5 * (0.5 * 1.0 + 0.5 * 3.0) + 0.5 * 7.0  # the first step starts the average
    with average.applied():
        assert all(torch.allclose(p, torch.full_like(p, expected)) for p in model.parameters())
    assert all(torch.equal(p, torch.full_like(p, 7.0)) for p in model.parameters())


def test_average_last_is_the_mean_of_the_last_k_epochs():
    model = nn.Linear(3, 2)
    average = WeightAverage(model, last_epochs=2)
    for epoch, value in enumerate((1.0, 2.0, 6.0)):
        weights_after(model, value)
        average.after_epoch()
        mean = {0: 1.0, 1: 1.5, 2: 4.0}[epoch]  # fewer than K epochs: all of them
        assert all(torch.allclose(v, torch.full_like(v, mean)) for v in average.average().values())
    state = average.state_dict()
    again = WeightAverage(nn.Linear(3, 2), last_epochs=2)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(again.average().values(), average.average().values()))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("averaging") / "data", size=16, slices=3)


def test_a_run_with_ema_saves_the_average_as_its_best_model_and_trains_as_without(data, tmp_path):
    for name, extra in (("ema", ["--ema", "0.9"]), ("plain", [])):
        result = run_cli("train_teacher.py", "--model", "student", "--data-root", str(data), "--exp-dir",
                         str(tmp_path / name), "--epochs", "1", "--batch-size", "1", "--no-progress", *extra)
        assert result.returncode == 0, result.stderr
    exp = tmp_path / "ema"
    last = torch.load(exp / "model.pt", weights_only=True)
    plain = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    # Averaging only watches: the raw weights are those of the same run without it, bit for bit.
    assert all(torch.equal(plain["model"][k], v) for k, v in last["model"].items())
    best = torch.load(exp / "best_model.pt", weights_only=True)
    assert best["epoch"] == 1  # one epoch: the best is its average
    assert all(torch.equal(best["model"][k], v) for k, v in last["average"]["ema"].items())
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])  # not the raw weights


def test_cosine_anneals_to_zero_over_the_run(data, tmp_path):
    exp = tmp_path / "cosine"
    result = run_cli("train_teacher.py", "--model", "student", "--data-root", str(data), "--exp-dir", str(exp),
                     "--epochs", "2", "--no-progress", "--lr-schedule", "cosine", "--lr", "0.002")
    assert result.returncode == 0, result.stderr
    scheduler = torch.load(exp / "model.pt", weights_only=True)["scheduler"]
    assert scheduler["T_max"] == 2 and scheduler["last_epoch"] == 2
    assert scheduler["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


def test_ema_and_average_last_exclude_each_other(data, tmp_path):
    result = run_cli("train_teacher.py", "--data-root", str(data), "--exp-dir", str(tmp_path / "x"),
                     "--ema", "0.9", "--average-last", "3")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --ema and --average-last are two kinds of weight averaging")
    assert not (tmp_path / "x").exists()
    result = run_cli("train_teacher.py", "--data-root", str(data), "--exp-dir", str(tmp_path / "x"), "--ema", "1")
    assert result.returncode == 2 and "must be in (0, 1)" in result.stderr
