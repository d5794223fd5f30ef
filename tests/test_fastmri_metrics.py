"""Tests for fastMRI's volume-wise metrics (models.evaluation.metrics.FASTMRI_METRICS) and evaluate.py / report.py --metrics fastmri."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from conftest import make_dataset, run_cli
from evaluate import main
from models.checkpoints.format import model_payload
from models.checkpoints.io import save_checkpoint
from models.nets.dccnn import DCCNN, STUDENT
from models.evaluation.metrics import FASTMRI_METRICS, psnr, volume_ssim
from scripts.report import main as report_main
from utils import UserError

volume_nmse, volume_psnr = FASTMRI_METRICS["NMSE"], FASTMRI_METRICS["PSNR"]

FASTMRI_HEADER = "model,volume,NMSE,PSNR,SSIM"


def volume_pair(seed: int = 0, slices: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A target (S, H, W) float64 whose slices differ in brightness (1.0 down to 0.1), and a recon with noise
    whose std differs per slice (0.01 up to 0.08), as errors do between the centre and the edge of a volume."""
    rng = np.random.default_rng(seed)
    brightness = np.linspace(1.0, 0.1, slices)[:, None, None]
    noise_std = np.geomspace(0.01, 0.08, slices)[:, None, None]
    target = rng.uniform(0.2, 1.0, (slices, size, size)) * brightness
    return target, target + rng.normal(0, 1, target.shape) * noise_std


def test_metrics_match_direct_formulas():
    target, recon = volume_pair()
    squared_error = (target - recon) ** 2
    assert volume_nmse(target, recon) == pytest.approx(squared_error.sum() / (target ** 2).sum(), rel=1e-12)
    assert volume_psnr(target, recon) == pytest.approx(10 * np.log10(target.max() ** 2 / squared_error.mean()),
                                                       rel=1e-12)
    per_slice = [structural_similarity(t, r, data_range=target.max()) for t, r in zip(target, recon)]
    assert volume_ssim(target, recon) == pytest.approx(np.mean(per_slice), rel=1e-12)


def test_volume_psnr_is_not_the_mean_of_slice_psnrs():
    target, recon = volume_pair()
    per_slice = np.mean([psnr(t, r) for t, r in zip(target, recon)])  # the paper's metric, slice maxima
    per_slice_volume_max = np.mean([10 * np.log10(target.max() ** 2 / np.mean((t - r) ** 2))
                                    for t, r in zip(target, recon)])
    pooled = volume_psnr(target, recon)
    # One MSE over the volume is dominated by its worst slices; averaging per-slice PSNRs (logarithms) is not,
    # and per-slice peaks lower the dim slices' PSNR: both shortcuts miss fastMRI's number by dB.
    assert pooled == pytest.approx(26.59, abs=0.01)
    assert per_slice_volume_max - pooled > 4.0
    assert pooled - per_slice > 3.0
    slice_max_ssim = np.mean([structural_similarity(t, r, data_range=t.max()) for t, r in zip(target, recon)])
    assert volume_ssim(target, recon) - slice_max_ssim > 0.02  # the volume's range shrinks the dim slices' C1, C2


def test_all_zero_slice_counts_and_shapes_are_checked():
    target, recon = volume_pair(slices=3)
    target[2] = 0.0  # an empty outer slice: fastMRI keeps it in the volume
    ssim_zero = structural_similarity(target[2], recon[2], data_range=target.max())
    assert volume_ssim(target, recon) == pytest.approx(
        np.mean([structural_similarity(t, r, data_range=target.max()) for t, r in zip(target[:2], recon[:2])]
                + [ssim_zero]), rel=1e-12)
    assert np.isfinite([volume_nmse(target, recon), volume_psnr(target, recon)]).all()
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        volume_ssim(target[0], recon[0])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A random student evaluated by the CLI with --metrics all (and --save-recons) on 2 volumes of 3 slices."""
    tmp = tmp_path_factory.mktemp("fastmri_eval")
    root = make_dataset(tmp / "data", val_volumes=2, slices=3)
    torch.manual_seed(0)
    checkpoint = tmp / "student.pt"
    save_checkpoint(model_payload(DCCNN(STUDENT), run_name="student"), checkpoint)
    common = ["--checkpoints", str(checkpoint), "--data-root", str(root), "--acc", "4x", "--device", "cpu"]
    result = run_cli("evaluate.py", *common, "--out-dir", str(tmp / "all"), "--metrics", "all", "--save-recons")
    assert result.returncode == 0, result.stderr
    return {"tmp": tmp, "root": root, "common": common, "out": tmp / "all", "stdout": result.stdout}


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_volume_rows_computed_as_fastmri_does(evaluated):
    out = evaluated["out"]
    assert (out / "metrics_fastmri.csv").read_text().splitlines()[0] == FASTMRI_HEADER
    rows = read_rows(out / "metrics_fastmri.csv")
    assert [(r["model"], r["volume"]) for r in rows] == [(m, v) for m in ("ZF", "CS (L1-wavelet)", "student")
                                                         for v in ("vol02", "vol03")]
    for row in rows:
        if row["model"] == "CS (L1-wavelet)":  # not saved with --save-recons: recomputed for ZF and a net
            continue
        with h5py.File(evaluated["root"] / "validation" / "acc_4x" / f"{row['volume']}.h5", "r") as f:
            target = np.moveaxis(f["volfs"][()], -1, 0).astype(np.float32)  # the layout is (H, W, S)
            zero_filled = np.moveaxis(f["img_volus_4x"][()], -1, 0).astype(np.float32)
        if row["model"] == "ZF":
            recon = zero_filled
        else:
            with h5py.File(out / "recons" / "student" / f"{row['volume']}.h5", "r") as f:
                recon = f["reconstruction"][()]
        target, recon = target.astype(np.float64), recon.astype(np.float64)
        error = np.sum((target - recon) ** 2)
        assert float(row["NMSE"]) == pytest.approx(error / np.sum(target ** 2), rel=1e-9)
        assert float(row["PSNR"]) == pytest.approx(10 * np.log10(target.max() ** 2 * target.size / error), rel=1e-9)
        assert float(row["SSIM"]) == pytest.approx(np.mean(
            [structural_similarity(t, r, data_range=target.max()) for t, r in zip(target, recon)]), rel=1e-9)
    assert "fastMRI volume-wise metrics" in evaluated["stdout"] and "metrics_fastmri.csv (6 rows)" in evaluated["stdout"]


def test_summary_has_a_fastmri_block_over_volumes(evaluated):
    summary = json.loads((evaluated["out"] / "summary.json").read_text())
    rows = read_rows(evaluated["out"] / "metrics_fastmri.csv")
    for model in ("ZF", "student"):
        for metric in ("NMSE", "PSNR", "SSIM"):
            values = [float(r[metric]) for r in rows if r["model"] == model]
            stats = summary["fastmri"][model][metric]
            assert stats["n"] == 2
            assert stats["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert stats["std"] == pytest.approx(np.std(values), rel=1e-9)
        assert summary[model]["PSNR"]["n"] == 6  # the paper's per-slice statistics stay at the top level


def test_paper_output_is_unchanged_and_sets_are_separate(evaluated):
    tmp, common = evaluated["tmp"], evaluated["common"]
    main([*common, "--out-dir", str(tmp / "paper")])  # the default: --metrics paper
    main([*common, "--out-dir", str(tmp / "fastmri"), "--metrics", "fastmri"])
    assert sorted(p.name for p in (tmp / "paper").iterdir()) == ["manifest.json", "metrics.csv", "summary.json"]
    assert sorted(p.name for p in (tmp / "fastmri").iterdir()) == ["manifest.json", "metrics_fastmri.csv", "summary.json"]
    assert (tmp / "paper" / "metrics.csv").read_bytes() == (evaluated["out"] / "metrics.csv").read_bytes()
    assert (tmp / "fastmri" / "metrics_fastmri.csv").read_bytes() == \
        (evaluated["out"] / "metrics_fastmri.csv").read_bytes()
    both = json.loads((evaluated["out"] / "summary.json").read_text())
    paper = json.loads((tmp / "paper" / "summary.json").read_text())
    fastmri = json.loads((tmp / "fastmri" / "summary.json").read_text())
    assert paper == {k: v for k, v in both.items() if k not in ("fastmri", "public_volume")}
    assert list(paper) == ["ZF", "CS (L1-wavelet)", "student", "acc", "split", "test_set", "data_root", "mask",
                           "checkpoints", "roles", "trained_acc", "machine", "trained_on", "recipe", "image", "kspace",
                           "cs"]
    assert fastmri == {k: v for k, v in both.items() if k not in ("ZF", "CS (L1-wavelet)", "student", "public_volume")}


def test_overwrite_refusal_and_stale_files(evaluated, tmp_path):
    common = evaluated["common"]
    out = tmp_path / "eval"
    main([*common, "--out-dir", str(out), "--metrics", "fastmri"])
    before = (out / "metrics_fastmri.csv").read_bytes()
    with pytest.raises(UserError, match="metrics_fastmri.csv already exists; pass --overwrite"):
        main([*common, "--out-dir", str(out)])
    assert (out / "metrics_fastmri.csv").read_bytes() == before and not (out / "metrics.csv").exists()
    main([*common, "--out-dir", str(out), "--overwrite"])
    # the fastMRI file would contradict the new summary.json, which has no fastmri block
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "metrics.csv", "summary.json"]


def test_report_adds_the_fastmri_table(evaluated, tmp_path):
    report_main(["--eval-dirs", str(evaluated["out"]), "--out-dir", str(tmp_path / "r")])
    table = (tmp_path / "r" / "table.md").read_text()
    summary = json.loads((evaluated["out"] / "summary.json").read_text())["fastmri"]["student"]
    assert "fastMRI's volume-wise metrics" in table
    assert f"| all | 4x | Student | {summary['NMSE']['mean']:.4f} ± {summary['NMSE']['std']:.4f} | " \
           f"{summary['PSNR']['mean']:.2f} ± {summary['PSNR']['std']:.2f} | " in table
    assert "fastmri" not in (tmp_path / "r" / "table.csv").read_text().lower()
