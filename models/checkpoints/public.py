"""Import checkpoints of the public SFT-KD-Recon / KD-MRI code into this project's checkpoint format.

The public code saves ``torch.save({"epoch", "args": argparse.Namespace, "model": state_dict, "optimizer",
"best_dev_loss", "exp_dir"})``. The pickled Namespace, path and numpy loss are read with
``torch.load(weights_only=True)`` and an allow-list of exactly those globals (models/checkpoints/io.py); a
file that names any other global is refused, naming it, and nothing is ever unpickled with
``weights_only=False``.

State-dict layouts recognised (an optional ``module.`` prefix from DataParallel is stripped):

- ``tcascade{i}.conv{j}`` only: SFT-KD-Recon ``DCTeacherNet`` -> DC-CNN;
- ``scascade{i}.conv{j}`` only: SFT-KD-Recon ``DCStudentNet`` -> DC-CNN;
- both: SFT-KD-Recon ``DCTeacherNetSFTN`` -> SFT network (teacher + student);
- ``cascade{i}.conv{j}``: KD-MRI ``DCTeacherNet`` / ``DCStudentNet`` -> DC-CNN (the number of convolutions
  tells teacher from student).

Padding: SFT-KD-Recon zero-pads every block input by 5 pixels and crops the CNN output back before DF, so
its networks import with ``ref_padding=5``; KD-MRI runs its blocks on the unpadded image, so ``cascade{i}``
networks import with ``ref_padding=0``. Either way the imported network computes what the original did.
"""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from models.checkpoints.format import FORMAT, build_model, model_payload
from models.checkpoints.io import check_file, load_public, save_checkpoint
from models.nets.dccnn import DCCNNConfig, count_parameters
from utils import UserError, refuse_to_overwrite

_KEY = re.compile(r"^(tcascade|scascade|cascade)(\d+)\.conv(\d+)\.(weight|bias)$")

# Layout name -> the public network that saves it.
LAYOUTS = {
    "tcascade": "SFT-KD-Recon DCTeacherNet",
    "scascade": "SFT-KD-Recon DCStudentNet",
    "tcascade+scascade": "SFT-KD-Recon DCTeacherNetSFTN",
    "cascade": "KD-MRI DCTeacherNet/DCStudentNet",
}
# Padding the public code applies around each block input, per key prefix.
PUBLIC_PADDING = {"tcascade": 5, "scascade": 5, "cascade": 0}


def strip_module_prefix(state_dict: dict) -> dict:
    """Keys without the leading ``module.`` (one or more) that ``nn.DataParallel`` / DDP add."""
    stripped = {}
    for key, value in state_dict.items():
        name = str(key)
        while name.startswith("module."):
            name = name[len("module."):]
        stripped[name] = value
    return stripped


def _layout_error(source: str, keys: list[str]) -> UserError:
    examples = ", ".join(repr(k) for k in keys[:3])
    return UserError(
        f"{source} matches no known layout: expected keys tcascade{{i}}.conv{{j}}.weight|bias (SFT-KD-Recon "
        f"teacher), scascade{{i}}.conv{{j}}... (student), both (SFT network) or cascade{{i}}.conv{{j}}... "
        f"(KD-MRI), but found {examples}; pass a checkpoint of one of those networks")


def _group(state_dict: dict, source: str) -> dict[str, dict[int, dict[int, dict[str, torch.Tensor]]]]:
    """prefix -> cascade number -> conv number -> {"weight", "bias"}; anything else is a layout error."""
    groups: dict[str, dict[int, dict[int, dict[str, torch.Tensor]]]] = {}
    unknown = []
    for key, value in state_dict.items():
        match = _KEY.match(key)
        if not match or not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        prefix, cascade, conv, kind = match.groups()
        groups.setdefault(prefix, {}).setdefault(int(cascade), {}).setdefault(int(conv), {})[kind] = value
    if unknown or not groups:
        raise _layout_error(source, unknown or ["(no entries)"])
    if "cascade" in groups and len(groups) > 1:
        raise _layout_error(source, [k for k in state_dict if k.startswith("cascade")])
    return groups


def _config(prefix: str, cascades: dict[int, dict[int, dict[str, torch.Tensor]]], source: str,
            ref_padding: int) -> DCCNNConfig:
    """Architecture of one ``{prefix}{i}.conv{j}`` family, after checking every shape it implies."""
    n_cascades = len(cascades)
    if sorted(cascades) != list(range(1, n_cascades + 1)):
        raise UserError(f"{source}: {prefix} numbers are {sorted(cascades)}, expected 1..{n_cascades} "
                        "without gaps; the file is not a complete network")
    n_convs = len(cascades[1])
    if n_convs < 2:
        raise UserError(f"{source}: {prefix} blocks have {n_convs} convolution; a DC-CNN block needs at least 2")
    first_weight = cascades[1].get(1, {}).get("weight")
    if first_weight is None or first_weight.dim() != 4:
        raise UserError(f"{source}: {prefix}1.conv1.weight is missing or not a 4-D convolution weight")
    channels = int(first_weight.shape[0])
    widths = [1] + [channels] * (n_convs - 1) + [1]
    for cascade, convs in cascades.items():
        if sorted(convs) != list(range(1, n_convs + 1)):
            raise UserError(f"{source}: {prefix}{cascade} has convolutions {sorted(convs)} but {prefix}1 has "
                            f"1..{n_convs}; every cascade must have the same number of convolutions")
        for conv, params in convs.items():
            expected = {"weight": (widths[conv], widths[conv - 1], 3, 3), "bias": (widths[conv],)}
            for kind, shape in expected.items():
                name = f"{prefix}{cascade}.conv{conv}.{kind}"
                if kind not in params:
                    raise UserError(f"{source}: {name} is missing; the file is not a complete network")
                if tuple(params[kind].shape) != shape:
                    raise UserError(f"{source}: {name} has shape {tuple(params[kind].shape)}, expected {shape} "
                                    f"for a {n_convs}-conv block with {channels} channels")
    return DCCNNConfig(n_cascades=n_cascades, n_convs=n_convs, channels=channels, residual=False,
                       ref_padding=ref_padding)


def _renamed(cascades: dict[int, dict[int, dict[str, torch.Tensor]]], our_prefix: str) -> dict:
    """``{our_prefix}cascades.{i-1}.conv{j}.weight|bias`` -> float32 CPU tensor."""
    return {f"{our_prefix}cascades.{cascade - 1}.conv{conv}.{kind}": tensor.detach().cpu().to(torch.float32)
            for cascade, convs in sorted(cascades.items())
            for conv, params in sorted(convs.items())
            for kind, tensor in params.items()}


def detect_layout(state_dict: dict, source: str = "state dict") -> str:
    """Name of the layout (a key of :data:`LAYOUTS`) of a public-code state dict."""
    return "+".join(sorted(_group(strip_module_prefix(state_dict), source), reverse=True))


def convert_state_dict(state_dict: dict, ref_padding: int | None = None,
                       source: str = "state dict") -> tuple[dict, dict]:
    """Map a public-code state dict to ``(arch, model_state)`` of this project.

    state_dict: ``name -> tensor`` with one of the layouts of :data:`LAYOUTS` (``module.`` prefixes are
    stripped); conv weights (C_out, C_in, 3, 3) float, biases (C_out,) float. ``ref_padding`` overrides the
    padding the source network used (default: 5 for SFT-KD-Recon, 0 for KD-MRI, see the module docstring).
    ``source`` names the input in errors.

    Returns the JSON architecture (``DCCNNConfig.to_dict()`` or ``{"kind": "sft", "teacher", "student"}``)
    and the state dict under our names (``cascades.{i-1}.conv{j}.*``, prefixed ``teacher.`` / ``student.``
    for SFT), float32 on the CPU. Unknown keys or inconsistent shapes raise :class:`UserError`.
    """
    groups = _group(strip_module_prefix(state_dict), source)
    if ref_padding is not None and ref_padding < 0:
        raise UserError(f"--ref-padding {ref_padding} is negative; use 0 or more (5 for SFT-KD-Recon)")
    configs = {prefix: _config(prefix, cascades, source,
                               PUBLIC_PADDING[prefix] if ref_padding is None else ref_padding)
               for prefix, cascades in groups.items()}
    if len(groups) == 1:
        prefix = next(iter(groups))
        return configs[prefix].to_dict(), _renamed(groups[prefix], "")
    teacher, student = configs["tcascade"], configs["scascade"]
    if teacher.n_cascades != student.n_cascades:
        raise UserError(f"{source}: the SFT network has {teacher.n_cascades} teacher cascades but "
                        f"{student.n_cascades} student cascades; SFT needs as many of each")
    arch = {"kind": "sft", "teacher": teacher.to_dict(), "student": student.to_dict()}
    return arch, {**_renamed(groups["tcascade"], "teacher."), **_renamed(groups["scascade"], "student.")}


def _jsonable(value: Any) -> tuple[bool, Any]:
    """``(True, value as JSON)`` for plain values (paths become strings, NumPy/torch scalars numbers);
    ``(False, None)`` for anything JSON cannot hold, non-finite floats included."""
    if isinstance(value, PurePath):
        value = str(value)
    elif isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        value = value.item()
    elif isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False, None
    return True, value


def _source_args(args: Any) -> dict:
    """The JSON-able entries of the public code's ``argparse.Namespace`` (or dict) of flags."""
    if args is None:
        return {}
    try:
        items = vars(args) if not isinstance(args, dict) else args
    except TypeError:
        return {}
    kept = {}
    for key, value in items.items():
        ok, converted = _jsonable(value)
        if ok:
            kept[str(key)] = converted
    return kept


def import_checkpoint(src: str | Path, dst: str | Path, *, overwrite: bool = False,
                      ref_padding: int | None = None) -> dict:
    """Convert the public-code checkpoint ``src`` into this project's format at ``dst``.

    ``src`` is a full checkpoint dict (with ``"model"``) or a bare state dict, read by
    :func:`models.checkpoints.io.load_public` (``weights_only=True`` plus the public code's globals).
    ``dst`` is written atomically and is never replaced unless ``overwrite``. ``ref_padding``: see
    :func:`convert_state_dict`.

    Returns a summary ``{"layout", "arch", "parameters", "epoch", "best_dev_loss"}``.
    """
    src, dst = Path(src), Path(dst)
    check_file(src, "--input")
    if dst.is_dir():
        raise UserError(f"--output {dst} is a directory; give a file path such as {dst / 'imported.pt'}")
    refuse_to_overwrite(dst, overwrite, "path", flag="--output")
    loaded = load_public(src, "--input")
    if not isinstance(loaded, dict):
        raise UserError(f"--input {src} holds a {type(loaded).__name__}, not a checkpoint dict or state dict")
    if loaded.get("format") == FORMAT:
        raise UserError(f"--input {src} is already a checkpoint of this project; use it directly")
    full = isinstance(loaded.get("model"), dict)
    state_dict = loaded["model"] if full else loaded
    arch, model_state = convert_state_dict(state_dict, ref_padding, source=f"--input {src}")
    model = build_model(arch)
    model.load_state_dict(model_state)
    meta = {key: _jsonable(loaded.get(key))[1] if full else None for key in ("epoch", "best_dev_loss")}
    layout = detect_layout(state_dict)
    config = {"imported_from": str(src), "source_layout": LAYOUTS[layout], **meta,
              "source_args": _source_args(loaded.get("args")) if full else {}}
    save_checkpoint(model_payload(model, run_name=src.stem, config=config), dst)
    return {"layout": LAYOUTS[layout], "arch": arch, "parameters": count_parameters(model), **meta}
