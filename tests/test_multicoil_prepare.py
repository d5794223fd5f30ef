"""data.prepare for multi-coil data (issue 36): simulated coils (--coils) on the demo, fastMRI multi-coil files
(a fixture written here in fastMRI's schema: centred coil k-space with readout oversampling and its own
reconstruction_rss), --coil-compress, and the inputs refused in one line with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import cli_error, phantom, smooth_maps
from data import prepare as prepare_module
from data.dataset import SliceDataset
from data.prepare import ACQUIRED_FASTMRI_MC, prepare

SIZE, READOUT, PHASE_ENCODE, COILS = 32, 64, 40, 4


def centred_fft(images: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def centred_ifft(kspace: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_multicoil(path: Path, seed: int, coils: int = COILS, n_slices: int = 3) -> np.ndarray:
    """A fastMRI multi-coil file: smooth complex images seen by ``coils`` smooth coils over a field of view
    oversampled along the readout (H), their centred k-space (S, C, H, W) complex64, and reconstruction_rss
    (S, SIZE, SIZE) float32, the RSS of the centre crop of the coil images (how fastMRI makes it), in
    fastMRI-like units. Returns that RSS."""
    rng = np.random.default_rng(seed)
    top, left = (READOUT - SIZE) // 2, (PHASE_ENCODE - SIZE) // 2
    images = np.zeros((n_slices, coils, READOUT, PHASE_ENCODE), dtype=np.complex128)
    blobs = np.moveaxis(phantom(SIZE, n_slices, seed), -1, 0) + 0.05
    phase = np.exp(1j * rng.uniform(-np.pi, np.pi, size=(n_slices, 1, 1)))
    images[:, :, top:top + SIZE, left:left + SIZE] = (blobs * phase)[:, None] * smooth_maps(coils, SIZE)[None]
    kspace = (centred_fft(images * 3e-5)).astype(np.complex64)
    coil_images = centred_ifft(kspace.astype(np.complex128))[..., top:top + SIZE, left:left + SIZE]
    rss = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace
        f["reconstruction_rss"] = rss
        f.attrs["acquisition"], f.attrs["patient_id"] = "AXT2", f"patient{seed}"
    return rss


def fastmri_options(inputs: Path, out: Path, **extra) -> dict:
    return dict(out=out, fastmri=[inputs], image="complex", size=SIZE, accs=["4x"], mask_kind="fastmri-equispaced",
                center_fraction=0.2, min_foreground=0.0, **extra)


@pytest.fixture(scope="module")
def fastmri_mc(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri-mc")
    (root / "in").mkdir()
    rss = {f"brain{seed}": write_multicoil(root / "in" / f"brain{seed}.h5", seed) for seed in range(3)}
    summary = prepare(**fastmri_options(root / "in", root / "data", maps="acs-rss"))
    return root, rss, summary


def test_fastmri_multicoil_rss_matches_the_files_reconstruction_rss(fastmri_mc):
    root, rss, summary = fastmri_mc
    assert (summary["coils"], summary["maps"], summary["kspace"]) == (COILS, "acs-rss", ACQUIRED_FASTMRI_MC)
    # --min-foreground 0 and no --slice-range: every slice kept and counted by slices, not by image columns.
    assert (summary["skipped_slices"], summary["slices_outside_range"]) == (0, 0)
    files = sorted((root / "data").glob("*/acc_4x/*.h5"))
    assert sorted(f.stem for f in files) == sorted(rss)
    for file in files:
        with h5py.File(file) as f:
            stored, scale, kept = f["reconstruction_rss"][()], float(f.attrs["scale"]), f.attrs["source_slices"]
            assert f["kspace_volus_4x"].shape == (COILS, SIZE, SIZE, len(kept)) == f["maps_4x"].shape
            assert f.attrs["maps_method"] == "acs-rss"
        reference = np.moveaxis(rss[file.stem][kept], 0, -1)
        # float32 data through float64 FFTs: the RSS agrees to ~1e-7 relative; 1e-4 is the bound.
        assert np.abs(stored / scale - reference).max() <= 1e-4 * reference.max()
    split = json.loads((root / "data" / "split.json").read_text())
    assert (split["coils"], split["maps"], split["coil_source"]) == (COILS, "acs-rss", "acquired")
    dataset = SliceDataset(root / "data", "train", "4x")
    assert (dataset.coils, dataset.maps_method) == (COILS, "acs-rss")


def test_coil_compression_with_espirit_keeps_the_rss_reference(fastmri_mc, tmp_path):
    root, rss, _ = fastmri_mc
    summary = prepare(**fastmri_options(root / "in", tmp_path / "cc", coil_compress=2))
    assert (summary["coils"], summary["coil_compress"], summary["maps"]) == (2, 2, "espirit")
    file = next((tmp_path / "cc").glob("train/acc_4x/*.h5"))
    with h5py.File(file) as f:
        assert f["kspace_volus_4x"].shape[0] == 2 and f.attrs["coil_compress"] == 2
        stored, scale, kept = f["reconstruction_rss"][()], float(f.attrs["scale"]), f.attrs["source_slices"]
    reference = np.moveaxis(rss[file.stem][kept], 0, -1)
    assert np.abs(stored / scale - reference).max() <= 1e-4 * reference.max()


def test_simulated_coils_on_the_demo(tmp_path):
    out = tmp_path / "demo"
    summary = prepare(out=out, demo=True, size=16, resize=True, accs=["4x"], synthetic_phase=1, coils=4,
                      maps="true", center_fraction=0.5, max_slices_per_volume=12)
    assert (summary["coils"], summary["maps"], summary["coil_source"]) == (4, "true", "simulated (birdcage)")
    assert "4 simulated birdcage coils" in summary["kspace"]
    dataset = SliceDataset(out, "train", "4x")
    item = dataset[0]
    assert item.kspace_under.shape == item.maps.shape == (4, 16, 16)
    with h5py.File(dataset.files[0]) as f:
        rss, volfs = f["reconstruction_rss"][()], f["volfs"][()]
    # True birdcage maps have sum |S|^2 = 1, so E^H E = I: the combined target's magnitude is the RSS.
    assert np.abs(np.abs(volfs) - rss).max() <= 1e-5 * rss.max()


def _one_line(capsys, argv: list[str], out: Path) -> str:
    err = cli_error(prepare_module.main, argv, capsys)
    assert not out.exists() or not any(out.iterdir())
    return err


def test_bad_multicoil_inputs_are_refused_in_one_line(tmp_path, capsys, fastmri_mc):
    root = fastmri_mc[0]
    out = tmp_path / "out"
    demo = ["--demo", "--size", "16", "--resize", "--acc", "4x", "--out-dir", str(out)]
    err = _one_line(capsys, [*demo, "--synthetic-phase", "1", "--coils", "4", "--center-fraction", "0.1"], out)
    assert "4x mask" in err and "no autocalibration region" in err
    err = _one_line(capsys, [*demo, "--coils", "4"], out)
    assert "--synthetic-phase" in err
    fastmri = ["--fastmri", str(root / "in"), "--image", "complex", "--size", str(SIZE), "--acc", "4x",
               "--mask-kind", "fastmri-equispaced", "--center-fraction", "0.2", "--out-dir", str(out)]
    err = _one_line(capsys, [*fastmri, "--maps", "true"], out)
    assert "--maps true" in err and "acquired" in err
    (tmp_path / "mixed").mkdir()
    write_multicoil(tmp_path / "mixed" / "a.h5", 0, coils=4)
    write_multicoil(tmp_path / "mixed" / "b.h5", 1, coils=3)
    err = _one_line(capsys, [*fastmri[:1], str(tmp_path / "mixed"), *fastmri[2:], "--test-fraction", "0"], out)
    assert "different coil counts" in err and "--coil-compress" in err
