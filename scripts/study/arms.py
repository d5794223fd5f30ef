"""The arm registry: every KD student the scripts train and the study compares, one entry each.

An arm is a teacher kind crossed with a source for the student's cascades S2..S5 (the role vocabulary of
models/distill/roles.py, which also names its runs: ``{prefix}-{kd method}``). Its entry gives everything else:
the letter the study's contrasts use, the table label, the runs its teacher and its initialisation come from,
and the group that decides when scripts/train_all.sh trains it. A new arm is one entry here (plus, if it needs
one, a new init flag in train_student_kd.py, and, for a short run name, its pair in roles.KD_PREFIXES);
train_all.sh and study.sh read the entries through ``python -m scripts.study.arms``, and scripts/report.py /
scripts/study/contrasts.py import them.

Most arms distil with the study's KD method M (their runs are ``{prefix}-M``). The no-KD arms fix their own
method, ``none`` (L1 only; the teacher checkpoint is loaded but not used), and are trained once whatever M is:
N, the SFT run's blocks fine-tuned without a teacher, and L, the student alone for the epochs of a pre-trained
arm's pre-training plus its KD (``--epochs`` of the base runs plus of the KD runs, the StepLR step scaled alike).
Their rows and contrasts join every method's.

Pure Python, no torch: the shell scripts and scripts/report.py read it quickly.

    python -m scripts.study.arms runs --groups paper controls nokd --method at imitation --runs-dir results/x/4x \
            --pretrain-epochs 40 --epochs 40 --lr-step-size 20
        one line per run: its name and its train_student_kd.py flags (--kd-method, teacher, init and, for L, its
        --epochs and --lr-step-size), tab-separated; a no-KD arm once, after every method's arms
    python -m scripts.study.arms names --groups paper controls nokd --method at imitation
        the run names only, one per line
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from models.distill.roles import BASE_RUNS, INIT_KINDS, TEACHER_KINDS, kd_prefix
from utils import CliParser, UserError, old_spellings, run_cli

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
    SFT_IMITATION0=1; ``nokd``: with NOKD=1); what: one line for the docs; versus: the study's contrasts "this arm
    - another", each (the other arm's letter, what the difference measures, whether it is the primary contrast);
    family: the contrasts Holm-corrected together (scripts/study/contrasts.py); kd_method: a method of its own
    (``none``) instead of the study's; total_epochs: trained for the base runs' epochs plus the KD runs', with
    the StepLR step scaled by the same factor (L), instead of the KD runs' epochs.
    """
    letter: str
    label: str
    teacher: str
    init: str
    init_run: str | None
    group: str
    what: str
    versus: tuple[tuple[str, str, bool], ...] = ()
    family: str = "map"  # of the contrasts against this arm
    kd_method: str | None = None
    total_epochs: bool = False

    @property
    def prefix(self) -> str:
        """The run-name prefix its roles give it (models/distill/roles.py)."""
        return kd_prefix(self.teacher, self.init)

    def method(self, study_method: str) -> str:
        """The KD method this arm's run uses when the study distils with ``study_method``."""
        return self.kd_method or study_method

    def run_name(self, method: str) -> str:
        return f"{self.prefix}-{self.method(method)}"

    def key(self, method: str) -> tuple[str, str]:
        """Its row in scripts/report.py's table: (run-name prefix, KD method)."""
        return self.prefix, self.method(method)

    def schedule_flags(self, schedule: "Schedule") -> list[str]:
        """``--epochs`` and ``--lr-step-size`` of an arm trained for the total epochs (L); none for the others,
        which take the KD runs' own."""
        if not self.total_epochs:
            return []
        return ["--epochs", str(schedule.total), "--lr-step-size", str(schedule.scaled_step)]

    def flags(self, runs_dir: str) -> list[str]:
        """The train_student_kd.py flags of this arm's teacher and init, for base runs under ``runs_dir``."""
        flags = ["--teacher-checkpoint", f"{runs_dir}/{TEACHER_RUNS[self.teacher]}/best_model.pt"]
        if INIT_FLAGS[self.init]:
            flags += [INIT_FLAGS[self.init], f"{runs_dir}/{self.init_run}/best_model.pt"]
        return flags


@dataclass(frozen=True)
class Schedule:
    """The epochs of a study's runs: ``pretrain`` of the base runs (teacher, student, SFT), ``kd`` of each KD run,
    ``lr_step_size`` the StepLR step of the KD runs. An arm trained for the total epochs gets ``pretrain + kd``
    epochs and the step scaled by ``(pretrain + kd) / kd``, rounded, at least 1 (40 + 40 epochs at step 20: 80 at
    step 40)."""
    pretrain: int
    kd: int
    lr_step_size: int = 40  # train_*.py's --lr-step-size default (tests/test_arms.py checks it)

    @property
    def total(self) -> int:
        return self.pretrain + self.kd

    @property
    def scaled_step(self) -> int:
        return max(1, round(self.lr_step_size * self.total / self.kd))


ARMS = (
    Arm("A", "Std-KD", "standard", "scratch", None, "paper", "Std-KD"),
    Arm("B", "SFT-KD-Recon", "sft", "sft-blocks", "sft", "paper", "SFT-KD-Recon",
        versus=(("C", "SFT teacher vs standard, both SFT blocks", True), ("A", "SFT-KD-Recon vs Std-KD", False),
                ("N", "SFT teacher's KD vs its blocks without KD", False))),
    Arm("C", "Std teacher + SFT blocks", "standard", "sft-blocks", "sft", "controls",
        "SFT's blocks without SFT's teacher",
        versus=(("A", "SFT blocks vs scratch", False), ("D", "SFT blocks vs student init", False),
                ("N", "standard teacher's KD vs the SFT blocks without KD", False),
                ("L", "SFT pre-training + KD vs the student alone, same epochs", False))),
    Arm("D", "Std teacher + student init", "standard", "student", "student", "controls",
        "ordinary pre-training: the standalone student's cascades",
        versus=(("L", "student pre-training + KD vs the student alone, same epochs", False),)),
    Arm("E", "SFT-KD-Recon, imitation 0", "sft-imitation0", "sft-blocks", "sft0", "imitation0",
        "SFT-KD-Recon with the SFT teacher trained at --imitation-weight 0"),
    # The no-KD arms (why, and what each outcome means: docs/map/plan-N-L.md). N is the replication's hand-run control
    # (docs/replication/w8-8x-20-nokd, run stdkd-sftinit-none); their contrasts are their own Holm family.
    Arm("N", "SFT blocks, no KD", "standard", "sft-blocks", "sft", "nokd",
        "the SFT run's S2..S5 fine-tuned with L1 alone (--kd-method none), the KD runs' epochs and schedule",
        family="nokd", kd_method="none"),
    Arm("L", "Student alone, pre-training + KD epochs", "standard", "scratch", None, "nokd",
        "the student from scratch with L1 alone for a pre-trained arm's total epochs, StepLR step scaled",
        family="nokd", kd_method="none", total_epochs=True),
)
GROUPS = ("paper", "controls", "imitation0", "nokd")
BY_LETTER = {arm.letter: arm for arm in ARMS}
BY_ROLES = {(arm.teacher, arm.init, arm.kd_method): arm for arm in ARMS}
# The KD methods only the no-KD arms use: not a method of the study's (scripts/train_all.sh refuses them).
OWN_METHODS = frozenset(arm.kd_method for arm in ARMS if arm.kd_method)


def arm_label(teacher: str, init: str) -> str:
    """Table label of a KD (teacher, init) pair: its arm's, e.g. ``Std teacher + SFT blocks``, else descriptive."""
    arm = BY_ROLES.get((teacher, init, None))
    return arm.label if arm else f"KD ({teacher} teacher, {init} init)"


# Run-name prefix -> table label of every KD pair the roles can name: the arms first (in the report's row
# order), then every other teacher / init pair.
ARM_LABELS = {kd_prefix(teacher, init): arm_label(teacher, init)
              for teacher, init in [*((arm.teacher, arm.init) for arm in ARMS), *product(TEACHER_KINDS, INIT_KINDS)]}


def own_method_arms(arms=None) -> list[Arm]:
    """The arms with a KD method of their own (N, L), in registry order."""
    return [arm for arm in (ARMS if arms is None else arms) if arm.kd_method]


def study_methods(methods) -> list[str]:
    """The study's KD methods among ``methods`` (a table's): every one but the no-KD arms' own, sorted."""
    return sorted(set(methods) - OWN_METHODS - {None})


def selected(groups) -> list[Arm]:
    return [arm for arm in ARMS if arm.group in groups]


def contrasts(arms=ARMS) -> list[tuple[str, Arm, Arm, bool]]:
    """Every contrast the arms declare, the primary ones first, then by family (the map's before the no-KD
    arms'): (label ``"B - C (what)"``, arm b, arm a, primary), read as b - a. A contrast's Holm family is its
    second arm's (:attr:`Arm.family`)."""
    by_letter = {arm.letter: arm for arm in arms}
    found = [(f"{arm.letter} - {other} ({what})", arm, by_letter[other], primary)
             for arm in arms for other, what, primary in arm.versus]
    families = list(dict.fromkeys(arm.family for arm in arms))
    return sorted(found, key=lambda contrast: (not contrast[3], families.index(contrast[2].family)))


def runs(groups, methods, runs_dir: str, schedule: Schedule) -> list[tuple[str, list[str]]]:
    """(run name, train_student_kd.py flags) of every selected arm: per study method its KD arms, then each
    no-KD arm once."""
    chosen = selected(groups)
    found = [(arm.run_name(method), ["--kd-method", method, *arm.flags(runs_dir)])
             for method in dict.fromkeys(methods) for arm in chosen if not arm.kd_method]
    found += [(arm.run_name(""), ["--kd-method", arm.kd_method, *arm.flags(runs_dir), *arm.schedule_flags(schedule)])
              for arm in chosen if arm.kd_method]
    return found


def _check() -> None:
    letters = [arm.letter for arm in ARMS]
    if len(set(letters)) != len(letters) or not all(len(x) == 1 and x.isupper() for x in letters):
        raise RuntimeError(f"arm letters must be distinct capitals, got {letters}")
    if len({arm.run_name("M") for arm in ARMS}) != len(ARMS) or len(BY_ROLES) != len(ARMS):
        raise RuntimeError("two arms share a run name or a (teacher, init, KD method)")
    for arm in ARMS:
        if arm.teacher not in TEACHER_RUNS or arm.init not in INIT_FLAGS or arm.group not in GROUPS:
            raise RuntimeError(f"arm {arm.letter}: unknown teacher, init or group")
        if (arm.init_run is None) != (arm.init == "scratch"):
            raise RuntimeError(f"arm {arm.letter}: init_run must be given exactly when init is not scratch")
        if any(other not in BY_LETTER for other, _, _ in arm.versus):
            raise RuntimeError(f"arm {arm.letter}: a contrast names an arm that does not exist")
        if arm.total_epochs and not arm.kd_method:
            raise RuntimeError(f"arm {arm.letter}: only an arm with a method of its own trains for the total epochs")


_check()


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(prog="python -m scripts.study.arms", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["runs", "names"])
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=["paper"])
    parser.add_argument("--method", nargs="*", required=True,
                        help="the study's KD methods (names of --kd-method list); none given: the no-KD arms only")
    # Read, not written: the base runs' folder, so not --out-dir.
    old_spellings(parser.add_argument("--runs-dir", "--out", default=".",
                                      help="folder of the base runs (teacher/, student/, sft/, sft0/)"), "--out")
    parser.add_argument("--pretrain-epochs", type=int, default=None, metavar="N",
                        help="--epochs of the base runs (teacher, student, SFT); default: --epochs")
    parser.add_argument("--epochs", type=int, default=40, metavar="N", help="--epochs of each KD run")
    parser.add_argument("--lr-step-size", type=int, default=Schedule.lr_step_size, metavar="N",
                        help="the KD runs' StepLR step (L's is scaled to its total epochs)")
    args = parser.parse_args(argv)
    own = sorted(OWN_METHODS & set(args.method))
    if own:
        raise UserError(f"--method {own[0]} is the no-KD arms' own (N, L: --groups nokd); give the study's KD "
                        "methods only")
    for name, value in (("--epochs", args.epochs), ("--pretrain-epochs", args.pretrain_epochs),
                        ("--lr-step-size", args.lr_step_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} {value} must be at least 1")
    schedule = Schedule(args.pretrain_epochs or args.epochs, args.epochs, args.lr_step_size)
    for name, flags in runs(args.groups, args.method, args.runs_dir, schedule):
        print("\t".join([name, *(flags if args.what == "runs" else [])]))


if __name__ == "__main__":
    run_cli(main)
