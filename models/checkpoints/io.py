"""Checkpoint file I/O and the pickle policy: writing a checkpoint atomically, reading one with
``torch.load(weights_only=True)`` and one-line errors naming the file, and which pickled globals the public
SFT-KD-Recon code's checkpoints hold."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from utils import UserError, atomic_write, check_free_space, clean_text


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Atomically ``torch.save`` a dict of tensors and JSON-able values; a full disk is an ``OSError``
    (ENOSPC) naming ``path``, and the file that was there stays as it was."""
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except RuntimeError:
        # torch's zip writer turns a failed write into "unexpected pos ..." with no errno: ask the disk.
        nbytes = sum(v.nbytes for v in _tensors(obj))
        check_free_space(path, nbytes)
        raise


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def pickled_globals(path: str | Path) -> list[str]:
    """The Python objects (e.g. ``["argparse.Namespace"]``) that keep ``torch.load(weights_only=True)`` from
    reading ``path``; empty when the file holds none or is not a zip checkpoint (a damaged or foreign file).

    Asks torch's own scanner rather than reading its error message, whose wording changes between versions.
    """
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a readable zip checkpoint: the caller reports it as damaged or foreign
        return []


# What the public SFT-KD-Recon / KD-MRI checkpoints pickle besides tensors: the argparse.Namespace of their
# flags, the pathlib path of their experiment folder and a numpy float loss. Only for these is converting with
# --trust-pickle sound advice; any other global (posix.system, builtins.eval, ...) is what a malicious file holds.
PUBLIC_CODE_GLOBALS = frozenset({"argparse.Namespace", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
                                 "numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"})


def public_code_pickle(names: list[str]) -> bool:
    """Whether the pickled globals ``names`` (see :func:`pickled_globals`) are all ones the public code saves."""
    return bool(names) and all(name in PUBLIC_CODE_GLOBALS or name.startswith("numpy.dtypes.") for name in names)


def unreadable_reason(path: str | Path) -> str:
    """Why ``torch.load`` cannot read ``path``, judged from its first bytes (for error messages)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        return "a damaged zip archive: probably truncated by an interrupted copy or save"
    if head[:1] == b"\x80":
        return ("an old-style torch file (saved before torch 1.6 or without the zip format) that weights_only "
                "loading refuses: it holds pickled Python objects or is damaged; if it comes from a trusted "
                "source, convert it with scripts/import_checkpoint.py --trust-pickle")
    return "neither a zip archive nor a pickle, so not a file written by torch.save"


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors naming the file.

    ``what`` names the role in messages, e.g. ``"--teacher-checkpoint"``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist (check the path)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        names = pickled_globals(path)
        if public_code_pickle(names):
            raise UserError(f"{what} {path} holds pickled Python objects ({', '.join(names)}), as checkpoints of the "
                            "public SFT-KD-Recon code do; convert it once with: python -m scripts.import_checkpoint "
                            f"--input {path} --output converted.pt --trust-pickle") from exc
        if names:
            raise UserError(f"{what} {path} holds pickled Python objects ({clean_text(', '.join(names))}) that no "
                            "checkpoint of this project or of the public SFT-KD-Recon code holds; unpickling them "
                            "could run any code, so it is not loaded: use a checkpoint from a source you "
                            "trust") from exc
        raise UserError(f"{what} {path} cannot be loaded: it is {unreadable_reason(path)}; re-copy it, or pass "
                        "a best_model.pt / model.pt written by this project") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise UserError(f"{what} {path} is not a checkpoint of this project (no 'model'/'arch' entries); "
                        "convert public-code checkpoints with scripts/import_checkpoint.py")
    return ckpt
