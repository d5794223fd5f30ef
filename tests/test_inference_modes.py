"""The faster inference modes (models/inference/forward.py) against the training forward, with argued tolerances; the
real-FFT data-fidelity step against data/fft.py's; the exact mode is the training forward itself."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from data.fft import data_fidelity, data_fidelity_half, fft2, half_spectrum
from models.inference.cost import synthetic_inputs
from models.inference.forward import INFERENCE_MODES, inference_network
from models.nets.dccnn import DCCNN, STUDENT, TEACHER

# float32 rounding of an FFT round trip of N points is a few eps * log2(N) relative (eps = 6e-8; 1e-6 at 24 x 20);
# five cascades pass it on through CNNs of gain about 1. Measured: 2e-7 to 6e-7 of the output's maximum.
FUSED_TOLERANCE = 1e-5
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per operation); the convolutions sum 9 * 32
# such products in float32 and DF restores the measured k-space. Measured: 4e-4 to 1.3e-3 of the maximum.
BF16_TOLERANCE = 2e-2

CONFIGS = {"teacher": TEACHER, "student": STUDENT, "ref_padding": replace(STUDENT, ref_padding=5),
           "residual": replace(STUDENT, residual=True), "complex": replace(STUDENT, image_channels=2)}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("height, width", [(16, 16), (15, 20)])
def test_real_fft_data_fidelity_equals_data_fidelity(height, width):
    torch.manual_seed(0)
    x = torch.randn(2, 1, height, width)
    # Complex images' k-space: not Hermitian, so the mirror terms are not a copy of the direct ones.
    image = torch.rand(2, 1, height, width) * torch.exp(1j * torch.rand(2, 1, height, width))
    mask = (torch.rand(1, 1, 1, width) > 0.6).float().expand(2, 1, height, width)
    kspace = (fft2(image) * mask).to(torch.complex64)
    exact = data_fidelity(x, kspace, mask)
    assert relative_difference(exact, data_fidelity_half(x, half_spectrum(kspace, mask))) < FUSED_TOLERANCE


def test_fused_convolution_and_relu_equal_the_two_calls():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 20, 24)
    fused = torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, [1, 1], [1, 1], [1, 1], 1, "relu",
                                                    [None], "")
    # The same sums, then max(0, v): only a different kernel choice could round otherwise.
    assert relative_difference(F.relu(conv(x)), fused) < 1e-6


def test_exact_mode_is_the_training_forward():
    net = DCCNN(STUDENT).eval()
    assert inference_network(net, "exact") is net


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("mode, tolerance", [("fused", FUSED_TOLERANCE), ("bf16", BF16_TOLERANCE)])
def test_modes_equal_the_training_forward_within_tolerance(name, mode, tolerance):
    torch.manual_seed(0)
    config = CONFIGS[name]
    net = DCCNN(config).eval()
    inputs = synthetic_inputs(24, 2, config.image_channels)
    with torch.inference_mode():
        exact = net(*inputs)
        fast = inference_network(net, mode)(*inputs)
    assert fast.shape == exact.shape and fast.dtype == torch.float32
    assert relative_difference(exact, fast) < tolerance


def test_every_mode_is_described():
    assert set(INFERENCE_MODES) >= {"exact", "fused", "bf16"}
    assert all(description for description, _ in INFERENCE_MODES.values())


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-1x1", "matmul"])
def test_narrow_convolution_as_a_matrix_product_equals_conv2d(outputs, layout, onednn, monkeypatch):
    from models.inference.forward import _narrow_conv
    if not onednn:  # the product's other path (GPUs, builds without oneDNN)
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, outputs, 3, padding=1)
    hidden = torch.randn(2, 32, 13, 17).to(memory_format=layout)
    # The same 9 * 32 products per output, summed in another order: float32 rounding, a few eps of the sum of |terms|.
    expected = conv(hidden)
    assert relative_difference(expected, _narrow_conv(conv, hidden)) < 1e-5
