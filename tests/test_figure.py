"""Tests for scripts/figure.py: the PNG is written (with and without inset), defaults and errors."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from matplotlib import image as mpimg

from conftest import make_dataset, run_cli
from scripts.figure import default_slice, main, median_slice
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


def test_median_slice_is_a_scored_slice_at_the_middle_rank():
    odd = {("a", 0): 30.0, ("a", 1): 10.0, ("b", 0): 20.0}
    assert median_slice(odd) == ("b", 0)
    even = {("a", 0): 4.0, ("a", 1): 1.0, ("a", 2): 3.0, ("a", 3): 2.0}
    assert median_slice(even) == ("a", 3)  # 2.0: the lower of the middle two (2.0, 3.0)
    assert median_slice({("a", 5): 7.0}) == ("a", 5)


def test_median_of_picks_the_model_median_slice_and_names_it(eval_dir, tmp_path, capsys):
    root, out, target = eval_dir
    n = target.shape[0]
    # The teacher's PSNR per slice is a permutation of n values; the median of n values sits at rank (n - 1) // 2.
    psnrs = np.random.default_rng(3).permutation(np.arange(n, dtype=float) + 25.0)
    rows = ["model,volume,slice,PSNR,SSIM"]
    rows += [f"teacher,vol02,{s},{float(p)!r},0.9" for s, p in enumerate(psnrs)]
    rows += [f"sftkd-at,vol02,{s},{float(40.0 - p)!r},0.9" for s, p in enumerate(psnrs)]  # another model, other order
    (out / "metrics.csv").write_text("\n".join(rows) + "\n")
    (out / "summary.json").write_text(json.dumps({"acc": "4x", "split": "validation",
                                                  "checkpoints": {"teacher": "t.pt", "sftkd-at": "s.pt"}}))
    expected = int(np.argsort(psnrs)[(n - 1) // 2])
    main(["--eval-dir", str(out), "--data-root", str(root), "--acc", "4x", "--median-of", "teacher",
          "--out", str(tmp_path / "median.png")])
    printed = capsys.readouterr().out
    assert f"vol02, slice {expected}," in printed
    assert (f"title: validation split, vol02 slice {expected}: the median teacher PSNR "
            f"({psnrs[expected]:.2f} dB) of {n} slices of 1 volume") in printed
    check_png(tmp_path / "median.png")
    with pytest.raises(UserError, match="--median-of student: .* no rows of that model"):
        main(["--eval-dir", str(out), "--data-root", str(root), "--acc", "4x", "--median-of", "student",
              "--out", str(tmp_path / "b.png")])
    with pytest.raises(UserError, match="give one of them"):
        main(["--eval-dir", str(out), "--data-root", str(root), "--acc", "4x", "--median-of", "teacher",
              "--slice", "0", "--out", str(tmp_path / "c.png")])
