"""The E2E-VarNet family (models/nets/varnet.py, issue 38): its cascade against a reference written here from
the paper's equations (Sriram et al., MICCAI 2020, eq. 3-5), its sensitivity model and output, and teacher,
student, SFT and all 14 KD methods training an epoch on multi-coil and single-coil fixtures.

The reference works in float64 numpy with its own FFTs; the network in float32. Tolerances are float32 rounding
of the few operations between them (a few FFTs and sums over 4 coils of values of order 1): 1e-5 relative."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import evaluate
import train_sft
import train_student_kd
import train_teacher
from conftest import make_dataset, make_multicoil_dataset, smooth_maps
from data.masks import cartesian_row_mask
from models.distill.losses import KD_METHODS
from models.nets.registry import PRESETS, describe_networks
from models.nets.sft import SFTConfig, sft_forward_backward, sft_loss
from models.nets.varnet import VarNetConfig, acs_lines

SIZE, COILS = 16, 4
TINY = dict(n_cascades=3, levels=2, channels=4, sens_levels=2, sens_channels=2)


def fixture(seed: int = 0, coils: int = COILS):
    """Coil k-space of a random complex image under smooth maps: y (1, N, H, W) complex64 undersampled, the
    mask (1, 1, H, W) float32 (rows, 4 through DC), the maps (1, N, H, W) complex64, and a coil k-space state
    k (1, N, H, W) complex64 that is not y (random everywhere)."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((SIZE, SIZE)) + 1j * rng.standard_normal((SIZE, SIZE))
    maps = smooth_maps(coils, SIZE) if coils > 1 else np.ones((1, SIZE, SIZE), np.complex64)
    mask = cartesian_row_mask((SIZE, SIZE), "4x", seed=seed, center_fraction=0.25)
    full = np.fft.fft2(maps * image, norm="ortho")
    state = rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape)
    to = lambda a: torch.from_numpy(np.asarray(a, np.complex64))[None]  # noqa: E731
    return to(full * mask), torch.from_numpy(mask)[None, None], to(maps), to(state)


class ZeroUNet(nn.Module):
    """A regulariser that returns 0 (and no features)."""

    def forward(self, x):
        return torch.zeros_like(x), [None, None]


def network(**changes):
    torch.manual_seed(0)
    return VarNetConfig(**{**TINY, "image_channels": 2, **changes}).build()


# --------------------------------------------------------------------------- the reference formulation

def reference_expand(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """E x = F(S_c x) per coil: image (H, W), maps (N, H, W)."""
    return np.fft.fft2(maps * image, norm="ortho")


def reference_reduce(kspace: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """E^H k = sum_c conj(S_c) F^-1(k_c): kspace, maps (N, H, W) -> (H, W)."""
    return (np.conj(maps) * np.fft.ifft2(kspace, norm="ortho")).sum(0)


def test_one_cascade_with_a_zero_unet_keeps_the_sampled_kspace_where_the_weight_is_1():
    y, mask, maps, k = fixture()
    net = network(sens_refine=False)
    net.cascades[1].unet = ZeroUNet()
    with torch.no_grad():
        net.cascades[1].dc_weight.fill_(1.0)
        out, _ = net.run_cascade(1, k, y, mask, maps)
    keep = (mask > 0.5).expand_as(y)
    # k - 1 * (k - y) is y up to the rounding of one subtraction and one addition of order-1 values.
    assert torch.allclose(out[keep], y[keep], rtol=0, atol=1e-5)
    assert torch.equal(out[~keep], k[~keep])  # k - 0 - 0: nothing changes where nothing was acquired


@pytest.mark.parametrize("eta", [0.0, 0.37, 1.6])
def test_the_soft_data_consistency_term_matches_the_formula(eta):
    y, mask, maps, k = fixture(1)
    net = network(sens_refine=False)
    net.cascades[2].unet = ZeroUNet()
    with torch.no_grad():
        net.cascades[2].dc_weight.fill_(eta)
        out, _ = net.run_cascade(2, k, y, mask, maps)
    k64, y64, m = k[0].numpy().astype(np.complex128), y[0].numpy().astype(np.complex128), mask[0].numpy()
    expected = k64 - eta * m * (k64 - y64)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_cascade_is_k_minus_soft_dc_minus_e_of_the_unet_of_eh_k():
    y, mask, maps, k = fixture(2)
    net = network(sens_refine=False)
    with torch.no_grad():
        net.cascades[1].dc_weight.fill_(0.6)
        out, feats = net.run_cascade(1, k, y, mask, maps)
        k64, y64, s = (t[0].numpy().astype(np.complex128) for t in (k, y, maps))
        image = reference_reduce(k64, s)
        # The U-Net is not under test: run it on the reference's E^H k.
        refined, _ = net.cascades[1].unet(torch.from_numpy(np.stack([image.real, image.imag]))[None].float())
    refined = refined[0, 0].double().numpy() + 1j * refined[0, 1].double().numpy()
    np.testing.assert_allclose(feats["cnn_out"][0, 0].numpy() + 1j * feats["cnn_out"][0, 1].numpy(), refined,
                               rtol=0, atol=1e-4 * np.abs(refined).max())
    expected = k64 - 0.6 * mask[0].numpy() * (k64 - y64) - reference_expand(refined, s)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("refine", [False, True])
def test_the_output_magnitude_is_the_rss_of_the_final_coil_images(refine):
    y, mask, maps, _ = fixture(3)
    net = network(sens_refine=refine)
    with torch.no_grad():
        out, feats = net(torch.zeros(1, 2, SIZE, SIZE), y, mask, maps, return_features=True)
    coil_images = np.fft.ifft2(feats[-1]["out"][0].numpy().astype(np.complex128), norm="ortho")
    rss = np.sqrt((np.abs(coil_images) ** 2).sum(0))
    np.testing.assert_allclose(np.hypot(out[0, 0].numpy(), out[0, 1].numpy()), rss, rtol=1e-5,
                               atol=1e-6 * rss.max())
    # Its phase is that of E^H k with the data's maps, the maps the targets are combined with.
    combined = reference_reduce(feats[-1]["out"][0].numpy().astype(np.complex128), maps[0].numpy())
    phase = np.angle((out[0, 0].numpy() + 1j * out[0, 1].numpy()) * np.conj(combined))
    assert np.abs(phase).max() < 1e-4
    # For magnitude images the output is the RSS alone.
    magnitude = network(sens_refine=refine, image_channels=1)
    magnitude.load_state_dict(net.state_dict())
    with torch.no_grad():
        out1 = magnitude(torch.zeros(1, 1, SIZE, SIZE), y, mask, maps)
    np.testing.assert_allclose(out1[0, 0].numpy(), rss, rtol=1e-5, atol=1e-6 * rss.max())


def test_single_coil_data_is_one_coil_with_unit_maps():
    y, mask, _, _ = fixture(4, coils=1)
    net = network(sens_refine=False)
    with torch.no_grad():
        implicit, feats = net(torch.zeros(1, 2, SIZE, SIZE), y, mask, None, return_features=True)
        explicit = net(torch.zeros(1, 2, SIZE, SIZE), y, mask, torch.ones_like(y))
    assert torch.allclose(implicit, explicit, rtol=0, atol=1e-6 * explicit.abs().max())
    # One coil: the output is the coil image itself.
    coil_image = np.fft.ifft2(feats[-1]["out"][0, 0].numpy().astype(np.complex128), norm="ortho")
    np.testing.assert_allclose(implicit[0, 0].numpy() + 1j * implicit[0, 1].numpy(), coil_image, rtol=0,
                               atol=1e-5 * np.abs(coil_image).max())


def test_the_sensitivity_model_reads_only_the_acs_lines_and_normalises_to_rss_1():
    y, mask, maps, _ = fixture(5)
    net = network()
    with torch.no_grad():
        estimated = net.cascade_maps(y, mask, maps)
        # k-space outside the ACS block (rows -2..1 of this mask) changes nothing.
        other = y.clone()
        other[..., 5:12, :] *= 3.0
        assert torch.equal(net.cascade_maps(other, mask, maps), estimated)
    assert estimated.shape == y.shape and estimated.dtype == torch.complex64
    rss = estimated.abs().pow(2).sum(1).sqrt()
    assert torch.allclose(rss, torch.ones_like(rss), atol=1e-5)
    assert not torch.equal(estimated, maps)  # the prepared maps are not what the cascades use
    assert torch.equal(network(sens_refine=False).cascade_maps(y, mask, maps), maps)


@pytest.mark.parametrize("refine", [False, True])
def test_all_zero_kspace_gives_finite_outputs_and_gradients(refine):
    """An empty slice (zero k-space, as padding slices are): the per-channel standard deviation, the RSS of the
    maps and of the output and the output's phase are all taken at 0; nothing may turn into NaN or inf."""
    _, mask, maps, _ = fixture(8)
    net = network(sens_refine=refine)
    out = net(torch.zeros(1, 2, SIZE, SIZE), torch.zeros_like(maps), mask, maps)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_acs_lines_are_the_block_through_dc_of_row_and_column_masks():
    rows = torch.zeros(SIZE)
    rows[[0, 1, 2, 5, 9, 14, 15]] = 1  # DC block: rows -2..2 (14, 15, 0, 1, 2)
    row_mask = rows[:, None].expand(SIZE, SIZE)[None, None]
    expected = torch.zeros(SIZE, dtype=torch.bool)
    expected[[0, 1, 2, 14, 15]] = True
    assert torch.equal(acs_lines(row_mask)[0, 0], expected[:, None].expand(SIZE, SIZE))
    assert torch.equal(acs_lines(row_mask.transpose(-2, -1))[0, 0], expected[None, :].expand(SIZE, SIZE))
    # A batch mixes kinds; a mask that does not sample DC, or samples points, keeps every sampled location.
    no_dc = row_mask.clone()
    no_dc[..., 0, :] = 0
    points = (torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    batch = torch.cat([row_mask, no_dc, points])
    got = acs_lines(batch)
    assert torch.equal(got[0], acs_lines(row_mask)[0])
    assert torch.equal(got[1], no_dc[0] > 0.5) and torch.equal(got[2], points[0] > 0.5)


@pytest.mark.parametrize("variant", ["branchwise", "joint", "joint-batched"])
def test_every_sft_variant_gives_the_one_backward_gradients(variant):
    """SFT on a VarNet pair: the branch-by-branch backward (the graph cut at the teacher's k-space states and at
    the student's learned maps, models/nets/sft.py) and the batched branches give the gradients of one plain
    backward of sft_loss, up to float32 summation order."""
    y, mask, maps, _ = fixture(7)
    target = torch.randn(1, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    config = SFTConfig(VarNetConfig(**{**TINY, "image_channels": 2}),
                       VarNetConfig(**{**TINY, "channels": 2, "image_channels": 2}))
    zf = torch.zeros(1, 2, SIZE, SIZE)

    def gradients(run):
        torch.manual_seed(0)
        model = config.build()
        loss = run(model)
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def plain(model):
        loss, _ = sft_loss(*model(zf, y, mask, maps), target)
        loss.backward()
        return loss

    def chosen(model):
        if variant == "branchwise":
            return sft_forward_backward(model, zf, y, mask, target, maps=maps)[0]
        loss, _ = sft_loss(*model(zf, y, mask, maps, batch_branches=variant == "joint-batched"), target)
        loss.backward()
        return loss

    expected_loss, expected = gradients(plain)
    loss, got = gradients(chosen)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-7)
    assert got.keys() == expected.keys() and any(key.startswith("student.sens_net.") for key in got)
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5 * expected[key].abs().max().item())


def test_presets_and_features():
    assert PRESETS["varnet-teacher"].n_cascades == PRESETS["varnet-student"].n_cascades
    listing = describe_networks()
    assert "varnet-teacher" in listing and "varnet-student" in listing
    y, mask, maps, _ = fixture(6)
    net = network()
    with torch.no_grad():
        out, feats = net(torch.zeros(1, 2, SIZE, SIZE), y, mask, maps, return_features=True, keep_hidden={1})
    assert out.shape == (1, 2, SIZE, SIZE) and len(feats) == TINY["n_cascades"]
    assert feats[0]["hidden"][0] is None and feats[0]["hidden"][1].shape == (1, TINY["channels"], SIZE, SIZE)
    assert feats[0]["cnn_out"].shape == (1, 2, SIZE, SIZE) and feats[0]["out"].shape == y.shape
    # k_0 = y leaves the first cascade's DC weight without a gradient, so it is frozen.
    assert not net.cascades[0].dc_weight.requires_grad and net.cascades[1].dc_weight.requires_grad


# --------------------------------------------------------------------------- training end to end

ARCH = ("--cascades", "3", "--depth", "2", "--width", "4")
SFT_ARCH = ("--teacher-model", "varnet-teacher", "--student-model", "varnet-student", "--cascades", "3",
            "--teacher-depth", "2", "--teacher-width", "4", "--student-depth", "1", "--student-width", "4")


def common(data: Path, exp: Path, *extra: str) -> list[str]:
    return ["--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1", "--no-progress", "--seed", "0",
            "--batch-size", "2", *extra]


@pytest.fixture(scope="module", params=["multicoil", "single-coil"])
def runs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "multicoil":
        data = make_multicoil_dataset(root / "data", size=SIZE, coils=COILS,
                                      volumes=(("train", 2), ("validation", 1), ("test", 1)))
    else:
        data = make_dataset(root / "data", size=SIZE, slices=3)
    result = {"data": data, "kind": request.param}
    for name, script, extra in (("teacher", train_teacher, ("--model", "varnet-teacher")),
                                ("student", train_teacher, ("--model", "varnet-student", *ARCH)),
                                ("sft", train_sft, SFT_ARCH)):
        script.main(common(data, root / name, *extra))
        result[name] = root / name
    return result


def test_teacher_student_and_sft_train_an_epoch(runs):
    for name in ("teacher", "student", "sft"):
        ckpt = torch.load(runs[name] / "best_model.pt", map_location="cpu", weights_only=True)
        assert np.isfinite(ckpt["val_metrics"]["loss"]), name
        arch = ckpt["arch"] if name != "sft" else ckpt["arch"]["teacher"]
        assert arch["kind"] == "varnet", name
        config = json.loads((runs[name] / "config.json").read_text())
        if runs["kind"] == "multicoil":
            assert (config["image"], config["coils"]) == ("complex", COILS), name
        else:
            assert config["image"] == "magnitude" and "coils" not in config, name


def test_the_same_seed_gives_the_same_weights_bit_for_bit(tmp_path, runs):
    """One process, one CPU: a second SFT run from the same seed (learned maps, k-space states, the branch-by-branch
    backward) ends at exactly the first run's weights."""
    again = tmp_path / "again"
    train_sft.main(common(runs["data"], again, *SFT_ARCH))
    first = torch.load(runs["sft"] / "model.pt", map_location="cpu", weights_only=True)
    second = torch.load(again / "model.pt", map_location="cpu", weights_only=True)
    assert first["model"].keys() == second["model"].keys()
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key


def test_evaluate_scores_varnets_on_multicoil_data(tmp_path, runs):
    if runs["kind"] != "multicoil":
        pytest.skip("the single-coil fixture has no test split")
    out = tmp_path / "eval"
    evaluate.main(["--checkpoints", str(runs["teacher"] / "best_model.pt"), str(runs["sft"] / "best_model.pt"),
                   "--data-root", str(runs["data"]), "--acc", "4x", "--out-dir", str(out), "--no-cs"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coils"] == COILS
    for name in ("varnet-teacher", "sft"):
        assert np.isfinite(summary[name]["PSNR"]["mean"]) and summary[name]["PSNR"]["n"] == 3, name


@pytest.mark.parametrize("method", sorted(KD_METHODS))
def test_every_kd_method_trains_a_varnet_student(tmp_path, runs, method):
    sft = str(runs["sft"] / "best_model.pt")
    exp = tmp_path / method
    train_student_kd.main(common(runs["data"], exp, "--teacher-checkpoint", sft, "--init-from-sft", sft,
                                 "--kd-method", method))
    ckpt = torch.load(exp / "best_model.pt", map_location="cpu", weights_only=True)
    assert np.isfinite(ckpt["val_metrics"]["loss"])
    sft_student = torch.load(sft, map_location="cpu", weights_only=True)["model"]
    # The student started from the SFT student's S2.. and its sensitivity model, which the branches trained.
    assert ckpt["arch"]["kind"] == "varnet" and any(key.startswith("sens_net.") for key in ckpt["model"])
    assert any(key.startswith("student.sens_net.") for key in sft_student)


def test_prepared_maps_flag_uses_the_data_maps_unrefined(tmp_path, runs, capsys):
    from conftest import cli_error
    exp = tmp_path / "prepared"
    train_teacher.main(common(runs["data"], exp, "--model", "varnet-student", *ARCH, "--prepared-maps"))
    ckpt = torch.load(exp / "best_model.pt", map_location="cpu", weights_only=True)
    assert ckpt["arch"]["sens_refine"] is False and not any(k.startswith("sens_net.") for k in ckpt["model"])
    assert np.isfinite(ckpt["val_metrics"]["loss"])
    err = cli_error(train_teacher.main, common(runs["data"], tmp_path / "dccnn", "--model", "student",
                                               "--prepared-maps"), capsys)
    assert "--prepared-maps does not apply to DC-CNN" in err


def test_prepared_maps_for_a_kd_student(tmp_path, runs, capsys):
    from conftest import cli_error
    sft = str(runs["sft"] / "best_model.pt")
    exp = tmp_path / "scratch"
    train_student_kd.main(common(runs["data"], exp, "--teacher-checkpoint", sft, "--kd-method", "at",
                                 "--student-model", "varnet-student", *ARCH, "--prepared-maps"))
    ckpt = torch.load(exp / "best_model.pt", map_location="cpu", weights_only=True)
    assert ckpt["arch"]["sens_refine"] is False and np.isfinite(ckpt["val_metrics"]["loss"])
    err = cli_error(train_student_kd.main, common(runs["data"], tmp_path / "init", "--teacher-checkpoint", sft,
                                                  "--init-from-sft", sft, "--prepared-maps"), capsys)
    assert "--prepared-maps conflicts with --init-from-sft" in err


@pytest.mark.slow  # the report measures its convolution roofline in every run: ~30 s on one core
def test_compression_report_times_varnets_on_coil_kspace(tmp_path, runs):
    """scripts/compression.py on a VarNet teacher and student: multi-coil checkpoints run on coil k-space and maps
    (--coils N overrides their coil count), single-coil ones on one coil; the FLOPs grow with the coils."""
    from scripts import compression
    out = {}
    for coils in (None, 8):
        out[coils] = tmp_path / f"report-{coils}"
        compression.main(["--checkpoints", str(runs["teacher"] / "best_model.pt"),
                          str(runs["student"] / "best_model.pt"), "--out-dir", str(out[coils]), "--sizes", "16",
                          "--throughput-batch", "1", "--repeats", "1",
                          "--modes", "exact", *(["--coils", str(coils)] if coils else [])])
    reports = {coils: json.loads((path / "compression.json").read_text()) for coils, path in out.items()}
    teacher, student = reports[None]["networks"]
    costs = reports[None]["costs"]
    assert costs[teacher]["parameters"] > costs[student]["parameters"] and reports[None]["ratios"][student]["flops"] > 1
    assert all(np.isfinite(row["median_s"]) for row in reports[8]["latency"])
    flops = {coils: report["costs"][teacher]["flops"]["16"] for coils, report in reports.items()}
    if runs["kind"] == "multicoil":  # the sensitivity model runs once per coil: 8 coils cost more than the 4
        assert flops[8] > flops[None]
    else:
        assert flops[8] == flops[None]
