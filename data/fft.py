"""The one place that fixes the FFT convention: unshifted, orthonormal 2-D FFTs, the data-fidelity step, and
how a complex image is held as network channels.

DC sits at index [0, 0] and low frequencies at both ends of each axis (no fftshift), as in the original
KD-MRI / SFT-KD-Recon data. ``norm="ortho"`` makes ``fft2`` unitary, so image and k-space norms agree.

Image types. A magnitude image (the paper's data: k-space synthesised from a real, non-negative image) is one
real channel, (B, 1, H, W). A complex image (acquired k-space, or a magnitude given a synthetic phase) is two
real channels, (B, 2, H, W) = (real, imaginary), as in Schlemper et al.'s DC-CNN (IEEE TMI 2018); k-space is
(B, 1, H, W) complex64 for both. Metrics are computed on the magnitude (:func:`magnitude`), as fastMRI does.

fastMRI's files are in the other, centred convention: :func:`ifft2c` reads them (data/fastmri.py), nothing else.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

# Network channels of each image type; the type is read from the data (data/dataset.py).
IMAGE_CHANNELS = {"magnitude": 1, "complex": 2}
IMAGE_TYPES = {channels: name for name, channels in IMAGE_CHANNELS.items()}


def fft2(image: torch.Tensor) -> torch.Tensor:
    """Orthonormal unshifted 2-D FFT over the last two dims.

    image: (..., H, W) real or complex tensor. Returns (..., H, W) complex (complex64 for float32 input).
    """
    return torch.fft.fft2(image, dim=(-2, -1), norm="ortho")


def ifft2(kspace: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2`. kspace: (..., H, W) complex. Returns (..., H, W) complex."""
    return torch.fft.ifft2(kspace, dim=(-2, -1), norm="ortho")


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """fastMRI's centred orthonormal inverse FFT, ``fftshift(ifft2(ifftshift(k)))`` over the last two dims: for
    k-space stored with DC in the middle (fastMRI's ``kspace``), giving the image with its centre in the middle.

    kspace: (..., H, W) complex. Returns (..., H, W) complex.
    """
    shifted = torch.fft.ifftshift(kspace, dim=(-2, -1))
    return torch.fft.fftshift(ifft2(shifted), dim=(-2, -1))


def to_channels(image: torch.Tensor) -> torch.Tensor:
    """A complex image as (real, imaginary) channels. image: (..., 1, H, W) complex64 (or complex128).
    Returns (..., 2, H, W) float32 (float64 for complex128)."""
    return torch.cat([image.real, image.imag], dim=-3)


def to_complex(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_channels`. image: (..., 2, H, W) float32 (bfloat16 under autocast is promoted).
    Returns (..., 1, H, W) complex64 (complex128 for float64)."""
    if image.dtype not in (torch.float32, torch.float64):
        image = image.float()
    return torch.complex(image[..., 0:1, :, :], image[..., 1:2, :, :])


def magnitude(image: torch.Tensor) -> torch.Tensor:
    """The image the metrics score: (..., 1, H, W) as it is (a magnitude network's output, even where it is
    negative, as the paper scores it), or ``sqrt(re^2 + im^2)`` of (..., 2, H, W). Returns (..., 1, H, W), the
    input's dtype."""
    if image.shape[-3] == 1:
        return image
    return torch.linalg.vector_norm(image, dim=-3, keepdim=True)


def image_kspace(image: torch.Tensor) -> torch.Tensor:
    """Fully sampled k-space of an image of either type. image: (..., C, H, W) float, C = 1 or 2. Returns
    (..., 1, H, W) complex."""
    return fft2(image if image.shape[-3] == 1 else to_complex(image))


def zero_filled(kspace_under: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """The zero-filled image of ``channels`` (1: the magnitude ``|ifft2(y)|``, 2: ``ifft2(y)`` as (real,
    imaginary)). kspace_under: (..., 1, H, W) complex (or (..., H, W) for 1 channel). Returns (..., channels,
    H, W) float (or (..., H, W))."""
    image = ifft2(kspace_under)
    return image.abs() if channels == 1 else to_channels(image)


def data_fidelity(x_cnn: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard data consistency ``ifft2(m * y + (1 - m) * fft2(x_cnn))``: its real part for a magnitude image,
    both parts for a complex one.

    x_cnn: (B, C, H, W) float32 (or bfloat16 under autocast) CNN output, C = 1 (magnitude) or 2 (real,
    imaginary); kspace_under: (B, 1, H, W) complex64 measured k-space y;
    mask: (B, 1, H, W) or broadcastable, float {0, 1} (or bool). Returns (B, C, H, W) float32.

    With a binary mask, ``m * y + (1 - m) * k`` equals ``where(m, y, k)`` bit for bit; ``where`` avoids two
    complex multiplies and one temporary per call, and DF runs ten to thirty times per training step.
    """
    keep = mask if mask.dtype == torch.bool else mask > 0.5
    if x_cnn.shape[1] == 2:
        return to_channels(ifft2(torch.where(keep, kspace_under, fft2(to_complex(x_cnn))))).contiguous()
    # Under bf16 autocast the CNN output is bfloat16, which FFTs do not take: DF always runs in float32.
    kspace_cnn = fft2(x_cnn.float())
    return ifft2(torch.where(keep, kspace_under, kspace_cnn)).real.contiguous()


class HalfSpectrum(NamedTuple):
    """What :func:`data_fidelity_half` needs of the measured k-space and mask, computed once per forward pass
    (inference only): on the half plane of ``rfft2`` (B, 1, H, W // 2 + 1), the measured ``kspace`` y[k] and
    ``keep`` m[k], and their mirrors conj(y[-k]) and m[-k]; ``width`` is W."""

    kspace: torch.Tensor
    keep: torch.Tensor
    kspace_mirror: torch.Tensor
    keep_mirror: torch.Tensor
    width: int


def _mirror(values: torch.Tensor) -> torch.Tensor:
    """values[..., -kh, -kw] (indices modulo H, W) over the last two dims."""
    return torch.roll(torch.flip(values, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def half_spectrum(kspace_under: torch.Tensor, mask: torch.Tensor) -> HalfSpectrum:
    """kspace_under: (B, 1, H, W) complex64; mask: (B, 1, H, W) or broadcastable, float {0, 1} or bool."""
    keep = (mask if mask.dtype == torch.bool else mask > 0.5).expand(kspace_under.shape)
    half = kspace_under.shape[-1] // 2 + 1
    return HalfSpectrum(kspace_under[..., :half].contiguous(), keep[..., :half].contiguous(),
                        _mirror(kspace_under).conj()[..., :half].contiguous(), _mirror(keep)[..., :half].contiguous(),
                        kspace_under.shape[-1])


def data_fidelity_half(x_cnn: torch.Tensor, df: HalfSpectrum) -> torch.Tensor:
    """:func:`data_fidelity` of a magnitude image with real-to-complex FFTs: the same value up to float rounding
    (not bit for bit), at about half the FFT work and without the real -> complex and complex -> real copies.

    ``Re(ifft2(Z))`` is the inverse real FFT of Z's Hermitian part ``(Z[k] + conj(Z[-k])) / 2``, and for real x
    ``fft2(x)[-k] = conj(fft2(x)[k])``, so the Hermitian part on the half plane is
    ``(where(m[k], y[k], X[k]) + where(m[-k], conj(y[-k]), X[k])) / 2`` with ``X = rfft2(x)``.

    x_cnn: (B, 1, H, W) float32; df: :func:`half_spectrum` of the measured k-space and mask. Returns (B, 1, H, W)
    float32."""
    spectrum = torch.fft.rfft2(x_cnn.float(), dim=(-2, -1), norm="ortho")
    hermitian = (torch.where(df.keep, df.kspace, spectrum) + torch.where(df.keep_mirror, df.kspace_mirror, spectrum))
    return torch.fft.irfft2(hermitian * 0.5, s=(x_cnn.shape[-2], df.width), dim=(-2, -1), norm="ortho")
