"""Benchmark: training-step and evaluation speed against a convolution roofline measured in the same process.

Times the teacher, student, SFT and KD (imitation, at, fsp) training steps of models/training/steps.py and evaluation at
``--batch-size``, in each ``--precision`` (float32 with TF32 off, float32 with TF32 convolutions, bfloat16
autocast) and each memory layout, as seconds per slice (median and range over ``--repeats`` interleaved rounds),
slices/s, fraction of the roofline (a 3x3 32 -> 32 convolution in the step's dtype, same batch and size, best
layout, many back-to-back calls: forward + backward for training steps, forward for evaluation) and peak GPU memory
of a step after its warm-up (``torch.cuda.max_memory_allocated``). A benchmark, not a test: it never fails on a
time.

    python -m scripts.benchmark [--size 240] [--precision fp32 bf16] [--out-dir DIR] ...

``python -m scripts.benchmark`` is the command of scripts/gpu_check.py (its flags, the whole-process parts, the GPU
check of ``scripts/gpu_check.sh``); the supervision of its blocks and processes is scripts/supervise.py.
"""
from __future__ import annotations

import math
import resource
import runpy
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.benchmark ...", file=sys.stderr)
    sys.exit(2)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from data.dataset import Sample  # noqa: E402
from data.fft import data_fidelity, fft2  # noqa: E402
from data.layout import acc_folder, mask_name, undersample, write_volume  # noqa: E402
from data.masks import cartesian_row_mask  # noqa: E402
from models.distill.losses import build_kd_loss  # noqa: E402
from models.inference.cost import synthetic_inputs  # noqa: E402
from models.nets.registry import PRESETS, with_image_channels  # noqa: E402
from models.nets.sft import SFTConfig  # noqa: E402
from models.training import speed  # noqa: E402
from models.training.loop import TrainStep  # noqa: E402
from models.training.steps import KDStep, ReconStep, SFTStep  # noqa: E402
from scripts.supervise import Run  # noqa: E402

CONV_FLOP = 2 * 9  # multiply-add per 3x3 tap
# On CUDA the training scripts' float32 is "tf32" (PyTorch's default for convolutions); "fp32" is IEEE.
PRECISIONS = {"fp32": "float32, TF32 off", "tf32": "float32, TF32 conv", "bf16": "bf16 (--amp)"}
# The paper's networks, the ones the training scripts default to (--model teacher / student).
TEACHER, STUDENT = PRESETS["teacher"], PRESETS["student"]
STEPS = ("teacher", "student", "sft", "kd-imitation", "kd-at", "kd-fsp", "eval")
# The steps timed on multi-coil batches (--coils): a training step and an evaluation slice.
MULTICOIL_STEPS = ("teacher", "eval")
ROOFLINE_ROUND_S = 0.05  # back-to-back convolutions per round of the roofline, in seconds
ROOFLINE_ROUNDS = 7  # rounds of the roofline probe; its figure is their median


def block_flops(config) -> int:
    """Forward FLOPs per pixel of one CNN block."""
    c = config.channels
    return CONV_FLOP * (c + (config.n_convs - 2) * c * c + c)


def flops_per_pixel() -> dict[str, float]:
    """Forward + backward counted as 3 x forward, as the issue's figures (1.43 / 0.58 MFLOP) do."""
    t, s = 5 * block_flops(TEACHER), 5 * block_flops(STUDENT)
    branches = (4 + 3 + 2 + 1) * block_flops(STUDENT)
    return {"teacher": 3 * t, "student": 3 * s, "sft": 3 * (t + branches), "kd": t + 3 * s, "eval": t}


# --------------------------------------------------------------------------- data

def synthetic_data(root: Path, size: int, n_train: int, n_val: int, acc: str = "4x") -> Path:
    """Smooth random volumes of 8 slices in the original layout, written by data/layout.py."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    mask = cartesian_row_mask((size, size), acc, seed=0)
    np.save(root / mask_name(acc), mask)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", n_train), ("validation", n_val)):
        folder = acc_folder(root, split, acc)
        folder.mkdir(parents=True)
        for v, start in enumerate(range(0, count, 8)):
            n = min(8, count - start)
            vol = np.stack([sum(rng.uniform(0.2, 1) * np.exp(-((yy - rng.uniform(.2, .8)) ** 2 +
                                                              (xx - rng.uniform(.2, .8)) ** 2) / .02)
                                for _ in range(6)) for _ in range(n)], axis=-1).astype(np.float32)
            vol /= vol.max()
            kspace, zf = undersample(vol, {acc: mask})[acc]
            write_volume(folder / f"vol{v}.h5", vol, kspace, zf, acc, {})
    return root


# --------------------------------------------------------------------------- in-process timings

@dataclass
class Timing:
    """One measured configuration: seconds per step of each round, peak GPU memory of a step after warm-up (MB)."""
    seconds: list[float] = field(default_factory=list)
    peak_mb: float | None = None

    def per_slice(self, batch: int) -> tuple[float, float, float]:
        """Median, fastest and slowest seconds per slice."""
        return (statistics.median(self.seconds) / batch, min(self.seconds) / batch, max(self.seconds) / batch)


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, Timing]:
    """Time every function once per round, round after round, so load from other processes hits all alike.

    The first call of each is an untimed warm-up (kernel selection, cuDNN autotuning and its workspaces,
    allocator growth); the peak GPU memory is that of the step in the first timed round."""
    timings = {name: Timing() for name in fns}
    for fn in fns.values():
        fn()
    for round_ in range(repeats):
        for name, fn in fns.items():
            speed.sync(device)
            if round_ == 0 and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            fn()
            speed.sync(device)
            timings[name].seconds.append(time.perf_counter() - start)
            if round_ == 0 and device.type == "cuda":
                timings[name].peak_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return timings


def time_calls(fn: Callable[[], None], calls: int, device: torch.device) -> float:
    """Seconds per call of ``calls`` back-to-back calls (between CUDA events on a GPU: no host sync between)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


@dataclass
class Roofline:
    """GFLOP/s of the roofline convolution in each round, in the layout with the highest median.

    Its figure is the median over rounds: on a shared machine one round (or one whole process) can run at half
    speed when other jobs take the cores, and the best round alone, the old figure, moved with the luck of one
    round; the median of several, with min and max printed beside it, shows the spread instead of hiding it."""
    gflops: list[float]
    layout: str

    @property
    def median(self) -> float:
        return statistics.median(self.gflops)

    def text(self) -> str:
        return (f"median {self.median:.1f} GFLOP/s (min {min(self.gflops):.1f}, max {max(self.gflops):.1f} over "
                f"{len(self.gflops)} rounds; {self.layout})")


def conv_probe(batch: int, size: int, device: torch.device, dtype: torch.dtype, backward: bool,
               layout: str) -> tuple[Callable[[], None], float]:
    """The roofline's unit of work in memory layout ``layout`` (a key of models/training/speed.MEMORY_FORMATS):
    a call running enough back-to-back 3x3 32 -> 32 convolutions (forward, or forward + input and weight gradients
    with ``backward``) on (batch, 32, size, size) to last :data:`ROOFLINE_ROUND_S`, so launch and synchronisation
    costs do not count, and the FLOPs of one such call. Input and weight in ``dtype`` itself (no autocast)."""
    fmt = speed.MEMORY_FORMATS[layout]
    x = torch.randn(batch, 32, size, size, device=device, dtype=dtype).to(memory_format=fmt)
    weight = torch.randn(32, 32, 3, 3, device=device, dtype=dtype).to(memory_format=fmt)
    grad = torch.randn_like(x)
    x.requires_grad_(backward)
    weight.requires_grad_(backward)

    def conv():
        out = F.conv2d(x, weight, padding=1)
        if backward:
            torch.autograd.grad(out, (x, weight), grad)
    for _ in range(2):  # kernel selection
        conv()
    calls = max(1, min(1000, math.ceil(ROOFLINE_ROUND_S / time_calls(conv, 1, device))))

    def call():
        for _ in range(calls):
            conv()
    return call, calls * (3 if backward else 1) * CONV_FLOP * 32 * 32 * size * size * batch


def roofline(batch: int, size: int, device: torch.device, dtype: torch.dtype, backward: bool,
             rounds: int = ROOFLINE_ROUNDS) -> Roofline:
    """GFLOP/s of a 3x3 32 -> 32 convolution (:func:`conv_probe`) per round, in the memory layout whose median is
    highest; the layouts take turns round by round, so a burst of load hits both."""
    probes = {name: conv_probe(batch, size, device, dtype, backward, name) for name in speed.MEMORY_FORMATS}
    gflops = {name: [] for name in probes}
    for _ in range(rounds):
        for name, (call, flops) in probes.items():
            gflops[name].append(flops / time_calls(call, 1, device) / 1e9)
    best = max(gflops, key=lambda name: statistics.median(gflops[name]))
    return Roofline(gflops[best], best)


class Workload:
    """One random batch at (batch, 1, size, size) on ``device`` and the timed calls of the training steps of
    models/training/steps.py (the ones the training scripts run) on it. With ``coils`` N: a multi-coil batch
    instead, complex images (batch, 2, size, size), N coils' k-space and random maps of unit RSS
    (data/fft.py), for the teacher and evaluation steps only."""

    def __init__(self, batch: int, size: int, device: torch.device, amp: bool, compile_models: bool,
                 coils: int | None = None):
        self.device, self.amp, self.compile, self.coils = device, amp, compile_models, coils
        mask = torch.from_numpy(cartesian_row_mask((size, size), "4x"))[None, None]
        mask = mask.expand(batch, 1, size, size).contiguous().to(device)
        if coils is None:
            zero_filled = torch.rand(batch, 1, size, size, device=device)
            kspace, maps, target = fft2(zero_filled) * mask, None, torch.rand(batch, 1, size, size, device=device)
        else:  # the compression report's multi-coil inputs: maps of unit RSS, coil k-space, E^H y
            zero_filled, kspace, mask, maps = (t.to(device) for t in synthetic_inputs(size, batch, 2, coils=coils))
            target = torch.rand(batch, 2, size, size, device=device)
        self.batch = Sample(zero_filled=zero_filled, kspace_under=kspace, target=target, mask=mask,
                            fname=("benchmark",) * batch, slice=torch.arange(batch), acc=("4x",) * batch, maps=maps)

    def net(self, config):
        """``config`` for this workload's images (2 channels for multi-coil data)."""
        return with_image_channels(config, 1 if self.coils is None else 2)

    def data_fidelity(self, backward: bool) -> Callable[[], None]:
        """The teacher's five DF calls alone (forward, and with ``backward`` their backward too), on this
        workload's images: the FFT / DF share of a step."""
        inputs = self.batch.inputs
        image = torch.rand_like(inputs.zero_filled, requires_grad=backward)

        def calls():
            x = image
            for _ in range(TEACHER.n_cascades):
                x = data_fidelity(x, inputs.kspace_under, inputs.mask, inputs.maps)
            if backward:
                x.sum().backward()
        return calls

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def trainer(self, step: TrainStep, fmt) -> Callable[[], None]:
        """One optimiser step of ``step`` (moved to ``fmt``), as models/training/loop.py's loop takes it in one
        process: a step that runs its own backward (the SFT branch-wise step) has already run it."""
        step.to(self.device, memory_format=fmt)
        step.allow_own_backward = True
        if self.compile:
            step.model = torch.compile(step.model)
        optimizer = torch.optim.Adam([p for p in step.parameters() if p.requires_grad])

        def one_step():
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss, _ = step(self.batch)
            if loss.requires_grad:
                loss.backward()
            optimizer.step()
        return one_step

    def sft_step(self, fmt, variant: str) -> Callable[[], None]:
        return self.trainer(SFTStep(SFTConfig(TEACHER, STUDENT).build(), 1.0, 1.0, variant), fmt)

    def step(self, name: str, fmt) -> Callable[[], None]:
        """The training (or, for ``eval``, inference) step ``name`` of :data:`STEPS` in layout ``fmt``."""
        if name in ("teacher", "student"):
            return self.trainer(ReconStep(self.net(TEACHER if name == "teacher" else STUDENT).build()), fmt)
        if name == "sft":
            return self.sft_step(fmt, speed.sft_variant(self.device))
        if name == "eval":
            teacher = ReconStep(self.net(TEACHER).build()).to(self.device, memory_format=fmt).eval()

            @torch.inference_mode()
            def evaluate():
                with self.autocast():
                    teacher.predict(self.batch)
            return evaluate
        kd = build_kd_loss(name.split("-", 1)[1], STUDENT, TEACHER)
        return self.trainer(KDStep(STUDENT.build(), TEACHER.build(), kd, kd.default_weight), fmt)


def step_cell(timing: Timing, batch: int, flops: float, roof: float | None) -> str:
    median, low, high = timing.per_slice(batch)
    text = f"{median:.4g} s/slice ({low:.4g}-{high:.4g}), {1 / median:.1f} slices/s"
    if roof is not None:
        text += f", {flops / median / 1e9 / roof:.2f} of roofline"
    return text + (f", {timing.peak_mb:.0f} MB" if timing.peak_mb is not None else "")


# --------------------------------------------------------------------------- the steps part

def part_steps(run: Run) -> None:
    """The layout decisions, rooflines, step timings and SFT variants in each precision."""
    layouts = list(speed.MEMORY_FORMATS) if run.args.memory_format == "both" else None
    for precision in run.precisions:
        with run.report.attempt(PRECISIONS[precision]), speed.float32_mode(tf32=precision == "tf32"):
            measure_precision(run, precision, layouts)


def measure_precision(run: Run, precision: str, layouts: list[str] | None) -> None:
    """The layout decision, rooflines, step timings and (with --sft-variants) SFT variants in one precision,
    each in its own :meth:`Report.attempt` under ``--cell-timeout``."""
    args, device, report = run.args, run.device, run.report
    size, batch = args.size, args.batch_size
    pixels = size * size
    amp = precision == "bf16"
    label = PRECISIONS[precision]
    flops = flops_per_pixel()
    picked = {True: speed.DEFAULT_LAYOUT, False: speed.DEFAULT_LAYOUT}
    how = "timed at start-up" if device.type == "cuda" else "fixed per CPU ISA, CPU_LAYOUT in models/training/speed.py"
    for backward, user, work_done in ((True, "training (--memory-format auto)", "fwd+bwd"),
                                      (False, "evaluate.py", "fwd")):
        with run.block(f"{label}: layout decision of {user}"):
            start = time.perf_counter()
            fastest, seconds = speed.measured_layout(device, (size, size), amp, backward, batch)
            cost = time.perf_counter() - start
            picked[backward] = speed.auto_layout(device, (size, size), amp, backward, batch)
            figures = ", ".join(f"{name} {1e3 * min(s):.3f}-{1e3 * max(s):.3f} ms" for name, s in seconds.items())
            report.note(f"{label}: {user} picks {picked[backward]} ({how}); 32->32 conv {work_done} at batch "
                        f"{batch}, per call: {figures}; {fastest} by the start-up rule, measured in {cost:.2f} s")
    roofs = {}  # backward? -> GFLOP/s
    dtype = torch.bfloat16 if amp else torch.float32
    for backward, work_done in ((True, "fwd+bwd"), (False, "fwd")):
        with run.block(f"{label}: roofline {work_done}"):
            roof = roofline(batch, size, device, dtype, backward)
            roofs[backward] = roof.median
            report.note(f"{label}: roofline, 3x3 32->32 conv {work_done} in {str(dtype).split('.')[1]} at batch "
                        f"{batch}: {roof.text()}")
    auto = picked[True]
    chosen = layouts or [auto if args.memory_format == "auto" else args.memory_format]
    work = None
    for name in STEPS:
        label_step = name if name != "sft" else f"sft ({speed.sft_variant(device)})"
        cells = [(f"{label_step}, {fmt}", precision) for fmt in chosen]
        with run.block(f"{label}: {label_step}", cells):
            if work is None:
                work = Workload(batch, size, device, amp, args.compile)
            timings = time_interleaved({fmt: work.step(name, speed.MEMORY_FORMATS[fmt]) for fmt in chosen},
                                       run.repeats, device)
            roof = roofs.get(name != "eval")  # evaluation is a forward pass only
            for (row, _), timing in zip(cells, timings.values()):
                report.cell(row, precision, step_cell(timing, batch, flops[name.split("-")[0]] * pixels, roof))
    if args.sft_variants:
        cells = [(f"SFT variant {variant}, {auto}", precision) for variant in speed.SFT_VARIANTS]
        with run.block(f"{label}: SFT step variants", cells):
            if work is None:
                work = Workload(batch, size, device, amp, args.compile)
            fmt = speed.MEMORY_FORMATS[auto]
            timings = time_interleaved({v: work.sft_step(fmt, v) for v in speed.SFT_VARIANTS}, run.repeats, device)
            for (row, _), timing in zip(cells, timings.values()):
                report.cell(row, precision, step_cell(timing, batch, flops["sft"] * pixels, roofs.get(True)))
            fastest = min(timings, key=lambda v: statistics.median(timings[v].seconds))
            report.note(f"{label}: fastest SFT step variant on {device.type}: {fastest}; models/training/speed.py "
                        f"SFT_VARIANT[{device.type!r}] = {speed.sft_variant(device)!r}")
    for coils in args.coils or ():
        layout = chosen[0]  # the asked layout, else the one training picks
        cells = [(f"{name}, multi-coil {coils} coils, {layout}", precision) for name in MULTICOIL_STEPS]
        with run.block(f"{label}: multi-coil, {coils} coils", cells):
            work = Workload(batch, size, device, amp, args.compile, coils)
            fmt = speed.MEMORY_FORMATS[layout]
            steps = {name: work.step(name, fmt) for name in MULTICOIL_STEPS}
            steps.update({f"df-{name}": work.data_fidelity(name != "eval") for name in MULTICOIL_STEPS})
            timings = time_interleaved(steps, run.repeats, device)
            shares = []
            for (row, _), name in zip(cells, MULTICOIL_STEPS):
                timing = timings[name]
                roof = roofs.get(name != "eval")
                report.cell(row, precision, step_cell(timing, batch, flops[name] * pixels, roof))
                share = statistics.median(timings[f"df-{name}"].seconds) / statistics.median(timing.seconds)
                shares.append(f"{name} {100 * share:.0f} %")
            report.note(f"{label}: multi-coil, {coils} coils (teacher D5C5, 2-channel images): the five DF calls "
                        f"(expand, replace, reduce; forward, and backward when training) take {', '.join(shares)} of "
                        "the step, timed alone in the same rounds")
    del work
    if device.type == "cpu":
        report.note(f"{label}: peak RSS of the step timings so far "
                    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


# --------------------------------------------------------------------------- where the time goes

# Where an epoch's time goes, by the self CPU time of the ops torch.profiler records (first match wins; the
# names are ATen's and oneDNN's on a CPU, cuDNN's and cuFFT's kernels show up under the same aten:: ops).
PROFILE_CATEGORIES = (
    ("convolutions", ("conv",)),
    ("FFT (data fidelity)", ("fft",)),
    ("ReLU and its backward", ("relu", "threshold_backward", "clamp_min")),
    ("layout conversions and copies", ("copy_", "contiguous", "clone", "_to_copy", "to_dense", "to_mkldnn")),
    ("allocation and fill", ("empty", "zeros", "zero_", "fill_", "resize_")),
    ("optimiser (Adam)", ("optimizer", "_foreach", "adam", "addcdiv", "addcmul", "lerp", "sqrt")),
    ("data loading (DataLoader)", ("dataloader",)),
    ("autograd engine", ("autograd", "backward")),
)
OTHER_OPS = "other ops (DF where, losses, elementwise)"


def profile_category(key: str) -> str:
    """The :data:`PROFILE_CATEGORIES` entry (or :data:`OTHER_OPS`) of a profiler event's name."""
    key = key.lower()
    return next((n for n, words in PROFILE_CATEGORIES if any(w in key for w in words)), OTHER_OPS)


def profile_categories(events) -> dict[str, float]:
    """Seconds of self CPU time per :data:`PROFILE_CATEGORIES` entry (plus :data:`OTHER_OPS`) of profiler events
    (``prof.key_averages()``)."""
    seconds = {name: 0.0 for name, _ in PROFILE_CATEGORIES}
    seconds[OTHER_OPS] = 0.0
    for event in events:
        seconds[profile_category(event.key)] += event.self_cpu_time_total / 1e6
    return seconds


def largest_ops(events, categories: tuple[str, ...], count: int = 4) -> str:
    """``"aten::x 1.23 s, ..."``: the ``count`` ops with the most self CPU time in ``categories``."""
    chosen = sorted((e for e in events if profile_category(e.key) in categories),
                    key=lambda e: -e.self_cpu_time_total)[:count]
    return ", ".join(f"{e.key} {e.self_cpu_time_total / 1e6:.2f} s" for e in chosen)


if __name__ == "__main__":
    # The command is the runner's (flags, parts, the check): scripts/gpu_check.py, which imports this module.
    runpy.run_module("scripts.gpu_check", run_name="__main__", alter_sys=True)
