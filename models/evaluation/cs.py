"""The classical baseline row "CS (L1-wavelet)": compressed-sensing SENSE reconstruction with an l1 penalty on
Daubechies-4 wavelet coefficients (Lustig et al., MRM 2007) through sigpy's ``L1WaveletRecon``, and the choice of
its lambda on validation slices."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from data.coils import rss, to_centered
from models.evaluation.metrics import psnr

CS_ROW = "CS (L1-wavelet)"
# The lambdas choose_lambda tries by default: a half-decade grid for images scaled to max |x| = 1, as data/prepare.py
# writes them (lambda is in image units). On the noise-free 4x simulations of tests/test_cs.py the best is 1e-3 for
# one coil and 1e-4 or lower for 8 coils (the coils alone nearly determine the image); noise moves it up.
LAMBDA_CANDIDATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def l1_wavelet_recon(kspace_under: np.ndarray, mask: np.ndarray, maps: np.ndarray, lam: float,
                     iterations: int = 100) -> np.ndarray:
    """``argmin_x 1/2 || M F S x - y ||_2^2 + lam || W x ||_1`` by FISTA (sigpy's ``L1WaveletRecon``).

    The k-space is converted to sigpy's centred convention (data/coils.to_centered) with the mask, so the image
    comes back in this project's orientation. The step is ``1 / max_pixel(RSS(maps))^2``, a bound on the
    Lipschitz constant of the data term (``|| M F S x ||^2 <= sum_c || S_c x ||^2``), instead of sigpy's power
    iteration, which starts from an unseeded random vector; so the result is deterministic and, with unit-RSS
    maps, the step is 1. ``lam`` is in the units of the image (this project's images are scaled to about [0, 1]);
    single-coil data is N = 1 with maps all ones.

    kspace_under: (N, H, W) complex, unshifted, zero where not sampled; mask: (H, W) {0, 1}, the sampled
    locations; maps: (N, H, W) complex. Returns the (H, W) complex64 coil-combined image.
    """
    import sigpy.mri  # noqa: PLC0415 - slow import (numba), only the CS row needs it
    kspace_under = np.asarray(kspace_under)
    maps = np.asarray(maps)
    if kspace_under.ndim != 3 or maps.shape != kspace_under.shape or kspace_under.shape[-2:] != np.shape(mask):
        raise ValueError(f"kspace_under {kspace_under.shape}, maps {np.shape(maps)} and mask {np.shape(mask)} "
                         "must be (N, H, W), (N, H, W) and (H, W)")
    weights = np.fft.fftshift(np.asarray(mask, dtype=np.float32) > 0.5).astype(np.complex64)
    y = to_centered(kspace_under.astype(np.complex64)) * weights
    lipschitz = float(rss(maps, axis=0).max()) ** 2
    if lipschitz == 0:
        raise ValueError("the coil maps are zero everywhere")
    app = sigpy.mri.app.L1WaveletRecon(y, maps.astype(np.complex64), lam, weights=weights, max_iter=iterations,
                                       alpha=1.0 / lipschitz, show_pbar=False)
    return np.asarray(app.run(), dtype=np.complex64)


def choose_lambda(slices: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                  candidates: Sequence[float] = LAMBDA_CANDIDATES,
                  iterations: int = 100) -> tuple[float, list[dict]]:
    """The lambda of :func:`l1_wavelet_recon` with the best mean PSNR over validation ``slices``.

    slices: (target, kspace_under, mask, maps) per slice: target (H, W), the reference image (real or complex;
    scored as magnitude, PSNR with the target's maximum as data range, models/evaluation/metrics.psnr), the others
    as :func:`l1_wavelet_recon` takes them. candidates: the lambdas to try (default :data:`LAMBDA_CANDIDATES`);
    each costs one reconstruction per slice.

    Returns ``(lam, table)``: the chosen candidate (ties go to the earliest) and, in candidate order, one
    ``{"lambda": float, "psnr": mean dB}`` per candidate, JSON-able to record beside the result.
    """
    slices = list(slices)
    if not slices or not len(candidates):
        raise ValueError("choose_lambda needs at least one validation slice and one candidate lambda")
    table = []
    for lam in candidates:
        scores = [psnr(np.abs(target).astype(np.float32),
                       np.abs(l1_wavelet_recon(kspace, mask, maps, lam, iterations)).astype(np.float32))
                  for target, kspace, mask, maps in slices]
        table.append({"lambda": float(lam), "psnr": float(np.mean(scores))})
    best = max(range(len(table)), key=lambda i: (table[i]["psnr"], -i))
    return table[best]["lambda"], table
