"""Every checkpoint a run reads back it wrote itself (issue 40, case 3 and F1): the run records the SHA-256 of
each model.pt / best_model.pt it writes (``checksums.json``, models/checkpoints/io.py), and the one loader,
load_checkpoint, compares it before loading: a best_model.pt swapped before a two-stage KD run's stage switch,
or a model.pt swapped before --resume, is refused with one line, and a malicious file planted there never runs
(a run without the record still refuses it through the weights-only loader, in one line)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import train_student_kd
from models.checkpoints.format import model_payload
from models.checkpoints.io import RECORD, load_checkpoint, save_checkpoint
from models.nets.dccnn import DCCNN, TEACHER
from tests.conftest import cli_error, make_dataset
from tests.test_no_unpickling import malicious
from utils import UserError


def kd_args(world: dict, exp: Path, *extra: str) -> list[str]:
    return ["--data-root", str(world["data"]), "--exp-dir", str(exp), "--teacher-checkpoint", str(world["teacher"]),
            "--kd-method", "at-public", "--epochs", "2", "--feature-epochs", "1", "--batch-size", "2",
            "--no-progress", "--seed", "0", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Tiny data, a teacher, and a two-stage KD run killed as soon as its first model.pt is written (the end of
    stage 1), as the issue's case 3 stopped it: --resume then starts stage 2 from best_model.pt."""
    root = tmp_path_factory.mktemp("recorded")
    data = make_dataset(root / "data", size=16, train_volumes=1, slices=4)
    teacher = root / "teacher.pt"
    save_checkpoint(model_payload(DCCNN(TEACHER), "teacher", {"roles": {"model": "teacher"}}), teacher)
    world = {"root": root, "data": data, "teacher": teacher}
    from models.training.loop import Trainer
    save_last = Trainer.save_last

    def killed_after_first_save(self):
        save_last(self)
        raise SystemExit(137)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "save_last", killed_after_first_save)
        with pytest.raises(SystemExit):
            train_student_kd.main(kd_args(world, root / "stopped"))
    assert torch.load(root / "stopped" / "model.pt", weights_only=True)["epoch"] == 1
    return world


@pytest.fixture
def stopped(world, tmp_path) -> Path:
    return Path(shutil.copytree(world["root"] / "stopped", tmp_path / "stopped"))


def test_the_run_records_what_it_wrote(stopped):
    record = json.loads((stopped / RECORD).read_text())
    assert set(record) == {"model.pt", "best_model.pt"}
    for name, digests in record.items():
        assert len(digests) == 1
        load_checkpoint(stopped / name)  # verified against the record


def test_an_untouched_stopped_run_resumes(world, stopped):
    train_student_kd.main(kd_args(world, stopped, "--resume"))
    assert torch.load(stopped / "model.pt", weights_only=True)["epoch"] == 2


def test_a_swapped_best_model_is_refused_at_the_stage_switch(world, stopped, capsys):
    # Issue case 3: another student's weights copied over the run's best_model.pt.
    other = torch.load(stopped / "best_model.pt", weights_only=True)
    other["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in other["model"].items()}
    torch.save(other, stopped / "best_model.pt")
    before = (stopped / "model.pt").read_bytes()
    err = cli_error(train_student_kd.main, kd_args(world, stopped, "--resume"), capsys)
    assert f"{stopped / 'best_model.pt'} is not the file this run wrote" in err
    assert (stopped / "model.pt").read_bytes() == before


def test_a_swapped_model_pt_is_refused_by_resume(world, stopped, capsys):
    state = torch.load(stopped / "model.pt", weights_only=True)
    state["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, stopped / "model.pt")
    err = cli_error(train_student_kd.main, kd_args(world, stopped, "--resume"), capsys)
    assert f"{stopped / 'model.pt'} is not the file this run wrote" in err


@pytest.mark.parametrize("recorded", [True, False])
def test_a_malicious_best_model_is_refused_in_one_line_and_never_runs(world, stopped, capsys, recorded):
    # Issue F1: the stage switch used an unwrapped torch.load, whose refusal was a traceback.
    sentinel = stopped / "SENTINEL"
    shutil.move(malicious(stopped.parent, "zip", sentinel), stopped / "best_model.pt")
    if not recorded:  # a run without a record: the loader itself refuses
        (stopped / RECORD).unlink()
    err = cli_error(train_student_kd.main, kd_args(world, stopped, "--resume"), capsys)
    assert str(stopped / "best_model.pt") in err and "Traceback" not in err and "weights_only=False" not in err
    assert ("is not the file this run wrote" in err) == recorded
    assert not sentinel.exists()


def test_a_checkpoint_outside_a_run_loads_unverified(world, tmp_path):
    copy = tmp_path / "elsewhere" / "best_model.pt"
    copy.parent.mkdir()
    shutil.copy(world["root"] / "stopped" / "best_model.pt", copy)
    assert load_checkpoint(copy)["epoch"] == 1


def test_a_record_kept_during_a_write_accepts_the_old_and_the_new_file(world, tmp_path):
    # A run killed between recording a new best_model.pt and renaming it into place keeps the old file.
    exp = Path(shutil.copytree(world["root"] / "stopped", tmp_path / "run"))
    old = load_checkpoint(exp / "best_model.pt")
    record = json.loads((exp / RECORD).read_text())
    record["best_model.pt"].append("0" * 64)
    (exp / RECORD).write_text(json.dumps(record))
    assert load_checkpoint(exp / "best_model.pt")["epoch"] == old["epoch"]
    record["best_model.pt"] = ["0" * 64]
    (exp / RECORD).write_text(json.dumps(record))
    with pytest.raises(UserError, match="is not the file this run wrote"):
        load_checkpoint(exp / "best_model.pt")
