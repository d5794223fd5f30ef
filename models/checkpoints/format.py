"""The project's checkpoint format: building a model from its JSON architecture and loading it back.

A checkpoint is a dict of plain tensors and JSON-able values, loadable with
``torch.load(path, weights_only=True)``:

- ``format``: ``"sftkd-v1"`` (checked on load: another version is a clear error); ``arch``: the network's
  config as JSON, ``{"kind": ..., its fields}`` (models/nets/registry.py builds it back; a network made of
  networks holds each part's arch dict under the part's field); ``model``: the state dict; ``run_name`` and
  ``config`` (the run's flags and set-up, with the data's ``image`` type, ``"magnitude"`` or ``"complex"``,
  and ``kspace``, where its k-space came from, e.g. ``"synthetic from magnitude"``). A network for complex
  images has ``image_channels`` 2 in its ``arch``; magnitude networks leave it out (it reads as 1).
- ``best_model.pt`` adds ``epoch`` and ``val_metrics``.
- ``model.pt`` (training state for ``--resume``) adds ``extra`` (other trainable parts of the step, e.g. a KD
  loss's regressors, kept apart from the student), ``optimizer``, ``scheduler``, ``epoch``,
  ``batch_in_epoch``, ``global_step``, ``best_val_loss``, ``rng_per_rank`` and ``world_size``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data.fft import IMAGE_CHANNELS, IMAGE_TYPES
from models.nets.registry import (FAMILIES, build_network, describe_arch, image_channels_of, out_of_bounds,
                                  reconstructor)
from models.checkpoints.io import check_file, load_checkpoint
from utils import UserError, first_line

FORMAT = "sftkd-v1"


def check_format(ckpt: dict, path, what: str) -> None:
    """A :class:`UserError` when ``ckpt`` declares a format other than :data:`FORMAT` (newer, older or
    foreign); files without the entry are read as the current format."""
    found = ckpt.get("format", FORMAT)
    if found == FORMAT:
        return
    prefix = FORMAT.rsplit("v", 1)[0] + "v"
    version = str(found)[len(prefix):] if str(found).startswith(prefix) else ""
    if version.isdigit():
        age = "a newer" if int(version) > int(FORMAT.rsplit("v", 1)[1]) else "an older"
        raise UserError(f"{what} {path} was written by {age} version of this project (format {found}; this "
                        f"code reads {FORMAT}); use the code that wrote it, or retrain")
    raise UserError(f"{what} {path} has format {found!r}, not this project's {FORMAT!r}; convert public-code "
                    "checkpoints with scripts/import_checkpoint.py")


def arch_of(model: nn.Module) -> dict:
    """JSON architecture of a registered network (models/nets/registry.py)."""
    return model.config.to_dict()


def build_model(arch: dict) -> nn.Module:
    """A freshly initialised model for a checkpoint's ``arch`` dict."""
    kind = arch.get("kind") if isinstance(arch, dict) else None
    if kind not in FAMILIES:
        raise UserError(f"unknown model kind {kind!r} in checkpoint")
    return build_network(arch)


def model_payload(model: nn.Module, run_name: str = "", config: dict | None = None) -> dict:
    """The model part of a checkpoint (weights on CPU so the file loads anywhere)."""
    return {"format": FORMAT, "arch": arch_of(model), "run_name": run_name, "config": config or {},
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def _misfit(model: nn.Module, state) -> str:
    """What differs between ``model``'s state dict and ``state``: missing, unexpected and reshaped weights."""
    if not isinstance(state, dict):
        return f"its 'model' entry is a {type(state).__name__}, not a state dict"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    parts = [f"{len(keys)} {label}, e.g. {keys[0]}" for keys, label in
             ((missing, "weight(s) missing"), (unexpected, "unexpected weight(s)"), (reshaped, "of another shape"))
             if keys]
    return "; ".join(parts)


def _check_declared_size(arch: dict, state, path, what: str) -> None:
    """Refuse an ``arch`` entry whose sizes are out of its family's bounds, or whose weights differ in number from
    those the file's ``model`` holds by much (counted on the meta device, which allocates nothing). Run on the
    file's meta-device copy, before any tensor is materialised (see load_checkpoint's ``inspect``)."""
    problem = out_of_bounds(arch)
    if problem:
        raise UserError(f"{what} {path}: its 'arch' entry has {problem}; the file was edited or damaged")
    with torch.device("meta"):
        declared = sum(p.numel() for p in build_model(arch).state_dict().values())
    stored = sum(v.numel() for v in state.values() if torch.is_tensor(v)) if isinstance(state, dict) else 0
    if declared > 4 * stored + 10 ** 6 or stored > 4 * declared + 10 ** 6:
        raise UserError(f"{what} {path}: its 'arch' entry declares {declared:,} weights but the file holds "
                        f"{stored:,}; the file was edited or damaged")


def _inspect(path, what: str):
    """load_checkpoint's ``inspect`` for :func:`load_model`: the architecture's bounds and its weight count
    against the file's, on the meta-device copy; anything unusual is left to the checks after loading."""
    def check(meta) -> None:
        arch = meta.get("arch") if isinstance(meta, dict) else None
        if isinstance(arch, dict) and arch.get("kind") in FAMILIES:
            try:
                _check_declared_size(arch, meta.get("model"), path, what)
            except (TypeError, KeyError, ValueError):
                pass  # an arch that cannot build: load_model says so
    return check


def check_image(arch: dict, image: str, path, what: str) -> None:
    """A :class:`UserError` when the network of ``arch`` takes another image type than the data's ``image``
    (``"magnitude"``: 1 channel, ``"complex"``: 2; data/fft.py)."""
    have, want = image_channels_of(arch), IMAGE_CHANNELS[image]
    if have != want:
        raise UserError(f"{what} {path} is a {have}-channel network for {IMAGE_TYPES.get(have, 'unknown')} images, "
                        f"but the data hold {image} images ({want} channel(s)); pass a checkpoint trained on "
                        f"{image} images, or the data of its own type")


# load_model's ``coils`` when the caller has no data to check the checkpoint against.
UNCHECKED = "unchecked"


def check_coils(ckpt: dict, coils: int | None, path, what: str) -> None:
    """A :class:`UserError` when a checkpoint trained on multi-coil data meets single-coil data or the reverse.
    ``coils``: the data's coil count, None for single-coil data; the checkpoint's is its config's ``coils``
    (absent: single-coil). Networks do not depend on the number of coils, so two coil counts may meet."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    trained = config.get("coils")
    if (trained is None) != (coils is None):
        have = f"multi-coil data ({trained} coils, maps: {config.get('maps')})" if trained else "single-coil data"
        want = f"multi-coil data ({coils} coils)" if coils else "single-coil data"
        raise UserError(f"{what} {path} was trained on {have}, but the data are {want}; pass a checkpoint "
                        "trained on data of the same kind, or prepare the data with(out) --coils")


def load_model(path: str | Path, what: str = "checkpoint", image: str | None = None,
               coils: int | None | str = UNCHECKED) -> tuple[nn.Module, dict]:
    """Model and checkpoint dict of a file this project wrote (``weights_only=True``).

    ``what`` names the role in errors (e.g. ``"--teacher-checkpoint"``); ``image`` (``"magnitude"`` or
    ``"complex"``), when given, is the data's image type, which the network must take (:func:`check_image`);
    ``coils``, when given, the data's coil count (None: single-coil), checked by :func:`check_coils`.
    """
    ckpt = load_checkpoint(path, what, inspect=_inspect(path, what))
    return _model_of(ckpt, path, what, image, coils), ckpt


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint read once: its ``path``, the flag that named it (``what``, for messages), the loaded dict
    (``ckpt``) and the SHA-256 (hex) of the bytes it was loaded from (``digest``, data/fingerprint.file_digest's)."""

    path: Path
    what: str
    ckpt: dict
    digest: str


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> CheckpointFile:
    """The checkpoint as :func:`load_model` loads it, and the file's SHA-256, from one read of its bytes."""
    path = Path(path)
    check_file(path, what)
    data = path.read_bytes()
    ckpt = load_checkpoint(path, what, inspect=_inspect(path, what), data=data)
    return CheckpointFile(path, what, ckpt, hashlib.sha256(data).hexdigest())


def model_from(file: CheckpointFile, image: str | None = None, what: str | None = None,
               coils: int | None | str = UNCHECKED) -> nn.Module:
    """The model of a checkpoint already read (:func:`read_checkpoint`), checked as :func:`load_model` checks
    it; ``what`` overrides the flag named in errors (one file may serve two flags)."""
    return _model_of(file.ckpt, file.path, what or file.what, image, coils)


def _model_of(ckpt: dict, path: str | Path, what: str, image: str | None,
              coils: int | None | str = UNCHECKED) -> nn.Module:
    check_format(ckpt, path, what)
    arch = ckpt["arch"]
    kind = arch.get("kind") if isinstance(arch, dict) else None
    if kind not in FAMILIES:
        raise UserError(f"{what} {path}: unknown model kind {kind!r} in its 'arch' entry (expected "
                        f"{' or '.join(map(repr, FAMILIES))}); pass a checkpoint written by this project's "
                        "training scripts")
    if image is not None:
        check_image(arch, image, path, what)
    if coils != UNCHECKED:
        check_coils(ckpt, coils, path, what)
    try:
        _check_declared_size(arch, ckpt["model"], path, what)
        model = build_model(arch)
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError(f"{what} {path}: its 'arch' entry {arch} cannot build a network "
                        f"({first_line(exc)}); the file was edited or damaged") from exc
    try:
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError, AttributeError) as exc:
        raise UserError(f"{what} {path}: its weights do not fit the architecture it declares, "
                        f"{describe_arch(arch)} ({_misfit(model, ckpt['model']) or first_line(exc)}); "
                        "the file was edited or mixes two networks: use the unmodified best_model.pt / model.pt "
                        "of a run") from exc
    bad = next((key for key, value in ckpt["model"].items()
                if value.is_floating_point() and not torch.isfinite(value).all()), None)
    if bad is not None:
        raise UserError(f"{what} {path} holds NaN or Inf weights (e.g. {bad}): the run that wrote it diverged; use "
                        "an earlier checkpoint of it, or retrain with a lower --lr")
    return model


def load_reconstructor(path: str | Path, what: str = "checkpoint", image: str | None = None,
                       coils: int | None | str = UNCHECKED) -> nn.Module:
    """:func:`models.nets.registry.reconstructor` of a checkpoint's network (``image`` and ``coils`` as in
    :func:`load_model`)."""
    return reconstructor(load_model(path, what, image, coils)[0])
