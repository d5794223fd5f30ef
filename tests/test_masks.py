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
    with pytest.raises(MaskError, match="unknown; choose one of: rows, public, variable-density, fastmri-random, fastmri-equispaced"):
        make_mask((32, 32), "4x", "poisson")


# --------------------------------------------------------------------------- the public masks and variable density

# SHA-256 of the public files, GayathriMatcha/SFT-KD-Recon commit ff1b347, "Under_sampling masks/{Brain,Cardiac}/".
PUBLIC_SHA256 = {
    "brain/mask_4x.npy": "d0e77346c4f74d7ba79cdbad861e07b97e59f95f23157523badf1d437d447fed",
    "brain/mask_5x.npy": "bda42e3032667158ae89cfac6f41c3ec8b7ccef6eb36a5f1aaa368f482fa11bb",
    "cardiac/mask_4x.npy": "9a420a62e19afb88d8b94d1177ec44fead4199d5d56993b043837c10de0865f2",
    "cardiac/mask_5x.npy": "c9b326a2cfb2e2432a02691e7161e5b1b390134cce908729125365ac9f5b098b",
}


@pytest.mark.parametrize("size, acc, relative, n_rows", [
    (240, "4x", "brain/mask_4x.npy", 60), (240, "5x", "brain/mask_5x.npy", 48),
    (150, "4x", "cardiac/mask_4x.npy", 37), (150, "5.0x", "cardiac/mask_5x.npy", 30),
])
def test_public_masks_are_the_public_files(size, acc, relative, n_rows):
    import hashlib
    from data.masks import PUBLIC_MASK_DIR
    path = PUBLIC_MASK_DIR / relative
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PUBLIC_SHA256[relative]
    assert f"{PUBLIC_SHA256[relative]}  {relative}" in (PUBLIC_MASK_DIR / "SHA256SUMS").read_text().splitlines()
    mask = make_mask((size, size), acc, "public", seed=123, center_fraction=0.3)  # neither applies
    original = np.load(path)
    assert original.dtype == np.float64 and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, original)
    assert int(_rows(mask).sum()) == n_rows and (mask == mask[:, :1]).all()  # whole rows


def test_public_brain_4x_rows_are_variable_density():
    rows = np.flatnonzero(_rows(make_mask((240, 240), "4x", "public")))
    # The rows METHOD.md lists, read off the public file by hand: dense at DC (row 0), sparse mid-way.
    assert rows[:20].tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 11, 13, 15, 18, 19, 20, 21, 22, 25, 33, 34, 36]
    assert rows[-5:].tolist() == [235, 236, 237, 238, 239]


@pytest.mark.parametrize("shape, acc", [((64, 64), "4x"), ((240, 240), "8x"), ((240, 150), "4x"),
                                        ((150, 150), "6x")])
def test_public_masks_refuse_other_geometries(shape, acc):
    with pytest.raises(MaskError, match=r"only for 240x240 \(MRBrainS\) and 150x150 \(ACDC\) slices at 4x and 5x, "
                                        rf"not {shape[0]}x{shape[1]} at {acc}; use --mask-kind variable-density"):
        make_mask(shape, acc, "public")


def test_a_changed_public_mask_file_is_refused(tmp_path, monkeypatch):
    import shutil
    import data.masks
    copy = tmp_path / "public_masks"
    shutil.copytree(data.masks.PUBLIC_MASK_DIR, copy)
    mask = np.load(copy / "cardiac" / "mask_4x.npy")
    mask[75] = 1.0
    np.save(copy / "cardiac" / "mask_4x.npy", mask)
    monkeypatch.setattr(data.masks, "PUBLIC_MASK_DIR", copy)
    with pytest.raises(MaskError, match="mask_4x.npy differs from the public mask"):
        make_mask((150, 150), "4x", "public")
    np.testing.assert_array_equal(make_mask((150, 150), "5x", "public"), np.load(copy / "cardiac" / "mask_5x.npy"))


@pytest.mark.parametrize("height, acc, n_rows", [(96, "4x", 24), (97, "5x", 19), (240, "8x", 30), (40, "4x", 10)])
def test_variable_density_rows_count_band_and_seed(height, acc, n_rows):
    masks = [make_mask((height, 12), acc, "variable-density", seed=seed) for seed in range(3)]
    for mask in masks:
        assert mask.dtype == np.float32 and (mask == mask[:, :1]).all()
        assert int(_rows(mask).sum()) == n_rows
        n_low = min(n_rows, max(2, round(0.08 * height)))
        band = np.r_[0:math.ceil(n_low / 2), height - n_low // 2:height]
        assert _rows(mask)[band].all()
    np.testing.assert_array_equal(masks[0], make_mask((height, 12), acc, "variable-density", seed=0))
    assert not np.array_equal(masks[0], masks[1])


def test_variable_density_is_denser_near_dc():
    height = 96
    rows = np.stack([_rows(make_mask((height, 4), "4x", "variable-density", seed=seed)) for seed in range(100)])
    distance = np.minimum(np.arange(height), height - np.arange(height))
    near = rows[:, (distance > 4) & (distance <= height // 8)].mean()  # just outside the 8-row band
    far = rows[:, distance >= 3 * height // 8].mean()
    uniform = rows[:, distance > 4].mean()  # what uniform rows would give everywhere
    assert near > 4 * far and near > uniform > far
    # The density is 0.58 at d = H / 8 and 0.13 beyond 3 H / 8 (ratio 4.6); these seeds sample 0.43 and 0.085.
    assert 0.35 < near < 0.5 and 0.05 < far < 0.12
