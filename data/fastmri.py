"""Reading fastMRI HDF5 files as downloaded: the reference image the challenge scores against, its attributes.

A fastMRI volume file (https://fastmri.med.nyu.edu) holds ``kspace``, (S, H, W) complex64 for single-coil or
(S, C, H, W) for multi-coil data, centred; the references ``reconstruction_esc`` (single-coil files: the
emulated single coil) and/or ``reconstruction_rss`` (root sum of squares over the coils), (S, 320, 320)
float32; the attributes ``max``, ``norm``, ``acquisition`` (e.g. ``CORPD_FBK``, ``AXT2``) and ``patient_id``
where present; and an ``ismrmrd_header``, which is not needed here.

The challenge scores single-coil submissions against ESC and multi-coil ones against RSS, so that is the fully
sampled image this project takes: a single-coil file must hold ``reconstruction_esc`` (it usually holds RSS
too), a multi-coil file ``reconstruction_rss``. Test-set files ship without references and are refused.

Two ways to use a file (data/prepare.py's ``--image``):

- ``magnitude`` (default, the paper's protocol): ``kspace`` is read for its shape only (how many coils); the
  magnitude reference is undersampled again by data/prepare.py, so its k-space is synthetic from magnitude.
- ``complex``, single-coil files only: :meth:`FastmriVolume.complex_slices` forms the complex image from the
  file's ``kspace`` with fastMRI's conventions (fastmri/data/transforms.py and fftc.py): ``ifft2c`` of the
  centred k-space (orthonormal), then ``complex_center_crop`` to the output size (fastMRI's 320 x 320; the
  start of the crop is ``(extent - size) // 2`` on each axis, which drops the readout oversampling), scaled by
  ``1 / max |image|`` per volume (recorded as the ``scale`` attribute). Its magnitude is then
  ``scale * reconstruction_esc``. A multi-coil file gives its coil images the same way
  (:meth:`FastmriVolume.coil_images`), scaled by ``1 / max RSS``, so their RSS is ``scale * reconstruction_rss``;
  data/prepare.py estimates the coil sensitivities from their undersampled k-space (data/multicoil.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from data.dataset import check_stored
from data.fft import ifft2c
from utils import UserError, clean_text, first_line

# kspace dimensions -> the reference the fastMRI challenge scores that kind of data against.
REFERENCE_OF = {3: "reconstruction_esc", 4: "reconstruction_rss"}
CHALLENGE_OF = {3: "single-coil", 4: "multi-coil"}


class FastmriError(UserError):
    """A file that is not a usable fastMRI volume: unreadable, no ``kspace``, or no reference image."""


@dataclass(frozen=True)
class FastmriVolume:
    """The header of one fastMRI file; offers ``shape`` and ``dataobj`` like a nibabel image, so data/prepare.py
    reads it like a NIfTI volume whose slice axis is the last one."""

    path: Path
    reference: str  # the dataset taken as the fully sampled image
    shape: tuple[int, int, int]  # (H, W, S) of the reference
    coils: int  # 1 for single-coil files
    acquisition: str | None
    patient_id: str | None

    @property
    def dataobj(self) -> np.ndarray:
        """The reference as (H, W, S) float32 (stored as (S, H, W)), read from the file at each access."""
        with h5py.File(self.path, "r") as f:
            return np.moveaxis(f[self.reference][()], 0, -1)

    def complex_slices(self, size: int) -> tuple[np.ndarray, float]:
        """The complex image of a single-coil file, fastMRI's way (see the module docstring): ``(slices, scale)``
        with slices (size, size, S) complex128 = scale * complex_center_crop(ifft2c(kspace)) and scale the
        float ``1 / max |image|`` over the volume (1.0 for an all-zero volume). A multi-coil file gives
        :meth:`coil_images`: slices (N, size, size, S), ``scale = 1 / max RSS``."""
        if self.coils != 1:
            return self.coil_images(size)
        with h5py.File(self.path, "r") as f:
            check_stored(self.path, f["kspace"])
            kspace = f["kspace"][()]  # (S, H, W) complex64, DC in the middle
        if kspace.dtype.kind != "c":
            raise FastmriError(f"{self.path}: 'kspace' has dtype {kspace.dtype}, not complex; it is not raw k-space")
        return complex_images(kspace, size, self.path)

    def coil_images(self, size: int) -> tuple[np.ndarray, float]:
        """The coil images of a multi-coil file, fastMRI's way: :func:`coil_images` of its ``kspace``."""
        with h5py.File(self.path, "r") as f:
            check_stored(self.path, f["kspace"])
            kspace = f["kspace"][()]  # (S, N, H, W) complex64, DC in the middle
        if kspace.dtype.kind != "c":
            raise FastmriError(f"{self.path}: 'kspace' has dtype {kspace.dtype}, not complex; it is not raw k-space")
        return coil_images(kspace, size, self.path)


def complex_images(kspace: np.ndarray, size: int, label) -> tuple[np.ndarray, float]:
    """fastMRI's complex images of centred single-coil k-space: ``(slices, scale)`` with slices (size, size, S)
    complex128 = scale * complex_center_crop(ifft2c(kspace)) and scale the float ``1 / max |image|`` over the
    volume (1.0 for an all-zero volume). kspace: (S, H, W) complex, DC in the middle; ``label`` names it in
    errors."""
    image = ifft2c(torch.from_numpy(kspace.astype(np.complex128))).numpy()
    _, height, width = image.shape
    if height < size or width < size:
        raise FastmriError(f"{label}: its k-space gives {height} x {width} images, smaller than --size {size}; "
                           "complex_center_crop only crops: pass a smaller --size")
    top, left = (height - size) // 2, (width - size) // 2
    cropped = np.moveaxis(image[:, top:top + size, left:left + size], 0, -1)
    peak = float(np.abs(cropped).max())
    scale = 1.0 / peak if peak > 0 else 1.0
    return cropped * scale, scale

def coil_images(kspace: np.ndarray, size: int, label) -> tuple[np.ndarray, float]:
    """fastMRI's coil images of centred multi-coil k-space: ``(images, scale)`` with images (N, size, size, S)
    complex128 = scale * complex_center_crop(ifft2c(kspace)) per coil (the crop drops the readout oversampling)
    and scale the float ``1 / max RSS`` over the volume, so that the images' root sum of squares is ``scale *
    reconstruction_rss`` (fastMRI's reference: the RSS of exactly these cropped images). kspace: (S, N, H, W)
    complex, DC in the middle; ``label`` names it in errors."""
    image = ifft2c(torch.from_numpy(kspace.astype(np.complex128))).numpy()
    height, width = image.shape[-2:]
    if height < size or width < size:
        raise FastmriError(f"{label}: its k-space gives {height} x {width} images, smaller than --size {size}; "
                           "complex_center_crop only crops: pass a smaller --size")
    top, left = (height - size) // 2, (width - size) // 2
    cropped = np.moveaxis(image[..., top:top + size, left:left + size], 0, -1)  # (N, size, size, S)
    peak = float(np.sqrt((np.abs(cropped) ** 2).sum(axis=0)).max())
    scale = 1.0 / peak if peak > 0 else 1.0
    return cropped * scale, scale


def _text(value) -> str | None:
    """An HDF5 string attribute as ``str`` (h5py gives ``bytes`` for fixed-length strings), sanitised: it is
    printed and written to split.json; None stays None."""
    if value is None:
        return None
    return clean_text(value.decode(errors="replace") if isinstance(value, bytes) else str(value))


def _header(path: Path, f: h5py.File) -> FastmriVolume:
    if "kspace" not in f:
        raise FastmriError(f"{path} has no 'kspace' dataset (found: {', '.join(sorted(f)) or 'nothing'}); it is "
                           "not a fastMRI volume file")
    kspace = f["kspace"]
    if kspace.ndim not in REFERENCE_OF:
        raise FastmriError(f"{path}: 'kspace' has shape {kspace.shape}; fastMRI files hold (S, H, W) single-coil "
                           "or (S, C, H, W) multi-coil k-space")
    reference, challenge = REFERENCE_OF[kspace.ndim], CHALLENGE_OF[kspace.ndim]
    if reference not in f:
        raise FastmriError(f"{path} has no '{reference}', the reference the fastMRI {challenge} challenge scores "
                           "against (test-set files ship without one); use train / val files or leave it out")
    image = f[reference]
    if image.ndim != 3 or image.shape[0] != kspace.shape[0]:
        raise FastmriError(f"{path}: '{reference}' has shape {image.shape} for a 'kspace' of {kspace.shape[0]} "
                           "slices; a (S, H, W) reference of the same S slices is required")
    check_stored(path, image)
    n_slices, height, width = image.shape
    return FastmriVolume(path, reference, (height, width, n_slices), kspace.shape[1] if kspace.ndim == 4 else 1,
                         _text(f.attrs.get("acquisition")), _text(f.attrs.get("patient_id")))


def open_volume(path: str | Path) -> FastmriVolume:
    """Read the header of one fastMRI ``.h5`` file (shapes and attributes, no image data)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            return _header(path, f)
    except OSError as exc:
        raise FastmriError(f"{path} is not a readable HDF5 file ({first_line(exc)}); download it again or leave "
                           "it out") from exc
