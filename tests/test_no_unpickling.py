"""No loader ever unpickles code (issue 25, item 1): a checkpoint whose pickle calls ``os.system`` is refused by
every loader and every script, in all three forms a ``.pt`` file takes, with or without any flag, in one line
that names the global; the payload never runs (a sentinel file it would create never appears)."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

import evaluate
import train_student_kd
from models.checkpoints.format import load_model, load_reconstructor, model_payload
from models.distill.student_init import load_sft
from models.checkpoints.io import (PUBLIC_CODE_GLOBALS, load_checkpoint, load_public, pickled_globals,
                                   save_checkpoint)
from models.checkpoints.public import import_checkpoint
from models.nets.dccnn import DCCNN, STUDENT, TEACHER
from scripts import import_checkpoint as import_script
from tests.conftest import cli_error, make_dataset
from utils import UserError

FORMATS = ("zip", "legacy", "raw")


class Payload:
    """Unpickles as ``os.system("touch SENTINEL")``: what a malicious checkpoint holds."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def malicious(folder: Path, form: str, sentinel: Path) -> Path:
    """A file in ``form`` (zip: torch >= 1.6, legacy: the pre-zip torch format, raw: a bare pickle) that looks
    like a checkpoint of this project and of the public code but runs the payload when unpickled."""
    path = folder / f"evil_{form}.pt"
    good = model_payload(DCCNN(STUDENT), "student")
    obj = {**good, "args": Payload(sentinel), "epoch": 1, "optimizer": {}, "scheduler": {}, "batch_in_epoch": 0,
           "global_step": 1, "best_val_loss": 1.0}
    if form == "raw":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=form == "zip")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, a good teacher, the three malicious files and the sentinel path they would create."""
    root = tmp_path_factory.mktemp("evil")
    sentinel = root / "SENTINEL"
    data = make_dataset(root / "data", size=16, train_volumes=1, slices=2)
    teacher = root / "teacher.pt"
    save_checkpoint(model_payload(DCCNN(TEACHER), "teacher"), teacher)
    files = {form: malicious(root, form, sentinel) for form in FORMATS}
    return {"root": root, "sentinel": sentinel, "data": data, "teacher": teacher, "files": files}


def test_the_payload_is_real(world, tmp_path):
    # The files would run the payload if unpickled: the test below would pass vacuously otherwise.
    sentinel = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(sentinel)))
    assert sentinel.exists()
    for path in world["files"].values():
        assert "posix.system" in pickled_globals(path)


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("loader", [load_checkpoint, load_model, load_reconstructor, load_sft, load_public,
                                    lambda path: import_checkpoint(path, path.with_suffix(".out"))],
                         ids=["load_checkpoint", "load_model", "load_reconstructor", "load_sft", "load_public",
                              "import_checkpoint"])
def test_every_loader_refuses_without_running_it(world, form, loader):
    path = world["files"][form]
    with pytest.raises(UserError) as info:
        loader(path)
    message = str(info.value)
    assert "posix.system" in message and "\n" not in message
    assert not world["sentinel"].exists()
    assert not path.with_suffix(".out").exists()


def _train_args(world, exp: Path) -> list[str]:
    return ["--data-root", str(world["data"]), "--exp-dir", str(exp), "--epochs", "1", "--no-progress",
            "--batch-size", "2"]


@pytest.mark.parametrize("form", FORMATS)
def test_every_script_refuses_without_running_it(world, form, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)
    evil, teacher = str(world["files"][form]), str(world["teacher"])
    out = tmp_path / "converted.pt"
    # Flags that once meant "trust the file" or that change nothing about loading: none unlocks the payload.
    for flags in ([], ["--overwrite"], ["--trust-pickle"]):
        err = cli_error(import_script.main, ["--input", evil, "--output", str(out), *flags], capsys)
        assert "posix.system" in err or "--trust-pickle" in err
    assert not out.exists()
    err = cli_error(evaluate.main, ["--checkpoints", evil, "--data-root", str(world["data"]), "--acc", "4x",
                               "--out-dir", str(tmp_path / "eval")], capsys)
    assert "posix.system" in err
    kd = _train_args(world, tmp_path / "kd")
    assert "posix.system" in cli_error(train_student_kd.main, [*kd, "--teacher-checkpoint", evil], capsys)
    assert "posix.system" in cli_error(train_student_kd.main, [*kd, "--teacher-checkpoint", teacher,
                                                          "--init-from-sft", evil], capsys)
    assert "posix.system" in cli_error(train_student_kd.main, [*kd, "--teacher-checkpoint", teacher,
                                                          "--init-student", evil], capsys)
    # --resume reads model.pt: a run folder whose model.pt was swapped for the malicious file.
    resumed = tmp_path / "run"
    resumed.mkdir()
    (resumed / "model.pt").write_bytes(world["files"][form].read_bytes())
    assert "posix.system" in cli_error(train_student_kd.main, [*_train_args(world, resumed), "--resume",
                                                          "--teacher-checkpoint", teacher], capsys)
    assert not world["sentinel"].exists()


def test_the_allow_list_is_exactly_the_public_codes_globals():
    # Reviewed by hand (models/checkpoints/io.py says why each is harmless); a change here is a decision.
    assert sorted(PUBLIC_CODE_GLOBALS) == ["argparse.Namespace", "numpy._core.multiarray.scalar",
                                           "numpy.core.multiarray.scalar", "numpy.dtype",
                                           "numpy.dtypes.Float64DType", "pathlib.PosixPath"]


def test_a_refused_raw_pickle_prints_no_torch_warning(world, tmp_path, capsys, monkeypatch):
    # torch warns about a pickle protocol it did not write; the refusal must still be one line.
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for loader in (load_public, load_checkpoint):
            with pytest.raises(UserError):
                loader(world["files"]["raw"])
    assert not caught, [str(w.message) for w in caught]
    assert capsys.readouterr().err == ""


def test_a_folder_given_as_a_checkpoint_is_named_a_folder(world, tmp_path):
    # Issue list 6: `--checkpoints DIR` (a folder that exists) said "does not exist".
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(model_payload(DCCNN(STUDENT), "student"), run / "best_model.pt")
    for loader in (load_checkpoint, load_public, lambda path: import_checkpoint(path, tmp_path / "out.pt")):
        with pytest.raises(UserError, match=f"{run} is a folder, not a checkpoint file; pass the file, e.g. "
                                            f"{run / 'best_model.pt'}"):
            loader(run)


def test_a_payload_in_a_damaged_pickle_is_still_named(tmp_path):
    # Cut after the payload's global: torch refuses the stream, and the refusal names what it held.
    whole = pickle.dumps({"x": Payload(tmp_path / "ran")}, protocol=2)
    path = tmp_path / "cut.pt"
    path.write_bytes(whole[:whole.index(b"system") + 8])
    with pytest.raises(UserError, match=r"\(posix.system\)"):
        load_checkpoint(path)
    assert not (tmp_path / "ran").exists()
