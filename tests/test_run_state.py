"""The run's state (models/training/state.py): position, best loss and RNG, as --resume reads them back."""
import math

import torch

from models.training.state import RunState


def test_steps_and_epoch_ends_move_the_saved_position():
    state = RunState(epoch=3, batch_in_epoch=7, global_step=50)  # resumed inside epoch 3, at its batch 7
    state.step_done()
    state.step_done()
    assert state.entries(world=1)["epoch"] == 3 and state.entries(world=1)["batch_in_epoch"] == 9
    assert state.global_step == 52
    state.end_epoch()
    assert (state.epoch, state.batch_in_epoch, state.global_step) == (4, 0, 52)  # the next epoch from batch 0
    assert not RunState.finished(state.entries(world=1), epochs=5)
    state.end_epoch()
    assert RunState.finished(state.entries(world=1), epochs=5)
    assert not RunState.finished({"epoch": 5, "batch_in_epoch": 3}, epochs=5)  # stopped inside a later epoch


def test_record_keeps_the_stage_best_and_a_new_stage_forgets_it():
    state = RunState()
    assert state.record(0.5) and state.best_loss == 0.5
    assert not state.record(0.5)  # equal is not better: best_model.pt stays the earlier epoch's
    assert not state.record(0.7) and state.best_loss == 0.5
    assert state.record(0.25) and state.best_loss == 0.25
    state.new_stage()
    assert state.best_loss == math.inf and state.record(0.9)


def test_entries_restore_round_trip_with_the_random_state():
    torch.manual_seed(5)
    state = RunState(epoch=2, batch_in_epoch=1, global_step=41, best_loss=0.125)
    saved = state.entries(world=1)
    expected = torch.rand(4)  # what an uninterrupted run draws next
    torch.manual_seed(99)  # a resumed process starts elsewhere
    back = RunState.restore(saved, rank=0, world=1)
    assert back == state
    assert torch.equal(torch.rand(4), expected)
    assert set(saved) == {"epoch", "batch_in_epoch", "global_step", "best_val_loss", "rng_per_rank", "world_size"}


def test_restore_with_another_world_size_warns_and_keeps_the_random_state(capsys):
    saved = RunState(epoch=1, global_step=3).entries(world=1) | {"world_size": 2}
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    back = RunState.restore(saved, rank=0, world=1)
    assert back.global_step == 3 and back.epoch == 1
    assert torch.equal(torch.rand(3), expected)  # the saved RNG of a 2-process run is not this process's
    assert "not bit-identical" in capsys.readouterr().err
