"""The flags every training script shares (data, optimisation, run) and the architecture flags, with the
argparse types they use; defaults are the paper's."""
from __future__ import annotations

import argparse
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Mapping

from data.masks import acc_type
from models.nets.registry import PRESETS, configure
from models.training.config import DataConfig, OptimConfig, ResumeRules, RunConfig, TrainConfig
from models.training.experiment import MAY_CHANGE_ON_RESUME, flag_names
from models.training.speed import MEMORY_FORMATS
from utils import CliParser, UserError, seed_type


def weight_type(text: str) -> float:
    """A loss weight: a finite number >= 0 (0 turns the term off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0 (0 turns the term off)")
    return value


def decay_type(text: str) -> float:
    """An EMA decay: a number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), e.g. 0.99, got {text}")
    return value


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def common_parser(description: str) -> CliParser:
    """Parser with the flags every training script shares (defaults are the paper's)."""
    p = CliParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", type=Path, required=True,
                   help="folder with train/ and validation/ (acc_{acc}/*.h5) and mask_{acc}.npy")
    g.add_argument("--acc", type=acc_type, nargs="+", default=["4x"],
                   help="acceleration(s); several train one model on the union, e.g. --acc 4x 5x")
    g.add_argument("--mask", type=Path, nargs="+", default=None,
                   help="mask .npy per --acc (default {data-root}/mask_{acc}.npy)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--augment", action="store_true",
                   help="random flips, 90-degree rotations and intensity scaling of the training slices, "
                        "k-space recomputed (seeded by seed, epoch, slice; off in the paper's protocol)")
    g.add_argument("--preload", choices=["auto", "yes", "no"], default="auto",
                   help="hold the data in memory (auto: when it needs < 2 GiB)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive(int), default=150)
    g.add_argument("--batch-size", type=positive(int), default=4, help="per process")
    g.add_argument("--lr", type=positive(float), default=1e-3, help="Adam learning rate")
    g.add_argument("--lr-schedule", choices=["step", "cosine"], default="step",
                   help="step: StepLR (--lr-step-size, --lr-gamma; the paper's); cosine: cosine annealing from --lr "
                        "to 0 over the run's --epochs (over the stage's epochs from a new --feature-epochs stage)")
    g.add_argument("--lr-step-size", type=positive(int), default=40, help="StepLR step (epochs)")
    g.add_argument("--lr-gamma", type=positive(float), default=0.1, help="StepLR factor")
    g.add_argument("--ema", type=decay_type, default=None, metavar="DECAY",
                   help="weight averaging: validate and save as best_model.pt an exponential moving average of "
                        "the weights, updated after every step (avg = DECAY * avg + (1 - DECAY) * weights, e.g. "
                        "0.99); training continues from the raw weights (model.pt keeps both); off by default")
    g.add_argument("--average-last", type=positive(int), default=None, metavar="K",
                   help="weight averaging: validate and save as best_model.pt the mean of the weights at the end "
                        "of the last K epochs (of all epochs so far while fewer); training continues from the "
                        "raw weights; off by default; not with --ema")
    g.add_argument("--scale-lr", action="store_true",
                   help="multiply --lr by the number of processes (linear scaling rule under torchrun)")
    g.add_argument("--seed", type=seed_type, default=42)
    g = p.add_argument_group("run")
    g.add_argument("--exp-dir", type=Path, required=True, help="experiment folder for checkpoints and logs")
    g.add_argument("--resume", action="store_true",
                   help="continue from {exp-dir}/model.pt (a run stopped before its first model.pt starts afresh); "
                        f"every other flag must be as the run's, except {flag_names(MAY_CHANGE_ON_RESUME)}")
    g.add_argument("--overwrite", action="store_true", help="replace an existing experiment in --exp-dir")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--memory-format", choices=["auto", *MEMORY_FORMATS], default="auto",
                   help="tensor layout of the CNNs; auto times both at start-up (a fraction of a second) and "
                        "takes channels_last unless contiguous is 10%% faster; --resume reuses the run's layout")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for the CNNs (DF and a VarNet's sensitivity maps stay float32): faster on "
                        "GPUs and on CPUs with AMX/AVX-512 bf16, numerically not identical to float32")
    g.add_argument("--save-every-iters", type=positive(int), default=None,
                   help="also write model.pt every N iterations inside an epoch")
    g.add_argument("--log-every", type=positive(int), default=10, help="iterations between loss logs")
    g.add_argument("--image-every", type=positive(int), default=5, help="epochs between image grids")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars (for log files)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.mask is not None and len(args.mask) != len(args.acc):
        raise UserError(f"--mask has {len(args.mask)} file(s) but --acc has {len(args.acc)}; give one per "
                        "acceleration, in the same order")
    repeated = sorted({acc for acc in args.acc if args.acc.count(acc) > 1})
    if repeated:
        raise UserError(f"--acc lists {', '.join(repeated)} more than once, which would train on every slice twice; "
                        "give each acceleration once")
    if args.ema is not None and args.average_last is not None:
        raise UserError("--ema and --average-last are two kinds of weight averaging; give one of them")
    if args.num_workers < 0:
        raise UserError("--num-workers must be >= 0")
    return args


def train_config(args: argparse.Namespace, rules: ResumeRules = ResumeRules(),
                 checkpoints: Mapping[str, str] | None = None) -> TrainConfig:
    """The :class:`~models.training.config.TrainConfig` of parsed flags (:func:`parse_args`): the common flags
    typed, every other flag of the script a setting under its argparse name, in the parser's order.
    ``rules`` and ``checkpoints`` (setting -> SHA-256 of the checkpoint file it names): the script's own."""
    values = vars(args)
    common = {}
    for kind in (DataConfig, OptimConfig, RunConfig):
        names = [f.name for f in fields(kind)]
        common[kind] = kind(**{name: values[name] for name in names})
        values = {key: value for key, value in values.items() if key not in names}
    data = common[DataConfig]
    data = replace(data, acc=tuple(data.acc), mask=tuple(data.mask) if data.mask else None)
    return TrainConfig(data, common[OptimConfig], common[RunConfig], values, dict(checkpoints or {}), rules)


# The flags (and resolved sizes) that make two runs of one role comparable: what evaluate.py records per model as
# its ``recipe``, so that scripts/study/map.py can refuse cells trained in different settings. Seeds, paths and speed
# flags are left out: they differ between runs that are meant to be compared.
RECIPE_KEYS = ("epochs", "batch_size", "lr", "lr_schedule", "lr_step_size", "lr_gamma", "augment", "ema",
               "average_last", "kd_weight", "feature_epochs", "student_rec_weight", "imitation_weight",
               "train_slices", "validation_slices")


def recipe(config: dict | None) -> dict:
    """The :data:`RECIPE_KEYS` a run's ``config`` (config.json, a checkpoint's ``config``) holds; empty for
    checkpoints that record none (imported ones among them)."""
    if not isinstance(config, dict):
        return {}
    return {key: config[key] for key in RECIPE_KEYS if key in config}


def add_arch_args(parser: argparse.ArgumentParser, roles: tuple[str, ...] = ("",)) -> None:
    """Architecture flags of the scripts that build fresh networks: ``--ref-padding``, ``--residual``,
    ``--prepared-maps`` and ``--cascades`` for every network, ``--{role}depth`` and ``--{role}width`` per role
    (``""``, or ``"teacher-"`` and ``"student-"`` for SFT's two networks). Each applies to the families that have it
    (models/nets/registry.py); None keeps the named network's own."""
    g = parser.add_argument_group("architecture")
    g.add_argument("--ref-padding", type=int, default=0, choices=[0, 5],
                   help="zero-pad each block input by 5 pixels and crop before DF, as the public code does")
    g.add_argument("--residual", action="store_true", help="add the block input to its output (not in the paper)")
    g.add_argument("--prepared-maps", action="store_true",
                   help="E2E-VarNet: use the data's prepared coil maps as they are instead of refining them from the "
                        "ACS lines with the sensitivity model")
    g.add_argument("--cascades", type=positive(int), default=None, metavar="N",
                   help="number of cascades; None: the network's own (5 for the paper's)")
    for role in roles:
        whose = f"the {role[:-1]}'s" if role else "the network's"
        g.add_argument(f"--{role}depth", type=positive(int), default=None, metavar="N",
                       help=f"{whose} depth: convs per cascade of a DC-CNN, levels of a U-Net; None: its own")
        g.add_argument(f"--{role}width", type=positive(int), default=None, metavar="N",
                       help=f"{whose} width: channels of the hidden layers; None: its own")


def arch_keys(roles: tuple[str, ...] = ("",)) -> tuple[str, ...]:
    """The settings :func:`add_arch_args` adds for ``roles``, where None means the network's own."""
    return ("cascades", *(f"{role.replace('-', '_')}{size}" for role in roles for size in ("depth", "width")),
            "ref_padding", "residual")


def arch_config(name: str, settings: Mapping[str, Any], role: str = ""):
    """The config of the registered network ``name`` with the flags of :func:`add_arch_args` applied
    (``settings``: their values by argparse name, e.g. :attr:`TrainConfig.settings`)."""
    attr = role.replace("-", "_")
    return configure(PRESETS[name], {
        "--cascades": ("cascades", settings["cascades"]),
        f"--{role}depth": ("depth", settings[f"{attr}depth"]),
        f"--{role}width": ("width", settings[f"{attr}width"]),
        # Off is every family's default, so only a value that turns something on must fit the family.
        "--ref-padding": ("ref_padding", settings["ref_padding"] or None),
        "--residual": ("residual", settings["residual"] or None),
        "--prepared-maps": ("sens_refine", False if settings.get("prepared_maps") else None),
    })
