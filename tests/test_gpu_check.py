"""scripts/gpu_check.sh keeps running, and gives a whole table when a step hangs or fails: its CPU side at CI size
(the GPU side needs a GPU machine)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from scripts import benchmark
from scripts import gpu_check as runner
from scripts.supervise import Report


def gpu_check(*args: str, out, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the script; about half a minute on an idle 2-core machine (ten Python start-ups), longer under load."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args, "--out-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


def without(tmp_path, *modules: str) -> dict:
    """Environment in which importing ``modules`` fails as if they were not installed (the GPU image has no
    pytest-xdist, nibabel or nilearn), pytest's plugins included."""
    blocked = tmp_path / "blocked"
    for module in modules:
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text(f"raise ImportError('{module} is not installed here')\n")
    return {"PYTHONPATH": str(blocked), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.mark.slow
def test_cpu_side_runs_every_part_and_writes_the_table(tmp_path):
    out = tmp_path / "check"
    result = gpu_check("--device", "cpu", "--tiny", "--threads", "1", out=out,
                       env=without(tmp_path, "xdist", "nibabel", "nilearn"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "AMD" in table or "Intel" in table or "CPU" in table  # the CPU model is named
    assert "CUDA tests (tests/test_cuda.py): " in table and "8 skipped" in table
    for row in ("teacher, channels_last", "teacher, contiguous", "kd-at, contiguous", "eval, channels_last",
                "SFT variant branchwise", "SFT variant joint-batched", "train_sft.py (whole process)",
                "train_student_kd.py at (whole process)"):
        assert f"| {row}" in table, row
    rows = [line for line in table.splitlines() if line.startswith("| train_")]
    assert [row.split(" (whole process)")[0] for row in rows] == ["| train_sft.py", "| train_student_kd.py at"]
    assert all(int(re.search(r"peak RSS (\d+) MB", row).group(1)) > 0 for row in rows)
    assert "fastest SFT step variant on cpu" in table
    assert "resume: train_sft.py ok: SIGINT stopped it in epoch 1" in table
    assert "FAILED" not in table
    assert re.search(r"time: tests \d+ s, steps \d+ s, processes \d+ s, resume \d+ s; total \d+ s", table)
    assert table in result.stdout  # the same table is printed
    assert "| step | float32, TF32 off | bf16 (--amp) |" in table
    # Each part ran alone (--only PART) in its own folder, its logs written there.
    assert "whole process" not in (out / "steps" / "table.md").read_text()
    assert "| teacher" not in (out / "processes" / "table.md").read_text()
    tests_log = (out / "tests" / "cuda_tests.log").read_text()  # -v: each test named, so a hang shows where
    assert "test_one_process_nccl_group_initialises_and_trains_a_step SKIPPED" in tests_log
    assert (out / "processes" / "train_sft.py.log").stat().st_size > 0
    assert {p.name for p in (out / "resume").glob("*.log")} == {"part.log", "interrupted.log", "resumed.log"}


@pytest.mark.slow
def test_without_a_gpu_the_gpu_run_is_a_one_line_error(tmp_path):
    result = gpu_check(out=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --check: no CUDA device is visible") and result.stderr.count("\n") == 1
    result = gpu_check("--device", "cpu", "--precision", "tf32", out=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: --precision tf32 needs --device cuda")


def check(tmp_path, capsys, *flags: str) -> tuple[str, str]:
    """benchmark.py --check on the CPU in this process; (table.md, stdout). It must exit 1: something failed."""
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--check", "--device", "cpu", "--tiny", "--threads", "1", "--out-dir", str(tmp_path),
                        *flags])
    assert exit_.value.code == 1
    return (tmp_path / "table.md").read_text(), capsys.readouterr().out


@pytest.mark.slow  # ~8 s: a real tiny step run, and 5 s of its hung step
def test_a_hung_and_a_failing_step_are_failed_cells_and_the_table_is_complete(tmp_path, capsys, monkeypatch):
    real_step = benchmark.Workload.step

    def faulty_step(self, name, fmt):
        if name == "student":
            return lambda: time.sleep(60)  # a hang: far past --cell-timeout
        if name == "kd-at":
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")
        return real_step(self, name, fmt)
    monkeypatch.setattr(benchmark.Workload, "step", faulty_step)
    start = time.monotonic()
    table, stdout = check(tmp_path, capsys, "--only", "steps", "--precision", "fp32", "--memory-format",
                          "contiguous", "--cell-timeout", "5")  # a tiny step takes ~0.1 s
    assert time.monotonic() - start < 40
    cells = dict(line[2:-2].split(" | ") for line in table.splitlines()
                 if line.startswith("| ") and not line.startswith("| step"))
    assert cells["student, contiguous"] == "FAILED (Overran: over its 5 s limit)", table
    assert cells["kd-at, contiguous"].startswith("FAILED (RuntimeError: cuDNN error")
    # Every other step still ran, after the hang and after the failure.
    for row in ("teacher", "sft (branchwise)", "kd-imitation", "kd-fsp", "eval"):
        assert re.match(r"[\d.e-]+ s/slice", cells[f"{row}, contiguous"]), row
    assert re.match(r"[\d.e-]+ s/slice", cells["SFT variant joint, channels_last"])  # auto's layout at 16 px
    assert "float32, TF32 off: student FAILED: Overran: over its 5 s limit" in table
    assert table in stdout  # printed at the end
    assert json.loads((tmp_path / "report.json").read_text())["failed"] is True


@pytest.mark.slow
def test_a_hung_and_a_failing_process_are_failed_cells_and_the_rest_runs(tmp_path, capsys, monkeypatch):
    def runs(teacher_ckpt, sft_best, tiny):
        python = ["-c"]
        return [("hangs", [*python, "import time; print('started'); time.sleep(60)"], "sft"),
                ("fails", [*python, "import sys; sys.exit('no model.pt in /x: out of memory')"], "kd"),
                ("works", [*python, "pass"], "kd")]
    monkeypatch.setattr(runner, "process_runs", runs)
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the check must unbuffer its children itself
    start = time.monotonic()
    table, stdout = check(tmp_path, capsys, "--only", "processes", "--process-timeout", "3")
    assert time.monotonic() - start < 40
    assert "| hangs (whole process) | - | FAILED (Overran: over its 3 s limit, killed; log " in table
    assert "| fails (whole process) | - | FAILED (RuntimeError: exit 1; log " in table
    assert re.search(r"\| works \(whole process\) \| - \| [\d.]+ s wall", table)
    # The notes carry the log's end: what the child printed before it hung or failed.
    assert re.search(r"hangs FAILED: Overran: over its 3 s limit, killed; log \S+hangs.log: started", table)
    assert "fails FAILED: RuntimeError: exit 1; log" in table and "no model.pt in /x: out of memory" in table
    assert table in stdout


def test_a_part_that_never_returns_is_killed_and_the_check_goes_on(tmp_path, capsys, monkeypatch):
    """A CUDA call that never returns cannot be interrupted in its process: the check kills the whole part."""
    def command(argv, part, out, limit, precisions):
        out.mkdir(parents=True)
        code = {"tests": "print('fine')", "steps": "import time; print('stuck in a kernel'); "
                                                   "time.sleep(60)"}[part]
        if part == "tests":
            (out / "report.json").write_text(json.dumps({"notes": ["CUDA tests: 8 passed"],
                                                         "rows": {}, "failed": False}))
        return [sys.executable, "-c", code]
    monkeypatch.setattr(runner, "part_command", command)
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the check must unbuffer its children itself
    start = time.monotonic()
    table, stdout = check(tmp_path, capsys, "--only", "tests", "steps", "resume", "--time-limit", "2")
    assert time.monotonic() - start < 30
    notes = [line[2:] for line in table.splitlines() if line.startswith("- ")]
    assert notes[0] == "CUDA tests: 8 passed"
    assert re.fullmatch(r"steps: FAILED: killed when the check's --time-limit was up \([\d.]+ s left for it\); "
                        r"log \S+part.log: stuck in a kernel", notes[1])
    assert notes[2] == "resume: FAILED: not run, the --time-limit of the check was spent"
    assert re.fullmatch(r"time: tests \d+ s, steps \d+ s, resume 0 s; total \d+ s", notes[3])
    assert table in stdout


@pytest.mark.slow
def test_a_plain_pytest_runs_where_xdist_is_not_installed(tmp_path):
    """The GPU image has no pytest-xdist: pytest.ini must not ask for -n there (tests/conftest.py adds it)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fft.py", "-p", "no:cacheprovider"],
                            cwd=ROOT, env={**os.environ, **without(tmp_path, "xdist")}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", result.stdout) and "bringing up nodes" not in result.stdout


# A part whose step blocks in a call that never returns to Python (SIGALRM masked, as a hung CUDA synchronisation
# would be): only the watchdog thread can end it.
STUCK_STEPS = """
import signal, sys, time
from scripts import benchmark
real_step = benchmark.Workload.step

def stuck_step(self, name, fmt):
    if name == "student":
        return lambda: (signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM}), time.sleep(60))
    return real_step(self, name, fmt)
benchmark.Workload.step = stuck_step
from scripts import supervise
supervise.STUCK_GRACE_S = 1
from scripts import gpu_check
gpu_check.run_cli(gpu_check.main, sys.argv[1:])
"""


@pytest.mark.slow
def test_a_step_stuck_in_a_call_ends_its_part_and_the_next_part_runs(tmp_path, capsys, monkeypatch):
    real_command = runner.part_command

    def command(argv, part, out, limit, precisions):
        if part == "steps":
            return [sys.executable, "-c", STUCK_STEPS, *real_command(argv, part, out, limit, precisions)[3:]]
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps({"notes": ["resume: ran"], "rows": {}, "failed": False}))
        return [sys.executable, "-c", "pass"]
    monkeypatch.setattr(runner, "part_command", command)
    monkeypatch.chdir(ROOT)  # the steps child imports scripts.gpu_check from the repository root
    start = time.monotonic()
    table, stdout = check(tmp_path, capsys, "--only", "steps", "resume", "--precision", "fp32",
                          "--memory-format", "contiguous", "--cell-timeout", "5")
    assert time.monotonic() - start < 120
    assert re.search(r"\| teacher, contiguous \| [\d.e-]+ s/slice", table), table  # the cells before it are kept
    assert "| student, contiguous | FAILED (Overran: stuck in one call 6 s" in table
    assert "float32, TF32 off: student FAILED: Overran: stuck in one call 6 s, which never returned to Python" in table
    assert "- resume: ran" in table  # the next part ran
    assert "| kd-at" not in table  # nothing after the stuck call: its process ended there
    assert table in stdout


def test_a_broken_cuda_context_does_not_end_the_run(tmp_path, monkeypatch):
    """After an illegal memory access every CUDA call raises, empty_cache too: the block is still one FAILED cell."""
    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(benchmark.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(benchmark.torch.cuda, "empty_cache", broken)
    report = Report("header", {"bf16": "bf16 (--amp)"}, tmp_path)
    with report.attempt("bf16 (--amp): teacher", [("teacher, channels_last", "bf16")]):
        broken()
    assert report.failed and report.rows == {
        "teacher, channels_last": {"bf16": "FAILED (RuntimeError: CUDA error: an illegal memory access was encountered)"}}
    assert report.notes == ["bf16 (--amp): teacher FAILED: RuntimeError: CUDA error: an illegal memory access was "
                            "encountered"]
    assert "| teacher, channels_last | FAILED (RuntimeError: CUDA error" in (tmp_path / "table.md").read_text()
