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

# The initial weights (names, shapes, values, arch) and the next RNG draws of each script's step for seed 7, as
# computed at commit 31b20a4: a controlled study compares runs started from these.
# Not sha256 digests of the weight bytes, because those depend on the CPU kind: the
# vectorised uniform_ of an AVX2 / AVX-512 CPU and the scalar code of a CPU without AVX2 (measured with
# ATEN_CPU_CAPABILITY=default) round `low + u * (high - low)` differently, so about half of the weights differ
# there by 1 ulp (<= 3e-8). Fingerprinted (see fingerprint), the same weights here and under that setting differ
# by <= 2e-6 in the float parts; a weight drawn in another order, from another seed or with another bound moves
# them by far more than INIT_TOLERANCE (a single weight of a 3x3 conv is ~0.05). The hand-built test below still
# pins the registry's DC-CNNs bit for bit against layers built in the public code's order, in the same process.
INIT_TOLERANCE = 1e-4
BEFORE_REGISTRY = {
    "teacher teacher": ("1dd2cbc9696742a7", 5.233025, 222.603135, 8.699962),
    "teacher student": ("951f6d77f8b25e53", 6.959314, 115.37483, 4.02706),
    "sft": ("a1ea72721f2b30ce", 4.834118, 334.480824, 4.064773),
    "teacher teacher --ref-padding 5 --residual": ("0f61b654687d64b5", 5.233025, 222.603135, 8.699962),
    "teacher student --ref-padding 5 --residual": ("acc1b9fe355dcc76", 6.959314, 115.37483, 4.02706),
    "sft --ref-padding 5 --residual": ("59e843834b895bab", 4.834118, 334.480824, 4.064773),
    "kd imitation teacher.pt scratch": ("855a3dc04060135a", 9.727657, 335.682381, 3.870206),
    "kd imitation sft.pt scratch": ("855a3dc04060135a", 20.002838, 335.354144, 11.423824),
    "kd imitation teacher.pt sft-init": ("855a3dc04060135a", 12.297415, 334.897795, 3.8548),
    "kd imitation sft.pt sft-init": ("855a3dc04060135a", 22.572596, 334.569558, 11.408418),
    "kd vid teacher.pt scratch": ("cd4eb2286aa29f79", 86.1438, 493.439924, -14.530953),
    "kd vid sft.pt scratch": ("cd4eb2286aa29f79", 96.418981, 493.111688, -15.256042),
    "kd vid teacher.pt sft-init": ("cd4eb2286aa29f79", 88.713557, 492.655338, -14.54636),
    "kd vid sft.pt sft-init": ("cd4eb2286aa29f79", 98.988738, 492.327102, -15.271448),
    "kd ab teacher.pt scratch": ("e4839968bc789b23", 323.100619, 708.498218, 7.670131),
    "kd ab sft.pt scratch": ("e4839968bc789b23", 333.3758, 708.169981, 1.489807),
    "kd ab teacher.pt sft-init": ("e4839968bc789b23", 325.670377, 707.713632, 7.654724),
    "kd ab sft.pt sft-init": ("e4839968bc789b23", 335.945558, 707.385395, 1.474401),
    "kd ft teacher.pt scratch": ("94d94c9e99e0ffa3", 1.573207, 442.084556, 22.400622),
    "kd ft sft.pt scratch": ("94d94c9e99e0ffa3", 11.848388, 441.756319, 27.924354),
    "kd ft teacher.pt sft-init": ("94d94c9e99e0ffa3", 4.142964, 441.29997, 22.385215),
    "kd ft sft.pt sft-init": ("94d94c9e99e0ffa3", 14.418145, 440.971733, 27.908947),
}


def fingerprint(state: dict, arch) -> tuple:
    """What pins a network's initial weights on every CPU kind: the sha256 prefix of the arch JSON and every
    (name, shape, dtype) in state-dict order, exactly; then, in float64, the sum, the sum of squares and a
    position-weighted sum (weights cos(i)) of every weight in that order and of the next 4 RNG draws (which pin
    how many numbers building took), to :data:`INIT_TOLERANCE`."""
    h = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    values = []
    for key, value in state.items():
        h.update(f"{key} {tuple(value.shape)} {value.dtype}".encode())
        values.append(value.detach().double().flatten())
    flat = torch.cat([*values, torch.rand(4).double()])
    weighted = (flat * torch.cos(torch.arange(len(flat), dtype=torch.float64))).sum()
    return (h.hexdigest()[:16], *(round(float(x), 6) for x in (flat.sum(), (flat ** 2).sum(), weighted)))


def built_step(script, argv: list[str]):
    """The step ``script.main(argv)`` hands the loop, built as the loop does: seed, then build_step(image)."""
    got = {}

    def fake_train(config, build_step, run_name, roles):
        seed_everything(config.optim.seed)
        got["step"] = build_step("magnitude")

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
            found[" ".join(["teacher", model, *flags])] = fingerprint(step.state_dict(), arch_of(step.model))
        step = built_step(train_sft, [*base, *flags])
        found[" ".join(["sft", *flags])] = fingerprint(step.state_dict(), arch_of(step.model))
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
        step = train_student_kd.build_step(train_student_kd.kd_run(args))
        state = {**step.state_dict(), **{"teacher." + k: v for k, v in step.teacher.state_dict().items()}}
        found[key] = fingerprint(state, [arch_of(step.model), arch_of(step.teacher)])
    assert list(found) == list(BEFORE_REGISTRY)
    for key, (exact, *floats) in BEFORE_REGISTRY.items():
        assert found[key][0] == exact, key
        assert found[key][1:] == pytest.approx(floats, rel=0, abs=INIT_TOLERANCE), key


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
    def built(argv):
        return train_student_kd.build_step(train_student_kd.kd_run(train_student_kd.build_parser().parse_args(argv)))
    step = built([*base, "--teacher-checkpoint", str(tmp_path / "teacher.pt"), "--depth", "4", "--width", "16",
                  "--kd-method", "vid"])
    assert (step.model.config.n_convs, step.model.config.channels) == (4, 16)
    assert step.kd_loss.regressors[0][0].weight.shape == (32, 16, 1, 1)
    with pytest.raises(UserError, match="--depth / --width ask for DC-CNN D4C5 .* holds DC-CNN D3C5"):
        built([*base, "--teacher-checkpoint", str(tmp_path / "teacher.pt"), "--init-from-sft", str(tmp_path / "sft.pt"),
               "--depth", "4"])
    # The loaded student's own size, spelt out, is no conflict.
    step = built([*base, "--teacher-checkpoint", str(tmp_path / "sft.pt"), "--init-from-sft", str(tmp_path / "sft.pt"),
                  "--depth", "3"])
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
