"""data/coils.py: the FFT-convention conversion for sigpy, birdcage maps, the ACS detector, ESPIRiT and ACS-RSS maps
against the true maps of a birdcage simulation, and SVD coil compression."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import phantom
from data.coils import (MIN_ACS_LINES, acs_region, align_phase, apply_compression, birdcage_maps, coil_compress,
                        compression_matrix, estimate_maps, estimate_volume_maps, fft2, from_centered, ifft2, rss,
                        to_centered)
from data.masks import (cartesian_row_mask, fastmri_column_mask, make_mask, public_mask,
                        variable_density_row_mask)
from data.slicing import synthetic_phase


def simulate(size: int, n_coils: int, seed: int = 0):
    """A birdcage simulation: returns (image (H, W) complex128, true maps (N, H, W) complex64, fully sampled coil
    k-space (N, H, W) complex128 in the unshifted convention, object (H, W) bool).

    The image is the smooth phantom plus 0.5 on an elliptical support well inside the field of view, times a
    smooth synthetic phase: an object with edges and background, as in a scan. (ESPIRiT's maps are periodic
    smooth functions, so an object touching the field of view's edge, where the birdcage maps are not periodic,
    would be an unfair test.) The object is where |image| > 0.1 max: the support."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    support = np.hypot(yy, 1.2 * xx) < 0.33
    image = (support * (0.5 + phantom(size, 1, seed)[:, :, 0])
             * synthetic_phase((size, size, 1), seed, "coils")[:, :, 0])
    maps = birdcage_maps(n_coils, (size, size))
    return image, maps, fft2(maps * image), np.abs(image) > 0.1 * np.abs(image).max()


def map_error(maps: np.ndarray, true_maps: np.ndarray) -> np.ndarray:
    """(H, W) per-pixel ||align_phase(maps, true) - true||_2 over coils: the relative error of unit-RSS maps."""
    return rss(align_phase(maps, true_maps) - true_maps, axis=0)


# --------------------------------------------------------------------------- conventions and small tools

@pytest.mark.parametrize("shape", [(8, 8), (9, 7), (16, 12)])
def test_centered_conversion_is_sigpys_fft_of_the_same_image(shape):
    import sigpy
    image = np.random.default_rng(0).standard_normal((3, *shape)) + 1j * np.random.default_rng(1).standard_normal(
        (3, *shape))
    ours = fft2(image)
    # Both are float64 FFTs of the same image; only rounding separates them.
    np.testing.assert_allclose(to_centered(ours), sigpy.fft(image, axes=(-2, -1)), atol=1e-12)
    np.testing.assert_allclose(from_centered(sigpy.fft(image, axes=(-2, -1))), ours, atol=1e-12)
    np.testing.assert_allclose(ifft2(from_centered(to_centered(ours))), image, atol=1e-12)
    assert to_centered(ours.astype(np.complex64)).dtype == np.complex64


def test_birdcage_maps_have_unit_rss_everywhere():
    maps = birdcage_maps(6, (24, 20))
    assert maps.shape == (6, 24, 20) and maps.dtype == np.complex64
    np.testing.assert_allclose(rss(maps), 1.0, atol=1e-6)  # float32 rounding of a float64 normalisation
    # Coils differ: each is strongest on its own side of the image.
    assert len({np.unravel_index(np.argmax(np.abs(m)), m.shape) for m in maps}) == 6


def test_align_phase_undoes_a_per_pixel_phase():
    maps = birdcage_maps(4, (16, 16))
    phase = np.exp(1j * np.random.default_rng(0).uniform(-np.pi, np.pi, (16, 16)))
    aligned = align_phase(maps * phase, maps)
    assert aligned.dtype == np.complex64
    np.testing.assert_allclose(aligned, maps, atol=1e-6)
    # A per-coil phase is not a per-pixel one: it stays an error.
    assert map_error(maps * np.exp(1j * np.arange(4))[:, None, None], maps).min() > 0.1


# --------------------------------------------------------------------------- the ACS detector

def assert_is_the_block(mask: np.ndarray, axis: int, offsets: np.ndarray) -> None:
    """offsets is the maximal run of whole sampled lines through DC along axis (unshifted indices)."""
    lines = mask[:, 0] if axis == 0 else mask[0, :]
    n = len(lines)
    assert (np.diff(offsets) == 1).all() and offsets[0] <= 0 <= offsets[-1]
    assert lines[offsets % n].all()
    assert not lines[(offsets[0] - 1) % n] and not lines[(offsets[-1] + 1) % n]


def test_acs_block_wraps_around_dc():
    mask = np.zeros((32, 20), dtype=np.float32)
    mask[[0, 1, 2, 3, 28, 29, 30, 31, 10, 12], :] = 1  # rows -4..3 and two others
    axis, offsets = acs_region(mask)
    assert axis == 0 and offsets.tolist() == list(range(-4, 4))
    columns = np.ascontiguousarray(mask.T)
    axis, offsets = acs_region(columns)
    assert axis == 1 and offsets.tolist() == list(range(-4, 4))
    assert acs_region(mask).lines_mask(mask.shape).sum(axis=1).tolist() == [20 if r in (0, 1, 2, 3, 28, 29, 30, 31)
                                                                            else 0 for r in range(32)]


@pytest.mark.parametrize("mask", [
    cartesian_row_mask((96, 48), "4x", seed=3),
    variable_density_row_mask((96, 96), "4x", seed=1),
    public_mask((240, 240), "4x"), public_mask((240, 240), "5x"),
    public_mask((150, 150), "4x"), public_mask((150, 150), "5x"),
], ids=["rows", "variable-density", "public-240-4x", "public-240-5x", "public-150-4x", "public-150-5x"])
def test_acs_of_row_masks(mask):
    axis, offsets = acs_region(mask)
    assert axis == 0 and len(offsets) >= MIN_ACS_LINES
    assert_is_the_block(mask, axis, offsets)


@pytest.mark.parametrize("kind", ["fastmri-random", "fastmri-equispaced"])
@pytest.mark.parametrize("width", [64, 65])
def test_acs_of_fastmri_column_masks(kind, width):
    # fastMRI draws its centre band in centred order (DC at W // 2); unshifted, it wraps around column 0.
    mask = fastmri_column_mask((16, width), "4x", kind, seed=2, center_fraction=0.125)
    axis, offsets = acs_region(mask)
    assert axis == 1
    assert_is_the_block(mask, axis, offsets)
    n_center = round(width * 0.125)
    start = (width - n_center + 1) // 2 - width // 2  # the band's first line, as an offset from DC
    assert offsets[0] <= start and start + n_center - 1 <= offsets[-1]
    assert offsets[0] < 0 < offsets[-1]  # the wrap-around


def test_full_mask_is_all_acs():
    axis, offsets = acs_region(np.ones((10, 12)))
    assert axis == 0 and sorted(offsets % 10) == list(range(10))


@pytest.mark.parametrize("name, mask", [
    ("DC not sampled", np.ones((32, 32)) * (np.arange(32) % 2 == 1)[:, None]),
    ("too few lines", np.ones((32, 32)) * np.isin(np.arange(32), [0, 1, 31, 8])[:, None]),
    ("default band of a small image", make_mask((32, 32), "4x", "rows")),  # round(0.08 * 32) = 3 rows
    ("2-D mask", (np.random.default_rng(0).random((32, 32)) < 0.3).astype(np.float32)),
])
def test_mask_without_acs_raises(name, mask):
    if name == "default band of a small image":
        assert len(acs_region(mask, min_lines=1).offsets) < MIN_ACS_LINES  # the premise
    with pytest.raises(ValueError, match="mask has no autocalibration region"):
        acs_region(mask)
    with pytest.raises(ValueError, match="^mask data/mask_4x.npy has no autocalibration region: "):
        estimate_maps(np.zeros((2, 32, 32), np.complex64), mask, source="mask data/mask_4x.npy")


# --------------------------------------------------------------------------- map estimation

@pytest.fixture(scope="module")
def simulation():
    """64 x 64, 8 coils, a 4x row mask with a 12-row ACS block (-6..5)."""
    image, true_maps, kspace, inside = simulate(64, 8)
    mask = cartesian_row_mask((64, 64), "4x", seed=0, center_fraction=12 / 64)
    return image, true_maps, kspace * mask, mask, inside


def test_espirit_maps_match_the_true_maps(simulation):
    # Measured on this simulation: max error 0.036, mean 0.0068 inside the object (phantom seeds 1, 2: 0.032 /
    # 0.0065, 0.045 / 0.011). A cropped pixel (error 1) or maps of another coil (error ~1) fail by far.
    image, true_maps, kspace_under, mask, inside = simulation
    assert len(acs_region(mask).offsets) == 12
    maps = estimate_maps(kspace_under, mask, "espirit")
    assert maps.shape == (8, 64, 64) and maps.dtype == np.complex64
    error = map_error(maps, true_maps)[inside]
    assert error.max() < 0.06 and error.mean() < 0.012, (error.max(), error.mean())
    np.testing.assert_allclose(rss(maps)[inside], 1.0, atol=1e-5)


def test_acs_rss_maps_match_the_true_maps_more_loosely(simulation):
    # Measured: max 0.063, mean 0.015 inside the object, about twice ESPIRiT's mean: the low-resolution image of
    # 12 lines rings at the object's edge, and the ringing enters the maps, where ESPIRiT's kernels do not see
    # the image at all.
    image, true_maps, kspace_under, mask, inside = simulation
    maps = estimate_maps(kspace_under, mask, "acs-rss")
    assert maps.shape == (8, 64, 64) and maps.dtype == np.complex64
    error = map_error(maps, true_maps)[inside]
    assert error.max() < 0.1 and error.mean() < 0.025, (error.max(), error.mean())
    np.testing.assert_allclose(rss(maps)[inside], 1.0, atol=1e-5)
    espirit_error = map_error(estimate_maps(kspace_under, mask, "espirit"), true_maps)[inside]
    assert espirit_error.mean() < error.mean()


def test_espirit_is_robust_to_noise(simulation):
    # Complex Gaussian noise of 0.03 per k-space sample (orthonormal FFT: 0.03 per image pixel and coil, against
    # image values of 0.5-1.5). Measured: ESPIRiT max 0.048, mean 0.013 (noise-free 0.036, 0.0068), no pixel of the
    # object cropped; acs-rss max 0.17, mean 0.050 (its maps are ratios of noisy low-resolution images).
    image, true_maps, kspace_under, mask, inside = simulation
    rng = np.random.default_rng(0)
    noise = 0.03 * (rng.standard_normal(kspace_under.shape) + 1j * rng.standard_normal(kspace_under.shape)) / 2 ** 0.5
    noisy = kspace_under + noise * mask
    espirit = estimate_maps(noisy, mask, "espirit")
    error = map_error(espirit, true_maps)[inside]
    assert error.max() < 0.08 and error.mean() < 0.025, (error.max(), error.mean())
    np.testing.assert_allclose(rss(espirit)[inside], 1.0, atol=1e-5)
    assert 2 * error.mean() < map_error(estimate_maps(noisy, mask, "acs-rss"), true_maps)[inside].mean()


def test_espirit_on_an_off_centre_column_block():
    # A column mask whose ACS block (-3..8) is not centred: the block is rolled to sigpy's centre and used whole.
    image, true_maps, kspace, inside = simulate(32, 6, seed=1)
    columns = np.zeros(32, dtype=bool)
    columns[np.r_[0:9, 29:32, 14, 20]] = True
    mask = np.broadcast_to(columns, (32, 32)).astype(np.float32)
    assert acs_region(mask).offsets.tolist() == list(range(-3, 9))
    maps = estimate_maps(kspace * mask, mask, "espirit")
    error = map_error(maps, true_maps)[inside]
    # Measured: max 0.049, mean 0.016 (seed 0: 0.034, 0.013); 12 lines at 32 px.
    assert error.max() < 0.1 and error.mean() < 0.02, (error.max(), error.mean())


def test_espirit_calibrates_on_at_most_max_calib_width_lines():
    # A fully sampled slice calibrates on the central 24 x 24 square. Measured: max 0.017, mean 0.0036, as with
    # the whole 48 x 48 (0.016, 0.0037): the cap costs no accuracy here.
    image, true_maps, kspace, inside = simulate(48, 8, seed=0)
    maps = estimate_maps(kspace, np.ones((48, 48)), "espirit", max_calib_width=24)
    error = map_error(maps, true_maps)[inside]
    assert error.max() < 0.03 and error.mean() < 0.006, (error.max(), error.mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_espirit_at_the_smallest_acs_block(seed):
    # A block of exactly MIN_ACS_LINES = 4 rows: ESPIRiT keeps every pixel of the object (with 3 lines it crops a
    # few) and its maps are within 0.15-0.22 of the true ones (measured on seeds 0-3 at 32 and 48 px).
    image, true_maps, kspace, inside = simulate(32, 8, seed=seed)
    rows = np.zeros(32, dtype=bool)
    rows[np.arange(-(MIN_ACS_LINES // 2), MIN_ACS_LINES - MIN_ACS_LINES // 2)] = True
    rows[[8, 16, 24]] = True
    mask = np.broadcast_to(rows[:, None], (32, 32)).astype(np.float32)
    assert acs_region(mask).width == MIN_ACS_LINES
    maps = estimate_maps(kspace * mask, mask, "espirit")
    np.testing.assert_allclose(rss(maps)[inside], 1.0, atol=1e-5)
    assert map_error(maps, true_maps)[inside].max() < 0.3


def test_volume_maps_are_per_slice_maps(simulation):
    _, _, kspace_under, mask, _ = simulation
    volume = np.stack([kspace_under, kspace_under[::-1]])  # two slices, the second with its coils reordered
    maps = estimate_volume_maps(volume, mask, "acs-rss")
    assert maps.shape == (2, 8, 64, 64) and maps.dtype == np.complex64
    np.testing.assert_allclose(maps[1], estimate_maps(kspace_under[::-1], mask, "acs-rss"), atol=1e-6)


def test_unknown_method_and_mismatched_shapes_raise(simulation):
    _, _, kspace_under, mask, _ = simulation
    with pytest.raises(ValueError, match="espirit, acs-rss"):
        estimate_maps(kspace_under, mask, "walsh")
    with pytest.raises(ValueError, match="not \\(N, H, W\\)"):
        estimate_maps(kspace_under[:, :32], mask)


# --------------------------------------------------------------------------- coil compression

def test_coil_compression_keeps_the_energy(simulation):
    image, true_maps, kspace_under, mask, inside = simulation
    volume = np.stack([kspace_under, 0.5 * kspace_under])  # (S, N, H, W): one matrix for the volume
    half = coil_compress(volume, 4)
    assert half.shape == (2, 4, 64, 64) and half.dtype == np.complex64
    energy = np.sum(np.abs(half) ** 2) / np.sum(np.abs(volume) ** 2)
    assert 0.99 <= energy <= 1 + 1e-6, energy  # measured 0.9999: smooth birdcage maps are nearly rank 4
    per_coil = np.sum(np.abs(half) ** 2, axis=(0, 2, 3))
    assert (np.diff(per_coil) <= 0).all()  # virtual coils in decreasing energy
    matrix = compression_matrix(volume, 4)
    np.testing.assert_allclose(matrix @ matrix.conj().T, np.eye(4), atol=1e-6)  # orthonormal rows
    largest = matrix[np.arange(4), np.argmax(np.abs(matrix), axis=1)]
    np.testing.assert_allclose(largest.imag, 0, atol=1e-6)  # the phase fixed for determinism
    assert (largest.real > 0).all()


def test_compression_transforms_maps_as_it_does_kspace(simulation):
    image, true_maps, kspace_under, mask, _ = simulation
    matrix = compression_matrix(kspace_under, 4)
    maps = apply_compression(matrix, true_maps)
    scale = np.abs(kspace_under).max()
    np.testing.assert_allclose(apply_compression(matrix, kspace_under), fft2(maps * image) * mask, atol=1e-5 * scale)
    assert rss(maps).max() <= 1 + 1e-5  # orthonormal rows: a projection of unit-RSS maps


def test_coil_compression_to_all_coils_is_lossless(simulation):
    _, _, kspace_under, _, _ = simulation
    full = coil_compress(kspace_under, 8)
    assert full.shape == (8, 64, 64)
    matrix = compression_matrix(kspace_under, 8)
    scale = np.abs(kspace_under).max()
    # A unitary 8 x 8 matrix in float32: its inverse is its conjugate transpose, to a few float32 epsilons.
    np.testing.assert_allclose(matrix.conj().T @ full.reshape(8, -1), kspace_under.reshape(8, -1),
                               atol=1e-5 * scale)
    np.testing.assert_allclose(rss(full), rss(kspace_under), atol=1e-5 * scale)
    with pytest.raises(ValueError, match="choose 1 <= k <= 8"):
        coil_compress(kspace_under, 9)
