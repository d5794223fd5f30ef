"""Multi-coil volumes in this project's layout: simulated coil k-space of a complex image, the undersampled coil
k-space of each acceleration, its sensitivity maps and the coil-combined images (data/layout.py's multi-coil
datasets).

Maps come from the UNDERSAMPLED k-space's autocalibration (ACS) lines, as a scanner would have them
(data/coils.py's ``estimate_maps``: ESPIRiT or ACS-over-RSS), one set per acceleration and slice; ``"true"``
keeps a simulation's own maps (a control: the maps a real acquisition never has). The fully sampled target and
the zero-filled input are E^H of the fully sampled and of the undersampled coil k-space with those maps
(data/fft.py's :func:`~data.fft.reduce`): the coil-combined complex images.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from data.fft import expand, fft2, ifft2, reduce

MAP_METHODS = ("espirit", "acs-rss", "true")
# What the maps of a simulation are called in files, configs and tables when --maps true keeps them.
TRUE_MAPS = "true"


def simulate_coil_kspace(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Fully sampled coil k-space ``E x`` of complex images.

    images: (S, H, W) complex; maps: (N, H, W) or (S, N, H, W) complex. Returns (S, N, H, W) complex64, computed
    in double precision."""
    image = torch.from_numpy(np.asarray(images, dtype=np.complex128))[:, None]
    maps = torch.from_numpy(np.asarray(maps, dtype=np.complex128))
    return expand(image, maps if maps.ndim == 4 else maps[None]).to(torch.complex64).numpy()


def estimate_volume_maps(kspace_under: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """Sensitivity maps of every slice from its undersampled coil k-space. kspace_under: (S, N, H, W) complex;
    mask: (H, W) {0, 1}; method: "espirit" or "acs-rss". Returns (S, N, H, W) complex64. A mask without an
    autocalibration region raises data/coils.py's ValueError."""
    from data.coils import estimate_maps  # noqa: PLC0415 - sigpy loads slowly; only multi-coil work needs it
    return np.stack([estimate_maps(slice_kspace, mask, method) for slice_kspace in kspace_under])


def undersample_coils(coil_kspace: np.ndarray, masks: dict[str, np.ndarray], method: str,
                      true_maps: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Each acceleration's multi-coil arrays, in data/layout.py's order (slices last).

    coil_kspace: (S, N, H, W) complex fully sampled, unshifted; masks: acc -> (H, W) float {0, 1}; method: one of
    :data:`MAP_METHODS`; true_maps: (S, N, H, W) or (N, H, W) complex, required for (only used by) "true".
    Returns acc -> ``{"target": (H, W, S) complex64 E^H k, "kspace": (N, H, W, S) complex64 m * k, "zf": (H, W, S)
    complex64 E^H (m * k), "maps": (N, H, W, S) complex64}``, the combinations computed in double precision.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"map method {method!r} is unknown; choose one of: {', '.join(MAP_METHODS)}")
    full = torch.from_numpy(np.asarray(coil_kspace, dtype=np.complex128))
    result = {}
    for acc, mask in masks.items():
        under = full * torch.from_numpy(np.asarray(mask, dtype=np.float64))
        under64 = under.to(torch.complex64)
        if method == TRUE_MAPS:
            if true_maps is None:
                raise ValueError("--maps true needs the simulation's maps")
            maps = np.broadcast_to(true_maps, full.shape).astype(np.complex64)
        else:
            maps = estimate_volume_maps(under64.numpy(), mask, method)
        maps_t = torch.from_numpy(maps).to(torch.complex128)
        # The stored (complex64) k-space, so that the files satisfy zf = E^H y to float32 rounding.
        volfs = reduce(full, maps_t)[:, 0].to(torch.complex64)
        zf = reduce(under64.to(torch.complex128), maps_t)[:, 0].to(torch.complex64)
        result[acc] = {"target": _slices_last(volfs.numpy()), "kspace": _slices_last(under64.numpy()),
                       "zf": _slices_last(zf.numpy()), "maps": _slices_last(maps)}
    return result


class MulticoilVolume(NamedTuple):
    """One volume ready for data/layout.py's writer: ``coils`` (N, after any compression), ``rss`` (H, W, S)
    float32, the root sum of squares of the fully sampled coil images before compression (fastMRI's
    ``reconstruction_rss`` convention, what multi-coil data are scored against), and ``arrays``, acc ->
    :func:`undersample_coils`' dict."""

    coils: int
    rss: np.ndarray
    arrays: dict[str, dict[str, np.ndarray]]


def multicoil_volume(images: np.ndarray, masks: dict[str, np.ndarray], method: str,
                     simulate_coils: int | None = None, compress: int | None = None) -> MulticoilVolume:
    """A multi-coil volume from a simulation or from acquired coil images.

    images: (H, W, S) complex, an image to simulate ``simulate_coils`` birdcage coils on (data/coils.py's
    ``birdcage_maps``, sum |S|^2 = 1), or (C, H, W, S) complex acquired coil images (fastMRI, data/fastmri.py);
    masks: acc -> (H, W) {0, 1}; method: how the maps are made (:data:`MAP_METHODS`; "true" only for a
    simulation); compress: SVD-compress the coils to this many virtual coils first (data/coils.py's
    ``coil_compress``, one matrix per volume) or None. Raises ValueError for a mask without ACS lines.
    """
    from data import coils as coil_tools  # noqa: PLC0415 - sigpy loads slowly; only multi-coil work needs it
    true_maps = None
    if images.ndim == 3:
        true_maps = coil_tools.birdcage_maps(simulate_coils, images.shape[:2])
        coil_kspace = torch.from_numpy(simulate_coil_kspace(np.moveaxis(images, -1, 0), true_maps))
    else:
        coil_kspace = fft2(torch.from_numpy(np.moveaxis(images, -1, 0).astype(np.complex128)))
    coil_images = ifft2(coil_kspace.to(torch.complex128))
    rss = torch.sqrt((coil_images.abs() ** 2).sum(dim=1)).to(torch.float32).numpy()
    coil_kspace = coil_kspace.numpy()
    if compress is not None:
        if method == TRUE_MAPS:
            raise ValueError("--maps true cannot describe compressed (virtual) coils")
        coil_kspace = coil_tools.coil_compress(coil_kspace, compress)
    arrays = undersample_coils(coil_kspace, masks, method, true_maps)
    return MulticoilVolume(coil_kspace.shape[1], _slices_last(rss), arrays)


def _slices_last(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))
