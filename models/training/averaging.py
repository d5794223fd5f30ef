"""Weight averaging for the chosen model: an exponential moving average of the weights (``--ema DECAY``) or the
mean of the last K epochs' weights (``--average-last K``). Off by default (the paper's protocol).

With either flag the loop validates the averaged weights, so ``best_model.pt`` (chosen on validation) holds
them; training itself goes on from the raw weights, which ``model.pt`` keeps together with the averaging state
(``"average"``), so ``--resume`` continues the average exactly.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class WeightAverage:
    """The averaged copy of ``model``'s floating-point weights (buffers that are not floating point, if any, are
    the model's own). :meth:`after_step` runs after each optimiser step, :meth:`after_epoch` after each epoch,
    :meth:`applied` puts the average into the model for a while."""

    def __init__(self, model: nn.Module, ema_decay: float | None = None, last_epochs: int | None = None):
        if (ema_decay is None) == (last_epochs is None):
            raise ValueError("give exactly one of ema_decay and last_epochs")
        self.model, self.ema_decay, self.last_epochs = model, ema_decay, last_epochs
        self.ema: dict[str, torch.Tensor] | None = None  # EMA weights, from the first step on
        self.snapshots: list[dict[str, torch.Tensor]] = []  # the last K epochs' weights, oldest first

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA: ``avg = decay * avg + (1 - decay) * w`` (the first step starts it at ``w``)."""
        if self.ema_decay is None:
            return
        if self.ema is None:
            self.ema = self._weights()
            return
        for key, value in self.model.state_dict().items():
            if key in self.ema:
                self.ema[key].lerp_(value.detach(), 1.0 - self.ema_decay)

    def after_epoch(self) -> None:
        """Mean of the last K epochs: keep this epoch's weights, drop the oldest beyond K."""
        if self.last_epochs is None:
            return
        self.snapshots = [*self.snapshots, self._weights()][-self.last_epochs:]

    def average(self) -> dict[str, torch.Tensor]:
        """The averaged weights (the mean over the epochs seen so far while fewer than K)."""
        if self.ema_decay is not None:
            return self.ema if self.ema is not None else self._weights()
        if not self.snapshots:
            return self._weights()
        return {k: torch.stack([s[k] for s in self.snapshots]).mean(dim=0) for k in self.snapshots[0]}

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block and its own weights again after it."""
        own = self._weights()
        self.model.load_state_dict(self.average(), strict=False)
        try:
            yield
        finally:
            self.model.load_state_dict(own, strict=False)

    def state_dict(self) -> dict:
        return {"ema": self.ema, "snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        device = next(iter(self.model.state_dict().values())).device
        on_device = lambda weights: {k: v.to(device) for k, v in weights.items()}  # noqa: E731
        self.ema = on_device(state["ema"]) if state["ema"] is not None else None
        self.snapshots = [on_device(s) for s in state["snapshots"]]


def weight_average(model: nn.Module, ema: float | None, average_last: int | None) -> WeightAverage | None:
    """The averaging of ``--ema DECAY`` / ``--average-last K`` (None when neither is given)."""
    if ema is None and average_last is None:
        return None
    return WeightAverage(model, ema, average_last)
