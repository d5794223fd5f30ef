"""DC-CNN: cascades of a small CNN block followed by a parameter-free data-fidelity (DF) layer.

Teacher D5C5 (5 cascades x 5 convs, 141,765 parameters) and student D3C5 (5 cascades x 3 convs, 49,285
parameters), as in KD-MRI and SFT-KD-Recon.
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
class DCCNNConfig:
    """Architecture hyperparameters; stored as JSON in every checkpoint.

    ref_padding: the public code zero-pads each block input by 5 pixels and crops the CNN output back before
    DF. It changes what the network computes near the image border: with 5, the hidden layers see their own
    activations beyond the border (ReLU(bias) and more) where with 0 each convolution sees zeros. When
    training from scratch that is only a compute choice (0 computes less and trains as well), hence our
    default 0. For loaded weights it is part of the network: the same weights give
    outputs up to ~1e-2 apart on [0, 1] images (measured for D3C5 and D5C5 at 64 and 150 pixels: max
    |difference| 0.011-0.012, mean 1.5e-4-1.1e-3). Run weights with the padding they were trained with:
    imported public checkpoints carry 5, and train_student_kd.py takes it from --init-from-sft.

    image_channels: 1 for magnitude images (the paper's), 2 for complex ones as (real, imaginary), as
    Schlemper et al. define the DC-CNN; only the first and last convolutions change.
    """
    n_cascades: int = 5
    n_convs: int = 5
    channels: int = 32
    residual: bool = False
    ref_padding: int = 0
    image_channels: int = 1
    kind: ClassVar[str] = "dccnn"

    def to_dict(self) -> dict:
        return arch_dict(self)

    def build(self) -> "DCCNN":
        return DCCNN(self)

    @property
    def hidden_channels(self) -> tuple[int, ...]:
        """Channels of the hidden maps of a cascade (conv1 .. conv{n-1}), for the KD losses."""
        return (self.channels,) * (self.n_convs - 1)

    @property
    def border(self) -> int:
        """The padding the hidden maps carry on every side (see ref_padding)."""
        return self.ref_padding


TEACHER = DCCNNConfig(n_convs=5)
STUDENT = DCCNNConfig(n_convs=3)


class ConvBlock(nn.Module):
    """``n_convs`` 3x3 convolutions I -> C -> ... -> C -> I (I = image channels, 1 or 2), ReLU after all but the
    last, bias on.

    Layers are named ``conv1 .. conv{n}`` like the public code, so its state dicts map one to one.
    """

    def __init__(self, n_convs: int, channels: int = 32, residual: bool = False, image_channels: int = 1):
        super().__init__()
        if n_convs < 2:
            raise ValueError("a CNN block needs at least 2 convolutions")
        if image_channels not in (1, 2):
            raise ValueError(f"image_channels must be 1 (magnitude) or 2 (complex), not {image_channels}")
        widths = [image_channels] + [channels] * (n_convs - 1) + [image_channels]
        self.names = [f"conv{j + 1}" for j in range(n_convs)]
        for name, c_in, c_out in zip(self.names, widths[:-1], widths[1:]):
            self.add_module(name, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True))
        self.residual = residual

    def forward(self, x: torch.Tensor, keep_hidden: set[int] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """x: (B, I, H, W) float32. Returns the block output (B, I, H, W) and the hidden activations,
        a list of ``n_convs - 1`` (B, C, H, W) tensors (after ReLU), for feature-based KD.

        ``keep_hidden`` (0-based indices) keeps only those activations and puts None in the other places,
        so that without autograd the others are freed at once (a frozen teacher's 20 maps are 590 MB at
        240 x 240, batch 4)."""
        hidden = []
        h = x
        for index, name in enumerate(self.names[:-1]):
            # In-place ReLU is safe: a convolution's backward needs its input, not its output.
            h = F.relu(getattr(self, name)(h), inplace=True)
            hidden.append(h if keep_hidden is None or index in keep_hidden else None)
        out = getattr(self, self.names[-1])(h)
        return (out + x if self.residual else out), hidden


class DCCNN(nn.Module):
    """Cascade of (CNN block + DF). Input and output images are (B, I, H, W) float32 (I = image_channels: 1
    magnitude, 2 real and imaginary), any H x W."""

    def __init__(self, config: DCCNNConfig = TEACHER):
        super().__init__()
        self.config = config
        self.cascades = nn.ModuleList(ConvBlock(config.n_convs, config.channels, config.residual,
                                                config.image_channels) for _ in range(config.n_cascades))

    def run_cascade(self, index: int, x: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                    maps: torch.Tensor | None = None, keep_hidden: set[int] | None = None
                    ) -> tuple[torch.Tensor, dict]:
        """Cascade ``index`` (0-based) then DF.

        x: (B, I, H, W) float32; kspace_under: (B, 1, H, W) complex64 ((B, N, H, W) multi-coil); mask: (B, 1,
        H, W) float32; maps: None, or (B, N, H, W) complex64 sensitivity maps for multi-coil data (data/fft.py).
        Returns the DF output (B, I, H, W) float32 and the features
        ``{"hidden": [(B, C, H', W')] * (n_convs - 1), "cnn_out": (B, I, H, W), "out": (B, I, H, W)}``
        (H' = H + 2 * ref_padding); ``keep_hidden`` as in :meth:`ConvBlock.forward`.
        """
        pad = self.config.ref_padding
        cnn_in = F.pad(x, (pad, pad, pad, pad)) if pad else x
        cnn_out, hidden = self.cascades[index](cnn_in, keep_hidden)
        if pad:
            cnn_out = cnn_out[..., pad:-pad, pad:-pad]
        out = data_fidelity(cnn_out, kspace_under, mask, maps)
        return out, {"hidden": hidden, "cnn_out": cnn_out, "out": out}

    def forward(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor | None = None, return_features: bool = False,
                keep_hidden: set[int] | None = None):
        """zero_filled: (B, I, H, W) float32; kspace_under: (B, 1, H, W) complex64 ((B, N, H, W) multi-coil);
        mask: (B, 1, H, W); maps: None or (B, N, H, W) complex64 (see :meth:`run_cascade`).

        Returns the reconstruction (B, I, H, W) float32, and with ``return_features`` also a list with one
        feature dict per cascade (see :meth:`run_cascade`; ``keep_hidden`` selects hidden layers).
        """
        x = zero_filled
        features = []
        for index in range(len(self.cascades)):
            x, feats = self.run_cascade(index, x, kspace_under, mask, maps, keep_hidden)
            if return_features:
                features.append(feats)
        return (x, features) if return_features else x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(arch: dict, detail: bool = False) -> str:
    """``"D3C5 (5 cascades x 3 convs)"`` for an arch dict; ``detail`` adds channels and ref_padding."""
    extra = f", {arch.get('channels')} channels, ref_padding {arch.get('ref_padding')}" if detail else ""
    n_convs, n_cascades = arch.get("n_convs"), arch.get("n_cascades")
    return f"D{n_convs}C{n_cascades} ({n_cascades} cascades x {n_convs} convs{extra})"


FAMILY = Family(kind=DCCNNConfig.kind, title="DC-CNN", config=DCCNNConfig, describe=describe,
                presets={"teacher": TEACHER, "student": STUDENT},
                flags={"cascades": "n_cascades", "depth": "n_convs", "width": "channels",
                       "ref_padding": "ref_padding", "residual": "residual"},
                # Far beyond the paper's networks (5 cascades, 5 convs, 32 channels).
                bounds={"n_cascades": 100, "n_convs": 100, "channels": 65536})
