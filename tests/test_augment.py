"""--augment: augmented items obey the stored data's k-space relation, and poses depend only on (seed, epoch, index)."""
from __future__ import annotations

import numpy as np
import torch

from data.augment import INTENSITY_RANGE, AugmentedSlices, augment_target
from data.dataset import SliceDataset
from data.fft import fft2, zero_filled
from models.training.distributed import EpochSampler


def dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips / quarter turns of a (1, H, W) image."""
    out = []
    for k in range(4):
        turned = torch.rot90(image, k, dims=(-2, -1))
        out += [turned, torch.flip(turned, dims=(-1,))]
    return out


def pose_of(augmented: torch.Tensor, original: torch.Tensor) -> tuple[int, float]:
    """Index into :func:`dihedral` and intensity factor that turn ``original`` into ``augmented``."""
    for i, candidate in enumerate(dihedral(original)):
        if candidate.shape != augmented.shape:
            continue
        scale = float(augmented.max() / candidate.max())
        if torch.allclose(candidate * scale, augmented, atol=1e-6):
            return i, scale
    raise AssertionError("augmented image is not a flipped / rotated / scaled copy of the original")


def test_augmented_kspace_is_mask_times_fft_of_augmented_image(tiny_data):
    base = SliceDataset(tiny_data, "train", "4x")
    data = AugmentedSlices(base, seed=7)
    for index in range(len(base)):
        item, original = data[(index, 3)], base[index]
        expected = fft2(item.target) * item.mask
        assert torch.equal(item.kspace_under, expected)
        assert torch.equal(item.zero_filled, zero_filled(expected))
        assert item.kspace_under.dtype == torch.complex64 and item.target.dtype == torch.float32
        assert item.kspace_under[item.mask.expand_as(expected) == 0].abs().max() == 0
        _, scale = pose_of(item.target, original.target)
        assert INTENSITY_RANGE[0] <= scale <= INTENSITY_RANGE[1]
        assert item.fname == original.fname and item.slice == original.slice


def test_pose_depends_only_on_seed_epoch_and_index(tiny_data):
    base = SliceDataset(tiny_data, "train", "4x")
    first, second = AugmentedSlices(base, seed=7), AugmentedSlices(base, seed=7)  # e.g. two workers
    for key in [(0, 0), (3, 1), (5, 9)]:
        assert torch.equal(first[key].target, second[key].target)
    other_seed = AugmentedSlices(base, seed=8)
    epochs = [torch.stack([first[(i, e)].target for i in range(len(base))]) for e in range(3)]
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert not all(torch.equal(first[(i, 0)].target, other_seed[(i, 0)].target) for i in range(len(base)))


def test_every_pose_is_drawn_and_non_square_slices_keep_their_shape():
    image = torch.rand(1, 8, 8)
    poses = {pose_of(augment_target(image, np.random.default_rng([0, e, 0])), image)[0] for e in range(200)}
    assert poses == set(range(8))
    tall = torch.rand(1, 8, 6)
    for e in range(50):
        assert augment_target(tall, np.random.default_rng([0, e, 0])).shape == (1, 8, 6)


def test_sampler_keys_carry_the_epoch_and_respect_skip():
    sampler = EpochSampler(10, seed=1, keys=True)
    plain = EpochSampler(10, seed=1)
    sampler.set_epoch(4, skip=3)
    plain.set_epoch(4, skip=3)
    keys = list(sampler)
    assert [i for i, _ in keys] == list(plain) and {e for _, e in keys} == {4}
    assert len(sampler) == 7
