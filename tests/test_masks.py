"""Tests of data/masks.py: accelerations, seeded row masks and fastMRI column masks, loading and saving masks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from data.masks import (MASK_KINDS, AccelerationError, MaskError, cartesian_row_mask, fastmri_column_mask, load_mask,
                        make_mask, parse_acc, save_mask, validate_mask)
from utils import UserError


def _rows(mask: np.ndarray) -> np.ndarray:
    return mask[:, 0]


@pytest.mark.parametrize("height, acc, n_rows", [
    (240, "4x", 60), (240, "5x", 48), (150, "4x", 37), (150, "5x", 30),
    (240, "8x", 30), (240, "6.5x", math.floor(240 / 6.5)),
])
def test_exact_sampled_row_count(height, acc, n_rows):
    for seed in (0, 1, 7):
        mask = cartesian_row_mask((height, height), acc, seed=seed)
        assert mask.shape == (height, height) and mask.dtype == np.float32
        assert int(_rows(mask).sum()) == n_rows
        assert mask.sum() == n_rows * height
    assert math.floor(240 / 6.5) == 36


def test_low_band_at_both_ends():
    # 240 rows: a band of round(0.08 * 240) = 19 rows, 10 from row 0 and 9 ending at row 239.
    for seed in range(5):
        rows = _rows(cartesian_row_mask((240, 240), "4x", seed=seed))
        assert rows[:10].all() and rows[231:].all()
    for size in (32, 150):
        for acc in ("4x", "5x", "8x"):
            rows = _rows(cartesian_row_mask((size, size), acc, seed=3))
            assert rows[0] == 1 and rows[1] == 1 and rows[size - 1] == 1


def test_non_square_and_whole_rows():
    mask = cartesian_row_mask((150, 96), "5x", seed=2)
    assert mask.shape == (150, 96)
    assert set(np.unique(mask)) == {0.0, 1.0}
    row_values = mask.min(axis=1)
    assert np.array_equal(row_values, mask.max(axis=1)), "every row must be all 0 or all 1"
    assert int(row_values.sum()) == 30


def test_seeded():
    a = cartesian_row_mask((240, 240), "4x", seed=5)
    assert np.array_equal(a, cartesian_row_mask((240, 240), "4x", seed=5))
    assert not np.array_equal(a, cartesian_row_mask((240, 240), "4x", seed=6))


def test_too_high_acceleration_is_user_error():
    with pytest.raises(AccelerationError, match="10x keeps fewer than 2 of 16 rows"):
        cartesian_row_mask((16, 16), "10x")


@pytest.mark.parametrize("name, value", [("4x", 4.0), ("5x", 5.0), ("6.5x", 6.5), ("1x", 1.0)])
def test_parse_acc_accepts(name, value):
    assert parse_acc(name) == value


@pytest.mark.parametrize("name", ["4", "x4", "0.5x", "four", "", "-4x", "4xx"])
def test_parse_acc_rejects(name):
    with pytest.raises(AccelerationError, match="is not an acceleration"):
        parse_acc(name)


def test_load_mask_missing_file(tmp_path):
    path = tmp_path / "mask_4x.npy"
    with pytest.raises(UserError, match="does not exist") as info:
        load_mask(path)
    assert str(path) in str(info.value)


def test_load_mask_rejects_3d(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.ones((2, 32, 32), dtype=np.float32))
    with pytest.raises(UserError, match="2-D") as info:
        load_mask(path)
    assert str(path) in str(info.value)


def test_load_mask_rejects_non_binary(tmp_path):
    path = tmp_path / "m.npy"
    mask = cartesian_row_mask((32, 32), "4x")
    mask[3, 3] = 0.5
    np.save(path, mask)
    with pytest.raises(UserError, match="not binary"):
        load_mask(path)
    mask[3, 3] = np.nan
    np.save(path, mask)
    with pytest.raises(UserError, match="not binary"):
        load_mask(path)


def test_load_mask_rejects_all_zero(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((32, 32), dtype=np.float32))
    with pytest.raises(UserError, match="all zero"):
        load_mask(path)


def test_load_mask_wrong_shape_names_both_sizes(tmp_path):
    path = tmp_path / "mask_4x.npy"
    np.save(path, np.ones((31, 31), dtype=np.float32))
    with pytest.raises(UserError) as info:
        load_mask(path, (32, 32))
    message = str(info.value)
    assert "31x31" in message and "32x32" in message and "mask_4x.npy" in message


def test_load_mask_rejects_non_numeric(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(UserError, match="dtype"):
        load_mask(path)
    path.write_text("not a numpy file")
    with pytest.raises(UserError, match="readable"):
        load_mask(path)


def test_load_mask_accepts_bool_and_int(tmp_path):
    reference = cartesian_row_mask((32, 24), "4x", seed=1)
    for dtype in (bool, np.int64, np.float64):
        path = tmp_path / f"m_{np.dtype(dtype).name}.npy"
        np.save(path, reference.astype(dtype))
        loaded = load_mask(path, (32, 24))
        assert loaded.dtype == np.float32
        assert np.array_equal(loaded, reference)


def test_save_load_round_trip(tmp_path):
    mask = cartesian_row_mask((150, 150), "5x", seed=9)
    path = tmp_path / "sub" / "mask_5x.npy"
    save_mask(path, mask.astype(np.float64))
    loaded = load_mask(path, (150, 150))
    assert loaded.dtype == np.float32 and np.array_equal(loaded, mask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mask_5x.npy"]


def test_validate_mask_returns_float32():
    out = validate_mask(np.eye(4, dtype=np.int32), "eye")
    assert out.dtype == np.float32 and out.sum() == 4


# --------------------------------------------------------------------------- fastMRI's column masks

FASTMRI_KINDS = ("fastmri-random", "fastmri-equispaced")


def _centred_columns(mask: np.ndarray) -> np.ndarray:
    """The sampled columns of a whole-column mask, moved back to fastMRI's centred order (DC at W // 2)."""
    assert np.array_equal(mask.min(axis=0), mask.max(axis=0)), "every column must be all 0 or all 1"
    return np.fft.fftshift(mask[0]).astype(bool)


def test_default_kind_is_the_public_row_mask():
    for shape, acc, seed in (((240, 240), "4x", 0), ((150, 150), "5x", 3), ((32, 24), "4x", 7)):
        assert np.array_equal(make_mask(shape, acc, seed=seed), cartesian_row_mask(shape, acc, seed=seed))
    assert MASK_KINDS[0] == "rows"


@pytest.mark.parametrize("kind", FASTMRI_KINDS)
@pytest.mark.parametrize("width, acc, fraction", [(320, "4x", 0.08), (320, "8x", 0.04), (368, "4x", 0.08),
                                                  (32, "4x", 0.08), (33, "5x", 0.08)])
def test_fastmri_centre_lines_are_sampled(kind, width, acc, fraction):
    n_centre = round(width * fraction)
    start = (width - n_centre + 1) // 2
    for seed in range(10):
        mask = make_mask((16, width), acc, kind, seed=seed, center_fraction=fraction)
        assert mask.shape == (16, width) and mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
        centred = _centred_columns(mask)
        assert centred[start:start + n_centre].all()
        assert start <= width // 2 < start + n_centre  # the band holds DC
        assert mask[:, 0].all(), "DC is column 0 in the unshifted convention"


def test_fastmri_band_sits_at_both_ends_once_unshifted():
    # 32 columns, 3 centre lines (round(2.56)): centred 15, 16, 17 -> unshifted 31, 0, 1.
    # 33 columns: centred 15, 16, 17 with DC at 16 -> unshifted 32, 0, 1.
    for width, expected in ((32, {0, 1, 31}), (33, {0, 1, 32})):
        for kind in FASTMRI_KINDS:
            for seed in range(5):
                columns = set(np.flatnonzero(make_mask((8, width), "4x", kind, seed=seed)[0]).tolist())
                assert expected <= columns


@pytest.mark.parametrize("width, acc, fraction", [(320, "4x", 0.08), (320, "8x", 0.04), (368, "4x", 0.08),
                                                  (640, "5x", 0.08), (100, "4x", 0.2), (33, "4x", 0.08)])
def test_fastmri_equispaced_is_the_documented_grid(width, acc, fraction):
    n_centre = round(width * fraction)
    factor = parse_acc(acc)
    spacing = factor * (width - n_centre) / (width - n_centre * factor)
    band = np.zeros(width, dtype=bool)
    band[(width - n_centre + 1) // 2:][:n_centre] = True
    grids = []
    for offset in range(round(spacing)):
        lines = band.copy()
        lines[np.around(np.arange(offset, width - 1, spacing)).astype(int)] = True
        grids.append(lines)
    offsets_seen = set()
    for seed in range(40):
        centred = _centred_columns(make_mask((4, width), acc, "fastmri-equispaced", seed=seed,
                                             center_fraction=fraction))
        matches = [o for o, grid in enumerate(grids) if np.array_equal(centred, grid)]
        assert matches, f"seed {seed}: not band + round(offset + k * {spacing:.3f})"
        offsets_seen.add(matches[0])
        # the acceleration holds up to rounding and the band's overlap with the grid
        assert abs(centred.sum() - width / factor) < 2
    assert len(offsets_seen) > 1, "the offset is drawn from the seed"


def test_fastmri_equispaced_count_is_exact_at_fastmri_sizes():
    for seed in range(20):
        assert make_mask((4, 320), "4x", "fastmri-equispaced", seed=seed)[0].sum() == 80
        assert make_mask((4, 640), "8x", "fastmri-equispaced", seed=seed, center_fraction=0.04)[0].sum() == 80


def test_fastmri_random_acceleration_in_expectation():
    width, acc, n_centre = 320, "4x", round(320 * 0.08)
    counts, outer = [], []
    for seed in range(300):
        centred = _centred_columns(make_mask((2, width), acc, "fastmri-random", seed=seed))
        counts.append(centred.sum())
        outer.append(np.delete(centred, np.arange(147, 147 + n_centre)).mean())
    assert len(set(counts)) > 5, "fastMRI's random mask has a random number of lines"
    assert abs(np.mean(counts) - width / 4) < 1.5  # std of the mean over 300 masks: about 0.36 lines
    assert abs(np.mean(outer) - (width / 4 - n_centre) / (width - n_centre)) < 0.01


@pytest.mark.parametrize("kind", FASTMRI_KINDS)
def test_fastmri_masks_are_seeded(kind):
    a = make_mask((32, 320), "4x", kind, seed=5)
    assert np.array_equal(a, make_mask((32, 320), "4x", kind, seed=5))
    assert np.array_equal(a, fastmri_column_mask((32, 320), "4x", kind, seed=5))
    others = [make_mask((32, 320), "4x", kind, seed=s) for s in range(6, 12)]
    assert any(not np.array_equal(a, other) for other in others)


def test_fastmri_mask_errors():
    with pytest.raises(MaskError, match="keeps no line of 8"):
        make_mask((8, 8), "4x", "fastmri-random", center_fraction=0.05)
    with pytest.raises(MaskError, match="alone samples 96 of 320 lines"):
        make_mask((320, 320), "4x", "fastmri-equispaced", center_fraction=0.3)
    with pytest.raises(MaskError, match="unknown; choose one of: rows, fastmri-random, fastmri-equispaced"):
        make_mask((32, 32), "4x", "poisson")
