"""Where a KD student comes from: its architecture and the trained cascades S2..S5 it starts from.

train_student_kd.py's ``--init-from-sft`` / ``--init-student`` (or scratch) and ``--student-model`` with the
size flags (a :class:`StudentSpec`) decide it; a loaded student's own architecture wins over the defaults, and a
flag that contradicts it is an error naming both.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from data.fft import IMAGE_CHANNELS
from models.checkpoints.format import UNCHECKED, CheckpointFile, describe_arch, load_model, model_from
from models.nets.registry import PRESETS, configure, short_name, with_image_channels
from models.nets.sft import SFTNet, student_from_blocks
from utils import UserError


@dataclass(frozen=True)
class StudentSpec:
    """The student the flags ask for: ``model`` a registered network (None: the loaded student's, else
    ``student``, D3C5), ``cascades`` / ``depth`` / ``width`` (None: its own), ``ref_padding`` (None: as the
    loaded student was trained, else 0), ``residual`` (None: as the loaded student, else off) and
    ``prepared_maps`` (an E2E-VarNet from scratch uses the data's maps unrefined; None: as the loaded student,
    else its sensitivity model)."""

    model: str | None = None
    cascades: int | None = None
    depth: int | None = None
    width: int | None = None
    ref_padding: int | None = None
    residual: bool | None = None
    prepared_maps: bool | None = None

    def size_flags(self) -> dict:
        """The size flags, for :func:`models.nets.registry.configure`."""
        return {"--cascades": ("cascades", self.cascades), "--depth": ("depth", self.depth),
                "--width": ("width", self.width)}

    def chosen(self, image: str):
        """The network ``model`` (default D3C5) with the size flags, for the data's ``image`` type."""
        return configure(with_image_channels(PRESETS[self.model or "student"], IMAGE_CHANNELS[image]),
                         self.size_flags())


@dataclass(frozen=True)
class Init:
    """Where the student's cascades S2..S5 come from: ``kind`` a models/distill/roles.py init role, ``source`` the
    trained student to copy them from (None from scratch), ``flag`` and ``path`` for messages."""

    kind: str
    source: nn.Module | None = None
    flag: str = ""
    path: str = ""


def _shape(config) -> dict:
    """A config's JSON without the options a loaded student may change (ref_padding, residual)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("ref_padding", "residual")}


def load_sft(path, what: str = "--init-from-sft", image: str | None = None) -> SFTNet:
    """The SFT network of a train_sft.py checkpoint; anything else is a clear error (``image`` as in
    models.checkpoints.format.load_model)."""
    model, ckpt = load_model(path, what, image)
    return _sft(model, ckpt, path, what)


def _sft(model: nn.Module, ckpt: dict, path, what: str) -> SFTNet:
    if not isinstance(model, SFTNet):
        raise UserError(f"{what} {path} is a {describe_arch(ckpt['arch'])} checkpoint, but an SFT checkpoint is "
                        "required: pass best_model.pt of a train_sft.py run")
    return model


def sft_blocks(file: CheckpointFile, image: str, flag: str = "--init-from-sft", coils=UNCHECKED) -> Init:
    """S2..S5 from the student side of an SFT checkpoint read once (``flag`` names it in errors; ``coils``: the
    data's coil count, checked as models.checkpoints.format.check_coils does)."""
    model = model_from(file, image, flag, coils)
    return Init("sft-blocks", _sft(model, file.ckpt, file.path, flag).student, flag, str(file.path))


def student_blocks(file: CheckpointFile, spec: StudentSpec, image: str, flag: str = "--init-student",
                   coils=UNCHECKED) -> Init:
    """S2..S5 from a student checkpoint read once (train_teacher.py --model student, or a KD student), which must
    be the student ``spec`` asks for (``coils`` as in :func:`sft_blocks`)."""
    model = model_from(file, image, flag, coils)
    expected = spec.chosen(image)
    if isinstance(model, SFTNet) or _shape(model.config) != _shape(expected):
        raise UserError(f"{flag} {file.path} is a {describe_arch(file.ckpt['arch'])} checkpoint, but a "
                        f"{short_name(expected)} student is required: pass best_model.pt of train_teacher.py "
                        "--model student (or of a KD student); for an SFT checkpoint use --init-from-sft")
    return Init("student", model, flag, str(file.path))


def student_config(spec: StudentSpec, init: Init, image: str):
    """The student's architecture. From a loaded student (``--init-from-sft``, ``--init-student``): its own (an
    imported public checkpoint brings ``ref_padding`` 5), with ``--ref-padding`` applied when given (a warning:
    the copied cascades then start from other outputs); ``--residual`` against a plain student is an error, and
    so are a ``--student-model`` or size flags that it is not. From scratch: ``--student-model`` (D3C5) with
    the size flags, ``--ref-padding`` (default 0) and ``--residual``."""
    if init.source is None:
        return configure(spec.chosen(image), {"--ref-padding": ("ref_padding", spec.ref_padding or None),
                                              "--residual": ("residual", spec.residual or None),
                                              "--prepared-maps": ("sens_refine",
                                                                  False if spec.prepared_maps else None)})
    config = init.source.config
    if spec.model is not None or any(value is not None for _, value in spec.size_flags().values()):
        if _shape(spec.chosen(image)) != _shape(config):
            raise UserError(f"--student-model / --cascades / --depth / --width ask for "
                            f"{describe_arch(spec.chosen(image).to_dict())} but {init.flag} {init.path} holds "
                            f"{describe_arch(config.to_dict())}; drop them (the loaded student's architecture is "
                            "used)")
    if spec.prepared_maps and getattr(config, "sens_refine", False):
        raise UserError(f"--prepared-maps conflicts with {init.flag} {init.path}, whose student refines its maps with "
                        "a sensitivity model (its cascades were trained on those maps); drop --prepared-maps")
    if spec.residual and not getattr(config, "residual", False):
        raise UserError(f"--residual conflicts with {init.flag} {init.path}, whose student has no residual "
                        "connections (its weights were trained without them); drop --residual")
    trained_with = getattr(config, "ref_padding", 0)
    if spec.ref_padding is not None and spec.ref_padding != trained_with:
        config = configure(config, {"--ref-padding": ("ref_padding", spec.ref_padding)})
        print(f"warning: --ref-padding {spec.ref_padding} overrides the {trained_with} the student of "
              f"{init.flag} {init.path} was trained with; its copied cascades S2..S5 then start from outputs "
              "~1e-2 away from that student's (KD trains on from there)", file=sys.stderr)
    return config


def build_student(spec: StudentSpec, init: Init, image: str) -> nn.Module:
    """The student network: fresh at :func:`student_config`, with ``init``'s cascades S2..S5 copied in."""
    fresh = student_config(spec, init, image).build()
    return student_from_blocks(init.source, fresh) if init.source is not None else fresh
