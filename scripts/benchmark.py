"""Benchmark and GPU check: training-step and evaluation speed against a convolution roofline measured in the same process.

Times the teacher, student, SFT and KD (imitation, at, fsp) training steps of models/training/steps.py and evaluation at
``--batch-size``, in each ``--precision`` (float32 with TF32 off, float32 with TF32 convolutions, bfloat16
autocast) and each memory layout, as seconds per slice (median and range over ``--repeats`` interleaved rounds),
slices/s, fraction of the roofline (a 3x3 32 -> 32 convolution in the step's dtype, same batch and size, best
layout, many back-to-back calls: forward + backward for training steps, forward for evaluation) and peak GPU memory
of a step after its warm-up (``torch.cuda.max_memory_allocated``). Then it runs the whole 1-epoch ``train_sft.py``
and ``train_student_kd.py`` as separate processes (start-up, data, validation and checkpoints included).

``--check`` is the GPU check that ``scripts/gpu_check.sh`` runs, in four parts (``--only`` picks some): ``tests``
(``tests/test_cuda.py``), ``steps`` (the timings in all three precisions and the SFT step variants of
models/training/speed.py), ``processes`` (with ``--amp --num-workers 4 --preload no``) and ``resume`` (a ``--resume`` after
interrupting ``train_sft.py``). Each part runs as its own process and every wait has a limit, so a hang, a crash
or an exception becomes a FAILED cell or note and the check goes on; the table is rewritten after every cell in
``--out-dir``/table.md, printed at the end whatever happened, and the exit code is 1 if anything failed. It needs
only torch, numpy, h5py, scipy, scikit-image, tqdm, tensorboard, torchmetrics, matplotlib and pytest: its data is
written by ``data/layout.py``. A benchmark, not a test: it never fails on a time.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.benchmark ...", file=sys.stderr)
    sys.exit(2)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from data.dataset import Sample  # noqa: E402
from data.fft import data_fidelity, fft2, reduce, to_channels  # noqa: E402
from data.layout import acc_folder, mask_name, undersample, write_volume  # noqa: E402
from data.masks import cartesian_row_mask  # noqa: E402
from models.training import speed  # noqa: E402
from models.checkpoints.format import model_payload  # noqa: E402
from models.checkpoints.io import load_checkpoint, save_checkpoint  # noqa: E402
from models.distill.losses import build_kd_loss  # noqa: E402
from models.nets.registry import PRESETS, with_image_channels  # noqa: E402
from models.nets.sft import SFTConfig  # noqa: E402
from models.training.steps import KDStep, ReconStep, SFTStep  # noqa: E402
from models.training.loop import TrainStep  # noqa: E402
from utils import CliParser, UserError, clean_lines, describe_machine, machine, old_spellings, run_cli  # noqa: E402

CONV_FLOP = 2 * 9  # multiply-add per 3x3 tap
# On CUDA the training scripts' float32 is "tf32" (PyTorch's default for convolutions); "fp32" is IEEE.
PRECISIONS = {"fp32": "float32, TF32 off", "tf32": "float32, TF32 conv", "bf16": "bf16 (--amp)"}
# The paper's networks, the ones the training scripts default to (--model teacher / student).
TEACHER, STUDENT = PRESETS["teacher"], PRESETS["student"]
STEPS = ("teacher", "student", "sft", "kd-imitation", "kd-at", "kd-fsp", "eval")
# The steps timed on multi-coil batches (--coils): a training step and an evaluation slice.
MULTICOIL_STEPS = ("teacher", "eval")
PARTS = ("tests", "steps", "processes", "resume", "profile")
CHECK_PARTS = PARTS[:4]  # what --check runs by default
TINY = {"size": 16, "slices": 8, "val_slices": 4, "repeats": 1}
# What a training process imports before its first step: the scripts (torch, h5py, numpy), torch._dynamo (which
# torch.optim imports at the first Adam step), TensorBoard and scikit-image's SSIM (the first validation).
STARTUP_IMPORTS = ("import train_sft, train_student_kd, torch._dynamo, torch.utils.tensorboard; "
                   "from skimage.metrics import structural_similarity")
CHECK_PROCESS_FLAGS = ["--amp", "--num-workers", "4", "--preload", "no"]
# Limits (seconds) of the check's waits, each far above what its part takes on a data-centre GPU, so only a hang
# or a failure reaches them. --time-limit bounds the whole check below a 10-minute limit on one command (as
# shared GPU machines set), so the table is printed before anything kills it.
LIMITS = {"tests": 300, "process": 180, "cell": {"cuda": 120, "cpu": 1800}, "check": 540}
SIGINT_WAIT_S = 60  # from SIGINT to the interrupted run's exit (it saves model.pt first)
PART_GRACE_S = 10  # a part's own --time-limit is this much below the one it is killed at, to write its report
STUCK_GRACE_S = 30  # after a block's limit, how long a call that never returns to Python gets before its part ends
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


# --------------------------------------------------------------------------- limits

class Overran(Exception):
    """A step, wait or part that ran past its limit."""


class Deadline:
    """The whole run's ``--time-limit``: every wait gets the smaller of its own limit and the time left."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def limit(self, own: float) -> float:
        left = self.left()
        if left <= 0:
            raise Overran("not run: the --time-limit of the whole run was spent")
        return min(own, left)


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`Overran` in the block after ``seconds`` (SIGALRM, so main thread only).

    This ends a step that sleeps or is far slower than it should be; a CUDA call that never returns cannot be
    interrupted from Python, and is why the check runs each part as its own process with a limit."""
    def expire(signum, frame):
        raise Overran(f"over its {seconds:.0f} s limit")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(text: str, chars: int = 600) -> str:
    """The end of a log as one line (markdown notes and table cells cannot hold line breaks or pipes)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " // ".join(lines)[-chars:].replace("|", "/")


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


def roofline(batch: int, size: int, device: torch.device, dtype: torch.dtype, backward: bool,
             rounds: int = ROOFLINE_ROUNDS) -> Roofline:
    """GFLOP/s of a 3x3 32 -> 32 convolution per round, in the memory layout whose median is highest.

    Input and weight in ``dtype`` itself (no autocast casts), forward + input and weight gradients with
    ``backward`` (returned, not accumulated into ``.grad``), else forward alone; each round is enough
    back-to-back calls to last :data:`ROOFLINE_ROUND_S`, so launch and synchronisation costs do not count, and
    the layouts take turns round by round, so a burst of load hits both."""
    calls = {}
    for name, fmt in speed.MEMORY_FORMATS.items():
        x = torch.randn(batch, 32, size, size, device=device, dtype=dtype).to(memory_format=fmt)
        weight = torch.randn(32, 32, 3, 3, device=device, dtype=dtype).to(memory_format=fmt)
        grad = torch.randn_like(x)
        x.requires_grad_(backward)
        weight.requires_grad_(backward)

        def call(x=x, weight=weight, grad=grad):
            out = F.conv2d(x, weight, padding=1)
            if backward:
                torch.autograd.grad(out, (x, weight), grad)
        for _ in range(2):  # kernel selection
            call()
        calls[name] = (call, max(1, min(1000, math.ceil(ROOFLINE_ROUND_S / time_calls(call, 1, device)))))
    flops = (3 if backward else 1) * CONV_FLOP * 32 * 32 * size * size * batch
    gflops = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (call, n) in calls.items():
            gflops[name].append(flops / time_calls(call, n, device) / 1e9)
    best = max(gflops, key=lambda name: statistics.median(gflops[name]))
    return Roofline(gflops[best], best)


class Workload:
    """One random batch at (batch, 1, size, size) on ``device`` and the timed calls of the training steps of
    models/training/steps.py (the ones the training scripts run) on it. With ``coils`` N: a multi-coil batch
    instead, complex images (batch, 2, size, size), N coils' k-space and random smooth-free maps of unit RSS
    (data/fft.py), for the teacher and evaluation steps only."""

    def __init__(self, batch: int, size: int, device: torch.device, amp: bool, compile_models: bool,
                 coils: int | None = None):
        self.device, self.amp, self.compile, self.coils = device, amp, compile_models, coils
        mask = torch.from_numpy(cartesian_row_mask((size, size), "4x"))[None, None]
        mask = mask.expand(batch, 1, size, size).contiguous().to(device)
        if coils is None:
            zero_filled = torch.rand(batch, 1, size, size, device=device)
            kspace, maps, target = fft2(zero_filled) * mask, None, torch.rand(batch, 1, size, size, device=device)
        else:
            generator = torch.Generator().manual_seed(0)
            maps = torch.randn(batch, coils, size, size, dtype=torch.complex64, generator=generator)
            maps = (maps / torch.linalg.vector_norm(maps, dim=1, keepdim=True)).to(device)
            kspace = torch.randn(batch, coils, size, size, dtype=torch.complex64, generator=generator).to(device) * mask
            zero_filled = to_channels(reduce(kspace, maps))
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


# --------------------------------------------------------------------------- whole processes

def child_env(threads: int | None) -> dict:
    # Unbuffered: a child's output is a file, which Python would buffer by 8 KB and lose when the child is killed.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class Child:
    """A subprocess whose stdout and stderr stream to ``log`` as it writes them (never to an unread pipe, which
    blocks a child once it fills), in its own process group so its DataLoader workers die with it.

    The peak RSS is the child's own VmHWM, polled from /proc while waiting: getrusage's ru_maxrss of a child
    also counts the pages it inherited from this (large) benchmark process before exec."""

    def __init__(self, command: list[str], log: Path, threads: int | None = None):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log, self.peak_kb = log, 0
        self.start = time.perf_counter()
        with open(log, "w") as handle:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(command, cwd=ROOT, env=child_env(threads), stdin=subprocess.DEVNULL,
                                         stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, limit: float, until: Callable[[], bool] | None = None) -> bool:
        """Wait for the exit (or for ``until()``) at most ``limit`` seconds; False if that time ran out."""
        end = time.perf_counter() + limit
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.poll() is None and not (until is not None and until()):
            if time.perf_counter() > end:
                return False
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return True

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def run(self, limit: float) -> None:
        """Wait for the exit within ``limit``, killing it after that; raises :class:`Overran` or RuntimeError
        (with the log's tail) unless it exited 0."""
        if not self.wait(limit):
            self.kill()
            raise Overran(f"over its {limit:.0f} s limit, killed; log {self.log}: {self.tail()}")
        if self.proc.returncode != 0:
            raise RuntimeError(f"exit {self.proc.returncode}; log {self.log}: {self.tail()}")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def tail(self, chars: int = 600) -> str:
        return one_line(self.log.read_text(errors="replace"), chars)


def interrupt_and_resume(args: list[str], exp: Path, logs: Path, threads: int | None, process_limit: float,
                         deadline: Deadline, epochs: int = 2) -> str:
    """Start ``args`` for ``epochs`` epochs saving model.pt after every step, SIGINT it once the first one is
    saved (inside epoch 1), then run it again with ``--resume``; what happened. Raises :class:`Overran` or
    RuntimeError when a step of that failed."""
    command = [sys.executable, *args, "--epochs", str(epochs), "--save-every-iters", "1"]
    child = Child(command, logs / "interrupted.log", threads)
    limit = deadline.limit(process_limit)
    try:
        if not child.wait(limit, until=(exp / "model.pt").exists):
            raise Overran(f"no model.pt within its {limit:.0f} s limit; log {child.log}: {child.tail()}")
        if child.proc.poll() is not None:
            raise RuntimeError(f"exited ({child.proc.returncode}) before it was interrupted; log {child.log}: "
                               f"{child.tail()}")
        child.proc.send_signal(signal.SIGINT)
        limit = deadline.limit(SIGINT_WAIT_S)
        if not child.wait(limit):
            raise Overran(f"still running {limit:.0f} s after SIGINT; log {child.log}: {child.tail()}")
    finally:
        if child.proc.poll() is None:
            child.kill()
    if child.proc.returncode != 128 + signal.SIGINT:
        raise RuntimeError(f"not interrupted by SIGINT (exit {child.proc.returncode}); log {child.log}: "
                           f"{child.tail()}")
    stopped_at = load_checkpoint(exp / "model.pt")
    position = f"epoch {stopped_at['epoch'] + 1}, batch {stopped_at['batch_in_epoch']}"
    resumed = Child(command + ["--resume"], logs / "resumed.log", threads)
    try:
        resumed.run(deadline.limit(process_limit))
    except (Overran, RuntimeError) as exc:
        raise type(exc)(f"--resume: {exc}") from None
    final = load_checkpoint(exp / "model.pt")
    if final["epoch"] != epochs or final["batch_in_epoch"] != 0:
        raise RuntimeError(f"--resume ended at epoch {final['epoch']}, not {epochs}")
    return f"SIGINT stopped it in {position} (exit 130); --resume finished epoch {epochs} in {resumed.seconds:.1f} s"


# --------------------------------------------------------------------------- report

class Report:
    """Collects the results, prints them as they come and writes one markdown table (rewritten after every cell
    and note, so a run cut short still leaves what it measured) and the same as report.json, which the check
    merges from its parts."""

    def __init__(self, header: str, precisions: list[str], out: Path | None):
        self.header, self.precisions, self.out = header, precisions, out
        self.notes: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.failed = False

    def note(self, text: str, failed: bool = False) -> None:
        print(text, flush=True)
        self.notes.append(" ".join(text.split()))
        self.failed |= failed
        self.write()

    def cell(self, row: str, precision: str, text: str) -> None:
        print(f"{row:<42}{PRECISIONS[precision]:<20}{text}", flush=True)
        self.rows.setdefault(row, {})[precision] = " ".join(text.split()).replace("|", "/")
        self.write()

    @contextmanager
    def attempt(self, what: str, cells: list[tuple[str, str]] = ()):
        """Run the block; an exception there (an OOM, a cuDNN error, :class:`Overran`) becomes a FAILED note and
        FAILED ``cells`` (row, precision), and the run goes on with the next block."""
        try:
            yield
            return
        except Exception as exc:  # noqa: BLE001 - every failure of a measured block is reported, none ends the run
            # one_line keeps the end of the message, where a log's tail has the error.
            self.fail(what, cells, f"{type(exc).__name__}: {one_line(str(exc), 1200)}")
        # Out here the exception and the frames it held (an OOM's tensors) are gone: give their memory back. A
        # broken CUDA context (an illegal memory access) raises here too; the next block reports it as its failure.
        if torch.cuda.is_available():
            with suppress(RuntimeError):
                torch.cuda.empty_cache()

    def fail(self, what: str, cells: list[tuple[str, str]], reason: str) -> None:
        for row, precision in cells:
            self.cell(row, precision, f"FAILED ({reason[:80]})")
        self.note(f"{what} FAILED: {reason}", failed=True)

    def markdown(self) -> str:
        head = "| step | " + " | ".join(PRECISIONS[p] for p in self.precisions) + " |"
        lines = [self.header, "", *[f"- {n}" for n in self.notes], "", head,
                 "|---" * (len(self.precisions) + 1) + "|"]
        for row, cells in self.rows.items():
            lines.append(f"| {row} | " + " | ".join(cells.get(p, "-") for p in self.precisions) + " |")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.out is not None:
            for name, text in (("table.md", clean_lines(self.markdown())),
                               ("report.json", json.dumps({"notes": self.notes, "rows": self.rows,
                                                           "failed": self.failed}, indent=1))):
                (self.out / f"{name}.tmp").write_text(text)
                os.replace(self.out / f"{name}.tmp", self.out / name)  # a killed run leaves a whole file

    def merge(self, path: Path) -> bool:
        """Add the notes and cells of a part's report.json (if it wrote one); whether it reported a failure."""
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        self.notes += part["notes"]
        for row, cells in part["rows"].items():
            self.rows.setdefault(row, {}).update(cells)
        self.failed |= part["failed"]
        self.write()
        return part["failed"]


def step_cell(timing: Timing, batch: int, flops: float, roof: float | None) -> str:
    median, low, high = timing.per_slice(batch)
    text = f"{median:.4g} s/slice ({low:.4g}-{high:.4g}), {1 / median:.1f} slices/s"
    if roof is not None:
        text += f", {flops / median / 1e9 / roof:.2f} of roofline"
    return text + (f", {timing.peak_mb:.0f} MB" if timing.peak_mb is not None else "")


# --------------------------------------------------------------------------- the parts

@dataclass
class Run:
    """What every part needs: the flags, the device, the precisions, the report, the time left and where logs go."""
    args: argparse.Namespace
    device: torch.device
    precisions: list[str]
    repeats: int
    report: Report
    deadline: Deadline
    log_dir: Path

    @contextmanager
    def block(self, what: str, cells: list[tuple[str, str]] = ()):
        """One measured in-process block under ``--cell-timeout`` (or the time left, if less): an exception or an
        overrun is a FAILED note and ``cells`` (:meth:`Report.attempt`), and the part goes on.

        A call that never comes back to Python (a hung CUDA kernel or synchronisation) cannot be interrupted: a
        watchdog thread then writes the same failure :data:`STUCK_GRACE_S` after the limit and ends this process,
        so that the check's next part still runs."""
        with self.report.attempt(what, cells):
            limit = self.deadline.limit(self.args.cell_timeout)

            def stuck():
                self.report.fail(what, cells, f"Overran: stuck in one call {limit + STUCK_GRACE_S:.0f} s, which "
                                              "never returned to Python; this part was ended there")
                os._exit(1)
            watchdog = threading.Timer(limit + STUCK_GRACE_S, stuck)
            watchdog.daemon = True
            watchdog.start()
            try:
                with time_limit(limit):
                    yield
            finally:
                watchdog.cancel()


def part_tests(run: Run) -> None:
    """``pytest tests/test_cuda.py`` (every test there is skipped without a GPU), streamed to cuda_tests.log;
    its summary line as a note."""
    what = "CUDA tests (tests/test_cuda.py)"
    if importlib.util.find_spec("pytest") is None:
        run.report.note(f"{what}: not run: pytest is not installed", failed=True)
        return
    limit = run.deadline.limit(run.args.tests_timeout)
    # One process (no xdist workers sharing the GPU); -v names each test as it starts, so the log of a hang shows
    # which; faulthandler writes the stacks of a test stuck for half the limit.
    child = Child([sys.executable, "-m", "pytest", "tests/test_cuda.py", "-p", "no:xdist", "-o", "addopts=", "-v",
                   "-rs", "-p", "no:cacheprovider", "-o", f"faulthandler_timeout={max(1, limit // 2):.0f}"],
                  run.log_dir / "cuda_tests.log")
    try:
        child.run(limit)
    except (Overran, RuntimeError) as exc:
        run.report.note(f"{what}: FAILED: {exc}", failed=True)
        return
    counts = [line.strip("= ") for line in child.log.read_text(errors="replace").splitlines()
              if re.search(r"\b(passed|failed|skipped|error|errors|no tests ran)\b.* in [\d.]+s", line)]
    run.report.note(f"{what}: {counts[-1] if counts else child.tail()}")


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
        cells = [(f"{name}, multi-coil {coils} coils, {auto}", precision) for name in MULTICOIL_STEPS]
        with run.block(f"{label}: multi-coil, {coils} coils", cells):
            work = Workload(batch, size, device, amp, args.compile, coils)
            fmt = speed.MEMORY_FORMATS[auto]
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


def speed_flags(args) -> list[str]:
    """The precision and DataLoader flags of the whole-process runs."""
    if args.check:
        return CHECK_PROCESS_FLAGS
    return (["--amp"] if args.amp else []) + ["--num-workers", str(args.num_workers)]


def process_flags(run: Run, data: Path) -> list[str]:
    """The flags every whole-process run gets."""
    return ["--data-root", str(data), "--batch-size", str(run.args.batch_size), "--no-progress",
            "--device", run.device.type, *speed_flags(run.args)]


def process_runs(teacher_ckpt: Path, sft_best: Path, tiny: bool) -> list[tuple[str, list[str], str]]:
    """(name, script and its flags, FLOP kind) of the whole-process runs, in order: at starts from SFT's checkpoint."""
    runs = [("train_sft.py", ["train_sft.py"], "sft"),
            ("train_student_kd.py imitation", ["train_student_kd.py", "--kd-method", "imitation",
                                               "--teacher-checkpoint", str(teacher_ckpt)], "kd"),
            ("train_student_kd.py at", ["train_student_kd.py", "--kd-method", "at", "--teacher-checkpoint",
                                        str(sft_best), "--init-from-sft", str(sft_best)], "kd")]
    if tiny:  # each process is mostly start-up at this size: the at run covers KD
        runs = [run for run in runs if "imitation" not in run[0]]
    return runs


def part_processes(run: Run) -> None:
    """The whole 1-epoch runs as separate processes, each under ``--process-timeout``, ``--process-repeats``
    times, in one column: bf16 with --amp (always with --check), else the last precision. Before each round of
    processes a roofline probe runs in that precision, and each process's fraction is of the probe just before
    it, so a machine loaded for a while by other jobs slows both alike; a cell gives the median over rounds and
    the range. A row ``start-up`` times a process that only makes the imports of a training process
    (:data:`STARTUP_IMPORTS`)."""
    args, report = run.args, run.report
    column = "bf16" if (args.amp or args.check) and "bf16" in run.precisions else run.precisions[-1]
    dtype = torch.bfloat16 if column == "bf16" else torch.float32
    flops = flops_per_pixel()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data_root or synthetic_data(tmp / "data", args.size, args.slices, args.val_slices)
        common = process_flags(run, data)
        teacher_ckpt = tmp / "teacher.pt"
        save_checkpoint(model_payload(TEACHER.build(), "teacher"), teacher_ckpt)
        n_train = args.slices if args.data_root is None else None
        report.note(f"processes: {n_train or 'all'} training slices, 1 epoch, flags {' '.join(speed_flags(args))}, "
                    f"{args.process_repeats} rounds; wall time includes start-up, data, validation and checkpoints; "
                    "peak RSS is host memory")
        seen: dict[str, list[tuple[float, float | None, int]]] = {}  # row -> (seconds, fraction, peak KB) per round
        roofs = []
        for round_ in range(args.process_repeats):
            with run.block(f"processes: roofline, round {round_ + 1}"), speed.float32_mode(tf32=column == "tf32"):
                roofs.append(roofline(args.batch_size, args.size, run.device, dtype, backward=True, rounds=3))
                report.note(f"processes: round {round_ + 1}: roofline probe (fwd+bwd) {roofs[-1].text()}")
            exp = tmp / f"round{round_}"
            runs = {"start-up": ("start-up (imports only)", ["-c", STARTUP_IMPORTS], None)}
            for name, script, kind in process_runs(teacher_ckpt, exp / "train_sft.py" / "best_model.pt", args.tiny):
                runs[name] = (f"{name} (whole process)", [*script, *common, "--epochs", "1", "--exp-dir",
                                                          str(exp / name.replace(" ", "_"))], kind)
            suffix = f"_{round_ + 1}" if round_ else ""
            for name, (row, command, kind) in runs.items():
                with report.attempt(name + (f", round {round_ + 1}" if suffix else ""), [(row, column)]):
                    child = Child([sys.executable, *command], run.log_dir / f"{name.replace(' ', '_')}{suffix}.log",
                                  args.threads)
                    child.run(run.deadline.limit(args.process_timeout))
                    roof = roofs[-1].median if roofs else None
                    fraction = None if kind is None or roof is None else \
                        flops[kind] * args.size ** 2 * (n_train or 1) / child.seconds / 1e9 / roof
                    seen.setdefault(row, []).append((child.seconds, fraction, child.peak_kb))
                    report.cell(row, column, process_cell(seen[row], None if kind is None else n_train or 1))


def process_cell(rounds: list[tuple[float, float | None, int]], slices: int | None) -> str:
    """A whole-process cell from (seconds, fraction of roofline, peak RSS KB) per round: medians and ranges
    (s/slice only for a training process, which trains ``slices``)."""
    seconds = [r[0] for r in rounds]
    text = f"{statistics.median(seconds):.1f} s wall ({min(seconds):.1f}-{max(seconds):.1f})"
    if len(rounds) > 1:
        text += f" over {len(rounds)} runs"
    if slices:
        text += f", {statistics.median(seconds) / slices:.3f} s/slice"
    fractions = [r[1] for r in rounds if r[1] is not None]
    if fractions:
        text += f", {statistics.median(fractions):.2f} of roofline ({min(fractions):.2f}-{max(fractions):.2f})"
    return text + f", peak RSS {max(r[2] for r in rounds) / 1024:.0f} MB"


def part_resume(run: Run) -> None:
    """SIGINT a ``train_sft.py`` run inside its first epoch, then finish it with ``--resume``."""
    args = run.args
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data_root or synthetic_data(tmp / "data", args.size, args.slices, args.val_slices)
        exp = tmp / "interrupted"
        with run.report.attempt("resume: train_sft.py"):
            text = interrupt_and_resume(["train_sft.py", *process_flags(run, data), "--exp-dir", str(exp)], exp,
                                        run.log_dir, args.threads, args.process_timeout, run.deadline)
            run.report.note(f"resume: train_sft.py ok: {text}")


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


def part_profile(run: Run) -> None:
    """One epoch of ``train_sft.py`` and of ``train_student_kd.py --kd-method at`` run in this process under
    torch.profiler (their ``main``, so data, validation and checkpoints are in it; imports are not, the
    processes part's start-up row times those): the seconds per category of ops, and outside every op (Python:
    the loop, TensorBoard, h5py reads, torch.save, plus the profiler's own cost)."""
    import train_sft
    import train_student_kd
    args, report = run.args, run.report
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data_root or synthetic_data(tmp / "data", args.size, args.slices, args.val_slices)
        common = [*process_flags(run, data), "--epochs", "1"]
        sft_best = tmp / "sft" / "best_model.pt"
        mains = {"train_sft.py": (train_sft.main, ["--exp-dir", str(tmp / "sft")]),
                 "train_student_kd.py at": (train_student_kd.main, [
                     "--exp-dir", str(tmp / "kd"), "--kd-method", "at", "--teacher-checkpoint", str(sft_best),
                     "--init-from-sft", str(sft_best)])}
        for name, (main_fn, flags) in mains.items():
            with run.block(f"profile: {name}"):
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    start = time.perf_counter()
                    main_fn([*common, *flags])
                    wall = time.perf_counter() - start
                events = prof.key_averages()
                seconds = profile_categories(events)
                inside = sum(seconds.values())
                parts = sorted(seconds.items(), key=lambda item: -item[1])
                report.note(f"profile: {name}, 1 epoch in this process: {wall:.2f} s under the profiler; "
                            + ", ".join(f"{what} {s:.2f} s ({s / wall:.0%})" for what, s in parts if s >= 0.005)
                            + f"; outside every op (Python, the profiler) {wall - inside:.2f} s "
                              f"({(wall - inside) / wall:.0%}); largest ops outside the convolutions: "
                            + largest_ops(events, tuple(n for n in seconds if n != "convolutions"), 6))


PART_FUNCTIONS = {"tests": part_tests, "steps": part_steps, "processes": part_processes, "resume": part_resume,
                  "profile": part_profile}


def part_command(argv: list[str], part: str, out: Path, limit: float, precisions: list[str]) -> list[str]:
    """This script with the run's own flags for one part alone (argparse keeps the last of a repeated flag)."""
    return [sys.executable, "-m", "scripts.benchmark", *argv, "--only", part, "--out-dir", str(out),
            "--time-limit", f"{limit:.1f}", "--precision", *precisions]


def run_part_process(run: Run, argv: list[str], part: str) -> None:
    """One part of the check in its own process, killed when the run's time is up, so that a CUDA call that never
    returns or a crash ends only that part; its notes and cells join the report."""
    left = run.deadline.left()
    if left <= 0:
        run.report.note(f"{part}: FAILED: not run, the --time-limit of the check was spent", failed=True)
        return
    out = run.args.out / part
    print(f"{part}: running (log {out / 'part.log'})", flush=True)
    child = Child(part_command(argv, part, out, max(left - PART_GRACE_S, left / 2), run.precisions),
                  out / "part.log", run.args.threads)
    finished = child.wait(left)
    if not finished:
        child.kill()
    reported_failure = run.report.merge(out / "report.json")
    if not finished:
        run.report.note(f"{part}: FAILED: killed when the check's --time-limit was up ({left:.0f} s left for it); "
                        f"log {child.log}: {child.tail()}", failed=True)
    elif child.proc.returncode != 0 and not reported_failure:
        run.report.note(f"{part}: FAILED: exit {child.proc.returncode}; log {child.log}: {child.tail()}",
                        failed=True)
    print(f"{part}: {'FAILED' if not finished or child.proc.returncode else 'ok'} in {child.seconds:.0f} s",
          flush=True)


# --------------------------------------------------------------------------- main

def build_parser() -> CliParser:
    p = CliParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="the GPU check of scripts/gpu_check.sh: CUDA tests, all precisions, SFT variants, "
                        "processes with --amp and workers, an interrupted and resumed run, each part in its own "
                        "process; table in --out-dir")
    p.add_argument("--only", nargs="+", choices=PARTS, default=None, metavar="PART",
                   help=f"run only these parts ({', '.join(PARTS)}), in this order (with --check, each in its own "
                        "process unless there is one); default: the first four with --check, else steps and "
                        "processes; profile: one SFT and one KD epoch under torch.profiler, time per kind of op")
    p.add_argument("--tiny", action="store_true",
                   help=f"CI-sized: {TINY['size']} x {TINY['size']}, {TINY['slices']} + {TINY['val_slices']} "
                        "slices, one round (checks that everything runs; the times mean nothing)")
    p.add_argument("--size", type=int, default=240, help="slice size N (N x N)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--coils", type=int, nargs="+", default=None, metavar="N",
                   help="also time the teacher's training step and evaluation on multi-coil batches of N coils "
                        "each (e.g. 15 8: fastMRI brain and after --coil-compress 8), with the DF share")
    p.add_argument("--slices", type=int, default=32, help="training slices of the whole-process runs")
    p.add_argument("--val-slices", type=int, default=8)
    p.add_argument("--data-root", type=Path, default=None, help="use this data instead of synthetic data")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=None,
                   help="fp32 (TF32 off), tf32 (TF32 convolutions, IEEE matmuls, as the scripts run float32 on "
                        "CUDA), bf16 autocast; default: all three on CUDA with --check, else fp32 (bf16 with --amp)")
    p.add_argument("--amp", action="store_true", help="same as --precision bf16; also passed to the processes")
    p.add_argument("--memory-format", choices=["both", "auto", *speed.MEMORY_FORMATS], default="both",
                   help="layouts of the step timings: both (interleaved), the one training's auto picks, or one")
    p.add_argument("--compile", action="store_true", help="torch.compile the models of the step benchmarks")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per benchmark (default 3 on CPU, 20 on CUDA)")
    p.add_argument("--sft-variants", action="store_true", help="also time the SFT step variants of models/training/speed.py")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the whole-process runs")
    p.add_argument("--process-repeats", type=int, default=None,
                   help="rounds of the whole-process runs, each after a roofline probe (default 3; 1 with --tiny "
                        "or --check)")
    p.add_argument("--skip-processes", action="store_true",
                   help="only the in-process step benchmarks (and, with --check, the tests)")
    p.add_argument("--time-limit", type=float, default=None,
                   help=f"seconds for the whole run, which every limit below is cut to; default {LIMITS['check']} "
                        "with --check (inside a 10-minute limit on one command), else none")
    p.add_argument("--tests-timeout", type=float, default=LIMITS["tests"], help="seconds for tests/test_cuda.py")
    p.add_argument("--process-timeout", type=float, default=LIMITS["process"],
                   help="seconds for each training process (and for the wait for the interrupted run's model.pt)")
    p.add_argument("--cell-timeout", type=float, default=None,
                   help=f"seconds for one step's timings (both layouts, all rounds); default {LIMITS['cell']['cuda']} "
                        f"on CUDA, {LIMITS['cell']['cpu']} on a CPU")
    old_spellings(p.add_argument("--out-dir", "--out", dest="out", type=Path, default=None,
                                 help="where everything lands: table.md, report.json, the logs (cuda_tests.log, one "
                                      "per process) and, with --check, one folder per part; --check default "
                                      "results/gpu_check"), "--out")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, checked, with the defaults that depend on others (--tiny, --check, the device) filled in."""
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.size, args.slices, args.val_slices = TINY["size"], TINY["slices"], TINY["val_slices"]
        args.repeats = args.repeats or TINY["repeats"]
    args.process_repeats = args.process_repeats or (1 if args.tiny or args.check else 3)
    for flag in ("size", "batch_size", "slices", "val_slices", "repeats", "threads", "process_repeats"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    for flag in ("time_limit", "tests_timeout", "process_timeout", "cell_timeout"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive number of seconds, got {value}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; run with --device cpu "
                        "for the CPU side, or install the CUDA build of torch")
    if args.check and args.device == "auto" and not torch.cuda.is_available():
        raise UserError("--check: no CUDA device is visible; pass --device cpu (add --tiny for the CI-sized run) "
                        "to check the CPU side")
    args.device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if args.only is None:
        args.only = [part for part in (CHECK_PARTS if args.check else ("steps", "processes"))
                     if not (args.skip_processes and part in ("processes", "resume"))]
    args.only = list(dict.fromkeys(args.only))  # each part once: a part's folder holds one run
    args.cell_timeout = args.cell_timeout or LIMITS["cell"][args.device]
    args.time_limit = args.time_limit or (LIMITS["check"] if args.check else math.inf)
    if args.check:
        args.sft_variants = True
        args.out = args.out or ROOT / "results" / "gpu_check"
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    deadline = Deadline(args.time_limit)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.precision:
        precisions = args.precision
    elif args.check:
        precisions = ["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    else:
        precisions = ["bf16"] if args.amp else ["fp32"]
    if "tf32" in precisions and device.type != "cuda":
        raise UserError("--precision tf32 needs --device cuda (TF32 is a GPU number format)")
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training scripts do: fixed shapes per run
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    title = "GPU check" if args.check else "Benchmark"
    report = Report(f"{title}, {datetime.date.today()}, on {describe_machine(machine())}. {args.size} x {args.size}, "
                    f"batch "
                    f"{args.batch_size}; s/slice is the median of {repeats} interleaved rounds (fastest-slowest).",
                    precisions, args.out)
    print(report.header, flush=True)
    seconds = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(args, device, precisions, repeats, report, deadline, args.out or Path(tmp))
            for part in args.only:
                start = time.perf_counter()
                if args.check and len(args.only) > 1:
                    run_part_process(run, argv, part)
                else:
                    with report.attempt(part):
                        PART_FUNCTIONS[part](run)
                seconds[part] = time.perf_counter() - start
    finally:
        if len(args.only) > 1:  # a part run alone is one of these, or its total is the only figure
            report.note("time: " + ", ".join(f"{part} {s:.0f} s" for part, s in seconds.items()) +
                        f"; total {sum(seconds.values()):.0f} s")
        print()
        print(clean_lines(report.markdown()), flush=True)
        if args.out is not None:
            print(f"wrote {args.out / 'table.md'}")
    if report.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
