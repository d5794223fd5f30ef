"""Where a run stands: its position, its best validation loss and every rank's random state.

This is the part of ``model.pt`` that ``--resume`` needs beside the weights, the optimiser, the schedule and
the averaged weights (models/checkpoints/format.py lists every key). A run that is stopped and resumed must
continue exactly where it stopped, so the loop reads and changes its position only through this object, and
the checkpoint keys it writes are the ones :meth:`RunState.restore` reads back.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from utils import get_rng_state, set_rng_state


@dataclass
class RunState:
    """``epoch``: the epoch being trained (0-based, so also the number of epochs completed); ``batch_in_epoch``:
    batches of it already trained (a run resumed inside an epoch starts there); ``global_step``: optimiser steps
    so far; ``best_loss``: the best validation loss of the current stage (``best_model.pt``'s). Only
    :meth:`step_done` and :meth:`end_epoch` move the position, so what :meth:`entries` saves is where the run
    is."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best_loss: float = math.inf

    @classmethod
    def restore(cls, resume: dict, rank: int, world: int) -> "RunState":
        """The state saved in ``resume`` (a loaded ``model.pt``); also sets this rank's RNG to the saved one
        when the world size is the one that saved it (another size continues, but not bit for bit)."""
        saved_world = resume.get("world_size", 1)
        if saved_world != world:
            print(f"warning: resuming a {saved_world}-process run with {world} process(es); training "
                  "continues but is not bit-identical to an uninterrupted run", file=sys.stderr)
        elif resume.get("rng_per_rank") and rank < len(resume["rng_per_rank"]):
            set_rng_state(resume["rng_per_rank"][rank])
        return cls(resume["epoch"], resume["batch_in_epoch"], resume["global_step"], resume["best_val_loss"])

    @staticmethod
    def finished(resume: dict, epochs: int) -> bool:
        """Whether the run saved in ``resume`` (a loaded ``model.pt``) has completed all ``epochs``."""
        return resume["epoch"] >= epochs and resume["batch_in_epoch"] == 0

    def step_done(self) -> None:
        """One optimiser step of the current epoch is done."""
        self.global_step += 1
        self.batch_in_epoch += 1

    def end_epoch(self) -> None:
        """The current epoch is done: the position moves to the next epoch's first batch."""
        self.epoch += 1
        self.batch_in_epoch = 0

    def record(self, val_loss: float) -> bool:
        """Whether ``val_loss`` beats the stage's best (then it is the new best)."""
        improved = val_loss < self.best_loss
        if improved:
            self.best_loss = val_loss
        return improved

    def new_stage(self) -> None:
        """A stage starts as a separate run would: no best validation loss yet."""
        self.best_loss = math.inf

    def entries(self, world: int) -> dict:
        """The checkpoint's entries for the current position, with every rank's RNG state (gathered under DDP:
        a collective call that all ranks make)."""
        rng = [get_rng_state()]
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                "best_val_loss": self.best_loss, "rng_per_rank": rng, "world_size": world}
