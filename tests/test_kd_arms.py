"""Teacher and initialisation as independent choices of train_student_kd.py: --init-student, the same fresh S1
in every arm of one seed, and roles recorded from the real inputs and used by evaluate.py / report.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import evaluate
import train_sft
import train_student_kd
import train_teacher
from conftest import make_dataset
from models.distill.roles import arm_label, kd_run_name, teacher_kind
from models.training.flags import RECIPE_KEYS
from scripts import report
from tests.test_cli_errors import assert_one_line_error
from tests.test_training import common
from conftest import run_cli
from utils import UserError

ARMS = {  # name -> (teacher run, init flag, init run)
    "A": ("teacher", None, None),
    "B": ("sft", "--init-from-sft", "sft"),
    "C": ("teacher", "--init-from-sft", "sft"),
    "E": ("teacher", "--init-student", "student"),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """Tiny data; a teacher, a student, an SFT teacher and an imitation-0 SFT teacher trained one epoch each."""
    root = tmp_path_factory.mktemp("arms")
    data = make_dataset(root / "data", size=16, slices=2)
    train_teacher.main(common(data, root / "teacher", "--model", "teacher"))
    train_teacher.main(common(data, root / "student", "--model", "student"))
    train_sft.main(common(data, root / "sft"))
    train_sft.main(common(data, root / "sft0", "--imitation-weight", "0"))
    return {"root": root, "data": data, **{name: root / name / "best_model.pt"
                                           for name in ("teacher", "student", "sft", "sft0")}}


def arm_argv(base: dict, arm: str, exp: Path, *extra: str) -> list[str]:
    teacher, flag, init = ARMS[arm]
    return common(base["data"], exp, "--teacher-checkpoint", str(base[teacher]), "--kd-method", "ab",
                  *((flag, str(base[init])) if flag else ()), *extra)


def build(base: dict, arm: str):
    argv = arm_argv(base, arm, base["root"] / "unused")
    torch.manual_seed(7)  # what Trainer.build's seed_everything does before build_step
    return train_student_kd.build_step(train_student_kd.kd_run(train_student_kd.build_parser().parse_args(argv)))


def test_every_arm_of_a_seed_draws_the_same_s1_and_connectors(base):
    steps = {arm: build(base, arm) for arm in ARMS}
    s1 = {arm: {k: v for k, v in step.model.state_dict().items() if k.startswith("cascades.0.")}
          for arm, step in steps.items()}
    connectors = {arm: step.kd_loss.state_dict() for arm, step in steps.items()}
    assert s1["A"] and connectors["A"]  # ab has learnable connectors
    for arm in "BCE":
        assert all(torch.equal(s1["A"][k], s1[arm][k]) for k in s1["A"]), arm
        assert all(torch.equal(connectors["A"][k], connectors[arm][k]) for k in connectors["A"]), arm
    # ... while S2..S5 are what each initialisation says.
    student = torch.load(base["student"], weights_only=True)["model"]
    sft = torch.load(base["sft"], weights_only=True)["model"]
    e, c = steps["E"].model.state_dict(), steps["C"].model.state_dict()
    assert torch.equal(e["cascades.3.conv1.weight"], student["cascades.3.conv1.weight"])
    assert torch.equal(c["cascades.3.conv1.weight"], sft["student.cascades.3.conv1.weight"])
    assert not torch.equal(steps["A"].model.state_dict()["cascades.3.conv1.weight"], e["cascades.3.conv1.weight"])


def test_init_student_refuses_a_non_student_and_two_inits(base, tmp_path):
    for wrong in ("teacher", "sft"):
        result = run_cli("train_student_kd.py", *common(base["data"], tmp_path / wrong, "--teacher-checkpoint",
                                                        str(base["teacher"]), "--init-student", str(base[wrong])))
        assert_one_line_error(result, f"--init-student {base[wrong]}", "a D3C5 student is required")
        assert not (tmp_path / wrong).exists()
    result = run_cli("train_student_kd.py", *arm_argv(base, "B", tmp_path / "x", "--init-student",
                                                      str(base["student"])))
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_roles_are_recorded_named_and_reported(base, tmp_path):
    runs = {}
    for arm in ARMS:
        exp = tmp_path / arm
        train_student_kd.main(arm_argv(base, arm, exp))
        runs[arm] = exp / "best_model.pt"
        config = json.loads((exp / "config.json").read_text())
        assert torch.load(runs[arm], weights_only=True)["config"]["roles"] == config["roles"]
    roles = {arm: json.loads((tmp_path / arm / "config.json").read_text())["roles"] for arm in ARMS}
    d5c5, d3c5 = {"cascades": 5, "depth": 5, "width": 32}, {"cascades": 5, "depth": 3, "width": 32}
    assert roles["A"] == {"model": "kd", "teacher": "standard", "init": "scratch", "kd_method": "ab",
                          "nets": {"teacher": d5c5, "student": d3c5}}
    assert all(roles[arm]["nets"] == roles["A"]["nets"] for arm in ARMS)  # an SFT teacher: its teacher side
    assert (roles["B"]["teacher"], roles["B"]["init"]) == ("sft", "sft-blocks")
    assert (roles["C"]["teacher"], roles["C"]["init"]) == ("standard", "sft-blocks")
    assert (roles["E"]["teacher"], roles["E"]["init"]) == ("standard", "student")
    assert [kd_run_name(roles[a]) for a in ARMS] == ["stdkd-ab", "sftkd-ab", "stdkd-sftinit-ab",
                                                    "stdkd-studentinit-ab"]
    sft0 = json.loads((base["sft0"].parent / "config.json").read_text())["roles"]
    assert sft0 == {"model": "sft-imitation0", "nets": {"teacher": d5c5, "student": d3c5}}
    # Names that say nothing: evaluate.py records roles and seed, report.py builds its rows from them.
    out = tmp_path / "eval"
    names = ["m1", "m2", "m3", "m4", "m5"]
    evaluate.main(["--checkpoints", str(base["teacher"]), *(str(runs[a]) for a in ARMS), "--names", *names,
                   "--data-root", str(base["data"]), "--acc", "4x", "--out-dir", str(out), "--device", "cpu"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "validation"  # the fixture's two-split layout
    assert summary["roles"]["m3"] == {**roles["B"], "seed": 0} and summary["roles"]["m1"]["model"] == "teacher"
    # ... and each run's training setting, what a map compares across cells (scripts/map.py).
    config_b = json.loads((tmp_path / "B" / "config.json").read_text())
    assert summary["recipe"]["m3"] == {key: config_b[key] for key in RECIPE_KEYS if key in config_b}
    assert {"epochs", "lr", "augment", "kd_weight", "train_slices"} <= set(summary["recipe"]["m3"])
    assert "kd_weight" not in summary["recipe"]["m1"]  # the teacher trained without KD
    table, unknown = report.collect([out])
    labels = {label for key, label in report.row_order(table)}
    assert {"Teacher", "Std-KD (ab)", "SFT-KD-Recon (ab)", "Std teacher + SFT blocks (ab)",
            "Std teacher + student init (ab)"} <= labels
    assert not unknown


def test_teacher_kind_without_recorded_roles():
    assert teacher_kind(None, is_sft_network=True, imitation_weight=0.0) == "sft-imitation0"
    assert teacher_kind(None, is_sft_network=True, imitation_weight=None) == "sft"
    assert teacher_kind(None, is_sft_network=False, imitation_weight=None) == "standard"
    assert teacher_kind({"model": "student"}, False, None) == "other"
    assert arm_label("sft", "scratch") == "KD (sft teacher, scratch init)"
