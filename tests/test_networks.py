"""Tests of the network registry (models/nets/registry.py): the default networks are drawn exactly as before it, old
checkpoints load, names and flags come from the registry."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import train_sft
import train_student_kd
import train_teacher
from data.fft import data_fidelity
from models.checkpoints.format import FORMAT, arch_of, load_model, load_reconstructor, model_payload
from models.checkpoints.io import save_checkpoint
from models.nets.dccnn import DCCNN, STUDENT, TEACHER
from models.nets.registry import FAMILIES, PRESETS, build_network, config_from_arch, describe_arch
from models.nets.sft import SFTNet
from utils import UserError, seed_everything

# The initial weights (names, values, arch) and the next RNG draw of each script's step for seed 7, computed
# with the code before the registry (31b20a4): a controlled study compares runs started from these.
BEFORE_REGISTRY = {
    "teacher teacher": "788952fd657bc72e",
    "teacher student": "1d1cef0a5ee6830e",
    "sft": "bafb14626f6cf601",
    "teacher teacher --ref-padding 5 --residual": "7b9998d2a63dc584",
    "teacher student --ref-padding 5 --residual": "f017fb3620a88faa",
    "sft --ref-padding 5 --residual": "0c21b45608ee4d22",
    "kd imitation teacher.pt scratch": "9ead634cc837bfcf",
    "kd imitation sft.pt scratch": "c83249bef9b57016",
    "kd imitation teacher.pt sft-init": "3a3038f27e414417",
    "kd imitation sft.pt sft-init": "177676dd4c336c46",
    "kd vid teacher.pt scratch": "2265ecb6f1eda977",
    "kd vid sft.pt scratch": "57152e98994f9a93",
    "kd vid teacher.pt sft-init": "e60da89ab11b634c",
    "kd vid sft.pt sft-init": "b4418dabd8f277ec",
    "kd ab teacher.pt scratch": "23aa8f559f1998d2",
    "kd ab sft.pt scratch": "a6a946c52c527957",
    "kd ab teacher.pt sft-init": "e65fef3b330c781f",
    "kd ab sft.pt sft-init": "25d6cb63d6ab9594",
    "kd ft teacher.pt scratch": "65fe50f5cddfe7e5",
    "kd ft sft.pt scratch": "ddd9fc6676806864",
    "kd ft teacher.pt sft-init": "fd1b4c57242be5c5",
    "kd ft sft.pt sft-init": "267ba01535ce1499",
}


def digest(state: dict, arch) -> str:
    """sha256 prefix of the arch JSON, every (name, weight bytes) in state-dict order and the next 4 RNG draws
    (which pins how many numbers building took)."""
    h = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    for key, value in state.items():
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    h.update(torch.rand(4).numpy().tobytes())
    return h.hexdigest()[:16]


def built_step(script, argv: list[str]):
    """The step ``script.main(argv)`` hands the loop, built as the loop does: seed, then build_step(args)."""
    got = {}

    def fake_train(args, build_step, run_name, roles):
        seed_everything(args.seed)
        got["step"] = build_step(args)

    original, script.train = script.train, fake_train
    try:
        script.main(argv)
    finally:
        script.train = original
    return got["step"]


def test_default_networks_start_from_the_weights_they_had_before_the_registry(tmp_path):
    base = ["--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "exp"), "--seed", "7"]
    found = {}
    for flags in ([], ["--ref-padding", "5", "--residual"]):
        for model in ("teacher", "student"):
            step = built_step(train_teacher, ["--model", model, *base, *flags])
            found[" ".join(["teacher", model, *flags])] = digest(step.state_dict(), arch_of(step.model))
        step = built_step(train_sft, [*base, *flags])
        found[" ".join(["sft", *flags])] = digest(step.state_dict(), arch_of(step.model))
    torch.manual_seed(0)
    save_checkpoint(model_payload(DCCNN(TEACHER), "teacher"), tmp_path / "teacher.pt")
    torch.manual_seed(1)
    save_checkpoint(model_payload(SFTNet(), "sft"), tmp_path / "sft.pt")
    for key in BEFORE_REGISTRY:
        if not key.startswith("kd "):
            continue
        _, method, teacher, init = key.split()
        init_flags = ["--init-from-sft", str(tmp_path / "sft.pt")] if init == "sft-init" else []
        args = train_student_kd.build_parser().parse_args(
            [*base, "--teacher-checkpoint", str(tmp_path / teacher), "--kd-method", method, *init_flags])
        seed_everything(args.seed)
        step = train_student_kd.build_step(args)
        state = {**step.state_dict(), **{"teacher." + k: v for k, v in step.teacher.state_dict().items()}}
        found[key] = digest(state, [arch_of(step.model), arch_of(step.teacher)])
    assert found == BEFORE_REGISTRY


class HandBuiltDCCNN(nn.Module):
    """The DC-CNN written out with plain layers in the order of the public code, independent of models/."""

    def __init__(self, n_cascades: int, n_convs: int, channels: int = 32):
        super().__init__()
        widths = [1] + [channels] * (n_convs - 1) + [1]
        self.layers = nn.ModuleList(nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))
                                    for _ in range(n_cascades))

    def forward(self, x, kspace_under, mask):
        for convs in self.layers:
            h = x
            for conv in convs[:-1]:
                h = F.relu(conv(h))
            x = data_fidelity(convs[-1](h), kspace_under, mask)
        return x


@pytest.mark.parametrize("name, n_convs", [("teacher", 5), ("student", 3)])
def test_registry_network_is_the_hand_built_dccnn_bit_for_bit(name, n_convs):
    torch.manual_seed(3)
    hand = HandBuiltDCCNN(5, n_convs)
    torch.manual_seed(3)
    net = PRESETS[name].build()
    hand_weights = [p for p in hand.parameters()]
    assert [tuple(p.shape) for p in net.parameters()] == [tuple(p.shape) for p in hand_weights]
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), hand_weights))
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 16, 16, generator=generator)
    mask = (torch.rand(1, 1, 16, 1, generator=generator) < 0.5).float().expand(1, 1, 16, 16)
    kspace = mask * torch.fft.fft2(target, norm="ortho")
    zero_filled = torch.fft.ifft2(kspace, norm="ortho").abs()
    with torch.no_grad():
        assert torch.equal(net(zero_filled, kspace, mask), hand(zero_filled, kspace, mask))


OLD_DCCNN_ARCH = {"kind": "dccnn", "n_cascades": 5, "n_convs": 3, "channels": 32, "residual": False,
                  "ref_padding": 5}
OLD_SFT_ARCH = {"kind": "sft",
                "teacher": {"kind": "dccnn", "n_cascades": 5, "n_convs": 5, "channels": 32, "residual": True,
                            "ref_padding": 0},
                "student": {"kind": "dccnn", "n_cascades": 5, "n_convs": 3, "channels": 32, "residual": True,
                            "ref_padding": 0}}


@pytest.mark.parametrize("arch", [OLD_DCCNN_ARCH, OLD_SFT_ARCH], ids=["dccnn", "sft"])
def test_checkpoints_written_before_the_registry_load_unchanged(tmp_path, arch):
    torch.manual_seed(5)
    weights = {k: torch.randn_like(v) for k, v in build_network(arch).state_dict().items()}
    save_checkpoint({"format": FORMAT, "arch": arch, "run_name": "old", "config": {}, "model": weights},
                    tmp_path / "old.pt")
    model, ckpt = load_model(tmp_path / "old.pt")
    assert FORMAT == "sftkd-v1" and arch_of(model) == arch and ckpt["arch"] == arch
    assert list(model.state_dict()) == list(weights)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    reconstructor = load_reconstructor(tmp_path / "old.pt")
    expected = OLD_SFT_ARCH["teacher"] if arch["kind"] == "sft" else arch
    assert arch_of(reconstructor) == expected


def test_describe_arch_names_as_before():
    assert describe_arch(OLD_DCCNN_ARCH) == "DC-CNN D3C5 (5 cascades x 3 convs)"
    assert describe_arch(OLD_DCCNN_ARCH, detail=True) == \
        "DC-CNN D3C5 (5 cascades x 3 convs, 32 channels, ref_padding 5)"
    assert describe_arch(OLD_SFT_ARCH) == \
        "SFT network (teacher D5C5 (5 cascades x 5 convs), student D3C5 (5 cascades x 3 convs))"
    assert describe_arch(["not", "a", "dict"]) == "['not', 'a', 'dict']"


def test_registry_round_trips_every_preset():
    assert {"teacher", "student"} <= set(PRESETS) and {"dccnn", "sft"} <= set(FAMILIES)
    assert PRESETS["teacher"] == TEACHER and PRESETS["student"] == STUDENT
    for config in PRESETS.values():
        assert config_from_arch(config.to_dict()) == config
        assert FAMILIES[config.kind].config is type(config)
    sft = SFTNet().config
    assert config_from_arch(sft.to_dict()) == sft and sft.to_dict()["teacher"] == TEACHER.to_dict()


def test_model_list_prints_every_registered_network(capsys):
    with pytest.raises(SystemExit) as stop:
        train_teacher.main(["--model", "list"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert lines[0].split() == ["teacher", "DC-CNN", "D5C5", "(5", "cascades", "x", "5", "convs)", "141,765",
                                "parameters"]
    assert lines[1].endswith("49,285 parameters") and "D3C5" in lines[1]


def test_size_flags_choose_the_architecture_recorded_in_checkpoints(tmp_path):
    base = ["--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "exp")]
    step = built_step(train_teacher, ["--model", "student", "--cascades", "3", "--depth", "4", "--width", "8", *base])
    assert arch_of(step.model) == {"kind": "dccnn", "n_cascades": 3, "n_convs": 4, "channels": 8, "residual": False,
                                   "ref_padding": 0}
    assert model_payload(step.model)["arch"] == arch_of(step.model)
    step = built_step(train_sft, ["--cascades", "4", "--teacher-depth", "6", "--student-width", "16", "--residual",
                                  *base])
    arch = arch_of(step.model)
    assert (arch["teacher"]["n_cascades"], arch["teacher"]["n_convs"], arch["teacher"]["channels"]) == (4, 6, 32)
    assert (arch["student"]["n_cascades"], arch["student"]["n_convs"], arch["student"]["channels"]) == (4, 3, 16)
    assert arch["teacher"]["residual"] and arch["student"]["residual"]


def test_kd_student_flags(tmp_path):
    base = ["--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "exp")]
    torch.manual_seed(0)
    save_checkpoint(model_payload(DCCNN(TEACHER), "teacher"), tmp_path / "teacher.pt")
    save_checkpoint(model_payload(SFTNet(), "sft"), tmp_path / "sft.pt")
    parse = train_student_kd.build_parser().parse_args
    step = train_student_kd.build_step(parse([*base, "--teacher-checkpoint", str(tmp_path / "teacher.pt"),
                                              "--depth", "4", "--width", "16", "--kd-method", "vid"]))
    assert (step.model.config.n_convs, step.model.config.channels) == (4, 16)
    assert step.kd_loss.regressors[0][0].weight.shape == (32, 16, 1, 1)
    with pytest.raises(UserError, match="--depth / --width ask for DC-CNN D4C5 .* holds DC-CNN D3C5"):
        train_student_kd.build_step(parse([*base, "--teacher-checkpoint", str(tmp_path / "teacher.pt"),
                                           "--init-from-sft", str(tmp_path / "sft.pt"), "--depth", "4"]))
    # The loaded student's own size, spelt out, is no conflict.
    step = train_student_kd.build_step(parse([*base, "--teacher-checkpoint", str(tmp_path / "sft.pt"),
                                              "--init-from-sft", str(tmp_path / "sft.pt"), "--depth", "3"]))
    assert step.model.config == STUDENT


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "d7c5"], "argument --model: unknown network 'd7c5'; choose one of: teacher, student"),
    (["--width", "0"], "argument --width: must be > 0, got 0"),
])
def test_bad_network_flags_are_one_line_usage_errors(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as stop:
        train_teacher.main(["--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "exp"), *argv])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and fragment in error and len(error.strip().splitlines()) == 1


def test_a_size_the_family_cannot_build_is_a_one_line_error(tmp_path):
    from conftest import run_cli
    result = run_cli("train_teacher.py", "--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "exp"),
                     "--depth", "1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "error: --depth: a CNN block needs at least 2 convolutions" in result.stderr
    assert not (tmp_path / "exp").exists()
