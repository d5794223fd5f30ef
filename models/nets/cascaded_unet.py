"""Cascaded U-Net: cascades of a small U-Net followed by the parameter-free data-fidelity (DF) layer, the
single-coil analogue of an unrolled VarNet (Sriram et al. 2020) with hard data consistency.

A second network family beside DC-CNN (models/nets/dccnn.py), registered in models/nets/registry.py: trainable with
``train_teacher.py --model unet-teacher``, an SFT teacher or student (``--teacher-model`` /
``--student-model``, as many cascades on both sides) and a KD teacher or student.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from data.fft import data_fidelity
from models.nets.family import Family, arch_dict


@dataclass(frozen=True)
class CascadedUNetConfig:
    """Architecture hyperparameters; stored as JSON in every checkpoint.

    levels: poolings of each U-Net (its depth); channels: width of the first level, doubled per level;
    residual: the U-Net refines its input (``x + U(x)`` before DF, VarNet's update) instead of replacing it.
    image_channels: 1 for magnitude images, 2 for complex ones as (real, imaginary).
    """
    n_cascades: int = 5
    levels: int = 2
    channels: int = 8
    residual: bool = False
    image_channels: int = 1
    kind: ClassVar[str] = "cascaded-unet"

    def to_dict(self) -> dict:
        return arch_dict(self)

    def build(self) -> "CascadedUNet":
        return CascadedUNet(self)

    @property
    def hidden_channels(self) -> tuple[int, ...]:
        """The full-resolution maps the KD losses see: the first encoder level's and the last decoder level's
        output (so a teacher's "conv3" and a student's "conv2" both mean the decoder's)."""
        return (self.channels, self.channels)

    @property
    def border(self) -> int:
        return 0


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by instance normalisation and LeakyReLU(0.2), (B, c_in, H, W) ->
    (B, c_out, H, W): fastMRI's U-Net ``ConvBlock`` (without its dropout). With a plain ReLU after every
    convolution a narrow U-Net can start with an all-zero last map, so no parameter receives a gradient and
    the run never changes; the leaky slope keeps every gradient path open, and the normalisation keeps each
    map's scale independent of the initialisation draw. The convolutions have no bias: the normalisation
    would remove it."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.InstanceNorm2d(c_out),
                         nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.InstanceNorm2d(c_out),
                         nn.LeakyReLU(0.2, inplace=True))


def _upsample(c_in: int, c_out: int) -> nn.Sequential:
    """A 2x2 stride-2 transposed convolution with instance normalisation and LeakyReLU(0.2), (B, c_in, H, W) ->
    (B, c_out, 2H, 2W): fastMRI's ``TransposeConvBlock`` (deterministic on GPUs, unlike bilinear backward)."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False), nn.InstanceNorm2d(c_out),
                         nn.LeakyReLU(0.2, inplace=True))


class UNet(nn.Module):
    """fastMRI's U-Net (``fastmri/models/unet.py``) with ``levels`` average poolings, ``channels`` * 2**level
    channels per level, transposed-convolution upsampling, skip connections by concatenation, and a 1x1 output
    convolution to the image's channels (1 magnitude, 2 real and imaginary)."""

    def __init__(self, levels: int, channels: int, image_channels: int = 1):
        super().__init__()
        if levels < 1:
            raise ValueError("a U-Net needs at least 1 level")
        widths = [channels * 2 ** level for level in range(levels + 1)]
        self.levels = levels
        self.down = nn.ModuleList([_double_conv(image_channels, widths[0])] +
                                  [_double_conv(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.upsample = nn.ModuleList(_upsample(widths[level], widths[level - 1]) for level in range(levels, 0, -1))
        self.up = nn.ModuleList(_double_conv(2 * widths[level - 1], widths[level - 1])
                                for level in range(levels, 0, -1))
        self.out = nn.Conv2d(widths[0], image_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, I, H, W) float32, any H x W. Returns the output (B, I, H, W) and the full-resolution maps
        [first encoder level, last decoder level], each (B, channels, H, W)."""
        height, width = x.shape[-2:]
        multiple = 2 ** self.levels
        # Zero-pad to a multiple of 2**levels so every pooling halves exactly; cropped back below.
        h = F.pad(x, (0, -width % multiple, 0, -height % multiple))
        skips = []
        for index, block in enumerate(self.down):
            h = block(F.avg_pool2d(h, 2) if index else h)
            skips.append(h)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips[:-1])):
            h = block(torch.cat([upsample(h), skip], dim=1))
        out = self.out(h)[..., :height, :width]
        return out, [skips[0][..., :height, :width], h[..., :height, :width]]


class CascadedUNet(nn.Module):
    """Cascade of (U-Net + DF). Images are (B, I, H, W) float32 (I = image_channels), any H x W; the feature
    contract of models/nets/family.py."""

    def __init__(self, config: CascadedUNetConfig = CascadedUNetConfig()):
        super().__init__()
        self.config = config
        self.cascades = nn.ModuleList(UNet(config.levels, config.channels, config.image_channels)
                                      for _ in range(config.n_cascades))

    def run_cascade(self, index: int, x: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                    maps: torch.Tensor | None = None, keep_hidden: set[int] | None = None
                    ) -> tuple[torch.Tensor, dict]:
        """Cascade ``index`` (0-based) then DF. x: (B, 1, H, W) float32; kspace_under: (B, 1, H, W) complex64;
        mask: (B or 1, 1, H, W) float32; maps: None, or (B, N, H, W) complex64 sensitivity maps, kspace_under then
        (B, N, H, W) (multi-coil, data/fft.py). Returns the DF output (B, 1, H, W) and ``{"hidden": [(B, C, H, W)] * 2,
        "cnn_out": (B, 1, H, W), "out": (B, 1, H, W)}``; ``keep_hidden`` (0-based) puts None in the others."""
        cnn_out, hidden = self.cascades[index](x)
        if self.config.residual:
            cnn_out = cnn_out + x
        hidden = [h if keep_hidden is None or j in keep_hidden else None for j, h in enumerate(hidden)]
        out = data_fidelity(cnn_out, kspace_under, mask, maps)
        return out, {"hidden": hidden, "cnn_out": cnn_out, "out": out}

    def forward(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor | None = None, return_features: bool = False,
                keep_hidden: set[int] | None = None):
        """Inputs as in :meth:`run_cascade` (zero_filled for x). Returns the reconstruction (B, 1, H, W) float32,
        and with ``return_features`` also the list of per-cascade feature dicts."""
        x, features = zero_filled, []
        for index in range(len(self.cascades)):
            x, feats = self.run_cascade(index, x, kspace_under, mask, maps, keep_hidden)
            if return_features:
                features.append(feats)
        return (x, features) if return_features else x


def describe(arch: dict, detail: bool = False) -> str:
    """``"U8L2C5 (5 cascades of a 2-level U-Net, width 8)"`` for an arch dict; ``detail`` adds residual."""
    width, levels, n_cascades = arch.get("channels"), arch.get("levels"), arch.get("n_cascades")
    extra = f", residual {arch.get('residual')}" if detail else ""
    return f"U{width}L{levels}C{n_cascades} ({n_cascades} cascades of a {levels}-level U-Net, width {width}{extra})"


FAMILY = Family(kind=CascadedUNetConfig.kind, title="cascaded U-Net", config=CascadedUNetConfig, describe=describe,
                presets={"unet-teacher": CascadedUNetConfig(channels=8), "unet-student": CascadedUNetConfig(channels=4)},
                flags={"cascades": "n_cascades", "depth": "levels", "width": "channels", "residual": "residual"},
                # 12 levels already pool a 4096-pixel image down to one pixel; widths double per level.
                bounds={"n_cascades": 100, "levels": 12, "channels": 4096})
