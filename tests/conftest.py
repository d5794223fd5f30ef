"""Shared fixtures: tiny data sets written in the original KD-MRI / SFT-KD-Recon HDF5 layout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data.masks import cartesian_row_mask

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
# The shell scripts the tests start (demo.sh, paper.sh, train_all.sh, study.sh) run "$PYTHON": make it the
# interpreter running the tests, so `.venv/bin/python -m pytest` works without an activated venv.
os.environ["PYTHON"] = sys.executable


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns -n into workers
def pytest_cmdline_main(config):
    """``-n 2 --dist worksteal`` unless -n was given or pytest-xdist is missing or disabled (``-p no:xdist``).

    Most tests start subprocesses or run one-thread torch, so two workers keep both cores of a small machine busy;
    this is not in pytest.ini's addopts because there ``-n`` is an error wherever xdist is not installed."""
    if (config.pluginmanager.hasplugin("xdist") and config.option.numprocesses is None
            and not hasattr(config, "workerinput")):
        config.option.numprocesses = 2
        if config.option.dist == "no":
            config.option.dist = "worksteal"


def phantom(size: int, n_slices: int, seed: int) -> np.ndarray:
    """(H, W, S) float64 smooth blobs in [0, 1], different per slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    vol = np.zeros((size, size, n_slices))
    for s in range(n_slices):
        for _ in range(4):
            cy, cx, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.08, 0.25)
            vol[:, :, s] += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)
    return vol / vol.max()


def write_volume(path: Path, volfs: np.ndarray, masks: dict[str, np.ndarray],
                 float_dtype=np.float64, complex_dtype=np.complex128) -> None:
    """Write one volume the way the public code's data files are laid out (numpy FFT, no fftshift)."""
    with h5py.File(path, "w") as f:
        f["volfs"] = volfs.astype(float_dtype)
        for acc, mask in masks.items():
            kspace = np.fft.fft2(volfs, axes=(0, 1), norm="ortho") * mask[:, :, None]
            f[f"kspace_volus_{acc}"] = kspace.astype(complex_dtype)
            f[f"img_volus_{acc}"] = np.abs(np.fft.ifft2(kspace, axes=(0, 1), norm="ortho")).astype(float_dtype)


def make_dataset(root: Path, size: int = 32, accs=("4x",), train_volumes: int = 2, val_volumes: int = 1,
                 slices: int = 4, seed: int = 0) -> Path:
    """A tiny data set in the original layout under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    masks = {acc: cartesian_row_mask((size, size), acc, seed=seed) for acc in accs}
    for acc, mask in masks.items():
        np.save(root / f"mask_{acc}.npy", mask)
    volume = 0
    for split, count in (("train", train_volumes), ("validation", val_volumes)):
        for _ in range(count):
            vol = phantom(size, slices, seed + volume)
            for acc in accs:
                folder = root / split / f"acc_{acc}"
                folder.mkdir(parents=True, exist_ok=True)
                write_volume(folder / f"vol{volume:02d}.h5", vol, {acc: masks[acc]})
            volume += 1
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """32 x 32, acceleration 4x, 2 training and 1 validation volumes of 4 slices (float64 / complex128)."""
    return make_dataset(tmp_path / "data")


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300):
    """Run ``python *args`` from the repository root; returns the CompletedProcess (text)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def cli_error(main, argv: list[str], capsys) -> str:
    """Run a script's ``main(argv)`` as its command line would (utils.run_cli) and return its stderr, which must
    be exactly one ``error: ...`` line with exit code 2."""
    from utils import run_cli as run_main
    with pytest.raises(SystemExit) as info:
        run_main(main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err
