"""End to end on fastMRI-schema files: data/prepare.py --fastmri -> train_sft.py -> train_student_kd.py ->
evaluate.py --metrics all, each as its own process, on tiny single-coil knee-like files (32 x 32)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import phantom, run_cli

pytestmark = pytest.mark.slow

SIZE, SLICES = 32, 4
# file name -> patient_id: file1000002 and file1000003 are one patient, who must land in one split.
FILES = {"file1000001": "p1", "file1000002": "p2", "file1000003": "p2", "file1000004": "p3"}
MODELS = ["ZF", "CS (L1-wavelet)", "sft", "sftkd-at"]  # evaluate.py adds the CS baseline row after ZF


def write_single_coil(path: Path, seed: int, patient_id: str) -> None:
    """One knee single-coil file in fastMRI's schema: centred ``kspace`` (S, H, W) complex64 of the image,
    ``reconstruction_esc`` (S, H, W) float32 in fastMRI-like units, attributes max, norm, acquisition,
    patient_id."""
    esc = (np.moveaxis(phantom(SIZE, SLICES, seed), -1, 0) * 3e-4 + 5e-6).astype(np.float32)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(esc, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace.astype(np.complex64)
        f["reconstruction_esc"] = esc
        f.attrs.update({"max": float(esc.max()), "norm": float(np.linalg.norm(esc)), "acquisition": "CORPD_FBK",
                        "patient_id": patient_id})


def run(*args: str) -> str:
    """Run a project script as its own process; returns its stdout, failing the test with its stderr."""
    result = run_cli(*args, timeout=600)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_fastmri_files_through_prepare_sft_kd_and_both_metric_sets(tmp_path: Path):
    raw = tmp_path / "knee_singlecoil_train"
    raw.mkdir()
    for seed, (name, patient) in enumerate(FILES.items()):
        write_single_coil(raw / f"{name}.h5", seed, patient)
    data, sft, kd, out = (tmp_path / name for name in ("data", "sft", "sftkd-at", "eval"))

    printed = run("-m", "data.prepare", "--preset", "fastmri-knee-sc", "--fastmri", str(raw), "--out-dir", str(data),
                  "--size", str(SIZE), "--acc", "4x", "--center-fraction", "0.08", "--min-foreground", "0",
                  "--val-fraction", "0.34", "--seed", "0")
    assert "not comparable with fastMRI leaderboard" in printed
    split = {}
    for part in ("train", "validation", "test"):  # three patients: one per split
        for path in sorted((data / part / "acc_4x").glob("*.h5")):
            with h5py.File(path, "r") as f:
                split[path.stem] = (part, f.attrs["subject"], f["volfs"].shape)
    assert set(split) == set(FILES)  # fastMRI files keep their names
    assert all(shape == (SIZE, SIZE, SLICES) for _, _, shape in split.values())  # every slice kept
    assert {(subject, part) for part, subject, _ in split.values()} == \
        {(patient, split[name][0]) for name, patient in FILES.items()}
    assert split["file1000002"][0] == split["file1000003"][0]  # one patient, one split
    validation = sorted(name for name, (part, _, _) in split.items() if part == "validation")
    assert 0 < len(validation) < len(FILES)
    recorded = json.loads((data / "split.json").read_text())
    assert recorded["split_by"] == "subjects"
    assert sorted(recorded["validation_subjects"]) == sorted({FILES[name] for name in validation})
    assert not set(recorded["train_subjects"]) & set(recorded["validation_subjects"])
    tested = sorted(name for name, (part, _, _) in split.items() if part == "test")
    assert tested and sorted(recorded["test_subjects"]) == sorted({FILES[name] for name in tested})

    common = ["--data-root", str(data), "--acc", "4x", "--epochs", "1", "--no-progress", "--seed", "0",
              "--device", "cpu"]
    run("train_sft.py", *common, "--exp-dir", str(sft))
    run("train_student_kd.py", *common, "--exp-dir", str(kd), "--kd-method", "at",
        "--teacher-checkpoint", str(sft / "best_model.pt"), "--init-from-sft", str(sft / "best_model.pt"))
    printed = run("evaluate.py", "--checkpoints", str(sft / "best_model.pt"), str(kd / "best_model.pt"),
                  "--names", "sft", "sftkd-at", "--data-root", str(data), "--acc", "4x", "--out-dir", str(out),
                  "--metrics", "all", "--device", "cpu")
    assert "fastMRI volume-wise metrics" in printed

    columns, rows = read_csv(out / "metrics.csv")
    assert columns == ["model", "volume", "slice", "PSNR", "SSIM", "NMSE", "HFEN-LoG", "VIF"]
    assert [(r["model"], r["volume"], int(r["slice"])) for r in rows] == \
        [(m, v, s) for m in MODELS for v in tested for s in range(SLICES)]  # evaluate.py scores test/
    columns, volume_rows = read_csv(out / "metrics_fastmri.csv")
    assert columns == ["model", "volume", "NMSE", "PSNR", "SSIM"]
    assert [(r["model"], r["volume"]) for r in volume_rows] == [(m, v) for m in MODELS for v in tested]
    for row in [*rows, *volume_rows]:
        assert all(np.isfinite(float(row[m])) for m in ("PSNR", "SSIM", "NMSE")), row
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test"
    assert list(summary["fastmri"]) == MODELS and all(summary[m]["PSNR"]["n"] == len(tested) * SLICES
                                                      for m in MODELS)
    assert all(summary["fastmri"][m]["SSIM"]["n"] == len(tested) for m in MODELS)
