"""What a trained network is, recorded from its real inputs: the role vocabulary of config.json / checkpoints,
the run names derived from it, and the table rows scripts/report.py builds from it.

A run's ``roles`` (``config["roles"]`` in ``config.json`` and in every checkpoint it writes):

- ``train_teacher.py``: ``{"model": "teacher"}`` or ``{"model": "student"}``;
- ``train_sft.py``: ``{"model": "sft"}``, or ``{"model": "sft-imitation0"}`` with ``--imitation-weight 0``;
- ``train_student_kd.py``: ``{"model": "kd", "teacher": T, "init": I, "kd_method": M}`` with T what
  ``--teacher-checkpoint`` holds (``standard``: a teacher trained alone; ``sft``; ``sft-imitation0``; or
  ``other``: any other network) and I where the student's cascades S2..S5 came from (``scratch``;
  ``sft-blocks``: ``--init-from-sft``; ``student``: ``--init-student``, a student trained alone);
- every run also records ``"nets"``: the size of each network it trains or distils from, by side, e.g.
  ``{"teacher": {"cascades": 5, "depth": 5, "width": 32}, "student": {"cascades": 5, "depth": 3, "width": 8}}``
  (train_teacher.py: its one network under its ``--model`` name; the KD teacher of an SFT checkpoint: its
  teacher side), so that runs of different capacities are never reported as one (runs without it are
  reported by their other roles).

The KD arms with names of their own (the paper's Std-KD and SFT-KD-Recon, the study's controls) are the
entries of models/distill/arms.py; any other (teacher, init) pair gets a descriptive name here. Pure Python:
scripts/report.py reads roles without torch.
"""
from __future__ import annotations

from itertools import product

from models.distill.arms import ARMS, BY_ROLES, INIT_FLAGS

TEACHER_KINDS = ("standard", "sft", "sft-imitation0", "other")
INIT_KINDS = tuple(INIT_FLAGS)
# Base models: role -> (report key, table label).
BASE_MODELS = {"teacher": ("teacher", "Teacher"), "student": ("student", "Student"),
               "sft": ("sft", "SFT teacher"), "sft-imitation0": ("sft0", "SFT teacher, imitation 0")}


def teacher_kind(roles: dict | None, is_sft_network: bool, imitation_weight: float | None) -> str:
    """The ``teacher`` role of a KD run from what its teacher checkpoint records: its own ``roles`` when it
    has them, else (checkpoints without roles, such as imported public ones) its network and SFT weights."""
    model = (roles or {}).get("model")
    if model == "teacher":
        return "standard"
    if model in ("sft", "sft-imitation0"):
        return model
    if model is not None:
        return "other"
    return sft_kind(imitation_weight) if is_sft_network else "standard"


def sft_kind(imitation_weight: float) -> str:
    """The ``model`` role of an SFT run."""
    return "sft-imitation0" if imitation_weight == 0 else "sft"


def arm_prefix(teacher: str, init: str) -> str:
    """Run-name prefix of a KD arm: ``stdkd``, ``sftkd``, ... or ``kd-{teacher}-{init}`` for other pairs."""
    arm = BY_ROLES.get((teacher, init))
    return arm.prefix if arm else f"kd-{teacher}-{init}"


def arm_label(teacher: str, init: str) -> str:
    """Table label of a KD arm, e.g. ``Std teacher + SFT blocks``."""
    arm = BY_ROLES.get((teacher, init))
    return arm.label if arm else f"KD ({teacher} teacher, {init} init)"


def kd_run_name(roles: dict) -> str:
    """``{arm prefix}-{kd method}``, e.g. ``stdkd-sftinit-at``: a cross arm is never named like the paper's."""
    return f"{arm_prefix(roles['teacher'], roles['init'])}-{roles['kd_method']}"


# Run-name prefix -> table label of every KD arm the vocabulary can name: the named arms first (in the
# report's row order), then every other teacher / init pair.
ARM_LABELS = {arm_prefix(teacher, init): arm_label(teacher, init)
              for teacher, init in [*((arm.teacher, arm.init) for arm in ARMS), *product(TEACHER_KINDS, INIT_KINDS)]}
