"""Tests for models/checkpoints/public.py and scripts/import_checkpoint.py against an independent re-implementation
of the public SFT-KD-Recon / KD-MRI networks and their way of saving checkpoints."""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from data.masks import cartesian_row_mask
from models.checkpoints.format import build_model, load_model, load_reconstructor
from models.distill.student_init import load_sft
from models.checkpoints.io import load_public
from models.checkpoints.public import convert_state_dict, import_checkpoint
from models.nets.dccnn import DCCNN, count_parameters
from models.nets.sft import SFTNet
from tests.conftest import run_cli
from utils import UserError

SCRIPT = ("-m", "scripts.import_checkpoint")


# --------------------------------------------------------------------------- reference networks (public code)

class RefBlock(nn.Module):
    """conv1..conv{n}: 1 -> 32 -> ... -> 32 -> 1, 3x3, padding 1, ReLU between."""

    def __init__(self, n_convs: int):
        super().__init__()
        widths = [1] + [32] * (n_convs - 1) + [1]
        self.n_convs = n_convs
        for j in range(n_convs):
            setattr(self, f"conv{j + 1}", nn.Conv2d(widths[j], widths[j + 1], kernel_size=3, stride=1, padding=1))

    def forward(self, x):
        for j in range(1, self.n_convs):
            x = F.relu(getattr(self, f"conv{j}")(x))
        return getattr(self, f"conv{self.n_convs}")(x)


def ref_df(x_cnn, kspace_under, mask):
    """Re(ifft2(m * y + (1 - m) * fft2(x))), written out with torch.fft as the public code does."""
    kspace_cnn = torch.fft.fft2(x_cnn, norm="ortho")
    return torch.fft.ifft2(mask * kspace_under + (1 - mask) * kspace_cnn, norm="ortho").real


class RefNet(nn.Module):
    """Any of the public networks: blocks named ``{prefix}{i}``, input padded by ``pad``, output cropped, DF."""

    def __init__(self, blocks: dict[str, int], pad: int = 5):
        super().__init__()
        for prefix, n_convs in blocks.items():
            for i in range(1, 6):
                setattr(self, f"{prefix}{i}", RefBlock(n_convs))
        self.pad = pad
        self.pad2d = nn.ConstantPad2d(pad, 0)

    def step(self, name, x, kspace_under, mask):
        out = getattr(self, name)(self.pad2d(x))
        if self.pad:
            out = out[:, :, self.pad:-self.pad, self.pad:-self.pad]
        return ref_df(out, kspace_under, mask)

    def chain(self, prefix, first, last, x, kspace_under, mask):
        for i in range(first, last + 1):
            x = self.step(f"{prefix}{i}", x, kspace_under, mask)
        return x

    def sft(self, x, kspace_under, mask):
        """SFT: teacher output and branches j = 1..4 (scascade{j+1}..5 on the teacher's x_j)."""
        branches = []
        for j in range(1, 6):
            x = self.step(f"tcascade{j}", x, kspace_under, mask)
            if j < 5:
                branches.append(self.chain("scascade", j + 1, 5, x, kspace_under, mask))
        return x, branches


def reference(kind: str, seed: int) -> tuple[RefNet, str]:
    """A randomly initialised public network and the key prefix of the path that reconstructs."""
    torch.manual_seed(seed)
    nets = {"teacher": ({"tcascade": 5}, 5, "tcascade"), "student": ({"scascade": 3}, 5, "scascade"),
            "sft": ({"tcascade": 5, "scascade": 3}, 5, "tcascade"),
            "kdmri_teacher": ({"cascade": 5}, 0, "cascade"), "kdmri_student": ({"cascade": 3}, 0, "cascade")}
    blocks, pad, prefix = nets[kind]
    net = RefNet(blocks, pad)
    # Non-zero biases everywhere so a bias mapped to the wrong layer changes the output.
    for param in net.parameters():
        param.data.add_(0.01 * torch.randn_like(param))
    return net.eval(), prefix


def save_public(net: nn.Module, path: pathlib.Path, data_parallel: bool = False, epoch: int = 7,
                legacy: bool = False) -> pathlib.Path:
    """Save like the public training scripts: pickled Namespace args, optimizer state, numpy loss, Path;
    ``legacy``: in the pre-zip format of torch < 1.6."""
    wrapped = nn.DataParallel(net) if data_parallel else net
    args = argparse.Namespace(lr=1e-3, batch_size=4, acceleration_factor="4x", model_type="teacher",
                              exp_dir=pathlib.Path("/media/exp"), device="cuda", seed=42)
    torch.save({"epoch": epoch, "args": args, "model": wrapped.state_dict(),
                "optimizer": torch.optim.Adam(net.parameters(), lr=1e-3).state_dict(),
                "best_dev_loss": np.float64(0.0123), "exp_dir": pathlib.Path("/media/exp")}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="module")
def batch():
    """Zero-filled image (2, 1, 32, 32) float32, masked k-space complex64 and mask from a 4x row mask."""
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(2, 1, 32, 32, generator=gen)
    mask = torch.from_numpy(cartesian_row_mask((32, 32), "4x", seed=1))[None, None]
    kspace_under = mask * torch.fft.fft2(target, norm="ortho")
    zero_filled = torch.fft.ifft2(kspace_under, norm="ortho").abs()
    return zero_filled, kspace_under, mask


def ref_output(net: RefNet, prefix: str, batch):
    with torch.no_grad():
        return net.chain(prefix, 1, 5, *batch)


def ours(model: nn.Module, batch):
    with torch.no_grad():
        return model.eval()(*batch)


# --------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_imports_teacher_without_any_flag(tmp_path, batch):
    net, prefix = reference("teacher", seed=0)
    src = save_public(net, tmp_path / "best_model.pt")
    dst = tmp_path / "out" / "teacher.pt"

    done = run_cli(*SCRIPT, "--input", str(src), "--output", str(dst))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "141,765 parameters" in done.stdout and "epoch 7" in done.stdout and "D5C5" in done.stdout

    ckpt = torch.load(dst, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "sftkd-v1" and ckpt["run_name"] == "best_model"
    assert ckpt["arch"] == {"kind": "dccnn", "n_cascades": 5, "n_convs": 5, "channels": 32,
                            "residual": False, "ref_padding": 5}
    model = load_reconstructor(dst)
    assert count_parameters(model) == 141_765
    torch.testing.assert_close(ours(model, batch), ref_output(net, prefix, batch), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_cli_keeps_existing_output_without_overwrite(tmp_path):
    net, _ = reference("student", seed=1)
    src = save_public(net, tmp_path / "student.pt", data_parallel=True)
    dst = tmp_path / "existing.pt"
    dst.write_bytes(b"keep me")

    refused = run_cli(*SCRIPT, "--input", str(src), "--output", str(dst))
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert dst.read_bytes() == b"keep me"

    done = run_cli(*SCRIPT, "--input", str(src), "--output", str(dst), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "49,285 parameters" in done.stdout
    model, _ = load_model(dst)
    assert isinstance(model, DCCNN) and model.config.n_convs == 3


def test_cli_unknown_layout_is_one_line_error(tmp_path):
    src = tmp_path / "unet.pt"
    torch.save({"encoder.conv1.weight": torch.zeros(8, 1, 3, 3)}, src)
    result = run_cli(*SCRIPT, "--input", str(src), "--output", str(tmp_path / "out.pt"))
    assert result.returncode == 2
    assert "no known layout" in result.stderr and "encoder.conv1.weight" in result.stderr
    assert not (tmp_path / "out.pt").exists()


# --------------------------------------------------------------------------- function

@pytest.mark.parametrize("kind, n_params, data_parallel", [
    ("teacher", 141_765, True),
    ("student", 49_285, False),
    ("student", 49_285, True),
    ("kdmri_teacher", 141_765, False),
    ("kdmri_student", 49_285, True),
])
def test_import_matches_reference_network(tmp_path, batch, capsys, kind, n_params, data_parallel):
    net, prefix = reference(kind, seed=2)
    src = save_public(net, tmp_path / f"{kind}.pt", data_parallel=data_parallel, epoch=11)
    dst = tmp_path / "imported.pt"
    summary = import_checkpoint(src, dst)
    assert capsys.readouterr().err == ""
    assert summary["parameters"] == n_params and summary["epoch"] == 11

    model, ckpt = load_model(dst)
    assert isinstance(model, DCCNN) and count_parameters(model) == n_params
    assert ckpt["arch"]["ref_padding"] == (0 if kind.startswith("kdmri") else 5)
    expected = ref_output(net, prefix, batch)
    got = ours(model, batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # The check can fail: the zero-filled input itself is far from the reconstruction.
    assert (batch[0] - expected).abs().max() > 1e-2


def test_import_records_json_metadata(tmp_path):
    net, _ = reference("teacher", seed=4)
    src = save_public(net, tmp_path / "model.pt")
    dst = tmp_path / "imported.pt"
    import_checkpoint(src, dst)
    config = torch.load(dst, map_location="cpu", weights_only=True)["config"]
    json.dumps(config, allow_nan=False)
    assert config["imported_from"] == str(src) and config["epoch"] == 7
    assert config["best_dev_loss"] == pytest.approx(0.0123)
    assert config["source_args"] == {"lr": 1e-3, "batch_size": 4, "acceleration_factor": "4x",
                                     "model_type": "teacher", "exp_dir": "/media/exp", "device": "cuda",
                                     "seed": 42}


def test_sft_import_teacher_and_branches_match_reference(tmp_path, batch):
    net, _ = reference("sft", seed=5)
    src = save_public(net, tmp_path / "sft.pt", data_parallel=True)
    dst = tmp_path / "sft_imported.pt"
    summary = import_checkpoint(src, dst)
    assert summary["parameters"] == 141_765 + 49_285
    assert summary["arch"]["kind"] == "sft"

    sft = load_sft(dst)
    assert isinstance(sft, SFTNet)
    with torch.no_grad():
        ref_teacher, ref_branches = net.sft(*batch)
        teacher_out, branches = sft.eval()(*batch)
        recon = ours(load_reconstructor(dst), batch)
    torch.testing.assert_close(teacher_out, ref_teacher, atol=1e-5, rtol=0)
    torch.testing.assert_close(recon, ref_teacher, atol=1e-5, rtol=0)
    # Branch 1 = scascade2..5 on x1_dc, spelled out apart from RefNet.sft.
    with torch.no_grad():
        x1_dc = net.step("tcascade1", batch[0], *batch[1:])
        branch1 = net.chain("scascade", 2, 5, x1_dc, *batch[1:])
    torch.testing.assert_close(branches[0], branch1, atol=1e-5, rtol=0)
    for got, expected in zip(branches, ref_branches):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # A per-sample (B, 1, H, W) mask, as the data loader gives, yields the same branches.
    per_sample = (batch[0], batch[1], batch[2].expand(2, -1, -1, -1).contiguous())
    with torch.no_grad():
        _, branches_per_sample = sft(*per_sample)
    for got, expected in zip(branches_per_sample, ref_branches):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # S1 is in the file though SFT never runs it; it must still arrive unchanged.
    torch.testing.assert_close(sft.student.cascades[0].conv1.weight, net.scascade1.conv1.weight)


def test_plain_state_dict_file_imports(tmp_path, batch, capsys):
    net, prefix = reference("teacher", seed=6)
    src = tmp_path / "weights.pt"
    torch.save(net.state_dict(), src)
    dst = tmp_path / "imported.pt"
    summary = import_checkpoint(src, dst)
    assert capsys.readouterr().err == ""
    assert summary["epoch"] is None
    torch.testing.assert_close(ours(load_reconstructor(dst), batch), ref_output(net, prefix, batch),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_public_files_load_with_weights_only_and_the_allow_list(tmp_path, legacy):
    # Both formats the public code may have written (torch >= 1.6 zip, older pickle) import with weights_only
    # and the allow-list; their Namespace, path and numpy loss become JSON in the config.
    net, _ = reference("student", seed=7)
    src = save_public(net, tmp_path / "student.pt", legacy=legacy)
    summary = import_checkpoint(src, tmp_path / "out.pt")
    assert summary["best_dev_loss"] == pytest.approx(0.0123) and summary["epoch"] == 7
    config = torch.load(tmp_path / "out.pt", weights_only=True)["config"]
    assert config["source_args"]["exp_dir"] == "/media/exp" and config["source_args"]["acceleration_factor"] == "4x"


def test_a_global_off_the_list_is_refused_naming_it_and_writes_nothing(tmp_path):
    # A public-looking file with one more global (here a Windows path: the public scripts ran on Linux) is
    # refused naming exactly that global, not the allow-listed ones beside it.
    net, _ = reference("student", seed=7)
    src = save_public(net, tmp_path / "student.pt")
    loaded = load_public(src)
    loaded["extra"] = collections.Counter(a=1), datetime.date(2020, 1, 1)
    torch.save(loaded, src)
    dst = tmp_path / "out.pt"
    with pytest.raises(UserError, match=r"^--input \S+ holds pickled Python objects \(datetime.date\) that "):
        import_checkpoint(src, dst)
    assert not dst.exists()


def test_ref_padding_override_reproduces_a_padded_cascade_network(batch):
    # A cascade{i} network that pads like SFT-KD-Recon imports faithfully with an explicit ref_padding=5.
    padded, _ = reference("teacher", seed=8)
    state = {k.replace("tcascade", "cascade"): v for k, v in padded.state_dict().items()}
    arch, model_state = convert_state_dict(state, ref_padding=5)
    model = build_model(arch)
    model.load_state_dict(model_state)
    torch.testing.assert_close(ours(model, batch), ref_output(padded, "tcascade", batch), atol=1e-5, rtol=0)
    # The padding matters: the KD-MRI default (no padding) computes something measurably different.
    default_arch, default_state = convert_state_dict(state)
    assert default_arch["ref_padding"] == 0
    unpadded = build_model(default_arch)
    unpadded.load_state_dict(default_state)
    assert (ours(unpadded, batch) - ref_output(padded, "tcascade", batch)).abs().max() > 1e-3


def test_convert_names_and_shapes():
    net, _ = reference("sft", seed=9)
    arch, state = convert_state_dict({f"module.{k}": v for k, v in net.state_dict().items()})
    assert arch["teacher"]["n_convs"] == 5 and arch["student"]["n_convs"] == 3
    assert arch["teacher"]["ref_padding"] == arch["student"]["ref_padding"] == 5
    assert len(state) == 5 * 5 * 2 + 5 * 3 * 2
    assert torch.equal(state["teacher.cascades.2.conv4.weight"], net.tcascade3.conv4.weight)
    assert torch.equal(state["student.cascades.4.conv3.bias"], net.scascade5.conv3.bias)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: {"encoder.conv1.weight": torch.zeros(8, 1, 3, 3)}, "no known layout"),
    (lambda s: {**s, "tdc.mask": torch.zeros(3)}, "no known layout"),
    (lambda s: {}, "no known layout"),
    (lambda s: {**s, **{k.replace("tcascade", "cascade"): v for k, v in s.items()}}, "no known layout"),
    (lambda s: {k: v for k, v in s.items() if not k.startswith("tcascade3.")}, "without gaps"),
    (lambda s: {k: v for k, v in s.items() if not k.startswith("tcascade2.conv5")}, "same number"),
    (lambda s: {k: v for k, v in s.items() if k != "tcascade4.conv2.bias"}, "tcascade4.conv2.bias is missing"),
    (lambda s: {**s, "tcascade1.conv2.weight": torch.zeros(32, 32, 5, 5)}, "expected"),
])
def test_bad_layouts_raise_clear_errors(mutate, message):
    net, _ = reference("teacher", seed=10)
    with pytest.raises(UserError, match=message):
        convert_state_dict(mutate(dict(net.state_dict())), source="x.pt")


def test_own_checkpoint_and_missing_input_are_clear_errors(tmp_path):
    net, _ = reference("student", seed=11)
    src = save_public(net, tmp_path / "student.pt")
    first = tmp_path / "first.pt"
    import_checkpoint(src, first)
    with pytest.raises(UserError, match="already a checkpoint of this project"):
        import_checkpoint(first, tmp_path / "second.pt")
    with pytest.raises(UserError, match="does not exist"):
        import_checkpoint(tmp_path / "nope.pt", tmp_path / "third.pt")


@pytest.mark.parametrize("fmt, fragments", [
    ("sftkd-v2", ["newer version", "format sftkd-v2", "reads sftkd-v1"]),
    ("sftkd-v0", ["older version", "format sftkd-v0"]),
    ("other-1", ["'other-1'", "import_checkpoint.py"]),
])
def test_checkpoint_format_is_checked_on_load(tmp_path, fmt, fragments):
    from models.checkpoints.format import load_model, model_payload
    from models.nets.dccnn import DCCNN, STUDENT
    from models.checkpoints.io import save_checkpoint
    from utils import UserError
    path = tmp_path / "model.pt"
    save_checkpoint({**model_payload(DCCNN(STUDENT)), "format": fmt}, path)
    with pytest.raises(UserError) as info:
        load_model(path, "--teacher-checkpoint")
    assert all(f in str(info.value) for f in fragments) and str(path) in str(info.value)
    save_checkpoint(model_payload(DCCNN(STUDENT)), path)
    assert isinstance(load_model(path)[0], DCCNN)
