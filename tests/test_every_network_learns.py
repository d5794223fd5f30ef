"""Every registered network learns from any seed: at initialisation every parameter tensor receives a nonzero
gradient, and a few Adam steps lower the training loss. Seeds 0-9 at 16 x 16, for each ``--model`` name and
for the SFT network of each family's teacher / student pair.

These are properties of the architecture, not of one float path, so their verdict is the same on every CPU
kind: a network that is dead at initialisation for some seed (a narrow U-Net whose last ReLU map is all
zero) fails here on any machine, for that seed."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from data.fft import fft2, zero_filled
from models.nets.registry import PRESETS
from models.nets.sft import SFTConfig, SFTNet, sft_loss

SEEDS = range(10)
SIZE = 16
# (teacher, student) --model names of each family, for its SFT network.
SFT_PAIRS = [("teacher", "student"), ("unet-teacher", "unet-student"), ("varnet-teacher", "varnet-student")]


def batch(seed: int, n: int = 2, dc: bool = True):
    """target (n, 1, 16, 16) float32 smooth positive images, zero_filled (n, 1, 16, 16) float32, kspace_under
    (n, 1, 16, 16) complex64 and mask (1, 1, 16, 16) float32: every 3rd row and the lowest frequencies, the
    DC row (row 0) only with ``dc``."""
    gen = torch.Generator().manual_seed(1000 + seed)
    target = F.interpolate(torch.rand(n, 1, 4, 4, generator=gen), size=(SIZE, SIZE), mode="bilinear",
                           align_corners=False)
    rows = torch.zeros(SIZE)
    rows[1::3] = 1
    rows[[1, -1]] = 1
    rows[0] = float(dc)
    mask = rows[None, None, :, None].expand(1, 1, SIZE, SIZE).contiguous()
    kspace_under = fft2(target) * mask
    return target, zero_filled(kspace_under), kspace_under, mask


def outputs(model, zf, kspace_under, mask) -> list[torch.Tensor]:
    """Every image the network returns, each (B, 1, H, W) float32: the SFT network's teacher and branches."""
    if isinstance(model, SFTNet):
        teacher_out, branches = model(zf, kspace_under, mask)
        return [teacher_out, *branches]
    return [model(zf, kspace_under, mask)]


def loss_of(model, target, zf, kspace_under, mask):
    if isinstance(model, SFTNet):
        teacher_out, branches = model(zf, kspace_under, mask)
        return sft_loss(teacher_out, branches, target)[0]
    return F.l1_loss(model(zf, kspace_under, mask), target)


def networks() -> dict:
    built = {name: config for name, config in PRESETS.items()}
    for teacher, student in SFT_PAIRS:
        built[f"sft({teacher}, {student})"] = SFTConfig(PRESETS[teacher], PRESETS[student])
    return built


NETWORKS = networks()


def test_the_list_covers_every_family():
    """A new family must add its SFT pair above, so that its networks are tested as SFT teacher and student."""
    kinds = {config.kind for config in PRESETS.values()}
    assert {PRESETS[t].kind for t, _ in SFT_PAIRS} == kinds - {"sft"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NETWORKS)
def test_every_parameter_gets_a_gradient_at_initialisation(name, seed):
    """The gradient of a random linear functional of the outputs is nonzero for every parameter that can change
    an output. Not the training loss: L1 terms can cancel exactly (an SFT branch lying between the teacher and
    the target everywhere gets +1 and -1 from its two terms), which says nothing about the network. The mask has
    no DC row: where DF keeps the sampled DC coefficient, a constant offset of the image a cascade hands to DF
    (its last layer's bias) is replaced, so that bias's gradient is zero by construction, float noise at most."""
    torch.manual_seed(seed)
    model = NETWORKS[name].build()
    _, zf, kspace_under, mask = batch(seed, dc=False)
    gen = torch.Generator().manual_seed(seed)
    functional = sum((out * torch.randn(out.shape, generator=gen)).sum()
                     for out in outputs(model, zf, kspace_under, mask))
    functional.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    dead = [n for n, p in trainable.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert trainable and not dead, f"{len(dead)} of {len(trainable)} parameter tensors get no gradient: {dead[:5]}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NETWORKS)
def test_a_few_steps_lower_the_training_loss(name, seed):
    torch.manual_seed(seed)
    model = NETWORKS[name].build()
    data = batch(seed)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        before = loss_of(model, *data).item()
    for _ in range(5):
        optimiser.zero_grad()
        loss_of(model, *data).backward()
        optimiser.step()
    with torch.no_grad():
        after = loss_of(model, *data).item()
    # Five steps on one fixed batch at lr 1e-3 lower a live network's loss by percent, far above float noise;
    # a dead network's loss does not move at all.
    assert after < 0.99 * before, (before, after)
