"""Every output written whole or not at all (issue 25, item 4): report.py stages its files and swaps them in, so a
full disk leaves --out-dir as it was and a plain rerun works; it never moves another tool's files in a shared
folder; a new training run that fails before its first model.pt leaves nothing behind."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import scripts.report as report
import data.outputs
import train_teacher
from tests.conftest import cli_error, make_dataset
from tests.test_report import fake, write_eval_dir


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def eval_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return write_eval_dir(tmp_path / "eval_4x", "4x", {"ZF": fake(rng, 30, 0.6), "teacher": fake(rng, 40, 0.97),
                                                      "student": fake(rng, 39, 0.96)})


def full_disk_at(monkeypatch, name: str) -> None:
    """Every atomic write of a file called ``name`` fails as on a full disk (after the data went to its
    temporary file), the others succeed."""
    real = data.outputs.atomic_write

    def write(path, fn, mode="wb"):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, fn, mode)
    monkeypatch.setattr(data.outputs, "atomic_write", write)
    monkeypatch.setattr(report, "atomic_write", write)


def one_line(argv, capsys) -> str:
    err = cli_error(report.main, argv, capsys)
    assert err.startswith("error: No space left on device"), err
    return err


@pytest.mark.parametrize("failing", ["table.csv", "plot.png"])
def test_report_on_a_full_disk_leaves_a_new_out_dir_empty_and_a_rerun_works(eval_dir, tmp_path, capsys,
                                                                             monkeypatch, failing):
    # Issue case 5: a failure must not leave table.md complete and table.csv missing, nor refuse the rerun.
    out = tmp_path / "report"
    argv = ["--eval-dirs", str(eval_dir), "--out-dir", str(out), "--plot", str(out / "plot.png")]
    full_disk_at(monkeypatch, failing)
    one_line(argv, capsys)
    assert not out.exists()
    monkeypatch.undo()
    report.main(argv)
    assert {"table.md", "table.csv", "plot.png", "report_manifest.json"} <= set(snapshot(out))


def test_report_on_a_full_disk_keeps_the_previous_report(eval_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    report.main(["--eval-dirs", str(eval_dir), "--out-dir", str(out)])
    before = snapshot(out)
    full_disk_at(monkeypatch, "table.csv")
    one_line(["--eval-dirs", str(eval_dir), "--out-dir", str(out), "--overwrite"], capsys)
    assert snapshot(out) == before


def test_report_beside_an_evaluation_never_moves_its_files(eval_dir, tmp_path):
    # The evaluate.py folder keeps its manifest.json and files: the report's swap has a manifest of its own.
    (eval_dir / "manifest.json").write_text(json.dumps({"files": ["metrics.csv", "summary.json"]}))
    before = snapshot(eval_dir)
    for flags in ([], ["--overwrite"]):
        report.main(["--eval-dirs", str(eval_dir), "--out-dir", str(eval_dir), *flags])
    after = snapshot(eval_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"table.md", "table.csv", "report_manifest.json"}


def test_a_new_run_failing_before_its_first_model_pt_leaves_nothing(tmp_path, monkeypatch, capsys):
    # Issue list 6: a full disk at the first model.pt left config.json and best_model.pt behind.
    import models.checkpoints.io as checkpoint_io
    data = make_dataset(tmp_path / "data", size=16, train_volumes=1, slices=2)
    exp = tmp_path / "exp"
    argv = ["--model", "student", "--data-root", str(data), "--exp-dir", str(exp), "--epochs", "1",
            "--batch-size", "2", "--no-progress"]
    real = checkpoint_io.atomic_write

    def full(path, fn, mode="wb"):
        if Path(path).name == "model.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, fn, mode)
    monkeypatch.setattr(checkpoint_io, "atomic_write", full)
    assert cli_error(train_teacher.main, argv, capsys).startswith("error: No space left on device")
    monkeypatch.undo()
    # Nothing of the failed run is left (a best_model.pt without model.pt would pass for a result), so the
    # same command simply runs again; a run killed outright leaves config.json, which --resume restarts
    # (test_nothing_lost.py).
    assert not exp.exists()
    train_teacher.main(argv)
    assert torch.load(exp / "model.pt", weights_only=True)["epoch"] == 1
