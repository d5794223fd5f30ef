"""Shared fixtures: tiny data sets written in the original KD-MRI / SFT-KD-Recon HDF5 layout."""
from __future__ import annotations

import contextlib
import os
import re
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


def dc_only_parameters(model: torch.nn.Module) -> set[str]:
    """Names of the parameters whose gradient is zero by construction wherever DF keeps the sampled DC
    coefficient: the bias of each cascade's last convolution. That bias adds a constant to the image handed to
    DF, a constant changes only the DC coefficient of k-space, and hard DF replaces every sampled coefficient,
    DC included, by the acquired one. So no output depends on it, and its computed gradient is rounding noise
    (about 1e-10 on most CPU kinds, exactly 0 on an Intel AVX-512 Xeon): a test may assert that it is near 0,
    never that it is nonzero."""
    names = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            cascade = re.match(r"(.*cascades\.\d+)\.", name)
            if cascade:  # modules come in order: the cascade's last convolution wins
                names[cascade.group(1)] = f"{name}.bias"
    return set(names.values())


@contextlib.contextmanager
def dc_gradient_scale(model: torch.nn.Module):
    """Run a forward and backward pass inside: the yielded dict then maps each of ``dc_only_parameters(model)``
    to sum |dL/d(its convolution's output)|, the size its gradient (the sum of those values) would have if
    nothing cancelled. A cascade run more than once (SFT branches) adds up its runs."""
    names = dc_only_parameters(model)
    scale = dict.fromkeys(names, 0.0)
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def keep(_module, _inputs, out, name=name):
            if out.requires_grad:
                out.register_hook(lambda g: scale.__setitem__(name, scale[name] + g.abs().sum().item()))
        handles.append(modules[name.removesuffix(".bias")].register_forward_hook(keep))
    try:
        yield scale
    finally:
        for handle in handles:
            handle.remove()


def assert_gradients_follow_df(model: torch.nn.Module, mask: torch.Tensor, scale: dict, params=None) -> None:
    """Every parameter in ``params`` (default: all that require a gradient) that can change an output has a
    nonzero gradient, and each that cannot (``dc_only_parameters``, given that ``mask`` samples DC) has one at
    rounding level: at most 1e-4 of ``scale`` (``dc_gradient_scale``), about a thousand float32 epsilons. Measured
    on the D3C5 fixture: 1e-9 to 1e-8 of it; a DF that lets the CNN's DC through gives 0.15 to 0.95."""
    assert bool((mask[..., 0, 0] > 0.5).all()), "the argument needs a mask that samples the DC coefficient"
    named = dict(model.named_parameters())
    params = {n: p for n, p in named.items() if p.requires_grad} if params is None else params
    zero = dc_only_parameters(model) & set(params)
    assert zero, "no last-layer bias found: the network's layout changed, update dc_only_parameters"
    for name, p in params.items():
        assert p.grad is not None, name
        if name in zero:
            assert scale[name] > 0, name
            assert p.grad.abs().sum().item() <= 1e-4 * scale[name], f"{name}: DF does not keep the sampled DC"
        else:
            assert p.grad.abs().sum() > 0, name


def smooth_maps(coils: int, size: int) -> np.ndarray:
    """(coils, size, size) complex64 smooth coil sensitivities with sum_c |S_c|^2 = 1: coil c peaks at angle
    2 pi c / coils on a circle around the centre, its phase turning across the field of view (a cheap stand-in
    for birdcage maps that needs no sigpy)."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    maps = []
    for c in range(coils):
        angle = 2 * np.pi * c / coils
        cy, cx = 1.5 * np.sin(angle), 1.5 * np.cos(angle)
        maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4) * np.exp(1j * (angle + xx * np.cos(angle))))
    maps = np.stack(maps)
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0))).astype(np.complex64)


def make_multicoil_dataset(root: Path, size: int = 16, coils: int = 4, accs=("4x",),
                           volumes=(("train", 2), ("validation", 1)), slices: int = 3, method: str = "true",
                           seed: int = 0) -> Path:
    """A tiny multi-coil data set as data/prepare.py --coils writes it: smooth complex images times
    :func:`smooth_maps`, row masks with a fully sampled centre, maps by ``method`` ("true": the simulation's)."""
    from data.layout import MAPS_METHOD_ATTR, write_volume as write_layout_volume
    from data.multicoil import simulate_coil_kspace, undersample_coils
    from data.slicing import synthetic_phase
    root.mkdir(parents=True, exist_ok=True)
    masks = {acc: cartesian_row_mask((size, size), acc, seed=seed, center_fraction=0.25) for acc in accs}
    for acc, mask in masks.items():
        np.save(root / f"mask_{acc}.npy", mask)
    maps = smooth_maps(coils, size)
    index = 0
    for split, count in volumes:
        for _ in range(count):
            magnitude = phantom(size, slices, seed + index)
            images = np.moveaxis(magnitude * synthetic_phase(magnitude.shape, seed, f"vol{index}"), -1, 0)
            coil_kspace = simulate_coil_kspace(images, maps)
            coil_images = np.fft.ifft2(coil_kspace.astype(np.complex128), axes=(-2, -1), norm="ortho")
            rss = np.moveaxis(np.sqrt((np.abs(coil_images) ** 2).sum(axis=1)), 0, -1).astype(np.float32)
            for acc, a in undersample_coils(coil_kspace, masks, method, maps).items():
                folder = root / split / f"acc_{acc}"
                folder.mkdir(parents=True, exist_ok=True)
                write_layout_volume(folder / f"vol{index}.h5", a["target"], a["kspace"], a["zf"], acc,
                                    {"kspace_source": "test fixture", MAPS_METHOD_ATTR: method}, maps=a["maps"],
                                    rss=rss)
            index += 1
    return root
