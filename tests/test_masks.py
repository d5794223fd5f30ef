"""Tests of data/masks.py: acceleration names, seeded Cartesian row masks, loading and saving .npy masks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from data.masks import AccelerationError, cartesian_row_mask, load_mask, parse_acc, save_mask, validate_mask
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
