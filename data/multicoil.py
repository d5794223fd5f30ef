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

import numpy as np
import torch

from data.fft import expand, reduce

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
    Returns acc -> ``{"volfs": (H, W, S) complex64 E^H k, "kspace": (N, H, W, S) complex64 m * k, "zf": (H, W, S)
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
        result[acc] = {"volfs": _slices_last(volfs.numpy()), "kspace": _slices_last(under64.numpy()),
                       "zf": _slices_last(zf.numpy()), "maps": _slices_last(maps)}
    return result


def _slices_last(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))
