"""Nothing already written is lost by a refused, failed, killed or concurrent run: prepare's --out-dir,
evaluate's --out-dir and training's --exp-dir (issue #18)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import data.owned
from data.owned import NEW, OLD, finish_swap
from data.prepare import main as prepare_main, prepare
from tests.conftest import phantom
from utils import LOCK_NAME, UserError, folder_lock, run_cli

SIZE = 16


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), the lock file left out."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def one_line_error(entry, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        run_cli(entry, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """Two subjects, one 16 x 16 x 4 NIfTI each."""
    folder = tmp_path / "scans"
    for n in range(2):
        (folder / f"patient00{n}").mkdir(parents=True)
        nib.save(nib.Nifti1Image(20 + 300 * phantom(SIZE, 4, n), np.eye(4)),
                 str(folder / f"patient00{n}" / "t1.nii.gz"))
    return folder


def prepare_args(scans: Path, out: Path, *extra: str) -> list[str]:
    return ["--input", str(scans), "--out-dir", str(out), "--size", str(SIZE), "--acc", "4x", "--val-fraction",
            "0.5", "--min-foreground", "0", *extra]


# --------------------------------------------------------------------------- data/prepare.py

@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_prepare_refuses_an_out_dir_overlapping_an_input(scans, tmp_path, capsys, where):
    out = {"same": scans, "inside": scans / "patient000" / "out", "contains": tmp_path,
           "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        out.symlink_to(scans)
    before = snapshot(tmp_path)
    err = one_line_error(prepare_main, prepare_args(scans, out, "--overwrite"), capsys)
    assert f"--out-dir {out}" in err and "input" in err
    assert snapshot(tmp_path) == before and not (scans / "patient000" / "out").exists()


def test_prepare_overwrite_replaces_only_the_files_it_wrote(scans, tmp_path):
    out = tmp_path / "out"
    prepare_main(prepare_args(scans, out, "--acc", "4x", "5x"))
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert "train/acc_5x/patient000_t1.h5" in manifest or "validation/acc_5x/patient000_t1.h5" in manifest
    (out / "README.txt").write_text("mine")
    (out / "train" / "notes.txt").write_text("mine too")
    with pytest.raises(UserError, match=r"did not write \(train/notes.txt\)"):
        prepare_main(prepare_args(scans, out, "--overwrite"))
    (out / "train" / "notes.txt").unlink()
    prepare_main(prepare_args(scans, out, "--overwrite", "--seed", "1"))
    assert (out / "README.txt").read_text() == "mine"
    assert not (out / "mask_5x.npy").exists() and not (out / "train" / "acc_5x").exists()
    assert sorted(snapshot(out)) == sorted([*json.loads((out / "manifest.json").read_text())["files"],
                                            "manifest.json", "README.txt"])


@pytest.mark.parametrize("moves", [0, 1, 3, 6, 9])
def test_a_swap_killed_at_any_rename_is_finished_by_the_next_run(scans, tmp_path, monkeypatch, moves):
    """prepare --overwrite interrupted (Ctrl-C) after ``moves`` renames of its swap: nothing lost, and the
    next run (any command on that --out-dir) completes it to exactly the new data."""
    out, reference = tmp_path / "out", tmp_path / "reference"
    prepare_main(prepare_args(scans, out, "--acc", "4x", "5x"))
    prepare_main(prepare_args(scans, reference, "--seed", "1"))
    new = snapshot(reference)
    real_move, calls = data.owned._move, []

    def interrupted(src, dst):
        if len(calls) == moves:
            raise KeyboardInterrupt
        calls.append(src)
        real_move(src, dst)
    monkeypatch.setattr(data.owned, "_move", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_main(prepare_args(scans, out, "--overwrite", "--seed", "1"))
    monkeypatch.setattr(data.owned, "_move", real_move)
    assert (out / NEW).is_dir()
    assert finish_swap(out)
    assert snapshot(out) == new and not (out / NEW).exists() and not (out / OLD).exists()


def test_prepare_refuses_a_busy_out_dir_and_takes_over_a_stale_lock(scans, tmp_path, capsys):
    out = tmp_path / "out"
    with folder_lock(out, "--out-dir"):
        err = one_line_error(prepare_main, prepare_args(scans, out), capsys)
    assert "in use by another run (process" in err and str(out) in err
    out.mkdir()
    (out / LOCK_NAME).write_text("process 999999999 on elsewhere\n")  # its holder was killed: no flock held
    prepare_main(prepare_args(scans, out))
    assert "took over the lock of process 999999999 on elsewhere" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


def test_prepare_on_a_full_disk_is_one_line_and_changes_nothing(scans, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    prepare_main(prepare_args(scans, out))
    before = snapshot(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    err = one_line_error(prepare_main, prepare_args(scans, out, "--overwrite", "--seed", "1"), capsys)
    assert err.startswith("error: No space left on device") and "MiB needed" in err and str(out) in err
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
