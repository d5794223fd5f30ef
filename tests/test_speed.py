"""models/training/speed.py: the measured memory layout and the SFT step variants change speed, never results."""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from conftest import make_dataset, run_cli
from models.training import speed
from models.nets.dccnn import DCCNN, TEACHER
from models.nets.sft import SFTNet, sft_forward_backward, sft_loss
from test_fast_path import grads, inputs


def test_default_layout_unless_the_other_wins_by_the_margin_in_every_round():
    assert speed.pick_layout({"channels_last": [1.0, 1.0], "contiguous": [0.95, 0.8]}) == "channels_last"
    assert speed.pick_layout({"channels_last": [1.0, 2.0], "contiguous": [0.85, 1.7]}) == "contiguous"
    assert speed.pick_layout({"channels_last": [0.5, 0.5], "contiguous": [1.0, 1.0]}) == "channels_last"


def test_layout_is_measured_once_per_process_and_size(monkeypatch):
    calls = []

    def fake(device, size, amp=False, backward=True, batch=1):
        calls.append(size)
        return {"channels_last": [2.0, 2.0], "contiguous": [1.0, 1.0]}
    monkeypatch.setattr(speed, "time_conv_layouts", fake)
    monkeypatch.setattr(speed, "_layout_decisions", {})
    cpu = torch.device("cpu")
    assert speed.measured_layout(cpu, (24, 24))[0] == "contiguous"
    assert speed.measured_layout(cpu, (24, 24))[0] == "contiguous"
    speed.measured_layout(cpu, (16, 16))
    assert calls == [(24, 24), (16, 16)]


def test_explicit_and_recorded_layouts_win_over_auto(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    cpu = torch.device("cpu")
    assert speed.resolve_memory_format("channels_last", cpu, (8, 8)) == "channels_last"
    assert speed.resolve_memory_format("auto", cpu, (8, 8), recorded="channels_last") == "channels_last"
    assert speed.resolve_memory_format("auto", cpu, (240, 240), recorded=None) == "contiguous"


@pytest.mark.parametrize("isa, backward, size, layout", [
    ("AVX2", True, 240, "contiguous"), ("AVX2", False, 240, "channels_last"), ("AVX2", True, 64, "channels_last"),
    ("AVX512", True, 240, "channels_last"), ("DEFAULT", True, 240, "channels_last")])
def test_auto_on_a_cpu_is_fixed_by_its_isa_and_never_timed(monkeypatch, isa, backward, size, layout):
    """Timing at start-up under load could flip the layout between two runs of the same seed."""
    def no_timing(*args, **kwargs):
        raise AssertionError("auto timed the layouts on a CPU")
    monkeypatch.setattr(speed, "time_conv_layouts", no_timing)
    monkeypatch.setattr(speed, "_layout_decisions", {})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    assert speed.auto_layout(torch.device("cpu"), (size, size), backward=backward) == layout


def test_measurement_times_both_layouts():
    seconds = speed.time_conv_layouts(torch.device("cpu"), (8, 8))
    assert seconds.keys() == speed.MEMORY_FORMATS.keys()
    rounds = {len(times) for times in seconds.values()}
    assert len(rounds) == 1 and speed.MEASURE_ROUNDS[0] <= rounds.pop() <= speed.MEASURE_ROUNDS[1]
    assert all(0 < t < 1 for times in seconds.values() for t in times)


def test_both_layouts_give_the_same_training_gradients():
    zf, kspace, mask, target = inputs(size=24)
    results = []
    for fmt in speed.MEMORY_FORMATS.values():
        torch.manual_seed(0)
        model = DCCNN(TEACHER).to(memory_format=fmt)
        loss = F.l1_loss(model(zf, kspace, mask), target)
        loss.backward()
        results.append((loss.detach(), grads(model)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-7)
    for key, value in grads_a.items():
        torch.testing.assert_close(value, grads_b[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", speed.SFT_VARIANTS)
def test_every_sft_variant_gives_the_branchwise_gradients(variant):
    zf, kspace, mask, target = inputs(size=24, seed=2)
    torch.manual_seed(0)
    reference = SFTNet()
    expected_loss, _ = sft_forward_backward(reference, zf, kspace, mask, target)
    torch.manual_seed(0)
    model = SFTNet()
    if variant == "branchwise":
        loss, _ = sft_forward_backward(model, zf, kspace, mask, target)
    else:
        teacher_out, branches = model(zf, kspace, mask, batch_branches=variant == "joint-batched")
        loss, _ = sft_loss(teacher_out, branches, target)
        loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-5, atol=1e-7)
    expected = grads(reference)
    got = grads(model)
    assert got.keys() == expected.keys()
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-6)


def test_batched_branches_accept_a_broadcast_mask():
    zf, kspace, mask, _ = inputs(size=16)
    model = SFTNet()
    _, separate = model(zf, kspace, mask)
    _, batched = model(zf, kspace, mask[:1], batch_branches=True)
    for a, b in zip(separate, batched):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_every_device_type_has_a_known_sft_variant():
    assert set(speed.SFT_VARIANT) >= {"cpu", "cuda"}
    assert all(v in speed.SFT_VARIANTS for v in speed.SFT_VARIANT.values())
    assert speed.sft_variant(torch.device("meta")) == speed.SFT_VARIANT["cpu"]


@pytest.mark.slow
def test_a_run_records_its_layout_and_resume_reuses_it(tmp_path):
    data = make_dataset(tmp_path / "data", size=16, train_volumes=1, slices=2)
    exp = tmp_path / "run"
    base = ["train_teacher.py", "--model", "student", "--data-root", str(data), "--exp-dir", str(exp),
            "--no-progress", "--batch-size", "2"]
    first = run_cli(*base, "--epochs", "1", "--memory-format", "contiguous")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((exp / "config.json").read_text())["memory_format"] == "contiguous"
    resumed = run_cli(*base, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ckpt = torch.load(exp / "model.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["memory_format"] == "contiguous"


def test_unknown_memory_format_is_a_one_line_error(tmp_path):
    result = run_cli("train_teacher.py", "--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "x"),
                     "--memory-format", "nhwc")
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "--memory-format" in result.stderr


def test_layout_decision_is_kept_per_float32_setting_and_batch(monkeypatch):
    """A TF32 decision must not reuse the IEEE float32 one: they time different kernels."""
    calls = []

    def fake(device, size, amp=False, backward=True, batch=1):
        calls.append((speed.float32_settings()[0], batch))
        return {"channels_last": [1.0, 1.0], "contiguous": [1.0, 1.0]}
    monkeypatch.setattr(speed, "time_conv_layouts", fake)
    monkeypatch.setattr(speed, "_layout_decisions", {})
    cpu = torch.device("cpu")
    for tf32 in (False, True, False):
        with speed.float32_mode(tf32=tf32):
            speed.measured_layout(cpu, (8, 8), batch=4)
    speed.measured_layout(cpu, (8, 8), batch=2)
    tf32, ieee = ("tf32", "ieee") if isinstance(speed.float32_settings()[0], str) else (True, False)
    assert calls == [(ieee, 4), (tf32, 4), (speed.float32_settings()[0], 2)]


def test_tf32_mode_is_for_convolutions_only():
    """The training scripts keep PyTorch's defaults: TF32 convolutions, IEEE matmuls."""
    before = speed.float32_settings()
    with speed.float32_mode(tf32=True):
        conv, matmul = speed.float32_settings()
        assert conv in ("tf32", True) and matmul in ("ieee", False)
    with speed.float32_mode(tf32=False):
        assert speed.float32_settings() in (("ieee", "ieee"), (False, False))
    assert speed.float32_settings() == before

