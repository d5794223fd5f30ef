"""The optimised training path (channels_last, where-based DF, in-place ReLU, SFT branch order) against a
plain reference forward/backward written from the method's formulas: same loss and gradients to float32
tolerance."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from data.fft import fft2, ifft2
from models.nets.dccnn import DCCNN, TEACHER
from models.nets.sft import SFTNet, sft_loss


def reference_cascade(block, x, kspace, mask):
    """One CNN block and DF, straight from METHOD.md: contiguous tensors, out-of-place ReLU."""
    names = block.names
    h = x
    for name in names[:-1]:
        conv = getattr(block, name)
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=1))
    last = getattr(block, names[-1])
    cnn = F.conv2d(h, last.weight, last.bias, padding=1)
    return ifft2(mask * kspace + (1 - mask) * fft2(cnn)).real


def reference_dccnn(model, zf, kspace, mask, start=0, x=None):
    x = zf if x is None else x
    for block in list(model.cascades)[start:]:
        x = reference_cascade(block, x, kspace, mask)
    return x


def inputs(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 1, size, size, generator=g)
    mask = (torch.rand(1, 1, size, 1, generator=g) > 0.6).float().expand(batch, 1, size, size)
    kspace = fft2(target) * mask
    return ifft2(kspace).abs(), kspace, mask, target


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_dccnn_training_path_matches_reference():
    torch.manual_seed(0)
    model = DCCNN(TEACHER)
    zf, kspace, mask, target = inputs()
    F.l1_loss(reference_dccnn(model, zf, kspace, mask), target).backward()
    expected = grads(model)
    model.zero_grad()
    fast = model.to(memory_format=torch.channels_last)
    loss = F.l1_loss(fast(zf, kspace, mask), target)
    loss.backward()
    for key, value in grads(fast).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-6)


def test_sft_training_path_matches_reference():
    torch.manual_seed(1)
    model = SFTNet()
    zf, kspace, mask, target = inputs(seed=1)
    teacher_steps = [zf]
    for block in model.teacher.cascades:
        teacher_steps.append(reference_cascade(block, teacher_steps[-1], kspace, mask))
    teacher_out = teacher_steps[-1]
    branches = [reference_dccnn(model.student, zf, kspace, mask, start=j, x=teacher_steps[j]) for j in range(1, 5)]
    ref_loss = (F.l1_loss(teacher_out, target) + sum(F.l1_loss(b, target) for b in branches) / 4
                + sum(F.l1_loss(b, teacher_out) for b in branches) / 4)
    ref_loss.backward()
    expected = grads(model)
    model.zero_grad()
    model.to(memory_format=torch.channels_last)
    loss, _ = sft_loss(*model(zf, kspace, mask), target)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    got = grads(model)
    assert got.keys() == expected.keys() and not any(k.startswith("student.cascades.0.") for k in got)
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-6)


def test_sft_branchwise_backward_matches_one_backward():
    from models.nets.sft import sft_forward_backward
    torch.manual_seed(2)
    model = SFTNet()
    zf, kspace, mask, target = inputs(seed=2)
    loss, terms = sft_loss(*model(zf, kspace, mask), target, 0.7, 1.3)
    loss.backward()
    expected = grads(model)
    model.zero_grad()
    loss2, terms2 = sft_forward_backward(model, zf, kspace, mask, target, 0.7, 1.3)
    assert not loss2.requires_grad
    torch.testing.assert_close(loss2, loss.detach(), rtol=1e-6, atol=1e-8)
    for key in terms:
        torch.testing.assert_close(terms2[key], terms[key], rtol=1e-6, atol=1e-8)
    got = grads(model)
    assert got.keys() == expected.keys()
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-7)
