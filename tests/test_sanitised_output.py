"""Text read from files never reaches a terminal or a table raw (issue 40, F6 and F7): a machine name with
escape codes in a checkpoint's record, a model name in an evaluation folder's name, a run name, all go through
utils.clean_text in what scripts.report and scripts.figure print and in every table.md they write."""
from __future__ import annotations

import json

import h5py
import numpy as np

from scripts import figure, report
from tests.conftest import make_dataset
from tests.test_report import fake, write_eval_dir

ESC = "\x1b"
HOSTILE = f"{ESC}]0;owned{chr(7)}{ESC}[2J{ESC}[31mEPYC"


def test_report_prints_and_writes_a_hostile_machine_name_escaped(tmp_path, capsys):
    # F6: scripts.report printed the clear-screen and window-title codes, and table.md kept the raw ESC.
    rng = np.random.default_rng(0)
    folder = write_eval_dir(tmp_path / "eval", "4x", {"ZF": fake(rng, 30, 0.6), "teacher": fake(rng, 38, 0.9),
                                                       "student": fake(rng, 37, 0.9)})
    summary = json.loads((folder / "summary.json").read_text())
    machine = {"cpu": HOSTILE, "cores": 2, "isa": f"AVX2{ESC}[0m", "torch": "2.13.0", "threads": 1}
    summary.update(checkpoints={"teacher": "t.pt", "student": "s.pt"}, trained_on={"teacher": machine,
                                                                                  "student": machine},
                   kspace=f"synthetic{ESC}[1A", image="magnitude")
    (folder / "summary.json").write_text(json.dumps(summary))
    report.main(["--eval-dirs", str(folder), "--out-dir", str(tmp_path / "report")])
    printed = capsys.readouterr()
    written = (tmp_path / "report" / "table.md").read_text() + (tmp_path / "report" / "table.csv").read_text()
    for text in (printed.out, printed.err, written):
        assert ESC not in text and chr(7) not in text
    assert "\\x1b[2J" in written and "\\x1b[2J" in printed.out  # shown, escaped, not dropped


def test_figure_prints_a_hostile_model_folder_name_escaped(tmp_path, capsys):
    # F7: an evaluation folder whose model name holds escape codes.
    root = make_dataset(tmp_path / "data", size=16, train_volumes=1, slices=2)
    with h5py.File(root / "validation" / "acc_4x" / "vol01.h5", "r") as f:
        target = np.moveaxis(f["volfs"][()], -1, 0)
    out = tmp_path / "eval"
    name = f"evil{ESC}[2J{ESC}]0;title{chr(7)}"
    (out / "recons" / name).mkdir(parents=True)
    with h5py.File(out / "recons" / name / "vol01.h5", "w") as f:
        f["reconstruction"] = target.astype(np.float32)
    (out / "summary.json").write_text(json.dumps({"acc": "4x", "checkpoints": {name: "x.pt"}}))
    figure.main(["--eval-dir", str(out), "--data-root", str(root), "--acc", "4x", "--output",
                 str(tmp_path / "f.png")])
    printed = capsys.readouterr()
    assert ESC not in printed.out + printed.err and chr(7) not in printed.out + printed.err
    assert "evil\\x1b[2J" in printed.out and (tmp_path / "f.png").is_file()
