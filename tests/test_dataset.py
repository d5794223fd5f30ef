"""Tests of data/dataset.py: reading the original HDF5 layout, item contents, and clear failures."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from data.dataset import Sample, SliceDataset, build_dataset
from data.fft import zero_filled
from data.masks import cartesian_row_mask
from tests.conftest import make_dataset, phantom, write_volume
from data.masks import AccelerationError
from utils import UserError

SIZE = 32


def _stored(path: Path, acc: str = "4x") -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {"target": f["volfs"][()], "zero_filled": f[f"img_volus_{acc}"][()],
                "kspace_under": f[f"kspace_volus_{acc}"][()]}


def _single_volume_root(root: Path, volumes: dict[str, np.ndarray], acc: str = "4x", **dtypes) -> Path:
    """``root`` with a mask and the given volumes (name -> (H, W, S)) in train/acc_{acc}."""
    size = next(iter(volumes.values())).shape[0]
    mask = cartesian_row_mask((size, size), acc, seed=0)
    np.save(root / f"mask_{acc}.npy", mask)
    folder = root / "train" / f"acc_{acc}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, vol in volumes.items():
        write_volume(folder / name, vol, {acc: mask}, **dtypes)
    return folder


def _assert_user_error_names(exc_info, *parts: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# --------------------------------------------------------------------------- reading

def test_items_shapes_dtypes_and_names(tiny_data):
    ds = SliceDataset(tiny_data, "train", "4x")
    assert len(ds) == 2 * 4 and ds.shape == (SIZE, SIZE)
    item = ds[5]
    for key, dtype in (("zero_filled", torch.float32), ("kspace_under", torch.complex64),
                       ("target", torch.float32), ("mask", torch.float32)):
        assert getattr(item, key).shape == (1, SIZE, SIZE), key
        assert getattr(item, key).dtype == dtype, key
    assert item.fname == "vol01.h5" and item.slice == 1 and item.acc == "4x"
    assert np.array_equal(item.mask[0].numpy(), np.load(tiny_data / "mask_4x.npy"))
    assert len(SliceDataset(tiny_data, "validation", "4x")) == 4


def test_recon_inputs_are_a_batch_s_network_inputs_as_documented(tiny_data):
    batch = next(iter(DataLoader(SliceDataset(tiny_data, "train", "4x"), batch_size=3)))
    inputs = batch.inputs
    assert inputs._fields == ("zero_filled", "kspace_under", "mask", "maps")
    assert inputs.maps is None  # single-coil data
    for name, dtype in zip(inputs._fields[:3], (torch.float32, torch.complex64, torch.float32)):
        assert getattr(inputs, name) is getattr(batch, name) and getattr(batch, name).dtype == dtype
        assert getattr(batch, name).shape == (3, 1, SIZE, SIZE)
    assert set(torch.unique(inputs.mask).tolist()) <= {0.0, 1.0}


def test_values_equal_stored_float64_file(tiny_data):
    ds = SliceDataset(tiny_data, "train", "4x")
    stored = _stored(tiny_data / "train" / "acc_4x" / "vol00.h5")
    assert stored["target"].dtype == np.float64 and stored["kspace_under"].dtype == np.complex128
    item = ds[2]
    for key in ("target", "zero_filled", "kspace_under"):
        expected = stored[key][:, :, 2].astype(np.complex64 if key == "kspace_under" else np.float32)
        assert np.array_equal(getattr(item, key)[0].numpy(), expected), key
    # The stored zero-filled image is |ifft2| of the stored k-space, in our FFT convention too.
    assert torch.allclose(zero_filled(item.kspace_under), item.zero_filled, atol=1e-6)


def test_reads_float32_complex64_files(tmp_path):
    vol = phantom(SIZE, 3, seed=4)
    folder = _single_volume_root(tmp_path, {"a.h5": vol}, float_dtype=np.float32, complex_dtype=np.complex64)
    stored = _stored(folder / "a.h5")
    assert stored["target"].dtype == np.float32 and stored["kspace_under"].dtype == np.complex64
    ds = SliceDataset(tmp_path, "train", "4x")
    assert len(ds) == 3
    item = ds[1]
    assert np.array_equal(item.target[0].numpy(), stored["target"][:, :, 1])
    assert np.array_equal(item.kspace_under[0].numpy(), stored["kspace_under"][:, :, 1])
    assert np.abs(item.target[0].numpy() - vol[:, :, 1]).max() < 1e-6


def test_files_with_different_slice_counts(tmp_path):
    _single_volume_root(tmp_path, {"a.h5": phantom(SIZE, 3, 1), "b.h5": phantom(SIZE, 5, 2)})
    ds = SliceDataset(tmp_path, "train", "4x")
    assert len(ds) == 8
    assert [(ds[i].fname, ds[i].slice) for i in range(len(ds))] == \
        [("a.h5", s) for s in range(3)] + [("b.h5", s) for s in range(5)]
    assert np.abs(ds[7].target[0].numpy() - phantom(SIZE, 5, 2)[:, :, 4]).max() < 1e-6


def test_two_dimensional_datasets_are_one_slice(tmp_path):
    folder = _single_volume_root(tmp_path, {"a.h5": phantom(SIZE, 1, 1)})
    with h5py.File(folder / "a.h5", "a") as f:
        for key in list(f.keys()):
            data = f[key][()][:, :, 0]
            del f[key]
            f[key] = data
    for preload in (False, True):
        ds = SliceDataset(tmp_path, "train", "4x", preload=preload)
        assert len(ds) == 1 and ds[0].target.shape == (1, SIZE, SIZE)
    del ds  # closes its read handle so the file can be opened for writing
    with h5py.File(folder / "a.h5", "a") as f:
        data = f["volfs"][()]
        data[4, 9] = np.nan  # column 9: the message must still say slice 0
        f["volfs"][...] = data
    for preload in (False, True):
        with pytest.raises(UserError, match="slice 0"):
            SliceDataset(tmp_path, "train", "4x", preload=preload)[0]


def test_two_accelerations_concatenate(tmp_path):
    root = make_dataset(tmp_path, accs=("4x", "5x"))
    ds = build_dataset(root, "train", ["4x", "5x"])
    assert isinstance(ds, ConcatDataset) and len(ds) == 16
    first, last = ds[0], ds[15]
    assert first.acc == "4x" and last.acc == "5x"
    assert np.array_equal(first.mask[0].numpy(), np.load(root / "mask_4x.npy"))
    assert np.array_equal(last.mask[0].numpy(), np.load(root / "mask_5x.npy"))
    assert first.mask[0, :, 0].sum() == 8 and last.mask[0, :, 0].sum() == 6
    single = build_dataset(root, "train", ["5x"])
    assert isinstance(single, SliceDataset) and len(single) == 8


def test_build_dataset_preload_choice(tiny_data):
    assert build_dataset(tiny_data, "train", ["4x"])._cache is not None  # auto: tiny_data data fits
    assert build_dataset(tiny_data, "train", ["4x"], preload=False)._cache is None
    assert build_dataset(tiny_data, "train", ["4x"], preload_limit_bytes=10)._cache is None


def _assert_same_items(a: Sample, b: Sample) -> None:
    assert type(a) is type(b) is Sample
    for key, value, other in zip(a._fields, a, b):
        if isinstance(value, torch.Tensor):
            assert value.dtype == other.dtype and torch.equal(value, other), key
        else:
            assert value == other, key


def test_preload_and_lazy_give_identical_items(tiny_data):
    lazy = SliceDataset(tiny_data, "train", "4x")
    eager = SliceDataset(tiny_data, "train", "4x", preload=True)
    assert lazy._cache is None and eager._cache is not None
    assert len(lazy) == len(eager)
    for i in range(len(lazy)):
        _assert_same_items(lazy[i], eager[i])


def test_dataloader_with_workers(tiny_data):
    ds = SliceDataset(tiny_data, "train", "4x")
    direct = [ds[i] for i in range(len(ds))]  # opens handles in this process before the workers fork
    assert ds._handles
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [b.target.shape[0] for b in batches] == [3, 3, 2]
    target = torch.cat([b.target for b in batches])
    kspace = torch.cat([b.kspace_under for b in batches])
    assert torch.equal(target, torch.stack([d.target for d in direct]))
    assert torch.equal(kspace, torch.stack([d.kspace_under for d in direct]))
    assert [name for b in batches for name in b.fname] == [d.fname for d in direct]
    assert torch.cat([b.slice for b in batches]).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert batches[0].mask.shape == (3, 1, SIZE, SIZE)


# --------------------------------------------------------------------------- failures

def test_missing_root(tmp_path):
    with pytest.raises(UserError) as info:
        SliceDataset(tmp_path / "nowhere", "train", "4x")
    _assert_user_error_names(info, "nowhere", "--data-root")


def test_missing_split_dir(tiny_data):
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "test", "4x")
    _assert_user_error_names(info, str(tiny_data / "test" / "acc_4x"))
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "5x")
    _assert_user_error_names(info, "acc_5x", "--acc")


def test_bad_acc_name(tiny_data):
    with pytest.raises(AccelerationError, match="'4' is not an acceleration"):
        SliceDataset(tiny_data, "train", "4")


def test_empty_acc_dir(tiny_data):
    folder = tiny_data / "train" / "acc_4x"
    for path in folder.glob("*.h5"):
        path.rename(path.with_suffix(".hdf"))
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, "no .h5 files", str(folder))


def test_non_hdf5_file(tiny_data):
    path = tiny_data / "train" / "acc_4x" / "x.h5"
    path.write_text("this is not an HDF5 file\n" * 20)
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, str(path), "HDF5")


def test_truncated_hdf5(tiny_data):
    path = tiny_data / "train" / "acc_4x" / "vol01.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, str(path), "truncated")


def test_missing_key(tiny_data):
    path = tiny_data / "train" / "acc_4x" / "vol01.h5"
    with h5py.File(path, "a") as f:
        del f["kspace_volus_4x"]
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, str(path), "kspace_volus_4x")


def test_wrong_dtype(tiny_data):
    path = tiny_data / "train" / "acc_4x" / "vol00.h5"
    with h5py.File(path, "a") as f:
        real = np.abs(f["kspace_volus_4x"][()])
        del f["kspace_volus_4x"]
        f["kspace_volus_4x"] = real
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, str(path), "kspace_volus_4x", "complex")


def test_datasets_disagree_in_shape(tiny_data):
    path = tiny_data / "train" / "acc_4x" / "vol00.h5"
    with h5py.File(path, "a") as f:
        shorter = f["img_volus_4x"][:, :, :3]
        del f["img_volus_4x"]
        f["img_volus_4x"] = shorter
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, str(path), "disagree", "(32, 32, 3)", "(32, 32, 4)")


def test_files_disagree_in_slice_size(tmp_path):
    folder = _single_volume_root(tmp_path, {"a.h5": phantom(SIZE, 2, 1)})
    mask = cartesian_row_mask((24, 24), "4x")
    write_volume(folder / "b.h5", phantom(24, 2, 2), {"4x": mask})
    with pytest.raises(UserError) as info:
        SliceDataset(tmp_path, "train", "4x")
    _assert_user_error_names(info, str(folder / "b.h5"), "24x24", "32x32")


def test_mask_shape_mismatch(tiny_data):
    np.save(tiny_data / "mask_4x.npy", np.ones((31, 31), dtype=np.float32))
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, "mask_4x.npy", "31x31", "32x32")


def test_missing_mask(tiny_data):
    (tiny_data / "mask_4x.npy").unlink()
    with pytest.raises(UserError) as info:
        SliceDataset(tiny_data, "train", "4x")
    _assert_user_error_names(info, "mask_4x.npy", "does not exist")


def test_explicit_mask_path(tiny_data, tmp_path):
    # Another mask that keeps every row the data sampled (the k-space is zero wherever it is zero).
    other = np.maximum(cartesian_row_mask((SIZE, SIZE), "4x", seed=11), np.load(tiny_data / "mask_4x.npy"))
    np.save(tmp_path / "mine.npy", other)
    ds = SliceDataset(tiny_data, "train", "4x", mask_path=tmp_path / "mine.npy")
    assert np.array_equal(ds[0].mask[0].numpy(), other)


def _corrupt(path: Path, key: str, slice_index: int, value) -> None:
    with h5py.File(path, "a") as f:
        data = f[key][()]
        data[3, 5, slice_index] = value
        f[key][...] = data


@pytest.mark.parametrize("preload", [False, True])
def test_nan_in_target_names_file_and_slice(tiny_data, preload):
    path = tiny_data / "train" / "acc_4x" / "vol01.h5"
    _corrupt(path, "volfs", 2, np.nan)
    with pytest.raises(UserError) as info:
        ds = SliceDataset(tiny_data, "train", "4x", preload=preload)
        ds[4 + 2]
    _assert_user_error_names(info, str(path), "volfs", "slice 2", "NaN")


@pytest.mark.parametrize("preload", [False, True])
def test_inf_in_kspace(tiny_data, preload):
    path = tiny_data / "train" / "acc_4x" / "vol00.h5"
    _corrupt(path, "kspace_volus_4x", 3, complex(np.inf, 0))
    ds = None
    with pytest.raises(UserError) as info:
        ds = SliceDataset(tiny_data, "train", "4x", preload=preload)
        ds[3]
    _assert_user_error_names(info, str(path), "kspace_volus_4x", "slice 3")
    if ds is not None:  # lazily, the other slices of the file are still readable
        assert torch.isfinite(ds[2].kspace_under).all()
