"""Tests of models/nets/sft.py: the SFT forward (teacher path + student branches), its loss and step-2 student."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import assert_gradients_follow_df, dc_gradient_scale
from data.fft import fft2, zero_filled
from data.masks import cartesian_row_mask
from models.nets.dccnn import DCCNN, STUDENT, DCCNNConfig
from models.nets.sft import SFTNet, sft_loss, student_from_blocks

SIZE = 32


def _inputs(batch=2, seed=0):
    """zero_filled (B,1,H,W), kspace_under (B,1,H,W) complex64, mask (B,1,H,W), target (B,1,H,W)."""
    target = torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    mask = torch.from_numpy(cartesian_row_mask((SIZE, SIZE), "4x", seed=seed))[None, None]
    mask = mask.repeat(batch, 1, 1, 1)
    kspace = mask * fft2(target)
    return zero_filled(kspace), kspace, mask, target


def _sft(seed=0) -> SFTNet:
    torch.manual_seed(seed)
    return SFTNet()


def _teacher_intermediates(sft: SFTNet, zf, k, m) -> list[torch.Tensor]:
    """[x_1, ..., x_5]: the teacher's DF output after each cascade."""
    _, features = sft.teacher(zf, k, m, return_features=True)
    return [f["out"] for f in features]


def _manual_branch(sft: SFTNet, j: int, x_j, k, m) -> torch.Tensor:
    """Branch j (1-based): student cascades S_{j+1}..S_5 (0-based j..4), each followed by DF, on x_j."""
    x = x_j
    for index in range(j, 5):
        x, _ = sft.student.run_cascade(index, x, k, m)
    return x


def test_output_shapes():
    zf, k, m, _ = _inputs(batch=3)
    with torch.no_grad():
        teacher_out, branches = _sft()(zf, k, m)
        teacher_only = _sft()(zf, k, m, branches=False)
    assert teacher_out.shape == (3, 1, SIZE, SIZE) and teacher_out.dtype == torch.float32
    assert len(branches) == 4
    assert all(b.shape == (3, 1, SIZE, SIZE) and b.dtype == torch.float32 for b in branches)
    assert torch.equal(teacher_out, teacher_only)


def test_teacher_output_is_plain_dccnn_forward():
    zf, k, m, _ = _inputs()
    sft = _sft()
    with torch.no_grad():
        teacher_out, _ = sft(zf, k, m)
        standalone = DCCNN(sft.teacher.config)
        standalone.load_state_dict(sft.teacher.state_dict())
        assert torch.allclose(teacher_out, sft.teacher(zf, k, m), atol=1e-6)
        assert torch.allclose(teacher_out, standalone(zf, k, m), atol=1e-6)


def test_branches_equal_per_branch_computation():
    zf, k, m, _ = _inputs(batch=2)
    sft = _sft(1)
    with torch.no_grad():
        _, branches = sft(zf, k, m)
        intermediates = _teacher_intermediates(sft, zf, k, m)
        for j in range(1, 5):
            manual = _manual_branch(sft, j, intermediates[j - 1], k, m)
            assert torch.allclose(branches[j - 1], manual, atol=1e-6), f"branch {j}"
        # The branches really differ from one another and from the teacher.
        assert (branches[0] - branches[3]).abs().max() > 1e-4
        assert (branches[3] - intermediates[4]).abs().max() > 1e-4


def test_broadcast_mask_is_accepted():
    zf, k, m, _ = _inputs(batch=2)
    sft = _sft()
    with torch.no_grad():
        per_sample = sft(zf, k, m)
        shared = sft(zf, k, m[:1])
    assert torch.allclose(per_sample[0], shared[0], atol=1e-6)
    for a, b in zip(per_sample[1], shared[1]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("j", [1, 2, 3, 4])
def test_branch_ignores_earlier_student_cascades(j):
    zf, k, m, _ = _inputs()
    sft = _sft(2)
    with torch.no_grad():
        _, before = sft(zf, k, m)
        for index in range(j):  # S_1..S_j
            for p in sft.student.cascades[index].parameters():
                p.add_(torch.randn_like(p))
        _, after = sft(zf, k, m)
        assert torch.allclose(before[j - 1], after[j - 1], atol=1e-6)
        for p in sft.student.cascades[j].parameters():  # S_{j+1}, which branch j does run
            p.add_(torch.randn_like(p))
        _, changed = sft(zf, k, m)
        assert (changed[j - 1] - before[j - 1]).abs().max() > 1e-3


def test_s1_is_frozen_and_gets_no_gradient():
    zf, k, m, target = _inputs()
    sft = _sft()
    s1 = list(sft.student.cascades[0].parameters())
    assert s1 and not any(p.requires_grad for p in s1)
    with dc_gradient_scale(sft) as scale:
        teacher_out, branches = sft(zf, k, m)
        loss, _ = sft_loss(teacher_out, branches, target)
        loss.backward()
    assert all(p.grad is None for p in s1)
    # S2..S5 and the teacher get a gradient, except each cascade's last bias: the mask samples the DC coefficient,
    # which that bias alone changes and DF replaces, so its gradient is 0 by construction (dc_only_parameters).
    trainable = {n: p for n, p in sft.named_parameters() if not n.startswith("student.cascades.0.")}
    assert_gradients_follow_df(sft, m, scale, trainable)


def _grads(module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def test_imitation_term_alone_moves_teacher():
    zf, k, m, target = _inputs()
    sft = _sft(3)
    with dc_gradient_scale(sft) as scale:
        teacher_out, branches = sft(zf, k, m)
        with_imitation, _ = sft_loss(teacher_out, branches, target, student_rec_weight=0.0, imitation_weight=1.0)
        without, _ = sft_loss(teacher_out, branches, target, student_rec_weight=0.0, imitation_weight=0.0)
        (with_imitation - without).backward()  # exactly the imitation term's gradient
    imitation_grads = _grads(sft.teacher)
    assert sum(g.abs().sum() for g in imitation_grads) > 0
    # Even T5's last convolution learns from imitation: its weight. Its bias moves only the DC coefficient, which
    # DF replaces (the mask samples it), so its gradient is 0 by construction, rounding noise at most.
    last_weight, last_bias = imitation_grads[-2:]
    assert last_weight.abs().sum() > 0 and bool(m[..., 0, 0].all())
    assert last_bias.abs().sum() <= 1e-4 * scale["teacher.cascades.4.conv5.bias"]  # see dc_gradient_scale

    sft.zero_grad(set_to_none=True)
    teacher_out, branches = sft(zf, k, m)
    hand = torch.stack([F.l1_loss(b, teacher_out) for b in branches]).mean()
    hand.backward()
    for a, b in zip(imitation_grads, _grads(sft.teacher)):
        assert torch.allclose(a, b, atol=1e-6)

    # With both student terms weighted 0, the student cascades get an all-zero gradient.
    sft.zero_grad(set_to_none=True)
    teacher_out, branches = sft(zf, k, m)
    without, _ = sft_loss(teacher_out, branches, target, student_rec_weight=0.0, imitation_weight=0.0)
    without.backward()
    assert all(g.abs().sum() == 0 for g in _grads(sft.student))


def test_sft_loss_value_and_terms():
    generator = torch.Generator().manual_seed(5)
    target, teacher_out = torch.rand(2, 2, 1, 8, 8, generator=generator)
    branches = list(torch.rand(4, 2, 1, 8, 8, generator=generator))
    t = target.numpy().astype(np.float64)
    x_t = teacher_out.numpy().astype(np.float64)
    xs = [b.numpy().astype(np.float64) for b in branches]
    rec_t = np.abs(x_t - t).mean()
    rec_s = np.mean([np.abs(x - t).mean() for x in xs])
    imit = np.mean([np.abs(x - x_t).mean() for x in xs])

    total, terms = sft_loss(teacher_out, branches, target)
    assert total.item() == pytest.approx(rec_t + rec_s + imit, rel=1e-6)
    total, terms = sft_loss(teacher_out, branches, target, student_rec_weight=0.5, imitation_weight=2.0)
    assert total.item() == pytest.approx(rec_t + 0.5 * rec_s + 2.0 * imit, rel=1e-6)
    assert terms["teacher"].item() == pytest.approx(rec_t, rel=1e-6)
    assert terms["student"].item() == pytest.approx(rec_s, rel=1e-6)
    assert terms["imitation"].item() == pytest.approx(imit, rel=1e-6)
    for j in range(4):
        assert terms[f"student_branch{j + 1}"].item() == pytest.approx(np.abs(xs[j] - t).mean(), rel=1e-6)
    assert not any(v.requires_grad for v in terms.values())


def test_student_from_sft_blocks():
    sft = _sft(4)
    with torch.no_grad():  # make S2..S5 differ from any fresh draw
        for p in sft.student.parameters():
            p.add_(1.0)
    torch.manual_seed(99)
    fresh = DCCNN(STUDENT)
    fresh_s1 = {k: v.clone() for k, v in fresh.cascades[0].state_dict().items()}
    fresh_before = {k: v.clone() for k, v in fresh.state_dict().items()}
    result = student_from_blocks(sft.student, fresh)

    assert result is not fresh and result.config == STUDENT
    for index in range(1, 5):
        for key, value in sft.student.cascades[index].state_dict().items():
            assert torch.equal(result.cascades[index].state_dict()[key], value)
    for key, value in fresh_s1.items():
        assert torch.equal(result.cascades[0].state_dict()[key], value)
        assert not torch.equal(sft.student.cascades[0].state_dict()[key], value)
    assert all(p.requires_grad for p in result.parameters())
    # Neither source model is changed, and the result shares no storage with them.
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in fresh_before.items())
    with torch.no_grad():
        result.cascades[1].conv1.weight.zero_()
    assert sft.student.cascades[1].conv1.weight.abs().sum() > 0


def test_mismatched_cascade_counts_rejected():
    with pytest.raises(ValueError):
        SFTNet(DCCNNConfig(n_cascades=5), DCCNNConfig(n_cascades=4, n_convs=3))


def test_teacher_and_branch1_equals_the_full_forward():
    torch.manual_seed(0)
    model = SFTNet()
    zf = torch.rand(2, 1, 24, 24)
    kspace = torch.randn(2, 1, 24, 24, dtype=torch.complex64)
    mask = (torch.rand(1, 1, 24, 1) > 0.5).float().expand(2, 1, 24, 24)
    teacher_out, branches = model(zf, kspace, mask)
    teacher_only, branch1 = model.teacher_and_branch1(zf, kspace, mask)
    torch.testing.assert_close(teacher_only, teacher_out, rtol=0, atol=0)
    torch.testing.assert_close(branch1, branches[0], rtol=0, atol=0)
