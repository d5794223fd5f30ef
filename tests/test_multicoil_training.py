"""Multi-coil batches (issue 36): the dataset serves coil k-space and maps, and every network family, SFT and all
14 KD methods train on them through the one DF entry point (data/fft.py's data_fidelity with maps)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import evaluate
import train_sft
import train_student_kd
import train_teacher
from conftest import cli_error, make_multicoil_dataset
from data.dataset import SliceDataset
from data.fft import expand, reduce, to_complex
from models.distill.losses import KD_METHODS

SIZE, COILS = 16, 4


def common(data: Path, exp: Path, *extra: str) -> list[str]:
    return ["--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1", "--no-progress", "--seed", "0",
            "--batch-size", "2", *extra]


@pytest.fixture(scope="module")
def mc_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multicoil")
    data = make_multicoil_dataset(root / "data", size=SIZE, coils=COILS,
                                  volumes=(("train", 2), ("validation", 1), ("test", 1)))
    runs = {"data": data}
    for name, script, extra in (("teacher", train_teacher, ("--model", "teacher")),
                                ("student", train_teacher, ("--model", "student")),
                                ("unet-teacher", train_teacher, ("--model", "unet-teacher")),
                                ("sft", train_sft, ())):
        script.main(common(data, root / name, *extra))
        runs[name] = root / name
    return runs


def test_the_dataset_serves_coil_kspace_and_maps(mc_runs):
    dataset = SliceDataset(mc_runs["data"], "train", "4x")
    assert dataset.coils == COILS and dataset.maps_method == "true"
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch.kspace_under.shape == (2, COILS, SIZE, SIZE) and batch.kspace_under.dtype == torch.complex64
    assert batch.maps.shape == (2, COILS, SIZE, SIZE) and batch.maps.dtype == torch.complex64
    assert batch.inputs.maps is batch.maps
    assert batch.zero_filled.shape == batch.target.shape == (2, 2, SIZE, SIZE)
    # The stored relations: zero-filled = E^H y (float32 rounding of sums of 4 coils), y zero off the mask.
    assert torch.allclose(to_complex(batch.zero_filled), reduce(batch.kspace_under, batch.maps), atol=1e-5)
    assert not batch.kspace_under[(batch.mask < 0.5).expand_as(batch.kspace_under)].any()
    # With the simulation's maps the target's coil k-space is the acquired one where sampled.
    keep = (batch.mask > 0.5).expand_as(batch.kspace_under)
    assert torch.allclose(expand(to_complex(batch.target), batch.maps)[keep], batch.kspace_under[keep], atol=1e-5)


def test_networks_and_sft_train_on_multicoil_data(mc_runs):
    for name in ("teacher", "student", "unet-teacher", "sft"):
        ckpt = torch.load(mc_runs[name] / "best_model.pt", map_location="cpu", weights_only=True)
        assert np.isfinite(ckpt["val_metrics"]["loss"]), name
        config = json.loads((mc_runs[name] / "config.json").read_text())
        assert (config["image"], config["coils"], config["maps"]) == ("complex", COILS, "true"), name


@pytest.mark.parametrize("method", sorted(KD_METHODS))
def test_every_kd_method_trains_on_multicoil_data(tmp_path, mc_runs, method):
    sft = str(mc_runs["sft"] / "best_model.pt")
    exp = tmp_path / method
    train_student_kd.main(common(mc_runs["data"], exp, "--teacher-checkpoint", sft, "--init-from-sft", sft,
                                 "--kd-method", method))
    ckpt = torch.load(exp / "best_model.pt", map_location="cpu", weights_only=True)
    assert np.isfinite(ckpt["val_metrics"]["loss"])


def test_evaluate_scores_multicoil_models_against_the_rss_with_the_cs_row(tmp_path, mc_runs):
    out = tmp_path / "eval"
    kd = tmp_path / "sftkd"
    sft = str(mc_runs["sft"] / "best_model.pt")
    train_student_kd.main(common(mc_runs["data"], kd, "--teacher-checkpoint", sft, "--init-from-sft", sft))
    evaluate.main(["--checkpoints", str(mc_runs["teacher"] / "best_model.pt"), sft, str(kd / "best_model.pt"),
                   "--data-root", str(mc_runs["data"]), "--acc", "4x", "--out-dir", str(out), "--metrics", "all"])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["coils"], summary["maps"], summary["image"]) == (COILS, "true", "complex")
    assert summary["cs"]["lambda"] in (1e-5, 1e-4, 1e-3, 1e-2) and len(summary["cs"]["candidates"]) == 4
    for name in ("ZF", "CS (L1-wavelet)", "teacher", "sft", "sftkd-at"):
        assert np.isfinite(summary[name]["PSNR"]["mean"]) and summary[name]["PSNR"]["n"] == 3, name
        assert name in summary["fastmri"], name
    # The CS row beats zero-filling (its lambda was chosen on validation slices, its data term is E^H's).
    assert summary["CS (L1-wavelet)"]["PSNR"]["mean"] > summary["ZF"]["PSNR"]["mean"]
    # ZF is scored as |E^H y| against the stored RSS, recomputed here for the first slice.
    dataset = SliceDataset(mc_runs["data"], "test", "4x")
    item = dataset[0]
    with h5py.File(dataset.files[0]) as f:
        rss = f["reconstruction_rss"][:, :, 0]
    zf = reduce(item.kspace_under[None], item.maps[None])[0, 0].abs().numpy()
    psnr = 10 * np.log10(rss.max() ** 2 / np.mean((rss.astype(np.float64) - zf) ** 2))
    row = next(r for r in (out / "metrics.csv").read_text().splitlines() if r.startswith("ZF,vol3,0,"))
    assert float(row.split(",")[3]) == pytest.approx(psnr, abs=1e-3)


def test_a_multicoil_checkpoint_on_single_coil_data_and_the_reverse_are_refused(tmp_path, capsys, mc_runs):
    from test_complex import make_complex_dataset
    single = make_complex_dataset(tmp_path / "single")
    err = cli_error(evaluate.main, ["--checkpoints", str(mc_runs["teacher"] / "best_model.pt"), "--data-root",
                                    str(single), "--acc", "4x", "--out-dir", str(tmp_path / "e1")], capsys)
    assert "trained on multi-coil data (4 coils" in err and "single-coil data" in err
    assert not (tmp_path / "e1").exists() or not any((tmp_path / "e1").iterdir())
    single_teacher = tmp_path / "single-teacher"
    train_teacher.main(common(single, single_teacher, "--model", "student"))
    err = cli_error(train_student_kd.main, common(mc_runs["data"], tmp_path / "kd", "--teacher-checkpoint",
                                                  str(single_teacher / "best_model.pt")), capsys)
    assert err.startswith("error: --teacher-checkpoint") and "single-coil data" in err and "multi-coil" in err
    assert not (tmp_path / "kd").exists()


def test_augmentation_moves_the_maps_with_the_image(tmp_path, mc_runs):
    from data.augment import AugmentedSlices
    dataset = SliceDataset(mc_runs["data"], "train", "4x")
    augmented = AugmentedSlices(dataset, seed=0)
    for key in [(index, epoch) for index in range(3) for epoch in range(3)]:
        item = augmented[key]
        assert item.kspace_under.shape == item.maps.shape == (COILS, SIZE, SIZE)
        # The coil k-space is E of the augmented target with the augmented maps, zero off the mask (float32
        # rounding of 16 x 16 FFTs), and the maps keep unit RSS where they had it.
        expected = expand(to_complex(item.target), item.maps) * item.mask
        assert torch.allclose(item.kspace_under, expected, atol=1e-6)
        assert torch.allclose(to_complex(item.zero_filled), reduce(item.kspace_under, item.maps), atol=1e-6)
        assert torch.allclose((item.maps.abs() ** 2).sum(0), torch.ones(SIZE, SIZE), atol=1e-5)
    train_teacher.main(common(mc_runs["data"], tmp_path / "augmented", "--model", "student", "--augment"))
    assert (tmp_path / "augmented" / "best_model.pt").is_file()


@pytest.mark.parametrize("damage", ["maps", "coils"])
def test_mismatched_maps_or_coil_counts_are_refused_in_one_line(tmp_path, capsys, damage):
    data = make_multicoil_dataset(tmp_path / "data", size=SIZE, coils=COILS)
    victim = data / "train" / "acc_4x" / "vol1.h5"
    if damage == "maps":
        with h5py.File(victim, "a") as f:
            maps = f["maps_4x"][()]
            del f["maps_4x"]
            f["maps_4x"] = maps[:, :, :-1]  # one slice short
    else:
        other = make_multicoil_dataset(tmp_path / "other", size=SIZE, coils=COILS - 1)
        victim.unlink()
        (other / "train" / "acc_4x" / "vol1.h5").rename(victim)
    exp = tmp_path / "run"
    err = cli_error(train_teacher.main, common(data, exp, "--model", "student"), capsys)
    assert "vol1.h5" in err
    assert ("do not match the k-space" in err) if damage == "maps" else ("3 coils" in err and "4 coils" in err)
    assert not exp.exists()
