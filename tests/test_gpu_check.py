"""scripts/gpu_check.sh keeps running: its CPU side at CI size (the GPU side needs a GPU machine)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def gpu_check(*args: str, out) -> subprocess.CompletedProcess:
    """Run the script; about a minute on an idle 2-core machine (five Python start-ups), far longer under load."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args, "--out-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


def test_cpu_side_runs_every_part_and_writes_the_table(tmp_path):
    result = gpu_check("--device", "cpu", "--tiny", "--threads", "1", out=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert "AMD" in table or "Intel" in table or "CPU" in table  # the CPU model is named
    assert "CUDA tests (tests/test_cuda.py): " in table and "skipped" in table
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
    header = table.splitlines()[0]
    assert header in result.stdout  # the same table is printed
    assert "| step | float32, TF32 off | bf16 (--amp) |" in table


def test_without_a_gpu_the_gpu_run_is_a_one_line_error(tmp_path):
    result = gpu_check(out=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --check: no CUDA device is visible") and result.stderr.count("\n") == 1
    result = gpu_check("--device", "cpu", "--precision", "tf32", out=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: --precision tf32 needs --device cuda")
