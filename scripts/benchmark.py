"""Benchmark: training-step and evaluation speed against a convolution roofline measured in the same process.

Prints, for the teacher, student, SFT and KD training steps and for evaluation: seconds per slice, slices/s,
achieved GFLOP/s, the ratio to the roofline (a 3x3 32 -> 32 convolution, forward + backward, at the same
batch and size, best memory layout) and peak memory. Then it runs the whole 1-epoch ``train_sft.py`` and
``train_student_kd.py`` as separate processes and prints their wall time and peak RSS, so start-up, data
loading, validation and checkpointing count too. A benchmark, not a test: it never fails on a time.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runnable as `python scripts/benchmark.py` from anywhere: the project root holds the packages.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from data.fft import fft2  # noqa: E402
from data.masks import cartesian_row_mask  # noqa: E402
from data.prepare import undersample, write_volume  # noqa: E402
from models.dccnn import DCCNN, STUDENT, TEACHER  # noqa: E402
from models.kd_losses import build_kd_loss  # noqa: E402
from models.sft import SFTNet, sft_forward_backward  # noqa: E402
from utils import run_cli, save_checkpoint  # noqa: E402

CONV_FLOP = 2 * 9  # multiply-add per 3x3 tap


def block_flops(config) -> int:
    """Forward FLOPs per pixel of one CNN block."""
    c = config.channels
    return CONV_FLOP * (c + (config.n_convs - 2) * c * c + c)


def flops_per_pixel() -> dict[str, float]:
    """Forward + backward counted as 3 x forward, as the issue's figures (1.43 / 0.58 MFLOP) do."""
    t, s = 5 * block_flops(TEACHER), 5 * block_flops(STUDENT)
    branches = (4 + 3 + 2 + 1) * block_flops(STUDENT)
    return {"teacher": 3 * t, "student": 3 * s, "sft": 3 * (t + branches), "kd": t + 3 * s, "eval": t}


def synthetic_data(root: Path, size: int, n_train: int, n_val: int, acc: str = "4x") -> Path:
    """Smooth random volumes of 8 slices, written by data/prepare.py's own writer (the original layout)."""
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


def timeit(fn, repeats: int, warmup: int = 1, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def roofline(batch: int, size: int, device: torch.device, repeats: int, sync, amp: bool) -> tuple[float, str]:
    """Best GFLOP/s of a 3x3 32 -> 32 convolution, forward + backward (input and weight gradients), in the
    precision the steps run in (bfloat16 autocast with ``amp``)."""
    best = (0.0, "")
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(device, memory_format=fmt)
        x = torch.randn(batch, 32, size, size, device=device).to(memory_format=fmt).requires_grad_()
        grad = torch.ones(batch, 32, size, size, device=device).to(memory_format=fmt)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = conv(x)
            out.backward(grad.to(out.dtype))
        seconds = timeit(step, repeats, sync=sync)
        gflops = 3 * CONV_FLOP * 32 * 32 * size * size * batch / seconds / 1e9
        best = max(best, (gflops, name))
    return best


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_benchmarks(args, device: torch.device, sync) -> list[tuple[str, float]]:
    """Seconds per training / evaluation step of each model at batch ``args.batch_size``."""
    b, s = args.batch_size, args.size
    zf = torch.rand(b, 1, s, s, device=device)
    mask = torch.from_numpy(cartesian_row_mask((s, s), "4x"))[None, None].expand(b, 1, s, s).to(device)
    k = fft2(zf) * mask
    target = torch.rand(b, 1, s, s, device=device)
    memory_format = torch.channels_last
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def trainer(model, loss_fn):
        model.to(device, memory_format=memory_format)
        net = torch.compile(model) if args.compile else model
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])

        def step():
            optimizer.zero_grad(set_to_none=True)
            with amp:
                loss = loss_fn(net)
            if loss.requires_grad:  # the SFT path runs its own branch-wise backward
                loss.backward()
            optimizer.step()
        return step

    teacher = DCCNN(TEACHER).to(device, memory_format=memory_format).eval().requires_grad_(False)
    results = []
    for name, model, loss_fn in (
            ("teacher", DCCNN(TEACHER), lambda m: F.l1_loss(m(zf, k, mask), target)),
            ("student", DCCNN(STUDENT), lambda m: F.l1_loss(m(zf, k, mask), target)),
            ("sft", SFTNet(), lambda m: sft_forward_backward(m, zf, k, mask, target)[0])):
        results.append((name, timeit(trainer(model, loss_fn), args.repeats, sync=sync)))
    for method in ("imitation", "at", "fsp"):
        kd = build_kd_loss(method, STUDENT, TEACHER).to(device)
        feats = kd.needs_features

        def kd_loss(m, kd=kd, feats=feats):
            with torch.no_grad():
                t_out = (teacher(zf, k, mask, return_features=True, keep_hidden=kd.keep_teacher_hidden())
                         if feats else teacher(zf, k, mask))
            t_out, t_feats = t_out if feats else (t_out, None)
            s_out = m(zf, k, mask, return_features=feats)
            s_out, s_feats = s_out if feats else (s_out, None)
            return F.l1_loss(s_out, target) + kd.default_weight * kd(s_out, s_feats, t_out, t_feats)
        results.append((f"kd-{method}", timeit(trainer(DCCNN(STUDENT), kd_loss), args.repeats, sync=sync)))

    @torch.inference_mode()
    def evaluate():
        with amp:
            teacher(zf, k, mask)
    results.append(("eval", timeit(evaluate, args.repeats, sync=sync)))
    return results


def run_process(args: list[str], threads: int | None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process.

    The peak is the child's own VmHWM, polled from /proc: getrusage's ru_maxrss of a child also counts the
    pages it inherited from this (large) benchmark process before exec.
    """
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
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
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed: {' '.join(args)}\n{proc.stderr.read()[-2000:]}")
    return seconds, peak_kb / 1024


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=240, help="slice size N (N x N)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--slices", type=int, default=32, help="training slices of the whole-process runs")
    p.add_argument("--val-slices", type=int, default=8)
    p.add_argument("--data-root", type=Path, default=None, help="use this data instead of synthetic data")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models of the step benchmarks")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per benchmark")
    p.add_argument("--skip-processes", action="store_true", help="only the in-process step benchmarks")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    pixels = args.size * args.size
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}")
    print(f"workload: {args.size} x {args.size}, batch {args.batch_size}, amp {args.amp}, compile {args.compile}")
    roof, layout = roofline(args.batch_size, args.size, device, args.repeats, sync, args.amp)
    print(f"roofline: 3x3 32->32 conv fwd+bwd {roof:.1f} GFLOP/s ({layout})\n")
    flops = flops_per_pixel()
    print(f"{'step':<14}{'s/slice':>10}{'slices/s':>10}{'GFLOP/s':>10}{'roofline':>10}")
    for name, seconds in step_benchmarks(args, device, sync):
        per_slice = seconds / args.batch_size
        gflops = flops[name.split("-")[0]] * pixels / per_slice / 1e9
        print(f"{name:<14}{per_slice:>10.4f}{1 / per_slice:>10.1f}{gflops:>10.1f}{gflops / roof:>10.2f}")
    print(f"peak memory of the step benchmarks: {peak_memory_mb(device):.0f} MB "
          f"({'max_memory_allocated' if device.type == 'cuda' else 'RSS'})")
    if args.skip_processes:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data_root or synthetic_data(tmp / "data", args.size, args.slices, args.val_slices)
        common = ["--data-root", str(data), "--epochs", "1", "--batch-size", str(args.batch_size),
                  "--no-progress", "--device", args.device] + (["--amp"] if args.amp else [])
        teacher_ckpt = tmp / "teacher.pt"
        from models.checkpoint import model_payload
        save_checkpoint(model_payload(DCCNN(TEACHER), "teacher"), teacher_ckpt)
        n_train = args.slices if args.data_root is None else None
        print(f"\nwhole 1-epoch processes ({n_train or 'all'} training slices; start-up, data, validation "
              "and checkpoints included):")
        print(f"{'process':<28}{'wall s':>8}{'s/slice':>9}{'roofline':>10}{'peak RSS MB':>13}")
        for name, script, extra, kind in (
                ("train_sft.py", "train_sft.py", [], "sft"),
                ("train_student_kd.py imitation", "train_student_kd.py",
                 ["--kd-method", "imitation", "--teacher-checkpoint", str(teacher_ckpt)], "kd"),
                ("train_student_kd.py at", "train_student_kd.py",
                 ["--kd-method", "at", "--teacher-checkpoint", str(teacher_ckpt)], "kd")):
            seconds, rss = run_process([script, *common, "--exp-dir", str(tmp / name.replace(" ", "_")), *extra],
                                       args.threads)
            count = n_train or 1
            ratio = flops[kind] * pixels * count / seconds / 1e9 / roof
            print(f"{name:<28}{seconds:>8.1f}{seconds / count:>9.3f}{ratio:>10.2f}{rss:>13.0f}")


if __name__ == "__main__":
    run_cli(main)
