"""The compression report (scripts/compression.py, models/inference/cost.py): FLOPs as the formula gives them, ratios
that agree with the counts, the table, JSON and plot written. No timing is asserted."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import cli_error
from models.checkpoints.format import model_payload
from models.checkpoints.io import save_checkpoint
from models.inference.cost import count_parameters, forward_flops, pareto_front, peak_memory_bytes, synthetic_inputs
from models.nets.dccnn import DCCNN, STUDENT, TEACHER
from scripts import compression


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
