"""Speed choices that depend on the device: the memory layout (measured once per process) and the SFT step.

Both choices only change how the same arithmetic is laid out, so they move results by float rounding, never
more (``tests/test_speed.py``). Runs record the layout they used (``memory_format`` in ``config.json`` and
``model.pt``) and ``--resume`` reuses it, so a resumed run stays bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import time

import torch

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
# channels_last unless contiguous is clearly faster: oneDNN on AVX-512/AMX CPUs and cuDNN's tensor-core
# kernels are NHWC. The margin keeps two near-equal layouts from flipping between runs on measurement noise.
DEFAULT_LAYOUT = "channels_last"
SWITCH_MARGIN = 0.10
# Start-up cost of the measurement: interleaved rounds of both layouts until this much time is spent.
MEASURE_BUDGET_S = 0.3
MEASURE_ROUNDS = (2, 5)  # at least, at most

# SFT training step per device type, from scripts/benchmark.py's "SFT step variants" (240 x 240, batch 4):
#   branchwise     each student branch runs forward and backward alone (sft_forward_backward), at batch size
#   joint          one forward of all branches at batch size, one backward (sft_loss(...).backward())
#   joint-batched  one backward; the branches of each student cascade run as one (up to 4x) larger batch
SFT_VARIANTS = ("branchwise", "joint", "joint-batched")
SFT_VARIANT = {
    # Intel Xeon AVX-512/AMX, 2 cores, float32: joint-batched 12 % slower than joint (tensors above glibc's
    # 32 MB mmap threshold are page-faulted in on every allocation); branchwise as fast as joint with peak
    # memory 1.24 GB instead of 1.70 GB. AMD EPYC Zen 3, 2 cores, float32, contiguous (interleaved, ranges over
    # rounds): branchwise 0.93-1.06, joint 0.96-1.12, joint-batched 1.04-1.21 s/slice.
    "cpu": "branchwise",
    # Not yet measured on a GPU: the CPU choice. `bash scripts/gpu_check.sh` prints which variant wins.
    "cuda": "branchwise",
}

_layout_decisions: dict[tuple, tuple[str, dict[str, float]]] = {}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall-clock timers see it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_conv_layouts(device: torch.device, size: tuple[int, int], amp: bool = False) -> dict[str, float]:
    """Best seconds of one 3x3 32 -> 32 convolution, forward + backward, per layout of :data:`MEMORY_FORMATS`.

    Input (1, 32, H, W) float32 at the run's ``size`` (H, W), in bfloat16 autocast with ``amp``. The layouts
    alternate round by round, so a burst of load from other processes hits both.
    """
    steps = {}
    for name, fmt in MEMORY_FORMATS.items():
        conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(device, memory_format=fmt)
        x = torch.randn(1, 32, *size, device=device).to(memory_format=fmt).requires_grad_()

        def step(conv=conv, x=x):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = conv(x)
            out.float().sum().backward()
        steps[name] = step
    for step in steps.values():  # first calls pick kernels (oneDNN primitives, cuDNN autotuning)
        step()
    best = {name: float("inf") for name in steps}
    start = time.perf_counter()
    rounds = 0
    while rounds < MEASURE_ROUNDS[1] and (rounds < MEASURE_ROUNDS[0]
                                          or time.perf_counter() - start < MEASURE_BUDGET_S):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def pick_layout(seconds: dict[str, float]) -> str:
    """The layout for measured ``seconds`` per layout: the default unless another is faster by the margin."""
    fastest = min(seconds, key=seconds.get)
    if seconds[fastest] < (1 - SWITCH_MARGIN) * seconds[DEFAULT_LAYOUT]:
        return fastest
    return DEFAULT_LAYOUT


def measured_layout(device: torch.device, size: tuple[int, int], amp: bool = False) -> tuple[str, dict[str, float]]:
    """The layout :func:`pick_layout` chooses on this device, and the figures, measured once per process
    and (device, size, amp), like cuDNN's benchmark mode."""
    key = (str(device), tuple(size), amp, torch.get_num_threads())
    if key not in _layout_decisions:
        seconds = time_conv_layouts(device, size, amp)
        _layout_decisions[key] = (pick_layout(seconds), seconds)
    return _layout_decisions[key]


def resolve_memory_format(requested: str, device: torch.device, size: tuple[int, int], amp: bool = False,
                          recorded: str | None = None) -> str:
    """The layout name a run uses: ``requested`` unless it is ``"auto"``; then the one a resumed run
    ``recorded``, else the measured one. Under torchrun every rank takes rank 0's choice, since DDP needs the
    same parameter layout everywhere."""
    if requested != "auto":
        return requested
    if recorded in MEMORY_FORMATS:
        return recorded
    choice = measured_layout(device, size, amp)[0]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [choice]
        torch.distributed.broadcast_object_list(shared, src=0)
        choice = shared[0]
    return choice


def sft_variant(device: torch.device) -> str:
    """The SFT step variant of :data:`SFT_VARIANT` for this device type (the CPU's for unlisted types)."""
    return SFT_VARIANT.get(device.type, SFT_VARIANT["cpu"])
