"""Tests of the second network family, models/nets/cascaded_unet.py, at 32 x 32: shapes and the feature contract,
training with train_teacher.py, SFT teacher and student, KD with imitation, at and fitnet, evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import evaluate
import train_sft
import train_student_kd
import train_teacher
from conftest import make_dataset
from data.fft import fft2
from models.nets.cascaded_unet import CascadedUNetConfig
from models.checkpoints.format import load_model, load_reconstructor
from models.nets.dccnn import count_parameters
from models.distill.losses import build_kd_loss
from models.nets.registry import PRESETS, describe_arch
from models.nets.sft import SFTNet
from utils import UserError

TEACHER, STUDENT = PRESETS["unet-teacher"], PRESETS["unet-student"]


def inputs(height: int, width: int, batch: int = 2):
    """zero_filled (B, 1, H, W) float32, kspace_under (B, 1, H, W) complex64, mask (1, 1, H, W) float32; the rows
    are closed under k -> -k, so that DF of a real image reproduces them exactly."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 1, height, width, generator=gen)
    rows = torch.rand(height, generator=gen) < 0.4
    rows = rows | rows[(-torch.arange(height)) % height]
    mask = rows.float()[None, None, :, None].expand(1, 1, height, width)
    kspace_under = fft2(image) * mask
    return torch.fft.ifft2(kspace_under, norm="ortho").abs(), kspace_under, mask


def common(data: Path, exp: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["--data-root", str(data), "--exp-dir", str(exp), "--epochs", str(epochs), "--no-progress", "--seed", "0",
            "--batch-size", "2", *extra]


def checkpoint(exp: Path) -> dict:
    return torch.load(exp / "best_model.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """32 x 32 data (2 training, 2 validation slices), a cascaded U-Net teacher and a U-Net SFT, 1 epoch each."""
    root = tmp_path_factory.mktemp("unet")
    data = make_dataset(root / "data", size=32, train_volumes=1, val_volumes=1, slices=2)
    train_teacher.main(common(data, root / "teacher", "--model", "unet-teacher"))
    train_sft.main(common(data, root / "sft", "--teacher-model", "unet-teacher", "--student-model", "unet-student"))
    return {"data": data, "teacher": root / "teacher", "sft": root / "sft"}


def test_model_list_offers_both_families(capsys):
    with pytest.raises(SystemExit) as stop:
        train_teacher.main(["--model", "list"])
    listed = capsys.readouterr().out
    names = [line.split()[0] for line in listed.splitlines()]
    assert stop.value.code == 0 and names[:2] == ["teacher", "student"]
    assert {"unet-teacher", "unet-student"} <= set(names)
    assert "cascaded U-Net U8L2C5" in listed and "145,685 parameters" in listed


def test_sizes_and_names():
    assert count_parameters(TEACHER.build()) == 145_685 and count_parameters(STUDENT.build()) == 36_525
    assert TEACHER.to_dict() == {"kind": "cascaded-unet", "n_cascades": 5, "levels": 2, "channels": 8,
                                 "residual": False}
    assert describe_arch(STUDENT.to_dict()) == "cascaded U-Net U4L2C5 (5 cascades of a 2-level U-Net, width 4)"


@pytest.mark.parametrize("height, width", [(32, 32), (30, 27)])
def test_any_image_size_keeps_the_feature_contract(height, width):
    torch.manual_seed(0)
    net = TEACHER.build().eval()
    zero_filled, kspace_under, mask = inputs(height, width)
    with torch.no_grad():
        out, feats = net(zero_filled, kspace_under, mask, return_features=True)
        kept = net(zero_filled, kspace_under, mask, return_features=True, keep_hidden={1})[1]
    assert out.shape == (2, 1, height, width) and out.dtype == torch.float32 and len(feats) == 5
    assert [tuple(h.shape) for h in feats[0]["hidden"]] == [(2, c, height, width) for c in TEACHER.hidden_channels]
    assert feats[-1]["out"] is not None and torch.equal(feats[-1]["out"], out)
    assert kept[0]["hidden"][0] is None and torch.equal(kept[0]["hidden"][1], feats[0]["hidden"][1])
    # Hard data fidelity: the measured rows of the output's k-space are the measurements.
    measured = mask.expand_as(kspace_under).bool()
    assert torch.allclose(fft2(out)[measured], kspace_under[measured], atol=1e-5)


def test_residual_refines_the_input():
    torch.manual_seed(0)
    plain = CascadedUNetConfig(n_cascades=1).build()
    residual = CascadedUNetConfig(n_cascades=1, residual=True).build()
    residual.load_state_dict(plain.state_dict())
    zero_filled, kspace_under, mask = inputs(16, 16)
    with torch.no_grad():
        difference = residual.run_cascade(0, zero_filled, kspace_under, mask)[1]["cnn_out"] - \
            plain.run_cascade(0, zero_filled, kspace_under, mask)[1]["cnn_out"]
    assert torch.allclose(difference, zero_filled, atol=1e-6)


def test_train_teacher_trains_and_records_it(runs):
    ckpt = checkpoint(runs["teacher"])
    assert ckpt["arch"] == TEACHER.to_dict() and ckpt["config"]["roles"] == {
        "model": "unet-teacher", "nets": {"unet-teacher": {"cascades": 5, "depth": 2, "width": 8}}}
    assert sum(v.numel() for v in ckpt["model"].values()) == 145_685
    assert ckpt["val_metrics"]["psnr"] > 0
    model, _ = load_model(runs["teacher"] / "best_model.pt")
    assert type(model.config) is CascadedUNetConfig


def test_training_lowers_the_loss(tmp_path, runs):
    exp = tmp_path / "long"
    train_teacher.main(common(runs["data"], exp, "--model", "unet-student", "--lr", "3e-3", epochs=6))
    events = EventAccumulator(str(exp / "summary"))
    events.Reload()
    val = [e.value for e in events.Scalars("val/loss")]
    assert len(val) == 6 and val[-1] < val[0]


def test_size_flags_and_flags_the_family_lacks(tmp_path, runs):
    exp = tmp_path / "small"
    train_teacher.main(common(runs["data"], exp, "--model", "unet-student", "--depth", "1", "--width", "2",
                              "--cascades", "2"))
    assert checkpoint(exp)["arch"] == {"kind": "cascaded-unet", "n_cascades": 2, "levels": 1, "channels": 2,
                                       "residual": False}
    with pytest.raises(UserError, match="--ref-padding does not apply to cascaded U-Net networks; drop it"):
        train_teacher.main(common(runs["data"], tmp_path / "bad", "--model", "unet-teacher", "--ref-padding", "5"))
    assert not (tmp_path / "bad").exists()


def test_sft_with_unet_teacher_and_student(runs):
    ckpt = torch.load(runs["sft"] / "model.pt", map_location="cpu", weights_only=True)
    assert ckpt["arch"] == {"kind": "sft", "teacher": TEACHER.to_dict(), "student": STUDENT.to_dict()}
    # S1 never runs in SFT: it is left out of the optimiser.
    optimised = {i for group in ckpt["optimizer"]["param_groups"] for i in group["params"]}
    assert len(optimised) == len([k for k in ckpt["model"] if not k.startswith("student.cascades.0.")])
    assert type(load_reconstructor(runs["sft"] / "best_model.pt").config) is CascadedUNetConfig


def test_sft_mixes_families_with_equal_cascades():
    torch.manual_seed(0)
    sft = SFTNet(TEACHER, PRESETS["student"])
    teacher_out, branches = sft(*inputs(16, 16))
    assert teacher_out.shape == (2, 1, 16, 16) and len(branches) == 4
    with pytest.raises(ValueError, match="as many student cascades"):
        SFTNet(TEACHER, CascadedUNetConfig(n_cascades=3))


@pytest.mark.parametrize("method", ["at", "fitnet"])
def test_sft_kd_distils_the_unet_student(tmp_path, runs, method):
    sft_path = runs["sft"] / "best_model.pt"
    exp = tmp_path / method
    train_student_kd.main(common(runs["data"], exp, "--teacher-checkpoint", str(sft_path), "--init-from-sft",
                                 str(sft_path), "--kd-method", method))
    ckpt = checkpoint(exp)
    assert ckpt["arch"] == STUDENT.to_dict() and ckpt["run_name"] == f"sftkd-{method}"
    assert json.loads((exp / "config.json").read_text())["model_parameters"] == 36_525


def test_std_kd_imitation_from_a_unet_teacher_into_a_fresh_unet_student(tmp_path, runs):
    exp = tmp_path / "imitation"
    train_student_kd.main(common(runs["data"], exp, "--teacher-checkpoint", str(runs["teacher"] / "best_model.pt"),
                                 "--student-model", "unet-student", "--kd-method", "imitation"))
    assert checkpoint(exp)["arch"] == STUDENT.to_dict()
    out = tmp_path / "eval"
    evaluate.main(["--checkpoints", str(exp / "best_model.pt"), str(runs["teacher"] / "best_model.pt"),
                   "--names", "student", "teacher", "--data-root", str(runs["data"]), "--acc", "4x",
                   "--out-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    for name in ("student", "teacher"):
        assert summary[name]["PSNR"]["n"] == 2 and summary[name]["PSNR"]["mean"] > 0


@pytest.mark.parametrize("method", ["at", "fitnet", "imitation"])
def test_kd_losses_vanish_between_equal_unets(method):
    torch.manual_seed(0)
    net = TEACHER.build()
    kd = build_kd_loss(method, TEACHER, TEACHER)
    out, feats = net(*inputs(32, 32), return_features=True)
    assert kd(out, feats, out.detach(), [{k: (v.detach() if torch.is_tensor(v) else [h.detach() for h in v])
                                           for k, v in f.items()} for f in feats]).item() == pytest.approx(0, abs=1e-7)
    other = STUDENT.build()
    s_out, s_feats = other(*inputs(32, 32), return_features=True)
    loss = build_kd_loss(method, STUDENT, TEACHER)(s_out, s_feats, out.detach(), feats)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in other.cascades[0].parameters())
