"""Speed choices that depend on the device: the memory layout (fixed per CPU kind, measured once per process on
a GPU) and the SFT step.

Both choices only change how the same arithmetic is laid out, so they move results by float rounding, never
more (``tests/test_speed.py``). Runs record the layout they used (``memory_format`` in ``config.json`` and
``model.pt``) and ``--resume`` reuses it, so a resumed run stays bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
# channels_last unless contiguous is clearly faster: oneDNN on AVX-512/AMX CPUs and cuDNN's tensor-core
# kernels are NHWC. The margin, required in every round, keeps near-equal layouts from flipping between runs
# on measurement noise (a flip would change results in the last bits, see the module docstring).
DEFAULT_LAYOUT = "channels_last"
SWITCH_MARGIN = 0.10
# Start-up cost of the measurement: interleaved rounds of both layouts until this much time is spent.
MEASURE_BUDGET_S = 0.2
MEASURE_ROUNDS = (2, 5)  # at least, at most
# A GPU convolution of a training batch is short, near the launch and synchronisation cost: a round times this
# many back-to-back calls, so the layouts differ by their kernels, not by noise.
GPU_CALLS_PER_ROUND = 20

# SFT training step per device type, chosen from scripts/benchmark.py's "SFT step variants" (its figures are
# in scripts/README.md):
#   branchwise     each student branch runs forward and backward alone (sft_forward_backward), at batch size
#   joint          one forward of all branches at batch size, one backward (sft_loss(...).backward())
#   joint-batched  one backward; the branches of each student cascade run as one (up to 4x) larger batch
SFT_VARIANTS = ("branchwise", "joint", "joint-batched")
SFT_VARIANT = {
    # Branch-wise: as fast as joint on the CPUs measured, with a lower peak memory (each branch's graph is
    # freed after its backward); joint-batched is slower on a CPU, whose large temporaries are page-faulted in
    # on every allocation (glibc's mmap threshold).
    "cpu": "branchwise",
    # The CPU's choice until a GPU measurement says otherwise: `bash scripts/gpu_check.sh` prints which variant
    # is fastest on the GPU it runs on (docs/measurements.md keeps the figures).
    "cuda": "branchwise",
}

# On a CPU, --memory-format auto does not time at start-up: load from other processes could flip a near
# decision between two runs and so change a seeded run's numbers (in the last bits at first, everywhere a few
# epochs later). It takes the layout scripts/benchmark.py measured fastest for the CPU's vector ISA, keyed by
# (torch.backends.cpu.get_cpu_capability(), training?) for images of at least CPU_LAYOUT_FROM pixels a side;
# other keys and smaller images get DEFAULT_LAYOUT. AVX2 CPUs train faster in contiguous from about 128 pixels
# a side and infer faster in channels_last; AVX-512 / AMX CPUs (an Intel Xeon, an AMD EPYC Zen 5 alike) run
# oneDNN's NHWC kernels, channels_last at every size (scripts/README.md has the measured figures).
CPU_LAYOUT = {("AVX2", True): "contiguous"}
CPU_LAYOUT_FROM = 128

_layout_decisions: dict[tuple, tuple[str, dict[str, list[float]]]] = {}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall-clock timers see it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_conv_layouts(device: torch.device, size: tuple[int, int], amp: bool = False,
                      backward: bool = True, batch: int = 1) -> dict[str, list[float]]:
    """Seconds of one 3x3 32 -> 32 convolution, forward + backward (forward alone without ``backward``), per
    round and per layout of :data:`MEMORY_FORMATS`.

    Input (batch, 32, H, W) float32 at the run's ``size`` (H, W), in bfloat16 autocast with ``amp``. Within a
    round the layouts run back to back, so a burst of load from other processes hits both; on a GPU a round is
    :data:`GPU_CALLS_PER_ROUND` calls between two synchronisations, and the seconds are per call.
    """
    calls = GPU_CALLS_PER_ROUND if device.type == "cuda" else 1
    steps = {}
    for name, fmt in MEMORY_FORMATS.items():
        conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(device, memory_format=fmt)
        x = torch.randn(batch, 32, *size, device=device).to(memory_format=fmt).requires_grad_(backward)

        def step(conv=conv, x=x):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(backward):
                out = conv(x)
            if backward:
                out.float().sum().backward()
        steps[name] = step
    for step in steps.values():  # first calls pick kernels (oneDNN primitives, cuDNN autotuning)
        step()
    seconds = {name: [] for name in steps}
    start = time.perf_counter()
    while len(seconds[DEFAULT_LAYOUT]) < MEASURE_ROUNDS[1] and (
            len(seconds[DEFAULT_LAYOUT]) < MEASURE_ROUNDS[0] or time.perf_counter() - start < MEASURE_BUDGET_S):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            sync(device)
            seconds[name].append((time.perf_counter() - t0) / calls)
    return seconds


def pick_layout(seconds: dict[str, list[float]]) -> str:
    """The layout for ``seconds`` per round and layout: the default, unless another one beat it by the margin
    in every round (a burst of load that slows one layout in one round cannot flip the choice)."""
    rounds = range(len(seconds[DEFAULT_LAYOUT]))
    for name, times in seconds.items():
        if name != DEFAULT_LAYOUT and all(times[r] < (1 - SWITCH_MARGIN) * seconds[DEFAULT_LAYOUT][r]
                                          for r in rounds):
            return name
    return DEFAULT_LAYOUT


def measured_layout(device: torch.device, size: tuple[int, int], amp: bool = False, backward: bool = True,
                    batch: int = 1) -> tuple[str, dict[str, list[float]]]:
    """The layout :func:`pick_layout` chooses on this device and the seconds it saw, measured once per process
    and (device, size, batch, amp, backward, threads, float32 settings), like cuDNN's benchmark mode. The
    float32 settings are in the key because TF32 and IEEE convolutions are different kernels whose fastest layout
    can differ. Evaluation passes ``backward=False`` because the fastest layout for training and for inference
    can differ on one CPU (on AVX2, see :data:`CPU_LAYOUT`)."""
    key = (str(device), tuple(size), batch, amp, backward, torch.get_num_threads(), float32_settings())
    if key not in _layout_decisions:
        seconds = time_conv_layouts(device, size, amp, backward, batch)
        _layout_decisions[key] = (pick_layout(seconds), seconds)
    return _layout_decisions[key]


def auto_layout(device: torch.device, size: tuple[int, int], amp: bool = False, backward: bool = True,
                batch: int = 1) -> str:
    """The layout ``--memory-format auto`` takes for (H, W) images ``size`` in batches of ``batch``: on a CPU the
    one of :data:`CPU_LAYOUT` for its vector ISA (never timed, so the same seed on the same CPU gives the same
    numbers), on a GPU the measured one."""
    if device.type == "cpu":
        if min(size) < CPU_LAYOUT_FROM:
            return DEFAULT_LAYOUT
        return CPU_LAYOUT.get((torch.backends.cpu.get_cpu_capability(), backward), DEFAULT_LAYOUT)
    return measured_layout(device, size, amp, backward, batch)[0]


def resolve_memory_format(requested: str, device: torch.device, size: tuple[int, int], amp: bool = False,
                          recorded: str | None = None, batch: int = 1) -> str:
    """The layout name a run uses: ``requested`` unless it is ``"auto"``; then the one a resumed run
    ``recorded``, else :func:`auto_layout`. Under torchrun every rank takes rank 0's choice, since DDP needs the
    same parameter layout everywhere."""
    if requested != "auto":
        return requested
    if recorded in MEMORY_FORMATS:
        return recorded
    choice = auto_layout(device, size, amp, batch=batch)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [choice]
        torch.distributed.broadcast_object_list(shared, src=0)
        choice = shared[0]
    return choice


def _float32_targets() -> list[tuple[object, str]]:
    """The (object, attribute) pairs that hold the CUDA float32 precision of convolutions, then of matmuls.

    torch >= 2.9 has ``fp32_precision`` settings and refuses to mix them with the older ``allow_tf32`` flags:
    this uses whichever the installed torch has."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")]
    return [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]


def float32_settings() -> tuple:
    """The current float32 precision settings of convolutions and matmuls, e.g. ``("tf32", "ieee")``."""
    return tuple(getattr(obj, name) for obj, name in _float32_targets())


@contextmanager
def float32_mode(tf32: bool):
    """Within the block, CUDA float32 convolutions (cuDNN) run in TF32 (10-bit mantissa) or in IEEE float32, and
    matmuls (cuBLAS) in IEEE float32; the previous settings come back afterwards.

    These are PyTorch's defaults with ``tf32=True``, so the training scripts' float32 convolutions on a GPU are
    TF32 and their matmuls (several KD losses: FSP, RKD, ...) IEEE.
    """
    conv, matmul = targets = _float32_targets()
    tf32_value, ieee = ("tf32", "ieee") if conv[1] == "fp32_precision" else (True, False)
    saved = [getattr(obj, name) for obj, name in targets]
    setattr(*conv, tf32_value if tf32 else ieee)
    setattr(*matmul, ieee)
    try:
        yield
    finally:
        for (obj, name), old in zip(targets, saved):
            setattr(obj, name, old)


def sft_variant(device: torch.device) -> str:
    """The SFT step variant of :data:`SFT_VARIANT` for this device type (the CPU's for unlisted types)."""
    return SFT_VARIANT.get(device.type, SFT_VARIANT["cpu"])
