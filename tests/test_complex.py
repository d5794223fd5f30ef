"""Complex images (issue #26): the 2-channel convention of data/fft.py, every network and method on complex data,
the image type recorded and checked, --synthetic-phase, and fastMRI single-coil k-space with --image complex
(a fixture written here: random smooth complex images, readout oversampling, centred k-space, its own
reconstruction_esc)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

import evaluate
import train_sft
import train_student_kd
import train_teacher
from data.dataset import SYNTHETIC_FROM_MAGNITUDE, SliceDataset
from data.fft import data_fidelity, fft2, ifft2, magnitude, to_channels, to_complex, zero_filled
from data.layout import undersample, write_volume
from data.masks import cartesian_row_mask
from data.prepare import ACQUIRED_FASTMRI, prepare
from data.slicing import synthetic_phase
from models.checkpoints.format import load_model
from models.distill.losses import KD_METHODS
from models.nets.registry import PRESETS, with_image_channels
from models.nets.sft import SFTNet
from scripts import figure
from scripts.report import data_lines
from tests.conftest import make_dataset, phantom
from utils import run_cli

SIZE = 16


def complex_volume(seed: int, size: int = SIZE, n_slices: int = 4) -> np.ndarray:
    """(size, size, n_slices) complex64: smooth blobs with a smooth random phase, max |x| = 1."""
    magnitudes = phantom(size, n_slices, seed)
    return (magnitudes * synthetic_phase(magnitudes.shape, seed, f"vol{seed}")).astype(np.complex64)


def make_complex_dataset(root: Path, size: int = SIZE, volumes=(("train", 2), ("validation", 1))) -> Path:
    """A tiny complex data set in this project's layout (as data/prepare.py writes it), acceleration 4x."""
    mask = cartesian_row_mask((size, size), "4x", seed=0)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "mask_4x.npy", mask)
    index = 0
    for split, count in volumes:
        folder = root / split / "acc_4x"
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            volfs = complex_volume(index, size)
            kspace, zf = undersample(volfs, {"4x": mask})["4x"]
            write_volume(folder / f"vol{index}.h5", volfs, kspace, zf, "4x", {"kspace_source": "test fixture"})
            index += 1
    return root


# --------------------------------------------------------------------------- the convention (data/fft.py)

def test_channels_round_trip_and_magnitude():
    image = torch.randn(3, 1, 8, 6, dtype=torch.complex64)
    channels = to_channels(image)
    assert channels.shape == (3, 2, 8, 6) and channels.dtype == torch.float32
    assert torch.equal(channels[:, 0], image.real[:, 0]) and torch.equal(channels[:, 1], image.imag[:, 0])
    back = to_complex(channels)
    assert back.shape == image.shape and back.dtype == torch.complex64 and torch.equal(back, image)
    assert torch.allclose(magnitude(channels), image.abs(), rtol=1e-6, atol=0)
    # A magnitude image is scored as it is, negative values too: the very tensor, so nothing changes.
    real = torch.randn(3, 1, 8, 6)
    assert magnitude(real) is real


def test_complex_data_fidelity_keeps_measured_lines_and_the_cnn_elsewhere():
    torch.manual_seed(0)
    x_cnn = torch.randn(2, 2, SIZE, SIZE)
    mask = torch.from_numpy(cartesian_row_mask((SIZE, SIZE), "4x", seed=1))[None, None].expand(2, 1, -1, -1)
    kspace_under = fft2(torch.randn(2, 1, SIZE, SIZE, dtype=torch.complex64)) * mask
    out = data_fidelity(x_cnn, kspace_under, mask)
    assert out.shape == (2, 2, SIZE, SIZE) and out.dtype == torch.float32
    k_out, k_cnn = fft2(to_complex(out)), fft2(to_complex(x_cnn))
    sampled = mask.bool()
    assert torch.allclose(k_out[sampled], kspace_under[sampled], atol=1e-5)
    assert torch.allclose(k_out[~sampled], k_cnn[~sampled], atol=1e-5)
    # The imaginary part is kept: a magnitude DF (real part only) would lose it.
    assert out[:, 1].abs().max() > 0.1
    assert torch.allclose(zero_filled(kspace_under, 2), to_channels(ifft2(kspace_under)))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_registered_network_maps_two_channels_to_two_channels(name):
    torch.manual_seed(0)
    net = with_image_channels(PRESETS[name], 2).build()
    assert net.config.image_channels == 2 and net.config.to_dict()["image_channels"] == 2
    target = torch.from_numpy(complex_volume(3)[:, :, :2]).permute(2, 0, 1)[:, None]
    mask = torch.from_numpy(cartesian_row_mask((SIZE, SIZE), "4x", seed=0))[None, None]
    kspace_under = fft2(target) * mask
    out, features = net(zero_filled(kspace_under, 2), kspace_under, mask, return_features=True)
    assert out.shape == (2, 2, SIZE, SIZE)
    assert features[0]["cnn_out"].shape == (2, 2, SIZE, SIZE)
    # Data consistency holds on the complex k-space of the output (hard DF; an E2E-VarNet's DC is soft, a learned
    # weight, and its U-Net's term reaches sampled k-space too: tests/test_varnet.py checks its formula).
    if PRESETS[name].kind != "varnet":
        assert torch.allclose((fft2(to_complex(out)) * mask), kspace_under, atol=1e-5)
    # A magnitude network's arch has no image_channels entry, so its checkpoints keep their keys.
    assert "image_channels" not in PRESETS[name].to_dict()


def test_sft_pairs_networks_of_one_image_type_only():
    teacher, student = PRESETS["teacher"], PRESETS["student"]
    assert SFTNet(with_image_channels(teacher, 2), with_image_channels(student, 2)).config.image_channels == 2
    with pytest.raises(ValueError, match="image type"):
        SFTNet(with_image_channels(teacher, 2), student)


# --------------------------------------------------------------------------- training, recording, refusing

def train(script, data: Path, exp: Path, *flags: str) -> Path:
    script.main(["--data-root", str(data), "--acc", "4x", "--epochs", "1", "--batch-size", "4", "--exp-dir",
                 str(exp), "--no-progress", "--seed", "3", *flags])
    return exp / "best_model.pt"


@pytest.mark.parametrize("image", ["magnitude", "complex"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_registered_network_trains_on_both_image_types(tmp_path, name, image):
    data = (make_complex_dataset(tmp_path / "data") if image == "complex"
            else make_dataset(tmp_path / "data", size=SIZE))
    model, ckpt = load_model(train(train_teacher, data, tmp_path / name, "--model", name))
    assert model.config.image_channels == (2 if image == "complex" else 1)
    kspace = "test fixture" if image == "complex" else SYNTHETIC_FROM_MAGNITUDE
    assert (ckpt["config"]["image"], ckpt["config"]["kspace"]) == (image, kspace)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert (config["image"], config["kspace"]) == (image, kspace)


@pytest.fixture(scope="module")
def complex_runs(tmp_path_factory):
    """A complex 16 x 16 data set with a teacher, a student and an SFT teacher trained on it for one epoch."""
    root = tmp_path_factory.mktemp("complex")
    data = make_complex_dataset(root / "data", volumes=(("train", 2), ("validation", 1), ("test", 1)))
    runs = {name: train(train_teacher, data, root / name, "--model", name) for name in ("teacher", "student")}
    runs["sft"] = train(train_sft, data, root / "sft")
    return data, runs


def test_evaluate_scores_the_magnitude_of_complex_images(tmp_path, complex_runs):
    data, runs = complex_runs
    evaluate.main(["--checkpoints", str(runs["teacher"]), str(runs["sft"]), "--data-root", str(data), "--acc",
                   "4x", "--out-dir", str(tmp_path / "eval"), "--save-recons"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert (summary["image"], summary["kspace"]) == ("complex", "test fixture")
    assert np.isfinite(summary["teacher"]["PSNR"]["mean"]) and summary["sft"]["SSIM"]["n"] == 4
    # ZF is scored on |ifft2(y)|: its PSNR against the magnitude target, recomputed here.
    dataset = SliceDataset(data, "test", "4x")
    with h5py.File(dataset.files[0]) as f:
        target, zf = np.abs(f["volfs"][:, :, 0]), np.abs(f["img_volus_4x"][:, :, 0])
    psnr = 10 * np.log10(target.max() ** 2 / np.mean((target - zf) ** 2))
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    zf_row = next(row for row in rows if row.startswith("ZF,vol3,0,"))
    assert float(zf_row.split(",")[3]) == pytest.approx(psnr, abs=1e-3)
    with h5py.File(tmp_path / "eval" / "recons" / "teacher" / "vol3.h5") as f:
        assert f["reconstruction"].shape == (4, SIZE, SIZE) and f["reconstruction"][()].min() >= 0
    lines = data_lines([tmp_path / "eval"])
    assert lines[:2] == ["", "k-space: test fixture (complex images)"]
    assert lines[2].startswith("CS (L1-wavelet): sigpy's L1WaveletRecon, lambda ") and len(lines) == 3
    figure.main(["--eval-dir", str(tmp_path / "eval"), "--data-root", str(data), "--acc", "4x", "--out-dir",
                 str(tmp_path / "figure"), "--models", "teacher", "sft"])
    assert (tmp_path / "figure" / "figure.png").read_bytes()[:4] == b"\x89PNG"
    shown_target, _ = figure.read_volume(dataset.files[0], "4x")
    assert np.allclose(shown_target[0], target)


def one_error_line(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_a_checkpoint_of_the_other_image_type_is_refused_in_one_line(tmp_path, capsys, complex_runs):
    data, runs = complex_runs
    magnitude_data = make_dataset(tmp_path / "magnitude", size=SIZE)
    magnitude_teacher = train(train_teacher, magnitude_data, tmp_path / "teacher")
    line = one_error_line(capsys, evaluate.main, ["--checkpoints", str(magnitude_teacher), "--data-root", str(data),
                                                  "--acc", "4x", "--out-dir", str(tmp_path / "eval")])
    assert "1-channel network for magnitude images" in line and "complex images" in line
    line = one_error_line(capsys, evaluate.main, ["--checkpoints", str(runs["teacher"]), "--data-root",
                                                  str(magnitude_data), "--acc", "4x", "--out-dir",
                                                  str(tmp_path / "eval2")])
    assert "2-channel network for complex images" in line and "magnitude images" in line
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())
    base = ["--data-root", str(data), "--acc", "4x", "--epochs", "1", "--exp-dir", str(tmp_path / "kd"),
            "--no-progress"]
    line = one_error_line(capsys, train_student_kd.main, [*base, "--teacher-checkpoint", str(magnitude_teacher)])
    assert line.startswith("error: --teacher-checkpoint") and "complex images" in line
    line = one_error_line(capsys, train_student_kd.main, [*base, "--teacher-checkpoint", str(runs["teacher"]),
                                                          "--init-student", str(magnitude_teacher)])
    assert line.startswith("error: --init-student")
    # Resuming a magnitude run on complex data (same slice counts) is refused too.
    complex_twin = make_complex_dataset(tmp_path / "complex-twin")
    line = one_error_line(capsys, train_teacher.main, ["--data-root", str(complex_twin), "--acc", "4x", "--epochs",
                                                       "2", "--exp-dir", str(tmp_path / "teacher"), "--resume",
                                                       "--no-progress", "--batch-size", "4", "--seed", "3"])
    assert line.startswith("error: --resume:") and "1-channel network for magnitude images" in line


# --------------------------------------------------------------------------- --synthetic-phase

def test_synthetic_phase_is_smooth_seeded_and_per_slice():
    phasors = synthetic_phase((24, 20, 3), 7, "vol")
    assert phasors.shape == (24, 20, 3) and phasors.dtype == np.complex128
    assert np.allclose(np.abs(phasors), 1.0)
    assert np.array_equal(phasors, synthetic_phase((24, 20, 3), 7, "vol"))
    assert not np.allclose(phasors, synthetic_phase((24, 20, 3), 8, "vol"))
    assert not np.allclose(phasors, synthetic_phase((24, 20, 3), 7, "other"))
    assert not np.allclose(phasors[:, :, 0], phasors[:, :, 1])
    # Slice 1 does not depend on how many slices the volume has.
    assert np.array_equal(phasors[:, :, 1], synthetic_phase((24, 20, 2), 7, "vol")[:, :, 1])
    # Smooth: neighbouring pixels differ by a small angle (a random phase: pi / 2 on average), yet it varies.
    steps = np.abs(np.angle(phasors[1:] / phasors[:-1]))
    assert steps.max() < 1.0 and steps.mean() < 0.3 and np.angle(phasors).std() > 0.3


def hermitian_residual(kspace: np.ndarray) -> float:
    """|k(-f) - conj(k(f))| / |k| of unshifted (H, W) k-space: 0 for the FFT of a real image."""
    mirrored = np.roll(kspace[::-1, ::-1], 1, axis=(0, 1))
    return float(np.linalg.norm(mirrored - np.conj(kspace)) / np.linalg.norm(kspace))


def test_synthetic_phase_keeps_the_magnitude_and_breaks_hermitian_symmetry(tmp_path):
    volume = phantom(SIZE, 10, 5) * 300 + 20
    path = tmp_path / "in" / "sub-01_T1.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    common = dict(inputs=[path], size=SIZE, accs=["4x"], min_foreground=0.0)
    plain = prepare(out=tmp_path / "plain", **common)
    phased = prepare(out=tmp_path / "phased", synthetic_phase=9, **common)
    assert (plain["image"], plain["kspace"]) == ("magnitude", SYNTHETIC_FROM_MAGNITUDE)
    assert phased["image"] == "complex" and "--synthetic-phase 9" in phased["kspace"]
    for split in ("train", "validation", "test"):
        for file in sorted((tmp_path / "plain" / split / "acc_4x").glob("*.h5")):
            with h5py.File(file) as f, h5py.File(tmp_path / "phased" / split / "acc_4x" / file.name) as g:
                assert f["volfs"].dtype == np.float32 and g["volfs"].dtype == np.complex64
                assert np.allclose(np.abs(g["volfs"][()]), f["volfs"][()], atol=1e-6)
                assert g.attrs["kspace_source"] == phased["kspace"]
                # Full k-space (the rows mask itself is not symmetric about DC).
                assert hermitian_residual(np.fft.fft2(f["volfs"][:, :, 0], norm="ortho")) < 1e-6
                assert hermitian_residual(np.fft.fft2(g["volfs"][:, :, 0], norm="ortho")) > 0.1
    data = SliceDataset(tmp_path / "phased", "train", "4x")
    assert (data.image, data.channels) == ("complex", 2) and data[0].target.shape == (2, SIZE, SIZE)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image="complex"), "--image complex takes the acquired k-space of --fastmri"),
    (dict(synthetic_phase=-1), "seed -1 is out of range"),
])
def test_image_flag_errors(tmp_path, kwargs, message):
    path = tmp_path / "in" / "sub-01_T1.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(phantom(SIZE, 6, 1), np.eye(4)), str(path))
    with pytest.raises(Exception, match=message):
        prepare(out=tmp_path / "out", inputs=[path], size=SIZE, **kwargs)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- fastMRI single-coil k-space

READOUT, PHASE_ENCODE = 2 * SIZE + 8, SIZE + 6  # oversampled readout (H), a few extra phase-encode lines (W)


def fftc(image: np.ndarray) -> np.ndarray:
    """fastMRI's centred orthonormal 2-D FFT over the last two axes (written out in numpy, not data/fft.py)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifftc(kspace: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_single_coil(path: Path, seed: int, n_slices: int = 5, coils: int = 1) -> np.ndarray:
    """A fastMRI single-coil file: random smooth complex images over an oversampled readout field of view
    (the object in the middle half), their centred k-space, and the file's own reconstruction_esc (the centre
    crop of |ifft2c(kspace)|, in fastMRI-like units). Returns that ESC, (S, SIZE, SIZE) float32."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n_slices, READOUT, PHASE_ENCODE), dtype=np.complex128)
    top, left = (READOUT - SIZE) // 2, (PHASE_ENCODE - SIZE) // 2
    blobs = np.moveaxis(phantom(SIZE, n_slices, seed), -1, 0) + 0.05
    phase = np.moveaxis(np.angle(synthetic_phase((SIZE, SIZE, n_slices), seed, "fixture")), -1, 0)
    images[:, top:top + SIZE, left:left + SIZE] = blobs * np.exp(1j * (phase + rng.uniform(-np.pi, np.pi)))
    images *= 3e-5
    kspace = fftc(images).astype(np.complex64)
    esc = np.abs(ifftc(kspace.astype(np.complex128)))[:, top:top + SIZE, left:left + SIZE].astype(np.float32)
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace if coils == 1 else np.repeat(kspace[:, None], coils, axis=1)
        f["reconstruction_esc" if coils == 1 else "reconstruction_rss"] = esc
        f.attrs["acquisition"], f.attrs["patient_id"] = "CORPD_FBK", f"patient{seed}"
    return esc


@pytest.fixture(scope="module")
def fastmri_complex(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri")
    (root / "in").mkdir()
    esc = {f"file{seed}": write_single_coil(root / "in" / f"file{seed}.h5", seed) for seed in range(3)}
    summary = prepare(out=root / "data", fastmri=[root / "in"], image="complex", size=SIZE, accs=["4x"],
                      mask_kind="fastmri-random", center_fraction=0.08, min_foreground=0.0)
    return root / "data", esc, summary


def test_fastmri_complex_reference_is_the_scaled_esc(fastmri_complex):
    data, esc, summary = fastmri_complex
    assert (summary["image"], summary["kspace"]) == ("complex", ACQUIRED_FASTMRI)
    files = sorted(data.glob("*/acc_4x/*.h5"))
    assert sorted(f.stem for f in files) == sorted(esc)
    for file in files:
        with h5py.File(file) as f:
            volfs, scale, kept = f["volfs"][()], float(f.attrs["scale"]), f.attrs["source_slices"]
            kspace = f["kspace_volus_4x"][()]
            assert f.attrs["kspace_source"] == ACQUIRED_FASTMRI
        assert volfs.dtype == np.complex64 and volfs.shape == (SIZE, SIZE, len(kept))
        reference = np.moveaxis(esc[file.stem][kept], 0, -1)
        assert np.abs(np.abs(volfs) / scale - reference).max() <= 1e-5 * reference.max()
        assert np.abs(volfs).max() == pytest.approx(1.0, abs=1e-6)
        # Column masks: whole phase-encode columns (W) are kept or dropped, and k-space is not Hermitian.
        mask = np.load(data / "mask_4x.npy")
        assert (mask == mask[:1]).all() and 0 < mask[0].mean() < 0.5
        assert np.abs(kspace[mask == 0]).max() == 0
        assert hermitian_residual(np.fft.fft2(volfs[:, :, 0], norm="ortho")) > 0.1


@pytest.fixture(scope="module")
def fastmri_runs(tmp_path_factory, fastmri_complex):
    """A standard teacher and an SFT teacher trained on the fastMRI fixture for one epoch."""
    data, root = fastmri_complex[0], tmp_path_factory.mktemp("fastmri-runs")
    return data, {"teacher": train(train_teacher, data, root / "teacher"), "sft": train(train_sft, data, root / "sft")}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(KD_METHODS))
def test_every_kd_method_distils_on_fastmri_complex_images(tmp_path, fastmri_runs, method):
    data, runs = fastmri_runs
    for flags in (["--teacher-checkpoint", str(runs["teacher"])],
                  ["--teacher-checkpoint", str(runs["sft"]), "--init-from-sft", str(runs["sft"])]):
        exp = tmp_path / f"kd-{len(flags)}"
        model, ckpt = load_model(train(train_student_kd, data, exp, "--kd-method", method, *flags))
        assert model.config.image_channels == 2 and ckpt["config"]["image"] == "complex"
        assert ckpt["config"]["kspace"] == ACQUIRED_FASTMRI


def test_fastmri_complex_trains_and_evaluates(tmp_path, fastmri_runs):
    data, runs = fastmri_runs
    student = train(train_student_kd, data, tmp_path / "sftkd", "--teacher-checkpoint", str(runs["sft"]),
                    "--init-from-sft", str(runs["sft"]))
    evaluate.main(["--checkpoints", str(runs["teacher"]), str(runs["sft"]), str(student), "--data-root", str(data),
                   "--acc", "4x", "--out-dir", str(tmp_path / "eval")])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["kspace"] == ACQUIRED_FASTMRI and summary["split"] == "test"
    assert all(np.isfinite(summary[name]["PSNR"]["mean"]) for name in ("teacher", "sft", "sftkd-at"))


def test_fastmri_multi_coil_keeps_its_magnitude_path(tmp_path):
    # --image complex reads multi-coil files as coil k-space (tests/test_multicoil_prepare.py); without it their
    # magnitude reconstruction_rss is the image, as before.
    (tmp_path / "in").mkdir()
    write_single_coil(tmp_path / "in" / "brain.h5", 0, coils=4)
    summary = prepare(out=tmp_path / "magnitude", fastmri=[tmp_path / "in"], size=SIZE, accs=["4x"],
                      min_foreground=0.0, val_fraction=0.4, test_fraction=0.0)
    assert summary["image"] == "magnitude"
