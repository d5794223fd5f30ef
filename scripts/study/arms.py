"""The arm registry: every KD student the scripts train and the study compares, one entry each.

An arm is a teacher kind crossed with a source for the student's cascades S2..S5 (the role vocabulary of
models/distill/roles.py, which also names its runs: ``{prefix}-{kd method}``). Its entry gives everything else:
the letter the study's contrasts use, the table label, the runs its teacher and its initialisation come from,
and the group that decides when scripts/train_all.sh trains it. A new arm is one entry here (plus, if it needs
one, a new init flag in train_student_kd.py, and, for a short run name, its pair in roles.KD_PREFIXES);
train_all.sh and study.sh read the entries through ``python -m scripts.study.arms``, and scripts/report.py /
scripts/study/contrasts.py import them.

Pure Python, no torch: the shell scripts and scripts/report.py read it quickly.

    python -m scripts.study.arms runs --groups paper controls --method at --runs-dir results/x/4x
        one line per arm: its run name and the train_student_kd.py flags of its teacher and init, tab-separated
    python -m scripts.study.arms names --groups paper controls --method at
        the run names only, one per line
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from models.distill.roles import BASE_RUNS, INIT_KINDS, TEACHER_KINDS, kd_prefix
from utils import CliParser, old_spellings, run_cli

# The train_student_kd.py flag that takes each init source's checkpoint (scratch takes none).
INIT_FLAGS = {"scratch": None, "sft-blocks": "--init-from-sft", "student": "--init-student"}
# The base run whose best_model.pt is a teacher of each kind (the run names of scripts/train_all.sh).
TEACHER_RUNS = {kind: BASE_RUNS[role] for kind, role in (("standard", "teacher"), ("sft", "sft"),
                                                         ("sft-imitation0", "sft-imitation0"))}


@dataclass(frozen=True)
class Arm:
    """One KD arm.

    letter: its name in the study's contrasts (contiguous from A); label: its table row in scripts/report.py;
    teacher: the teacher kind (a key of :data:`TEACHER_RUNS`); init: where S2..S5 start (a key of
    :data:`INIT_FLAGS`); init_run: the base run the init checkpoint comes from (None for scratch); group: when
    train_all.sh trains it (``paper``: always; ``controls``: with CONTROLS=1; ``imitation0``: with
    SFT_IMITATION0=1); what: one line for the docs; versus: the study's contrasts "this arm - another",
    each (the other arm's letter, what the difference measures, whether it is the primary contrast).
    """
    letter: str
    label: str
    teacher: str
    init: str
    init_run: str | None
    group: str
    what: str
    versus: tuple[tuple[str, str, bool], ...] = ()

    @property
    def prefix(self) -> str:
        """The run-name prefix its roles give it (models/distill/roles.py)."""
        return kd_prefix(self.teacher, self.init)

    def run_name(self, method: str) -> str:
        return f"{self.prefix}-{method}"

    def flags(self, runs_dir: str) -> list[str]:
        """The train_student_kd.py flags of this arm's teacher and init, for base runs under ``runs_dir``."""
        flags = ["--teacher-checkpoint", f"{runs_dir}/{TEACHER_RUNS[self.teacher]}/best_model.pt"]
        if INIT_FLAGS[self.init]:
            flags += [INIT_FLAGS[self.init], f"{runs_dir}/{self.init_run}/best_model.pt"]
        return flags


ARMS = (
    Arm("A", "Std-KD", "standard", "scratch", None, "paper", "Std-KD"),
    Arm("B", "SFT-KD-Recon", "sft", "sft-blocks", "sft", "paper", "SFT-KD-Recon",
        versus=(("C", "SFT teacher vs standard, both SFT blocks", True), ("A", "SFT-KD-Recon vs Std-KD", False))),
    Arm("C", "Std teacher + SFT blocks", "standard", "sft-blocks", "sft", "controls",
        "SFT's blocks without SFT's teacher",
        versus=(("A", "SFT blocks vs scratch", False), ("D", "SFT blocks vs student init", False))),
    Arm("D", "Std teacher + student init", "standard", "student", "student", "controls",
        "ordinary pre-training: the standalone student's cascades"),
    Arm("E", "SFT-KD-Recon, imitation 0", "sft-imitation0", "sft-blocks", "sft0", "imitation0",
        "SFT-KD-Recon with the SFT teacher trained at --imitation-weight 0"),
)
GROUPS = ("paper", "controls", "imitation0")
BY_LETTER = {arm.letter: arm for arm in ARMS}
BY_ROLES = {(arm.teacher, arm.init): arm for arm in ARMS}


def arm_label(teacher: str, init: str) -> str:
    """Table label of a KD (teacher, init) pair: its arm's, e.g. ``Std teacher + SFT blocks``, else descriptive."""
    arm = BY_ROLES.get((teacher, init))
    return arm.label if arm else f"KD ({teacher} teacher, {init} init)"


# Run-name prefix -> table label of every KD pair the roles can name: the arms first (in the report's row
# order), then every other teacher / init pair.
ARM_LABELS = {kd_prefix(teacher, init): arm_label(teacher, init)
              for teacher, init in [*((arm.teacher, arm.init) for arm in ARMS), *product(TEACHER_KINDS, INIT_KINDS)]}


def selected(groups) -> list[Arm]:
    return [arm for arm in ARMS if arm.group in groups]


def contrasts(arms=ARMS) -> list[tuple[str, Arm, Arm, bool]]:
    """Every contrast the arms declare, the primary ones first: (label ``"B - C (what)"``, arm b, arm a,
    primary), read as b - a."""
    by_letter = {arm.letter: arm for arm in arms}
    found = [(f"{arm.letter} - {other} ({what})", arm, by_letter[other], primary)
             for arm in arms for other, what, primary in arm.versus]
    return sorted(found, key=lambda contrast: not contrast[3])


def _check() -> None:
    letters = [arm.letter for arm in ARMS]
    if letters != [chr(ord("A") + i) for i in range(len(ARMS))]:
        raise RuntimeError(f"arm letters must run A, B, C, ... without a gap, got {letters}")
    if len({arm.prefix for arm in ARMS}) != len(ARMS) or len(BY_ROLES) != len(ARMS):
        raise RuntimeError("two arms share a run-name prefix or a (teacher, init) pair")
    for arm in ARMS:
        if arm.teacher not in TEACHER_RUNS or arm.init not in INIT_FLAGS or arm.group not in GROUPS:
            raise RuntimeError(f"arm {arm.letter}: unknown teacher, init or group")
        if (arm.init_run is None) != (arm.init == "scratch"):
            raise RuntimeError(f"arm {arm.letter}: init_run must be given exactly when init is not scratch")
        if any(other not in BY_LETTER for other, _, _ in arm.versus):
            raise RuntimeError(f"arm {arm.letter}: a contrast names an arm that does not exist")


_check()


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(prog="python -m scripts.study.arms", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["runs", "names"])
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=["paper"])
    parser.add_argument("--method", required=True, help="KD method (a name of --kd-method list)")
    # Read, not written: the base runs' folder, so not --out-dir.
    old_spellings(parser.add_argument("--runs-dir", "--out", default=".",
                                      help="folder of the base runs (teacher/, student/, sft/, sft0/)"), "--out")
    args = parser.parse_args(argv)
    for arm in selected(args.groups):
        fields = [arm.run_name(args.method), *(arm.flags(args.runs_dir) if args.what == "runs" else [])]
        print("\t".join(fields))


if __name__ == "__main__":
    run_cli(main)
