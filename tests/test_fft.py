"""Tests of data/fft.py: the unshifted orthonormal FFT convention and the data-fidelity projection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.fft import data_fidelity, fft2, ifft2, zero_filled
from data.masks import cartesian_row_mask


def _image(shape, seed=0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _symmetric_row_mask(size: int, acc: str = "4x", seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) float32 row mask closed under k -> -k (row r sampled iff row (H - r) % H is).

    Re(ifft2(.)) projects k-space onto Hermitian-symmetric spectra, so DF reproduces the measured rows
    exactly only when every sampled row's mirror row is sampled too.
    """
    mask = cartesian_row_mask((size, size), acc, seed=seed)
    mirror = mask[(-np.arange(size)) % size]
    return torch.from_numpy(np.maximum(mask, mirror))[None, None]


def _measurement(size=32, batch=2, seed=0, mask=None):
    """Ground truth x (B,1,H,W), measured k-space y = m * F(x), mask m, and a CNN output x_cnn."""
    x_true = _image((batch, 1, size, size), seed)
    mask = _symmetric_row_mask(size) if mask is None else mask
    y = mask * fft2(x_true)
    x_cnn = _image((batch, 1, size, size), seed + 100)
    return x_true, y, mask, x_cnn


def test_round_trip():
    x = _image((3, 1, 32, 24))
    back = ifft2(fft2(x))
    assert back.dtype == torch.complex64
    assert torch.allclose(back.real, x, atol=1e-6)
    assert back.imag.abs().max() < 1e-6


def test_parseval_orthonormal():
    x = _image((2, 1, 32, 32), seed=1)
    k = fft2(x)
    assert torch.allclose(k.abs().pow(2).sum(dim=(-2, -1)), x.pow(2).sum(dim=(-2, -1)), rtol=1e-5)


def test_matches_numpy_ortho_unshifted():
    x = _image((32, 40), seed=2).double()
    ours = fft2(x).numpy()
    reference = np.fft.fft2(x.numpy(), norm="ortho")
    np.testing.assert_allclose(ours, reference, atol=1e-10)
    # Unshifted: DC at [0, 0] is the sum over sqrt(H W), not at the centre.
    assert ours[0, 0].real == pytest.approx(x.sum().item() / np.sqrt(32 * 40), rel=1e-12)
    assert abs(ours[16, 20]) < abs(ours[0, 0]) / 10


def test_batch_dims_preserved():
    x = _image((2, 3, 4, 16, 8))
    assert fft2(x).shape == (2, 3, 4, 16, 8)
    assert ifft2(fft2(x)).shape == (2, 3, 4, 16, 8)
    # Each batch entry is transformed on its own.
    assert torch.allclose(fft2(x)[1, 2, 3], fft2(x[1, 2, 3]), atol=1e-6)


def test_zero_filled_is_magnitude_of_ifft():
    _, y, _, _ = _measurement()
    zf = zero_filled(y)
    assert zf.dtype == torch.float32 and zf.shape == y.shape
    expected = np.abs(np.fft.ifft2(y.numpy(), norm="ortho"))
    np.testing.assert_allclose(zf.numpy(), expected, atol=1e-6)


def test_data_fidelity_keeps_measured_kspace():
    _, y, mask, x_cnn = _measurement()
    out = data_fidelity(x_cnn, y, mask)
    k_out = fft2(out)
    sampled = mask.expand_as(y).bool()
    assert sampled.any() and (~sampled).any()
    assert (k_out - y)[sampled].abs().max() < 1e-5
    assert (k_out - fft2(x_cnn))[~sampled].abs().max() < 1e-5
    # The CNN output itself disagrees with the measurement, so the check above is not vacuous.
    assert (fft2(x_cnn) - y)[sampled].abs().max() > 0.1


def test_data_fidelity_with_asymmetric_mask_is_hermitian_average():
    """With random rows (no mirror row), Re() averages k and conj(k at -k): DF is then not exactly consistent."""
    mask = torch.from_numpy(cartesian_row_mask((32, 32), "4x", seed=0))[None, None]
    rows = mask[0, 0, :, 0].numpy()
    unpaired = [r for r in range(32) if rows[r] and not rows[(-r) % 32]]
    assert unpaired, "the random mask should have a sampled row whose mirror is not sampled"
    _, y, _, x_cnn = _measurement(mask=mask)
    k_out = fft2(data_fidelity(x_cnn, y, mask))
    k_cnn = fft2(x_cnn)
    r = unpaired[0]
    expected = (y[..., r, :] + k_cnn[..., r, :]) / 2  # conj(y(-k)) is not measured; F(x_cnn) fills it
    assert torch.allclose(k_out[..., r, :], expected, atol=1e-5)


def test_data_fidelity_output_type_and_shape():
    _, y, mask, x_cnn = _measurement(batch=3)
    out = data_fidelity(x_cnn, y, mask)
    assert out.dtype == torch.float32 and out.shape == (3, 1, 32, 32)
    assert not out.is_complex() and out.is_contiguous()


def test_data_fidelity_full_mask_returns_measurement():
    x_true, _, _, x_cnn = _measurement()
    y = fft2(x_true)
    out = data_fidelity(x_cnn, y, torch.ones(1, 1, 32, 32))
    assert torch.equal(out, ifft2(y).real)
    assert torch.allclose(out, x_true, atol=1e-6)


def test_data_fidelity_float_and_bool_masks_agree():
    _, y, mask, x_cnn = _measurement()
    assert torch.equal(data_fidelity(x_cnn, y, mask), data_fidelity(x_cnn, y, mask.bool()))


def test_data_fidelity_equals_literal_formula():
    mask = torch.from_numpy(cartesian_row_mask((32, 32), "5x", seed=3))[None, None]
    _, y, _, x_cnn = _measurement(mask=mask, seed=4)
    literal = ifft2(mask * y + (1 - mask) * fft2(x_cnn)).real
    assert torch.allclose(data_fidelity(x_cnn, y, mask), literal, atol=1e-6)
    # Per-sample masks (B, 1, H, W) follow the same formula.
    masks = torch.cat([mask, _symmetric_row_mask(32, "4x", seed=1)])
    literal = ifft2(masks * y + (1 - masks) * fft2(x_cnn)).real
    assert torch.allclose(data_fidelity(x_cnn, y, masks), literal, atol=1e-6)
