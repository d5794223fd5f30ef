"""Writing reconstructions of a user's scans as the field reads them (scripts/reconstruct.py): NIfTI volumes,
fastMRI's submission HDF5, PNG previews. One writer per ``--format`` in :data:`WRITERS`.

Every writer takes one volume: ``recon`` (S, H, W) float32 in network units and ``scaling`` (slope, intercept),
input units = slope * network units + intercept (data/scans.py's NetworkInputs), plus the scan's 4 x 4 affine or
None. The caller writes into a staging folder that replaces the previous run's files whole (data/outputs.py).
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from data.outputs import HDF5_MARGIN, atomic_write, check_free_space

RECONSTRUCTION_KEY = "reconstruction"
# --format -> the file a volume named ``name`` is written to.
FILE_NAMES = {"nifti": "{name}.nii.gz", "fastmri": "{name}.h5"}


def write_nifti(folder: Path, name: str, recon: np.ndarray, scaling: tuple[float, float],
                affine: np.ndarray | None) -> Path:
    """``{folder}/{name}.nii.gz``: (H, W, S) float32 in network units (the values evaluate.py would save) with
    ``scl_slope`` / ``scl_inter`` giving the input's units (nibabel's ``get_fdata`` applies them), and the
    scan's affine (identity where it has none)."""
    import nibabel as nib  # only this writer needs it
    image = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(recon, 0, -1), dtype=np.float32),
                            np.eye(4) if affine is None else affine)
    image.header.set_slope_inter(*scaling)
    path = folder / FILE_NAMES["nifti"].format(name=name)
    check_free_space(folder, recon.nbytes)
    atomic_write(path, lambda f: f.write(gzip.compress(image.to_bytes(), mtime=0)))
    return path


def write_submission(folder: Path, name: str, recon: np.ndarray, scaling: tuple[float, float],
                     affine: np.ndarray | None = None) -> Path:
    """``{folder}/{name}.h5`` in fastMRI's submission format: dataset ``reconstruction`` (S, H, W) float32 in the
    input's units, the file named as the input, so fastMRI's ``evaluate.py`` scores it against the reference of
    the file of that name."""
    slope, intercept = scaling
    values = (recon.astype(np.float64) * slope + intercept).astype(np.float32)
    path = folder / FILE_NAMES["fastmri"].format(name=name)

    def write(f):
        with h5py.File(f, "w") as h5:
            h5.create_dataset(RECONSTRUCTION_KEY, data=values)
    check_free_space(folder, values.nbytes + HDF5_MARGIN)
    atomic_write(path, write, mode="w+b")
    return path


def write_png(folder: Path, name: str, recon: np.ndarray, scaling: tuple[float, float] = (1.0, 0.0),
              affine: np.ndarray | None = None) -> list[Path]:
    """``{folder}/png/{name}_{slice}.png``, one grey-scale preview per slice, from 0 to the volume's 99.5th
    percentile (a few bright pixels would otherwise darken every slice)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    top = float(np.percentile(recon, 99.5)) or float(recon.max()) or 1.0
    width = len(str(len(recon) - 1))
    paths = []
    for index, image in enumerate(recon):
        path = folder / "png" / f"{name}_{index:0{width}d}.png"
        atomic_write(path, lambda f, image=image: plt.imsave(f, image, cmap="gray", vmin=0.0, vmax=top, format="png"))
        paths.append(path)
    return paths


# --format NAME -> writer(folder, name, recon, scaling, affine).
WRITERS: dict[str, Callable] = {"nifti": write_nifti, "fastmri": write_submission}
