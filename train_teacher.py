"""Train the standard D5C5 teacher or the D3C5 student alone with L1 (the paper's Teacher and Student rows)."""
from __future__ import annotations

from torch.nn import functional as F

from models.dccnn import DCCNN, STUDENT, TEACHER
from models.training import TrainStep, add_arch_args, arch_config, common_parser, parse_args, train
from utils import run_cli


class ReconStep(TrainStep):
    """Plain supervised reconstruction: ``|x_rec - x|_1``."""

    def __init__(self, model: DCCNN):
        super().__init__()
        self.model = model

    def forward(self, batch):
        out = self.model(batch["zero_filled"], batch["kspace_under"], batch["mask"])
        loss = F.l1_loss(out, batch["target"])
        return loss, {"l1": loss.detach()}

    def predict(self, batch):
        return {"output": self.model(batch["zero_filled"], batch["kspace_under"], batch["mask"])}


def main(argv: list[str] | None = None) -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--model", choices=["teacher", "student"], default="teacher",
                        help="teacher = D5C5 (141,765 parameters), student = D3C5 (49,285)")
    add_arch_args(parser)
    args = parse_args(parser, argv)
    base = TEACHER if args.model == "teacher" else STUDENT
    train(args, lambda a: ReconStep(DCCNN(arch_config(base, a))), run_name=args.model, roles={"model": args.model})


if __name__ == "__main__":
    run_cli(main)
