"""Tests of models/nets/dccnn.py: sizes, shapes, features, the DF at the end of every cascade, options."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import assert_gradients_follow_df, dc_gradient_scale
from data.fft import data_fidelity, fft2, zero_filled
from data.masks import cartesian_row_mask
from models.nets.dccnn import STUDENT, TEACHER, ConvBlock, DCCNN, DCCNNConfig, count_parameters


def _inputs(height=32, width=32, batch=2, seed=0, symmetric=True):
    """zero_filled (B,1,H,W) float32, kspace_under (B,1,H,W) complex64, mask (B,1,H,W) float32.

    ``symmetric`` closes the row mask under k -> -k, which makes DF reproduce the measured rows exactly.
    """
    generator = torch.Generator().manual_seed(seed)
    x_true = torch.rand(batch, 1, height, width, generator=generator)
    mask = cartesian_row_mask((height, width), "4x", seed=seed)
    if symmetric:
        mask = np.maximum(mask, mask[(-np.arange(height)) % height])
    mask = torch.from_numpy(mask)[None, None].repeat(batch, 1, 1, 1)
    kspace = mask * fft2(x_true)
    return zero_filled(kspace), kspace, mask


def _model(config: DCCNNConfig, seed: int = 0) -> DCCNN:
    torch.manual_seed(seed)
    return DCCNN(config).eval()


def test_parameter_counts():
    assert count_parameters(DCCNN(TEACHER)) == 141_765
    assert count_parameters(DCCNN(STUDENT)) == 49_285
    assert count_parameters(DCCNN(DCCNNConfig(n_cascades=3, n_convs=5))) == 3 * 28_353
    assert round(141_765 / 49_285, 2) == 2.88  # the paper's "2.87 : 1" is this ratio truncated


def test_state_dict_names_follow_public_code():
    names = set(DCCNN(TEACHER).state_dict())
    assert "cascades.0.conv1.weight" in names and "cascades.4.conv5.bias" in names
    assert "cascades.0.conv4.weight" not in set(DCCNN(STUDENT).state_dict())
    assert len(names) == 5 * 5 * 2


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40)])
@pytest.mark.parametrize("config", [TEACHER, STUDENT])
def test_output_shape(config, height, width):
    zf, k, m = _inputs(height, width)
    with torch.no_grad():
        out = _model(config)(zf, k, m)
    assert out.shape == (2, 1, height, width) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("config, n_hidden", [(TEACHER, 4), (STUDENT, 2)])
def test_return_features(config, n_hidden):
    zf, k, m = _inputs(24, 40)
    model = _model(config)
    with torch.no_grad():
        out, features = model(zf, k, m, return_features=True)
        plain = model(zf, k, m)
    assert torch.equal(out, plain)
    assert len(features) == 5
    for feats in features:
        assert len(feats["hidden"]) == n_hidden
        for h in feats["hidden"]:
            assert h.shape == (2, 32, 24, 40)
            assert (h >= 0).all()  # taken after ReLU
        assert feats["cnn_out"].shape == (2, 1, 24, 40) and feats["out"].shape == (2, 1, 24, 40)
    assert torch.equal(features[-1]["out"], out)
    # Each cascade's output is DF of its own CNN output, and is the next cascade's input.
    for i, feats in enumerate(features):
        assert torch.allclose(feats["out"], data_fidelity(feats["cnn_out"], k, m), atol=1e-6)
        block_in = zf if i == 0 else features[i - 1]["out"]
        cnn_out, _ = model.cascades[i](block_in)
        assert torch.allclose(feats["cnn_out"], cnn_out, atol=1e-6)


def test_output_keeps_measured_kspace():
    zf, k, m = _inputs()
    model = _model(TEACHER)
    with torch.no_grad():
        out, features = model(zf, k, m, return_features=True)
    sampled = m.bool()
    assert (fft2(out) - k)[sampled].abs().max() < 1e-5
    cnn_k = fft2(features[-1]["cnn_out"])
    assert (fft2(out) - cnn_k)[~sampled].abs().max() < 1e-5
    # The last CNN output alone is not consistent: the DF step is what makes it so.
    assert (cnn_k - k)[sampled].abs().max() > 1e-3


def test_batch_items_are_independent():
    zf, k, m = _inputs(batch=3)
    model = _model(STUDENT)
    with torch.no_grad():
        together = model(zf, k, m)
        alone = model(zf[1:2], k[1:2], m[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-6)


def test_ref_padding_changes_border_only_inside_block():
    zf, k, m = _inputs()
    plain = _model(TEACHER, seed=3)
    padded = DCCNN(DCCNNConfig(ref_padding=5)).eval()
    padded.load_state_dict(plain.state_dict())
    with torch.no_grad():
        out_plain, f_plain = plain(zf, k, m, return_features=True)
        out_padded, f_padded = padded(zf, k, m, return_features=True)
    assert out_padded.shape == out_plain.shape == (2, 1, 32, 32)
    assert f_padded[0]["cnn_out"].shape == (2, 1, 32, 32)
    assert f_padded[0]["hidden"][0].shape == (2, 32, 42, 42)
    # 5 convolutions see 5 pixels: pixels further from the border than that do not change in cascade 1.
    c_plain, c_padded = f_plain[0]["cnn_out"], f_padded[0]["cnn_out"]
    assert torch.allclose(c_plain[..., 5:-5, 5:-5], c_padded[..., 5:-5, 5:-5], atol=1e-5)
    assert (c_plain[..., 0, :] - c_padded[..., 0, :]).abs().max() > 1e-4
    assert (out_plain - out_padded).abs().max() > 1e-4


def test_ref_padding_equals_manual_computation():
    zf, k, m = _inputs(24, 40)
    model = DCCNN(DCCNNConfig(n_convs=3, ref_padding=5)).eval()
    with torch.no_grad():
        out = model(zf, k, m)
        x = zf
        for block in model.cascades:
            cnn_out, _ = block(F.pad(x, (5, 5, 5, 5)))
            x = data_fidelity(cnn_out[..., 5:-5, 5:-5], k, m)
    assert torch.allclose(out, x, atol=1e-6)


def test_residual_adds_block_input():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    plain, residual = ConvBlock(3), ConvBlock(3, residual=True)
    residual.load_state_dict(plain.state_dict())
    out_plain, hidden_plain = plain(x)
    out_residual, hidden_residual = residual(x)
    assert torch.allclose(out_residual, out_plain + x, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(hidden_plain, hidden_residual))

    zf, k, m = _inputs()
    model = DCCNN(DCCNNConfig(n_convs=3, residual=True)).eval()
    reference = ConvBlock(3)
    reference.load_state_dict(model.cascades[0].state_dict())
    with torch.no_grad():
        _, features = model(zf, k, m, return_features=True)
        reference_out, _ = reference(zf)
    assert torch.allclose(features[0]["cnn_out"], reference_out + zf, atol=1e-6)


def test_conv_block_needs_two_convs():
    with pytest.raises(ValueError):
        ConvBlock(1)


def test_gradients_reach_every_parameter():
    zf, k, m = _inputs()
    model = DCCNN(STUDENT)
    target = torch.rand_like(zf)
    with dc_gradient_scale(model) as scale:
        F.l1_loss(model(zf, k, m), target).backward()
    # Every parameter but each cascade's last bias, whose gradient DF makes 0 (conftest.dc_only_parameters).
    assert_gradients_follow_df(model, m, scale)


def test_config_to_dict():
    assert TEACHER.to_dict() == {"kind": "dccnn", "n_cascades": 5, "n_convs": 5, "channels": 32,
                                 "residual": False, "ref_padding": 0}
