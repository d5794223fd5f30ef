"""Running a trained network on slices outside training: what its checkpoint says it was trained on (image type,
slice size, mask), the network set up for forward passes, and the forward pass in batches.

The forward pass is evaluate.py's (same memory layout choice, :func:`torch.inference_mode`, the magnitude of the
output), so a slice reconstructed here equals evaluate.py's reconstruction of the same slice bit for bit.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from data.fft import IMAGE_TYPES, magnitude
from data.fingerprint import file_digest
from data.layout import mask_name
from data.masks import load_mask, mask_lines
from data.scans import NetworkInputs, Target
from models.nets.registry import image_channels_of
from models.training.speed import MEMORY_FORMATS, auto_layout
from utils import UserError


def _config(ckpt: dict) -> dict:
    config = ckpt.get("config")
    return config if isinstance(config, dict) else {}


def trained_accs(ckpt: dict) -> list[str]:
    """The accelerations a checkpoint's run trained at (its ``--acc``), empty when it records none."""
    accs = _config(ckpt).get("acc")
    return [str(acc) for acc in (accs if isinstance(accs, list) else [accs] if accs else [])]


def recorded_mask_file(ckpt: dict, acc: str) -> Path | None:
    """The mask file the run read for ``acc``: its ``--mask`` entry, else ``{data_root}/mask_{acc}.npy``."""
    config = _config(ckpt)
    accs, masks = trained_accs(ckpt), config.get("mask")
    if isinstance(masks, list) and acc in accs and accs.index(acc) < len(masks):
        return Path(masks[accs.index(acc)])
    return Path(config["data_root"]) / mask_name(acc) if config.get("data_root") else None


def checkpoint_target(path: Path, ckpt: dict, acc: str | None = None, mask: Path | None = None,
                      size: int | None = None) -> Target:
    """What the network of ``ckpt`` (read from ``path``) was trained on: its image type, slice size (recorded;
    ``size`` only for checkpoints that record none) and the mask for synthetic undersampling (``mask``, else the
    run's own for ``acc``, default its first acceleration, checked against the SHA-256 the run recorded)."""
    config = _config(ckpt)
    content = config.get("content") if isinstance(config.get("content"), dict) else {}
    image = IMAGE_TYPES.get(image_channels_of(ckpt["arch"]), "magnitude")
    recorded = content.get("image_size")
    if isinstance(recorded, list) and len(recorded) == 2:
        shape = (int(recorded[0]), int(recorded[1]))
        if size is not None and size != shape[0]:
            raise UserError(f"--size {size}: {path} was trained on {shape[0]} x {shape[1]} slices; drop --size")
    elif size is not None:
        shape = (size, size)
    else:
        raise UserError(f"{path} records no slice size (an imported or older checkpoint); pass --size N, the size "
                        "of the slices it was trained on")
    accs = trained_accs(ckpt)
    if acc is not None and accs and acc not in accs:
        raise UserError(f"--acc {acc}: {path} was trained at {' '.join(accs)}; choose one of those")
    acc = acc or (accs[0] if accs else None)
    lines_recorded = content.get("mask_lines") if isinstance(content.get("mask_lines"), dict) else {}
    lines = lines_recorded.get(acc) if acc else None
    if mask is not None:
        loaded = load_mask(mask, shape)
        if lines and mask_lines(loaded) != lines:
            raise UserError(f"--mask {mask} samples {mask_lines(loaded)}, but {path} was trained with masks sampling "
                            f"{lines}; pass a mask of the kind it was trained with")
        return Target(image, shape, lines or mask_lines(loaded), loaded, str(mask))
    file = recorded_mask_file(ckpt, acc) if acc else None
    if file is None:
        return Target(image, shape, lines, None, "", f"{path} records no mask; pass --mask FILE, the mask it was "
                                                       "trained with")
    digest = content.get("masks", {}).get(acc) if isinstance(content.get("masks"), dict) else None
    if not file.is_file():
        return Target(image, shape, lines, None, str(file),
                      f"the mask {path} was trained with, {file}, is missing; pass it with --mask FILE")
    if digest is not None and file_digest(file) != digest:
        return Target(image, shape, lines, None, str(file),
                      f"{file} has other contents than the mask {path} was trained with (prepared again?); pass "
                      "that mask with --mask FILE")
    loaded = load_mask(file, shape)
    return Target(image, shape, lines or mask_lines(loaded), loaded, str(file))


def for_inference(net: nn.Module, device: torch.device, size: tuple[int, int], batch: int = 4) -> nn.Module:
    """``net`` on ``device`` in eval mode, in the memory layout evaluate.py takes for forward passes of (H, W)
    ``size`` images in batches of ``batch`` (models/training/speed.py)."""
    layout = MEMORY_FORMATS[auto_layout(device, size, False, backward=False, batch=batch)]
    return net.to(device, memory_format=layout).eval()


def reconstruct(net: nn.Module, inputs: NetworkInputs, device: torch.device, batch_size: int = 4,
                progress: bool = True, desc: str = "slices") -> tuple[np.ndarray, float]:
    """Every slice of ``inputs`` through ``net`` (set up by :func:`for_inference`): returns the magnitude of the
    output, (S, H, W') float32 in network units, and the wall-clock seconds per slice."""
    n_slices = inputs.zero_filled.shape[0]
    outputs = []
    start = time.perf_counter()
    with tqdm(total=n_slices, desc=desc, unit="slice", disable=not progress, leave=False) as bar:
        for first in range(0, n_slices, batch_size):
            part = slice(first, first + batch_size)
            zero_filled, kspace = inputs.zero_filled[part].to(device), inputs.kspace_under[part].to(device)
            mask = inputs.mask.expand(zero_filled.shape[0], -1, -1, -1).to(device)
            with torch.inference_mode():
                out = net(zero_filled, kspace, mask)
            outputs.append(magnitude(out.float()).cpu().numpy()[:, 0])
            bar.update(zero_filled.shape[0])
    seconds = (time.perf_counter() - start) / max(n_slices, 1)
    return np.concatenate(outputs), seconds
