"""Undersampling masks: parsing accelerations, seeded 1-D Cartesian row masks, loading a user's ``.npy`` mask."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from utils import UserError, atomic_write

_ACC_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)x$")


class AccelerationError(UserError):
    """An acceleration name that is not one, or one too high for the image."""


def parse_acc(acc: str) -> float:
    """Acceleration factor of a name such as ``"4x"`` or ``"6.5x"``; anything else is an
    :class:`AccelerationError`."""
    match = _ACC_PATTERN.match(str(acc))
    if not match or float(match.group(1)) < 1.0:
        raise AccelerationError(f"{acc!r} is not an acceleration: write a factor >= 1 followed by 'x', "
                                "e.g. 4x, 5x or 6.5x")
    return float(match.group(1))


def cartesian_row_mask(shape: tuple[int, int], acc: str, seed: int = 0,
                       center_fraction: float = 0.08) -> np.ndarray:
    """Seeded 1-D Cartesian mask that keeps whole phase-encode rows, in the unshifted convention.

    Exactly ``floor(H / acc)`` of the H rows are sampled (240 rows: 60 at 4x, 48 at 5x; 150 rows: 37 at
    4x, 30 at 5x, as in the public masks). A fully sampled low-frequency band of
    ``round(center_fraction * H)`` rows (at least 2) sits at **both ends** of the row axis, because the
    data is not fftshifted: ``ceil(n/2)`` rows from row 0 and ``floor(n/2)`` rows ending at row H-1.
    The remaining rows are drawn uniformly without replacement with ``numpy.random.default_rng(seed)``.

    Returns an (H, W) float32 array of {0, 1}; the same arguments always give the same mask.
    """
    height, width = shape
    n_rows = math.floor(height / parse_acc(acc))
    if n_rows < 2:
        raise AccelerationError(f"acceleration {acc} keeps fewer than 2 of {height} rows; use a smaller one")
    n_low = min(n_rows, max(2, round(center_fraction * height)))
    low = np.r_[np.arange(0, math.ceil(n_low / 2)), np.arange(height - n_low // 2, height)]
    rest = np.setdiff1d(np.arange(height), low)
    rng = np.random.default_rng(seed)
    random_rows = rng.choice(rest, size=n_rows - n_low, replace=False)
    mask = np.zeros((height, width), dtype=np.float32)
    mask[low] = 1.0
    mask[random_rows] = 1.0
    return mask


def validate_mask(mask: np.ndarray, source: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Check that ``mask`` is a usable (H, W) {0, 1} sampling mask and return it as float32.

    ``source`` names the mask in error messages; ``shape`` (H, W), when given, must match.
    """
    if mask.ndim != 2:
        raise UserError(f"mask {source} has shape {tuple(mask.shape)}; a 2-D (H, W) mask is required")
    if not np.isfinite(mask).all() or not np.isin(mask, (0, 1)).all():
        raise UserError(f"mask {source} is not binary: every value must be 0 or 1")
    if not mask.any():
        raise UserError(f"mask {source} samples nothing (all zero); it needs at least one sampled row")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise UserError(f"mask {source} is {mask.shape[0]}x{mask.shape[1]} but the slices are "
                        f"{shape[0]}x{shape[1]}; use a mask made for this data (data/prepare.py writes one)")
    return mask.astype(np.float32)


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Load and validate an (H, W) ``.npy`` mask; returns float32 {0, 1}. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask {path} does not exist; pass --mask FILE or run data/prepare.py, "
                        "which writes mask_{acc}.npy next to train/ and validation/")
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"mask {path} is not a readable .npy array ({exc})") from exc
    if mask.dtype == bool:
        mask = mask.astype(np.float32)
    if not np.issubdtype(mask.dtype, np.number) or np.iscomplexobj(mask):
        raise UserError(f"mask {path} has dtype {mask.dtype}; a real {{0, 1}} array is required")
    return validate_mask(mask, str(path), shape)


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Atomically write an (H, W) float32 mask as ``.npy``."""
    atomic_write(path, lambda f: np.save(f, mask.astype(np.float32)))
