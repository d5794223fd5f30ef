"""The compression report (scripts/compression.py, models/inference/cost.py): FLOPs as the formula gives them, ratios
that agree with the counts, the table, JSON and plot written. No timing is asserted."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import cli_error, make_dataset
from data.dataset import SliceDataset
from evaluate import main as evaluate_main
from models.checkpoints.format import model_payload
from models.checkpoints.io import save_checkpoint
from models.inference.cost import count_parameters, forward_flops, pareto_front, peak_memory_bytes, synthetic_inputs
from models.nets.dccnn import DCCNN, STUDENT, TEACHER
from scripts import compression
from test_inference_modes import BF16_TOLERANCE, FUSED_TOLERANCE


def test_flops_of_a_known_convolution_are_the_formula():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    # 2 FLOPs per multiply-add, 3 x 3 taps, every output pixel of every channel and sample.
    assert forward_flops(conv, torch.rand(2, 3, 8, 12)) == 2 * 9 * 3 * 5 * 8 * 12 * 2


@pytest.mark.parametrize("config", [TEACHER, STUDENT])
def test_dccnn_flops_are_its_convolutions(config):
    net = DCCNN(config).eval()
    size = 16
    c = config.channels
    per_pixel = 2 * 9 * (c + (config.n_convs - 2) * c * c + c)  # I -> C, C -> C ..., C -> I with I = 1
    assert forward_flops(net, *synthetic_inputs(size, 1)) == config.n_cascades * per_pixel * size * size


def test_peak_memory_covers_weights_inputs_and_a_hidden_map():
    net = DCCNN(STUDENT).eval()
    inputs = synthetic_inputs(32, 1)
    weights = count_parameters(net) * 4
    hidden = 32 * 32 * 32 * 4  # one (1, 32, 32, 32) float32 activation
    assert peak_memory_bytes(net, *inputs) >= weights + sum(t.numel() * t.element_size() for t in inputs) + hidden


def test_pareto_front():
    # (latency, PSNR): b is slower and worse than a; d is the slowest but best.
    points = [(1.0, 30.0), (2.0, 29.0), (1.5, 31.0), (3.0, 32.0), (0.5, 28.0)]
    assert pareto_front(points) == [4, 0, 2, 3]


def test_report_is_written_and_its_ratios_agree_with_the_counts(tmp_path, capsys, monkeypatch):
    # Properties only: one roofline round per cell and one profiled call are enough.
    monkeypatch.setattr(compression, "ROOFLINE_PROBE_ROUNDS", 1)
    monkeypatch.setattr(compression, "PROFILE_CALLS", 1)
    torch.manual_seed(0)
    paths = {"teacher": tmp_path / "t.pt", "student": tmp_path / "s.pt"}
    for name, config in (("teacher", TEACHER), ("student", STUDENT)):
        save_checkpoint(model_payload(DCCNN(config), run_name=name), paths[name])
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "summary.json").write_text(json.dumps({
        "teacher": {"PSNR": {"mean": 31.0}, "SSIM": {"mean": 0.9}},
        "student": {"PSNR": {"mean": 30.25}, "SSIM": {"mean": 0.875}},
        "checkpoints": {"teacher": str(paths["teacher"]), "student": str(paths["student"])}}))
    out = tmp_path / "report"
    compression.main(["--checkpoints", str(paths["teacher"]), str(paths["student"]), "--eval-dir", str(evaluation),
                      "--out-dir", str(out), "--sizes", "16", "--throughput-batch", "2", "--repeats", "1", "--profile"])
    report = json.loads((out / "compression.json").read_text())
    assert report["networks"] == ["teacher", "student"]
    assert report["costs"]["teacher"]["parameters"] == 141_765 and report["costs"]["student"]["parameters"] == 49_285
    ratios = report["ratios"]
    assert ratios["teacher"]["parameters"] == ratios["teacher"]["flops"] == ratios["teacher"]["speed_up"] == 1.0
    assert ratios["student"]["parameters"] == pytest.approx(141_765 / 49_285)
    flops = {n: report["costs"][n]["flops"]["16"] for n in report["networks"]}
    assert ratios["student"]["flops"] == pytest.approx(flops["teacher"] / flops["student"])
    assert ratios["student"]["PSNR_difference"] == pytest.approx(-0.75)
    cell = report["ratio_cell"]
    latency = {r["network"]: r["median_s"] for r in report["latency"] if all(r[k] == v for k, v in cell.items())}
    assert ratios["student"]["speed_up"] == pytest.approx(latency["teacher"] / latency["student"])
    # The fused mode (default --modes exact fused) is timed too, against the teacher in the same mode.
    assert {r["mode"] for r in report["latency"]} == {"exact", "fused"}
    assert ratios["student"]["speed_up_by_mode"]["fused"] == pytest.approx(latency["teacher+fused"] /
                                                                           latency["student+fused"])
    # Every cell: 1 thread and all, batch 1 and 2, both networks, each with its own roofline and a fraction of it.
    assert {(r["threads"], r["batch"]) for r in report["latency"]} >= {(1, 1), (1, 2)}
    for row in report["latency"]:
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        gflops = flops[row["network"].split("+")[0]] / row["median_s"] / 1e9
        assert row["of_roofline"] == pytest.approx(gflops / row["roofline_gflops"])
    # The profile splits the convolutions into the 32 -> 32 ones and the 1-channel ones, per network and mode.
    assert set(report["profile"]) == {"teacher", "student", "teacher+fused", "student+fused"}
    for found in report["profile"].values():
        seconds = found["seconds"]
        assert seconds[compression.WIDE_CONVOLUTIONS] > 0 and seconds[compression.NARROW_CONVOLUTIONS] > 0
    text = (out / "compression.md").read_text()
    assert "Measured on:" in text and "2.88:1" in text and "-0.75 dB" in text
    assert (out / "compression.png").stat().st_size > 1000
    err = cli_error(compression.main, ["--checkpoints", str(paths["teacher"]), "--eval-dir", str(tmp_path),
                                       "--out-dir", str(tmp_path / "x")], capsys)
    assert "summary.json" in err


def _checkpoints(folder):
    """A random D5C5 teacher and D3C5 student saved as this project's checkpoints (named teacher, student)."""
    torch.manual_seed(0)
    paths = {"teacher": folder / "t.pt", "student": folder / "s.pt"}
    for name, config in (("teacher", TEACHER), ("student", STUDENT)):
        save_checkpoint(model_payload(DCCNN(config), run_name=name), paths[name])
    return paths


def test_each_mode_is_scored_as_evaluate_scores_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compression, "ROOFLINE_PROBE_ROUNDS", 1)
    root = make_dataset(tmp_path / "data")  # 32 x 32, 4x; validation: one volume of 4 slices
    paths = _checkpoints(tmp_path)
    checkpoints = [str(paths["teacher"]), str(paths["student"])]
    evaluate_main(["--checkpoints", *checkpoints, "--data-root", str(root), "--acc", "4x", "--out-dir",
                   str(tmp_path / "eval"), "--device", "cpu", "--no-cs"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    out = tmp_path / "report"
    compression.main(["--checkpoints", *checkpoints, "--data-root", str(root), "--acc", "4x", "--out-dir", str(out),
                      "--sizes", "16", "--throughput-batch", "1", "--repeats", "1"])
    report = json.loads((out / "compression.json").read_text())
    found = report["mode_quality"]["networks"]
    assert report["mode_quality"]["split"] == summary["split"] == "validation"
    # Per-slice PSNR of the exact network, for the bound on the fused mode's change below.
    with (tmp_path / "eval" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    targets = [item.target.max().item() for item in SliceDataset(root, "validation", "4x")]
    for name in ("teacher", "student"):
        # The same forward, batches, layout and metrics as evaluate.py in this process: the same numbers.
        exact = found[name]["exact"]
        assert exact["PSNR"] == summary[name]["PSNR"]["mean"] and exact["SSIM"] == summary[name]["SSIM"]["mean"]
        assert exact["slices"] == summary[name]["PSNR"]["n"] == 4
        assert report["quality"][name] == {"PSNR": exact["PSNR"], "SSIM": exact["SSIM"]}
        # fused: tests/test_inference_modes.py's tolerance, of each slice's maximum. A slice's RMSE moves by at
        # most the largest difference d (triangle inequality), so its PSNR by at most -20 log10(1 - d / RMSE);
        # the mean over slices by at most that for the smallest RMSE, R_min 10^(-PSNR_max / 20).
        fused = found[name]["fused"]
        assert fused["max_relative_difference"] < FUSED_TOLERANCE
        psnr_max = max(float(row["PSNR"]) for row in rows if row["model"] == name)
        rmse_min = min(targets) * 10 ** (-psnr_max / 20)
        assert fused["max_abs_difference"] < rmse_min / 2
        assert abs(fused["PSNR_change"]) <= -20 * math.log10(1 - fused["max_abs_difference"] / rmse_min)
        assert fused["PSNR_change"] == pytest.approx(fused["PSNR"] - exact["PSNR"])
        bf16 = found[name]["bf16"]
        assert all(math.isfinite(bf16[key]) for key in ("PSNR", "SSIM", "PSNR_change", "SSIM_change",
                                                         "max_abs_difference", "max_relative_difference"))
        assert 0 < bf16["max_relative_difference"] < BF16_TOLERANCE
    text = (out / "compression.md").read_text()
    assert "Quality in each mode" in text and "| student | bf16 |" in text and "| teacher | fused |" in text

    # The quality columns added to an earlier report's timings, which are kept as they were.
    again = tmp_path / "again"
    compression.main(["--checkpoints", *checkpoints, "--data-root", str(root), "--acc", "4x", "--out-dir",
                      str(again), "--timings-from", str(out), "--split", "validation"])
    second = json.loads((again / "compression.json").read_text())
    assert second["latency"] == report["latency"] and second["machine"] == report["machine"]
    assert second["mode_quality"]["networks"]["student"]["exact"] == found["student"]["exact"]
    assert f"from {out}" in (again / "compression.md").read_text()
    capsys.readouterr()  # the progress bars so far
    err = cli_error(compression.main, ["--checkpoints", checkpoints[1], "--out-dir", str(tmp_path / "x"),
                                       "--timings-from", str(out)], capsys)
    assert "--timings-from" in err and not (tmp_path / "x").exists()
    err = cli_error(compression.main, ["--checkpoints", *checkpoints, "--out-dir", str(tmp_path / "x"),
                                       "--acc", "4x"], capsys)
    assert "--data-root" in err


def test_the_committed_report_rebuilds_from_its_json():
    docs = Path(__file__).resolve().parents[1] / "docs" / "compression"
    report = json.loads((docs / "compression.json").read_text())
    assert compression.table(report) == (docs / "compression.md").read_text()
