"""Optional training-time augmentation (``--augment``): new anatomy poses from the stored slices.

Each training item's fully sampled image is flipped, rotated by a multiple of 90 degrees (square slices
only) and scaled in intensity, then its undersampled k-space and zero-filled image are computed again
from it with the one FFT convention of ``data/fft.py``, so an augmented item obeys
``kspace_under == mask * fft2(target)`` exactly as stored data does (multi-coil data: the maps take the same pose
and ``kspace_under == mask * E target``). Rotation matters more than it seems:
the mask keeps whole rows, so a rotated slice is undersampled along the other anatomical axis.

The transform of an item is a function of ``(seed, epoch, index)`` alone, never of a worker's or the
process's random state: every epoch sees new poses, and a resumed run or another ``--num-workers``
sees exactly the same ones. The sampler passes ``(index, epoch)`` keys (``EpochSampler(keys=True)``).
Off by default: the paper trains on the stored slices as they are.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from data.dataset import Sample
from data.fft import expand, image_kspace, to_complex, zero_filled

# Scaling by at most 10 % either way: metrics use each slice's own maximum, so this changes what the
# network sees, not what it is scored on.
INTENSITY_RANGE = (0.9, 1.1)


def augment_target(target: torch.Tensor, rng: np.random.Generator,
                   maps: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One random pose and intensity of a fully sampled image.

    target: (C, H, W) float32 (C = 1 magnitude, 2 real and imaginary). Returns (C, H, W) float32 (a new
    tensor). Rotations by 90 / 270 degrees are drawn only when H == W, so the shape never changes.
    With ``maps`` (N, H, W) complex64 (multi-coil data) returns ``(target, maps)``, the maps in the same pose
    (not scaled: they stay of unit RSS).
    """
    out = target
    flips = []
    if rng.random() < 0.5:
        out, flips = torch.flip(out, dims=(-1,)), flips + [-1]
    if rng.random() < 0.5:
        out, flips = torch.flip(out, dims=(-2,)), flips + [-2]
    quarter_turns = int(rng.integers(4)) if target.shape[-1] == target.shape[-2] else 2 * int(rng.integers(2))
    out = torch.rot90(out, quarter_turns, dims=(-2, -1))
    scale = rng.uniform(*INTENSITY_RANGE)
    out = (out * scale).to(torch.float32).contiguous()
    if maps is None:
        return out
    for dim in flips:
        maps = torch.flip(maps, dims=(dim,))
    return out, torch.rot90(maps, quarter_turns, dims=(-2, -1)).contiguous()


def undersample(target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Retrospective undersampling under the project's FFT convention.

    target: (C, H, W) float32 (C = 1 or 2); mask: (1, H, W) float32 {0, 1}. Returns ``(kspace_under,
    zero_filled)``: (1, H, W) complex64 ``mask * fft2(target)`` and the (C, H, W) float32 zero-filled image
    (data/fft.py's :func:`~data.fft.zero_filled`).
    """
    channels = target.shape[-3]
    kspace = image_kspace(target) * mask
    return kspace, zero_filled(kspace, channels)


def undersample_with_maps(target: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`undersample` for multi-coil data: ``(mask * E x, E^H (mask * E x))``, (N, H, W) complex64 and
    (2, H, W) float32. target: (2, H, W) float32; mask: (1, H, W); maps: (N, H, W) complex64."""
    kspace = expand(to_complex(target), maps) * mask
    return kspace, zero_filled(kspace, 2, maps)


class AugmentedSlices(Dataset):
    """Wraps a slice dataset; item ``(index, epoch)`` is item ``index`` in a pose drawn from (seed, epoch, index).

    Items keep the keys of :class:`data.dataset.SliceDataset` (``target``, ``zero_filled``,
    ``kspace_under``, ``mask`` as (1, H, W) tensors, plus ``fname``, ``slice``, ``acc``); ``target``,
    ``zero_filled`` and ``kspace_under`` are replaced by the augmented ones.
    """

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, epoch = key
        item = self.base[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        maps = item.coil_maps
        if maps is None:
            target = augment_target(item.target, rng)
            kspace_under, zero_filled = undersample(target, item.mask)
            return item._replace(target=target, kspace_under=kspace_under, zero_filled=zero_filled)
        target, maps = augment_target(item.target, rng, maps)
        kspace_under, zero_filled = undersample_with_maps(target, item.mask, maps)
        return item._replace(target=target, kspace_under=kspace_under, zero_filled=zero_filled, maps=maps)
