"""Distil a frozen teacher into the D3C5 student: ``|x_S - x|_1 + kd_weight * L_KD``.

The teacher (``--teacher-checkpoint``) and the student's initialisation (scratch, ``--init-from-sft`` or
``--init-student``) are two independent choices:

- Std-KD: a standard teacher (train_teacher.py) and a student from scratch;
- SFT-KD-Recon: the SFT teacher (train_sft.py) and ``--init-from-sft`` with the same checkpoint;
- controls: a standard teacher with ``--init-from-sft`` (SFT's blocks without SFT's teacher) or with
  ``--init-student`` (cascades of a student trained alone).

The run records both choices as its roles (models/distill/roles.py) and is named after them (``stdkd-sftinit-at``).
Every fresh draw (S1, the KD loss's connectors) comes from the seeded RNG before anything is loaded, so all
arms of one seed start S1 from the same weights.

``--feature-epochs N`` runs the public code's two stages in one run: N epochs of ``kd_weight * L_KD`` alone
(its ``train_feature*.py``), then the remaining epochs of L1 alone (its ``train_kd.sh``, which leaves
``--imitation_required`` off) from the first stage's best student, with a fresh Adam, StepLR and best
validation loss. The public code picks that student by the validation KD loss; here it is the validation L1
of the student, as for every run. ``best_model.pt`` is the second stage's best.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from models.checkpoints.format import UNCHECKED, CheckpointFile, model_from, read_checkpoint
from models.distill.losses import KD_METHODS, KDMethodError, build_kd_loss, describe_methods
from models.distill.roles import kd_run_name, teacher_kind
from models.distill.student_init import Init, StudentSpec, build_student, sft_blocks, student_blocks
from models.nets.registry import ModelName, capacity, reconstructor
from models.training.config import ResumeRules
from models.training.flags import common_parser, parse_args, positive, train_config, weight_type
from models.training.loop import train
from models.training.steps import KDConfig, KDStep
from utils import UserError, run_cli

# The settings whose None means the student's own (its size, padding): --resume compares them through the
# network they build.
STUDENT_KEYS = ("student_model", "cascades", "depth", "width", "ref_padding", "residual")


@dataclass(frozen=True)
class KDRun:
    """What a KD run distils, each checkpoint file read once: the teacher (``--teacher-checkpoint``), where the
    student's S2..S5 come from (``init_kind`` a models/distill/roles.py init role; ``init`` the file of
    ``--init-from-sft`` / ``--init-student``, None from scratch), the student asked for and the KD settings."""

    teacher: CheckpointFile
    init_kind: str
    init: CheckpointFile | None
    student: StudentSpec
    kd: KDConfig

    @property
    def teacher_role(self) -> str:
        """The ``teacher`` role (models/distill/roles.py), from what the teacher checkpoint records."""
        ckpt = self.teacher.ckpt
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), dict) else {}
        return teacher_kind(config.get("roles"), arch.get("kind") == "sft", config.get("imitation_weight"))

    def digests(self) -> dict[str, str]:
        """The SHA-256 of each checkpoint read, by setting (config.json's ``content.checkpoints``)."""
        init = {"sft-blocks": "init_from_sft", "student": "init_student"}.get(self.init_kind)
        return {"teacher_checkpoint": self.teacher.digest, **({init: self.init.digest} if init else {})}


def kd_run(args: argparse.Namespace) -> KDRun:
    """The :class:`KDRun` of parsed flags; a file given to two flags (SFT-KD-Recon's teacher and init) is read
    once."""
    read: dict[Path, CheckpointFile] = {}

    def checkpoint(path, flag: str) -> CheckpointFile:
        key = Path(path).resolve()
        if key not in read:
            read[key] = read_checkpoint(path, flag)
        return read[key]

    teacher = checkpoint(args.teacher_checkpoint, "--teacher-checkpoint")
    if args.init_from_sft is not None:
        init_kind, init = "sft-blocks", checkpoint(args.init_from_sft, "--init-from-sft")
    elif args.init_student is not None:
        init_kind, init = "student", checkpoint(args.init_student, "--init-student")
    else:
        init_kind, init = "scratch", None
    student = StudentSpec(args.student_model, args.cascades, args.depth, args.width, args.ref_padding, args.residual,
                          args.prepared_maps)
    kd = KDConfig(args.kd_method, args.kd_weight, args.feature_epochs, args.cache_teacher)
    return KDRun(teacher, init_kind, init, student, kd)


def build_step(run: KDRun, image: str = "magnitude", roles: dict | None = None,
               coils: int | None | str = UNCHECKED) -> KDStep:
    """The KD step for the data's ``image`` type (and ``coils``: the data's coil count, None for single-coil data,
    which the checkpoints must have been trained on); records the sizes of its teacher (an SFT checkpoint's teacher
    side) and student as ``roles["nets"]`` when given the run's roles (the loop writes them into config.json
    after building the step)."""
    # Building networks draws from the RNG: on a forked RNG, so that the fresh S1 and KD connectors below are the
    # same draw in every arm of one seed, whatever teacher and init it loads.
    with torch.random.fork_rng(devices=[]):
        # A standard teacher as is, the teacher of an SFT checkpoint (detected from its architecture).
        teacher = reconstructor(model_from(run.teacher, image, "--teacher-checkpoint", coils))
        if run.init_kind == "sft-blocks":
            init = sft_blocks(run.init, image, coils=coils)
        elif run.init_kind == "student":
            init = student_blocks(run.init, run.student, image, coils=coils)
        else:
            init = Init("scratch")
    student = build_student(run.student, init, image)
    if roles is not None:
        roles["nets"] = {"teacher": capacity(teacher.config), "student": capacity(student.config)}
    try:
        kd_loss = build_kd_loss(run.kd.method, student.config, teacher.config)
    except KDMethodError as exc:
        raise UserError(f"--kd-method {exc}") from exc
    weight = kd_loss.default_weight if run.kd.weight is None else run.kd.weight
    return KDStep(student, teacher, kd_loss, weight, run.kd.feature_epochs, run.kd.cache_teacher)


class _KDMethod(argparse.Action):
    """``--kd-method NAME``, checked against the registry here, where it is parsed; ``--kd-method list`` prints
    the registry and exits before the required flags are checked."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value == "list":
            print(describe_methods())
            parser.exit(0)
        if value not in KD_METHODS:
            raise UserError(f"unknown --kd-method {value!r}; choose one of: {', '.join(KD_METHODS)} "
                            "(--kd-method list describes them)")
        setattr(namespace, self.dest, value)


def build_parser():
    parser = common_parser(__doc__)
    parser.add_argument("--teacher-checkpoint", required=True,
                        help="best_model.pt of train_teacher.py --model teacher (Std-KD) or of train_sft.py")
    init = parser.add_mutually_exclusive_group()
    init.add_argument("--init-from-sft", default=None, metavar="CKPT",
                      help="copy student cascades S2..S5 from this SFT checkpoint (SFT-KD-Recon; with a standard "
                           "teacher: the control 'SFT blocks without SFT's teacher')")
    init.add_argument("--init-student", default=None, metavar="CKPT",
                      help="copy S2..S5 from a D3C5 student checkpoint (train_teacher.py --model student): the "
                           "control 'ordinary pre-training'; S1 fresh, as with --init-from-sft")
    parser.add_argument("--kd-method", default="at", metavar="NAME", action=_KDMethod,
                        help=f"one of {', '.join(KD_METHODS)}; 'list' describes them")
    parser.add_argument("--kd-weight", type=weight_type, default=None,
                        help="lambda of the KD term (default: the method's own, see --kd-method list)")
    parser.add_argument("--feature-epochs", type=int, default=0, metavar="N",
                        help="the public code's two-stage schedule: N epochs of the KD loss alone, then the rest "
                             "of --epochs with L1 alone, from the first stage's best student (by validation L1) "
                             "with a fresh optimiser and schedule (0: the paper's single stage, L1 + kd_weight * "
                             "L_KD throughout)")
    parser.add_argument("--cache-teacher", action="store_true",
                        help="keep the teacher's outputs in memory after the first epoch (output-only KD: "
                             "imitation, none); ~H*W*4 bytes per slice, about a third "
                             "less time per later epoch; not with --augment; may change on --resume)")
    g = parser.add_argument_group("architecture (default: the --init-from-sft / --init-student student's)")
    g.add_argument("--student-model", default=None, metavar="NAME", action=ModelName,
                   help="the student network (train_teacher.py --model list shows them); None: the loaded "
                        "student's, else student (D3C5)")
    g.add_argument("--cascades", type=positive(int), default=None, metavar="N",
                   help="the student's number of cascades; None: its own")
    g.add_argument("--depth", type=positive(int), default=None, metavar="N",
                   help="the student's depth: convs per cascade of a DC-CNN, levels of a U-Net; None: its own")
    g.add_argument("--width", type=positive(int), default=None, metavar="N",
                   help="the student's width: channels of the hidden layers; None: its own")
    g.add_argument("--ref-padding", type=int, default=None, choices=[0, 5],
                   help="zero-pad each block input by 5 pixels and crop before DF, as the public code does "
                        "(default: as the loaded student was trained, else 0)")
    g.add_argument("--residual", action="store_true", default=None,
                   help="add the block input to its output (not in the paper; default: as the loaded "
                        "student, else off)")
    g.add_argument("--prepared-maps", action="store_true", default=None,
                   help="E2E-VarNet student from scratch: use the data's prepared coil maps as they are instead of "
                        "a sensitivity model (default: as the loaded student, else the sensitivity model)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(), argv)
    if args.feature_epochs < 0 or args.feature_epochs >= args.epochs:
        raise UserError(f"--feature-epochs {args.feature_epochs} must be in [0, --epochs) = [0, {args.epochs})")
    if args.feature_epochs and args.kd_method == "none":
        raise UserError("--feature-epochs trains the KD loss alone first, but --kd-method none has no KD loss; "
                        "drop --feature-epochs or choose a KD method")
    if args.cache_teacher and args.augment:
        # The cache is keyed by (file, slice, acc): with poses redrawn every epoch it would hand back the
        # teacher's output for another flip or rotation of the slice.
        raise UserError("--cache-teacher keeps one teacher output per slice, but --augment changes the slice "
                        "every epoch; drop one of the two flags")
    run = kd_run(args)
    roles = {"model": "kd", "teacher": run.teacher_role, "init": run.init_kind, "kd_method": run.kd.method}
    # --kd-weight None is the method's own weight: --resume compares that, so giving it explicitly is no change.
    rules = ResumeRules(may_change=("cache_teacher",), network_own=STUDENT_KEYS,
                        resolve={"kd_weight": lambda values: getattr(KD_METHODS.get(values.get("kd_method")),
                                                                     "default_weight", None)})
    config = train_config(args, rules, run.digests())
    train(config, lambda image, coils=None: build_step(run, image, roles, coils), run_name=kd_run_name(roles),
          roles=roles)


if __name__ == "__main__":
    run_cli(main)
