"""Cheap consistency checks at start-up (issue #18): data, masks, checkpoints and flags that would otherwise be
used silently and give wrong numbers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import train_teacher
from data.dataset import SliceDataset
from data.fastmri import _text
from data.prepare import prepare
from data.subjects import assign_subjects
from models.checkpoints.format import load_model, model_payload
from models.nets.dccnn import DCCNN, STUDENT
from utils import UserError, clean_text


def test_a_transposed_mask_is_refused(tiny_data):
    mask = np.load(tiny_data / "mask_4x.npy")
    np.save(tiny_data / "mask_4x.npy", np.ascontiguousarray(mask.T))
    with pytest.raises(UserError, match=r"mask_4x.npy does not fit .*vol00.h5.*the mask is transposed.*--mask"):
        SliceDataset(tiny_data, "train", "4x")
    np.save(tiny_data / "mask_4x.npy", np.roll(mask, 1, axis=0))
    with pytest.raises(UserError, match="another mask"):
        SliceDataset(tiny_data, "validation", "4x")


def test_nan_weights_are_refused(tmp_path):
    model = DCCNN(STUDENT)
    path = tmp_path / "best_model.pt"
    payload = model_payload(model)
    key = sorted(payload["model"])[-1]
    payload["model"][key].view(-1)[0] = float("nan")
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"best_model.pt holds NaN or Inf weights"):
        load_model(path, "--checkpoints")


def test_duplicate_accelerations_are_refused(tiny_data, tmp_path):
    with pytest.raises(UserError, match="--acc lists 4x more than once"):
        train_teacher.main(["--data-root", str(tiny_data), "--exp-dir", str(tmp_path / "exp"), "--acc", "4x", "4x"])
    assert not (tmp_path / "exp").exists()
    with pytest.raises(UserError, match="--acc 4x 5x 4x lists an acceleration twice"):
        prepare(demo=True, out=tmp_path / "out", accs=["4x", "5x", "4x"])
    assert not (tmp_path / "out").exists()


def test_a_subject_in_both_halves_of_a_split_file_is_refused(tmp_path):
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["p1", "p2"], "validation": ["p2", "p3"]}))
    with pytest.raises(UserError, match=f"--split-file {split_file} lists p2 in more than one split"):
        assign_subjects(["p1", "p2", "p3"], 0.2, 0, None, split_file)


def test_complex_nifti_is_refused(tmp_path):
    volume = (np.random.default_rng(0).random((16, 16, 4)) * (1 + 1j)).astype(np.complex64)
    path = tmp_path / "in" / "patient001.nii"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    with pytest.raises(UserError, match=r"patient001.nii holds complex values \(complex64\)"):
        prepare(inputs=[path.parent], out=tmp_path / "out", size=16, accs=["4x"])
    assert not (tmp_path / "out").exists()


def test_text_from_files_is_sanitised():
    assert clean_text("teacher\x1b[2J\r\n") == "teacher\\x1b[2J\\r\\n"
    assert _text(b"patient\x07 7") == "patient\\x07 7"


@pytest.mark.parametrize("change, message", [
    ({"channels": 60000}, r"declares [\d,]+ weights but the file holds 49,285"),
    ({"n_cascades": 10 ** 9}, "n_cascades 1000000000, outside 1..100"),
    ({"channels": "32"}, "channels '32', outside"),
])
def test_forged_architecture_sizes_are_refused_before_allocating(tmp_path, change, message):
    payload = model_payload(DCCNN(STUDENT))
    payload["arch"].update(change)
    path = tmp_path / "forged.pt"
    torch.save(payload, path)
    with pytest.raises(UserError, match=message):
        load_model(path, "--checkpoints")


def test_a_fifo_named_h5_is_refused_not_waited_on(tiny_data):
    os.mkfifo(tiny_data / "train" / "acc_4x" / "pipe.h5")
    with pytest.raises(UserError, match="pipe.h5 is not a regular file"):
        SliceDataset(tiny_data, "train", "4x")


def test_a_tampered_resume_position_is_refused(tiny_data, tmp_path):
    exp = tmp_path / "exp"
    argv = ["--model", "student", "--data-root", str(tiny_data), "--exp-dir", str(exp), "--epochs", "1",
            "--no-progress"]
    train_teacher.main(argv)
    ckpt = torch.load(exp / "model.pt", weights_only=True)
    ckpt["epoch"] = "1; rm -rf /"
    torch.save(ckpt, exp / "model.pt")
    # The run recorded model.pt's SHA-256 (checksums.json): any edit is refused as a replaced file first.
    with pytest.raises(UserError, match="model.pt is not the file this run wrote"):
        train_teacher.main([*argv, "--resume", "--epochs", "2"])
    # A run that recorded no checksums (started before they were written) still checks the entry itself.
    (exp / "checksums.json").unlink()
    with pytest.raises(UserError, match="model.pt has a damaged 'epoch' entry"):
        train_teacher.main([*argv, "--resume", "--epochs", "2"])


def test_a_dataset_declaring_more_than_its_file_holds_is_refused(tiny_data):
    import h5py
    path = tiny_data / "train" / "acc_4x" / "vol00.h5"
    with h5py.File(path, "a") as f:
        del f["volfs"]
        # A header declaring 10^9 slices with no data behind it (HDF5 allocates chunks only when written).
        f.create_dataset("volfs", shape=(32, 32, 10 ** 9), dtype=np.float32, chunks=(32, 32, 1))
    with pytest.raises(UserError, match=r"vol00.h5: 'volfs' declares shape \(32, 32, 1000000000\) .* damaged"):
        SliceDataset(tiny_data, "train", "4x")
