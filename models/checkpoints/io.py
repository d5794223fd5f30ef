"""Checkpoint file I/O and the pickle policy: writing a checkpoint atomically, and reading one with
``torch.load(weights_only=True)`` only, never unpickling code, with one-line errors that name the file and the
pickled globals that made it refuse.

The pickle policy: torch's ``weights_only`` unpickler is the only reader, for this project's files with torch's
own allow-list (tensors, containers, plain values) and for the public code's files (:func:`load_public`) with
:data:`PUBLIC_CODE_GLOBALS` added, exactly what those files hold. Nothing is ever loaded with
``weights_only=False``. Naming a refused global needs no unpickling either: :func:`pickled_globals` reads the
pickle's opcodes with :mod:`pickletools`, which executes nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import pickletools
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

from data.outputs import atomic_write, check_free_space
from utils import UserError, clean_text

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar


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


# Every global a checkpoint of the public SFT-KD-Recon / KD-MRI code pickles besides what torch allows by default
# (tensors, the state dicts, the optimizer state), each under the name the file spells, and why it is harmless:
# - argparse.Namespace: the flags (``args``); unpickling makes an empty Namespace and fills its __dict__;
# - pathlib.PosixPath: ``exp_dir`` (also inside ``args``); builds a path from strings, touches no file;
# - numpy.dtype and numpy's multiarray.scalar: ``best_dev_loss``, a numpy float64 (``np.mean`` of the losses);
#   they build a dtype from a type code and a scalar from that dtype and its bytes. numpy 1.x files spell the
#   scalar numpy.core.multiarray.scalar, numpy 2 files numpy._core.multiarray.scalar: the same function;
# - the float64 dtype's class (numpy.dtypes.Float64DType from numpy 1.25): the file names no such global, but
#   torch lets a pickle set the state of (BUILD) only allow-listed types, and the dtype's state (byte order,
#   flags) is set that way. Only float64: the public code's loss is never another numpy type.
# The public scripts ran on Linux, so pathlib.WindowsPath is not here. A genuine public file that needs another
# global is refused naming it; add it here after review, never by loading with weights_only=False.
PUBLIC_CODE_GLOBALS = {
    "argparse.Namespace": argparse.Namespace,
    "pathlib.PosixPath": pathlib.PosixPath,
    "numpy.dtype": np.dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.dtypes.Float64DType": type(np.dtype(np.float64)),
}

# Opcodes that name a global: GLOBAL / INST carry "module name" as their argument; STACK_GLOBAL (protocol 4+)
# takes the module and the name from the two values pushed before it.
_NAMED_GLOBAL = {"GLOBAL", "INST"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}


def _globals_in_pickle(stream, found: list[str]) -> None:
    """Append to ``found`` the globals (``module.name``) one pickle in ``stream`` names, read from its opcodes
    (nothing runs), as they come, so those before damage are kept; ``?`` for a STACK_GLOBAL whose parts are not
    plain strings. The stream is left after the pickle's STOP."""
    pushed, memo = [], {}
    for op, arg, _ in pickletools.genops(stream):
        if op.name in _NAMED_GLOBAL:
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            module, name = (pushed[-2:] if len(pushed) >= 2 else [None, None])
            found.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "?")
        if op.name in _MEMO_PUT:
            memo[arg] = pushed[-1] if pushed else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in _MEMO_GET:
            pushed.append(memo.get(arg))
        elif op.stack_after:
            pushed.append(arg if isinstance(arg, str) else None)
        if op.name == "STOP":
            break


def pickled_globals(path: str | Path) -> list[str]:
    """Every global (``module.name``, e.g. ``argparse.Namespace``, ``posix.system``) the pickles in ``path``
    name, in order of first appearance, for all three forms a ``.pt`` file takes: a zip archive (its
    ``data.pkl``), an old-style torch file (a few pickles one after another, then the raw tensor bytes) and a
    bare pickle. Read statically with :mod:`pickletools`: nothing in the file is executed. Stops quietly where
    the bytes stop parsing (the tensor data of an old-style file, or damage)."""
    path = Path(path)
    found: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.endswith(".pkl"):
                        _globals_in_pickle(io.BytesIO(archive.read(member)), found)
        except Exception:  # a damaged archive or pickle: what was read before the damage is still named
            pass
        return list(dict.fromkeys(found))
    with open(path, "rb") as stream:
        # An old-style file holds its magic number, protocol, system info, the object and its storage keys as
        # five pickles; torch unpickles each of them (restricted), so each may hide a payload.
        for _ in range(5):
            try:
                _globals_in_pickle(stream, found)
            except Exception:  # the raw tensor bytes, the end of the file, or damage
                break
    return list(dict.fromkeys(found))


def _torch_allowed() -> set[str]:
    """The globals torch's ``weights_only`` unpickler accepts by default. torch keeps the list private; should
    it move, every global is named: longer refusals, never a wrong one."""
    try:
        from torch import _weights_only_unpickler
        return set(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):
        return set()


def refused_globals(path: str | Path, allowed: dict[str, Any] | None = None) -> list[str]:
    """The globals of ``path`` (see :func:`pickled_globals`) that neither torch's default allow-list nor
    ``allowed`` holds: what makes a ``weights_only`` load refuse the file."""
    ok = _torch_allowed() | set(allowed or {})
    return [name for name in pickled_globals(path) if name not in ok]


def unreadable_reason(path: str | Path) -> str:
    """Why ``torch.load`` cannot read ``path`` when no refused global explains it, judged from its first bytes
    (for error messages)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        return "a damaged zip archive: probably truncated by an interrupted copy or save"
    if head[:1] == b"\x80":
        return "a damaged pickle or old-style torch file: probably truncated by an interrupted copy or save"
    return "neither a zip archive nor a pickle, so not a file written by torch.save"


def _names(names: list[str]) -> str:
    return clean_text(", ".join(names))


def _cannot_load(what: str, path: Path, exc: Exception, advice: str) -> UserError:
    """The refusal for a file that names no refused global: torch's own reason when its ``weights_only``
    reader refused something else (e.g. setting the state of a type off the list), else what the file looks
    like, and ``advice``."""
    with open(path, "rb") as f:
        torch_file = f.read(1) in (b"P", b"\x80")
    reason = str(exc).partition("WeightsUnpickler error:")[2].strip()
    if reason and torch_file:
        return UserError(f"{what} {path} cannot be loaded: torch's weights_only reader refuses it "
                         f"({clean_text(reason.splitlines()[0], 160)}); nothing in it was run")
    return UserError(f"{what} {path} cannot be loaded: it is {unreadable_reason(path)}; {advice}")


def _weights_only_load(path: Path | BinaryIO, allowed: dict[str, Any] | None = None):
    """``torch.load(path, weights_only=True)`` onto the CPU with the extra globals ``allowed`` (name -> object).

    torch's warnings are held back while it reads: a refused file must give one line, not a UserWarning about its
    pickle protocol first. A file that loads gets its warnings shown after all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.serialization.safe_globals([(obj, name) for name, obj in (allowed or {}).items()]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def _malicious(what: str, path: Path, names: list[str]) -> UserError:
    return UserError(f"{what} {path} holds pickled Python objects ({_names(names)}) that no checkpoint of this "
                     "project or of the public SFT-KD-Recon code holds; unpickling them could run any code, so it "
                     "is not loaded: use a checkpoint from a source you trust")


def check_file(path: Path, what: str) -> None:
    """A :class:`UserError` unless ``path`` is a file: a folder (e.g. a run's --exp-dir) names the checkpoint
    files in it, anything else is missing."""
    if path.is_dir():
        inside = [name for name in ("best_model.pt", "model.pt") if (path / name).is_file()]
        hint = f"pass the file, e.g. {path / inside[0]}" if inside else "pass a checkpoint file"
        raise UserError(f"{what} {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist (check the path)")


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint read once: its ``path``, the flag that named it (``what``, for messages), the loaded dict
    (``ckpt``) and the SHA-256 (hex) of the bytes it was loaded from (``digest``, data/fingerprint.file_digest's)."""

    path: Path
    what: str
    ckpt: dict
    digest: str


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> CheckpointFile:
    """:func:`load_checkpoint` and the file's SHA-256 from one read of its bytes."""
    path = Path(path)
    check_file(path, what)
    data = path.read_bytes()
    return CheckpointFile(path, what, load_checkpoint(path, what, data), hashlib.sha256(data).hexdigest())


def load_checkpoint(path: str | Path, what: str = "checkpoint", data: bytes | None = None) -> dict:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors naming the file (and the
    globals that made it refuse); a checkpoint of the public code is sent to scripts/import_checkpoint.py.

    ``what`` names the role in messages, e.g. ``"--teacher-checkpoint"``; ``data``: the file's bytes when they
    were read already (:func:`read_checkpoint`).
    """
    path = Path(path)
    check_file(path, what)
    try:
        ckpt = _weights_only_load(path if data is None else io.BytesIO(data))
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        names = refused_globals(path)
        if names and set(names) <= set(PUBLIC_CODE_GLOBALS):
            raise UserError(f"{what} {path} holds pickled Python objects ({_names(names)}), as checkpoints of the "
                            "public SFT-KD-Recon code do; convert it once with: python -m scripts.import_checkpoint "
                            f"--input {path} --output converted.pt") from exc
        if names:
            raise _malicious(what, path, [n for n in names if n not in PUBLIC_CODE_GLOBALS]) from exc
        raise _cannot_load(what, path, exc, "re-copy it, or pass a best_model.pt / model.pt written by this "
                                            "project") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise UserError(f"{what} {path} is not a checkpoint of this project (no 'model'/'arch' entries); "
                        "convert public-code checkpoints with scripts/import_checkpoint.py")
    return ckpt


def load_public(path: str | Path, what: str = "--input") -> Any:
    """The object a checkpoint of the public code (or any plain torch file) holds, read with
    ``weights_only=True`` and :data:`PUBLIC_CODE_GLOBALS`; a file naming any other global is refused, naming it.
    """
    path = Path(path)
    check_file(path, what)
    try:
        return _weights_only_load(path, PUBLIC_CODE_GLOBALS)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        names = refused_globals(path, PUBLIC_CODE_GLOBALS)
        if names:
            raise UserError(f"{what} {path} holds pickled Python objects ({_names(names)}) that checkpoints of the "
                            "public SFT-KD-Recon code do not hold; unpickling them could run any code, so it is not "
                            "loaded (a genuine public file that needs one: report it, the list is reviewed in "
                            "models/checkpoints/io.py)") from exc
        raise _cannot_load(what, path, exc, "re-copy it") from exc
