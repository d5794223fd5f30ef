"""scripts/reconstruct.py: fastMRI, ISMRMRD and NIfTI files written here go through it to NIfTI and fastMRI
submission files, and each slice equals evaluate.py's reconstruction of the same slice bit for bit; bad input
is one line and writes nothing."""
from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest

import evaluate
import train_teacher
from conftest import cli_error, phantom
from data.prepare import prepare
from data.slicing import synthetic_phase
from scripts import reconstruct

SIZE, READOUT, PHASE_ENCODE, SLICES = 16, 32, 20, 4
PATIENTS = ("p0", "p1", "p2", "p3")


def fftc(image: np.ndarray) -> np.ndarray:
    """fastMRI's centred orthonormal 2-D FFT over the last two axes (numpy, not data/fft.py)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifftc(kspace: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_fastmri(path, seed: int, patient: str, lines: np.ndarray | None = None, coils: int = 1) -> np.ndarray:
    """A single-coil fastMRI file: smooth complex images over an oversampled readout, their centred k-space and
    reconstruction_esc (train / validation schema); with ``lines`` (PHASE_ENCODE,) bool, the test schema instead:
    k-space zero outside those lines, the ``mask``, no reference. Returns the full k-space (S, R, P)."""
    images = np.zeros((SLICES, READOUT, PHASE_ENCODE), dtype=np.complex128)
    top, left = (READOUT - SIZE) // 2, (PHASE_ENCODE - SIZE) // 2
    phase = np.moveaxis(np.angle(synthetic_phase((SIZE, SIZE, SLICES), seed, "fixture")), -1, 0)
    images[:, top:top + SIZE, left:left + SIZE] = (np.moveaxis(phantom(SIZE, SLICES, seed), -1, 0) + 0.05) * \
        np.exp(1j * phase) * 3e-5
    kspace = fftc(images).astype(np.complex64)
    with h5py.File(path, "w") as f:
        if lines is None:
            f["kspace"] = kspace if coils == 1 else np.repeat(kspace[:, None], coils, axis=1)
            esc = np.abs(ifftc(kspace.astype(np.complex128)))[:, top:top + SIZE, left:left + SIZE]
            f["reconstruction_esc"] = esc.astype(np.float32)
        else:
            f["kspace"] = kspace * lines
            f["mask"] = lines.astype(np.float32)
        f.attrs["acquisition"], f.attrs["patient_id"] = "CORPD_FBK", patient
    return kspace


def write_ismrmrd(path, kspace: np.ndarray, lines: np.ndarray, trajectory: str = "cartesian") -> None:
    """The acquired lines of centred k-space (S, R, P), one coil, or (S, C, R, P), C coils, as ISMRMRD
    acquisitions, in an order other than the lines' (as scanners interleave them)."""
    import ismrmrd
    from ismrmrd import xsd
    n_slices, readout, n_lines = kspace.shape[0], *kspace.shape[-2:]
    space = xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=readout, y=n_lines, z=1),
                                  fieldOfView_mm=xsd.fieldOfViewMm(x=2 * readout, y=n_lines, z=3.0))
    limits = xsd.encodingLimitsType(kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=n_lines - 1,
                                                                         center=n_lines // 2))
    encoding = xsd.encodingType(encodedSpace=space, reconSpace=space, encodingLimits=limits,
                                trajectory=xsd.trajectoryType(trajectory))
    conditions = xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_500_000)
    header = xsd.ismrmrdHeader(experimentalConditions=conditions, encoding=[encoding])
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dataset.write_xml_header(header.toXML("utf-8"))
    noise = ismrmrd.Acquisition.from_array(np.ones((1, readout), np.complex64))
    noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    dataset.append_acquisition(noise)
    for column in np.flatnonzero(lines)[::-1]:
        for s in range(n_slices):
            acq = ismrmrd.Acquisition.from_array(np.atleast_2d(kspace[s, ..., column]).astype(np.complex64),
                                                 center_sample=readout // 2)
            acq.idx.kspace_encode_step_1, acq.idx.slice = int(column), s
            dataset.append_acquisition(acq)
    dataset.close()


def test_lines(seed: int = 5) -> np.ndarray:
    """A column selection of the fixture's phase-encode lines: the centre band and every third line."""
    lines = np.zeros(PHASE_ENCODE, dtype=bool)
    lines[::3] = True
    lines[PHASE_ENCODE // 2 - 2:PHASE_ENCODE // 2 + 2] = True
    return lines


test_lines.__test__ = False  # a helper, not a test


def train(data, exp) -> str:
    train_teacher.main(["--data-root", str(data), "--acc", "4x", "--epochs", "1", "--batch-size", "4", "--exp-dir",
                        str(exp), "--no-progress", "--seed", "3", "--model", "student"])
    return str(exp / "best_model.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """fastMRI files of four patients prepared as magnitude and as complex data (one patient per split, p2 in
    test), a D3C5 trained one epoch on each, and evaluate.py's reconstructions of the test split."""
    root = tmp_path_factory.mktemp("reconstruct")
    (root / "raw").mkdir()
    kspace = {p: write_fastmri(root / "raw" / f"file{i}.h5", i, p) for i, p in enumerate(PATIENTS)}
    result = {"root": root, "kspace": kspace}
    for image in ("magnitude", "complex"):
        data = root / f"data-{image}"
        prepare(out=data, fastmri=[root / "raw"], image=image, size=SIZE, accs=["4x"], mask_kind="fastmri-random",
                center_fraction=0.08, min_foreground=0.0, val_subjects=["p1", "p3"], test_subjects=["p2"])
        checkpoint = train(data, root / f"run-{image}")
        evaluate.main(["--checkpoints", checkpoint, "--names", "net", "--data-root", str(data), "--acc", "4x",
                       "--out-dir", str(root / f"eval-{image}"), "--save-recons", "--batch-size", "4"])
        result[image] = {"data": data, "checkpoint": checkpoint, "recons": root / f"eval-{image}" / "recons" / "net"}
    return result


def evaluated(recons, name: str) -> np.ndarray:
    with h5py.File(recons / f"{name}.h5") as f:
        return f["reconstruction"][()]  # (S, H, W) network units


def source_slices(data, name: str) -> np.ndarray:
    with h5py.File(data / "test" / "acc_4x" / f"{name}.h5") as f:
        return f.attrs["source_slices"]


@pytest.mark.parametrize("image", ["magnitude", "complex"])
def test_a_fastmri_file_equals_evaluate_bit_for_bit(runs, image, tmp_path):
    run = runs[image]
    out = tmp_path / "out"
    reconstruct.main([run["checkpoint"], str(runs["root"] / "raw" / "file2.h5"), "--out-dir", str(out),
                      "--no-progress", "--png"])
    volume = nib.load(out / "file2.nii.gz")
    recon = np.moveaxis(np.asarray(volume.dataobj.get_unscaled()), -1, 0)
    kept = source_slices(run["data"], "file2")
    assert recon.dtype == np.float32 and recon.shape == (SLICES, SIZE, SIZE)
    assert np.array_equal(recon[kept], evaluated(run["recons"], "file2"))
    assert len(list((out / "png").glob("file2_*.png"))) == SLICES
    # The submission file holds the same slices in the input's units (the scaling NIfTI records).
    reconstruct.main([run["checkpoint"], str(runs["root"] / "raw" / "file2.h5"), "--out-dir", str(tmp_path / "sub"),
                      "--no-progress", "--format", "fastmri"])
    with h5py.File(tmp_path / "sub" / "file2.h5") as f:
        submission = f["reconstruction"][()]
    assert submission.dtype == np.float32 and submission.shape == (SLICES, SIZE, SIZE)
    np.testing.assert_allclose(submission, np.moveaxis(volume.get_fdata(), -1, 0), rtol=1e-6,
                               atol=1e-6 * np.abs(submission).max())
    with h5py.File(runs["root"] / "raw" / "file2.h5") as f:
        reference = f["reconstruction_esc"][()].astype(np.float64)
        kspace = f["kspace"][()].astype(np.complex128)
    # Back in the input's units: data.prepare's scaling undone (min-max of the reference; 1 / max |image| of the
    # complex images, the centre crop of ifft2c(kspace)).
    if image == "magnitude":
        slope, intercept = reference.max() - reference.min(), reference.min()
    else:
        top, left = (READOUT - SIZE) // 2, (PHASE_ENCODE - SIZE) // 2
        slope, intercept = np.abs(ifftc(kspace)[:, top:top + SIZE, left:left + SIZE]).max(), 0.0
    np.testing.assert_allclose(submission, recon * slope + intercept, rtol=1e-5, atol=1e-6 * slope)


def test_a_nifti_volume_equals_evaluate_bit_for_bit(runs, tmp_path):
    """A NIfTI volume prepared as an external test set (data.prepare --test-only with the run's masks) and
    scored by evaluate.py, against the same file through reconstruct; its affine is kept."""
    run = runs["magnitude"]
    volume = phantom(SIZE + 2, 5, seed=11)[:, 1:-1, :]  # 18 x 16 x 5: cropped along one axis
    affine = np.diag([0.9, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.0)
    nib.save(nib.Nifti1Image(volume * 700.0, affine), tmp_path / "brain.nii.gz")
    data = tmp_path / "external"
    prepare(out=data, inputs=[tmp_path / "brain.nii.gz"], size=SIZE, accs=["4x"], mask_dir=run["data"],
            min_foreground=0.0, test_only=True)
    evaluate.main(["--checkpoints", run["checkpoint"], "--names", "net", "--data-root", str(data), "--acc", "4x",
                   "--out-dir", str(tmp_path / "eval"), "--save-recons", "--batch-size", "4"])
    out = tmp_path / "out"
    reconstruct.main([run["checkpoint"], str(tmp_path / "brain.nii.gz"), "--out-dir", str(out), "--no-progress"])
    written = nib.load(out / "brain.nii.gz")
    recon = np.moveaxis(np.asarray(written.dataobj.get_unscaled()), -1, 0)
    name = next((data / "test" / "acc_4x").glob("*.h5")).stem
    assert np.array_equal(recon[source_slices(data, name)], evaluated(tmp_path / "eval" / "recons" / "net", name))
    # Cropping 18 rows to 16 moves the origin by one voxel along the first axis.
    expected = affine.copy()
    expected[:3, 3] += affine[:3, 0]
    np.testing.assert_allclose(written.affine, expected)
    # get_fdata gives the input's units: the 0..700 volume, not [0, 1].
    assert 300 < written.get_fdata().max() < 1400


def test_a_fully_sampled_ismrmrd_scan_equals_evaluate_bit_for_bit(runs, tmp_path):
    """Every line acquired: the scan is undersampled with the checkpoint's mask like the fastMRI file of the same
    k-space that data.prepare --image complex prepared, and reconstructs to evaluate.py's slices exactly."""
    run = runs["complex"]
    write_ismrmrd(tmp_path / "file2.h5", runs["kspace"]["p2"], np.ones(PHASE_ENCODE, dtype=bool))
    out = tmp_path / "out"
    reconstruct.main([run["checkpoint"], str(tmp_path / "file2.h5"), "--out-dir", str(out), "--no-progress"])
    recon = np.moveaxis(np.asarray(nib.load(out / "file2.nii.gz").dataobj.get_unscaled()), -1, 0)
    assert np.array_equal(recon[source_slices(run["data"], "file2")], evaluated(run["recons"], "file2"))


def test_the_command_line_refuses_in_one_line(runs, tmp_path):
    from conftest import run_cli
    result = run_cli("-m", "scripts.reconstruct", runs["magnitude"]["checkpoint"], str(tmp_path / "missing.h5"),
                     "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "does not exist" in result.stderr and not (tmp_path / "out").exists()


def test_a_fastmri_test_file_and_the_same_ismrmrd_scan_agree(runs, tmp_path):
    """Undersampled k-space keeps its own lines: a fastMRI test file and an ISMRMRD file of the same lines give
    one reconstruction, the network sees every acquired column, and the output is the checkpoint's size."""
    lines = test_lines()
    kspace = runs["kspace"]["p2"]
    write_fastmri(tmp_path / "test_file.h5", 2, "p2", lines)
    write_ismrmrd(tmp_path / "scan.h5", kspace * lines, lines)
    out = tmp_path / "out"
    reconstruct.main([runs["complex"]["checkpoint"], str(tmp_path / "test_file.h5"), str(tmp_path / "scan.h5"),
                      "--out-dir", str(out), "--no-progress", "--format", "fastmri"])
    with h5py.File(out / "test_file.h5") as f, h5py.File(out / "scan.h5") as g:
        from_fastmri, from_ismrmrd = f["reconstruction"][()], g["reconstruction"][()]
    assert from_fastmri.shape == (SLICES, SIZE, SIZE)
    assert np.array_equal(from_fastmri, from_ismrmrd)
    assert np.isfinite(from_fastmri).all() and from_fastmri.max() > 0


def test_bad_inputs_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    root, complex_run, magnitude_run = runs["root"], runs["complex"], runs["magnitude"]
    good = str(root / "raw" / "file2.h5")
    out = tmp_path / "out"

    write_fastmri(tmp_path / "multi.h5", 1, "p1", coils=3)
    err = cli_error(reconstruct.main, [complex_run["checkpoint"], good, str(tmp_path / "multi.h5"), "--out-dir",
                                       str(out), "--no-progress"], capsys)
    assert "multi-coil (3 coils)" in err
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))

    lines = test_lines()
    write_ismrmrd(tmp_path / "spiral.h5", runs["kspace"]["p2"] * lines, lines, trajectory="spiral")
    err = cli_error(reconstruct.main, [complex_run["checkpoint"], str(tmp_path / "spiral.h5"), "--out-dir", str(out)],
                    capsys)
    assert "unsupported trajectory 'spiral'" in err

    small = runs["kspace"]["p2"][:, 8:-8, 4:-4]  # 16 x 12 images, narrower than the checkpoint's 16
    write_ismrmrd(tmp_path / "small.h5", small, np.ones(small.shape[-1], dtype=bool))
    err = cli_error(reconstruct.main, [complex_run["checkpoint"], str(tmp_path / "small.h5"), "--out-dir", str(out)],
                    capsys)
    assert "smaller than the 16 x 16 slices" in err

    write_fastmri(tmp_path / "test_file.h5", 2, "p2", test_lines())
    err = cli_error(reconstruct.main, [magnitude_run["checkpoint"], str(tmp_path / "test_file.h5"), "--out-dir",
                                       str(out)], capsys)
    assert "magnitude network" in err

    mask = magnitude_run["data"] / "mask_4x.npy"
    moved = mask.with_name("moved.npy")
    mask.rename(moved)
    try:
        err = cli_error(reconstruct.main, [magnitude_run["checkpoint"], good, "--out-dir", str(out)], capsys)
        assert "is missing; pass it with --mask FILE" in err
        # --mask replaces it; one of another size is refused.
        np.save(tmp_path / "mask8.npy", np.ones((8, 8), np.float32))
        err = cli_error(reconstruct.main, [magnitude_run["checkpoint"], good, "--out-dir", str(out), "--mask",
                                           str(tmp_path / "mask8.npy")], capsys)
        assert "8x8" in err
        reconstruct.main([magnitude_run["checkpoint"], good, "--out-dir", str(out), "--mask", str(moved),
                          "--no-progress"])
        assert (out / "file2.nii.gz").is_file()
    finally:
        moved.rename(mask)
    # An earlier run's files are replaced only with --overwrite.
    err = cli_error(reconstruct.main, [magnitude_run["checkpoint"], good, "--out-dir", str(out)], capsys)
    assert "--overwrite" in err


@pytest.mark.parametrize("mode, tolerance", [("fused", 1e-5), ("bf16", 2e-2)])
def test_faster_modes_are_close_to_the_exact_reconstruction(runs, tmp_path, mode, tolerance):
    """tests/test_inference_modes.py argues the tolerances."""
    run, raw = runs["magnitude"], str(runs["root"] / "raw" / "file2.h5")
    for name in ("exact", mode):
        reconstruct.main([run["checkpoint"], raw, "--out-dir", str(tmp_path / name), "--no-progress", "--mode", name])
    exact, fast = (np.asarray(nib.load(tmp_path / name / "file2.nii.gz").dataobj.get_unscaled())
                   for name in ("exact", mode))
    assert np.abs(fast - exact).max() <= tolerance * np.abs(exact).max()


EXPORTED_RUN = """
import sys, torch
try:
    import models  # noqa: F401
    sys.exit("the repository is importable: the program is not shown to run without it")
except ImportError:
    pass
program = torch.export.load("net.pt2").module()
inputs = torch.load("inputs.pt", weights_only=True)
torch.save(program(*inputs), "out.pt")
"""


@pytest.mark.parametrize("image", ["magnitude", pytest.param("complex", marks=pytest.mark.slow)])
def test_exported_program_runs_without_the_repository(runs, tmp_path, image):
    """The .pt2 program, in a fresh interpreter that cannot import this repository, at another batch and size than
    it was traced at, against the checkpoint's network. It runs the same ATen operations in the same order, so the
    tolerance is float rounding of the FFTs (1e-6 of the maximum); it was bit-identical where measured."""
    import subprocess
    import sys

    import torch

    from models.checkpoints.format import load_reconstructor
    from models.inference.cost import synthetic_inputs
    checkpoint = runs[image]["checkpoint"]
    reconstruct.main([checkpoint, "--export", str(tmp_path / "net.pt2")])
    channels = 2 if image == "complex" else 1
    inputs = synthetic_inputs(20, 3, channels, seed=4)
    torch.save(inputs, tmp_path / "inputs.pt")
    result = subprocess.run([sys.executable, "-I", "-c", EXPORTED_RUN], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.inference_mode():
        expected = load_reconstructor(checkpoint).eval()(*inputs)
    exported = torch.load(tmp_path / "out.pt", weights_only=True)
    assert exported.shape == expected.shape == (3, channels, 20, 20)
    assert (exported - expected).abs().max() <= 1e-6 * expected.abs().max()
    import zipfile
    with zipfile.ZipFile(tmp_path / "net.pt2") as archive:
        info = [name for name in archive.namelist() if name.endswith("sftkd.json")]
        assert info and b"torch.export.load" in archive.read(info[0])
