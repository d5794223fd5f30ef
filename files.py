"""Files that are never half-written (atomic JSON, text, checkpoints) and checkpoint loading with one-line errors."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from cli import UserError


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(fileobj)`` so that a crash never leaves a half-written file.

    The data goes to a temporary file in the same directory, is flushed and fsynced, and is then renamed
    over ``path`` (atomic on POSIX): readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"), mode="w")


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV text of ``rows`` (one dict per row); ``columns`` default to the union of the rows' keys in
    first-seen order. Floats keep full precision, so means recomputed from the file match."""
    columns = list(dict.fromkeys(key for row in rows for key in row)) if columns is None else columns
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Atomically ``torch.save`` a dict of tensors and JSON-able values."""
    atomic_write(path, lambda f: torch.save(obj, f))


_PICKLED_GLOBAL = re.compile(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)")


def pickled_global(exc: BaseException) -> str | None:
    """The Python object (e.g. ``"argparse.Namespace"``) that made ``torch.load(weights_only=True)`` refuse a
    file, or None when the failure has another cause (a damaged or foreign file)."""
    match = _PICKLED_GLOBAL.search(str(exc))
    return match.group(1) if match else None


def unreadable_reason(path: str | Path) -> str:
    """Why ``torch.load`` cannot read ``path``, judged from its first bytes (for error messages)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        return "a damaged zip archive: probably truncated by an interrupted copy or save"
    if head[:1] == b"\x80":
        return "an old-style torch file whose pickle data is damaged"
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
        name = pickled_global(exc)
        if name is not None:
            raise UserError(f"{what} {path} holds pickled Python objects ({name}), as checkpoints of the public "
                            "SFT-KD-Recon code do; convert it once with: python scripts/import_checkpoint.py "
                            f"--input {path} --output converted.pt --trust-pickle") from exc
        raise UserError(f"{what} {path} cannot be loaded: it is {unreadable_reason(path)}; re-copy it, or pass "
                        "a best_model.pt / model.pt written by this project") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise UserError(f"{what} {path} is not a checkpoint of this project (no 'model'/'arch' entries); "
                        "convert public-code checkpoints with scripts/import_checkpoint.py")
    return ckpt
