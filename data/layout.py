"""The on-disk layout of the original KD-MRI / SFT-KD-Recon data, and its writer: the one place that spells it.

``{root}/{split}/acc_{acc}/*.h5``, one file per volume, with datasets ``volfs`` (H, W, S) float (fully
sampled), ``img_volus_{acc}`` (H, W, S) float (zero-filled) and ``kspace_volus_{acc}`` (H, W, S) complex
(undersampled, unshifted); for complex images (data/fft.py) ``volfs`` and ``img_volus_{acc}`` are complex;
the mask of an acceleration is ``{root}/mask_{acc}.npy`` (H, W). Multi-coil volumes (N coils) hold coil
k-space ``kspace_volus_{acc}`` (N, H, W, S) complex64 and its sensitivity maps ``maps_{acc}`` (N, H, W, S)
complex64 (estimated from that acceleration's undersampled k-space, so one set per acceleration); ``volfs``
and ``img_volus_{acc}`` are the coil-combined complex images E^H k (data/fft.py), and the attribute
``maps_method`` says how the maps were made; ``reconstruction_rss`` (H, W, S) float32 is the root sum of squares
of the fully sampled coil images, what multi-coil data are scored against (fastMRI's convention). Every reader and writer takes the names from here.

The writer needs only numpy, h5py and torch (no nibabel, which ``data/prepare.py`` needs for NIfTI), so tools
that make their own volumes (``scripts/benchmark.py`` on a GPU machine without nibabel) write exactly the
files ``data/dataset.py`` reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from data.fft import fft2, ifft2, zero_filled

# test/ is optional: data in the original two-split layout (the public code's) has none.
SPLITS = ("train", "validation", "test")
TARGET_KEY = "volfs"
ACC_FOLDER_PREFIX = "acc_"


def keys_for(acc: str) -> tuple[str, str, str]:
    """HDF5 dataset names (target, zero-filled, k-space) for acceleration ``acc``, e.g. ``"4x"``."""
    return TARGET_KEY, f"img_volus_{acc}", f"kspace_volus_{acc}"


def maps_key(acc: str) -> str:
    """HDF5 dataset name of multi-coil data's sensitivity maps at acceleration ``acc``: ``maps_{acc}``."""
    return f"maps_{acc}"


# Multi-coil files: the root sum of squares of the fully sampled coil images, (H, W, S) float32, fastMRI's name.
RSS_KEY = "reconstruction_rss"
# File attribute naming the sensitivity-map estimate ("espirit", "acs-rss", or "true" for a simulation's own).
MAPS_METHOD_ATTR = "maps_method"
# File attribute of multi-coil data: "simulated (birdcage)" (data/prepare.py --coils) or "acquired".
COIL_SOURCE_ATTR = "coil_source"


def acc_folder(root: Path, split: str, acc: str) -> Path:
    """The folder of one split's volume files at one acceleration: ``{root}/{split}/acc_{acc}``."""
    return Path(root) / split / f"{ACC_FOLDER_PREFIX}{acc}"


def mask_name(acc: str) -> str:
    """The file name of an acceleration's mask in a data root: ``mask_{acc}.npy``."""
    return f"mask_{acc}.npy"


def undersample(volfs: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Undersampled k-space and zero-filled images of a volume for each acceleration.

    volfs: (H, W, S) float32 (magnitude) or complex64 (complex images); masks: acc -> (H, W) float32 {0, 1}.
    Returns acc -> (``kspace`` (H, W, S) complex64 = mask * fft2(volfs), ``zf`` (H, W, S) = |ifft2(kspace)|
    float32, or ifft2(kspace) complex64 for complex images), computed in double precision from the stored
    values so the files satisfy these relations to float32 rounding.
    """
    is_complex = np.iscomplexobj(volfs)
    full = fft2(torch.from_numpy(np.moveaxis(volfs, -1, 0).astype(np.complex128 if is_complex else np.float64)))
    result = {}
    for acc, mask in masks.items():
        kspace = (full * torch.from_numpy(mask.astype(np.float64))).to(torch.complex64)
        if is_complex:
            zf = ifft2(kspace.to(torch.complex128)).to(torch.complex64)
        else:
            zf = zero_filled(kspace.to(torch.complex128)).to(torch.float32)
        result[acc] = (np.ascontiguousarray(np.moveaxis(kspace.numpy(), 0, -1)),
                       np.ascontiguousarray(np.moveaxis(zf.numpy(), 0, -1)))
    return result


def write_volume(path: Path, volfs: np.ndarray, kspace: np.ndarray, zf: np.ndarray, acc: str,
                 attrs: dict[str, Any], maps: np.ndarray | None = None, rss: np.ndarray | None = None) -> None:
    """Write one volume file. volfs, zf: (H, W, S) float32 (complex64 for complex images); kspace: (H, W, S)
    complex64, or (N, H, W, S) complex64 coil k-space with maps (N, H, W, S) complex64 (multi-coil) and rss
    (H, W, S) float32, the fully sampled coil images' root sum of squares.

    Uncompressed for read speed, but chunked one slice per chunk: with S last, a contiguous layout would
    make reading one slice a strided gather over the whole dataset.
    """
    chunks = (volfs.shape[0], volfs.shape[1], 1)
    target_key, zf_key, kspace_key = keys_for(acc)
    with h5py.File(path, "w") as f:
        f.create_dataset(target_key, data=volfs, chunks=chunks)
        f.create_dataset(kspace_key, data=kspace, chunks=kspace.shape[:-1] + (1,))
        f.create_dataset(zf_key, data=zf, chunks=chunks)
        if maps is not None:
            f.create_dataset(maps_key(acc), data=maps, chunks=maps.shape[:-1] + (1,))
        if rss is not None:
            f.create_dataset(RSS_KEY, data=rss, chunks=chunks)
        for key, value in attrs.items():
            f.attrs[key] = value
