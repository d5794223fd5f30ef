"""Tests for scripts/figure.py: the PNG is written (with and without inset), defaults and errors."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from matplotlib import image as mpimg

from conftest import make_dataset, run_cli
from scripts.figure import default_slice, main
from utils import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def eval_dir(tmp_path):
    """Tiny data and an evaluate.py-like folder with two models' reconstructions (target plus noise)."""
    root = make_dataset(tmp_path / "data")
    with h5py.File(root / "validation" / "acc_4x" / "vol02.h5", "r") as f:
        target = np.moveaxis(f["volfs"][()], -1, 0)  # (S, H, W)
    out = tmp_path / "eval"
    rng = np.random.default_rng(0)
    for name, noise in (("teacher", 0.01), ("sftkd-at", 0.02)):
        (out / "recons" / name).mkdir(parents=True)
        with h5py.File(out / "recons" / name / "vol02.h5", "w") as f:
            f["reconstruction"] = (target + rng.normal(0, noise, target.shape)).astype(np.float32)
    summary = {"acc": "4x", "checkpoints": {"teacher": "t.pt", "sftkd-at": "s.pt"}}
    (out / "summary.json").write_text(json.dumps(summary))
    return root, out, target


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    return image


@pytest.mark.slow
def test_figure_with_and_without_inset(eval_dir, tmp_path):
    root, out, _ = eval_dir
    plain, zoomed = tmp_path / "plain.png", tmp_path / "inset.png"
    common = ["--eval-dir", str(out), "--data-root", str(root), "--acc", "4x"]
    result = run_cli("-m", "scripts.figure", *common, "--output", str(plain))
    assert result.returncode == 0, result.stderr
    assert "ZF, teacher, sftkd-at" in result.stdout
    main([*common, "--inset", "4", "6", "12", "--error-scale", "10", "--models", "sftkd-at", "--slice", "1",
          "--out", str(zoomed)])  # --out: the old spelling of --output still works
    image_plain, image_zoomed = check_png(plain), check_png(zoomed)
    assert image_zoomed.shape[1] < image_plain.shape[1]  # one model fewer: narrower figure
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_default_slice_has_most_energy():
    target = np.zeros((3, 8, 8))
    target[0] = 0.5  # energy 16
    target[1, 0, 0] = 1.0  # the brightest pixel, but energy 1
    assert default_slice(target) == 0
    target[2] = 0.6  # energy 23.04
    assert default_slice(target) == 2


def test_errors(eval_dir, tmp_path):
    root, out, _ = eval_dir
    common = ["--eval-dir", str(out), "--data-root", str(root), "--acc", "4x"]
    with pytest.raises(UserError, match="does not fit"):
        main([*common, "--inset", "30", "0", "8", "--out", str(tmp_path / "a.png")])
    with pytest.raises(UserError, match="student.*does not exist"):
        main([*common, "--models", "student", "--out", str(tmp_path / "a.png")])
    with pytest.raises(UserError, match="evaluated at 4x"):
        main([*common[:-1], "5x", "--out", str(tmp_path / "a.png")])
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"old")
    result = run_cli("-m", "scripts.figure", *common, "--out", str(existing))
    assert result.returncode == 2 and "--overwrite" in result.stderr and existing.read_bytes() == b"old"
