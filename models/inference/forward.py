"""Running a trained network on slices outside training: what its checkpoint says it was trained on (image type,
slice size, mask), the network set up for forward passes, and the forward pass in batches.

The forward pass is evaluate.py's (same memory layout choice, :func:`torch.inference_mode`, the magnitude of the
output), so a slice reconstructed here equals evaluate.py's reconstruction of the same slice bit for bit.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from data.fft import IMAGE_TYPES, data_fidelity, data_fidelity_half, half_spectrum, magnitude
from data.fingerprint import file_digest
from data.layout import mask_name
from data.masks import load_mask, mask_lines
from data.outputs import atomic_write
from data.scans import NetworkInputs, Target
from models.inference.cost import synthetic_inputs
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
    run's own for ``acc``, default its first acceleration, checked against the SHA-256 the run recorded) and, for
    a run on multi-coil data, its coil count and maps method."""
    config = _config(ckpt)
    content = config.get("content") if isinstance(config.get("content"), dict) else {}
    image = IMAGE_TYPES.get(image_channels_of(ckpt["arch"]), "magnitude")
    coils = config.get("coils")
    coil = {"coils": int(coils), "maps": str(config.get("maps"))} if coils else {}
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
        return Target(image, shape, lines or mask_lines(loaded), loaded, str(mask), **coil)
    file = recorded_mask_file(ckpt, acc) if acc else None
    if file is None:
        return Target(image, shape, lines, None, "", f"{path} records no mask; pass --mask FILE, the mask it was "
                                                       "trained with", **coil)
    digest = content.get("masks", {}).get(acc) if isinstance(content.get("masks"), dict) else None
    if not file.is_file():
        return Target(image, shape, lines, None, str(file),
                      f"the mask {path} was trained with, {file}, is missing; pass it with --mask FILE", **coil)
    if digest is not None and file_digest(file) != digest:
        return Target(image, shape, lines, None, str(file),
                      f"{file} has other contents than the mask {path} was trained with (prepared again?); pass "
                      "that mask with --mask FILE", **coil)
    loaded = load_mask(file, shape)
    return Target(image, shape, lines or mask_lines(loaded), loaded, str(file), **coil)


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
            maps = () if inputs.maps is None else (inputs.maps[part].to(device),)
            with torch.inference_mode():
                out = net(zero_filled, kspace, mask, *maps)
            outputs.append(magnitude(out.float()).cpu().numpy()[:, 0])
            bar.update(zero_filled.shape[0])
    seconds = (time.perf_counter() - start) / max(n_slices, 1)
    return np.concatenate(outputs), seconds


# --------------------------------------------------------------------------- faster inference modes

def _conv(conv: nn.Conv2d, x: torch.Tensor, relu: bool) -> torch.Tensor:
    """``relu(conv(x))`` (or ``conv(x)``) as one oneDNN convolution with a ReLU post-op: no second pass over the
    32-channel map. The post-op is max(0, v) on the same sums, so it changes nothing but time where oneDNN keeps
    the same kernel (bit-identical on the CPUs measured); CPU tensors only."""
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, "relu" if relu else "none",
                                                   [None], "")


def _narrow_conv(conv: nn.Conv2d, hidden: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution to a few channels (C -> I, I = 1 or 2: a block's last) as one product with the taps and
    nine shifted sums: ``g = W' h`` gives, per pixel, each tap's contribution, (B, I * 9, H, W), and the output adds
    each tap's plane shifted by its offset. oneDNN's 3x3 kernels are built for wide outputs: this does the same
    multiply-adds in a different order (float rounding) several times faster. On CPU with a channels-last ``hidden``
    the product is oneDNN's 1x1 convolution (C -> I * 9), which reads the 32-channel map about twice as fast as a
    matrix product with 9 columns (measured at 320 x 320, docs/compression); elsewhere, a matrix product.

    hidden: (B, C, H, W) float32, any layout. Returns (B, I, H, W) float32."""
    batch, channels, height, width = hidden.shape
    outputs = conv.out_channels
    taps = conv.weight.permute(0, 2, 3, 1).reshape(outputs * 9, channels)  # (I * 9, C), row 9 o + 3 i + j
    if hidden.is_contiguous(memory_format=torch.channels_last) and hidden.device.type == "cpu" \
            and torch.backends.mkldnn.is_available():
        weight = taps.view(outputs * 9, channels, 1, 1).contiguous(memory_format=torch.channels_last)
        per_tap = torch.ops.mkldnn._convolution_pointwise(hidden, weight, None, [0, 0], [1, 1], [1, 1], 1, "none",
                                                          [None], "")  # (B, I * 9, H, W), channels-last
        per_tap = per_tap.unflatten(1, (outputs, 9))
    elif hidden.is_contiguous(memory_format=torch.channels_last):
        per_tap = taps @ hidden.permute(1, 0, 2, 3).reshape(channels, -1)  # a (C, B H W) view of NHWC
        per_tap = per_tap.view(outputs, 9, batch, height, width).permute(2, 0, 1, 3, 4)
    else:
        per_tap = (taps @ hidden.reshape(batch, channels, -1)).view(batch, outputs, 9, height, width)
    out = per_tap[:, :, 4] + conv.bias.view(1, -1, 1, 1)  # the centre tap covers every pixel
    for tap in (0, 1, 2, 3, 5, 6, 7, 8):
        di, dj = tap // 3 - 1, tap % 3 - 1  # out[y, x] += plane[y + di, x + dj] where that is inside
        out[..., max(0, -di):height - max(0, di), max(0, -dj):width - max(0, dj)] += \
            per_tap[:, :, tap, max(0, di):height - max(0, -di), max(0, dj):width - max(0, -dj)]
    return out


class FusedDCCNN(nn.Module):
    """Inference-only forward of a DC-CNN (models/nets/dccnn.py) with its fixed cost cut: the mask made boolean
    once per forward instead of once per cascade; each convolution and its ReLU one oneDNN call (CPU); each
    block's last convolution (to 1 or 2 channels) as a matrix product (:func:`_narrow_conv`); and for magnitude
    images the data-fidelity step on real FFTs (:func:`data.fft.data_fidelity_half`: half the FFT work, one
    elementwise pass, no real <-> complex copies). Equal to the training forward up to float rounding
    (tests/test_inference_modes.py states the tolerance). Takes and returns what the DC-CNN does."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor | None = None) -> torch.Tensor:
        keep = mask if mask.dtype == torch.bool else mask > 0.5
        real = zero_filled.shape[1] == 1
        half = half_spectrum(kspace_under, keep) if real else None
        fused = zero_filled.device.type == "cpu" and torch.backends.mkldnn.is_available()
        pad = self.config.ref_padding
        x = zero_filled
        for block in self.net.cascades:
            cnn_in = F.pad(x, (pad, pad, pad, pad)) if pad else x
            h = cnn_in
            for name in block.names[:-1]:
                conv = getattr(block, name)
                h = _conv(conv, h, True) if fused else F.relu(conv(h), inplace=True)
            last = getattr(block, block.names[-1])
            out = _narrow_conv(last, h) if last.out_channels <= 2 else last(h)
            if block.residual:
                out = out + cnn_in
            if pad:
                out = out[..., pad:-pad, pad:-pad]
            x = data_fidelity_half(out, half) if real else data_fidelity(out, kspace_under, keep, maps)
        return x


def _fused(net: nn.Module) -> nn.Module:
    if getattr(net.config, "kind", None) != "dccnn":
        raise UserError(f"--mode fused runs DC-CNNs; this checkpoint holds a {net.config.kind} network: use --mode "
                        "exact")
    return FusedDCCNN(net)


class _Autocast(nn.Module):
    """The network under bfloat16 autocast (its convolutions in bf16; DF in float32 as data/fft.py casts, a
    VarNet's sensitivity model in float32 as models/nets/varnet.py keeps it)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(inputs[0].device.type, dtype=torch.bfloat16):
            return self.net(*inputs).float()


# --mode NAME -> (what it is, how the network is wrapped). "exact" is the training forward itself. torch.compile
# was tried and left out: inductor generates no code for complex ops (DF stays eager), and compiling the fused
# student took over 10 minutes on the shared 2-core EPYC (docs/measurements.md).
INFERENCE_MODES = {
    "exact": ("the training forward, float32 (bit-identical to evaluate.py)", lambda net: net),
    "fused": ("conv+ReLU fused (oneDNN post-op), DF on real FFTs, mask once; float32, equal up to rounding",
              _fused),
    "bf16": ("bfloat16 autocast of the convolutions, DF (and a VarNet's sensitivity maps) in float32", _Autocast),
}


def inference_network(net: nn.Module, mode: str = "exact") -> nn.Module:
    """``net`` (set up by :func:`for_inference`) wrapped for ``mode`` of :data:`INFERENCE_MODES`."""
    if mode not in INFERENCE_MODES:
        raise UserError(f"--mode {mode!r} is unknown; choose one of: {', '.join(INFERENCE_MODES)}")
    return INFERENCE_MODES[mode][1](net)


# --------------------------------------------------------------------------- a self-contained program

EXPORT_INFO = "sftkd.json"
EXPORT_USAGE = ("import torch; net = torch.export.load(PATH).module(); recon = net(zero_filled, kspace_under, mask) "
                "with zero_filled (B, C, H, W) float32, kspace_under (B, 1, H, W) complex64 and mask (B, 1, H, W) "
                "float32 of {0, 1}, k-space unshifted (DC at [0, 0]) and orthonormal: image = ifft2(k, norm='ortho')")


def export_program(net: nn.Module, path: Path, channels: int, info: dict, mode: str = "exact") -> None:
    """Write ``net`` in ``mode`` as a :func:`torch.export` program (``.pt2``) that runs with torch alone, without
    this repository: batch, height and width are dynamic. ``info`` (JSON-able: the checkpoint's arch, image
    type, training size) is stored beside it as the extra file :data:`EXPORT_INFO`, with the usage."""
    from torch.export import Dim

    program_net = inference_network(net.cpu().eval(), mode)
    example = _example_inputs(channels)
    batch, height, width = Dim("batch", min=1, max=4096), Dim("height", min=8, max=8192), Dim("width", min=8, max=8192)
    dims = {0: batch, 2: height, 3: width}
    with torch.no_grad():
        program = torch.export.export(program_net, example, dynamic_shapes=(dims, dims, dims))
    extra = {EXPORT_INFO: json.dumps({**info, "mode": mode, "usage": EXPORT_USAGE}, indent=2)}
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))


def _example_inputs(channels: int) -> tuple[torch.Tensor, ...]:
    return synthetic_inputs(24, 2, channels)
