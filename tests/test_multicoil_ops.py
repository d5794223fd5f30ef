"""Tests of the multi-coil operators in data/fft.py: E (expand) and E^H (reduce) adjoint, sensitivity-weighted
DF keeping every coil's acquired k-space, and the one-coil unit-map case equal to the single-coil DF."""
from __future__ import annotations

import pytest
import torch

from data.fft import (coil_data_fidelity, data_fidelity, expand, fft2, reduce, to_channels, to_complex,
                      zero_filled)
from data.masks import cartesian_row_mask


def _complex(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g))


def _maps(batch, coils, size, seed=1):
    """(B, N, H, W) complex64 maps with sum_c |S_c|^2 = 1 at every pixel."""
    maps = _complex((batch, coils, size, size), seed)
    return maps / torch.linalg.vector_norm(maps, dim=1, keepdim=True)


def _mask(size, acc="4x"):
    return torch.from_numpy(cartesian_row_mask((size, size), acc, seed=0))[None, None]


def test_expand_reduce_adjoint():
    # <E x, k> = <x, E^H k>; in float64 the two sides agree to ~1e-12 relative (each is a sum of 10^4
    # rounded products), so 1e-10 leaves a wide margin while any wrong conjugate or scale misses by O(1).
    x = _complex((2, 1, 24, 20), 0).to(torch.complex128)
    k = _complex((2, 6, 24, 20), 2).to(torch.complex128)
    maps = _complex((2, 6, 24, 20), 3).to(torch.complex128)
    left = torch.vdot(expand(x, maps).flatten(), k.flatten())
    right = torch.vdot(x.flatten(), reduce(k, maps).flatten())
    assert abs(left - right) <= 1e-10 * abs(left)
    # float32: the same identity to float32 rounding of sums of ~10^4 terms.
    left32 = torch.vdot(expand(x.to(torch.complex64), maps.to(torch.complex64)).flatten(), k.to(torch.complex64).flatten())
    right32 = torch.vdot(x.to(torch.complex64).flatten(), reduce(k.to(torch.complex64), maps.to(torch.complex64)).flatten())
    assert abs(left32 - right32) <= 1e-4 * abs(left32)


def test_reduce_inverts_expand_with_normalised_maps():
    x = _complex((2, 1, 16, 16), 0)
    maps = _maps(2, 4, 16)
    assert torch.allclose(reduce(expand(x, maps), maps), x, atol=1e-5)


def test_df_keeps_every_coils_acquired_kspace():
    """Exactness holds in coil k-space, before the coils are combined: there DF is a where(). After reduce
    it is the projection of that k-space onto E's range, and expand(DF output) differs from y at sampled
    locations (a mix of acquired and predicted coil k-space is not the k-space of one image)."""
    size, coils = 16, 4
    maps, mask = _maps(2, coils, size), _mask(size)
    y = mask * expand(_complex((2, 1, size, size), 5), maps)
    x_cnn = _complex((2, 1, size, size), 6)
    coil_k = coil_data_fidelity(x_cnn, y, mask, maps)
    keep = (mask > 0.5).expand_as(y)
    assert torch.equal(coil_k[keep], y[keep])
    assert torch.equal(coil_k[~keep], expand(x_cnn, maps)[~keep])
    # The DF entry point is reduce of exactly that coil k-space.
    out = data_fidelity(to_channels(x_cnn), y, mask, maps)
    assert torch.allclose(to_complex(out), reduce(coil_k, maps), atol=1e-6)


def test_df_is_identity_on_consistent_images():
    """A CNN output equal to the truth passes DF unchanged (to float32 rounding): its coil k-space is y where
    sampled, so the replaced k-space lies in E's range."""
    size = 16
    maps, mask = _maps(1, 3, size), _mask(size)
    x_true = _complex((1, 1, size, size), 7)
    y = mask * expand(x_true, maps)
    out = to_complex(data_fidelity(to_channels(x_true), y, mask, maps))
    assert torch.allclose(out, x_true, atol=1e-5)


def test_one_coil_unit_maps_is_the_single_coil_df_bit_for_bit():
    size = 16
    mask = _mask(size)
    x_true = _complex((3, 1, size, size), 8)
    y = mask * fft2(x_true)
    x_cnn = to_channels(_complex((3, 1, size, size), 9))
    ones = torch.ones(3, 1, size, size, dtype=torch.complex64)
    assert torch.equal(data_fidelity(x_cnn, y, mask, ones), data_fidelity(x_cnn, y, mask))
    assert torch.equal(zero_filled(y, 2, ones), zero_filled(y, 2))


def test_multi_coil_df_refuses_magnitude_images():
    with pytest.raises(ValueError, match="complex"):
        data_fidelity(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8, dtype=torch.complex64),
                      torch.ones(1, 1, 8, 8), torch.ones(1, 2, 8, 8, dtype=torch.complex64))
