"""scripts/benchmark.py keeps running (tiny sizes; it measures, it never asserts a speed)."""
from __future__ import annotations

from conftest import run_cli


def test_benchmark_prints_every_row_and_the_whole_process_runs():
    result = run_cli("scripts/benchmark.py", "--size", "16", "--slices", "4", "--val-slices", "2",
                     "--repeats", "1", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("roofline:", "teacher", "student", "sft", "kd-imitation", "kd-at", "kd-fsp", "eval",
                "train_sft.py", "train_student_kd.py imitation", "train_student_kd.py at"):
        assert row in result.stdout, row
    process_rows = [line for line in result.stdout.splitlines() if line.startswith("train_")]
    assert all(float(line.split()[-1]) > 0 for line in process_rows)  # a peak RSS was read for each run
