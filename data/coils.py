"""Coil sensitivities and coil compression over numpy arrays: birdcage maps to simulate coils, the autocalibration
(ACS) region of a line mask, ESPIRiT and ACS-over-RSS map estimation, SVD coil compression, root-sum-of-squares,
per-pixel phase alignment of maps, and the conversion between this project's unshifted k-space and sigpy's centred
one.

Conventions. Coil arrays are (N, H, W) (N coils) or (S, N, H, W) (S slices). k-space is in this project's
convention (data/fft.py): orthonormal, UNSHIFTED, DC at index [0, 0]; images have the object in the middle of the
array. sigpy (and BART) use the centred convention; :func:`to_centered` / :func:`from_centered` convert, and every
sigpy call here goes through them. Maps are complex64 with ``sum_c |S_c|^2 = 1`` wherever they are defined.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# The fewest contiguous lines through DC that count as an autocalibration region. Measured on 32 and 48 px birdcage
# simulations with 8 coils (tests/test_coils.py): with 3 lines ESPIRiT crops pixels inside the object to zero maps;
# from 4 lines it keeps them all, with a per-pixel map error of at most 0.22 (4 lines), 0.12 (5-6), 0.08 (7-8). The
# bands of data/masks.py's masks reach 4 rows from H = 44 at the default centre fraction of 0.08; the public masks
# have 9 to 12 lines, fastMRI's 4x / 8x files 15 or more. Smaller images need a larger --center-fraction.
MIN_ACS_LINES = 4

MAP_METHODS = ("espirit", "acs-rss")


# --------------------------------------------------------------------------- FFT conventions

def _half_shift_phase(n: int) -> np.ndarray:
    """(n,) complex128 ``exp(2 pi i k (n // 2) / n)``: the k-space factor of rolling an image by ``-(n // 2)``
    (``ifftshift``). Exactly (-1)^k for even n, so the conversion costs no rounding there."""
    k = np.arange(n)
    if n % 2 == 0:
        return (1 - 2 * (k % 2)).astype(np.complex128)
    return np.exp(2j * np.pi * k * (n // 2) / n)


def to_centered(kspace: np.ndarray) -> np.ndarray:
    """This project's unshifted k-space as sigpy's centred k-space of the SAME image.

    sigpy's ``fft(x) = fftshift(fftn(ifftshift(x)))`` shifts the image as well as k-space, so ``fftshift`` of our
    k-space alone would describe an image rolled by half the field of view; the ``ifftshift`` of the image is the
    k-space factor :func:`_half_shift_phase` on each axis. kspace: (..., H, W) complex. Returns (..., H, W), the
    input's complex dtype (complex64 for real input).
    """
    dtype = np.result_type(kspace.dtype, np.complex64)
    height, width = kspace.shape[-2:]
    phase = _half_shift_phase(height)[:, None] * _half_shift_phase(width)[None, :]
    return np.fft.fftshift(kspace * phase.astype(dtype), axes=(-2, -1)).astype(dtype, copy=False)


def from_centered(kspace_centered: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_centered`: sigpy's centred k-space as this project's unshifted k-space of the same
    image. kspace_centered: (..., H, W) complex. Returns (..., H, W), the input's complex dtype."""
    dtype = np.result_type(kspace_centered.dtype, np.complex64)
    height, width = kspace_centered.shape[-2:]
    phase = _half_shift_phase(height)[:, None] * _half_shift_phase(width)[None, :]
    return (np.fft.ifftshift(kspace_centered, axes=(-2, -1)) * np.conj(phase).astype(dtype)).astype(dtype,
                                                                                                    copy=False)


def fft2(image: np.ndarray) -> np.ndarray:
    """numpy twin of data/fft.py's ``fft2``: orthonormal unshifted 2-D FFT over the last two axes."""
    return np.fft.fft2(image, axes=(-2, -1), norm="ortho")


def ifft2(kspace: np.ndarray) -> np.ndarray:
    """numpy twin of data/fft.py's ``ifft2``: inverse of :func:`fft2`."""
    return np.fft.ifft2(kspace, axes=(-2, -1), norm="ortho")


# --------------------------------------------------------------------------- simulation and small tools

def birdcage_maps(n_coils: int, shape: tuple[int, int], radius: float = 1.5) -> np.ndarray:
    """Simulated sensitivities of ``n_coils`` coils evenly spaced on a birdcage (sigpy's ``birdcage_maps``).

    Coil c sits at angle ``2 pi c / N`` on a circle of ``radius`` times the half field of view around the image
    centre, with a magnitude falling as 1 / distance and a phase turning with the angle. The maps are renormalised
    in float64 to ``sum_c |S_c|^2 = 1`` at every pixel (the whole field of view), then cast.

    Returns (n_coils, H, W) complex64.
    """
    import sigpy.mri  # noqa: PLC0415 - sigpy (and numba under it) loads in seconds; only multi-coil work needs it
    if n_coils < 1:
        raise ValueError(f"n_coils must be at least 1, not {n_coils}")
    maps = sigpy.mri.birdcage_maps((n_coils, *shape), r=radius, dtype=np.complex128)
    return (maps / rss(maps, axis=0)).astype(np.complex64)


def rss(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Root-sum-of-squares ``sqrt(sum |x|^2)`` over ``axis`` (the coil axis). x: (..., N, ...) real or complex.
    Returns the real dtype of x (float32 for complex64), without ``axis``."""
    return np.sqrt(np.sum(np.abs(x) ** 2, axis=axis))


def align_phase(maps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``maps`` multiplied, at each pixel, by the unit phase ``e^{i theta}`` that brings it closest to
    ``reference``: ``theta = angle(sum_c conj(maps_c) reference_c)``, the minimiser of
    ``|| e^{i theta} maps(r) - reference(r) ||_2`` over the coil vector at pixel r.

    ESPIRiT determines maps only up to one phase per pixel (it normalises coil 0 to a real phase), and ACS-RSS maps
    carry the image's phase, so two maps are compared as ``|| align_phase(maps, ref) - ref ||_2`` over coils, per
    pixel; with unit-RSS maps that is the relative error of the map at that pixel. Where the inner product is 0 the
    phase is left unchanged.

    maps, reference: (N, H, W) complex (or (..., N, H, W), coils on axis -3). Returns maps' shape, complex64.
    """
    inner = np.sum(np.conj(maps) * reference, axis=-3, keepdims=True)
    magnitude = np.abs(inner)
    phase = np.divide(inner, magnitude, out=np.ones_like(inner), where=magnitude > 0)
    return (maps * phase).astype(np.complex64)


# --------------------------------------------------------------------------- the autocalibration region

class AcsRegion(NamedTuple):
    """The fully sampled block of lines through DC of a line mask: ``axis`` (0: rows, 1: columns) and ``offsets``,
    int64 signed line offsets from DC in increasing order (e.g. ``-4 .. 3``); the unshifted index of offset o is
    ``o % n``. Unpacks as ``axis, offsets = acs_region(mask)``."""

    axis: int
    offsets: np.ndarray

    @property
    def width(self) -> int:
        """The number of lines in the block."""
        return len(self.offsets)

    def lines_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: True on the ACS lines."""
        keep = np.zeros(shape, dtype=bool)
        index = self.offsets % shape[self.axis]
        if self.axis == 0:
            keep[index, :] = True
        else:
            keep[:, index] = True
        return keep


def acs_region(mask: np.ndarray, min_lines: int = MIN_ACS_LINES, source: str = "mask") -> AcsRegion:
    """The autocalibration region of an unshifted line mask (DC at index 0): the longest run of contiguous sampled
    lines through DC, wrapping around index 0 (e.g. rows 0..3 and H-4..H-1 are the block -4..3).

    Row masks (whole rows sampled: ``rows``, ``variable-density``, the public masks) give axis 0; column masks
    (fastMRI's) axis 1; a fully sampled mask is taken as a row mask whose block is every row. The block counts
    only lines sampled over their whole length.

    mask: (H, W) {0, 1} float or bool. Raises ValueError if the mask is not a line mask or if the block through DC
    has fewer than ``min_lines`` lines (DC unsampled included); the message reads
    ``{source} has no autocalibration region: ...``, so ``source="mask datasets/x/mask_4x.npy"`` makes it a
    complete ``error:`` line.
    """
    mask = np.asarray(mask) > 0.5
    if mask.ndim != 2:
        raise ValueError(f"{source} has no autocalibration region: it has shape {mask.shape}, not (H, W)")
    if (mask == mask[:, :1]).all():
        axis, lines = 0, mask[:, 0]
    elif (mask == mask[:1, :]).all():
        axis, lines = 1, mask[0, :]
    else:
        raise ValueError(f"{source} has no autocalibration region: it samples neither whole rows nor whole "
                         "columns; coil maps need a Cartesian line mask with a fully sampled centre")
    n = len(lines)
    if lines.all():
        return AcsRegion(axis, np.arange(-(n // 2), n - n // 2, dtype=np.int64))
    above = 0  # lines 0, 1, ... sampled
    while lines[above]:
        above += 1
    below = 0  # lines n-1, n-2, ... sampled
    while lines[n - 1 - below]:
        below += 1
    width = above + below
    if width < min_lines:
        name = ("rows", "columns")[axis]
        raise ValueError(f"{source} has no autocalibration region: only {width} contiguous {name} through DC are "
                         f"sampled and coil maps need at least {min_lines}; use a mask with a larger fully "
                         "sampled centre (--center-fraction)")
    return AcsRegion(axis, np.arange(-below, above, dtype=np.int64))


# --------------------------------------------------------------------------- coil sensitivity estimation

def estimate_maps(kspace_under: np.ndarray, mask: np.ndarray, method: str = "espirit", *,
                  thresh: float = 0.02, kernel_width: int = 6, crop: float = 0.95,
                  max_iter: int = 100, max_calib_width: int = 64, source: str = "mask") -> np.ndarray:
    """Coil sensitivity maps from the ACS region of one slice's undersampled k-space.

    - ``"espirit"``: ESPIRiT (Uecker et al., MRM 2014) through ``sigpy.mri.app.EspiritCalib``. sigpy calibrates
      on a centred square of side ``calib_width``; here that side is the ACS block's width, at most H, W and
      ``max_calib_width`` (the SVD's cost grows with the square's area, for little gain past sigpy's and BART's
      default of 24; data/README.md has timings). The block is rolled to sigpy's centre, so an off-centre block
      is used whole (the calibration matrix depends only on the block's values, not on where it sits); a block
      wider than the square gives its lines nearest DC. The kernel is ``(calib_width + 2) // 3`` wide, at most
      ``kernel_width`` (6, sigpy's and BART's default, reached from 16 lines): the square has ``(calib_width -
      kernel + 1)^2`` calibration rows, and a wide kernel on a narrow block leaves too few, so that pixels inside
      the object get eigenvalues below ``crop`` (measured on tests/test_coils.py's simulations). ``thresh`` (singular values
      kept above ``thresh`` times the largest) and ``crop`` (maps set to 0 where the top eigenvalue is below it:
      outside the object) are sigpy's defaults. The maps have unit RSS where not cropped; coil 0 has a real
      phase.
    - ``"acs-rss"``: DIRECT's default: the low-resolution coil images of the ACS lines alone (other lines
      zeroed), each divided by their RSS; unit RSS wherever that RSS is nonzero. The maps carry the image's
      phase and the ACS resolution.

    kspace_under: (N, H, W) complex, unshifted; mask: (H, W) {0, 1} line mask (see :func:`acs_region`, whose
    ValueError, naming ``source``, passes through). Returns (N, H, W) complex64.
    """
    mask = np.asarray(mask)
    if kspace_under.ndim != 3 or kspace_under.shape[-2:] != mask.shape:
        raise ValueError(f"kspace_under {kspace_under.shape} is not (N, H, W) with the mask's (H, W) "
                         f"{np.shape(mask)}")
    if method not in MAP_METHODS:
        raise ValueError(f"map method {method!r} is unknown; choose one of: {', '.join(MAP_METHODS)}")
    region = acs_region(mask, source=source)
    if method == "acs-rss":
        low = ifft2(np.where(region.lines_mask(mask.shape), kspace_under, 0))
        norm = rss(low, axis=0)
        return np.divide(low, norm, out=np.zeros_like(low), where=norm > 0).astype(np.complex64)
    import sigpy.mri  # noqa: PLC0415 - slow import, only for multi-coil work
    height, width = mask.shape
    calib_width = min(region.width, height, width, max_calib_width)
    first, last = int(region.offsets[0]), int(region.offsets[-1])
    start = min(max(-(calib_width // 2), first), last - calib_width + 1)  # the square's first line, from DC
    centered = to_centered(kspace_under.astype(np.complex64))
    n = mask.shape[region.axis]
    # sigpy crops centred indices n//2 - c//2 ...; the square's first line sits at n//2 + start.
    shift = -(calib_width // 2) - start
    centered = np.roll(centered, shift, axis=1 + region.axis) if shift % n else centered
    kernel = max(2, min(kernel_width, (calib_width + 2) // 3))
    maps = sigpy.mri.app.EspiritCalib(centered, calib_width=calib_width, thresh=thresh, kernel_width=kernel,
                                      crop=crop, max_iter=max_iter, show_pbar=False).run()
    return np.asarray(maps, dtype=np.complex64)


def estimate_volume_maps(kspace_under: np.ndarray, mask: np.ndarray, method: str = "espirit",
                         **options) -> np.ndarray:
    """:func:`estimate_maps` of each slice of a volume (maps are estimated per slice, as a scanner would).
    kspace_under: (S, N, H, W) complex; mask: (H, W). Returns (S, N, H, W) complex64."""
    if kspace_under.ndim != 4:
        raise ValueError(f"kspace_under {kspace_under.shape} is not (S, N, H, W)")
    return np.stack([estimate_maps(slice_kspace, mask, method, **options) for slice_kspace in kspace_under])


# --------------------------------------------------------------------------- coil compression

def compression_matrix(kspace: np.ndarray, k: int) -> np.ndarray:
    """The (k, N) complex64 SVD coil-compression matrix of one volume (Buehrer et al. 2007; Huang et al. 2008):
    the conjugated top-k left singular vectors of the (N, samples) matrix of all of the volume's k-space samples,
    so ``compressed = matrix @ coils`` keeps the most energy any k virtual coils can. Each vector's phase is fixed
    so its largest entry is real and positive (LAPACK leaves it free).

    kspace: (S, N, H, W) or (N, H, W) complex (unsampled zeros do not change the result). 1 <= k <= N.
    """
    n_coils = kspace.shape[-3]
    if not 1 <= k <= n_coils:
        raise ValueError(f"cannot compress {n_coils} coils to {k}: choose 1 <= k <= {n_coils}")
    samples = np.moveaxis(kspace, -3, 0).reshape(n_coils, -1).astype(np.complex128)
    covariance = samples @ samples.conj().T
    eigenvalues, vectors = np.linalg.eigh(covariance)  # ascending
    vectors = vectors[:, ::-1][:, :k]
    largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)]
    vectors = vectors * (np.abs(largest) / largest)
    return vectors.conj().T.astype(np.complex64)


def apply_compression(matrix: np.ndarray, coils: np.ndarray) -> np.ndarray:
    """Apply a (k, N) :func:`compression_matrix` across the coil axis (-3) of k-space, coil images or maps (all
    transform alike: compressed k-space is the FFT of ``matrix @ (maps * image)``). True maps compressed this way
    keep ``RSS <= 1``, with equality only where the map vector lies in the kept subspace.

    coils: (..., N, H, W) complex. Returns (..., k, H, W) complex64.
    """
    return np.einsum("kn,...nhw->...khw", matrix, coils.astype(np.complex64)).astype(np.complex64)


def coil_compress(kspace: np.ndarray, k: int) -> np.ndarray:
    """SVD coil compression of one volume to ``k`` virtual coils, one matrix for all its slices
    (:func:`compression_matrix`). Compress before estimating maps: maps estimated from the compressed k-space
    describe the virtual coils (simulated true maps go through :func:`apply_compression` with the same matrix).

    kspace: (S, N, H, W) or (N, H, W) complex. Returns (S, k, H, W) or (k, H, W) complex64.
    """
    return apply_compression(compression_matrix(kspace, k), kspace)
