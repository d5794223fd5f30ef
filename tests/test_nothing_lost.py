"""Nothing already written is lost by a refused, failed, killed or concurrent run: prepare's --out-dir,
evaluate's --out-dir and training's --exp-dir (issue #18)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import data.outputs
from data.outputs import NEW, OLD, finish_swap
from data.prepare import main as prepare_main, prepare
from tests.conftest import phantom
from data.outputs import LOCK_NAME, folder_lock
from utils import UserError, run_cli

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
    return ["--input", str(scans), "--out-dir", str(out), "--size", str(SIZE), "--acc", "4x", "--test-fraction", "0",
            "--val-fraction", "0.5", "--min-foreground", "0", *extra]


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
    real_move, calls = data.outputs._move, []

    def interrupted(src, dst):
        if len(calls) == moves:
            raise KeyboardInterrupt
        calls.append(src)
        real_move(src, dst)
    monkeypatch.setattr(data.outputs, "_move", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_main(prepare_args(scans, out, "--overwrite", "--seed", "1"))
    monkeypatch.setattr(data.outputs, "_move", real_move)
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


# --------------------------------------------------------------------------- training's --exp-dir

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tests.conftest import make_dataset
    return make_dataset(tmp_path_factory.mktemp("lost") / "data", size=16, slices=2, train_volumes=1)


def train_args(data: Path, exp: Path, *extra: str) -> list[str]:
    return ["--model", "student", "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1", "--batch-size",
            "2", "--no-progress", *extra]


def checkpoints(exp: Path) -> dict[str, bytes]:
    return {name: (exp / name).read_bytes() for name in ("model.pt", "best_model.pt", "config.json")}


@pytest.fixture(scope="module")
def trained_once(tiny, tmp_path_factory) -> Path:
    import train_teacher
    exp = tmp_path_factory.mktemp("trained") / "exp"
    train_teacher.main(train_args(tiny, exp))
    return exp


@pytest.fixture
def trained(trained_once, tmp_path) -> Path:
    """A finished one-epoch run of its own (a copy), for tests that change it."""
    return Path(shutil.copytree(trained_once, tmp_path / "exp"))


def test_a_second_run_on_a_busy_exp_dir_is_refused(tiny, trained, capsys):
    import train_teacher
    before = snapshot(trained)
    with folder_lock(trained, "--exp-dir"):
        err = one_line_error(train_teacher.main, train_args(tiny, trained, "--resume", "--epochs", "2"), capsys)
    assert f"--exp-dir {trained} is in use by another run (process" in err
    assert snapshot(trained) == before


@pytest.mark.parametrize("flags, shown", [
    (["--residual"], "--residual on (the run: off)"),
    (["--ref-padding", "5"], "--ref-padding 5 (the run: 0)"),
    (["--lr", "0.002"], "--lr 0.002 (the run: 0.001)"),
    (["--batch-size", "1", "--seed", "7"], "--batch-size 1 (the run: 2); --seed 7 (the run: 42)"),
])
def test_resume_refuses_flags_that_change_the_run(tiny, trained, capsys, flags, shown):
    import train_teacher
    before = snapshot(trained)
    err = one_line_error(train_teacher.main, train_args(tiny, trained, "--resume", "--epochs", "2", *flags), capsys)
    assert shown in err and "--epochs, --num-workers" in err and str(trained / "model.pt") in err
    assert snapshot(trained) == before


def test_resume_refuses_a_data_root_with_other_slices(trained, tmp_path, capsys):
    import train_teacher
    from tests.conftest import make_dataset
    other = make_dataset(tmp_path / "other", size=16, slices=3, train_volumes=1)
    before = snapshot(trained)
    err = one_line_error(train_teacher.main, train_args(other, trained, "--resume", "--epochs", "2"), capsys)
    assert f"--data-root {other} has 3 training / 3 validation slices" in err and "had 2 / 2" in err
    assert snapshot(trained) == before


def test_resume_takes_the_flags_that_may_change(tiny, trained):
    import train_teacher
    train_teacher.main(train_args(tiny, trained, "--resume", "--epochs", "2", "--log-every", "3", "--num-workers",
                                  "0", "--device", "cpu"))
    assert torch_load(trained / "model.pt")["epoch"] == 2


def torch_load(path: Path) -> dict:
    import torch
    return torch.load(path, weights_only=True)


def kill_before_first_checkpoint(monkeypatch, main, argv) -> None:
    """Run ``main(argv)`` and stop it in its first training step the way SIGKILL would: no clean-up runs."""
    import models.training.loop
    monkeypatch.setattr(models.training.loop, "restore_old_run", lambda exp: None)
    monkeypatch.setattr(models.training.loop.Trainer, "train_step", lambda self, batch: (_ for _ in ()).throw(
        KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.undo()


def test_overwrite_killed_twice_never_loses_the_replaced_run(tiny, trained, monkeypatch, capsys):
    """Issue #18 case 2: an --overwrite killed before its first model.pt parks the old run in .replaced; the
    messages name it, and a second killed --overwrite keeps it."""
    import train_teacher
    old = checkpoints(trained)
    kill_before_first_checkpoint(monkeypatch, train_teacher.main, train_args(tiny, trained, "--overwrite"))
    assert checkpoints(trained / ".replaced") == old and not (trained / "model.pt").exists()
    err = one_line_error(train_teacher.main, train_args(tiny, trained), capsys)
    assert "stopped before its first checkpoint" in err and f"{trained / '.replaced'}" in err and "get it back" in err
    kill_before_first_checkpoint(monkeypatch, train_teacher.main, train_args(tiny, trained, "--overwrite",
                                                                             "--seed", "3"))
    assert checkpoints(trained / ".replaced") == old
    # A failing --overwrite (not killed) gives it back in place.
    with pytest.raises(UserError):
        train_teacher.main(train_args(tiny, trained, "--overwrite", "--acc", "9x"))
    assert checkpoints(trained / ".replaced") == old


def test_a_run_killed_before_its_first_checkpoint_resumes_as_a_fresh_start(tiny, tmp_path, monkeypatch, capsys):
    import train_teacher
    exp = tmp_path / "exp"
    kill_before_first_checkpoint(monkeypatch, train_teacher.main, train_args(tiny, exp))
    assert (exp / "config.json").is_file() and not (exp / "model.pt").exists()
    err = one_line_error(train_teacher.main, train_args(tiny, exp), capsys)
    assert "stopped before its first checkpoint" in err and "--resume to start it afresh" in err
    train_teacher.main(train_args(tiny, exp, "--resume"))
    assert "starts it afresh" in capsys.readouterr().err
    assert torch_load(exp / "model.pt")["epoch"] == 1 and not (exp / ".replaced").exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_old_files(tiny, trained, monkeypatch, capsys):
    import train_teacher
    before = checkpoints(trained)
    # A checkpoint is serialised in memory, then written after asking the disk for its size.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    err = one_line_error(train_teacher.main, train_args(tiny, trained, "--resume", "--epochs", "2"), capsys)
    assert err.startswith("error: No space left on device") and "needed, 0 B free" in err and str(trained) in err
    assert checkpoints(trained) == before and not list(trained.glob(".*.tmp"))


# --------------------------------------------------------------------------- evaluate.py's --out-dir

def eval_args(tiny: Path, trained: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoints", str(trained / "best_model.pt"), "--data-root", str(tiny), "--acc", "4x", "--out-dir",
            str(out), "--device", "cpu", *extra]


@pytest.mark.parametrize("where", ["metrics.csv", "recons"])
def test_a_failed_evaluate_overwrite_keeps_the_old_results(tiny, trained, tmp_path, monkeypatch, capsys, where):
    """Issue #18 case 5: a full disk while writing the metrics or a reconstruction leaves the old results."""
    import evaluate
    from models.evaluation import results
    out = tmp_path / "results"
    evaluate.main(eval_args(tiny, trained, out, "--save-recons", "--names", "old"))
    before = snapshot(out)
    assert "recons/old/vol01.h5" in before and "manifest.json" in before

    def full_disk(path, text):
        raise OSError(28, "No space left on device", str(path))
    if where == "recons":
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    else:
        monkeypatch.setattr(results, "write_text", full_disk)
    err = one_line_error(evaluate.main, eval_args(tiny, trained, out, "--save-recons", "--names", "new",
                                                  "--overwrite"), capsys)
    assert err.startswith("error: No space left on device")
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "metrics.csv", "summary.json", "recons"])


def test_evaluate_overwrite_replaces_only_its_own_results(tiny, trained, tmp_path, capsys):
    import evaluate
    out = tmp_path / "results"
    evaluate.main(eval_args(tiny, trained, out, "--save-recons", "--names", "old", "--metrics", "all"))
    (out / "notes.txt").write_text("mine")
    evaluate.main(eval_args(tiny, trained, out, "--names", "new", "--overwrite"))
    assert "removed" in capsys.readouterr().out
    assert sorted(snapshot(out)) == ["manifest.json", "metrics.csv", "notes.txt", "summary.json"]
    (out / "recons" / "new").mkdir(parents=True)
    (out / "recons" / "new" / "mine.h5").write_bytes(b"mine")
    before = snapshot(out)
    with pytest.raises(UserError, match=r"did not write \(recons/new/mine.h5\)"):
        evaluate.main(eval_args(tiny, trained, out, "--names", "new", "--overwrite", "--save-recons"))
    assert snapshot(out) == before


def test_evaluate_refuses_a_busy_out_dir(tiny, trained, tmp_path, capsys):
    import evaluate
    out = tmp_path / "results"
    with folder_lock(out, "--out-dir"):
        err = one_line_error(evaluate.main, eval_args(tiny, trained, out), capsys)
    assert f"--out-dir {out} is in use by another run" in err and not out.exists()


@pytest.mark.slow
def test_sigkill_of_an_overwrite_before_its_first_checkpoint(tiny, trained):
    """The real thing: --overwrite killed by SIGKILL in its first step leaves its lock file and the old run in
    .replaced; the next --overwrite takes the lock over with a warning and, killed too, still keeps it."""
    import signal
    from tests.conftest import run_cli as run_python
    old = checkpoints(trained)
    for seed in ("1", "2"):
        result = run_python("tests/interrupt.py", "1", "SIGKILL", "train_teacher.py",
                            *train_args(tiny, trained, "--overwrite", "--seed", seed))
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert checkpoints(trained / ".replaced") == old and (trained / LOCK_NAME).exists()
    assert "took over the lock of process" in result.stderr
    result = run_python("train_teacher.py", *train_args(tiny, trained, "--resume"))
    assert result.returncode == 0, result.stderr
    assert "starts it afresh" in result.stderr and not (trained / ".replaced").exists()


def test_prepare_overwrite_of_data_from_before_the_manifest(scans, tmp_path):
    """Data written before manifest.json existed: what its split.json lists (and its masks) is replaced."""
    out = tmp_path / "out"
    prepare_main(prepare_args(scans, out, "--acc", "4x", "5x"))
    (out / "manifest.json").unlink()
    (out / "keep.txt").write_text("mine")
    prepare_main(prepare_args(scans, out, "--overwrite", "--seed", "1"))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json", "mask_4x.npy", "split.json",
                                                      "train", "validation"]


@pytest.mark.slow
def test_two_training_processes_on_one_exp_dir(tiny, tmp_path, capsys):
    """Issue #18 case 3 with real processes: the first stops itself (SIGSTOP) in its first step, holding the
    folder; the second is refused naming it; once the first is killed the folder is usable again."""
    import signal
    import subprocess
    import sys
    import time

    import train_teacher
    from tests.conftest import ROOT
    exp = tmp_path / "exp"
    first = subprocess.Popen([sys.executable, "tests/interrupt.py", "1", "SIGSTOP", "train_teacher.py",
                              *train_args(tiny, exp)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{first.pid}/stat").read_text().split(")")[-1].split()[0] != "T":
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        err = one_line_error(train_teacher.main, train_args(tiny, exp, "--resume"), capsys)
        assert f"is in use by another run (process {first.pid} on " in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    train_teacher.main(train_args(tiny, exp, "--resume"))
    assert "took over the lock" in capsys.readouterr().err and (exp / "model.pt").is_file()
