"""Train the standard D5C5 teacher or the D3C5 student alone with L1 (the paper's Teacher and Student rows)."""
from __future__ import annotations

from data.fft import IMAGE_CHANNELS
from models.nets.registry import ModelName, capacity, with_image_channels
from models.training.steps import ReconStep
from models.training.config import ResumeRules
from models.training.flags import add_arch_args, arch_config, arch_keys, common_parser, parse_args, train_config
from models.training.loop import train
from utils import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--model", default="teacher", metavar="NAME", action=ModelName,
                        help="teacher = D5C5 (141,765 parameters), student = D3C5 (49,285); 'list' shows every "
                             "registered network")
    add_arch_args(parser)
    config = train_config(parse_args(parser, argv), ResumeRules(network_own=("model", *arch_keys())))
    model = config.settings["model"]
    net = arch_config(model, config.settings)
    train(config, lambda image, coils=None: ReconStep(with_image_channels(net, IMAGE_CHANNELS[image]).build()),
          run_name=model, roles={"model": model, "nets": {model: capacity(net)}})


if __name__ == "__main__":
    run_cli(main)
