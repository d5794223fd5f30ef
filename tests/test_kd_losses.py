"""Tests for models/distill/losses.py: registry, finiteness, gradient flow, zero-at-equality, hand-checked values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from data.fft import fft2, zero_filled
from data.masks import cartesian_row_mask
from models.nets.dccnn import DCCNN, STUDENT, TEACHER, DCCNNConfig, count_parameters
from models.distill.losses import KD_METHODS, KDLoss, KDMethodError, attention_map, build_kd_loss, describe_methods
from utils import UserError

NAMES = ["none", "imitation", "fitnet", "at", "at-public", "cc", "fsp", "sp", "rkd", "pkt", "nst", "vid", "ab", "ft"]
ZERO_WHEN_EQUAL = ["imitation", "fitnet", "at", "at-public", "sp", "cc", "fsp", "nst", "pkt", "rkd"]
LEARNABLE = {"vid", "ab", "ft"}
SIZE = 16


def make_batch(batch: int, seed: int = 0):
    """(zero_filled, kspace_under, mask) for ``batch`` random smooth 16 x 16 images in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    image = F.avg_pool2d(torch.rand(batch, 1, SIZE + 3, SIZE + 3, generator=gen), 4, stride=1)
    mask = torch.from_numpy(cartesian_row_mask((SIZE, SIZE), "4x", seed=seed))[None, None].expand_as(image)
    kspace_under = fft2(image) * mask
    return zero_filled(kspace_under).float(), kspace_under, mask


def run_networks(batch: int, teacher_mode=torch.no_grad, teacher_config: DCCNNConfig = TEACHER):
    """Real student (with grad) and teacher (frozen) outputs and features on a tiny batch."""
    torch.manual_seed(0)
    student_net, teacher_net = DCCNN(STUDENT), DCCNN(TEACHER)
    if teacher_config != TEACHER:
        teacher_net = type(teacher_net)(teacher_config)
    inputs = make_batch(batch)
    with teacher_mode():
        teacher_out, teacher_feats = teacher_net(*inputs, return_features=True)
    student_out, student_feats = student_net(*inputs, return_features=True)
    return student_net, teacher_net, (student_out, student_feats, teacher_out, teacher_feats)


def fake_features(batch: int, seed: int = 0, constant: float | None = None):
    """Teacher-shaped and student-shaped feature lists whose compared tensors are identical.

    The teacher's hidden list is [h0, h1, h1, h1] and the student's [h0, h1], so teacher conv3 equals
    student conv2 (AT, NST, ...) and the last hidden activations agree (FSP).
    """
    gen = torch.Generator().manual_seed(seed)
    teacher_feats, student_feats = [], []
    for _ in range(5):
        def draw(channels):
            if constant is not None:
                return torch.full((batch, channels, SIZE, SIZE), constant)
            return torch.rand(batch, channels, SIZE, SIZE, generator=gen)
        h0, h1, cnn_out, out = draw(32), draw(32), draw(1), draw(1)
        teacher_feats.append({"hidden": [h0, h1, h1, h1], "cnn_out": cnn_out, "out": out})
        student_feats.append({"hidden": [h0, h1], "cnn_out": cnn_out, "out": out})
    return student_feats[-1]["out"], student_feats, teacher_feats[-1]["out"], teacher_feats


def test_registry_holds_exactly_the_fourteen_methods():
    assert sorted(KD_METHODS) == sorted(NAMES)
    for name, cls in KD_METHODS.items():
        assert issubclass(cls, KDLoss) and cls.name == name
        assert cls.description and "\n" not in cls.description
        assert cls.default_weight >= 0 and cls.__doc__
        assert cls.needs_features == (name not in ("none", "imitation"))


def test_unknown_name_lists_valid_names():
    with pytest.raises(KDMethodError) as info:
        build_kd_loss("foo", STUDENT, TEACHER)
    message = str(info.value)
    assert "'foo'" in message and "--kd-method" not in message  # the CLI names its flag, not the library
    assert all(name in message for name in NAMES)


def test_describe_methods_has_one_line_per_method():
    lines = describe_methods().splitlines()
    assert len(lines) == len(NAMES)
    for line, name in zip(lines, KD_METHODS):
        assert line.split()[0] == name
        assert f"{KD_METHODS[name].default_weight:g}" in line


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 2])
def test_finite_scalar_on_real_features(name, batch):
    *_, args = run_networks(batch)
    loss = build_kd_loss(name, STUDENT, TEACHER)(*args)
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("constant", [0.0, 0.7])
@pytest.mark.parametrize("batch", [1, 3])
def test_finite_loss_and_gradients_on_constant_features(name, constant, batch):
    student_out, student_feats, teacher_out, teacher_feats = fake_features(batch, constant=constant)
    leaves = [f["hidden"][i].clone().requires_grad_() for f in student_feats for i in range(2)]
    student_feats = [{"hidden": leaves[2 * k:2 * k + 2], "cnn_out": f["cnn_out"].clone().requires_grad_(),
                      "out": f["out"]} for k, f in enumerate(student_feats)]
    student_out = student_out.clone().requires_grad_()
    loss = build_kd_loss(name, STUDENT, TEACHER)(student_out, student_feats, teacher_out, teacher_feats)
    assert torch.isfinite(loss)
    if loss.requires_grad:
        loss.backward()
        for leaf in [student_out, *leaves, *(f["cnn_out"] for f in student_feats)]:
            assert leaf.grad is None or torch.isfinite(leaf.grad).all()


# RKD's angles are constant for two samples, so its gradient needs three.
@pytest.mark.parametrize("name", [n for n in NAMES if n != "none"])
@pytest.mark.parametrize("teacher_mode", [torch.no_grad, torch.inference_mode])
def test_gradient_reaches_student_and_loss_parts_not_teacher(name, teacher_mode):
    student_net, teacher_net, args = run_networks(3 if name == "rkd" else 2, teacher_mode)
    teacher_before = [args[2].clone()] + [h.clone() for f in args[3] for h in (*f["hidden"], f["cnn_out"])]
    kd_loss = build_kd_loss(name, STUDENT, TEACHER)
    kd_loss(*args).backward()
    grads = [p.grad for p in student_net.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher_net.parameters())
    if kd_loss.has_parameters:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in kd_loss.parameters())
    teacher_after = [args[2]] + [h for f in args[3] for h in (*f["hidden"], f["cnn_out"])]
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher_after))


def test_none_is_exactly_zero_and_leaves_gradients_unchanged():
    student_net, _, args = run_networks(2)
    loss = build_kd_loss("none", STUDENT, TEACHER)(*args)
    assert loss.item() == 0.0 and not loss.requires_grad
    target = torch.rand_like(args[0])
    (F.l1_loss(args[0], target) + 0.5 * loss).backward()
    with_kd = [p.grad.clone() for p in student_net.parameters()]
    student_net.zero_grad()
    student_out = student_net(*make_batch(2))
    F.l1_loss(student_out, target).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(with_kd, student_net.parameters()))


def test_output_only_methods_accept_missing_features():
    *_, (student_out, _, teacher_out, _) = run_networks(2)
    for name in ("none", "imitation"):
        loss = build_kd_loss(name, STUDENT, TEACHER)(student_out, None, teacher_out, None)
        assert torch.isfinite(loss)
    expected = (student_out - teacher_out).abs().mean()
    got = build_kd_loss("imitation", STUDENT, TEACHER)(student_out, None, teacher_out, None)
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("name", ZERO_WHEN_EQUAL)
@pytest.mark.parametrize("batch", [2, 4])
def test_zero_when_student_features_equal_teacher_features(name, batch):
    if name == "rkd":
        batch += 1  # two samples have one distance and degenerate angles: RKD is 0 for any features
    args = fake_features(batch, seed=batch)
    loss = build_kd_loss(name, STUDENT, TEACHER)(*args)
    assert abs(loss.item()) < 1e-6
    different = fake_features(batch, seed=batch + 10)
    mixed = (different[0], different[1], args[2], args[3])
    assert build_kd_loss(name, STUDENT, TEACHER)(*mixed).item() > 1e-6


def test_learnable_parts_live_in_the_loss_not_the_student():
    student_net = DCCNN(STUDENT)
    student_ids = {id(p) for p in student_net.parameters()}
    for name in NAMES:
        kd_loss = build_kd_loss(name, STUDENT, TEACHER)
        assert kd_loss.has_parameters == (name in LEARNABLE)
        assert not student_ids & {id(p) for p in kd_loss.parameters()}
        assert bool(kd_loss.state_dict()) == (name in LEARNABLE)
    assert count_parameters(student_net) == 49_285


@pytest.mark.parametrize("name", sorted(LEARNABLE))
def test_learnable_state_round_trips(name):
    torch.manual_seed(1)
    first = build_kd_loss(name, STUDENT, TEACHER)
    torch.manual_seed(2)
    second = build_kd_loss(name, STUDENT, TEACHER)
    args = fake_features(2, seed=3)
    assert first(*args).item() != pytest.approx(second(*args).item())
    second.load_state_dict(first.state_dict())
    assert first(*args).item() == pytest.approx(second(*args).item())


@pytest.mark.parametrize("name", ["at", "nst", "vid", "ab", "ft"])
def test_student_with_fewer_channels(name):
    narrow = DCCNNConfig(n_convs=3, channels=16)
    torch.manual_seed(0)
    student_net = type(DCCNN(STUDENT))(narrow)
    inputs = make_batch(2)
    with torch.no_grad():
        teacher_out, teacher_feats = DCCNN(TEACHER)(*inputs, return_features=True)
    student_out, student_feats = student_net(*inputs, return_features=True)
    loss = build_kd_loss(name, narrow, TEACHER)(student_out, student_feats, teacher_out, teacher_feats)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in student_net.parameters())


def test_mismatched_channels_or_cascades_are_user_errors():
    with pytest.raises(UserError, match="fsp needs equal channels"):
        build_kd_loss("fsp", DCCNNConfig(n_convs=3, channels=16), TEACHER)
    with pytest.raises(UserError, match="cascades"):
        build_kd_loss("at", DCCNNConfig(n_convs=3, n_cascades=4), TEACHER)
    assert torch.isfinite(build_kd_loss("imitation", DCCNNConfig(n_cascades=4), TEACHER)(
        torch.zeros(1, 1, 4, 4), None, torch.ones(1, 1, 4, 4), None))


@pytest.mark.parametrize("name", ["at", "fsp", "nst"])
def test_teacher_ref_padding_is_cropped_before_comparing(name):
    padded = DCCNNConfig(n_convs=5, ref_padding=5)
    *_, args = run_networks(2, teacher_config=padded)
    assert args[3][0]["hidden"][0].shape[-1] == SIZE + 10
    assert torch.isfinite(build_kd_loss(name, STUDENT, padded)(*args))


def test_shallow_teacher_uses_its_last_hidden_layer():
    shallow = DCCNNConfig(n_convs=3)
    args = fake_features(2)
    teacher_feats = [{**f, "hidden": f["hidden"][:2]} for f in args[3]]
    loss = build_kd_loss("at", STUDENT, shallow)(args[0], args[1], args[2], teacher_feats)
    assert abs(loss.item()) < 1e-7


def numpy_attention(features: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, H W) channel mean of squares, L2-normalised per sample."""
    maps = (features.astype(np.float64) ** 2).mean(axis=1).reshape(len(features), -1)
    return maps / np.linalg.norm(maps, axis=1, keepdims=True)


def test_attention_transfer_matches_numpy():
    rng = np.random.default_rng(0)
    student_hidden = [rng.random((2, 3, 4, 5)).astype(np.float32) for _ in range(5)]
    teacher_hidden = [rng.random((2, 4, 4, 5)).astype(np.float32) for _ in range(5)]
    expected = np.mean([((numpy_attention(s) - numpy_attention(t)) ** 2).sum(axis=1).mean()
                        for s, t in zip(student_hidden, teacher_hidden)])
    dummy = torch.zeros(2, 1, 4, 5)
    student_feats = [{"hidden": [torch.zeros(2, 3, 4, 5), torch.from_numpy(s)], "cnn_out": dummy, "out": dummy}
                     for s in student_hidden]
    teacher_feats = [{"hidden": [torch.zeros(2, 4, 4, 5)] * 2 + [torch.from_numpy(t), torch.zeros(2, 4, 4, 5)],
                      "cnn_out": dummy, "out": dummy} for t in teacher_hidden]
    got = build_kd_loss("at", STUDENT, TEACHER)(dummy, student_feats, dummy, teacher_feats)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert np.allclose(attention_map(torch.from_numpy(student_hidden[0])).numpy(),
                       numpy_attention(student_hidden[0]), atol=1e-6)


def test_similarity_preserving_matches_hand_computation():
    # Two 1 x 1 x 2 "images" per network: Gram matrices are easy to write out by hand.
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    # G_S = [[1, 1], [1, 2]] -> rows / norms: [1, 1] / sqrt 2, [1, 2] / sqrt 5; G_T = identity.
    g_s = np.array([[1, 1] / np.sqrt(2), [1, 2] / np.sqrt(5)])
    per_cascade = ((g_s - np.eye(2)) ** 2).sum() / 4
    feats = lambda x: [{"hidden": [], "cnn_out": x, "out": x} for _ in range(5)]
    got = build_kd_loss("sp", STUDENT, TEACHER)(s, feats(s), t, feats(t))
    assert got.item() == pytest.approx(per_cascade, rel=1e-6)
    # (1/sqrt2 - 1)^2 + (1/sqrt2)^2 + (1/sqrt5)^2 + (2/sqrt5 - 1)^2 = 0.0857864 + 0.5 + 0.2 + 0.0111456 = 0.796932
    assert per_cascade == pytest.approx(0.796932 / 4, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_teacher_keeps_exactly_the_hidden_layers_the_method_reads(name):
    torch.manual_seed(0)
    t_net, s_net = DCCNN(TEACHER), DCCNN(STUDENT)
    zf = torch.rand(2, 1, 16, 16)
    kspace = torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    mask = (torch.rand(1, 1, 16, 1) > 0.5).float().expand(2, 1, 16, 16)
    loss = build_kd_loss(name, STUDENT, TEACHER)
    with torch.no_grad():
        t_out, full = t_net(zf, kspace, mask, return_features=True)
        _, kept = t_net(zf, kspace, mask, return_features=True, keep_hidden=loss.keep_teacher_hidden())
    s_out, s_feats = s_net(zf, kspace, mask, return_features=True)
    expected = loss(s_out, s_feats, t_out, full)
    torch.testing.assert_close(loss(s_out, s_feats, t_out, kept), expected, rtol=0, atol=0)
    if name not in ("none", "imitation"):
        n_kept = sum(h is not None for f in kept for h in f["hidden"])
        assert n_kept == 5 * len(loss.keep_teacher_hidden())


NO_OUTPUT = torch.zeros(1)  # outputs and CNN outputs, which at-public does not read


def _public_at_features(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]):
    """Feature lists with the student's conv2 and the teacher's conv3 set to the given (B, C, H, W) maps."""
    student_feats = [{"hidden": [torch.zeros_like(s), s], "cnn_out": NO_OUTPUT, "out": NO_OUTPUT}
                     for s in student_maps]
    teacher_feats = [{"hidden": [None, None, t, None], "cnn_out": NO_OUTPUT, "out": NO_OUTPUT}
                     for t in teacher_maps]
    return student_feats, teacher_feats


def test_at_public_hand_computed():
    config_s, config_t = (DCCNNConfig(n_cascades=2, n_convs=n, channels=2) for n in (3, 5))
    # B = 2 samples, C = 2 channels, 1 x 2 pixels: (sample, channel, 0, pixel).
    student_1 = torch.tensor([[[[3.0, 1.0]], [[4.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 1.0]]]])
    teacher_1 = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 1.0]], [[1.0, 1.0]]]])
    # Channel sums of squares: student (25, 1) and (0, 1), teacher (1, 0) and (1, 2). Each pixel normalised
    # over the two samples: student pixel 0 (1, 0), pixel 1 (1, 1) / sqrt 2; teacher pixel 0 (1, 1) / sqrt 2,
    # pixel 1 (0, 1). |differences|: 1 - r, r, r, 1 - r with r = 1 / sqrt 2, mean over 4 entries = 0.5.
    student_feats, teacher_feats = _public_at_features([student_1, student_1], [teacher_1, 2 * student_1])
    loss = build_kd_loss("at-public", config_s, config_t)(NO_OUTPUT, student_feats, NO_OUTPUT, teacher_feats)
    # Cascade 2 compares a map with twice itself: normalising over the batch removes the scale, so 0.
    assert loss.item() == pytest.approx((0.5 + 0.0) / 2, abs=1e-7)
    # Per-sample normalisation (the "at" entry) sees other maps: not the same number.
    at = build_kd_loss("at", config_s, config_t)(NO_OUTPUT, student_feats, NO_OUTPUT, teacher_feats)
    assert at.item() != pytest.approx(loss.item(), rel=0.1)


def test_at_public_keeps_the_padding_border_and_needs_equal_padding():
    padded_s = DCCNNConfig(n_cascades=1, n_convs=3, channels=2, ref_padding=5)
    padded_t = DCCNNConfig(n_cascades=1, n_convs=5, channels=2, ref_padding=5)
    student_map = torch.zeros(2, 2, 12, 12)
    teacher_map = torch.zeros(2, 2, 12, 12)
    teacher_map[0, 0, 0, 0] = 1.0  # only in the 5-pixel border: "at" crops it away, "at-public" sees it
    student_feats, teacher_feats = _public_at_features([student_map], [teacher_map])
    loss = build_kd_loss("at-public", padded_s, padded_t)(NO_OUTPUT, student_feats, NO_OUTPUT, teacher_feats)
    assert loss.item() == pytest.approx(1 / (2 * 12 * 12), abs=1e-9)
    assert build_kd_loss("at", padded_s, padded_t)(NO_OUTPUT, student_feats, NO_OUTPUT, teacher_feats).item() == 0.0
    with pytest.raises(KDMethodError, match="student has ref_padding 0 and the teacher 5"):
        build_kd_loss("at-public", DCCNNConfig(n_cascades=1, n_convs=3, channels=2), padded_t)


@pytest.mark.parametrize("name", NAMES)
def test_losses_read_only_the_feature_spec(name):
    """Any network whose config gives n_cascades, hidden_channels and border can be distilled: here maps of
    other widths per layer (student (3, 6), teacher (4, 5, 7, 6)) and a 2-pixel border on the teacher's."""
    from types import SimpleNamespace
    student_spec = SimpleNamespace(n_cascades=2, hidden_channels=(3, 6), border=0)
    teacher_spec = SimpleNamespace(n_cascades=2, hidden_channels=(4, 5, 7, 6), border=2)
    if name == "fsp":
        teacher_spec.hidden_channels = (4, 5, 7, 7)
        with pytest.raises(KDMethodError, match="fsp needs equal channels, but the student has 6 and the teacher 7"):
            build_kd_loss(name, student_spec, teacher_spec)
        teacher_spec.hidden_channels = (4, 5, 7, 6)
    if name == "at-public":
        with pytest.raises(KDMethodError, match="student has ref_padding 0 and the teacher 2"):
            build_kd_loss(name, student_spec, teacher_spec)
        teacher_spec.border = 0
    kd = build_kd_loss(name, student_spec, teacher_spec)
    gen = torch.Generator().manual_seed(1)
    pad = 2 * teacher_spec.border

    def feats(spec, pad):
        return [{"hidden": [torch.rand(3, c, SIZE + pad, SIZE + pad, generator=gen) for c in spec.hidden_channels],
                 "cnn_out": torch.rand(3, 1, SIZE, SIZE, generator=gen),
                 "out": torch.rand(3, 1, SIZE, SIZE, generator=gen)} for _ in range(spec.n_cascades)]
    student_feats, teacher_feats = feats(student_spec, 0), feats(teacher_spec, pad)
    for f in student_feats:
        f["hidden"] = [h.requires_grad_() for h in f["hidden"]]
        f["cnn_out"].requires_grad_()
    loss = kd(student_feats[-1]["out"], student_feats, teacher_feats[-1]["out"], teacher_feats)
    assert loss.shape == () and torch.isfinite(loss)
    if kd.teacher_hidden is not None:
        assert kd.keep_teacher_hidden() <= {0, 1, 2, 3}
    # Connectors map the student's conv2 width (6) to the teacher's conv3 width (7).
    if name == "vid":
        assert kd.regressors[0][0].weight.shape == (7, 6, 1, 1) and kd.variance_logits.shape == (2, 7)
    if name == "ab":
        assert kd.connectors[0][0].weight.shape == (7, 6, 1, 1)
    if name == "ft":
        assert kd.translators[0][0].weight.shape == (3, 6, 3, 3) and kd.encoders[0][0].weight.shape == (3, 7, 3, 3)
