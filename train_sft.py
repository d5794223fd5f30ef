"""Train the student-friendly teacher (SFT): teacher T1..T5 jointly with the student branches S2..S5."""
from __future__ import annotations

from data.fft import IMAGE_CHANNELS
from models.nets.registry import ModelName, capacity, with_image_channels
from models.distill.roles import BASE_RUNS, sft_kind
from models.nets.sft import SFTNet
from models.training.steps import SFTStep
from models.training.config import ResumeRules
from models.training.flags import (add_arch_args, arch_config, arch_keys, common_parser, parse_args, train_config,
                                   weight_type)
from models.training.loop import train
from utils import UserError, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--student-rec-weight", type=weight_type, default=1.0,
                        help="weight w_s of the student branches' reconstruction loss")
    parser.add_argument("--imitation-weight", type=weight_type, default=1.0,
                        help="weight w_i of the branches' L1 to the teacher output (the paper's formula; the "
                             "public code effectively uses ~0)")
    parser.add_argument("--teacher-model", default="teacher", metavar="NAME", action=ModelName,
                        help="the teacher network (train_teacher.py --model list shows them)")
    parser.add_argument("--student-model", default="student", metavar="NAME", action=ModelName,
                        help="the student network, with as many cascades as the teacher")
    sides = ("teacher-", "student-")
    add_arch_args(parser, roles=sides)
    args = parse_args(parser, argv)
    teacher = arch_config(args.teacher_model, vars(args), "teacher-")
    student = arch_config(args.student_model, vars(args), "student-")
    if teacher.n_cascades != student.n_cascades:
        raise UserError(f"--teacher-model {args.teacher_model} has {teacher.n_cascades} cascades but --student-model "
                        f"{args.student_model} {student.n_cascades}; SFT pairs them one to one: give --cascades")
    config = train_config(args, ResumeRules(network_own=("teacher_model", "student_model", *arch_keys(sides))))
    kind = sft_kind(args.imitation_weight)

    def step(image: str, coils: int | None = None) -> SFTStep:
        teacher_i, student_i = (with_image_channels(net, IMAGE_CHANNELS[image]) for net in (teacher, student))
        return SFTStep(SFTNet(teacher_i, student_i), args.student_rec_weight, args.imitation_weight)

    train(config, step, run_name=BASE_RUNS[kind],
          roles={"model": kind, "nets": {"teacher": capacity(teacher), "student": capacity(student)}})


if __name__ == "__main__":
    run_cli(main)
