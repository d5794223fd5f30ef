"""models/evaluation/cs.py: the CS (L1-wavelet) baseline through sigpy, single- and multi-coil, and the choice of
lambda on validation slices."""
from __future__ import annotations

import numpy as np
import pytest

from data.coils import birdcage_maps, fft2, ifft2
from data.masks import cartesian_row_mask
from models.evaluation.cs import choose_lambda, l1_wavelet_recon
from models.evaluation.metrics import psnr
from test_coils import simulate


def problem(n_coils: int, seed: int, size: int = 32):
    """(target (H, W) complex, kspace_under (N, H, W), mask (H, W), maps (N, H, W)) at 4x: the birdcage simulation
    of tests/test_coils.py with its true maps, or (n_coils = 1) the single-coil case with unit maps."""
    image, maps, kspace, _ = simulate(size, max(n_coils, 2), seed)
    if n_coils == 1:
        maps = np.ones((1, size, size), np.complex64)
        kspace = fft2(image)[None]
    mask = cartesian_row_mask((size, size), "4x", seed=seed, center_fraction=0.125)
    return image, kspace * mask, mask, maps


def zero_filled(kspace_under: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """E^H y = sum_c conj(S_c) ifft2(y_c): the zero-filled coil-combined image, (H, W) complex."""
    return np.sum(np.conj(maps) * ifft2(kspace_under), axis=0)


def score(target: np.ndarray, image: np.ndarray) -> float:
    return psnr(np.abs(target).astype(np.float32), np.abs(image).astype(np.float32))


@pytest.mark.parametrize("n_coils, lam, margin", [(8, 1e-4, 2.0), (1, 1e-3, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_cs_beats_zero_filled(n_coils, lam, margin, seed):
    # Measured (dB over zero-filled, seeds 0 / 1, 100 iterations): 8 coils +4.8 / +5.8 (8 coils at 4x determine the
    # image, SENSE, so CS removes most of the aliasing), 1 coil +1.1 / +1.6 (the wavelet prior alone, on a 32 px
    # image). The margins are under half of those. A wrong FFT convention gives a data term that contradicts the
    # image, and far less than zero-filled.
    target, kspace_under, mask, maps = problem(n_coils, seed)
    recon = l1_wavelet_recon(kspace_under, mask, maps, lam, iterations=100)
    assert recon.shape == (32, 32) and recon.dtype == np.complex64
    gain = score(target, recon) - score(target, zero_filled(kspace_under, maps))
    assert gain > margin, gain


@pytest.mark.parametrize("shape, n_coils", [((32, 32), 8), ((31, 33), 1), ((31, 33), 4)])
def test_full_mask_returns_the_image(shape, n_coils):
    # With every sample and unit-RSS maps, E^H E = I: the first step is the image itself, and soft-thresholding then
    # moves each wavelet coefficient by at most lam. Measured: 2e-7 of the maximum at lam = 0 (float32), 2.2 lam at
    # lam = 1e-4, on even and odd sizes (odd ones test the conversion's non-real phase).
    height, width = shape
    image = simulate(33, 2, seed=0)[0][:height, :width]
    maps = birdcage_maps(n_coils, shape) if n_coils > 1 else np.ones((1, *shape), np.complex64)
    kspace = fft2(maps * image)
    mask = np.ones(shape, np.float32)
    peak = np.abs(image).max()
    assert np.abs(l1_wavelet_recon(kspace, mask, maps, 0.0, iterations=5) - image).max() < 1e-5 * peak
    assert np.abs(l1_wavelet_recon(kspace, mask, maps, 1e-4, iterations=10) - image).max() < 1e-3 * peak


def test_choose_lambda_picks_the_best_candidate():
    slices = [problem(8, seed) for seed in (0, 1)]
    candidates = (1e-2, 1e-4, 1e-3)
    lam, table = choose_lambda(slices, candidates, iterations=30)
    assert [row["lambda"] for row in table] == list(candidates)
    assert lam in candidates
    best = max(row["psnr"] for row in table)
    assert next(row["psnr"] for row in table if row["lambda"] == lam) == best
    # The table's figure is the mean PSNR of that lambda over the slices; the same calls give the same numbers.
    mean = np.mean([score(t, l1_wavelet_recon(k, m, s, lam, 30)) for t, k, m, s in slices])
    assert mean == pytest.approx(best, abs=1e-9)
    assert choose_lambda(slices, candidates, iterations=30) == (lam, table)
    # A real difference between candidates: the choice matters (measured: 24.2, 25.1, 25.5 dB; 1e-3 chosen).
    assert best - min(row["psnr"] for row in table) > 0.5


def test_mismatched_shapes_raise():
    target, kspace_under, mask, maps = problem(8, 0)
    with pytest.raises(ValueError, match="must be"):
        l1_wavelet_recon(kspace_under, mask, maps[:4], 1e-3)
    with pytest.raises(ValueError, match="at least one"):
        choose_lambda([], (1e-3,))
