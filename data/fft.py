"""The one place that fixes the FFT convention: unshifted, orthonormal 2-D FFTs, the data-fidelity step, and
how a complex image is held as network channels.

DC sits at index [0, 0] and low frequencies at both ends of each axis (no fftshift), as in the original
KD-MRI / SFT-KD-Recon data. ``norm="ortho"`` makes ``fft2`` unitary, so image and k-space norms agree.

Image types. A magnitude image (the paper's data: k-space synthesised from a real, non-negative image) is one
real channel, (B, 1, H, W). A complex image (acquired k-space, or a magnitude given a synthetic phase) is two
real channels, (B, 2, H, W) = (real, imaginary), as in Schlemper et al.'s DC-CNN (IEEE TMI 2018); k-space is
(B, 1, H, W) complex64 for both. Metrics are computed on the magnitude (:func:`magnitude`), as fastMRI does.

Multi-coil data (N coils) add coil sensitivity maps S (B, N, H, W) complex64, normalised so that
``sum_c |S_c|^2 = 1`` wherever the object is (ESPIRiT's and the birdcage simulation's convention). The forward
operator E = :func:`expand` maps a coil-combined image to coil k-space (multiply by each map, FFT); its adjoint
E^H = :func:`reduce` maps coil k-space back (inverse FFT, multiply by each map's conjugate, sum over coils),
DIRECT's ``expand_operator`` / ``reduce_operator``. Multi-coil images are complex (two channels); k-space is
(B, N, H, W) complex64, the mask (B, 1, H, W) broadcasts over coils. The zero-filled image is E^H y and DF
(:func:`data_fidelity` with ``maps``) replaces the sampled k-space of every coil, then reduces. Without maps
(``maps=None``) every function is the single-coil one, unchanged.

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


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`ifft2c`: ``fftshift(fft2(ifftshift(x)))`` over the last two dims (fastMRI's ``fft2c``).
    image: (..., H, W) complex. Returns (..., H, W) complex."""
    shifted = torch.fft.ifftshift(image, dim=(-2, -1))
    return torch.fft.fftshift(fft2(shifted), dim=(-2, -1))


def expand(image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The multi-coil forward operator E: each coil's image ``S_c x``, Fourier-transformed.

    image: (B, 1, H, W) complex64 coil-combined image; maps: (B, N, H, W) complex64 sensitivity maps (B may be
    1 on either side and broadcasts). Returns (B, N, H, W) complex64 coil k-space (unshifted, orthonormal).
    """
    return fft2(image * maps)


def reduce(kspace: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The adjoint E^H of :func:`expand`: ``sum_c conj(S_c) ifft2(k_c)``.

    kspace: (B, N, H, W) complex64 coil k-space; maps: (B, N, H, W) complex64. Returns (B, 1, H, W) complex64.
    With ``sum_c |S_c|^2 = 1`` it inverts :func:`expand` (E^H E = I), and for exact maps ``|E^H k|`` is the
    root-sum-of-squares (RSS) of the coil images, the magnitude fastMRI scores.
    """
    return (ifft2(kspace) * maps.conj()).sum(dim=-3, keepdim=True)


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


def zero_filled(kspace_under: torch.Tensor, channels: int = 1, maps: torch.Tensor | None = None) -> torch.Tensor:
    """The zero-filled image of ``channels`` (1: the magnitude ``|ifft2(y)|``, 2: ``ifft2(y)`` as (real,
    imaginary)). kspace_under: (..., 1, H, W) complex (or (..., H, W) for 1 channel). Returns (..., channels,
    H, W) float (or (..., H, W)).

    With ``maps`` (..., N, H, W) complex, kspace_under is (..., N, H, W) coil k-space and the image is
    E^H y (:func:`reduce`), as 2 channels (multi-coil images are complex)."""
    if maps is not None:
        if channels != 2:
            raise ValueError("multi-coil images are complex: zero_filled with maps needs channels=2")
        return to_channels(reduce(kspace_under, maps))
    image = ifft2(kspace_under)
    return image.abs() if channels == 1 else to_channels(image)


def data_fidelity(x_cnn: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                  maps: torch.Tensor | None = None) -> torch.Tensor:
    """Hard data consistency ``ifft2(m * y + (1 - m) * fft2(x_cnn))``: its real part for a magnitude image,
    both parts for a complex one; with ``maps``, sensitivity-weighted: ``E^H(m * y + (1 - m) * E x_cnn)``
    (:func:`coil_data_fidelity`, then :func:`reduce`).

    x_cnn: (B, C, H, W) float32 (or bfloat16 under autocast) CNN output, C = 1 (magnitude) or 2 (real,
    imaginary); kspace_under: (B, 1, H, W) complex64 measured k-space y ((B, N, H, W) with maps);
    mask: (B, 1, H, W) or broadcastable, float {0, 1} (or bool); maps: None (single-coil) or (B, N, H, W)
    complex64 sensitivity maps (then C must be 2). Returns (B, C, H, W) float32.

    With a binary mask, ``m * y + (1 - m) * k`` equals ``where(m, y, k)`` bit for bit; ``where`` avoids two
    complex multiplies and one temporary per call, and DF runs ten to thirty times per training step.
    With one coil and unit maps every step is exact (a product with 1 + 0i, a sum of one term), so the result
    equals the single-coil DF bit for bit.
    """
    keep = mask if mask.dtype == torch.bool else mask > 0.5
    if maps is not None:
        if x_cnn.shape[1] != 2:
            raise ValueError("multi-coil DF needs a complex image (2 channels); got "
                             f"{x_cnn.shape[1]} channel(s)")
        coil_kspace = coil_data_fidelity(to_complex(x_cnn), kspace_under, keep, maps)
        return to_channels(reduce(coil_kspace, maps)).contiguous()
    if x_cnn.shape[1] == 2:
        return to_channels(ifft2(torch.where(keep, kspace_under, fft2(to_complex(x_cnn))))).contiguous()
    # Under bf16 autocast the CNN output is bfloat16, which FFTs do not take: DF always runs in float32.
    kspace_cnn = fft2(x_cnn.float())
    return ifft2(torch.where(keep, kspace_under, kspace_cnn)).real.contiguous()


def coil_data_fidelity(image: torch.Tensor, kspace_under: torch.Tensor, mask: torch.Tensor,
                       maps: torch.Tensor) -> torch.Tensor:
    """DF in coil k-space, before the coils are combined: ``where(m, y, E x)``, each coil's sampled k-space
    replaced by the acquired one.

    image: (B, 1, H, W) complex64; kspace_under: (B, N, H, W) complex64 y; mask: (B, 1, H, W) bool or float
    {0, 1}; maps: (B, N, H, W) complex64. Returns (B, N, H, W) complex64, equal to y at every sampled location
    bit for bit. After :func:`reduce` that holds only to the extent the result lies in E's range: E E^H is a
    projection (with ``sum |S|^2 = 1``), and a mix of acquired and predicted coil k-space need not be the
    k-space of any single image, so exactness is a property of this coil k-space, not of the reduced image.
    """
    keep = mask if mask.dtype == torch.bool else mask > 0.5
    return torch.where(keep, kspace_under, expand(image, maps))


class HalfSpectrum(NamedTuple):
    """What :func:`data_fidelity_half` needs of the measured k-space and mask, computed once per forward pass
    (inference only), on the half plane of ``rfft2`` (B, 1, H, W // 2 + 1): ``measured`` complex64, the measured
    part of the Hermitian part of DF's spectrum, ``(m[k] y[k] + m[-k] conj(y[-k])) / 2``, and ``weight`` complex64
    (values 0, 1/2, 1), the weight of the network's own spectrum there, ``((1 - m[k]) + (1 - m[-k])) / 2``;
    ``width`` is W."""

    measured: torch.Tensor
    weight: torch.Tensor
    width: int


def _mirror(values: torch.Tensor) -> torch.Tensor:
    """values[..., -kh, -kw] (indices modulo H, W) over the last two dims."""
    return torch.roll(torch.flip(values, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def half_spectrum(kspace_under: torch.Tensor, mask: torch.Tensor) -> HalfSpectrum:
    """kspace_under: (B, 1, H, W) complex64; mask: (B, 1, H, W) or broadcastable, float {0, 1} or bool."""
    keep = (mask if mask.dtype == torch.bool else mask > 0.5).expand(kspace_under.shape)
    keep_mirror = _mirror(keep)
    zero = torch.zeros((), dtype=kspace_under.dtype, device=kspace_under.device)
    measured = (torch.where(keep, kspace_under, zero) + torch.where(keep_mirror, _mirror(kspace_under).conj(), zero))
    weight = ((~keep).to(kspace_under.dtype) + (~keep_mirror).to(kspace_under.dtype)) * 0.5
    half = kspace_under.shape[-1] // 2 + 1
    return HalfSpectrum((measured * 0.5)[..., :half].contiguous(), weight[..., :half].contiguous(),
                        kspace_under.shape[-1])


def data_fidelity_half(x_cnn: torch.Tensor, df: HalfSpectrum) -> torch.Tensor:
    """:func:`data_fidelity` of a magnitude image with real-to-complex FFTs: the same value up to float rounding
    (not bit for bit), at about half the FFT work, one elementwise pass instead of three, and without the real ->
    complex and complex -> real copies.

    ``Re(ifft2(Z))`` is the inverse real FFT of Z's Hermitian part ``(Z[k] + conj(Z[-k])) / 2``; for real x,
    ``fft2(x)[-k] = conj(fft2(x)[k])``, so with ``Z = where(m, y, fft2(x))`` that part is, on the half plane,
    ``df.measured + df.weight * rfft2(x)`` (:class:`HalfSpectrum`).

    x_cnn: (B, 1, H, W) float32; df: :func:`half_spectrum` of the measured k-space and mask. Returns (B, 1, H, W)
    float32."""
    spectrum = torch.fft.rfft2(x_cnn.float(), dim=(-2, -1), norm="ortho")
    return torch.fft.irfft2(torch.addcmul(df.measured, df.weight, spectrum), s=(x_cnn.shape[-2], df.width),
                            dim=(-2, -1), norm="ortho")
