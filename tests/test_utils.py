"""Tests of utils.py: atomic files, checkpoints, RNG state, metrics and the CLI error wrapper."""
from __future__ import annotations

import argparse
import errno
import io
import json
import random

import numpy as np
import pytest
import torch

from data.masks import AccelerationError
from tests.conftest import phantom
from utils import (METRICS, PUBLIC_VOLUME_METRICS, UserError, atomic_write, get_rng_state, hfen_log,
                   laplacian_hfn, load_checkpoint, nmse, psnr, run_cli, save_checkpoint, seed_everything,
                   set_rng_state, ssim, vif, write_json, write_text)


# --------------------------------------------------------------------------- atomic files

def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")

    def half_write(f):
        f.write(b"new partial data")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, half_write)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]

    atomic_write(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_write_json_and_text(tmp_path):
    write_json(tmp_path / "a" / "b.json", {"psnr": 31.5, "names": ["x"]})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"psnr": 31.5, "names": ["x"]}
    write_text(tmp_path / "c.txt", "hello\n")
    assert (tmp_path / "c.txt").read_text() == "hello\n"


# --------------------------------------------------------------------------- checkpoints

def _checkpoint() -> dict:
    torch.manual_seed(0)
    return {"format": "sftkd-v1", "arch": {"kind": "dccnn", "n_convs": 3},
            "model": {"w": torch.randn(3, 4), "b": torch.arange(5)},
            "epoch": 7, "best_val_loss": 0.125, "config": {"acc": ["4x"], "lr": 1e-3}}


def test_checkpoint_round_trip(tmp_path):
    ckpt = _checkpoint()
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(ckpt, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], ckpt["model"]["w"])
    assert torch.equal(loaded["model"]["b"], ckpt["model"]["b"])
    assert loaded["epoch"] == 7 and loaded["best_val_loss"] == 0.125
    assert loaded["config"] == ckpt["config"] and loaded["arch"] == ckpt["arch"]
    # The file itself loads with weights_only=True (no pickled objects inside).
    torch.load(path, weights_only=True)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(UserError, match="does not exist") as info:
        load_checkpoint(missing, "--teacher-checkpoint")
    assert str(missing) in str(info.value) and "--teacher-checkpoint" in str(info.value)

    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(_checkpoint(), corrupt)
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as info:
        load_checkpoint(corrupt)
    assert str(corrupt) in str(info.value) and "\n" not in str(info.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(UserError, match="garbage.pt"):
        load_checkpoint(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "public.pt"
    torch.save({"model": {}, "arch": {}, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(UserError, match=r"pickled Python objects \(argparse.Namespace\).*import_checkpoint"):
        load_checkpoint(path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {}, "arch": {}, "args": io.StringIO("x")}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="old-style torch file .* --trust-pickle"):
        load_checkpoint(legacy)


def test_a_dataloader_worker_error_prints_the_workers_own_message(capsys, monkeypatch):
    """torch re-raises a worker's error with its traceback as the message; the user sees the last line only."""
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise AccelerationError("'3y' is not an acceleration")

    def main(argv):
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))

    with pytest.raises(SystemExit):
        run_cli(main, [])
    assert capsys.readouterr().err == "error: '3y' is not an acceleration\n"


# --------------------------------------------------------------------------- RNG state

def _draw() -> tuple:
    return (random.random(), random.randint(0, 10 ** 9), tuple(np.random.rand(3)),
            float(np.random.standard_normal()), tuple(torch.rand(3).tolist()), int(torch.randint(0, 10 ** 9, ())))


@pytest.mark.parametrize("through_file", [False, True])
def test_rng_state_reproduces_next_numbers(tmp_path, through_file):
    seed_everything(123)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state (has_gauss = 1)
    state = get_rng_state()
    expected = _draw()
    if through_file:
        torch.save(state, tmp_path / "rng.pt")
        state = torch.load(tmp_path / "rng.pt", weights_only=True)
    _draw()  # move every generator on
    set_rng_state(state)
    assert _draw() == expected


def test_seed_everything_repeats():
    seed_everything(5)
    first = _draw()
    seed_everything(5)
    assert _draw() == first
    seed_everything(6)
    assert _draw() != first


# --------------------------------------------------------------------------- metrics

def _images(size=32, seed=0, noise=0.05):
    target = phantom(size, 1, seed)[:, :, 0]
    rng = np.random.default_rng(seed + 1)
    return target, target + rng.normal(0.0, noise, target.shape)


def test_psnr_hand_value():
    target, recon = _images()
    mse = np.mean((target - recon) ** 2)
    assert psnr(target, recon) == pytest.approx(10 * np.log10(target.max() ** 2 / mse), rel=1e-9)
    # data_range is target.max(): scaling both images leaves PSNR unchanged.
    assert psnr(3 * target, 3 * recon) == pytest.approx(psnr(target, recon), rel=1e-9)


def test_nmse_hand_value():
    target = np.array([[1.0, 2.0], [3.0, 4.0]])
    recon = np.array([[1.0, 2.5], [2.0, 4.0]])
    assert nmse(target, recon) == pytest.approx((0.25 + 1.0) / 30.0, rel=1e-12)
    assert nmse(target, target) == 0.0


def test_ssim():
    target, recon = _images()
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < ssim(target, recon) < 0.95


def test_hfen_log():
    target, recon = _images()
    assert hfen_log(target, target) == 0.0
    value = hfen_log(target, recon)
    assert value > 0.1
    smooth_error = target + 0.05  # a constant offset has no high frequencies
    assert hfen_log(target, smooth_error) < 1e-6 < value


def test_vif_identity_and_padding_path():
    target, recon = _images(size=64)
    assert vif(target, target) == pytest.approx(1.0, abs=1e-4)
    small_target, small_recon = _images(size=32)
    assert vif(small_target, small_target) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < vif(small_target, small_recon) < 0.9
    non_square = vif(target[:40, :], recon[:40, :])
    assert 0.0 < non_square < 0.9


def test_vif_decreases_with_noise():
    target = phantom(64, 1, 3)[:, :, 0]
    rng = np.random.default_rng(0)
    unit_noise = rng.normal(0.0, 1.0, target.shape)
    values = [vif(target, target + sigma * unit_noise) for sigma in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)]
    assert values[0] == pytest.approx(1.0, abs=1e-4)
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.3
    # Intensity units do not matter.
    assert vif(100 * target, 100 * (target + 0.02 * unit_noise)) == pytest.approx(values[3], rel=1e-6)


def test_metric_registry():
    assert list(METRICS) == ["PSNR", "SSIM", "NMSE", "HFEN-LoG", "VIF"]
    target, recon = _images()
    assert METRICS["NMSE"](target, recon) == nmse(target, recon)



# --------------------------------------------------------------------------- the public code's volume metrics

def _laplacian(image: np.ndarray) -> np.ndarray:
    """The 3 x 3 five-point Laplacian with mirrored edges (scipy's 'reflect' is numpy's 'symmetric')."""
    p = np.pad(image, 1, mode="symmetric")
    return 4 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]


def _public_volume_case() -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W) float64 target whose slices fall in brightness (1 to 0.1) and a recon with per-slice noise
    (std 0.01 to 0.08) that leaves [0, 1] on the bright slices, so clipping and pooling both matter."""
    rng = np.random.default_rng(3)
    target = rng.uniform(0.2, 1.0, (3, 24, 24)) * np.array([1.0, 0.4, 0.1])[:, None, None]
    return target, target + rng.normal(0, 1, target.shape) * np.array([0.01, 0.03, 0.08])[:, None, None]


def test_public_volume_metrics_match_the_public_formulas():
    from skimage.metrics import structural_similarity
    target, recon = _public_volume_case()
    assert recon.max() > 1 and recon.min() < 0
    got = {name: fn(target, recon) for name, fn in PUBLIC_VOLUME_METRICS.items()}
    error = (target - recon) ** 2
    assert got["PSNR"] == pytest.approx(10 * np.log10(target.max() ** 2 / error.mean()), rel=1e-12)
    assert got["NMSE"] == pytest.approx(error.sum() / (target ** 2).sum(), rel=1e-12)
    # The public call: (H, W, S) with the slices as channels and the volume's maximum.
    hws = np.moveaxis(target, 0, -1), np.moveaxis(recon, 0, -1)
    assert got["SSIM"] == pytest.approx(structural_similarity(*hws, channel_axis=-1, data_range=target.max()),
                                        rel=1e-12)
    expected_hfn = np.mean([np.sum((_laplacian(t) - _laplacian(np.clip(r, 0, 1))) ** 2) / np.sum(_laplacian(t) ** 2)
                            for t, r in zip(target, recon)])
    assert got["HFN"] == pytest.approx(expected_hfn, rel=1e-12)
    # Built so that the per-slice set differs: slice maxima, per-slice means, LoG instead of the 3 x 3 Laplacian.
    assert abs(np.mean([psnr(t, r) for t, r in zip(target, recon)]) - got["PSNR"]) > 1.0
    assert abs(np.mean([ssim(t, r) for t, r in zip(target, recon)]) - got["SSIM"]) > 0.01
    assert abs(np.mean([hfen_log(t, r) for t, r in zip(target, recon)]) - got["HFN"]) > 0.1 * got["HFN"]
    unclipped = np.mean([np.sum((_laplacian(t) - _laplacian(r)) ** 2) / np.sum(_laplacian(t) ** 2)
                         for t, r in zip(target, recon)])
    assert unclipped != pytest.approx(got["HFN"], rel=1e-3)


def test_laplacian_hfn_leaves_out_flat_slices_and_checks_shapes():
    target, recon = _public_volume_case()
    target[1] = 0.5  # constant: its Laplacian is zero everywhere
    kept = laplacian_hfn(target[[0, 2]], recon[[0, 2]])
    assert laplacian_hfn(target, recon) == pytest.approx(kept, rel=1e-12)
    assert laplacian_hfn(target, target) == 0.0
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        laplacian_hfn(target[0], recon[0])

# --------------------------------------------------------------------------- run_cli

def _failing_main(argv):
    if argv and argv[0] == "ok":
        print("fine")
        return
    raise UserError("--data-root /nowhere does not exist")


def test_run_cli_user_error_exit_code(capsys, monkeypatch):
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        run_cli(_failing_main, ["--flag"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --data-root /nowhere does not exist\n"
    assert "Traceback" not in captured.err

    run_cli(_failing_main, ["ok"])
    assert capsys.readouterr().out == "fine\n"


def test_run_cli_debug_reraises(monkeypatch):
    with pytest.raises(UserError):
        run_cli(_failing_main, ["--debug"])
    monkeypatch.setenv("SFTKD_DEBUG", "1")
    with pytest.raises(UserError):
        run_cli(_failing_main, [])


def test_run_cli_disk_full_is_user_facing(capsys, monkeypatch):
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)

    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/model.pt")

    with pytest.raises(SystemExit) as info:
        run_cli(disk_full, [])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device: /out/model.pt")

    def bug(argv):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):
        run_cli(bug, [])


def _renamed_parser():
    from utils import CliParser, old_spellings
    parser = CliParser(prog="tool")
    old_spellings(parser.add_argument("--out-dir", "--out", dest="out", required=True), "--out")
    return parser


def test_old_spelling_of_a_renamed_flag_still_parses_but_is_hidden(capsys):
    parser = _renamed_parser()
    assert parser.parse_args(["--out", "a"]).out == parser.parse_args(["--out-dir", "a"]).out == "a"
    text = parser.format_help()
    assert "--out-dir" in text and "--out " not in text and "--out," not in text
    assert "--debug" in text and "SFTKD_DEBUG" in text
    with pytest.raises(SystemExit):
        parser.parse_args([])
    err = capsys.readouterr().err
    assert "required: --out-dir (see tool --help)" in err and "--out-dir/--out" not in err
    # --debug is consumed by run_cli, so it never reaches config.json through the parsed flags.
    assert "debug" not in vars(parser.parse_args(["--out-dir", "a"]))


@pytest.mark.parametrize("text, ok", [("0", True), ("42", True), (str(2 ** 32 - 1), True), (str(2 ** 32), False),
                                      ("-1", False), ("1.5", False)])
def test_seed_type_takes_numpy_seeds_only(text, ok):
    import argparse
    from utils import seed_type
    if ok:
        assert seed_type(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="0 to 4294967295"):
            seed_type(text)


@pytest.mark.parametrize("text, ok", [("0", True), ("0.5", True), ("-1", False), ("nan", False), ("inf", False),
                                      ("x", False)])
def test_weight_type(text, ok):
    import argparse
    from utils import weight_type
    if ok:
        assert weight_type(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            weight_type(text)
