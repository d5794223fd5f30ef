"""Tests of data/prepare.py: NIfTI / demo volumes -> the original HDF5 layout, splits, and clear failures."""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from data.dataset import SliceDataset
from data.prepare import main, prepare
from data.slicing import fft_friendly
from data.sources import InputFile, subject_of, volume_names
from data.subjects import BLOCK_GAP
from tests.conftest import phantom, run_cli
from utils import UserError, run_cli as run_main

EMPTY_SLICES = (0, 1, 11)


def write_nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def synthetic_volume(seed: int, size: int = 40, n_slices: int = 12) -> np.ndarray:
    """(size, size, n_slices) float64 in scanner-like units (offset 20, up to 320), slices EMPTY_SLICES blank."""
    volume = 20.0 + 300.0 * phantom(size, n_slices, seed)
    volume[:, :, [s for s in EMPTY_SLICES if s < n_slices]] = 20.0
    return volume


@pytest.fixture
def nifti_dir(tmp_path: Path) -> Path:
    """Three 40 x 40 x 12 volumes in one folder (.nii.gz and .nii), plus an ACDC-style label map."""
    folder = tmp_path / "nifti"
    for i, ext in enumerate((".nii.gz", ".nii.gz", ".nii")):
        write_nifti(folder / f"vol{i}{ext}", synthetic_volume(i))
    write_nifti(folder / "vol0_gt.nii.gz", np.ones((40, 40, 12)))
    return folder


def _read(path: Path, acc: str) -> dict:
    with h5py.File(path, "r") as f:
        return {"volfs": f["volfs"][()], "kspace": f[f"kspace_volus_{acc}"][()], "zf": f[f"img_volus_{acc}"][()],
                "source_slices": f.attrs["source_slices"], "chunks": f["volfs"].chunks}


def _names(root: Path, split: str, acc: str = "4x") -> set[str]:
    return {p.stem for p in (root / split / f"acc_{acc}").glob("*.h5")}


def _source_slices(root: Path, split: str, acc: str = "4x") -> np.ndarray:
    files = sorted((root / split / f"acc_{acc}").glob("*.h5"))
    return np.concatenate([_read(p, acc)["source_slices"] for p in files])


def test_nifti_folder_to_original_layout(nifti_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = prepare(test_fraction=0, inputs=[nifti_dir], out=out, size=32, accs=["4x", "5x"])

    assert summary["split"] == "subjects" and summary["size"] == 32
    assert summary["per_file_subjects"] == ["vol0", "vol1", "vol2"]  # no token, no sub-folder: one per file
    assert len(summary["train_volumes"]) == 2 and len(summary["validation_volumes"]) == 1
    assert summary["train_slices"] + summary["validation_slices"] == 3 * (12 - len(EMPTY_SLICES))
    assert summary["skipped_slices"] == 3 * len(EMPTY_SLICES)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mask_4x.npy", "mask_5x.npy", "split.json",
                                                      "train", "validation"]
    for acc, rows in (("4x", 8), ("5x", 6)):
        mask = np.load(out / f"mask_{acc}.npy")
        assert mask.shape == (32, 32) and mask.dtype == np.float32
        assert mask.any(axis=1).sum() == rows and mask[0].all()
        train, val = _names(out, "train", acc), _names(out, "validation", acc)
        assert train | val == {"vol0", "vol1", "vol2"} and not train & val  # label map excluded, split by volume
        for split in ("train", "validation"):
            for path in (out / split / f"acc_{acc}").glob("*.h5"):
                stored = _read(path, acc)
                volfs, kspace = stored["volfs"], stored["kspace"]
                assert volfs.dtype == np.float32 and kspace.dtype == np.complex64
                assert stored["zf"].dtype == np.float32 and stored["chunks"] == (32, 32, 1)
                assert volfs.shape == (32, 32, 12 - len(EMPTY_SLICES))
                np.testing.assert_array_equal(stored["source_slices"], np.arange(2, 11))
                # min-max per volume, then the central 32 x 32 of 40 x 40
                source = synthetic_volume(int(path.stem[-1]))
                expected = ((source - source.min()) / (source.max() - source.min()))[4:36, 4:36, 2:11]
                np.testing.assert_allclose(volfs, expected, atol=1e-6)
                assert volfs.min() >= 0.0 and volfs.max() <= 1.0
                reference = mask[:, :, None] * np.fft.fft2(volfs.astype(np.float64), axes=(0, 1), norm="ortho")
                np.testing.assert_allclose(kspace, reference, rtol=0, atol=1e-6 * np.abs(reference).max())
                zf = np.abs(np.fft.ifft2(kspace.astype(np.complex128), axes=(0, 1), norm="ortho"))
                np.testing.assert_allclose(stored["zf"], zf, rtol=0, atol=1e-6)

    dataset = SliceDataset(out, "train", "5x")
    assert len(dataset) == summary["train_slices"]
    item = dataset[0]
    assert item.target.shape == item.zero_filled.shape == item.kspace_under.shape == (1, 32, 32)
    assert int(item.mask.any(dim=-1).sum()) == 6


def test_split_is_seeded_and_keeps_folders_together(tmp_path: Path):
    """Files in per-patient folders never straddle splits; the same seed gives the same split."""
    for patient in range(4):
        for frame in ("frame01", "frame12"):
            write_nifti(tmp_path / "in" / f"p{patient}" / f"p{patient}_{frame}.nii.gz",
                        synthetic_volume(patient, size=16, n_slices=5))
    kwargs = dict(inputs=[tmp_path / "in"], size=16, accs=["4x"], val_fraction=0.25)
    first = prepare(test_fraction=0, out=tmp_path / "a", **kwargs)
    second = prepare(test_fraction=0, out=tmp_path / "b", **kwargs)
    assert first["validation_volumes"] == second["validation_volumes"]
    assert len(first["validation_volumes"]) == 2  # one patient folder of 4, both of its frames
    assert len({name.split("_")[0] for name in first["validation_volumes"]}) == 1
    train_patients = {name.split("_")[0] for name in first["train_volumes"]}
    assert len(train_patients) == 3 and not train_patients & {first["validation_volumes"][0].split("_")[0]}


def test_single_4d_volume_split_by_slice_blocks(tmp_path: Path):
    cine = np.stack([synthetic_volume(t, size=20, n_slices=12) for t in range(3)], axis=-1)
    source = write_nifti(tmp_path / "patient_4d.nii.gz", cine)
    out = tmp_path / "out"
    summary = prepare(test_fraction=0, inputs=[source], out=out, size=16, accs=["4x"], val_fraction=0.3)

    assert summary["split"] == "slice blocks"
    names = {"patient_4d_t0", "patient_4d_t1", "patient_4d_t2"}
    assert _names(out, "train") == _names(out, "validation") == names
    for name in names:
        train = _read(out / "train" / "acc_4x" / f"{name}.h5", "4x")["source_slices"]
        val = _read(out / "validation" / "acc_4x" / f"{name}.h5", "4x")["source_slices"]
        # 9 kept slices (2..10): ceil(0.3 * 9) = 3 validation, 2 dropped as the gap, 4 training
        np.testing.assert_array_equal(val, [8, 9, 10])
        np.testing.assert_array_equal(train, [2, 3, 4, 5])


def test_resize_keeps_range_and_aspect(tmp_path: Path):
    volume = np.zeros((40, 20, 6))
    # a 20 x 10 block, dimmer on every slice: after padding to 40 x 40 and resizing, 8 x 4 at 16 x 16
    volume[10:30, 5:15, :] = np.linspace(1.0, 0.6, 6)
    source = write_nifti(tmp_path / "rect.nii", volume)
    prepare(test_fraction=0, inputs=[source], out=tmp_path / "out", size=16, resize=True, accs=["4x"], min_foreground=0.01,
            allow_label_like=True)  # 7 values: a test pattern, not a label map
    volfs = _read(tmp_path / "out" / "train" / "acc_4x" / "rect.h5", "4x")["volfs"]
    assert volfs.shape[:2] == (16, 16) and volfs.min() >= 0.0 and volfs.max() <= 1.0
    bright = volfs[:, :, 0] > 0.5
    assert bright.any(axis=1).sum() == 8 and bright.any(axis=0).sum() == 4


@pytest.mark.slow
def test_demo_via_cli_splits_one_brain_by_blocks(tmp_path: Path):
    out = tmp_path / "demo"
    result = run_cli("-m", "data.prepare", "--test-fraction", "0", "--demo", "--size", "32", "--max-slices-per-volume", "20",
                     "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "validation: 1 volumes, 4 slices" in result.stdout and str(out) in result.stdout
    for acc in ("4x", "5x"):
        train, val = _source_slices(out, "train", acc), _source_slices(out, "validation", acc)
        # 20 central slices: ceil(0.2 * 20) = 4 on top for validation, a gap, 14 contiguous below for training
        assert len(val) == 4 and len(train) == 20 - 4 - BLOCK_GAP
        assert np.all(np.diff(val) == 1) and np.all(np.diff(train) == 1)
        assert train.max() + BLOCK_GAP < val.min()
    assert len(SliceDataset(out, "validation", "4x")) == 4


def test_refuses_non_empty_out_and_overwrite_removes_only_own_files(nifti_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    (out / "train" / "acc_8x").mkdir(parents=True)
    (out / "train" / "acc_8x" / "stale.h5").write_bytes(b"old")
    (out / "mask_8x.npy").write_bytes(b"old")
    (out / "notes.txt").write_text("keep me")

    result = run_cli("-m", "data.prepare", "--test-fraction", "0", "--input", str(nifti_dir), "--out-dir", str(out), "--size", "32")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and str(out) in result.stderr
    assert "--overwrite" in result.stderr and (out / "mask_8x.npy").read_bytes() == b"old"

    with pytest.raises(UserError, match="not empty"):
        prepare(test_fraction=0, inputs=[nifti_dir], out=out, size=32)
    # A file it did not write inside train/ would be read as part of the data set: refused, nothing touched.
    with pytest.raises(UserError, match=r"did not write \(train/acc_8x/stale.h5\)"):
        prepare(test_fraction=0, inputs=[nifti_dir], out=out, size=32, accs=["4x"], overwrite=True)
    assert (out / "train" / "acc_8x" / "stale.h5").read_bytes() == b"old"
    (out / "train" / "acc_8x" / "stale.h5").unlink()
    prepare(test_fraction=0, inputs=[nifti_dir], out=out, size=32, accs=["4x"], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mask_4x.npy", "mask_8x.npy", "notes.txt",
                                                      "split.json", "train", "validation"]
    assert (out / "notes.txt").read_text() == "keep me" and (out / "mask_8x.npy").read_bytes() == b"old"


def test_failed_run_leaves_no_partial_output(nifti_dir: Path, tmp_path: Path):
    bad = synthetic_volume(5)
    bad[3, 3, 3] = np.nan
    write_nifti(nifti_dir / "zz_bad.nii.gz", bad)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="zz_bad.nii.gz contains NaN"):
        prepare(test_fraction=0, inputs=[nifti_dir], out=out, size=32)
    assert not out.exists()


def _cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_errors_are_one_line(nifti_dir: Path, tmp_path: Path, capsys):
    out = str(tmp_path / "out")
    missing = tmp_path / "missing"
    result = run_cli("-m", "data.prepare", "--test-fraction", "0", "--input", str(missing), "--out-dir", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"error: --input {missing} does not exist; check the path\n"

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    assert str(text_file) in _cli_error(["--input", str(text_file), "--out-dir", out], capsys)
    fake = tmp_path / "fake.nii"
    fake.write_bytes(b"\x00" * 100)
    assert "fake.nii cannot be read by nibabel" in _cli_error(["--input", str(fake), "--out-dir", out], capsys)
    assert "argument --acc: '4' is not an acceleration" in _cli_error(
        ["--input", str(nifti_dir), "--out-dir", out, "--acc", "4"], capsys)
    # --out is the old spelling of --out-dir: both reach the same checks.
    assert "fake.nii cannot be read by nibabel" in _cli_error(["--input", str(fake), "--out-dir", out], capsys)

    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    np.save(mask_dir / "mask_4x.npy", np.ones((31, 31), dtype=np.float32))
    err = _cli_error(["--input", str(nifti_dir), "--out-dir", out, "--size", "32", "--acc", "4x",
                      "--mask-dir", str(mask_dir)], capsys)
    assert "31x31" in err and "32x32" in err
    assert not Path(out).exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "pass --input"),
    (dict(demo=True, inputs=["x.nii"]), "not both"),
    (dict(size=4), "--size 4"),
    (dict(val_fraction=1.0), "--val-fraction"),
    (dict(resize=True), "--resize needs --size"),
    (dict(min_foreground=0.99, size=32), "lower --min-foreground"),
])
def test_option_errors(nifti_dir: Path, tmp_path: Path, kwargs: dict, message: str):
    if "demo" not in kwargs and kwargs:
        kwargs = {"inputs": [nifti_dir], **kwargs}
    with pytest.raises(UserError, match=re.escape(message)):
        prepare(test_fraction=0, out=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_input_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .nii or .nii.gz files"):
        prepare(test_fraction=0, inputs=[empty], out=tmp_path / "out")
    flat = write_nifti(tmp_path / "flat.nii", np.ones((8, 8)))
    with pytest.raises(UserError, match="flat.nii has 2 dimension"):
        prepare(test_fraction=0, inputs=[flat], out=tmp_path / "out")
    wrong_mask = tmp_path / "masks"
    wrong_mask.mkdir()
    with pytest.raises(UserError, match="has no mask_4x.npy"):
        prepare(test_fraction=0, inputs=[write_nifti(tmp_path / "v.nii", synthetic_volume(0))], out=tmp_path / "out",
                accs=["4x"], mask_dir=wrong_mask)


def test_mask_dir_masks_are_used(nifti_dir: Path, tmp_path: Path):
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[[0, 1, 5, 31]] = 1.0
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "mask_4x.npy", mask)
    prepare(test_fraction=0, inputs=[nifti_dir], out=tmp_path / "out", size=32, accs=["4x"], mask_dir=tmp_path / "masks")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "mask_4x.npy"), mask)
    kspace = _read(next((tmp_path / "out" / "train" / "acc_4x").glob("*.h5")), "4x")["kspace"]
    assert np.all(kspace[[2, 3, 4]] == 0) and np.any(kspace[5] != 0)


def test_helpers():
    assert [fft_friendly(n) for n in (150, 233, 240, 7)] == [150, 240, 240, 8]
    files = [InputFile(Path(p), Path("/d")) for p in ("/d/1/T1.nii", "/d/2/T1.nii", "/d/2/T2.nii.gz",
                                                       "/d/patient3/patient3_frame01.nii.gz")]
    assert [subject_of(f) for f in files] == [("1", "folder"), ("2", "folder"), ("2", "folder"),
                                               ("patient3", "token")]
    assert volume_names(files, ["1", "2", "2", "patient3"]) == ["1_T1", "2_T1", "2_T2", "patient3_frame01"]
    # two files of one subject with the same name get the folders above them
    pair = [InputFile(Path(p), Path("/d")) for p in ("/d/1/pre/T1.nii", "/d/1/orig/T1.nii")]
    assert volume_names(pair, ["1", "1"]) == ["pre_1_T1", "orig_1_T1"]


@pytest.mark.parametrize("size", [150, 240])
def test_mask_kind_public_writes_the_public_masks(nifti_dir: Path, tmp_path: Path, size: int):
    from data.masks import PUBLIC_MASK_DIR
    out = tmp_path / "out"
    prepare(inputs=[nifti_dir], out=out, size=size, accs=["4x", "5x"], mask_kind="public", max_slices_per_volume=2,
            min_foreground=0.0)  # 40 x 40 volumes padded to 240 x 240 cover ~3 % of it
    folder = {150: "cardiac", 240: "brain"}[size]
    for acc in ("4x", "5x"):
        public = np.load(PUBLIC_MASK_DIR / folder / f"mask_{acc}.npy")
        written = np.load(out / f"mask_{acc}.npy")
        np.testing.assert_array_equal(written, public)  # float32 here, float64 there: {0, 1} exactly
        kspace = _read(next((out / "train" / f"acc_{acc}").glob("*.h5")), acc)["kspace"]
        assert np.all(kspace[public[:, 0] == 0] == 0) and np.all(kspace[public[:, 0] == 1] != 0)


def test_mask_kind_public_refuses_other_sizes_and_presets_use_it(nifti_dir: Path, tmp_path: Path, capsys):
    with pytest.raises(UserError, match=r"--mask-kind public --acc 4x .*not 32x32 at 4x; use --mask-kind "
                                        "variable-density"):
        prepare(inputs=[nifti_dir], out=tmp_path / "a", size=32, accs=["4x"], mask_kind="public")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    from data.prepare import Options
    assert Options(out=tmp_path, inputs=[nifti_dir], preset="mrbrains").resolved().mask_kind == "public"
    assert Options(out=tmp_path, inputs=[nifti_dir], preset="acdc").resolved().mask_kind == "public"
    assert capsys.readouterr().err == ""
    assert Options(out=tmp_path, inputs=[nifti_dir], preset="acdc", size=64).resolved().mask_kind == "rows"
    assert "note: --size 64 replaces --preset acdc's 150" in capsys.readouterr().err
