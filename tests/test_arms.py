"""The arm registry (scripts/study/arms.py): its invariants, what it tells the shell scripts, and that a new arm
is one entry: a dummy arm reaches report.py's table and contrasts.py's contrasts with nothing else changed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from models.distill import roles
from scripts import report
from scripts.study import arms
from scripts.study.arms import ARMS, Arm


def test_letters_are_distinct_and_run_names_and_roles_unique():
    assert [arm.letter for arm in ARMS] == list("ABCDENL")
    assert len({arm.run_name("at") for arm in ARMS}) == len(ARMS)
    assert len({(arm.teacher, arm.init, arm.kd_method) for arm in ARMS}) == len(ARMS)
    assert [arm.prefix for arm in arms.selected(["paper", "controls"])] == \
           ["stdkd", "sftkd", "stdkd-sftinit", "stdkd-studentinit"]
    # N is the replication's hand-run no-KD control (docs/replication/w8-8x-20-nokd/run.sh), by name and flags.
    n, l = arms.BY_LETTER["N"], arms.BY_LETTER["L"]
    assert n.run_name("at") == n.run_name("imitation") == "stdkd-sftinit-none"
    assert l.run_name("at") == "stdkd-none" and arms.OWN_METHODS == {"none"}


def test_the_primary_contrast_comes_first_and_every_contrast_names_two_arms():
    found = arms.contrasts()
    assert found[0][0] == "B - C (SFT teacher vs standard, both SFT blocks)" and found[0][3]
    assert sum(primary for *_, primary in found) == 1
    pairs = [(b.letter, a.letter) for _, b, a, _ in found]
    assert set(pairs) == {("B", "C"), ("B", "A"), ("C", "A"), ("C", "D"), ("B", "N"), ("C", "N"), ("C", "L"),
                          ("D", "L")}
    # The map's family first, then the no-KD arms' (a family of its own for Holm).
    assert pairs[-4:] == [("B", "N"), ("C", "N"), ("C", "L"), ("D", "L")]
    assert {a.family for _, _, a, _ in found[-4:]} == {"nokd"} and {a.family for _, _, a, _ in found[:4]} == {"map"}


def test_l_trains_for_pre_training_plus_kd_epochs_with_the_step_scaled():
    l = arms.BY_LETTER["L"]
    assert l.schedule_flags(arms.Schedule(40, 40, 20)) == ["--epochs", "80", "--lr-step-size", "40"]
    assert l.schedule_flags(arms.Schedule(150, 150)) == ["--epochs", "300", "--lr-step-size", "80"]
    assert arms.Schedule(40, 20, 15).scaled_step == 45 and arms.Schedule(1, 3, 1).scaled_step == 1
    assert arms.BY_LETTER["N"].schedule_flags(arms.Schedule(40, 40, 20)) == []
    # The registry's default step is the training scripts' own.
    from models.training.flags import common_parser
    assert arms.Schedule.lr_step_size == common_parser("x").get_default("lr_step_size")


def test_the_shell_listing_gives_each_arm_its_teacher_and_init_flags(tmp_path):
    out = str(tmp_path / "a dir" / "4x")  # a space: the fields are tab-separated
    result = run_cli("-m", "scripts.study.arms", "runs", "--groups", "paper", "controls", "imitation0",
                     "--method", "at", "--runs-dir", out)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    at = ["--kd-method", "at"]
    assert rows == [
        ["stdkd-at", *at, "--teacher-checkpoint", f"{out}/teacher/best_model.pt"],
        ["sftkd-at", *at, "--teacher-checkpoint", f"{out}/sft/best_model.pt", "--init-from-sft", f"{out}/sft/best_model.pt"],
        ["stdkd-sftinit-at", *at, "--teacher-checkpoint", f"{out}/teacher/best_model.pt",
         "--init-from-sft", f"{out}/sft/best_model.pt"],
        ["stdkd-studentinit-at", *at, "--teacher-checkpoint", f"{out}/teacher/best_model.pt",
         "--init-student", f"{out}/student/best_model.pt"],
        ["sft0kd-at", *at, "--teacher-checkpoint", f"{out}/sft0/best_model.pt", "--init-from-sft", f"{out}/sft0/best_model.pt"],
    ]
    names = run_cli("-m", "scripts.study.arms", "names", "--groups", "paper", "--method", "imitation")
    assert names.stdout.split() == ["stdkd-imitation", "sftkd-imitation"]
    # The no-KD arms come once, after every method's arms; L with its total epochs and scaled step.
    both = run_cli("-m", "scripts.study.arms", "runs", "--groups", "paper", "nokd", "--method", "at", "imitation",
                   "--runs-dir", "R", "--pretrain-epochs", "40", "--epochs", "40", "--lr-step-size", "20")
    rows = [line.split("\t") for line in both.stdout.splitlines()]
    assert [row[0] for row in rows] == ["stdkd-at", "sftkd-at", "stdkd-imitation", "sftkd-imitation",
                                        "stdkd-sftinit-none", "stdkd-none"]
    assert rows[-2][1:] == ["--kd-method", "none", "--teacher-checkpoint", "R/teacher/best_model.pt",
                            "--init-from-sft", "R/sft/best_model.pt"]
    assert rows[-1][1:] == ["--kd-method", "none", "--teacher-checkpoint", "R/teacher/best_model.pt",
                            "--epochs", "80", "--lr-step-size", "40"]
    refused = run_cli("-m", "scripts.study.arms", "names", "--groups", "nokd", "--method", "at", "none")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --method none is the no-KD arms' own")


def _eval_folder(folder: Path, seed: int, levels: dict, kd_roles: dict) -> None:
    """An evaluate.py folder of one seed whose model names say nothing: report.py reads the roles."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = ["model,volume,slice,PSNR,SSIM,NMSE,HFN,VIF"]
    for name, level in levels.items():
        lines += [f"m-{name},v,{s},{level + rng.normal(0, 0.2)!r},0.9,0.01,0.1,0.9" for s in range(6)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps({
        "acc": "4x", "split": "test", "test_set": "mni152",
        "roles": {f"m-{name}": {**kd_roles[name], "seed": seed} for name in levels}}))


def test_a_new_arm_is_one_registry_entry(tmp_path, monkeypatch):
    dummy = Arm("F", "SFT teacher + student init", "sft", "student", "student", "controls", "a dummy arm",
                versus=(("A", "dummy vs Std-KD", False),))
    registry = (*ARMS, dummy)
    # The registry and the tables derived from it when the modules were imported.
    monkeypatch.setattr(arms, "ARMS", registry)
    monkeypatch.setattr(arms, "BY_LETTER", {arm.letter: arm for arm in registry})
    monkeypatch.setattr(arms, "BY_ROLES", {(arm.teacher, arm.init, arm.kd_method): arm for arm in registry})
    labels = {**arms.ARM_LABELS, dummy.prefix: dummy.label}
    monkeypatch.setattr(arms, "ARM_LABELS", labels)
    monkeypatch.setattr(report, "KD_ROLES", labels)
    # Its pair has no short name in the roles, so its runs are named descriptively, never like the paper's.
    assert dummy.prefix == "kd-sft-student"
    assert roles.kd_run_name({"teacher": "sft", "init": "student", "kd_method": "at"}) == "kd-sft-student-at"

    kd = lambda teacher, init: {"model": "kd", "teacher": teacher, "init": init, "kd_method": "at"}  # noqa: E731
    kd_roles = {"A": kd("standard", "scratch"), "F": kd("sft", "student")}
    dirs = [tmp_path / f"seed{seed}" for seed in (1, 2, 3)]
    for seed, folder in zip((1, 2, 3), dirs):
        _eval_folder(folder, seed, {"A": 30.0, "F": 31.0}, kd_roles)
    report.main(["--eval-dirs", *map(str, dirs), "--out-dir", str(tmp_path / "out"), "--contrasts"])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| SFT teacher + student init (at) |" in table
    row = next(line for line in table.splitlines() if line.startswith("| F - A (dummy vs Std-KD) (at) |"))
    assert "| 4x | 3 | +1.0" in row


def recording_python(tmp_path):
    """A fake interpreter for train_all.sh: ``-m`` calls (the arm registry) run for real, every other call is
    appended to the returned log and leaves a model.pt in its --exp-dir, so each run counts as finished."""
    fake = tmp_path / "python"
    log = tmp_path / "calls"
    real = __import__("sys").executable
    fake.write_text(f"#!/usr/bin/env bash\nif [ \"$1\" = -m ]; then exec {real} \"$@\"; fi\n"
                    f"echo \"$*\" >> {log}\nexp=''; while [ $# -gt 0 ]; do [ \"$1\" = --exp-dir ] && exp=$2; shift; done\n"
                    "mkdir -p \"$exp\" && touch \"$exp/model.pt\"\n")
    fake.chmod(0o755)
    return fake, log


def test_train_all_trains_the_registry_s_arms(tmp_path):
    """train_all.sh with a fake interpreter that records each call: the KD runs are the registry's."""
    fake, log = recording_python(tmp_path)
    import os
    import subprocess
    result = subprocess.run(["bash", "scripts/train_all.sh", str(tmp_path / "data"), "4x", "1"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": str(fake), "RESULTS": str(tmp_path / "r"),
                                 "KD_METHODS": "at", "CONTROLS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    kd_calls = [line for line in log.read_text().splitlines() if line.startswith("train_student_kd.py")]
    out = tmp_path / "r" / "4x"
    expected = [(arm.run_name("at"), arm.flags(str(out))) for arm in arms.selected(["paper", "controls"])]
    assert len(kd_calls) == len(expected)
    for call, (name, flags) in zip(kd_calls, expected):
        assert f"--exp-dir {out / name}" in call and " ".join(flags) in call


def test_train_all_trains_the_no_kd_arms_once_and_l_for_the_total_epochs(tmp_path):
    fake, log = recording_python(tmp_path)
    import os
    import subprocess

    def train_all(**env):
        return subprocess.run(["bash", "scripts/train_all.sh", str(tmp_path / "data"), "4x", "3"],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHON": str(fake), "RESULTS": str(tmp_path / "r"), **env})
    result = train_all(KD_METHODS="at imitation", NOKD="1", KD_EPOCHS="2", TRAIN_FLAGS="--lr-step-size=4 --augment")
    assert result.returncode == 0, result.stderr
    calls = [line for line in log.read_text().splitlines() if line.startswith("train_student_kd.py")]
    names = [call.split("--exp-dir ")[1].split()[0].rsplit("/", 1)[1] for call in calls]
    assert names == ["stdkd-at", "sftkd-at", "stdkd-imitation", "sftkd-imitation", "stdkd-sftinit-none", "stdkd-none"]
    # L: 3 + 2 epochs, StepLR step 4 * 5 / 2 = 10, after TRAIN_FLAGS so that its values win; N: the KD runs' own.
    assert calls[-1].endswith("--kd-method none --teacher-checkpoint "
                              f"{tmp_path}/r/4x/teacher/best_model.pt --epochs 5 --lr-step-size 10")
    assert calls[-1].index("--lr-step-size=4") < calls[-1].index("--lr-step-size 10")
    assert "--epochs 2 " in calls[-2] and "--lr-step-size 10" not in calls[-2]
    log.unlink()
    refused = train_all(KD_METHODS="at none")
    assert refused.returncode == 2 and "--method none is the no-KD arms' own" in refused.stderr
    assert not log.exists()  # refused before any run


@pytest.mark.parametrize("arm", ARMS, ids=lambda arm: arm.letter)
def test_each_arm_s_roles_name_it(arm):
    assert roles.kd_prefix(arm.teacher, arm.init) == arm.prefix
    assert roles.kd_run_name({"teacher": arm.teacher, "init": arm.init, "kd_method": arm.method("at")}) == \
        arm.run_name("at")
    if not arm.kd_method:
        assert arms.ARM_LABELS[arm.prefix] == arm.label
