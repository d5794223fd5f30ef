"""What a trained network is, recorded from its real inputs: the role vocabulary of config.json / checkpoints
and the run names derived from it.

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
  teacher side), so that runs of different capacities are never reported as one.

A KD run is named ``{prefix}-{kd method}``: the prefix of its (teacher, init) pair in :data:`KD_PREFIXES` (the
paper's Std-KD and SFT-KD-Recon and the controls built beside them), else ``kd-{teacher}-{init}``, so that a
cross pair is never named like the paper's. Pure Python: scripts/report.py reads roles without torch.
"""
from __future__ import annotations

TEACHER_KINDS = ("standard", "sft", "sft-imitation0", "other")
INIT_KINDS = ("scratch", "sft-blocks", "student")
# The run name of each base model role (the folders scripts/train_all.sh trains into).
BASE_RUNS = {"teacher": "teacher", "student": "student", "sft": "sft", "sft-imitation0": "sft0"}
# The KD (teacher, init) pairs with a run-name prefix of their own.
KD_PREFIXES = {("standard", "scratch"): "stdkd", ("sft", "sft-blocks"): "sftkd",
               ("standard", "sft-blocks"): "stdkd-sftinit", ("standard", "student"): "stdkd-studentinit",
               ("sft-imitation0", "sft-blocks"): "sft0kd"}


def teacher_kind(roles: dict | None, is_sft_network: bool, imitation_weight: float | None) -> str:
    """The ``teacher`` role of a KD run from what its teacher checkpoint records: its own ``roles`` when it
    has them, else (imported public checkpoints, runs that recorded none) its network and SFT weights."""
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


def kd_prefix(teacher: str, init: str) -> str:
    """Run-name prefix of a KD (teacher, init) pair: ``stdkd``, ``sftkd``, ... or ``kd-{teacher}-{init}``."""
    return KD_PREFIXES.get((teacher, init), f"kd-{teacher}-{init}")


def kd_run_name(roles: dict) -> str:
    """``{prefix}-{kd method}``, e.g. ``stdkd-sftinit-at``: a cross pair is never named like the paper's."""
    return f"{kd_prefix(roles['teacher'], roles['init'])}-{roles['kd_method']}"
