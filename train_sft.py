"""Train the student-friendly teacher (SFT): teacher T1..T5 jointly with the student branches S2..S5."""
from __future__ import annotations

from data.fft import IMAGE_CHANNELS
from models.nets.registry import ModelName, capacity, with_image_channels
from models.distill.roles import BASE_MODELS, sft_kind
from models.nets.sft import SFTNet
from models.training.steps import SFTStep
from models.training.flags import add_arch_args, arch_config, common_parser, parse_args, weight_type
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
    add_arch_args(parser, roles=("teacher-", "student-"))
    args = parse_args(parser, argv)
    teacher = arch_config(args.teacher_model, args, "teacher-")
    student = arch_config(args.student_model, args, "student-")
    if teacher.n_cascades != student.n_cascades:
        raise UserError(f"--teacher-model {args.teacher_model} has {teacher.n_cascades} cascades but --student-model "
                        f"{args.student_model} {student.n_cascades}; SFT pairs them one to one: give --cascades")
    kind = sft_kind(args.imitation_weight)
    # The image type (1 or 2 channels) is the data's, known once train() has opened it.
    def step(a):
        teacher_i, student_i = (with_image_channels(config, IMAGE_CHANNELS[a.image]) for config in (teacher, student))
        return SFTStep(SFTNet(teacher_i, student_i), a.student_rec_weight, a.imitation_weight)

    train(args, step, run_name=BASE_MODELS[kind][0],
          roles={"model": kind, "nets": {"teacher": capacity(teacher), "student": capacity(student)}})


if __name__ == "__main__":
    run_cli(main)
