"""scripts/benchmark.py keeps running (tiny sizes; it measures, it never asserts a speed)."""
from __future__ import annotations

import re

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_benchmark_prints_every_step_in_both_layouts(tmp_path):
    # The whole-process part runs in tests/test_gpu_check.py (the same code, with --check's flags).
    result = run_cli("-m", "scripts.benchmark", "--size", "16", "--repeats", "2", "--threads", "1",
                     "--skip-processes", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"CPU .+, \d+ cores", out)  # the CPU model and its vector ISA
    assert "training (--memory-format auto) picks" in out and "evaluate.py picks" in out
    assert "roofline, 3x3 32->32 conv" in out
    for step in ("teacher", "student", "sft (branchwise)", "kd-imitation", "kd-at", "kd-fsp", "eval"):
        for layout in ("channels_last", "contiguous"):
            assert f"| {step}, {layout} | " in out, (step, layout)
    assert (tmp_path / "table.md").read_text() in out


def test_one_layout_and_bf16_only_time_what_was_asked(tmp_path):
    result = run_cli("-m", "scripts.benchmark", "--size", "8", "--repeats", "1", "--threads", "1",
                     "--memory-format", "contiguous", "--precision", "bf16", "--skip-processes",
                     "--out", str(tmp_path))  # the old spelling of --out-dir still works
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "table.md").is_file()
    assert "| teacher, contiguous | " in result.stdout and "channels_last |" not in result.stdout
    assert "| step | bf16 (--amp) |" in result.stdout


def test_bad_sizes_are_one_line_errors():
    result = run_cli("-m", "scripts.benchmark", "--size", "0")
    assert result.returncode == 2 and result.stderr.strip() == "error: --size must be at least 1, got 0"
