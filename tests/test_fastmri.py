"""Tests of data/fastmri.py and ``data/prepare.py --fastmri``: tiny files written here in the fastMRI schema
(single-coil knee-like and multi-coil brain-like, centred k-space, attributes), through to this project's layout."""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data.dataset import SliceDataset
from data.fastmri import FastmriError, open_volume
from data.fft import fft2, zero_filled
from data.prepare import FASTMRI_NOTE, _shorten, main, prepare
from tests.conftest import phantom
from utils import UserError, run_cli as run_main

SLICES, SIZE = 6, 32


def reference_images(seed: int, n_slices: int = SLICES) -> np.ndarray:
    """(S, SIZE, SIZE) float32 magnitude images in fastMRI-like units (about 1e-4) with a small noise floor."""
    images = np.moveaxis(phantom(SIZE, n_slices, seed), -1, 0) * 1e-4 + 2e-6
    return images.astype(np.float32)


def centred_kspace(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(..., H, W) complex64 centred k-space of ``images`` zero-padded to ``shape`` (H, W), like a raw readout."""
    pad = [(0, 0)] * (images.ndim - 2) + [((n - m) // 2, n - m - (n - m) // 2)
                                          for n, m in zip(shape, images.shape[-2:])]
    padded = np.pad(images, pad)
    shifted = np.fft.ifftshift(padded, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, norm="ortho"), axes=(-2, -1)).astype(np.complex64)


def write_fastmri(path: Path, seed: int, coils: int = 1, acquisition: str | None = "CORPD_FBK",
                  patient_id: str | None = None, references: tuple[str, ...] | None = None,
                  n_slices: int = SLICES) -> np.ndarray:
    """Write one fastMRI-schema file; returns the (S, SIZE, SIZE) reference the challenge scores against.

    Single-coil files hold ESC and RSS (as the knee single-coil release does, RSS a different image here so a
    mix-up shows), multi-coil files RSS; ``references`` overrides which are written."""
    esc = reference_images(seed, n_slices)
    rss = np.ascontiguousarray(esc[:, ::-1, :] * 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if coils == 1:
            f["kspace"] = centred_kspace(esc, (40, 36))
        else:
            sensitivities = np.linspace(0.5, 1.0, coils, dtype=np.float32)[None, :, None, None]
            f["kspace"] = centred_kspace(rss[:, None] * sensitivities, (40, SIZE))
        names = references if references is not None else (
            ("reconstruction_esc", "reconstruction_rss") if coils == 1 else ("reconstruction_rss",))
        for name in names:
            f[name] = esc if name == "reconstruction_esc" else rss
        f["ismrmrd_header"] = np.bytes_(b"<ismrmrdHeader/>")
        f.attrs["max"], f.attrs["norm"] = float(esc.max()), float(np.linalg.norm(esc))
        if acquisition is not None:
            f.attrs["acquisition"] = acquisition
        if patient_id is not None:
            f.attrs["patient_id"] = patient_id
    return esc if coils == 1 else rss


def scaled(reference: np.ndarray) -> np.ndarray:
    """Per-volume min-max scaling of an (S, H, W) reference, as (H, W, S) float64: what prepare stores."""
    volume = reference.astype(np.float64)
    return np.moveaxis((volume - volume.min()) / (volume.max() - volume.min()), 0, -1)


def read_outputs(out: Path, acc: str) -> dict[str, dict]:
    """volume name -> {split, volfs, kspace, zf, attrs} of every file of ``acc``."""
    found = {}
    for split in ("train", "validation"):
        for path in sorted((out / split / f"acc_{acc}").glob("*.h5")):
            with h5py.File(path, "r") as f:
                found[path.stem] = {"split": split, "volfs": f["volfs"][()], "kspace": f[f"kspace_volus_{acc}"][()],
                                    "zf": f[f"img_volus_{acc}"][()], "attrs": dict(f.attrs)}
    return found


@pytest.mark.parametrize("coils, preset, reference, kind", [
    (1, "fastmri-knee-sc", "reconstruction_esc", "fastmri-random"),
    (4, "fastmri-brain-mc", "reconstruction_rss", "fastmri-equispaced"),
])
def test_round_trip_to_the_layout(tmp_path: Path, coils, preset, reference, kind):
    folder = tmp_path / "fastmri"
    references = {f"file{n}": write_fastmri(folder / f"file{n}.h5", n, coils, patient_id=f"p{n}") for n in range(4)}
    out = tmp_path / "out"
    summary = prepare(test_fraction=0, out=out, fastmri=[folder], preset=preset, size=SIZE, accs=["4x", "8x"],
                      center_fraction=[0.08, 0.04], min_foreground=0.0)

    assert summary["mask_kind"] == kind and summary["fastmri_references"] == {reference: 4}
    assert summary["train_slices"] + summary["validation_slices"] == 4 * SLICES
    for acc, n_centre in (("4x", 3), ("8x", 1)):  # round(32 * 0.08), round(32 * 0.04)
        mask = np.load(out / f"mask_{acc}.npy")
        assert mask.shape == (SIZE, SIZE) and np.array_equal(mask.min(axis=0), mask.max(axis=0))  # whole columns
        assert mask[:, 0].all() and mask[0, [0, 1, SIZE - 1]].sum() >= n_centre
        outputs = read_outputs(out, acc)
        assert set(outputs) == set(references)
        for name, stored in outputs.items():
            expected = scaled(references[name])[:, :, stored["attrs"]["source_slices"]]
            np.testing.assert_allclose(stored["volfs"], expected, rtol=0, atol=1e-6)
            assert stored["attrs"]["reference"] == reference and stored["attrs"]["acquisition"] == "CORPD_FBK"
            assert stored["attrs"]["subject"] == f"p{name[-1]}"
            volfs = torch.from_numpy(np.moveaxis(stored["volfs"], -1, 0).astype(np.float64))
            kspace = fft2(volfs) * torch.from_numpy(mask.astype(np.float64))
            np.testing.assert_allclose(np.moveaxis(stored["kspace"], -1, 0), kspace.numpy(), rtol=0, atol=1e-6)
            np.testing.assert_allclose(np.moveaxis(stored["zf"], -1, 0), zero_filled(kspace).numpy(), atol=1e-6)
    item = SliceDataset(out, "train", "8x")[0]
    assert item.target.shape == item.mask.shape == (1, SIZE, SIZE)


def test_header_reads_shapes_and_attributes(tmp_path: Path):
    write_fastmri(tmp_path / "sc.h5", 0, patient_id="abc")
    single = open_volume(tmp_path / "sc.h5")
    assert (single.reference, single.shape, single.coils, single.acquisition, single.patient_id) == (
        "reconstruction_esc", (SIZE, SIZE, SLICES), 1, "CORPD_FBK", "abc")
    rss = write_fastmri(tmp_path / "mc.h5", 1, coils=3, acquisition="AXT2", patient_id=None)
    multi = open_volume(tmp_path / "mc.h5")
    assert (multi.reference, multi.coils, multi.acquisition, multi.patient_id) == ("reconstruction_rss", 3, "AXT2",
                                                                                   None)
    np.testing.assert_array_equal(multi.dataobj, np.moveaxis(rss, 0, -1))


def test_split_by_patient_id_never_splits_a_patient(tmp_path: Path):
    folder = tmp_path / "fastmri"
    patients = {"file0": "pA", "file1": "pA", "file2": "pA", "file3": "pB", "file4": "pB", "file5": "pC",
                "file6": None, "file7": None}
    for n, (name, patient) in enumerate(patients.items()):
        write_fastmri(folder / f"{name}.h5", n, patient_id=patient, n_slices=2)
    splits_seen = set()
    for seed in range(3):
        out = tmp_path / f"out{seed}"
        summary = prepare(test_fraction=0, out=out, fastmri=[folder], size=SIZE, accs=["4x"], seed=seed, val_fraction=0.4,
                          min_foreground=0.0)
        split_of = {name: stored["split"] for name, stored in read_outputs(out, "4x").items()}
        assert set(split_of) == set(patients)
        for patient in ("pA", "pB"):
            assert len({split_of[name] for name, p in patients.items() if p == patient}) == 1
        record = json.loads((out / "split.json").read_text())["subjects"]
        assert set(record) == {"pA", "pB", "pC", "file6", "file7"}  # no patient_id: the file's own name
        assert "by the patient_id attribute" in summary["subjects_found"]
        splits_seen.add(split_of["file0"])
    assert splits_seen == {"train", "validation"}, "the seed moves patient pA between splits"


def test_acquisition_filter_counts_what_it_leaves_out(tmp_path: Path, capsys):
    folder = tmp_path / "fastmri"
    for n, acquisition in enumerate(("CORPD_FBK", "CORPDFS_FBK", "CORPD_FBK", "CORPDFS_FBK", "CORPDFS_FBK", None)):
        write_fastmri(folder / f"file{n}.h5", n, acquisition=acquisition, n_slices=2)
    out = tmp_path / "out"
    summary = main(["--test-fraction", "0", "--fastmri", str(folder), "--acquisition", "CORPD_FBK", "--size", str(SIZE), "--acc", "4x",
                    "--out-dir", str(out), "--min-foreground", "0"])
    assert summary["skipped_acquisitions"] == {"CORPDFS_FBK": 3, "(none)": 1}
    assert set(read_outputs(out, "4x")) == {"file0", "file2"}
    printed = capsys.readouterr().out
    assert "skipped 4 fastMRI file(s) by --acquisition: 1 (none), 3 CORPDFS_FBK" in printed
    with pytest.raises(UserError, match=r"AXT2 keeps none of the 6 fastMRI files \(they hold: \(none\) \(1\), "
                       r"CORPDFS_FBK \(3\), CORPD_FBK \(2\)\); name one of those"):
        prepare(test_fraction=0, out=tmp_path / "none", fastmri=[folder], acquisitions=["AXT2"], size=SIZE)
    assert not (tmp_path / "none").exists()


def test_slice_range_is_per_volume_and_python_style(tmp_path: Path):
    folder = tmp_path / "fastmri"
    for n in range(3):
        write_fastmri(folder / f"file{n}.h5", n, patient_id=f"p{n}")
    for window, expected in (((1, -1), [1, 2, 3, 4]), ((2, 4), [2, 3]), ((-2, SLICES + 5), [4, 5])):
        out = tmp_path / f"out{window}"
        summary = prepare(test_fraction=0, out=out, fastmri=[folder], size=SIZE, accs=["4x"], slice_range=window,
                          min_foreground=0.0)
        assert summary["slices_outside_range"] == 3 * (SLICES - len(expected))
        for stored in read_outputs(out, "4x").values():
            np.testing.assert_array_equal(stored["attrs"]["source_slices"], expected)


def test_missing_reference_is_a_one_line_error_and_writes_nothing(tmp_path: Path, capsys):
    folder = tmp_path / "fastmri"
    write_fastmri(folder / "file0.h5", 0, patient_id="p0")
    write_fastmri(folder / "file1.h5", 1, patient_id="p1")
    # a single-coil test-set file: k-space only, or an RSS that single-coil submissions are not scored against
    for references in ((), ("reconstruction_rss",)):
        test_file = folder / "file9_test.h5"
        write_fastmri(test_file, 9, references=references)
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, ["--fastmri", str(folder), "--out-dir", str(out), "--size", str(SIZE)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: {test_file} has no 'reconstruction_esc', the reference the fastMRI single-coil "
                              "challenge scores against")
        assert not out.exists()
    with pytest.raises(FastmriError, match="has no 'reconstruction_rss'"):
        write_fastmri(tmp_path / "mc.h5", 0, coils=2, references=())
        open_volume(tmp_path / "mc.h5")
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(FastmriError, match="notes.h5 is not a readable HDF5 file"):
        open_volume(tmp_path / "notes.h5")


def test_output_says_what_this_is(tmp_path: Path, capsys):
    folder = tmp_path / "fastmri"
    for n in range(2):
        write_fastmri(folder / f"file{n}.h5", n, coils=2, acquisition="AXT2", patient_id=f"p{n}", n_slices=2)
    main(["--test-fraction", "0", "--fastmri", str(folder), "--preset", "fastmri-brain-mc", "--size", str(SIZE), "--acc", "4x",
          "--out-dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "fastMRI: reconstruction_rss of 2 file(s) taken as the fully sampled images" in printed
    assert FASTMRI_NOTE in printed and "not comparable with fastMRI leaderboard" in FASTMRI_NOTE
    assert "fastmri-equispaced masks" in printed


@pytest.mark.parametrize("kwargs, message", [
    (dict(inputs=["x.nii"], acquisitions=["CORPD_FBK"]), "--acquisition filters fastMRI files"),
    (dict(preset="acdc"), "--preset acdc is for --input data"),
    (dict(axis=0), "--axis 0 does not apply to --fastmri"),
    (dict(subject_regex="p(\\d)"), "--subject-regex does not apply to --fastmri"),
    (dict(slice_range=(4, 2)), "--slice-range 4 2 keeps no slice"),
    (dict(accs=["4x", "8x"], center_fraction=[0.08, 0.04, 0.02]), "--center-fraction has 3 values for 2"),
    (dict(center_fraction=1.5), "--center-fraction 1.5 must be between 0 and 1"),
    (dict(mask_kind="fastmri-random", mask_dir="masks"), "pass either --mask-dir"),
    (dict(mask_kind="fastmri-random", accs=["4x"], center_fraction=0.3),
     "--mask-kind fastmri-random --acc 4x --center-fraction 0.3: a centre fraction of 0.3 alone samples 10 of 32"),
])
def test_option_errors(tmp_path: Path, kwargs: dict, message: str):
    folder = tmp_path / "fastmri"
    write_fastmri(folder / "file0.h5", 0, patient_id="p0", n_slices=2)
    write_fastmri(folder / "file1.h5", 1, patient_id="p1", n_slices=2)
    options = {"size": SIZE, **kwargs} if "inputs" in kwargs else {"fastmri": [folder], "size": SIZE, **kwargs}
    with pytest.raises(UserError, match=re.escape(message)):
        prepare(test_fraction=0, out=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_fastmri_preset_needs_fastmri_files(tmp_path: Path):
    with pytest.raises(UserError, match="--preset fastmri-knee-sc is for --fastmri data; pass the files with "
                                        "--fastmri"):
        prepare(test_fraction=0, out=tmp_path / "out", inputs=["x.nii"], preset="fastmri-knee-sc")


def test_long_subject_lists_are_cut_in_the_output():
    ids = [f"{n:064x}" for n in range(40)]  # fastMRI-like patient ids
    # 15 ids and their spaces take 974 characters, a 16th would pass 1000
    assert _shorten(ids) == " ".join(ids[:15]) + " ... and 25 more (split.json)"
    acdc = [f"patient{n:03d}" for n in range(1, 81)]
    assert _shorten(acdc) == " ".join(acdc)
