"""Writing the original KD-MRI / SFT-KD-Recon HDF5 layout from (H, W, S) arrays: no NIfTI, no nibabel.

``data/prepare.py`` turns NIfTI into arrays and needs nibabel; this module only needs numpy, h5py and
torch, so tools that make their own volumes (``scripts/benchmark.py`` on a GPU machine without nibabel)
write exactly the files ``data/dataset.py`` reads. The layout itself is described in ``data/dataset.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from data.fft import fft2, zero_filled


def undersample(volfs: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Undersampled k-space and zero-filled images of a volume for each acceleration.

    volfs: (H, W, S) float32; masks: acc -> (H, W) float32 {0, 1}. Returns acc -> (``kspace`` (H, W, S)
    complex64 = mask * fft2(volfs), ``zf`` (H, W, S) float32 = |ifft2(kspace)|), computed in double
    precision from the stored values so the files satisfy these relations to float32 rounding.
    """
    full = fft2(torch.from_numpy(np.moveaxis(volfs, -1, 0).astype(np.float64)))
    result = {}
    for acc, mask in masks.items():
        kspace = (full * torch.from_numpy(mask.astype(np.float64))).to(torch.complex64)
        zf = zero_filled(kspace.to(torch.complex128)).to(torch.float32)
        result[acc] = (np.ascontiguousarray(np.moveaxis(kspace.numpy(), 0, -1)),
                       np.ascontiguousarray(np.moveaxis(zf.numpy(), 0, -1)))
    return result


def write_volume(path: Path, volfs: np.ndarray, kspace: np.ndarray, zf: np.ndarray, acc: str,
                 attrs: dict[str, Any]) -> None:
    """Write one volume file. volfs, zf: (H, W, S) float32; kspace: (H, W, S) complex64.

    Uncompressed for read speed, but chunked one slice per chunk: with S last, a contiguous layout would
    make reading one slice a strided gather over the whole dataset.
    """
    chunks = (volfs.shape[0], volfs.shape[1], 1)
    with h5py.File(path, "w") as f:
        f.create_dataset("volfs", data=volfs, chunks=chunks)
        f.create_dataset(f"kspace_volus_{acc}", data=kspace, chunks=chunks)
        f.create_dataset(f"img_volus_{acc}", data=zf, chunks=chunks)
        for key, value in attrs.items():
            f.attrs[key] = value
