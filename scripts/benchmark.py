"""Benchmark and GPU check: training-step and evaluation speed against a convolution roofline measured in the same process.

Times the teacher, student, SFT and KD (imitation, at, fsp) training steps and evaluation at ``--batch-size``,
in each ``--precision`` (float32 with TF32 off, float32 with TF32 on, bfloat16 autocast) and each memory layout,
as seconds per slice (median and range over ``--repeats`` interleaved rounds), slices/s, GFLOP/s, fraction of
the roofline (a 3x3 32 -> 32 convolution, forward + backward, same batch and size, best layout) and peak GPU
memory (``torch.cuda.max_memory_allocated``). Then it runs the whole 1-epoch ``train_sft.py`` and
``train_student_kd.py`` as separate processes (start-up, data, validation and checkpoints included).

``--check`` is the GPU check that ``scripts/gpu_check.sh`` runs: first the CUDA tests (``tests/test_cuda.py``),
then the timings in all three precisions, the SFT step variants of models/speed.py, the processes with
``--amp --num-workers 4 --preload no``, and a ``--resume`` after interrupting ``train_sft.py``; it writes one
markdown table to ``--out-dir``/table.md and exits non-zero when a test or a process failed. It needs only torch,
numpy, h5py, scipy, scikit-image, tqdm, tensorboard, torchmetrics, matplotlib and pytest: its data is written
by ``data/layout.py``. A benchmark, not a test: it never fails on a time.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Runnable as `python scripts/benchmark.py` from anywhere: the project root holds the packages.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from data.fft import fft2  # noqa: E402
from data.layout import undersample, write_volume  # noqa: E402
from data.masks import cartesian_row_mask  # noqa: E402
from models import speed  # noqa: E402
from models.checkpoint import model_payload  # noqa: E402
from models.dccnn import DCCNN, STUDENT, TEACHER  # noqa: E402
from models.kd_losses import build_kd_loss  # noqa: E402
from models.sft import SFTNet, sft_forward_backward, sft_loss  # noqa: E402
from utils import CliParser, UserError, old_spellings, run_cli, save_checkpoint  # noqa: E402

CONV_FLOP = 2 * 9  # multiply-add per 3x3 tap
# On CUDA the training scripts' float32 is "tf32" (PyTorch's default for convolutions); "fp32" is IEEE.
PRECISIONS = {"fp32": "float32, TF32 off", "tf32": "float32, TF32 on", "bf16": "bf16 (--amp)"}
STEPS = ("teacher", "student", "sft", "kd-imitation", "kd-at", "kd-fsp", "eval")
TINY = {"size": 16, "slices": 8, "val_slices": 4, "repeats": 1}
CHECK_PROCESS_FLAGS = ["--amp", "--num-workers", "4", "--preload", "no"]


def block_flops(config) -> int:
    """Forward FLOPs per pixel of one CNN block."""
    c = config.channels
    return CONV_FLOP * (c + (config.n_convs - 2) * c * c + c)


def flops_per_pixel() -> dict[str, float]:
    """Forward + backward counted as 3 x forward, as the issue's figures (1.43 / 0.58 MFLOP) do."""
    t, s = 5 * block_flops(TEACHER), 5 * block_flops(STUDENT)
    branches = (4 + 3 + 2 + 1) * block_flops(STUDENT)
    return {"teacher": 3 * t, "student": 3 * s, "sft": 3 * (t + branches), "kd": t + 3 * s, "eval": t}


# --------------------------------------------------------------------------- machine, precision, data

def cpu_model() -> str:
    """CPU model name, family/model numbers and the vector ISA torch dispatches to, e.g.
    ``"AMD EPYC (family 25, model 1), AVX2"``."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = fields.get("flags", "").split()
    isa = torch.backends.cpu.get_cpu_capability() + (" + AMX" if "amx_tile" in flags else "")
    return f"{name}, {isa}"


def machine_line(device: torch.device) -> str:
    line = (f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
            f"torch {torch.__version__}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        line += (f"; GPU {props.name} ({props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}, "
                 f"cuDNN {torch.backends.cudnn.version()}")
    return line


def synthetic_data(root: Path, size: int, n_train: int, n_val: int, acc: str = "4x") -> Path:
    """Smooth random volumes of 8 slices in the original layout, written by data/layout.py."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    mask = cartesian_row_mask((size, size), acc, seed=0)
    np.save(root / f"mask_{acc}.npy", mask)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, count in (("train", n_train), ("validation", n_val)):
        folder = root / split / f"acc_{acc}"
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
    """One measured configuration: seconds per step of each round, peak GPU memory of its warm-up (MB)."""
    seconds: list[float] = field(default_factory=list)
    peak_mb: float | None = None

    def per_slice(self, batch: int) -> tuple[float, float, float]:
        """Median, fastest and slowest seconds per slice."""
        return (statistics.median(self.seconds) / batch, min(self.seconds) / batch, max(self.seconds) / batch)


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, Timing]:
    """Time every function once per round, round after round, so load from other processes hits all alike.

    The first call of each is a warm-up (kernel selection, cuDNN autotuning, allocator growth) and gives the
    peak GPU memory of one step."""
    timings = {name: Timing() for name in fns}
    for name, fn in fns.items():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        speed.sync(device)
        if device.type == "cuda":
            timings[name].peak_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    for _ in range(repeats):
        for name, fn in fns.items():
            speed.sync(device)
            start = time.perf_counter()
            fn()
            speed.sync(device)
            timings[name].seconds.append(time.perf_counter() - start)
    return timings


def roofline(batch: int, size: int, device: torch.device, repeats: int, amp: bool) -> tuple[float, str]:
    """Best GFLOP/s of a 3x3 32 -> 32 convolution, forward + backward (input and weight gradients), over
    the memory layouts, in the current precision (bfloat16 autocast with ``amp``); and that layout's name."""
    fns = {}
    for name, fmt in speed.MEMORY_FORMATS.items():
        conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(device, memory_format=fmt)
        x = torch.randn(batch, 32, size, size, device=device).to(memory_format=fmt).requires_grad_()
        grad = torch.ones(batch, 32, size, size, device=device).to(memory_format=fmt)

        def step(conv=conv, x=x, grad=grad):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = conv(x)
            out.backward(grad.to(out.dtype))
        fns[name] = step
    timings = time_interleaved(fns, repeats, device)
    flops = 3 * CONV_FLOP * 32 * 32 * size * size * batch
    return max((flops / min(t.seconds) / 1e9, name) for name, t in timings.items())


class Workload:
    """Random inputs at (batch, 1, size, size) on ``device`` and builders of one training or evaluation step."""

    def __init__(self, batch: int, size: int, device: torch.device, amp: bool, compile_models: bool):
        self.device, self.amp, self.compile = device, amp, compile_models
        self.zf = torch.rand(batch, 1, size, size, device=device)
        mask = torch.from_numpy(cartesian_row_mask((size, size), "4x"))[None, None]
        self.mask = mask.expand(batch, 1, size, size).contiguous().to(device)
        self.k = fft2(self.zf) * self.mask
        self.target = torch.rand(batch, 1, size, size, device=device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def trainer(self, model: torch.nn.Module, fmt, loss_fn) -> Callable[[], None]:
        """One optimiser step of ``model`` (moved to ``fmt``) on ``loss_fn(net)``; a loss that needs no
        backward here (the SFT branch-wise step) has already run its own."""
        model.to(self.device, memory_format=fmt)
        net = torch.compile(model) if self.compile else model
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])

        def step():
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = loss_fn(net)
            if loss.requires_grad:
                loss.backward()
            optimizer.step()
        return step

    def sft_step(self, fmt, variant: str) -> Callable[[], None]:
        zf, k, mask, target = self.zf, self.k, self.mask, self.target
        if variant == "branchwise":
            return self.trainer(SFTNet(), fmt, lambda m: sft_forward_backward(m, zf, k, mask, target)[0])
        batched = variant == "joint-batched"
        return self.trainer(SFTNet(), fmt, lambda m: sft_loss(*m(zf, k, mask, batch_branches=batched), target)[0])

    def step(self, name: str, fmt) -> Callable[[], None]:
        """The training (or, for ``eval``, inference) step ``name`` of :data:`STEPS` in layout ``fmt``."""
        zf, k, mask, target = self.zf, self.k, self.mask, self.target
        if name in ("teacher", "student"):
            return self.trainer(DCCNN(TEACHER if name == "teacher" else STUDENT), fmt,
                                lambda m: F.l1_loss(m(zf, k, mask), target))
        if name == "sft":
            return self.sft_step(fmt, speed.sft_variant(self.device))
        teacher = DCCNN(TEACHER).to(self.device, memory_format=fmt).eval().requires_grad_(False)
        if name == "eval":
            @torch.inference_mode()
            def evaluate():
                with self.autocast():
                    teacher(zf, k, mask)
            return evaluate
        kd = build_kd_loss(name.split("-", 1)[1], STUDENT, TEACHER).to(self.device)
        feats = kd.needs_features

        def kd_loss(m):
            with torch.no_grad():
                t_out = (teacher(zf, k, mask, return_features=True, keep_hidden=kd.keep_teacher_hidden())
                         if feats else teacher(zf, k, mask))
            t_out, t_feats = t_out if feats else (t_out, None)
            s_out = m(zf, k, mask, return_features=feats)
            s_out, s_feats = s_out if feats else (s_out, None)
            return F.l1_loss(s_out, target) + kd.default_weight * kd(s_out, s_feats, t_out, t_feats)
        return self.trainer(DCCNN(STUDENT), fmt, kd_loss)


# --------------------------------------------------------------------------- whole processes

def child_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_process(args: list[str], threads: int | None) -> tuple[float, float, str | None]:
    """Wall seconds, peak RSS (MB) and, when it failed, the end of stderr of one child process.

    The peak is the child's own VmHWM, polled from /proc: getrusage's ru_maxrss of a child also counts the
    pages it inherited from this (large) benchmark process before exec.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=child_env(threads), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    status_file = Path(f"/proc/{proc.pid}/status")
    peak_kb = 0
    while proc.poll() is None:
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    error = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.read()[-1500:]}"
    return seconds, peak_kb / 1024, error


def interrupt_and_resume(args: list[str], exp: Path, threads: int | None, epochs: int = 2) -> tuple[bool, str]:
    """Start ``args`` for ``epochs`` epochs saving model.pt after every step, SIGINT it once the first one is
    saved (inside epoch 1), then run it again with ``--resume``; (ok, what happened)."""
    command = [sys.executable, *args, "--epochs", str(epochs), "--save-every-iters", "1"]
    proc = subprocess.Popen(command, cwd=ROOT, env=child_env(threads), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and not (exp / "model.pt").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    if proc.returncode != 128 + signal.SIGINT:
        return False, f"not interrupted by SIGINT (exit {proc.returncode}): {stderr[-800:]}"
    stopped_at = torch.load(exp / "model.pt", weights_only=True, map_location="cpu")
    position = f"epoch {stopped_at['epoch'] + 1}, batch {stopped_at['batch_in_epoch']}"
    start = time.perf_counter()
    resumed = subprocess.run(command + ["--resume"], cwd=ROOT, env=child_env(threads), capture_output=True,
                             text=True)
    seconds = time.perf_counter() - start
    if resumed.returncode != 0:
        return False, f"--resume failed (exit {resumed.returncode}): {resumed.stderr[-800:]}"
    final = torch.load(exp / "model.pt", weights_only=True, map_location="cpu")
    if final["epoch"] != epochs or final["batch_in_epoch"] != 0:
        return False, f"--resume ended at epoch {final['epoch']}, not {epochs}"
    return True, f"SIGINT stopped it in {position} (exit 130); --resume finished epoch {epochs} in {seconds:.1f} s"


def run_tests(device: torch.device, out: Path | None) -> tuple[bool, str]:
    """``pytest tests/test_cuda.py``; (ok, its summary line). Without a GPU every test there is skipped."""
    if importlib.util.find_spec("pytest") is None:
        return False, "not run: pytest is not installed"
    # addopts cleared: pytest.ini's -q plus ours would hide the summary line read below.
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cuda.py", "-o", "addopts=", "-q", "-rs",
                             "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    if out is not None:
        (out / "cuda_tests.log").write_text(result.stdout + result.stderr)
    counts = [line.strip("= ") for line in result.stdout.splitlines()
              if re.search(r"\b(passed|failed|skipped|error|errors|no tests ran)\b.* in [\d.]+s", line)]
    summary = counts[-1] if counts else f"exit {result.returncode}: {(result.stdout + result.stderr).strip()[-300:]}"
    return result.returncode == 0, summary


# --------------------------------------------------------------------------- report

class Report:
    """Collects the results, prints them as they come and writes one markdown table (rewritten after every
    section, so a run cut short still leaves what it measured)."""

    def __init__(self, header: str, precisions: list[str], out: Path | None):
        self.header, self.precisions, self.out = header, precisions, out
        self.notes: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.failed = False

    def note(self, text: str, failed: bool = False) -> None:
        print(text, flush=True)
        self.notes.append(text)
        self.failed |= failed
        self.write()

    def cell(self, row: str, precision: str, text: str) -> None:
        print(f"{row:<42}{PRECISIONS[precision]:<20}{text}", flush=True)
        self.rows.setdefault(row, {})[precision] = text
        self.write()

    def markdown(self) -> str:
        head = "| step | " + " | ".join(PRECISIONS[p] for p in self.precisions) + " |"
        lines = [self.header, "", *[f"- {n}" for n in self.notes], "", head,
                 "|---" * (len(self.precisions) + 1) + "|"]
        for row, cells in self.rows.items():
            lines.append(f"| {row} | " + " | ".join(cells.get(p, "-") for p in self.precisions) + " |")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.out is not None:
            (self.out / "table.md").write_text(self.markdown())


def step_cell(timing: Timing, batch: int, flops: float, roof: float) -> str:
    median, low, high = timing.per_slice(batch)
    gflops = flops / median / 1e9
    text = f"{median:.4g} s/slice ({low:.4g}-{high:.4g}), {1 / median:.1f} slices/s, {gflops / roof:.2f} of roofline"
    return text + (f", {timing.peak_mb:.0f} MB" if timing.peak_mb is not None else "")


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="the GPU check of scripts/gpu_check.sh: CUDA tests, all precisions, SFT variants, "
                        "processes with --amp and workers, an interrupted and resumed run, table in --out-dir")
    p.add_argument("--tiny", action="store_true",
                   help=f"CI-sized: {TINY['size']} x {TINY['size']}, {TINY['slices']} + {TINY['val_slices']} "
                        "slices, one round (checks that everything runs; the times mean nothing)")
    p.add_argument("--size", type=int, default=240, help="slice size N (N x N)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--slices", type=int, default=32, help="training slices of the whole-process runs")
    p.add_argument("--val-slices", type=int, default=8)
    p.add_argument("--data-root", type=Path, default=None, help="use this data instead of synthetic data")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=None,
                   help="fp32 (TF32 off), tf32 (CUDA only), bf16 autocast; default: all three on CUDA with "
                        "--check, else fp32 (bf16 with --amp)")
    p.add_argument("--amp", action="store_true", help="same as --precision bf16; also passed to the processes")
    p.add_argument("--memory-format", choices=["both", "auto", *speed.MEMORY_FORMATS], default="both",
                   help="layouts of the step timings: both (interleaved), the one training's auto picks, or one")
    p.add_argument("--compile", action="store_true", help="torch.compile the models of the step benchmarks")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per benchmark (default 3 on CPU, 20 on CUDA)")
    p.add_argument("--sft-variants", action="store_true", help="also time the SFT step variants of models/speed.py")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the whole-process runs")
    p.add_argument("--skip-processes", action="store_true", help="only the in-process step benchmarks")
    old_spellings(p.add_argument("--out-dir", "--out", dest="out", type=Path, default=None,
                                 help="write table.md (and, with --check, cuda_tests.log) here; --check default "
                                      "results/gpu_check"), "--out")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.slices, args.val_slices = TINY["size"], TINY["slices"], TINY["val_slices"]
        args.repeats = args.repeats or TINY["repeats"]
    for flag in ("size", "batch_size", "slices", "val_slices", "repeats", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; run with --device cpu "
                        "for the CPU side, or install the CUDA build of torch")
    if args.check and args.device == "auto" and not torch.cuda.is_available():
        raise UserError("--check: no CUDA device is visible; pass --device cpu (add --tiny for the CI-sized run) "
                        "to check the CPU side")
    if args.check:
        args.sft_variants = True
        args.out = args.out or ROOT / "results" / "gpu_check"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
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
    size, batch = args.size, args.batch_size
    flops = flops_per_pixel()
    title = "GPU check" if args.check else "Benchmark"
    report = Report(f"{title}, {datetime.date.today()}: {machine_line(device)}. {size} x {size}, batch {batch}; "
                    f"s/slice is the median of {repeats} interleaved rounds (fastest-slowest).", precisions,
                    args.out)
    print(report.header)

    if args.check:
        ok, summary = run_tests(device, args.out)
        report.note(f"CUDA tests (tests/test_cuda.py): {summary}", failed=not ok)

    layouts = list(speed.MEMORY_FORMATS) if args.memory_format == "both" else None
    roofs = {}
    for precision in precisions:
        with speed.float32_mode(tf32=precision == "tf32"):
            measure_precision(args, device, precision, repeats, report, roofs, layouts, flops)
    if not args.skip_processes:
        run_processes(args, device, report, flops, roofs)
    print()
    print(report.markdown())
    if args.out is not None:
        print(f"wrote {args.out / 'table.md'}")
    if report.failed:
        raise SystemExit(1)


def measure_precision(args, device: torch.device, precision: str, repeats: int, report: Report, roofs: dict,
                      layouts: list[str] | None, flops: dict) -> None:
    """The layout decision, roofline, step timings and (with --sft-variants) SFT variants in one precision;
    stores the roofline in ``roofs[precision]``."""
    size, batch = args.size, args.batch_size
    pixels = size * size
    amp = precision == "bf16"
    label = PRECISIONS[precision]
    picked = {}
    for backward, user, work_done in ((True, "training (--memory-format auto)", "fwd+bwd"),
                                      (False, "evaluate.py", "fwd")):
        start = time.perf_counter()
        fastest, seconds = speed.measured_layout(device, (size, size), amp, backward)
        cost = time.perf_counter() - start
        picked[backward] = speed.auto_layout(device, (size, size), amp, backward)
        figures = ", ".join(f"{name} {1e3 * min(s):.2f}-{1e3 * max(s):.2f} ms" for name, s in seconds.items())
        report.note(f"{label}: {user} picks {picked[backward]} (32->32 conv {work_done} at batch 1: {figures}, "
                    f"{fastest} by the start-up rule, measured in {cost:.2f} s)")
    auto = picked[True]
    roof, roof_layout = roofs[precision] = roofline(batch, size, device, repeats, amp)
    report.note(f"{label}: roofline, 3x3 32->32 conv fwd+bwd at batch {batch}: {roof:.1f} GFLOP/s "
                f"({roof_layout})")
    work = Workload(batch, size, device, amp, args.compile)
    chosen = layouts or [auto if args.memory_format == "auto" else args.memory_format]
    for name in STEPS:
        timings = time_interleaved({fmt: work.step(name, speed.MEMORY_FORMATS[fmt]) for fmt in chosen},
                                   repeats, device)
        label_step = name if name != "sft" else f"sft ({speed.sft_variant(device)})"
        for fmt, timing in timings.items():
            report.cell(f"{label_step}, {fmt}", precision,
                        step_cell(timing, batch, flops[name.split("-")[0]] * pixels, roof))
    if args.sft_variants:
        fmt = speed.MEMORY_FORMATS[auto]
        timings = time_interleaved({v: work.sft_step(fmt, v) for v in speed.SFT_VARIANTS}, repeats, device)
        for variant, timing in timings.items():
            report.cell(f"SFT variant {variant}, {auto}", precision,
                        step_cell(timing, batch, flops["sft"] * pixels, roof))
        fastest = min(timings, key=lambda v: statistics.median(timings[v].seconds))
        report.note(f"{label}: fastest SFT step variant on {device.type}: {fastest}; models/speed.py "
                    f"SFT_VARIANT[{device.type!r}] = {speed.sft_variant(device)!r}")
    del work
    if device.type == "cpu":
        report.note(f"{label}: peak RSS of the step timings so far "
                    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def run_processes(args, device: torch.device, report: Report, flops: dict, roofs: dict) -> None:
    """The whole 1-epoch runs (and with --check the interrupted and resumed one), as separate processes.

    roofs: precision -> (GFLOP/s, layout) of :func:`roofline`; a process's fraction uses its own precision's."""
    amp = args.amp or args.check
    column = "bf16" if amp and "bf16" in report.precisions else report.precisions[-1]
    roof = roofs[column][0]
    extra = CHECK_PROCESS_FLAGS if args.check else (["--amp"] if args.amp else []) + [
        "--num-workers", str(args.num_workers)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data_root or synthetic_data(tmp / "data", args.size, args.slices, args.val_slices)
        common = ["--data-root", str(data), "--batch-size", str(args.batch_size), "--no-progress",
                  "--device", device.type, *extra]
        teacher_ckpt = tmp / "teacher.pt"
        save_checkpoint(model_payload(DCCNN(TEACHER), "teacher"), teacher_ckpt)
        n_train = args.slices if args.data_root is None else None
        report.note(f"processes: {n_train or 'all'} training slices, 1 epoch, flags {' '.join(extra) or '(none)'}; "
                    "wall time includes start-up, data, validation and checkpoints; peak RSS is host memory")
        sft_best = tmp / "train_sft.py" / "best_model.pt"
        runs = [("train_sft.py", ["train_sft.py"], "sft"),
                ("train_student_kd.py imitation", ["train_student_kd.py", "--kd-method", "imitation",
                                                   "--teacher-checkpoint", str(teacher_ckpt)], "kd"),
                ("train_student_kd.py at", ["train_student_kd.py", "--kd-method", "at",
                                            "--teacher-checkpoint", str(sft_best), "--init-from-sft",
                                            str(sft_best)], "kd")]
        if args.tiny:  # each process is mostly start-up at this size: the at run covers KD
            runs = [run for run in runs if "imitation" not in run[0]]
        for name, script, kind in runs:
            seconds, rss, error = run_process([*script, *common, "--epochs", "1",
                                               "--exp-dir", str(tmp / name.replace(" ", "_"))], args.threads)
            count = n_train or 1
            ratio = flops[kind] * args.size ** 2 * count / seconds / 1e9 / roof
            text = (f"{seconds:.1f} s wall, {seconds / count:.3f} s/slice, {ratio:.2f} of roofline, "
                    f"peak RSS {rss:.0f} MB")
            report.cell(f"{name} (whole process)", column, text if error is None else f"FAILED ({seconds:.1f} s)")
            if error is not None:
                report.note(f"{name} failed: {error}", failed=True)
        if args.check:
            exp = tmp / "interrupted"
            ok, text = interrupt_and_resume(["train_sft.py", *common, "--exp-dir", str(exp)], exp, args.threads)
            report.note(f"resume: train_sft.py {'ok' if ok else 'FAILED'}: {text}", failed=not ok)


if __name__ == "__main__":
    run_cli(main)
