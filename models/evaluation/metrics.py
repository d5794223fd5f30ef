"""The image metrics evaluate.py and validation score with: the paper's per slice, fastMRI's per volume and the
public code's per volume, each a small function over numpy arrays, grouped in one name -> function table per
metric set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


# --------------------------------------------------------------------------- per-slice image metrics over (H, W) numpy images

def psnr(target: np.ndarray, recon: np.ndarray) -> float:
    """PSNR in dB of ``recon`` against ``target``, both (H, W) float, ``data_range = target.max()``; on
    (S, H, W) volumes one MSE over all voxels and the volume's maximum, fastMRI's volume PSNR.

    Per slice, that range is the public code's ``measures.py``; its ``evaluate.py`` scores whole volumes
    instead (:data:`PUBLIC_VOLUME_METRICS`), and which of the two made the paper's table is not stated.
    """
    # scikit-image's peak_signal_noise_ratio, step for step (its float type, its float64 mean), so the numbers are
    # the same to the last bit (tests/test_metrics.py): importing it imports scipy.stats, a slow import that each
    # training process would pay at its first validation.
    float_type = np.result_type(*[np.float32 if d == np.float16 else d if d.kind == "f" else np.float64
                                  for d in (target.dtype, recon.dtype)])
    err = np.mean((np.asarray(target, float_type) - np.asarray(recon, float_type)) ** 2, dtype=np.float64)
    return float(10 * np.log10(float(target.max()) ** 2 / err))


def ssim(target: np.ndarray, recon: np.ndarray) -> float:
    """SSIM (scikit-image defaults, 7x7 window) of (H, W) float images, ``data_range = target.max()``."""
    from skimage.metrics import structural_similarity
    return float(structural_similarity(target, recon, data_range=float(target.max())))


def nmse(target: np.ndarray, recon: np.ndarray) -> float:
    """Normalised MSE ``|target - recon|^2 / |target|^2`` of (H, W) float images; on (S, H, W) volumes, over
    all voxels: fastMRI's volume NMSE."""
    return float(np.sum((target - recon) ** 2) / np.sum(target ** 2))


def hfen_log(target: np.ndarray, recon: np.ndarray, sigma: float = 1.5) -> float:
    """High-frequency error norm with a Laplacian of Gaussian: ``|LoG(target) - LoG(recon)|^2 /
    |LoG(target)|^2``, (H, W) float.

    LoG is scipy's Gaussian-Laplace filter with ``sigma`` (the HFEN convention of Ravishankar & Bresler). This
    is not the public SFT-KD-Recon HFN, which uses a 3 x 3 Laplacian and clips the prediction: that one is
    :func:`laplacian_hfn`.
    """
    from scipy.ndimage import gaussian_laplace
    log_t = gaussian_laplace(target.astype(np.float64), sigma)
    log_r = gaussian_laplace(recon.astype(np.float64), sigma)
    return float(np.sum((log_t - log_r) ** 2) / np.sum(log_t ** 2))


def vif(target: np.ndarray, recon: np.ndarray) -> float:
    """Pixel-domain visual information fidelity (Sheikh & Bovik 2006) of (H, W) float images.

    Uses torchmetrics' implementation; images are scaled so that ``target.max()`` becomes 255 first, because
    its visual-noise variance (2.0) is calibrated for 8-bit images: on [0, 1] images that noise swamps every
    signal and VIF stays near 1 whatever the distortion. Images smaller than 41 x 41 (the largest Gaussian
    window) are reflect-padded. It runs in float32: torch's float64 convolutions with the 41 x 41 windows are
    over ten times slower, and float32 agrees to ~1e-6 relative.
    """
    import torch
    from torchmetrics.functional.image import visual_information_fidelity
    scale = 255.0 / (float(target.max()) or 1.0)
    t = torch.from_numpy((np.asarray(target, dtype=np.float64) * scale).astype(np.float32))[None, None]
    r = torch.from_numpy((np.asarray(recon, dtype=np.float64) * scale).astype(np.float32))[None, None]
    pad_h, pad_w = max(0, 41 - t.shape[-2]), max(0, 41 - t.shape[-1])
    if pad_h or pad_w:
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        t = torch.nn.functional.pad(t, pads, mode="reflect" if min(t.shape[-2:]) > max(pads) else "replicate")
        r = torch.nn.functional.pad(r, pads, mode="reflect" if min(r.shape[-2:]) > max(pads) else "replicate")
    return float(visual_information_fidelity(r, t))


@dataclass(frozen=True)
class Metric:
    """One per-slice metric of the registry: name (its CSV column), function(target, recon) -> float on (H, W)
    float arrays, the decimals and unit tables print it with, and where it is used: ``validation`` (logged by the
    training loop as ``val/{key}`` and in its epoch line), ``table`` (a column of scripts/report.py's table),
    ``contrasts`` (compared by scripts/study/contrasts.py). evaluate.py writes every metric to metrics.csv."""
    name: str
    function: Callable[[np.ndarray, np.ndarray], float]
    digits: int
    unit: str = ""
    validation: bool = False
    table: bool = False
    contrasts: bool = False

    @property
    def key(self) -> str:
        """Its name in validation logs, e.g. ``psnr``."""
        return self.name.lower()


# The metric registry: a new per-slice metric is one entry.
SLICE_METRICS: tuple[Metric, ...] = (
    Metric("PSNR", psnr, 2, "dB", validation=True, table=True, contrasts=True),
    Metric("SSIM", ssim, 4, validation=True, table=True, contrasts=True),
    Metric("NMSE", nmse, 4),
    Metric("HFEN-LoG", hfen_log, 4),
    Metric("VIF", vif, 4),
)


def used_for(purpose: str) -> tuple[Metric, ...]:
    """The registry's metrics with ``purpose`` (``"validation"``, ``"table"`` or ``"contrasts"``) set, in order."""
    return tuple(metric for metric in SLICE_METRICS if getattr(metric, purpose))


def metric(name: str) -> Metric:
    return next(m for m in SLICE_METRICS if m.name == name)


# The paper's metric set of evaluate.py (one CSV row per slice): every metric of the registry.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {m.name: m.function for m in SLICE_METRICS}


# --------------------------------------------------------------------------- fastMRI's per-volume metrics
# fastMRI's fastmri/evaluate.py scores one volume at a time, not one slice: its published baselines and
# leaderboards are means over volumes of these three numbers. A volume's error is pooled over all its voxels,
# so a volume-wise PSNR is not the mean of per-slice PSNRs (bright slices weigh more, and the peak is the
# volume's maximum, not each slice's). NMSE and PSNR are the per-slice functions above applied to the whole
# (S, H, W) volume; SSIM needs its own, being 2-D per slice.

def volume_ssim(target: np.ndarray, recon: np.ndarray) -> float:
    """fastMRI's SSIM of one volume: the mean over slices of 2-D SSIM, (S, H, W) float arrays.

    Every slice uses ``data_range = target.max()`` of the whole volume (not of the slice) and otherwise
    scikit-image's defaults (7x7 uniform window, K1 0.01, K2 0.03, sample covariance), as fastMRI passes
    nothing else. A slice that is all zero in the target still counts, as in fastMRI.
    """
    from skimage.metrics import structural_similarity
    if target.ndim != 3 or target.shape != recon.shape:
        raise ValueError(f"volume_ssim needs two (S, H, W) arrays of one shape, got {target.shape} and "
                         f"{recon.shape}")
    data_range = float(target.max())
    return float(np.mean([structural_similarity(t, r, data_range=data_range) for t, r in zip(target, recon)]))


FASTMRI_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "NMSE": nmse, "PSNR": psnr, "SSIM": volume_ssim,
}


# --------------------------------------------------------------------------- the public code's per-volume metrics
# The public SFT-KD-Recon code has two scoring scripts. git_cardiac/measures.py scores slices with each slice's
# maximum: that is METRICS' PSNR, SSIM and NMSE. git_cardiac/evaluate.py (run by evaluate.sh) scores volumes:
# PSNR and NMSE from one error over the whole (H, W, S) volume and its maximum, SSIM with the slices as
# channels (scikit-image then averages the per-slice SSIMs, each with the volume's maximum: volume_ssim),
# and HFN below; then the mean over volumes. Which script made the paper's table is not stated.

def laplacian_hfn(target: np.ndarray, recon: np.ndarray) -> float:
    """The public evaluate.py's HFN of one volume, target and recon (S, H, W) float: the mean over slices of
    ``|L(target) - L(clip(recon, 0, 1))|^2 / |L(target)|^2``, L being ``skimage.filters.laplace`` (3 x 3).

    The prediction is clipped to [0, 1] for this metric only, as there. A slice whose target Laplacian is
    all zero (an empty or constant slice) is left out of the mean; the public script would return NaN or
    inf for the whole volume. Computed in float64 (the public script ran on the float32 arrays it read).
    """
    from skimage.filters import laplace
    if target.ndim != 3 or target.shape != recon.shape:
        raise ValueError(f"laplacian_hfn needs two (S, H, W) arrays of one shape, got {target.shape} and "
                         f"{recon.shape}")
    ratios = []
    for target_slice, recon_slice in zip(target.astype(np.float64), recon.astype(np.float64)):
        edges = laplace(target_slice)
        energy = np.sum(edges ** 2)
        if energy > 0:
            ratios.append(np.sum((edges - laplace(np.clip(recon_slice, 0.0, 1.0))) ** 2) / energy)
    return float(np.mean(ratios)) if ratios else float("nan")


PUBLIC_VOLUME_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "NMSE": nmse, "PSNR": psnr, "SSIM": volume_ssim, "HFN": laplacian_hfn,
}
