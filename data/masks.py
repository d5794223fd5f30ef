"""Undersampling masks: parsing accelerations, the public SFT-KD-Recon masks (shipped data), seeded 1-D
Cartesian masks (uniform rows, variable-density rows, fastMRI's random and equispaced columns), loading a
user's ``.npy`` mask."""
from __future__ import annotations

import argparse
import hashlib
import math
import re
from pathlib import Path

import numpy as np

from data.outputs import atomic_write
from utils import UserError, not_a_file

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


def acc_type(text: str) -> str:
    """``--acc``: an acceleration name such as ``4x`` or ``6.5x`` (kept as the name)."""
    try:
        parse_acc(text)
    except AccelerationError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def cartesian_row_mask(shape: tuple[int, int], acc: str, seed: int = 0,
                       center_fraction: float = 0.08) -> np.ndarray:
    """Seeded 1-D Cartesian mask that keeps whole phase-encode rows, in the unshifted convention: a fixed
    low-frequency band plus uniformly drawn rows (``--mask-kind rows``).

    Exactly ``floor(H / acc)`` of the H rows are sampled (240 rows: 60 at 4x, 48 at 5x; 150 rows: 37 at
    4x, 30 at 5x, the counts of the public masks, which are variable density and are :func:`public_mask`).
    A fully sampled low-frequency band of ``round(center_fraction * H)`` rows (at least 2) sits at **both
    ends** of the row axis, because the data is not fftshifted: ``ceil(n/2)`` rows from row 0 and
    ``floor(n/2)`` rows ending at row H-1. The remaining rows are drawn uniformly without replacement with
    ``numpy.random.default_rng(seed)``.

    Returns an (H, W) float32 array of {0, 1}; the same arguments always give the same mask.
    """
    height, width = shape
    n_rows, low = _row_budget(height, acc, center_fraction)
    n_low = len(low)
    rest = np.setdiff1d(np.arange(height), low)
    rng = np.random.default_rng(seed)
    random_rows = rng.choice(rest, size=n_rows - n_low, replace=False)
    mask = np.zeros((height, width), dtype=np.float32)
    mask[low] = 1.0
    mask[random_rows] = 1.0
    return mask


def _row_budget(height: int, acc: str, center_fraction: float) -> tuple[int, np.ndarray]:
    """``floor(height / acc)`` rows to sample and the int64 indices of the fully sampled low-frequency band:
    ``round(center_fraction * height)`` rows (at least 2, at most the budget), ``ceil(n/2)`` from row 0 and
    ``floor(n/2)`` ending at row ``height - 1`` (unshifted: DC is row 0)."""
    n_rows = math.floor(height / parse_acc(acc))
    if n_rows < 2:
        raise AccelerationError(f"acceleration {acc} keeps fewer than 2 of {height} rows; use a smaller one")
    n_low = min(n_rows, max(2, round(center_fraction * height)))
    return n_rows, np.r_[np.arange(0, math.ceil(n_low / 2)), np.arange(height - n_low // 2, height)]


def variable_density_row_mask(shape: tuple[int, int], acc: str, seed: int = 0,
                              center_fraction: float = 0.08) -> np.ndarray:
    """Seeded variable-density 1-D Cartesian mask of whole rows, unshifted (``--mask-kind variable-density``),
    for sizes the public masks do not cover.

    Exactly ``floor(H / acc)`` rows: the low-frequency band of :func:`cartesian_row_mask`, then the other rows
    drawn without replacement with probability proportional to ``exp(-d^2 / (2 (H / 10)^2)) + 1 / (2 acc)``,
    d = ``min(r, H - r)`` the row's distance from DC: the Gaussian density with a uniform floor of the
    Cartesian masks in DC-CNN work (Schlemper et al. 2018), so rows near DC are denser, as in the public masks.
    It is a mask of the same family, not a copy of theirs. Drawn with ``numpy.random.default_rng(seed)``.

    Returns an (H, W) float32 array of {0, 1}; the same arguments always give the same mask.
    """
    height, width = shape
    n_rows, low = _row_budget(height, acc, center_fraction)
    rows = np.arange(height)
    distance = np.minimum(rows, height - rows)
    density = np.exp(-0.5 * (distance / (height / 10)) ** 2) + 1 / (2 * parse_acc(acc))
    density[low] = 0.0
    drawn = np.random.default_rng(seed).choice(height, size=n_rows - len(low), replace=False,
                                               p=density / density.sum())
    mask = np.zeros((height, width), dtype=np.float32)
    mask[low] = 1.0
    mask[drawn] = 1.0
    return mask


class MaskError(UserError):
    """Mask parameters that cannot give a mask: an unknown kind, a centre fraction that does not fit, or a
    geometry the public masks do not cover."""


PUBLIC_MASK_DIR = Path(__file__).resolve().parent / "public_masks"
# Image side -> folder of the public masks (MRBrainS slices are 240 x 240, ACDC's 150 x 150).
PUBLIC_MASK_SIZES = {240: "brain", 150: "cardiac"}
PUBLIC_MASK_ACCS = {4.0: "4x", 5.0: "5x"}


def public_mask(shape: tuple[int, int], acc: str) -> np.ndarray:
    """The public SFT-KD-Recon mask for ``shape`` and ``acc`` (``--mask-kind public``), as an (H, W) float32
    {0, 1} array equal to the public float64 file (``data/public_masks/``, checked against ``SHA256SUMS``).

    Only 240 x 240 (brain) and 150 x 150 (cardiac) at 4x and 5x exist; anything else is a :class:`MaskError`.
    """
    folder = PUBLIC_MASK_SIZES.get(shape[0]) if shape[0] == shape[1] else None
    name = PUBLIC_MASK_ACCS.get(parse_acc(acc))
    if folder is None or name is None:
        raise MaskError(f"the public masks exist only for 240x240 (MRBrainS) and 150x150 (ACDC) slices at 4x "
                        f"and 5x, not {shape[0]}x{shape[1]} at {acc}; use --mask-kind variable-density (or rows) "
                        "for other sizes")
    relative = f"{folder}/mask_{name}.npy"
    path = PUBLIC_MASK_DIR / relative
    expected = dict(line.split()[::-1] for line in (PUBLIC_MASK_DIR / "SHA256SUMS").read_text().splitlines())
    if hashlib.sha256(path.read_bytes()).hexdigest() != expected[relative]:
        raise MaskError(f"{path} differs from the public mask (its SHA-256 is not the one in SHA256SUMS); "
                        "restore it with git checkout")
    return validate_mask(np.load(path, allow_pickle=False), str(path), shape)


def _center_band(n_lines: int, n_center: int) -> np.ndarray:
    """Centred-order (DC at index ``n_lines // 2``) bool (n_lines,) line selection of fastMRI's fully sampled
    centre: ``n_center`` lines starting at ``(n_lines - n_center + 1) // 2``, which always holds the DC line."""
    band = np.zeros(n_lines, dtype=bool)
    start = (n_lines - n_center + 1) // 2
    band[start:start + n_center] = True
    return band


def _center_lines(n_lines: int, acc: str, center_fraction: float) -> int:
    """``round(n_lines * center_fraction)``, checked to be at least one line and fewer than ``n_lines / acc``."""
    n_center = round(n_lines * center_fraction)
    if n_center < 1:
        raise MaskError(f"a centre fraction of {center_fraction} keeps no line of {n_lines}; raise it "
                        f"(fastMRI: 0.08 at 4x, 0.04 at 8x)")
    if n_center >= n_lines / parse_acc(acc):
        raise MaskError(f"a centre fraction of {center_fraction} alone samples {n_center} of {n_lines} lines, "
                        f"not fewer than the {n_lines / parse_acc(acc):g} of acceleration {acc}; lower it")
    return n_center


def fastmri_random_lines(n_lines: int, acc: str, rng: np.random.Generator,
                         center_fraction: float = 0.08) -> np.ndarray:
    """fastMRI's ``RandomMaskFunc`` line selection, in centred order: bool (n_lines,).

    The centre band is always sampled; every other line is sampled with probability
    ``(n_lines / acc - n_center) / (n_lines - n_center)``, so the number of lines is random and equals
    ``n_lines / acc`` only in expectation. One ``rng.random(n_lines)`` draw decides all lines.
    """
    n_center = _center_lines(n_lines, acc, center_fraction)
    probability = (n_lines / parse_acc(acc) - n_center) / (n_lines - n_center)
    return (rng.random(n_lines) < probability) | _center_band(n_lines, n_center)


def fastmri_equispaced_lines(n_lines: int, acc: str, rng: np.random.Generator,
                             center_fraction: float = 0.08) -> np.ndarray:
    """fastMRI's equispaced line selection that matches the acceleration, in centred order: bool (n_lines,).

    This is ``EquispacedMaskFractionFunc`` (named ``EquispacedMaskFunc`` up to fastMRI 0.1; fastMRI keeps it to
    match its public multi-coil data), not the newer ``EquiSpacedMaskFunc`` whose exact spacing ``acc``
    undershoots the acceleration.

    Besides the centre band, lines ``round(offset + k * spacing)`` for ``k = 0, 1, ...`` below ``n_lines - 1``
    are sampled, with ``spacing = acc * (n_lines - n_center) / (n_lines - n_center * acc)`` (wider than ``acc``
    because the centre band already holds some of the budget) and an offset drawn from
    ``0 .. round(spacing) - 1``, so the total is ``n_lines / acc`` up to rounding and the band's overlap.
    """
    n_center = _center_lines(n_lines, acc, center_fraction)
    factor = parse_acc(acc)
    spacing = factor * (n_lines - n_center) / (n_lines - n_center * factor)
    offset = int(rng.integers(0, round(spacing)))
    lines = _center_band(n_lines, n_center)
    lines[np.rint(np.arange(offset, n_lines - 1, spacing)).astype(np.int64)] = True
    return lines


FASTMRI_LINES = {"fastmri-random": fastmri_random_lines, "fastmri-equispaced": fastmri_equispaced_lines}
MASK_KINDS = ("rows", "public", "variable-density", *FASTMRI_LINES)


def fastmri_column_mask(shape: tuple[int, int], acc: str, kind: str = "fastmri-random", seed: int = 0,
                        center_fraction: float = 0.08) -> np.ndarray:
    """A fastMRI Cartesian mask (``kind`` ``fastmri-random`` or ``fastmri-equispaced``) in this project's
    unshifted convention: returns an (H, W) float32 array of {0, 1} that keeps **whole columns**.

    fastMRI undersamples the phase-encoding direction, the last (W) axis of its k-space (the columns of a knee
    slice; every row of a column is read out), and draws its masks in centred k-space, where DC is column
    ``W // 2``. ``ifftshift`` moves that column to 0, the unshifted layout of ``data/fft.py``: the fully
    sampled centre band becomes columns ``0 ..`` and ``.. W - 1``. The lines are drawn with
    ``numpy.random.default_rng(seed)`` (fastMRI seeds a ``RandomState``: same rules, other draws).
    """
    if kind not in FASTMRI_LINES:
        raise MaskError(f"mask kind {kind!r} is not a fastMRI kind; choose one of: {', '.join(FASTMRI_LINES)}")
    height, width = shape
    centered = FASTMRI_LINES[kind](width, acc, np.random.default_rng(seed), center_fraction)
    mask = np.zeros((height, width), dtype=np.float32)
    mask[:, np.fft.ifftshift(centered)] = 1.0
    return mask


def make_mask(shape: tuple[int, int], acc: str, kind: str = "rows", seed: int = 0,
              center_fraction: float = 0.08) -> np.ndarray:
    """The (H, W) float32 {0, 1} unshifted mask of ``kind`` (see :data:`MASK_KINDS`): ``rows`` is
    :func:`cartesian_row_mask`, ``public`` :func:`public_mask` (the public SFT-KD-Recon files; seed and centre
    fraction do not apply), ``variable-density`` :func:`variable_density_row_mask`, the others
    :func:`fastmri_column_mask`."""
    if kind == "rows":
        return cartesian_row_mask(shape, acc, seed=seed, center_fraction=center_fraction)
    if kind == "public":
        return public_mask(shape, acc)
    if kind == "variable-density":
        return variable_density_row_mask(shape, acc, seed=seed, center_fraction=center_fraction)
    if kind in FASTMRI_LINES:
        return fastmri_column_mask(shape, acc, kind, seed=seed, center_fraction=center_fraction)
    raise MaskError(f"mask kind {kind!r} is unknown; choose one of: {', '.join(MASK_KINDS)}")


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
    if not path.is_file():  # opening a FIFO would wait forever for a writer
        raise UserError(f"mask {path} {not_a_file(path)}; pass --mask FILE or run data/prepare.py, "
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


def mask_lines(mask: np.ndarray) -> str:
    """The sampling pattern of an (H, W) {0, 1} mask: ``"rows"`` (whole rows sampled: every kind of
    data/prepare.py but the fastMRI ones), ``"columns"`` (whole columns: fastMRI's) or ``"2-D"`` (anything
    else). A network learns to undo one pattern's aliasing, so evaluate.py compares it with the training's."""
    if (mask == mask[:, :1]).all():
        return "rows"
    if (mask == mask[:1, :]).all():
        return "columns"
    return "2-D"


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Atomically write an (H, W) float32 mask as ``.npy``."""
    atomic_write(path, lambda f: np.save(f, mask.astype(np.float32)))
