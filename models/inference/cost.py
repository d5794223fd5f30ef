"""What a reconstruction network costs at inference: parameters, FLOPs per slice (counted by
:class:`torch.utils.flop_counter.FlopCounterMode`, not by hand), peak memory of a forward pass, and synthetic
inputs of any size to time it on.

FlopCounterMode counts the matrix work (convolutions, matmuls) as 2 FLOPs per multiply-add; FFTs and
elementwise ops (the data-fidelity step, ReLU) are not counted, so the figure is the convolutions' work, the
work a convolution roofline measures.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from data.fft import fft2, zero_filled
from data.masks import cartesian_row_mask


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def synthetic_inputs(size: int, batch: int, channels: int = 1, acc: str = "4x", seed: int = 0,
                     coils: int | None = None) -> tuple[torch.Tensor, ...]:
    """Network inputs of random smooth-ish images: zero_filled (B, C, H, W) float32, kspace_under (B, 1, H, W)
    complex64, mask (B, 1, H, W) float32 (a seeded rows mask), H = W = ``size``. With ``coils`` N (multi-coil
    networks, complex images), kspace_under is (B, N, H, W) coil k-space and random maps (B, N, H, W) complex64
    with ``sum_c |S_c|^2 = 1`` come fourth. For timing: the values do not change the work."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, size, size, generator=generator)
    if channels == 2 or coils is not None:
        image = image * torch.exp(1j * torch.rand(batch, 1, size, size, generator=generator))
    mask = torch.from_numpy(cartesian_row_mask((size, size), acc, seed=seed))[None, None].expand(batch, 1, -1, -1)
    if coils is None:
        kspace = (fft2(image) * mask).to(torch.complex64)
        return zero_filled(kspace, channels).float().contiguous(), kspace, mask.contiguous()
    maps = torch.complex(torch.rand(batch, coils, size, size, generator=generator),
                         torch.rand(batch, coils, size, size, generator=generator))
    maps = maps / torch.linalg.vector_norm(maps, dim=1, keepdim=True)
    kspace = (fft2(image * maps) * mask).to(torch.complex64)
    return zero_filled(kspace, 2, maps).float().contiguous(), kspace, mask.contiguous(), maps


def forward_flops(net: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``net`` on ``inputs`` (all of the batch), as FlopCounterMode counts them."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(*inputs)
    return counter.get_total_flops()


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensors that ops create and that are still referenced, and their peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                key = tensor.untyped_storage().data_ptr()
                if key and key not in self.live:
                    self.live[key] = tensor.untyped_storage().nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(tensor, self._free, key)
        return out


def peak_memory_bytes(net: nn.Module, *inputs: torch.Tensor) -> int:
    """Peak bytes of one forward pass: on a GPU, the allocator's peak (inputs and weights included); on a CPU,
    the weights and inputs plus the peak of the tensors the forward creates and still holds (counted at the
    dispatcher; a storage is freed when the tensor that created it is, so views kept longer are undercounted)."""
    device = inputs[0].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            net(*inputs)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    fixed = sum(p.numel() * p.element_size() for p in net.parameters())
    fixed += sum(t.numel() * t.element_size() for t in inputs)
    counter = _LiveBytes()
    with torch.inference_mode(), counter:
        net(*inputs)
    return int(fixed + counter.peak)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, quality) points no other point beats on both (lower latency, higher quality),
    in order of latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for index in order:
        if points[index][1] > best:
            front.append(index)
            best = points[index][1]
    return front
