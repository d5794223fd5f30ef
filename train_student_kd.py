"""Distil a frozen teacher into the D3C5 student: ``|x_S - x|_1 + kd_weight * L_KD``.

The teacher (``--teacher-checkpoint``) and the student's initialisation (scratch, ``--init-from-sft`` or
``--init-student``) are two independent choices:

- Std-KD: a standard teacher (train_teacher.py) and a student from scratch;
- SFT-KD-Recon: the SFT teacher (train_sft.py) and ``--init-from-sft`` with the same checkpoint;
- controls: a standard teacher with ``--init-from-sft`` (SFT's blocks without SFT's teacher) or with
  ``--init-student`` (cascades of a student trained alone).

The run records both choices as its roles (models/roles.py) and is named after them (``stdkd-sftinit-at``).
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
import sys
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from models.checkpoint import describe_arch, load_model, load_reconstructor, load_sft
from models.dccnn import DCCNN, STUDENT, DCCNNConfig
from models.kd_losses import KD_METHODS, KDLoss, KDMethodError, build_kd_loss, describe_methods
from models.roles import kd_run_name, teacher_kind
from models.sft import SFTNet, student_from_blocks
from models.training import Frozen, TrainStep, common_parser, parse_args, train
from utils import UserError, load_checkpoint, run_cli, weight_type


class KDStep(TrainStep):
    """Student reconstruction L1 plus the weighted KD term against a frozen teacher."""

    def __init__(self, student: DCCNN, teacher: DCCNN, kd_loss: KDLoss, kd_weight: float,
                 feature_epochs: int = 0, cache_teacher: bool = False):
        super().__init__()
        self.model = student
        self.kd_loss = kd_loss  # registered: its learnable parts train with the student, saved under "extra"
        self.kd_weight = kd_weight
        self.feature_epochs = feature_epochs
        self.feature_stage = False
        self.frozen_teacher = Frozen(teacher)
        # (file, slice, acc) -> (1, H, W) float32 teacher output on the training device (H x W x 4 bytes a
        # slice: no host copy per step on a GPU); None: no cache.
        self.teacher_cache: dict | None = {} if cache_teacher else None
        # The second stage leaves a learnable KD loss (vid, ab, ft) without gradients.
        self.find_unused_parameters = bool(feature_epochs) and kd_loss.has_parameters

    @property
    def teacher(self) -> DCCNN:
        return self.frozen_teacher.module

    def start_epoch(self, epoch: int) -> None:
        self.feature_stage = epoch < self.feature_epochs

    def begins_stage(self, epoch: int) -> bool:
        # The public code's second script (train_kd.py) starts from the first stage's best student with a new
        # optimiser, so the second stage here does too.
        return bool(self.feature_epochs) and epoch == self.feature_epochs

    def forward(self, batch):
        inputs = (batch["zero_filled"], batch["kspace_under"], batch["mask"])
        if self.feature_epochs and not self.feature_stage:
            # Second stage of the public schedule (train_kd.sh, without --imitation_required): L1 alone.
            loss_rec = F.l1_loss(self.model(*inputs), batch["target"])
            return loss_rec, {"reconstruction": loss_rec.detach(), "kd": torch.zeros_like(loss_rec.detach())}
        features = self.kd_loss.needs_features
        if features:
            # no_grad rather than inference_mode: inference tensors would have to be cloned before the KD
            # losses (which build autograd graphs on the student side) may use them.
            with torch.no_grad():
                teacher_out, teacher_feats = self.teacher(*inputs, return_features=True,
                                                          keep_hidden=self.kd_loss.keep_teacher_hidden())
        else:
            teacher_out, teacher_feats = self.teacher_output(batch, inputs), None
        student_out = self.model(*inputs, return_features=features)
        student_out, student_feats = student_out if features else (student_out, None)
        loss_rec = F.l1_loss(student_out, batch["target"])
        loss_kd = self.kd_loss(student_out, student_feats, teacher_out, teacher_feats)
        loss = self.kd_weight * loss_kd if self.feature_stage else loss_rec + self.kd_weight * loss_kd
        return loss, {"reconstruction": loss_rec.detach(), "kd": loss_kd.detach()}

    def teacher_output(self, batch: dict, inputs: tuple) -> torch.Tensor:
        """The frozen teacher's (B, 1, H, W) float32 reconstruction, from the cache when every sample of the
        batch is in it. The teacher and the data never change, so after the first epoch an output-only
        method (imitation) needs no teacher forward at all."""
        if self.teacher_cache is not None:
            keys = list(zip(batch["fname"], batch["slice"].tolist(), batch["acc"]))
            if all(key in self.teacher_cache for key in keys):
                cached = torch.stack([self.teacher_cache[key] for key in keys])
                return cached.to(inputs[0].device, non_blocking=True)
        with torch.no_grad():
            teacher_out = self.teacher(*inputs)
        if self.teacher_cache is not None:
            self.teacher_cache.update(zip(keys, teacher_out.detach().float()))
        return teacher_out

    def predict(self, batch):
        return {"output": self.model(batch["zero_filled"], batch["kspace_under"], batch["mask"])}

    def hparams(self):
        return {"kd_weight": self.kd_weight, "feature_epochs": self.feature_epochs}


@dataclass(frozen=True)
class Init:
    """Where the student's cascades S2..S5 come from: ``kind`` a models/roles.py init role, ``source`` the
    trained student to copy them from (None from scratch), ``flag`` and ``path`` for messages."""

    kind: str
    source: DCCNN | None = None
    flag: str = ""
    path: str = ""


def load_init(args) -> Init:
    """The ``--init-from-sft`` / ``--init-student`` source of S2..S5, or scratch."""
    if args.init_from_sft is not None:
        return Init("sft-blocks", load_sft(args.init_from_sft, "--init-from-sft").student, "--init-from-sft",
                    str(args.init_from_sft))
    if args.init_student is not None:
        model, ckpt = load_model(args.init_student, "--init-student")
        arch = ckpt["arch"]
        shape = {key: arch.get(key) for key in ("n_cascades", "n_convs", "channels")}
        if isinstance(model, SFTNet) or shape != {key: getattr(STUDENT, key) for key in shape}:
            raise UserError(f"--init-student {args.init_student} is a {describe_arch(arch)} checkpoint, but a D3C5 "
                            "student is required: pass best_model.pt of train_teacher.py --model student (or of a "
                            "KD student); for an SFT checkpoint use --init-from-sft")
        return Init("student", model, "--init-student", str(args.init_student))
    return Init("scratch")


def student_config(args, init: Init) -> DCCNNConfig:
    """The student's architecture. From a loaded student (``--init-from-sft``, ``--init-student``): its own (an
    imported public checkpoint brings ``ref_padding`` 5), with ``--ref-padding`` applied when given (a warning:
    the copied cascades then start from other outputs); ``--residual`` against a plain student is an error.
    From scratch: D3C5 with ``--ref-padding`` (default 0) and ``--residual``."""
    if init.source is None:
        return replace(STUDENT, ref_padding=args.ref_padding or 0, residual=bool(args.residual))
    config = init.source.config
    if args.residual and not config.residual:
        raise UserError(f"--residual conflicts with {init.flag} {init.path}, whose student has no residual "
                        "connections (its weights were trained without them); drop --residual")
    if args.ref_padding is not None and args.ref_padding != config.ref_padding:
        print(f"warning: --ref-padding {args.ref_padding} overrides the {config.ref_padding} the student of "
              f"{init.flag} {init.path} was trained with; its copied cascades S2..S5 then start from outputs "
              "~1e-2 away from that student's (KD trains on from there)", file=sys.stderr)
        config = replace(config, ref_padding=args.ref_padding)
    return config


def teacher_role(path) -> str:
    """The ``teacher`` role of ``--teacher-checkpoint`` (models/roles.py), from what its checkpoint records."""
    ckpt = load_checkpoint(path, "--teacher-checkpoint")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), dict) else {}
    return teacher_kind(config.get("roles"), arch.get("kind") == "sft", config.get("imitation_weight"))


def build_step(args) -> KDStep:
    # Loading builds networks, which draws from the RNG: on a forked RNG, so that the fresh S1 and KD
    # connectors below are the same draw in every arm of one seed, whatever teacher and init it loads.
    with torch.random.fork_rng(devices=[]):
        # A standard teacher as is, the teacher of an SFT checkpoint (detected from its architecture).
        teacher = load_reconstructor(args.teacher_checkpoint, "--teacher-checkpoint")
        init = load_init(args)
    fresh = DCCNN(student_config(args, init))
    student = student_from_blocks(init.source, fresh) if init.source is not None else fresh
    try:
        kd_loss = build_kd_loss(args.kd_method, student.config, teacher.config)
    except KDMethodError as exc:
        raise UserError(f"--kd-method {exc}") from exc
    weight = kd_loss.default_weight if args.kd_weight is None else args.kd_weight
    return KDStep(student, teacher, kd_loss, weight, args.feature_epochs, args.cache_teacher)


class _KDMethod(argparse.Action):
    """``--kd-method NAME``; ``--kd-method list`` prints the registry and exits before the required flags
    are checked."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value == "list":
            print(describe_methods())
            parser.exit(0)
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
                             "less time per later epoch; not with --augment)")
    g = parser.add_argument_group("architecture (default: the --init-from-sft / --init-student student's)")
    g.add_argument("--ref-padding", type=int, default=None, choices=[0, 5],
                   help="zero-pad each block input by 5 pixels and crop before DF, as the public code does "
                        "(default: as the loaded student was trained, else 0)")
    g.add_argument("--residual", action="store_true", default=None,
                   help="add the block input to its output (not in the paper; default: as the loaded "
                        "student, else off)")
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
    if args.kd_method not in KD_METHODS:
        raise UserError(f"unknown --kd-method {args.kd_method!r}; choose one of: {', '.join(KD_METHODS)} "
                        "(--kd-method list describes them)")
    init = "sft-blocks" if args.init_from_sft else "student" if args.init_student else "scratch"
    roles = {"model": "kd", "teacher": teacher_role(args.teacher_checkpoint), "init": init,
             "kd_method": args.kd_method}
    train(args, build_step, run_name=kd_run_name(roles), roles=roles)


if __name__ == "__main__":
    run_cli(main)
