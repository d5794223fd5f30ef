"""The network registry: every architecture a checkpoint can hold, by its ``arch["kind"]``, and the named
networks the training scripts offer (``--model list``).

A family is one module defining ``FAMILY`` (a :class:`models.nets.family.Family`; that module's docstring says what
its networks must provide). To add one, write the module and add one line to ``FAMILY_MODULES``.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import replace

import torch
from torch import nn

from models.nets.family import Family
from utils import UserError, check_fits_memory

# One line per family: the module that defines its FAMILY.
FAMILY_MODULES = (
    "models.nets.dccnn",
    "models.nets.sft",
    "models.nets.cascaded_unet",
    "models.nets.varnet",
)


def _families() -> dict[str, Family]:
    families = {}
    for module in FAMILY_MODULES:
        family = importlib.import_module(module).FAMILY
        if family.kind in families:
            raise RuntimeError(f"{module} registers network kind {family.kind!r} a second time")
        families[family.kind] = family
    return families


def _presets(families: dict[str, Family]) -> dict:
    presets = {}
    for family in families.values():
        for name, config in family.presets.items():
            if name in presets:
                raise RuntimeError(f"network name {name!r} is offered by two families")
            presets[name] = config
    return presets


FAMILIES: dict[str, Family] = _families()
# --model NAME -> its config, over all families.
PRESETS: dict = _presets(FAMILIES)


def config_from_arch(arch: dict):
    """The config of a checkpoint's ``arch`` dict (nested networks too). An unknown kind is a KeyError,
    wrong fields a TypeError, bad values (e.g. 1 conv) a ValueError."""
    family = FAMILIES[arch["kind"]]
    fields = {key: config_from_arch(value) if key in family.parts else value
              for key, value in arch.items() if key != "kind"}
    return family.config(**fields)


def out_of_bounds(arch) -> str | None:
    """What in a checkpoint's ``arch`` dict (nested networks too) breaks its family's :attr:`Family.bounds`,
    e.g. ``"n_convs 10000, outside 1..100"``; None when every size is in bounds. Reads a damaged dict safely."""
    family = FAMILIES.get(arch.get("kind")) if isinstance(arch, dict) else None
    if family is None:
        return f"kind {arch.get('kind') if isinstance(arch, dict) else arch!r:.40}, not a registered network"
    for part in family.parts:
        problem = out_of_bounds(arch.get(part))
        if problem:
            return f"{part}: {problem}"
    for key, limit in family.bounds.items():
        value = arch.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            return f"{key} {value!r:.40}, outside 1..{limit}"
    return None


def reconstructor(model: nn.Module) -> nn.Module:
    """The network that reconstructs images: a network as is, or the part its family names (an SFT network's
    teacher)."""
    family = FAMILIES[model.config.kind]
    return family.reconstructor(model) if family.reconstructor else model
def with_image_channels(config, channels: int):
    """``config`` for images of ``channels`` (1 magnitude, 2 complex; data/fft.py), its parts (SFT's teacher
    and student) too."""
    family = FAMILIES[config.kind]
    if family.parts:
        return replace(config, **{part: with_image_channels(getattr(config, part), channels) for part in family.parts})
    return replace(config, image_channels=channels)


def image_channels_of(arch: dict) -> int:
    """The image channels of a checkpoint's ``arch`` dict: its own entry (1 where it has none, as every arch
    written before complex images), or for a network of networks (SFT) its first part's."""
    family = FAMILIES.get(arch.get("kind"))
    if family is not None and family.parts:
        return image_channels_of(arch.get(family.parts[0]) or {})
    return arch.get("image_channels", 1)


def build_network(arch: dict) -> nn.Module:
    """A freshly initialised network for a checkpoint's ``arch`` dict."""
    return config_from_arch(arch).build()


def describe_arch(arch, detail: bool = False) -> str:
    """A short name for a checkpoint's ``arch`` dict, e.g. ``"DC-CNN D3C5 (5 cascades x 3 convs)"`` or
    ``"SFT network (teacher D5C5 (...), student D3C5 (...))"``; ``detail`` adds each family's details. Works
    on damaged dicts too (it names errors)."""
    family = FAMILIES.get(arch.get("kind")) if isinstance(arch, dict) else None
    if family is None:
        return repr(arch)
    if family.parts:
        parts = [f"{part} {_describe_part(arch.get(part), detail)}" for part in family.parts]
        return f"{family.title} ({', '.join(parts)})"
    return f"{family.title} {family.describe(arch, detail)}"


def _describe_part(arch, detail: bool) -> str:
    family = FAMILIES.get(arch.get("kind")) if isinstance(arch, dict) else None
    return family.describe(arch, detail) if family is not None and family.describe else repr(arch)


CAPACITY = ("cascades", "depth", "width")


def capacity(config) -> dict:
    """The size of a network as the architecture flags name it, e.g. ``{"cascades": 5, "depth": 3, "width": 32}``
    for D3C5 (the entries its family has): what a run records of each network in its roles."""
    family = FAMILIES[config.kind]
    return {generic: getattr(config, family.flags[generic]) for generic in CAPACITY if generic in family.flags}


def short_name(config) -> str:
    """The name of a network without its details, e.g. ``"D3C5"``."""
    return FAMILIES[config.kind].describe(config.to_dict(), False).split(" (")[0]


def describe_networks() -> str:
    """One line per ``--model`` name: the network and its parameter count (for ``--model list``)."""
    rows = []
    for name, config in PRESETS.items():
        # The meta device allocates nothing and draws no random numbers.
        with torch.device("meta"):
            n_params = sum(p.numel() for p in config.build().parameters())
        rows.append((name, describe_arch(config.to_dict()), f"{n_params:,}"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join(f"{name:<{widths[0]}}  {network:<{widths[1]}}  {count:>{widths[2]}} parameters"
                     for name, network, count in rows)


def configure(config, flags: dict[str, tuple[str, object]]):
    """``config`` with the architecture flags applied. flags: flag as the user spelt it (``--teacher-depth``)
    -> (generic name as in :attr:`Family.flags`, value); None values leave the config's own. A flag the
    family does not have, or a value that cannot build its network, is a :class:`UserError`."""
    family = FAMILIES[config.kind]
    changes = {}
    for spelling, (generic, value) in flags.items():
        if value is None:
            continue
        if generic not in family.flags:
            raise UserError(f"{spelling} does not apply to {family.title} networks; drop it "
                            f"(they take: {', '.join(family.flags) or 'no architecture flags'})")
        changes[family.flags[generic]] = value
    configured = replace(config, **changes)
    set_flags = [(spelling, value) for spelling, (_, value) in flags.items() if value is not None]
    try:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in configured.build().parameters())
    except ValueError as exc:
        raise UserError(f"{' / '.join(spelling for spelling, _ in set_flags)}: {exc}") from exc
    given = " / ".join(f"{spelling} {value}" if value is not True else spelling
                       for spelling, value in set_flags) or family.title
    # Training holds each weight four times (itself, its gradient, Adam's two moments), in float32.
    check_fits_memory(16 * parameters, f"{given}: a network of {parameters:,} parameters",
                      "choose smaller --width / --depth / --cascades")
    problem = out_of_bounds(configured.to_dict())
    if problem:
        raise UserError(f"{given}: {problem} (far beyond any real network); choose a smaller size")
    return configured


class ModelName(argparse.Action):
    """``--model NAME`` (or ``--teacher-model`` ...); ``list`` prints the registered networks and exits before
    the required flags are checked."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value == "list":
            print(describe_networks())
            parser.exit(0)
        if value not in PRESETS:
            parser.error(f"argument {option_string}: unknown network {value!r}; choose one of: "
                         f"{', '.join(PRESETS)} ({option_string} list describes them)")
        setattr(namespace, self.dest, value)
