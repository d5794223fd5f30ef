"""Whole-file content hashes of the data (issue 40, case 2): data/prepare.py records each file's SHA-256 in
split.json; training start-up, --resume and evaluate.py hash the files again and refuse one edited since, even
in the middle of the file with its size kept; data prepared before the record (or not by data/prepare.py) is
hashed at first use, with a one-line note, and the run records those hashes."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

import evaluate
import train_teacher
from data.fingerprint import ends_digest, split_listing
from data.prepare import main as prepare_main
from tests.conftest import cli_error, make_dataset, phantom, write_volume
from data.masks import cartesian_row_mask
from utils import UserError


def edit_middle(path: Path, dataset: str = "volfs") -> None:
    """Rewrite a block of rows of one slice in place: the file keeps its size, its first and last 64 KiB."""
    with h5py.File(path, "r+") as f:
        rows = f[dataset].shape[0]
        f[dataset][rows // 3: rows // 2, :, 1] = f[dataset][rows // 3: rows // 2, :, 1] * 0.5 + 0.25


def test_a_size_keeping_edit_in_the_middle_of_a_several_mb_file_is_caught(tmp_path):
    root = tmp_path / "data"
    folder = root / "train" / "acc_4x"
    folder.mkdir(parents=True)
    mask = cartesian_row_mask((128, 128), "4x", seed=0)
    write_volume(folder / "vol00.h5", phantom(128, 16, 0), {"4x": mask})
    path = folder / "vol00.h5"
    assert path.stat().st_size > 4 * 2 ** 20
    (root / "split.json").write_text(json.dumps(
        {"sha256": {"train/acc_4x/vol00.h5": hashlib.sha256(path.read_bytes()).hexdigest()}}))
    assert split_listing(root, "train", "4x") == {"vol00.h5": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()}
    size, ends = path.stat().st_size, ends_digest(path)
    edit_middle(path)
    assert (path.stat().st_size, ends_digest(path)) == (size, ends)  # what the old fingerprint read is unchanged
    with pytest.raises(UserError, match=r"train/acc_4x/vol00.h5 has changed since data/prepare.py wrote it"):
        split_listing(root, "train", "4x")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """Three subjects prepared into train / validation / test (16 x 16), and a student trained one epoch."""
    root = tmp_path_factory.mktemp("whole")
    scans = root / "scans"
    for n in range(3):
        (scans / f"patient00{n}").mkdir(parents=True)
        nib.save(nib.Nifti1Image(20 + 300 * phantom(16, 4, n), np.eye(4)), str(scans / f"patient00{n}" / "t1.nii.gz"))
    data = root / "data"
    prepare_main(["--input", str(scans), "--out-dir", str(data), "--size", "16", "--acc", "4x", "--val-fraction",
                  "0.34", "--test-fraction", "0.34", "--min-foreground", "0"])
    exp = root / "run"
    train_teacher.main(["--model", "student", "--data-root", str(data), "--exp-dir", str(exp), "--acc", "4x",
                        "--epochs", "1", "--batch-size", "2", "--no-progress"])
    return {"root": root, "data": data, "exp": exp}


@pytest.fixture
def copy(prepared, tmp_path) -> dict:
    shutil.copytree(prepared["data"], tmp_path / "data")
    shutil.copytree(prepared["exp"], tmp_path / "run")
    return {"data": tmp_path / "data", "exp": tmp_path / "run"}


def train_args(run: dict, *extra: str) -> list[str]:
    return ["--model", "student", "--data-root", str(run["data"]), "--exp-dir", str(run["exp"]), "--acc", "4x",
            "--epochs", "2", "--batch-size", "2", "--no-progress", *extra]


def test_prepare_records_the_sha256_of_every_file(prepared):
    data = prepared["data"]
    recorded = json.loads((data / "split.json").read_text())["sha256"]
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.h5"))
    assert sorted(recorded) == files and {p.split("/")[0] for p in files} == {"train", "validation", "test"}
    for rel, digest in recorded.items():
        assert hashlib.sha256((data / rel).read_bytes()).hexdigest() == digest


def test_resume_refuses_a_data_file_edited_in_the_middle(copy, capsys):
    edit_middle(next((copy["data"] / "train" / "acc_4x").glob("*.h5")))
    err = cli_error(train_teacher.main, train_args(copy, "--resume"), capsys)
    assert "has changed since data/prepare.py wrote it" in err and "train/acc_4x/" in err
    assert json.loads((copy["exp"] / "config.json").read_text())["epochs"] == 1  # the run is as it was


def test_resume_refuses_an_edit_that_keeps_split_json_in_step(copy, capsys):
    # The file and its split.json entry changed together: the run's own record still tells.
    path = next((copy["data"] / "train" / "acc_4x").glob("*.h5"))
    edit_middle(path)
    split = json.loads((copy["data"] / "split.json").read_text())
    split["sha256"][path.relative_to(copy["data"]).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy["data"] / "split.json").write_text(json.dumps(split))
    err = cli_error(train_teacher.main, train_args(copy, "--resume"), capsys)
    assert f"train/acc_4x: {path.name} changed" in err


def test_evaluate_refuses_a_test_file_edited_since_preparation(copy, tmp_path, capsys):
    edit_middle(next((copy["data"] / "test" / "acc_4x").glob("*.h5")))
    err = cli_error(evaluate.main, ["--checkpoints", str(copy["exp"] / "best_model.pt"), "--data-root",
                                    str(copy["data"]), "--acc", "4x", "--out-dir", str(tmp_path / "eval"),
                                    "--device", "cpu"], capsys)
    assert "test/acc_4x/" in err and "has changed since data/prepare.py wrote it" in err


def test_data_without_recorded_hashes_is_hashed_at_first_use_with_one_note(copy, capsys):
    split = json.loads((copy["data"] / "split.json").read_text())
    del split["sha256"]
    (copy["data"] / "split.json").write_text(json.dumps(split))
    exp = copy["exp"].parent / "fresh"
    train_teacher.main(train_args({"data": copy["data"], "exp": exp}, "--epochs", "1"))
    notes = [line for line in capsys.readouterr().out.splitlines() if "records no file hash for" in line]
    assert len(notes) == 1, notes
    listing = json.loads((exp / "config.json").read_text())["content"]["data"]["train"]["4x"]
    assert listing and all(digest.startswith("sha256:") for digest in listing.values())


def test_public_layout_data_is_hashed_silently_and_recorded(tmp_path, capsys):
    # No split.json: the original KD-MRI files, which no data/prepare.py run recorded; nothing to note.
    data = make_dataset(tmp_path / "public", size=16, train_volumes=1, slices=2)
    exp = tmp_path / "run"
    train_teacher.main(train_args({"data": data, "exp": exp}, "--epochs", "1"))
    assert "records no file hash" not in capsys.readouterr().out
    listing = json.loads((exp / "config.json").read_text())["content"]["data"]["train"]["4x"]
    assert listing == {"vol00.h5": "sha256:" + hashlib.sha256((data / "train/acc_4x/vol00.h5").read_bytes()).hexdigest()}
