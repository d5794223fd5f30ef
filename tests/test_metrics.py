"""Tests of models/evaluation/metrics.py: the per-slice metrics against hand values, and the public code's volume metrics
against its formulas."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from models.evaluation.metrics import METRICS, PUBLIC_VOLUME_METRICS, hfen_log, laplacian_hfn, nmse, psnr, ssim, vif
from tests.conftest import ROOT, phantom


# --------------------------------------------------------------------------- metrics

def _images(size=32, seed=0, noise=0.05):
    target = phantom(size, 1, seed)[:, :, 0]
    rng = np.random.default_rng(seed + 1)
    return target, target + rng.normal(0.0, noise, target.shape)


def test_psnr_hand_value():
    target, recon = _images()
    mse = np.mean((target - recon) ** 2)
    assert psnr(target, recon) == pytest.approx(10 * np.log10(target.max() ** 2 / mse), rel=1e-9)
    # data_range is target.max(): scaling both images leaves PSNR unchanged.
    assert psnr(3 * target, 3 * recon) == pytest.approx(psnr(target, recon), rel=1e-9)


@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float64, np.float32), (np.float32, np.float64),
                                    (np.float64, np.float64), (np.float16, np.float32)])
def test_psnr_is_scikit_images_to_the_last_bit_without_importing_scipy_stats(dtypes):
    from skimage.metrics import peak_signal_noise_ratio
    rng = np.random.default_rng(3)
    for shape in ((32, 32), (3, 24, 40)):  # a slice, and a volume (fastMRI's volume PSNR)
        target = rng.random(shape).astype(dtypes[0])
        recon = (target + rng.normal(0, 0.05, shape)).astype(dtypes[1])
        assert psnr(target, recon) == float(peak_signal_noise_ratio(target, recon, data_range=float(target.max())))
    # scikit-image's module imports scipy.stats (~1 s), which each training process paid at its first validation.
    code = ("import sys, numpy as np; from models.evaluation.metrics import psnr, ssim; x = np.random.rand(16, 16); "
            "psnr(x, x / 2); ssim(x, x / 2); print('scipy.stats' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_nmse_hand_value():
    target = np.array([[1.0, 2.0], [3.0, 4.0]])
    recon = np.array([[1.0, 2.5], [2.0, 4.0]])
    assert nmse(target, recon) == pytest.approx((0.25 + 1.0) / 30.0, rel=1e-12)
    assert nmse(target, target) == 0.0


def test_ssim():
    target, recon = _images()
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < ssim(target, recon) < 0.95


def test_hfen_log():
    target, recon = _images()
    assert hfen_log(target, target) == 0.0
    value = hfen_log(target, recon)
    assert value > 0.1
    smooth_error = target + 0.05  # a constant offset has no high frequencies
    assert hfen_log(target, smooth_error) < 1e-6 < value


def test_vif_identity_and_padding_path():
    target, recon = _images(size=64)
    assert vif(target, target) == pytest.approx(1.0, abs=1e-4)
    small_target, small_recon = _images(size=32)
    assert vif(small_target, small_target) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < vif(small_target, small_recon) < 0.9
    non_square = vif(target[:40, :], recon[:40, :])
    assert 0.0 < non_square < 0.9


def test_vif_decreases_with_noise():
    target = phantom(64, 1, 3)[:, :, 0]
    rng = np.random.default_rng(0)
    unit_noise = rng.normal(0.0, 1.0, target.shape)
    values = [vif(target, target + sigma * unit_noise) for sigma in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)]
    assert values[0] == pytest.approx(1.0, abs=1e-4)
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.3
    # Intensity units do not matter.
    assert vif(100 * target, 100 * (target + 0.02 * unit_noise)) == pytest.approx(values[3], rel=1e-6)


def test_metric_registry():
    assert list(METRICS) == ["PSNR", "SSIM", "NMSE", "HFEN-LoG", "VIF"]
    target, recon = _images()
    assert METRICS["NMSE"](target, recon) == nmse(target, recon)



# --------------------------------------------------------------------------- the public code's volume metrics

def _laplacian(image: np.ndarray) -> np.ndarray:
    """The 3 x 3 five-point Laplacian with mirrored edges (scipy's 'reflect' is numpy's 'symmetric')."""
    p = np.pad(image, 1, mode="symmetric")
    return 4 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def _public_volume_case() -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W) float64 target whose slices fall in brightness (1 to 0.1) and a recon with per-slice noise
    (std 0.01 to 0.08) that leaves [0, 1] on the bright slices, so clipping and pooling both matter."""
    rng = np.random.default_rng(3)
    target = rng.uniform(0.2, 1.0, (3, 24, 24)) * np.array([1.0, 0.4, 0.1])[:, None, None]
    return target, target + rng.normal(0, 1, target.shape) * np.array([0.01, 0.03, 0.08])[:, None, None]


def test_public_volume_metrics_match_the_public_formulas():
    from skimage.metrics import structural_similarity
    target, recon = _public_volume_case()
    assert recon.max() > 1 and recon.min() < 0
    got = {name: fn(target, recon) for name, fn in PUBLIC_VOLUME_METRICS.items()}
    error = (target - recon) ** 2
    assert got["PSNR"] == pytest.approx(10 * np.log10(target.max() ** 2 / error.mean()), rel=1e-12)
    assert got["NMSE"] == pytest.approx(error.sum() / (target ** 2).sum(), rel=1e-12)
    # The public call: (H, W, S) with the slices as channels and the volume's maximum.
    hws = np.moveaxis(target, 0, -1), np.moveaxis(recon, 0, -1)
    assert got["SSIM"] == pytest.approx(structural_similarity(*hws, channel_axis=-1, data_range=target.max()),
                                        rel=1e-12)
    expected_hfn = np.mean([np.sum((_laplacian(t) - _laplacian(np.clip(r, 0, 1))) ** 2) / np.sum(_laplacian(t) ** 2)
                            for t, r in zip(target, recon)])
    assert got["HFN"] == pytest.approx(expected_hfn, rel=1e-12)
    # Built so that the per-slice set differs: slice maxima, per-slice means, LoG instead of the 3 x 3 Laplacian.
    assert abs(np.mean([psnr(t, r) for t, r in zip(target, recon)]) - got["PSNR"]) > 1.0
    assert abs(np.mean([ssim(t, r) for t, r in zip(target, recon)]) - got["SSIM"]) > 0.01
    assert abs(np.mean([hfen_log(t, r) for t, r in zip(target, recon)]) - got["HFN"]) > 0.1 * got["HFN"]
    unclipped = np.mean([np.sum((_laplacian(t) - _laplacian(r)) ** 2) / np.sum(_laplacian(t) ** 2)
                         for t, r in zip(target, recon)])
    assert unclipped != pytest.approx(got["HFN"], rel=1e-3)


def test_laplacian_hfn_leaves_out_flat_slices_and_checks_shapes():
    target, recon = _public_volume_case()
    target[1] = 0.5  # constant: its Laplacian is zero everywhere
    kept = laplacian_hfn(target[[0, 2]], recon[[0, 2]])
    assert laplacian_hfn(target, recon) == pytest.approx(kept, rel=1e-12)
    assert laplacian_hfn(target, target) == 0.0
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        laplacian_hfn(target[0], recon[0])
