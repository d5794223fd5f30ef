"""torchrun support: rank and world size, process group, cross-rank sums, and a resumable sharded shuffle."""
from __future__ import annotations

import math
import os

import torch
from torch.utils.data import Sampler

from utils import UserError


def resolve_device(device: str, index: int = 0) -> torch.device:
    """The torch device for ``--device auto|cpu|cuda``: ``auto`` is CUDA when available, else the CPU;
    ``index`` picks the GPU (torchrun's local rank). CUDA without a visible GPU is a :class:`UserError`."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


class Dist:
    """Rank and world size from torchrun's environment; a single process when there is none."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device, self.local_rank)
        want_cuda = self.device.type == "cuda"
        if want_cuda:
            torch.cuda.set_device(self.device)
            # Every step has the same shapes, so cuDNN's one-off autotuning per shape pays for itself.
            torch.backends.cudnn.benchmark = True
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if want_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.to(self.device)
            torch.distributed.all_reduce(values)
        return values.cpu()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class EpochSampler(Sampler):
    """Seeded shuffle whose order depends only on (seed, epoch): resuming needs no sampler state.

    Under torchrun every rank draws the same permutation and takes every ``world``-th index (the list is
    padded by wrapping, like DistributedSampler). ``skip`` drops the first indices of the epoch, so a run
    resumed inside an epoch sees exactly the batches it had not seen. ``keys=True`` yields
    ``(index, epoch)`` pairs instead of indices, for datasets whose items depend on the epoch
    (:class:`data.augment.AugmentedSlices`): workers then need no epoch state of their own.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                 keys: bool = False):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.keys = keys
        self.epoch, self.skip = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.shuffle:  # training ranks must run the same number of steps; validation counts each slice once
            order += order[: self.per_rank * self.world - self.n]
        return order[self.rank::self.world]

    def __iter__(self):
        indices = self._indices()[self.skip:]
        return iter([(i, self.epoch) for i in indices] if self.keys else indices)

    def __len__(self) -> int:
        return len(self._indices()) - self.skip
