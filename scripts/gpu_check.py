"""The GPU check, and the runner of the benchmark: flags, parts, whole processes.

``python -m scripts.benchmark`` (or ``python -m scripts.gpu_check``; scripts/benchmark.py times the steps) runs the
parts ``--only`` names: ``steps`` (in-process step timings), ``processes`` (the whole 1-epoch ``train_sft.py`` and
``train_student_kd.py`` as separate processes: start-up, data, validation and checkpoints included), ``profile``
(one SFT and one KD epoch under torch.profiler) and, for the check, ``tests`` and ``resume``.

``--check`` is the GPU check that ``scripts/gpu_check.sh`` runs, in four parts (``--only`` picks some): ``tests``
(``tests/test_cuda.py``, as a supervised child), ``steps`` (the timings in all three precisions and the SFT step
variants of models/training/speed.py), ``processes`` (with ``--amp --num-workers 4 --preload no``) and ``resume``
(a ``--resume`` after interrupting ``train_sft.py``). Each part runs as its own process and every wait has a limit
(scripts/supervise.py), so a hang, a crash or an exception becomes a FAILED cell or note and the check goes on; the
table is rewritten after every cell in ``--out-dir``/table.md, printed at the end whatever happened, and the exit
code is 1 if anything failed. It needs only torch, numpy, h5py, scipy, scikit-image, tqdm, tensorboard,
torchmetrics, matplotlib and pytest: its data is written by ``data/layout.py``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from models.checkpoints.format import model_payload
from models.checkpoints.io import load_checkpoint, save_checkpoint
from models.training import speed
from scripts.benchmark import (PRECISIONS, TEACHER, flops_per_pixel, largest_ops, part_steps, profile_categories,
                               roofline, synthetic_data)
from scripts.supervise import ROOT, Child, Deadline, Overran, Report, Run
from utils import CliParser, UserError, clean_lines, describe_machine, machine, old_spellings, run_cli

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
    return [sys.executable, "-m", "scripts.gpu_check", *argv, "--only", part, "--out-dir", str(out),
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
    p.add_argument("--sft-variants", action="store_true",
                   help="also time the SFT step variants of models/training/speed.py")
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
                    {p: PRECISIONS[p] for p in precisions}, args.out)
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
