"""The project's checkpoint format: building a model from its JSON architecture and loading it back.

A checkpoint is a dict of plain tensors and JSON-able values, loadable with
``torch.load(path, weights_only=True)``:

- ``format``: ``"sftkd-v1"``; ``arch``: ``{"kind": "dccnn", n_cascades, n_convs, channels, residual,
  ref_padding}`` or ``{"kind": "sft", "teacher": {...}, "student": {...}}``; ``model``: the state dict;
  ``run_name`` and ``config`` (the run's flags).
- Training checkpoints (``model.pt``) add ``optimizer``, ``scheduler``, ``epoch``, ``best_val_loss``,
  ``rng`` and, for KD, ``kd_loss`` (the learnable parts of the KD loss, kept apart from the student).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from models.dccnn import DCCNN, DCCNNConfig
from models.sft import SFTNet
from utils import UserError, load_checkpoint

FORMAT = "sftkd-v1"


def arch_of(model: nn.Module) -> dict:
    """JSON architecture of a :class:`DCCNN` or :class:`SFTNet`."""
    return model.arch() if isinstance(model, SFTNet) else model.config.to_dict()


def _config(arch: dict) -> DCCNNConfig:
    return DCCNNConfig(**{k: v for k, v in arch.items() if k != "kind"})


def build_model(arch: dict) -> nn.Module:
    """A freshly initialised model for a checkpoint's ``arch`` dict."""
    if arch.get("kind") == "sft":
        return SFTNet(_config(arch["teacher"]), _config(arch["student"]))
    if arch.get("kind") == "dccnn":
        return DCCNN(_config(arch))
    raise UserError(f"unknown model kind {arch.get('kind')!r} in checkpoint")


def model_payload(model: nn.Module, run_name: str = "", config: dict | None = None) -> dict:
    """The model part of a checkpoint (weights on CPU so the file loads anywhere)."""
    return {"format": FORMAT, "arch": arch_of(model), "run_name": run_name, "config": config or {},
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_model(path: str | Path, what: str = "checkpoint") -> tuple[nn.Module, dict]:
    """Model and checkpoint dict of a file this project wrote (``weights_only=True``).

    ``what`` names the role in errors (e.g. ``"--teacher-checkpoint"``).
    """
    ckpt = load_checkpoint(path, what)
    try:
        model = build_model(ckpt["arch"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{what} {path}: weights do not fit the architecture {ckpt['arch']} "
                        f"({str(exc).splitlines()[0][:120]})") from exc
    return model, ckpt


def load_reconstructor(path: str | Path, what: str = "checkpoint") -> DCCNN:
    """The network that reconstructs images from a checkpoint: a DC-CNN as is, the teacher of an SFT."""
    model, _ = load_model(path, what)
    return model.teacher if isinstance(model, SFTNet) else model


def load_sft(path: str | Path, what: str = "--init-from-sft") -> SFTNet:
    """An :class:`SFTNet` checkpoint; anything else is a clear error."""
    model, ckpt = load_model(path, what)
    if not isinstance(model, SFTNet):
        raise UserError(f"{what} {path} is a {ckpt['arch'].get('n_convs')}-conv DC-CNN checkpoint, not an "
                        "SFT checkpoint; pass best_model.pt of a train_sft.py run")
    return model
