"""scripts/benchmark.py keeps running (tiny sizes; it measures, it never asserts a speed), and its statistics."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli
from models.training import speed
from scripts import benchmark, gpu_check


@pytest.mark.slow
def test_benchmark_prints_every_step_in_both_layouts(tmp_path):
    # The whole-process part runs in tests/test_gpu_check.py (the same code, with --check's flags).
    result = run_cli("-m", "scripts.benchmark", "--size", "16", "--repeats", "2", "--threads", "1",
                     "--skip-processes", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    # The machine (utils.describe_machine): CPU model, cores, vector ISA, torch build, threads.
    assert re.search(r"on .+, \d+ cores, ISA \w+.*, torch \S+, 1 thread\.", out)
    assert re.search(r"roofline, 3x3 32->32 conv fwd\+bwd in float32 at batch 4: median [\d.]+ GFLOP/s \(min [\d.]+, "
                     r"max [\d.]+ over 7 rounds; (channels_last|contiguous)\)", out)
    assert "training (--memory-format auto) picks" in out and "evaluate.py picks" in out
    assert "roofline, 3x3 32->32 conv" in out
    for step in ("teacher", "student", "sft (branchwise)", "kd-imitation", "kd-at", "kd-fsp", "eval"):
        for layout in ("channels_last", "contiguous"):
            assert f"| {step}, {layout} | " in out, (step, layout)
    assert (tmp_path / "table.md").read_text() in out


@pytest.mark.slow
def test_one_layout_and_bf16_only_time_what_was_asked(tmp_path):
    result = run_cli("-m", "scripts.benchmark", "--size", "8", "--repeats", "1", "--threads", "1",
                     "--memory-format", "contiguous", "--precision", "bf16", "--skip-processes", "--coils", "3",
                     "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "table.md").is_file()
    assert "| teacher, contiguous | " in result.stdout and "channels_last |" not in result.stdout
    assert "| step | bf16 (--amp) |" in result.stdout
    # --coils: the multi-coil rows and the DF share beside them.
    assert "| teacher, multi-coil 3 coils, contiguous | " in result.stdout
    assert "| eval, multi-coil 3 coils, contiguous | " in result.stdout
    assert "multi-coil, 3 coils (teacher D5C5, 2-channel images): the five DF calls" in result.stdout


@pytest.mark.slow
def test_bad_sizes_are_one_line_errors():
    result = run_cli("-m", "scripts.benchmark", "--size", "0")
    assert result.returncode == 2 and result.stderr.strip() == "error: --size must be at least 1, got 0"


def test_roofline_is_the_median_of_its_rounds_with_the_spread_beside_it():
    roof = benchmark.Roofline([120.0, 260.0, 250.0, 255.0, 240.0], "channels_last")
    assert roof.median == 250.0  # one slow round (another job on the cores) does not move it
    assert roof.text() == "median 250.0 GFLOP/s (min 120.0, max 260.0 over 5 rounds; channels_last)"
    measured = benchmark.roofline(1, 8, torch.device("cpu"), torch.float32, backward=True, rounds=3)
    assert len(measured.gflops) == 3 and all(g > 0 for g in measured.gflops)
    assert measured.layout in speed.MEMORY_FORMATS


def test_process_cells_give_the_median_and_range_of_the_rounds():
    rounds = [(10.0, 0.5, 1024), (12.0, 0.4, 2048), (9.0, 0.6, 1024)]
    assert gpu_check.process_cell(rounds, 32) == ("10.0 s wall (9.0-12.0) over 3 runs, 0.312 s/slice, 0.50 of roofline "
                                                  "(0.40-0.60), peak RSS 2 MB")
    assert gpu_check.process_cell([(3.0, None, 512)], None) == "3.0 s wall (3.0-3.0), peak RSS 0 MB"


def test_profile_sorts_ops_into_where_the_time_goes():
    events = [SimpleNamespace(key=key, self_cpu_time_total=us) for key, us in (
        ("aten::mkldnn_convolution", 3e6), ("aten::convolution_backward", 2e6), ("aten::_fft_c2c", 5e5),
        ("aten::threshold_backward", 2e5), ("aten::copy_", 1e5), ("Optimizer.step#Adam.step", 4e4),
        ("aten::_foreach_mul_", 6e4), ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 3e4),
        ("aten::where", 7e4))]
    seconds = benchmark.profile_categories(events)
    assert seconds["convolutions"] == pytest.approx(5.0) and seconds["FFT (data fidelity)"] == pytest.approx(0.5)
    assert seconds["ReLU and its backward"] == pytest.approx(0.2)
    assert seconds["layout conversions and copies"] == pytest.approx(0.1)
    assert seconds["optimiser (Adam)"] == pytest.approx(0.1)
    assert seconds["data loading (DataLoader)"] == pytest.approx(0.03)
    assert seconds["other ops (DF where, losses, elementwise)"] == pytest.approx(0.07)


@pytest.mark.slow
def test_profile_and_repeated_processes_run(tmp_path):
    result = run_cli("-m", "scripts.benchmark", "--tiny", "--threads", "1", "--only", "profile", "processes",
                     "--process-repeats", "2", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    for name in ("train_sft.py", "train_student_kd.py at"):
        assert re.search(rf"profile: {name}, 1 epoch in this process: [\d.]+ s under the profiler; .*convolutions "
                         r"[\d.]+ s .*outside every op \(Python, the profiler\) [\d.]+ s", table), name
    assert re.search(r"\| train_sft.py \(whole process\) \| [\d.]+ s wall \([\d.]+-[\d.]+\) over 2 runs, "
                     r".* of roofline \([\d.]+-[\d.]+\)", table)
    assert re.search(r"\| start-up \(imports only\) \| [\d.]+ s wall", table)
    for round_ in (1, 2):  # a roofline probe before each round of processes
        assert re.search(rf"processes: round {round_}: roofline probe \(fwd\+bwd\) median [\d.]+ GFLOP/s", table)
