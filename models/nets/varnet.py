"""E2E-VarNet (Sriram et al., MICCAI 2020): cascades that update coil k-space with a learned soft data-consistency
weight and a normalised U-Net on the coil-combined image, and a sensitivity model that refines coil maps from the
autocalibration (ACS) lines.

Cascade t maps coil k-space k_t (B, N, H, W) complex64 to

    k_{t+1} = k_t - eta_t * m * (k_t - y) - E(U_t(E^H(k_t)))

with y the acquired coil k-space, m the sampling mask, eta_t a learned scalar (init 1), E / E^H data/fft.py's
:func:`~data.fft.expand` / :func:`~data.fft.reduce` with the network's maps, and U_t a U-Net on the (real,
imaginary) channels of the coil-combined image, normalised per sample and channel (fastMRI's ``NormUnet``). The
first state is k_0 = y. The maps are the prepared ones (``sens_refine=False``, ``--prepared-maps``) or, as in
the paper, the sensitivity model's estimate from the undersampled data alone: each coil's ACS image through a
small normalised U-Net (coils in the batch dimension), divided by the root-sum-of-squares (RSS) over coils. The
output is the RSS of the final coil images, ``sqrt(sum_c |F^-1 k_c|^2)`` (fastMRI's VarNet output); for complex
data (2 channels) it carries the phase of E^H k with the data's own (prepared) maps, the maps the targets were
combined with, so that its magnitude is the RSS and its phase that of the targets. Single-coil data are one coil
with unit maps.

A family of models/nets/registry.py: ``train_teacher.py --model varnet-teacher`` / ``varnet-student``, an SFT
teacher or student (branch points between cascades, where the state is coil k-space) and a KD teacher or student
(the U-Net's features). Its networks' state between cascades is coil k-space, not an image, so they provide
models/nets/family.py's ``cascade_maps``, ``initial_state`` and ``image``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from data.fft import expand, ifft2, reduce, to_channels, to_complex
from models.nets.cascaded_unet import UNet
from models.nets.family import Family, arch_dict

# Added to a variance before its square root: far below any image's (fastMRI's k-space gives variances of about
# 1e-10), so that a constant input (an empty slice) has a finite standard deviation and finite gradients.
VARIANCE_FLOOR = 1e-30


@dataclass(frozen=True)
class VarNetConfig:
    """Architecture hyperparameters; stored as JSON in every checkpoint.

    n_cascades: k-space cascades; levels / channels: poolings and first-level width of each cascade's U-Net;
    sens_refine: estimate the maps with the sensitivity model (the paper's) instead of using the prepared ones
    as they are; sens_levels / sens_channels: its U-Net's; image_channels: 1 for magnitude images (the RSS
    alone), 2 for complex ones as (real, imaginary).
    """
    n_cascades: int = 5
    levels: int = 3
    channels: int = 18
    sens_refine: bool = True
    sens_levels: int = 3
    sens_channels: int = 8
    image_channels: int = 1
    kind: ClassVar[str] = "varnet"

    def to_dict(self) -> dict:
        return arch_dict(self)

    def build(self) -> "VarNet":
        return VarNet(self)

    @property
    def hidden_channels(self) -> tuple[int, ...]:
        """The cascade U-Net's full-resolution maps the KD losses see: its first encoder level's and its last
        decoder level's output (a teacher's "conv3" and a student's "conv2" both mean the decoder's)."""
        return (self.channels, self.channels)

    @property
    def border(self) -> int:
        return 0


# fastMRI's cascade width (18) and sensitivity width (8) with five cascades and three poolings, the student a
# third as wide: five cascades as the project's other families (the paper's four SFT branches), three poolings
# so that the teacher trains at 16 px (fastMRI's four pool a 16-pixel image to one pixel, where instance
# normalisation is undefined); --cascades 12 --depth 4 gives fastMRI's cascades.
TEACHER = VarNetConfig(n_cascades=5, levels=3, channels=18, sens_levels=3, sens_channels=8)
STUDENT = VarNetConfig(n_cascades=5, levels=3, channels=6, sens_levels=3, sens_channels=4)


class NormUNet(nn.Module):
    """fastMRI's ``NormUnet``: models/nets/cascaded_unet.py's U-Net on (real, imaginary) channels, each channel
    normalised to zero mean and unit standard deviation per sample before it and restored after it, so that
    the U-Net sees one scale whatever the data's units."""

    def __init__(self, levels: int, channels: int):
        super().__init__()
        self.unet = UNet(levels, channels, image_channels=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, 2, H, W) float32. Returns the output (B, 2, H, W) float32 in x's units and the U-Net's
        full-resolution maps [first encoder level, last decoder level], each (B, channels, H, W)."""
        mean = x.mean(dim=(-2, -1), keepdim=True)
        centred = x - mean
        # The unbiased variance (torch.std's, fastMRI's), floored: torch.std's gradient is NaN at 0.
        variance = centred.square().sum(dim=(-2, -1), keepdim=True) / max(x.shape[-2] * x.shape[-1] - 1, 1)
        std = (variance + VARIANCE_FLOOR).sqrt()
        out, hidden = self.unet(centred / std)
        return out.float() * std + mean, hidden


def acs_lines(mask: torch.Tensor) -> torch.Tensor:
    """The autocalibration region of each mask, where the sensitivity model reads k-space: the longest run of
    fully sampled rows (a row mask) or columns (a column mask) through DC, wrapping around index 0 (data/coils.py's
    ``acs_region``, without its minimum width). A mask of neither kind, or one that does not sample DC, gives
    every sampled location.

    mask: (B, 1, H, W) float {0, 1} or bool. Returns (B, 1, H, W) bool."""
    keep = mask if mask.dtype == torch.bool else mask > 0.5
    rows, cols = keep.all(dim=-1), keep.all(dim=-2)  # (B, 1, H) full rows, (B, 1, W) full columns
    row_block, col_block = _run_through_dc(rows)[..., None], _run_through_dc(cols)[..., None, :]
    row_mask = (keep == rows[..., None]).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    col_mask = (keep == cols[..., None, :]).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    block = torch.where(row_mask, row_block.expand_as(keep), col_block.expand_as(keep))
    found = (row_mask | col_mask) & block.flatten(1).any(dim=1).view(-1, 1, 1, 1)
    return torch.where(found, block, keep)


def _run_through_dc(lines: torch.Tensor) -> torch.Tensor:
    """(..., n) bool -> (..., n) bool: the run of True lines through index 0, wrapping around (lines 0, 1, ...
    and n - 1, n - 2, ...); all False where line 0 is not sampled."""
    n = lines.shape[-1]
    above = lines.long().cumprod(dim=-1).sum(dim=-1, keepdim=True)
    below = lines.flip(-1).long().cumprod(dim=-1).sum(dim=-1, keepdim=True) * lines[..., :1]
    index = torch.arange(n, device=lines.device)
    return (index < above) | (index >= n - below)


MAPS_RSS_FLOOR = 1e-6  # maps' RSS below this (their scale is about 1) counts as no coil signal


def rss(coil_images: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares over coils. coil_images: (B, N, H, W) complex. Returns (B, 1, H, W) float (its
    gradient is 0, not NaN, where every coil is 0)."""
    return torch.linalg.vector_norm(coil_images, dim=1, keepdim=True)


class SensitivityModel(nn.Module):
    """fastMRI's ``SensitivityModel``: each coil's image from the ACS lines alone (:func:`acs_lines`), a
    normalised U-Net on it (coils in the batch dimension), the results divided by their RSS over coils."""

    def __init__(self, levels: int, channels: int):
        super().__init__()
        self.norm_unet = NormUNet(levels, channels)

    def forward(self, kspace_under: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """kspace_under: (B, N, H, W) complex64 coil k-space; mask: (B or 1, 1, H, W). Returns (B, N, H, W)
        complex64 maps with ``sum_c |S_c|^2 = 1`` wherever any coil is nonzero."""
        batch, coils, height, width = kspace_under.shape
        acs = torch.where(acs_lines(mask), kspace_under, torch.zeros((), dtype=kspace_under.dtype,
                                                                     device=kspace_under.device))
        coil_images = to_channels(ifft2(acs).reshape(batch * coils, 1, height, width))
        # float32 even under bfloat16 autocast (--amp, --mode bf16): every cascade uses these maps and the RSS
        # division amplifies their rounding (bf16 maps tripled a small VarNet's bf16 error; see
        # tests/test_reconstruct_multicoil.py).
        with torch.autocast(kspace_under.device.type, enabled=False):
            maps, _ = self.norm_unet(coil_images)
        maps = to_complex(maps).reshape(batch, coils, height, width)
        norm = rss(maps)
        # Where the coils' maps are (near) 0 they become 0: dividing by a tiny RSS gives infinite gradients (seen
        # on an all-zero slice with SSE4.1 kernels), and dividing by 1 there keeps the gradient finite.
        keep = norm > MAPS_RSS_FLOOR
        return torch.where(keep, maps / torch.where(keep, norm, torch.ones_like(norm)), torch.zeros_like(maps))


class Cascade(nn.Module):
    """One cascade's parameters: its normalised U-Net and its soft data-consistency weight eta (init 1)."""

    def __init__(self, levels: int, channels: int):
        super().__init__()
        self.unet = NormUNet(levels, channels)
        self.dc_weight = nn.Parameter(torch.ones(1))


class VarNet(nn.Module):
    """E2E-VarNet: the sensitivity model (``sens_refine``) and ``n_cascades`` k-space cascades; the feature
    contract of models/nets/family.py, with coil k-space as the state between cascades."""

    def __init__(self, config: VarNetConfig = TEACHER):
        super().__init__()
        if config.image_channels not in (1, 2):
            raise ValueError(f"image_channels must be 1 (magnitude) or 2 (complex), not {config.image_channels}")
        self.config = config
        if config.sens_refine:
            self.sens_net = SensitivityModel(config.sens_levels, config.sens_channels)
        self.cascades = nn.ModuleList(Cascade(config.levels, config.channels) for _ in range(config.n_cascades))
        # k_0 = y, so the first cascade's residual m * (k_0 - y) is zero and its weight can never get a gradient:
        # frozen, so that no optimiser or DDP waits for one.
        self.cascades[0].dc_weight.requires_grad_(False)

    def cascade_maps(self, kspace_under: torch.Tensor, mask: torch.Tensor,
                     maps: torch.Tensor | None = None) -> torch.Tensor:
        """The maps the cascades use: the sensitivity model's, or the prepared ``maps`` (unit maps for
        single-coil data, ``maps`` None). kspace_under: (B, N, H, W) complex64; mask: (B or 1, 1, H, W); maps:
        (B, N, H, W) complex64 or None. Returns (B, N, H, W) complex64."""
        if self.config.sens_refine:
            return self.sens_net(kspace_under, mask)
        return torch.ones_like(kspace_under) if maps is None else maps

    def initial_state(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor) -> torch.Tensor:
        """k_0 = y: the acquired coil k-space (B, N, H, W) complex64 (zero_filled is not used)."""
        return kspace_under

    def image(self, kspace: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction of coil k-space: the RSS of its coil images (B, 1, H, W) float32, or for complex
        images (B, 2, H, W) float32 with that magnitude and the phase of E^H k with the data's ``maps``
        (single-coil: the coil image's own phase). kspace: (B, N, H, W) complex64; maps: (B, N, H, W) complex64
        or None."""
        coil_images = ifft2(kspace)
        magnitude = rss(coil_images)
        if self.config.image_channels == 1:
            return magnitude
        combined = coil_images if maps is None else (coil_images * maps.conj()).sum(dim=1, keepdim=True)
        phase = torch.sgn(combined)
        phase = torch.where(combined == 0, torch.ones_like(phase), phase)
        return to_channels(magnitude * phase).contiguous()

    def run_cascade(self, index: int, x: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                    maps: torch.Tensor | None = None, keep_hidden: set[int] | None = None
                    ) -> tuple[torch.Tensor, dict]:
        """Cascade ``index`` (0-based): ``k - eta m (k - y) - E(U(E^H k))``.

        x: (B, N, H, W) complex64 coil k-space k; kspace_under: (B, N, H, W) complex64 y; mask: (B or 1, 1, H,
        W) float32; maps: (B, N, H, W) complex64, the maps of :meth:`cascade_maps` (None: unit maps). Returns the
        next coil k-space (B, N, H, W) complex64 and ``{"hidden": [(B, channels, H, W)] * 2, "cnn_out": (B, 2, H,
        W) the U-Net's output image, "out": the next coil k-space}``; ``keep_hidden`` (0-based) puts None in the
        other hidden places."""
        if maps is None:
            maps = torch.ones_like(kspace_under)
        cascade = self.cascades[index]
        keep = mask if mask.dtype == torch.bool else mask > 0.5
        refined, hidden = cascade.unet(to_channels(reduce(x, maps)))
        hidden = [h if keep_hidden is None or j in keep_hidden else None for j, h in enumerate(hidden)]
        residual = torch.where(keep, x - kspace_under, torch.zeros((), dtype=x.dtype, device=x.device))
        out = x - cascade.dc_weight * residual - expand(to_complex(refined), maps)
        return out, {"hidden": hidden, "cnn_out": refined, "out": out}

    def forward(self, zero_filled: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                maps: torch.Tensor | None = None, return_features: bool = False,
                keep_hidden: set[int] | None = None):
        """zero_filled: (B, C, H, W) float32 (not used: the cascades start from y); kspace_under: (B, N, H, W)
        complex64 (single-coil: N = 1); mask: (B or 1, 1, H, W) float32; maps: (B, N, H, W) complex64 prepared
        maps, or None for single-coil data. Returns the reconstruction (B, C, H, W) float32 (:meth:`image`), and
        with ``return_features`` also the list of per-cascade feature dicts (:meth:`run_cascade`)."""
        cascade_maps = self.cascade_maps(kspace_under, mask, maps)
        x, features = self.initial_state(zero_filled, kspace_under), []
        for index in range(len(self.cascades)):
            x, feats = self.run_cascade(index, x, kspace_under, mask, cascade_maps, keep_hidden)
            if return_features:
                features.append(feats)
        out = self.image(x, maps)
        return (out, features) if return_features else out


def describe(arch: dict, detail: bool = False) -> str:
    """``"V18L3C5 (5 k-space cascades of a 3-level U-Net, width 18, learned maps)"`` for an arch dict;
    ``detail`` adds the sensitivity model's size."""
    width, levels, n_cascades = arch.get("channels"), arch.get("levels"), arch.get("n_cascades")
    refine = arch.get("sens_refine")
    maps = "learned maps" if refine else "prepared maps"
    if detail and refine:
        maps += f" ({arch.get('sens_levels')}-level U-Net, width {arch.get('sens_channels')})"
    return (f"V{width}L{levels}C{n_cascades} ({n_cascades} k-space cascades of a {levels}-level U-Net, "
            f"width {width}, {maps})")


FAMILY = Family(kind=VarNetConfig.kind, title="E2E-VarNet", config=VarNetConfig, describe=describe,
                presets={"varnet-teacher": TEACHER, "varnet-student": STUDENT},
                flags={"cascades": "n_cascades", "depth": "levels", "width": "channels", "sens_refine": "sens_refine"},
                # 12 levels already pool a 4096-pixel image down to one pixel; widths double per level.
                bounds={"n_cascades": 100, "levels": 12, "channels": 4096, "sens_levels": 12,
                        "sens_channels": 4096})
