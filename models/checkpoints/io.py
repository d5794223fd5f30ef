"""Checkpoint file I/O and the pickle policy: writing a checkpoint atomically, and reading one with
``torch.load(weights_only=True)`` only, never unpickling code, with one-line errors that name the file and the
pickled globals that made it refuse. :func:`load_checkpoint` is the one loader of this project's checkpoints.

The run's record: a training run writes its ``model.pt`` and ``best_model.pt`` with ``record=True``, which keeps
their SHA-256 in ``checksums.json`` beside them (:data:`RECORD`); :func:`load_checkpoint` compares a file with
the record of its folder, when there is one, before reading it, so --resume and the two-stage switch read only
what the run wrote. The record is updated in two steps around each write (the old and the new digest, then the
new one alone), so a run killed in between finds its file accepted either way.

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
import json
import pathlib
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from data.outputs import atomic_write, check_free_space, write_json
from utils import UserError, clean_text, format_bytes, not_a_file

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar


RECORD = "checksums.json"


def save_checkpoint(obj: dict, path: str | Path, record: bool = False) -> None:
    """Atomically ``torch.save`` a dict of tensors and JSON-able values; a full disk is an ``OSError``
    (ENOSPC) naming ``path``, and the file that was there stays as it was. With ``record`` (a training run's own
    files), its SHA-256 goes into the folder's :data:`RECORD`."""
    path = Path(path)
    # Serialised in memory first: the digest is known before the file exists, and a full disk fails the plain
    # write (ENOSPC) rather than inside torch's zip writer ("unexpected pos", no errno).
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    if path.parent.is_dir():  # else the write names what is missing
        check_free_space(path, len(data))
    if record:
        _record(path, digest, keep_previous=True)
    atomic_write(path, lambda f: f.write(data))
    if record:
        _record(path, digest, keep_previous=False)


def _read_record(folder: Path) -> dict[str, list[str]] | None:
    """``{file name: accepted SHA-256 digests}`` of ``folder``'s :data:`RECORD`; None when there is none."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not all(isinstance(v, list) for v in record.values()):
            raise ValueError("not a {file: [digests]} object")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({clean_text(str(exc), 80)}), so the run's checkpoints cannot be "
                        "verified; restore it, or delete it to load them unverified") from exc
    return record


def _record(path: Path, digest: str, keep_previous: bool) -> None:
    """Record ``digest`` for ``path`` in its folder's :data:`RECORD`, beside the previous one while the file is
    being replaced."""
    record = _read_record(path.parent) or {}
    previous = record.get(path.name, [])[-1:] if keep_previous else []
    record[path.name] = [d for d in previous if d != digest] + [digest]
    write_json(path.parent / RECORD, record)


def check_recorded(path: Path, data: bytes | memoryview, what: str) -> None:
    """A :class:`UserError` when the :data:`RECORD` beside ``path`` lists it with other contents than ``data``
    (the file's bytes): a checkpoint of a run replaced or edited since the run wrote it."""
    record = _read_record(path.parent)
    accepted = record.get(path.name) if record else None
    if accepted and hashlib.sha256(data).hexdigest() not in accepted:
        raise UserError(f"{what} {path} is not the file this run wrote (its SHA-256 differs from the one in "
                        f"{path.parent / RECORD}): it was replaced or edited since; restore the run's own file, or "
                        "start the run again")


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


def _weights_only_load(path: Path | io.BytesIO, allowed: dict[str, Any] | None = None, device: str = "cpu"):
    """``torch.load(path, weights_only=True)`` onto ``device`` (``"meta"``: shapes and storage sizes, no data)
    with the extra globals ``allowed`` (name -> object); ``path`` may be the file's bytes already read.

    torch's warnings are held back while it reads: a refused file must give one line, not a UserWarning about its
    pickle protocol first. A file that loads gets its warnings shown after all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.serialization.safe_globals([(obj, name) for name, obj in (allowed or {}).items()]):
            loaded = torch.load(path, map_location=device, weights_only=True)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def _named_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts, lists and tuples, with its path (``model.cascades.0.conv1.weight``)."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _named_tensors(value, f"{prefix}.{index}" if prefix else str(index))


def _viewed_bytes(tensor: torch.Tensor) -> int:
    """The bytes of its storage a tensor can reach: up to its last element, from the storage's start."""
    if tensor.numel() == 0:
        return 0
    last = tensor.storage_offset() + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return (last + 1) * tensor.element_size()


# What a checkpoint's zip may hold outside its tensor data (data.pkl, version, byteorder, ...) once inflated:
# this project's pickles are a few KiB; torch reads each entry whole.
MAX_ZIP_METADATA = 64 << 20


def check_storage_sizes(data: bytes | memoryview, path: Path, what: str, allowed: dict[str, Any] | None = None):
    """The file's object on the meta device (shapes and storage sizes as its pickle declares them, nothing
    allocated), after refusing storages larger than the tensors that view them: a small file, e.g. a deflated
    zip, whose weight views a few bytes of a huge zero storage would allocate all of it. Also refuses zip
    entries (what torch reads whole, inflated) larger than the tensors in all, or a pickle larger than
    :data:`MAX_ZIP_METADATA`. None when the file does not even load on the meta device (the real load then
    says why)."""
    entries = {}
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                entries = {info.filename: info.file_size for info in archive.infolist()}
        except zipfile.BadZipFile:
            return None
    metadata = sum(size for name, size in entries.items() if "/data/" not in name)
    if metadata > MAX_ZIP_METADATA:
        raise UserError(f"{what} {path} inflates to {format_bytes(metadata)} of pickled objects (a checkpoint holds "
                        "a few KiB): the file was crafted or damaged, so it is not loaded")
    try:
        meta = _weights_only_load(io.BytesIO(data), allowed, device="meta")
    except Exception:  # refused or damaged: the real load gives the one-line reason
        return None
    tensors = list(_named_tensors(meta))
    viewed = sum(_viewed_bytes(t) for _, t in tensors)
    for name, tensor in tensors:
        storage = tensor.untyped_storage().nbytes()
        if storage > _viewed_bytes(tensor):
            raise UserError(f"{what} {path}: {clean_text(name, 80)} lies in a storage of {format_bytes(storage)} that "
                            f"its tensors view only {format_bytes(_viewed_bytes(tensor))} of: loading the "
                            f"{format_bytes(len(data))} file would allocate that storage whole; torch.save never "
                            "writes this (the file was crafted or damaged), so it is not loaded")
    stored = sum(size for name, size in entries.items() if "/data/" in name)
    if stored > viewed:
        raise UserError(f"{what} {path} holds {format_bytes(stored)} of tensor data for tensors of "
                        f"{format_bytes(viewed)} in all: loading it would allocate the rest too; torch.save "
                        "never writes this (the file was crafted or damaged), so it is not loaded")
    return meta


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
        raise UserError(f"{what} {path} {not_a_file(path)} (check the path)")


def load_checkpoint(path: str | Path, what: str = "checkpoint",
                    inspect: Callable[[Any], None] | None = None, data: bytes | None = None) -> dict:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors naming the file (and the
    globals that made it refuse); a checkpoint of the public code is sent to scripts/import_checkpoint.py. A
    file its folder's run record lists must have the recorded content (:func:`check_recorded`). The one loader
    of this project's checkpoints: every caller reads them through it.

    Nothing is materialised before :func:`check_storage_sizes` has passed and ``inspect`` (given the file's
    object on the meta device, e.g. to compare an architecture with its weights) has returned.

    ``what`` names the role in messages, e.g. ``"--teacher-checkpoint"``; ``data``: the file's bytes when the
    caller has read them already (models.checkpoints.format.read_checkpoint hashes them too).
    """
    path = Path(path)
    check_file(path, what)
    if data is None:
        data = path.read_bytes()  # read once: what is verified is what is loaded
    check_recorded(path, data, what)
    meta = check_storage_sizes(data, path, what)
    if inspect is not None and meta is not None:
        inspect(meta)
    try:
        ckpt = _weights_only_load(io.BytesIO(data))
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
    data = path.read_bytes()
    check_storage_sizes(data, path, what, PUBLIC_CODE_GLOBALS)
    try:
        return _weights_only_load(io.BytesIO(data), PUBLIC_CODE_GLOBALS)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        names = refused_globals(path, PUBLIC_CODE_GLOBALS)
        if names:
            raise UserError(f"{what} {path} holds pickled Python objects ({_names(names)}) that checkpoints of the "
                            "public SFT-KD-Recon code do not hold; unpickling them could run any code, so it is not "
                            "loaded (a genuine public file that needs one: report it, the list is reviewed in "
                            "models/checkpoints/io.py)") from exc
        raise _cannot_load(what, path, exc, "re-copy it") from exc
