"""Train the standard D5C5 teacher or the D3C5 student alone with L1 (the paper's Teacher and Student rows)."""
from __future__ import annotations

from data.fft import IMAGE_CHANNELS
from models.nets.registry import ModelName, capacity, with_image_channels
from models.training.steps import ReconStep
from models.training.flags import add_arch_args, arch_config, common_parser, parse_args
from models.training.loop import train
from utils import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--model", default="teacher", metavar="NAME", action=ModelName,
                        help="teacher = D5C5 (141,765 parameters), student = D3C5 (49,285); 'list' shows every "
                             "registered network")
    add_arch_args(parser)
    args = parse_args(parser, argv)
    config = arch_config(args.model, args)
    # The image type (1 or 2 channels) is the data's, known once train() has opened it.
    train(args, lambda a: ReconStep(with_image_channels(config, IMAGE_CHANNELS[a.image]).build()),
          run_name=args.model, roles={"model": args.model, "nets": {args.model: capacity(config)}})


if __name__ == "__main__":
    run_cli(main)
