"""The held-out test split of data/prepare.py: three contiguous blocks for one subject, three subject groups for
several, an external test-only set, and the leak check over all three splits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data.prepare import prepare
from data.split_check import check_split
from data.subjects import BLOCK_GAP, assign_subjects, block_split, split_groups
from tests.test_prepare import synthetic_volume, write_nifti
from utils import UserError


def _positions(root: Path, split: str) -> np.ndarray:
    (path,) = (root / split / "acc_4x").glob("*.h5")
    with h5py.File(path, "r") as f:
        return np.asarray(f.attrs["source_slices"])


def test_one_subject_gets_three_blocks_with_gaps():
    blocks = block_split(np.arange(100, 120), 0.2, "x", test_fraction=0.2)
    np.testing.assert_array_equal(blocks["train"], np.arange(100, 108))
    np.testing.assert_array_equal(blocks["validation"], np.arange(108 + BLOCK_GAP, 112 + BLOCK_GAP))
    np.testing.assert_array_equal(blocks["test"], np.arange(116, 120))
    assert set(block_split(np.arange(20), 0.2, "x")) == {"train", "validation"}  # --test-fraction 0
    with pytest.raises(UserError, match="only 8 usable slice positions.*--test-fraction"):
        block_split(np.arange(8), 0.2, "x", test_fraction=0.2)  # 2 + 2 + 2 gaps of 2: no training slice


def test_subject_groups_are_seeded_disjoint_and_keep_training():
    names = [f"s{i}" for i in range(10)]
    validation, test = split_groups(names, 0.2, seed=3, test_fraction=0.2)
    assert len(validation) == len(test) == 2 and not validation & test
    assert (validation, test) == split_groups(list(reversed(names)), 0.2, seed=3, test_fraction=0.2)
    assert split_groups(names, 0.2, seed=4, test_fraction=0.2) != (validation, test)
    with pytest.raises(UserError, match="2 subjects are too few.*--test-fraction 0"):
        split_groups(["a", "b"], 0.2, seed=0, test_fraction=0.2)
    fixed = assign_subjects(names, 0.2, 0, val_subjects=["s1"], test_subjects=["s2", "s3"])
    assert [s for s, split in fixed.items() if split == "test"] == ["s2", "s3"]
    assert [s for s, split in fixed.items() if split == "validation"] == ["s1"]
    with pytest.raises(UserError, match="subject s1 is in both --val-subjects and --test-subjects"):
        assign_subjects(names, 0.2, 0, val_subjects=["s1"], test_subjects=["s1"])


def test_demo_writes_train_validation_test_without_leak(tmp_path: Path):
    out = tmp_path / "demo"
    summary = prepare(out=out, demo=True, demo_resolution=2, size=16, resize=True, accs=["4x"])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mask_4x.npy", "split.json", "test", "train",
                                                      "validation"]
    train, val, test = (_positions(out, split) for split in ("train", "validation", "test"))
    # Contiguous blocks, low to high, BLOCK_GAP kept positions dropped between neighbours.
    assert train.max() < val.min() and val.max() < test.min()
    assert summary["test_slices"] == len(test) == summary["validation_slices"] == len(val) > 0
    assert check_split(out, ["4x"])["subjects"] == {"train": ["demo"], "validation": ["demo"], "test": ["demo"]}
    assert json.loads((out / "split.json").read_text())["test_subjects"] == ["demo"]


def test_subjects_split_three_ways_and_the_leak_check_covers_test(tmp_path: Path):
    for n in range(6):
        write_nifti(tmp_path / "in" / f"sub-{n:02d}" / "t1.nii.gz", synthetic_volume(n))
    out = tmp_path / "out"
    summary = prepare(inputs=[tmp_path / "in"], out=out, size=32, accs=["4x"], seed=1)
    assert [len(summary[f"{split}_subjects"]) for split in ("train", "validation", "test")] == [4, 1, 1]
    moved = next((out / "test" / "acc_4x").glob("*.h5"))
    shutil.copy(moved, out / "train" / "acc_4x" / moved.name)
    with pytest.raises(UserError, match=f"subject {summary['test_subjects'][0]} is in both train and test"):
        check_split(out, ["4x"])


def test_test_only_set_uses_the_given_masks(tmp_path: Path):
    train_set = tmp_path / "train_set"
    prepare(out=train_set, demo=True, demo_resolution=2, size=16, resize=True, accs=["4x"])
    write_nifti(tmp_path / "other.nii.gz", synthetic_volume(7, size=40, n_slices=12))
    out = tmp_path / "external"
    summary = prepare(inputs=[tmp_path / "other.nii.gz"], out=out, size=16, resize=True, pad_to=48,
                      accs=["4x"], test_only=True, mask_dir=train_set)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mask_4x.npy", "split.json", "test"]
    assert summary["train_slices"] == summary["validation_slices"] == 0 < summary["test_slices"]
    np.testing.assert_array_equal(np.load(out / "mask_4x.npy"), np.load(train_set / "mask_4x.npy"))
    with pytest.raises(UserError, match="--pad-to 48 sets the field of view that --resize"):
        prepare(inputs=[tmp_path / "other.nii.gz"], out=tmp_path / "x", size=16, pad_to=48, accs=["4x"])


def test_evaluate_scores_test_by_default_and_records_it(tmp_path: Path, capsys):
    import evaluate
    from models.checkpoints.format import model_payload
    from models.nets.dccnn import DCCNN, STUDENT
    from models.checkpoints.io import save_checkpoint

    data = tmp_path / "demo"
    summary = prepare(out=data, demo=True, demo_resolution=2, size=16, resize=True, accs=["4x"])
    checkpoint = tmp_path / "student.pt"
    config = {"roles": {"model": "student"}, "seed": 3, "machine": {"cpu": "Intel Xeon", "isa": "AVX512 + AMX"}}
    save_checkpoint(model_payload(DCCNN(STUDENT), "student", config), checkpoint)
    out = tmp_path / "eval"
    evaluate.main(["--checkpoints", str(checkpoint), "--data-root", str(data), "--acc", "4x", "--out-dir", str(out),
                   "--device", "cpu"])
    recorded = json.loads((out / "summary.json").read_text())
    assert recorded["split"] == "test" and recorded["test_set"] == "demo/test"
    assert recorded["student"]["PSNR"]["n"] == summary["test_slices"]
    assert recorded["roles"]["student"] == {"model": "student", "seed": 3}
    # Where the numbers come from: the evaluating machine, and the training machine the checkpoint recorded.
    assert recorded["machine"]["isa"].split(" + ")[0] == torch.backends.cpu.get_cpu_capability()
    assert recorded["trained_on"] == {"student": {"cpu": "Intel Xeon", "isa": "AVX512 + AMX"}}
    assert "no test/ split" not in capsys.readouterr().out
