"""The one place that fixes the FFT convention: unshifted, orthonormal 2-D FFTs and the data-fidelity step.

DC sits at index [0, 0] and low frequencies at both ends of each axis (no fftshift), as in the original
KD-MRI / SFT-KD-Recon data. ``norm="ortho"`` makes ``fft2`` unitary, so image and k-space norms agree.
"""
from __future__ import annotations

import torch


def fft2(image: torch.Tensor) -> torch.Tensor:
    """Orthonormal unshifted 2-D FFT over the last two dims.

    image: (..., H, W) real or complex tensor. Returns (..., H, W) complex (complex64 for float32 input).
    """
    return torch.fft.fft2(image, dim=(-2, -1), norm="ortho")


def ifft2(kspace: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2`. kspace: (..., H, W) complex. Returns (..., H, W) complex."""
    return torch.fft.ifft2(kspace, dim=(-2, -1), norm="ortho")


def zero_filled(kspace_under: torch.Tensor) -> torch.Tensor:
    """Zero-filled magnitude image ``|ifft2(y)|``. kspace_under: (..., H, W) complex. Returns (..., H, W) float."""
    return ifft2(kspace_under).abs()


def data_fidelity(x_cnn: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard data consistency ``Re(ifft2(m * y + (1 - m) * fft2(x_cnn)))``.

    x_cnn: (B, 1, H, W) float32 (or bfloat16 under autocast) CNN output;
    kspace_under: (B, 1, H, W) complex64 measured k-space y;
    mask: (B, 1, H, W) or broadcastable, float {0, 1} (or bool). Returns (B, 1, H, W) float32.

    With a binary mask, ``m * y + (1 - m) * k`` equals ``where(m, y, k)`` bit for bit; ``where`` avoids two
    complex multiplies and one temporary per call, and DF runs ten to thirty times per training step.
    """
    # Under bf16 autocast the CNN output is bfloat16, which FFTs do not take: DF always runs in float32.
    kspace_cnn = fft2(x_cnn.float())
    keep = mask if mask.dtype == torch.bool else mask > 0.5
    return ifft2(torch.where(keep, kspace_under, kspace_cnn)).real.contiguous()
