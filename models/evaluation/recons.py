"""The reconstruction files of ``evaluate.py --save-recons``: ``recons/{model}/{volume}.h5``, one dataset
``reconstruction`` of shape (S, H, W) float32, slice-first (the data files' ``volfs`` is (H, W, S))."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from data.outputs import HDF5_MARGIN, atomic_write, check_free_space

RECON_KEY = "reconstruction"


def write_recon(path: Path, volume: np.ndarray, model: str, acc: str) -> None:
    """Atomically write one volume's reconstruction: volume (S, H, W) float32 as dataset ``reconstruction``."""
    def write(f):
        with h5py.File(f, "w") as h5:
            h5.create_dataset(RECON_KEY, data=volume.astype(np.float32))
            h5.attrs.update({"model": model, "acc": acc, "layout": "(S, H, W)"})
    # h5py can crash the process on a full disk instead of raising: ask first.
    check_free_space(path, volume.size * 4 + HDF5_MARGIN)
    atomic_write(path, write, mode="w+b")

