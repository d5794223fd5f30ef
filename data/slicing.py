"""Slice geometry and selection for data/prepare.py: a volume (X, Y, Z) -> (N, N, S) float32 slices in [0, 1],
and which of those slices are kept."""
from __future__ import annotations

import zlib

import numpy as np

# A pixel counts as foreground above 5% of the volume maximum (1 after min-max scaling).
FOREGROUND_LEVEL = 0.05


def crop_or_pad(slices: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop or zero-pad each in-plane axis. slices: (H, W, S) -> (size, size, S), same dtype."""
    for axis in (0, 1):
        extent = slices.shape[axis]
        if extent > size:
            start = (extent - size) // 2
            slices = np.take(slices, np.arange(start, start + size), axis=axis)
        elif extent < size:
            widths = [(0, 0)] * slices.ndim
            widths[axis] = ((size - extent) // 2, size - extent - (size - extent) // 2)
            slices = np.pad(slices, widths)
    return slices


def resize_slices(slices: np.ndarray, size: int, square: int | None = None) -> np.ndarray:
    """Zero-pad (or crop) to a ``square`` x ``square`` field of view (default: the largest in-plane extent,
    which keeps the aspect ratio), then anti-aliased bilinear resize to (size, size, S).

    slices: (H, W, S) float64 in [0, 1]. Returns (size, size, S) float64 clipped to [0, 1]. Two volumes of one
    voxel size resized with the same ``square`` get the same millimetres per output pixel.
    """
    from skimage.transform import resize  # slow import, only --resize needs it
    square = crop_or_pad(slices, square or max(slices.shape[:2]))
    resized = resize(square, (size, size, slices.shape[2]), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(resized, 0.0, 1.0)


def fft_friendly(n: int) -> int:
    """Smallest integer >= ``n`` whose only prime factors are 2, 3 and 5 (e.g. 233 -> 240).

    Training runs 10 to 30 FFTs per step; a prime side such as the template's 233 makes each several
    times slower than a 5-smooth one. scipy's real-transform size is exactly that 5-smooth number.
    """
    from scipy.fft import next_fast_len
    return next_fast_len(n, real=True)


def make_slices(volume: np.ndarray, axis: int, size: int, resize: bool = False,
                pad_to: int | None = None) -> np.ndarray:
    """Volume (X, Y, Z) float -> (size, size, S) float32 slices in [0, 1], ``axis`` becoming the slice axis.

    Min-max scaling is per volume; a constant volume becomes all zeros (and all its slices are dropped).
    ``pad_to``: the square field of view of :func:`resize_slices` (with ``resize``).
    """
    low, high = float(volume.min()), float(volume.max())
    scaled = (volume - low) / (high - low) if high > low else np.zeros_like(volume)
    slices = np.moveaxis(scaled, axis, -1)
    slices = resize_slices(slices, size, pad_to) if resize else crop_or_pad(slices, size)
    return np.ascontiguousarray(slices, dtype=np.float32)


def window_slices(n_slices: int, window: tuple[int, int] | None) -> np.ndarray:
    """The slice indices (int64 (K,)) of ``range(n_slices)[start:stop]`` for ``window = (start, stop)``
    (``--slice-range``, Python's slice rules: negative counts from the end); all of them for None."""
    indices = np.arange(n_slices, dtype=np.int64)
    return indices if window is None else indices[slice(*window)]


def kept_slices(slices: np.ndarray, min_foreground: float, max_slices: int | None = None,
                candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of slices whose foreground fraction is at least ``min_foreground``; int64 (K,).

    slices: (H, W, S) float in [0, 1]. ``candidates`` (int64 indices, e.g. :func:`window_slices`) limits the
    choice; ``max_slices`` keeps only that many central ones of the kept slices.
    """
    fraction = (slices > FOREGROUND_LEVEL).mean(axis=(0, 1))
    # Even at --min-foreground 0 an all-zero slice goes: it holds nothing to reconstruct, and its PSNR
    # (data range 0) and NMSE (0 / 0) are undefined.
    kept = np.flatnonzero((fraction >= min_foreground) & (slices.max(axis=(0, 1)) > 0))
    if candidates is not None:
        kept = np.intersect1d(kept, candidates)
    if max_slices is not None and len(kept) > max_slices:
        start = (len(kept) - max_slices) // 2
        kept = kept[start:start + max_slices]
    return kept


def synthetic_phase(shape: tuple[int, int, int], seed: int, name: str, degree: int = 2) -> np.ndarray:
    """Unit phasors ``exp(i phi)`` of a smooth random phase per slice (``--synthetic-phase``, data/README.md).

    shape: (H, W, S). phi is a 2-D polynomial of total degree <= ``degree`` in x, y in [-1, 1] (the image's
    corners), its coefficients drawn N(0, (pi / 2)^2), so the phase drifts by a few radians across a slice, a
    smooth background phase as partial-Fourier methods model it. Slice s of volume ``name`` draws from
    ``(seed, crc32(name), s)`` alone, so its phase does not depend on the split or the other volumes.
    Returns (H, W, S) complex128.
    """
    height, width, n_slices = shape
    y, x = np.meshgrid(np.linspace(-1.0, 1.0, height), np.linspace(-1.0, 1.0, width), indexing="ij")
    monomials = np.stack([x ** i * y ** j for i in range(degree + 1) for j in range(degree + 1 - i)], axis=-1)
    phasors = np.empty(shape, dtype=np.complex128)
    for s in range(n_slices):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), s])
        coefficients = rng.normal(0.0, np.pi / 2, monomials.shape[-1])
        phasors[:, :, s] = np.exp(1j * (monomials @ coefficients))
    return phasors
