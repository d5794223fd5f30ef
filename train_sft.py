"""Train the student-friendly teacher (SFT): teacher T1..T5 jointly with the student branches S2..S5."""
from __future__ import annotations

from models.dccnn import STUDENT, TEACHER
from models.roles import BASE_MODELS, sft_kind
from models.sft import SFTNet, sft_forward_backward, sft_loss
from models.speed import sft_variant
from models.training import TrainStep, add_arch_args, arch_config, common_parser, parse_args, train
from utils import run_cli, weight_type


class SFTStep(TrainStep):
    """``L_rec^T + w_s * L_rec^S + w_i * L_imit``; validation and the best checkpoint use the teacher."""

    def __init__(self, model: SFTNet, student_rec_weight: float, imitation_weight: float):
        super().__init__()
        self.model = model
        self.student_rec_weight, self.imitation_weight = student_rec_weight, imitation_weight

    def runs_own_backward(self, batch):
        # Branch by branch, each graph is freed right after its backward (see sft_forward_backward).
        return (self.allow_own_backward and self.training
                and sft_variant(batch["target"].device) == "branchwise")

    def forward(self, batch):
        inputs = (batch["zero_filled"], batch["kspace_under"], batch["mask"])
        weights = (self.student_rec_weight, self.imitation_weight)
        if self.runs_own_backward(batch):
            return sft_forward_backward(self.model, *inputs, batch["target"], *weights)
        variant = sft_variant(batch["target"].device)
        teacher_out, branches = self.model(*inputs, batch_branches=variant == "joint-batched")
        return sft_loss(teacher_out, branches, batch["target"], *weights)

    def predict(self, batch):
        teacher_out, branch1 = self.model.teacher_and_branch1(batch["zero_filled"], batch["kspace_under"],
                                                              batch["mask"])
        return {"output": teacher_out, "student_branch1": branch1}

    def hparams(self):
        return {"student_rec_weight": self.student_rec_weight, "imitation_weight": self.imitation_weight}


def main(argv: list[str] | None = None) -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--student-rec-weight", type=weight_type, default=1.0,
                        help="weight w_s of the student branches' reconstruction loss")
    parser.add_argument("--imitation-weight", type=weight_type, default=1.0,
                        help="weight w_i of the branches' L1 to the teacher output (the paper's formula; the "
                             "public code effectively uses ~0)")
    add_arch_args(parser)
    args = parse_args(parser, argv)
    kind = sft_kind(args.imitation_weight)
    train(args, lambda a: SFTStep(SFTNet(arch_config(TEACHER, a), arch_config(STUDENT, a)),
                                  a.student_rec_weight, a.imitation_weight),
          run_name=BASE_MODELS[kind][0], roles={"model": kind})


if __name__ == "__main__":
    run_cli(main)
