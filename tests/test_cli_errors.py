"""Bad input through every CLI: one ``error:`` line on stderr, exit code 2, no traceback, earlier files untouched.

Each case runs the real command line in a subprocess. The data, one trained 1-epoch student (whose data has a
single validation slice, smaller than its batch) and the broken variants are built once per module.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, make_dataset, phantom, run_cli, write_volume

# About fifty subprocesses, each importing torch: the full suite runs them, `-m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

TRAIN = "train_teacher.py"
QUICK = ("--model", "student", "--epochs", "1", "--no-progress")
TRAIN_FILE = Path("train") / "acc_4x" / "vol00.h5"
VAL_FILE = Path("validation") / "acc_4x" / "vol01.h5"


# --------------------------------------------------------------------------- helpers

def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2 and exactly one stderr line, ``error: ...``, holding every fragment; returns the line."""
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def set_values(path: Path, key: str, slice_index: int, value) -> None:
    """Put ``value`` at pixel (3, 5) of slice ``slice_index`` of dataset ``key`` in an HDF5 data file."""
    with h5py.File(path, "a") as f:
        data = f[key][()]
        data[3, 5, slice_index] = value
        f[key][...] = data


def train_args(data: Path, exp: Path, *extra: str) -> list[str]:
    return [TRAIN, *QUICK, "--data-root", str(data), "--exp-dir", str(exp), *extra]


# --------------------------------------------------------------------------- shared fixtures

@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    """A developer's SFTKD_DEBUG=1 would turn every expected one-line error into a traceback."""
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """32 x 32 at 4x: 1 training volume of 3 slices and 1 validation volume of a single slice."""
    root = make_dataset(tmp_path_factory.mktemp("cli") / "data", train_volumes=1, val_volumes=1, slices=3)
    mask = np.load(root / "mask_4x.npy")
    write_volume(root / VAL_FILE, phantom(32, 1, seed=7), {"4x": mask})
    return root


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """A 1-epoch student run with --batch-size 4 although validation has 1 slice (and training 3)."""
    exp = tmp_path_factory.mktemp("run") / "student"
    return run_cli(*train_args(base, exp, "--batch-size", "4")), exp


@pytest.fixture(scope="module")
def run_dir(trained) -> Path:
    result, exp = trained
    assert result.returncode == 0, result.stderr[-2000:]
    return exp


@pytest.fixture(scope="module")
def checkpoints(run_dir, tmp_path_factory) -> dict[str, Path]:
    """The trained student, plus broken or foreign checkpoints made from it."""
    folder = tmp_path_factory.mktemp("checkpoints")
    good = run_dir / "best_model.pt"
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    wrong = dict(ckpt, arch={**ckpt["arch"], "n_convs": 5})  # claims D5C5, holds D3C5 weights
    torch.save(wrong, folder / "wrong_arch.pt")
    # The public code pickles its argparse.Namespace next to the weights.
    torch.save({"model": ckpt["model"], "args": argparse.Namespace(lr=1e-3), "epoch": 3}, folder / "public.pt")
    (folder / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"good": good, "wrong_arch": folder / "wrong_arch.pt", "public": folder / "public.pt",
            "random": folder / "random.pt"}


# --------------------------------------------------------------------------- broken data sets

def _no_split(root: Path) -> None:
    for split in ("train", "validation"):
        shutil.rmtree(root / split)


def _no_h5(root: Path) -> None:
    for path in (root / "train" / "acc_4x").glob("*.h5"):
        path.unlink()


def _missing_key(root: Path) -> None:
    with h5py.File(root / VAL_FILE, "a") as f:
        del f["kspace_volus_4x"]


def _shapes(root: Path) -> None:
    with h5py.File(root / TRAIN_FILE, "a") as f:
        shorter = f["img_volus_4x"][:, :, :2]
        del f["img_volus_4x"]
        f["img_volus_4x"] = shorter


def _truncate(root: Path) -> None:
    data = (root / VAL_FILE).read_bytes()
    (root / VAL_FILE).write_bytes(data[: len(data) // 2])


BROKEN = {
    # name: (change to a copy of the base data, fragments of the message; {root} is the copy)
    "empty_root": (_no_split, ["{root}/train/acc_4x", "does not exist", "--data-root", "--acc"]),
    "no_h5": (_no_h5, ["no .h5 files", "{root}/train/acc_4x", "data/prepare.py"]),
    "not_hdf5": (lambda r: (r / VAL_FILE).write_text("not HDF5\n" * 50),
                 ["{root}/" + str(VAL_FILE), "not an HDF5 file"]),
    "truncated": (_truncate, ["{root}/" + str(VAL_FILE), "truncated", "re-copy"]),
    "missing_key": (_missing_key, ["{root}/" + str(VAL_FILE), "'kspace_volus_4x'", "found: img_volus_4x, volfs"]),
    "shapes": (_shapes, ["{root}/" + str(TRAIN_FILE), "disagree", "(32, 32, 2)", "(32, 32, 3)"]),
    "mask_missing": (lambda r: (r / "mask_4x.npy").unlink(), ["{root}/mask_4x.npy", "does not exist", "--mask"]),
    "mask_3d": (lambda r: np.save(r / "mask_4x.npy", np.ones((32, 32, 2), np.float32)),
                ["mask_4x.npy", "(32, 32, 2)", "2-D"]),
    "mask_not_binary": (lambda r: np.save(r / "mask_4x.npy", np.full((32, 32), 0.5, np.float32)),
                        ["mask_4x.npy", "not binary", "0 or 1"]),
    "mask_zero": (lambda r: np.save(r / "mask_4x.npy", np.zeros((32, 32), np.float32)),
                  ["mask_4x.npy", "all zero"]),
    "mask_size": (lambda r: np.save(r / "mask_4x.npy", np.ones((31, 31), np.float32)),
                  ["mask_4x.npy", "31x31", "32x32"]),
    "nan_image": (lambda r: set_values(r / TRAIN_FILE, "img_volus_4x", 1, np.nan),
                  ["{root}/" + str(TRAIN_FILE), "'img_volus_4x'", "NaN", "slice 1"]),
    "inf_kspace": (lambda r: set_values(r / VAL_FILE, "kspace_volus_4x", 0, complex(np.inf, 0)),
                   ["{root}/" + str(VAL_FILE), "'kspace_volus_4x'", "Inf", "slice 0"]),
    "nan_val_image": (lambda r: set_values(r / VAL_FILE, "volfs", 0, np.nan),
                      ["{root}/" + str(VAL_FILE), "'volfs'", "NaN", "slice 0"]),
}


@pytest.fixture(scope="module")
def broken(base, tmp_path_factory):
    """``broken(name)``: a copy of the base data with change ``name`` of :data:`BROKEN` (made once)."""
    folder = tmp_path_factory.mktemp("broken")
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            root = folder / name
            shutil.copytree(base, root)
            BROKEN[name][0](root)
            made[name] = root
        return made[name]
    return make


def expected(name: str, root: Path) -> list[str]:
    return [fragment.format(root=root) for fragment in BROKEN[name][1]]


# --------------------------------------------------------------------------- data errors

def test_validation_smaller_than_a_batch_trains(trained):
    result, exp = trained
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 training / 1 validation slices" in result.stdout
    assert (exp / "best_model.pt").is_file() and (exp / "model.pt").is_file()


def test_missing_data_root(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_cli(*train_args(missing, tmp_path / "exp"))
    assert_one_line_error(result, str(missing), "does not exist", "--data-root", "data/prepare.py")
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_data_via_train_teacher(broken, tmp_path, name):
    root = broken(name)
    result = run_cli(*train_args(root, tmp_path / "exp"))
    assert_one_line_error(result, *expected(name, root))
    assert not (tmp_path / "exp").exists(), "a refused run must not create its experiment folder"


@pytest.mark.parametrize("script, name", [
    ("train_sft.py", "mask_size"),
    ("train_sft.py", "nan_image"),
    ("evaluate.py", "not_hdf5"),
    ("evaluate.py", "missing_key"),
    ("evaluate.py", "mask_size"),
    ("evaluate.py", "nan_val_image"),
])
def test_broken_data_via_other_clis(broken, checkpoints, tmp_path, script, name):
    root = broken(name)
    if script == "evaluate.py":
        args = [script, "--checkpoints", str(checkpoints["good"]), "--data-root", str(root), "--acc", "4x",
                "--out-dir", str(tmp_path / "out")]
    else:
        args = [script, "--epochs", "1", "--no-progress", "--data-root", str(root), "--exp-dir", str(tmp_path / "out")]
    assert_one_line_error(run_cli(*args), *expected(name, root))
    assert not (tmp_path / "out").exists()


def test_no_files_for_the_requested_acceleration(base, tmp_path):
    result = run_cli(*train_args(base, tmp_path / "exp", "--acc", "5x"))
    assert_one_line_error(result, f"{base}/train/acc_5x", "5x", "--acc")


@pytest.mark.parametrize("name, where", [("nan_image", "train"), ("inf_kspace", "validation")])
def test_lazy_read_fails_in_first_epoch_without_checkpoints(broken, tmp_path, name, where):
    # --preload no reads slices only when training (or validation) reaches them.
    root = broken(name)
    exp = tmp_path / "exp"
    result = run_cli(*train_args(root, exp, "--preload", "no"))
    assert_one_line_error(result, *expected(name, root))
    assert "1 validation slices" in result.stdout, "the error should come from the epoch, not the setup"
    assert not (exp / "model.pt").exists() and not (exp / "best_model.pt").exists()


def test_lazy_read_error_in_a_dataloader_worker_is_one_line(broken, tmp_path):
    root = broken("nan_image")
    result = run_cli(*train_args(root, tmp_path / "exp", "--preload", "no", "--num-workers", "1"))
    assert_one_line_error(result, *expected("nan_image", root))


def test_data_damaged_since_the_run_started_is_refused_on_resume(broken, run_dir, tmp_path):
    # Without the content check (config.json's "content") the NaN would surface as a read error in the resumed
    # epoch; with it the changed file is named before anything is read or written.
    exp = tmp_path / "exp"
    shutil.copytree(run_dir, exp)
    before = {name: (exp / name).read_bytes() for name in ("model.pt", "best_model.pt", "config.json")}
    root = broken("nan_image")
    result = run_cli(TRAIN, "--model", "student", "--epochs", "2", "--no-progress", "--data-root", str(root),
                     "--exp-dir", str(exp), "--resume", "--preload", "no")
    assert_one_line_error(result, "--resume: train/acc_4x: vol00.h5 changed")
    assert {name: (exp / name).read_bytes() for name in before} == before


def test_lazy_read_error_with_overwrite_keeps_the_replaced_run(broken, run_dir, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(run_dir, exp)
    before = snapshot(exp)
    root = broken("nan_image")
    result = run_cli(*train_args(root, exp, "--preload", "no", "--overwrite"))
    assert_one_line_error(result, *expected("nan_image", root))
    assert snapshot(exp) == before


# --------------------------------------------------------------------------- flags

@pytest.mark.parametrize("flags, fragments", [
    (["--acc", "4"], ["--acc", "'x'", "4x"]),
    (["--acc", "x4"], ["--acc", "'x'", "4x"]),
    (["--epochs", "0"], ["--epochs", "must be > 0, got 0"]),
    (["--epochs", "-1"], ["--epochs", "must be > 0, got -1"]),
    (["--batch-size", "0"], ["--batch-size", "must be > 0, got 0"]),
    (["--batch-size", "-4"], ["--batch-size", "must be > 0, got -4"]),
    (["--lr", "0"], ["--lr", "must be > 0, got 0"]),
    (["--lr", "-0.001"], ["--lr", "must be > 0, got -0.001"]),
    (["--seed", "-1"], ["--seed", "'-1'", "0 to 4294967295"]),
])
def test_bad_training_flags(base, tmp_path, flags, fragments):
    result = run_cli(*train_args(base, tmp_path / "exp"), *flags)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "exp").exists()


def test_unknown_kd_method_lists_the_valid_ones(base, checkpoints, tmp_path):
    result = run_cli("train_student_kd.py", "--epochs", "1", "--no-progress", "--data-root", str(base),
                     "--exp-dir", str(tmp_path / "exp"), "--teacher-checkpoint", str(checkpoints["good"]),
                     "--kd-method", "attention")
    line = assert_one_line_error(result, "--kd-method 'attention'", "--kd-method list")
    for method in ("at", "fitnet", "cc", "fsp", "sp"):
        assert f" {method}," in line or f" {method} " in line, method


@pytest.mark.parametrize("script, flags, fragments", [
    ("train_student_kd.py", ["--kd-weight", "-1"], ["--kd-weight", "-1", ">= 0"]),
    ("train_sft.py", ["--imitation-weight", "nan"], ["--imitation-weight", "nan", ">= 0"]),
])
def test_negative_loss_weights(base, checkpoints, tmp_path, script, flags, fragments):
    args = [script, "--epochs", "1", "--no-progress", "--data-root", str(base), "--exp-dir", str(tmp_path / "exp")]
    if script == "train_student_kd.py":
        args += ["--teacher-checkpoint", str(checkpoints["good"])]
    assert_one_line_error(run_cli(*args, *flags), *fragments)


# --------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("kind, fragments", [
    ("random", ["cannot be loaded", "not a file written by torch.save"]),
    ("wrong_arch", ["do not fit", "D5C5", "missing", "cascades.0.conv4.weight"]),
    ("public", ["argparse.Namespace", "python -m scripts.import_checkpoint --input"]),
])
def test_bad_teacher_checkpoint(base, checkpoints, tmp_path, kind, fragments):
    path = checkpoints[kind]
    result = run_cli("train_student_kd.py", "--epochs", "1", "--no-progress", "--data-root", str(base),
                     "--exp-dir", str(tmp_path / "exp"), "--teacher-checkpoint", str(path))
    assert "trust" not in assert_one_line_error(result, f"--teacher-checkpoint {path}", *fragments)
    assert not (tmp_path / "exp").exists()


def test_bad_checkpoint_via_evaluate(base, checkpoints, tmp_path):
    path = checkpoints["wrong_arch"]
    result = run_cli("evaluate.py", "--checkpoints", str(path), "--data-root", str(base), "--acc", "4x",
                     "--out-dir", str(tmp_path / "out"))
    assert_one_line_error(result, f"--checkpoints {path}", "do not fit", "D5C5")
    assert not (tmp_path / "out").exists()


def test_init_from_sft_needs_an_sft_checkpoint(base, checkpoints, tmp_path):
    good = checkpoints["good"]
    result = run_cli("train_student_kd.py", "--epochs", "1", "--no-progress", "--data-root", str(base),
                     "--exp-dir", str(tmp_path / "exp"), "--teacher-checkpoint", str(good),
                     "--init-from-sft", str(good))
    assert_one_line_error(result, f"--init-from-sft {good}", "D3C5", "an SFT checkpoint is required", "train_sft.py")


# --------------------------------------------------------------------------- experiment folders

def test_resume_with_nothing_to_resume(base, tmp_path):
    result = run_cli(*train_args(base, tmp_path / "exp", "--resume"))
    assert_one_line_error(result, f"{tmp_path / 'exp' / 'model.pt'}", "--resume", "start without --resume")


@pytest.mark.parametrize("flags, fragments", [
    ([], ["already holds a run", "--resume", "--overwrite", "another --exp-dir"]),
    (["--resume", "--overwrite"], ["--resume and --overwrite", "pick one"]),
])
def test_existing_experiment_is_left_alone(base, run_dir, flags, fragments):
    before = snapshot(run_dir)
    assert_one_line_error(run_cli(*train_args(base, run_dir, *flags)), *fragments)
    assert snapshot(run_dir) == before


def test_evaluate_names_must_match_checkpoints(base, checkpoints, tmp_path):
    result = run_cli("evaluate.py", "--checkpoints", str(checkpoints["good"]), "--names", "teacher", "student",
                     "--data-root", str(base), "--acc", "4x", "--out-dir", str(tmp_path / "out"))
    assert_one_line_error(result, "--names has 2 names", "--checkpoints has 1")


def test_evaluate_refuses_an_existing_out_dir(base, checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("model,volume,slice\nold,run,0\n")
    before = snapshot(out)
    result = run_cli("evaluate.py", "--checkpoints", str(checkpoints["good"]), "--data-root", str(base),
                     "--acc", "4x", "--out-dir", str(out))
    assert_one_line_error(result, str(out / "metrics.csv"), "--overwrite", "--out-dir")
    assert snapshot(out) == before


def test_prepare_refuses_an_existing_out(tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "mask_4x.npy").write_bytes(b"old")
    result = run_cli("-m", "data.prepare", "--demo", "--out", str(out), "--size", "32")
    assert_one_line_error(result, f"--out-dir {out}", "--overwrite")
    assert snapshot(out) == {"mask_4x.npy": b"old"}


def test_report_needs_an_evaluate_folder(tmp_path):
    folder = tmp_path / "not_eval"
    folder.mkdir()
    result = run_cli("-m", "scripts.report", "--eval-dirs", str(folder), "--out-dir", str(tmp_path / "report"))
    assert_one_line_error(result, str(folder), "summary.json", "evaluate.py")
    assert not (tmp_path / "report").exists()


def test_figure_needs_an_evaluate_folder(base, tmp_path):
    result = run_cli("-m", "scripts.figure", "--eval-dir", str(tmp_path / "none"), "--data-root", str(base),
                     "--acc", "4x", "--out", str(tmp_path / "figure.png"))
    assert_one_line_error(result, f"--eval-dir {tmp_path / 'none'}", "evaluate.py")
    assert not (tmp_path / "figure.png").exists()


@pytest.mark.parametrize("flags, fragments", [
    ([], ["--input", "cannot be loaded", "not a file written by torch.save"]),
    (["--trust-pickle"], ["unrecognized arguments: --trust-pickle"]),  # gone: nothing is ever unpickled
])
def test_import_checkpoint_errors(checkpoints, tmp_path, flags, fragments):
    out = tmp_path / "converted.pt"
    result = run_cli("-m", "scripts.import_checkpoint", "--input", str(checkpoints["random"]), "--output", str(out),
                     *flags)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_import_checkpoint_keeps_an_existing_output(checkpoints, tmp_path):
    out = tmp_path / "converted.pt"
    out.write_bytes(b"old")
    result = run_cli("-m", "scripts.import_checkpoint", "--input", str(checkpoints["public"]), "--output", str(out))
    assert_one_line_error(result, f"--output {out}", "--overwrite")
    assert out.read_bytes() == b"old"


# --------------------------------------------------------------------------- shell scripts and --debug

def run_bash(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", [["scripts/train_all.sh"], ["scripts/train_all.sh", "data/x"],
                                  ["scripts/paper.sh"], ["scripts/demo.sh", "--overwrit"]])
def test_shell_script_usage_errors(args):
    assert_one_line_error(run_bash(*args), "usage: bash " + args[0])


def test_demo_refuses_an_existing_output_before_doing_anything(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "marker.txt").write_text("keep me")
    result = run_bash("scripts/demo.sh", env={"DEMO_OUT": str(out)})
    assert_one_line_error(result, str(out), "--overwrite")
    assert result.stdout == "" and snapshot(out) == {"marker.txt": b"keep me"}


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(tmp_path, how):
    missing = tmp_path / "nowhere"
    args = train_args(missing, tmp_path / "exp") + (["--debug"] if how == "flag" else [])
    result = run_cli(*args, env={"SFTKD_DEBUG": "1"} if how == "environment" else None)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert f"UserError: data root {missing} does not exist" in result.stderr
