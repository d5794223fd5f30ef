"""Where a KD student comes from: its architecture and the trained cascades S2..S5 it starts from.

train_student_kd.py's ``--init-from-sft`` / ``--init-student`` (or scratch) and ``--student-model`` with the
size flags decide it; a loaded student's own architecture wins over the defaults, and a flag that contradicts
it is an error naming both.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from data.fft import IMAGE_CHANNELS
from models.checkpoints.format import UNCHECKED, describe_arch, load_model
from models.nets.registry import PRESETS, configure, short_name, with_image_channels
from models.nets.sft import SFTNet, student_from_blocks
from utils import UserError


@dataclass(frozen=True)
class Init:
    """Where the student's cascades S2..S5 come from: ``kind`` a models/distill/roles.py init role, ``source`` the
    trained student to copy them from (None from scratch), ``flag`` and ``path`` for messages."""

    kind: str
    source: nn.Module | None = None
    flag: str = ""
    path: str = ""


def size_flags(args) -> dict:
    """The student's size flags, for :func:`models.nets.registry.configure`."""
    return {"--cascades": ("cascades", args.cascades), "--depth": ("depth", args.depth),
            "--width": ("width", args.width)}


def chosen_student(args):
    """The student network ``--student-model`` (default D3C5) with ``--cascades``, ``--depth``, ``--width``, for
    the data's image type (``args.image``, set by models/training.py from the data)."""
    config = with_image_channels(PRESETS[args.student_model or "student"], IMAGE_CHANNELS[args.image])
    return configure(config, size_flags(args))


def _shape(config) -> dict:
    """A config's JSON without the options a loaded student may change (ref_padding, residual)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("ref_padding", "residual")}


def load_sft(path, what: str = "--init-from-sft", image: str | None = None, coils=UNCHECKED) -> SFTNet:
    """The SFT network of a train_sft.py checkpoint; anything else is a clear error (``image`` as in
    models.checkpoints.format.load_model)."""
    model, ckpt = load_model(path, what, image, coils)
    if not isinstance(model, SFTNet):
        raise UserError(f"{what} {path} is a {describe_arch(ckpt['arch'])} checkpoint, but an SFT checkpoint is "
                        "required: pass best_model.pt of a train_sft.py run")
    return model


def load_init(args) -> Init:
    """The ``--init-from-sft`` / ``--init-student`` source of S2..S5, or scratch."""
    if args.init_from_sft is not None:
        sft = load_sft(args.init_from_sft, "--init-from-sft", args.image, getattr(args, "coils", None))
        return Init("sft-blocks", sft.student,
                    "--init-from-sft", str(args.init_from_sft))
    if args.init_student is not None:
        model, ckpt = load_model(args.init_student, "--init-student", args.image, getattr(args, "coils", None))
        expected = chosen_student(args)
        if isinstance(model, SFTNet) or _shape(model.config) != _shape(expected):
            raise UserError(f"--init-student {args.init_student} is a {describe_arch(ckpt['arch'])} checkpoint, but a "
                            f"{short_name(expected)} student is required: pass best_model.pt of train_teacher.py "
                            "--model student (or of a KD student); for an SFT checkpoint use --init-from-sft")
        return Init("student", model, "--init-student", str(args.init_student))
    return Init("scratch")


def student_config(args, init: Init):
    """The student's architecture. From a loaded student (``--init-from-sft``, ``--init-student``): its own (an
    imported public checkpoint brings ``ref_padding`` 5), with ``--ref-padding`` applied when given (a warning:
    the copied cascades then start from other outputs); ``--residual`` against a plain student is an error, and
    so are a ``--student-model`` or size flags that it is not. From scratch: ``--student-model`` (D3C5) with
    the size flags, ``--ref-padding`` (default 0) and ``--residual``."""
    if init.source is None:
        return configure(chosen_student(args), {"--ref-padding": ("ref_padding", args.ref_padding or None),
                                                "--residual": ("residual", args.residual or None),
                                                "--prepared-maps": ("sens_refine",
                                                                    False if args.prepared_maps else None)})
    config = init.source.config
    if args.student_model is not None or any(value is not None for _, value in size_flags(args).values()):
        if _shape(chosen_student(args)) != _shape(config):
            raise UserError(f"--student-model / --cascades / --depth / --width ask for "
                            f"{describe_arch(chosen_student(args).to_dict())} but {init.flag} {init.path} holds "
                            f"{describe_arch(config.to_dict())}; drop them (the loaded student's architecture is "
                            "used)")
    if args.prepared_maps and getattr(config, "sens_refine", False):
        raise UserError(f"--prepared-maps conflicts with {init.flag} {init.path}, whose student refines its maps with "
                        "a sensitivity model (its cascades were trained on those maps); drop --prepared-maps")
    if args.residual and not getattr(config, "residual", False):
        raise UserError(f"--residual conflicts with {init.flag} {init.path}, whose student has no residual "
                        "connections (its weights were trained without them); drop --residual")
    trained_with = getattr(config, "ref_padding", 0)
    if args.ref_padding is not None and args.ref_padding != trained_with:
        config = configure(config, {"--ref-padding": ("ref_padding", args.ref_padding)})
        print(f"warning: --ref-padding {args.ref_padding} overrides the {trained_with} the student of "
              f"{init.flag} {init.path} was trained with; its copied cascades S2..S5 then start from outputs "
              "~1e-2 away from that student's (KD trains on from there)", file=sys.stderr)
    return config


def build_student(args, init: Init) -> nn.Module:
    """The student network: fresh at :func:`student_config`, with ``init``'s cascades S2..S5 copied in."""
    fresh = student_config(args, init).build()
    return student_from_blocks(init.source, fresh) if init.source is not None else fresh
