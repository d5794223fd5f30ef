"""Content fingerprints of what a run reads, so that ``--resume`` can tell the same file under the same path from
another one: a whole-file hash for small or decisive files (masks, checkpoints) and, for a split's HDF5 files,
their names, sizes and a hash of each file's first and last 64 KiB.

The ends of an HDF5 file hold its superblock, object headers and attributes (data/prepare.py records the
subject, source file and slice hashes there) and the first and last slices' data, so data prepared again
(other subjects, another seed, another mask) differs there, while reading 128 KiB per file keeps the check
quick on a real data set. A change only in the middle of a file that keeps its size goes unseen: a
hand-edited file, not a re-run of data/prepare.py.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from data.layout import acc_folder

_CHUNK = 1 << 20
_END = 64 << 10


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of the whole file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def ends_digest(path: str | Path) -> str:
    """``"{size}:{hash}"``: the file's size and a SHA-256 (first 16 hex digits) of its first and last 64 KiB."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        head = f.read(_END)
        f.seek(max(size - _END, len(head)))
        tail = f.read(_END)
    return f"{size}:{hashlib.sha256(head + tail).hexdigest()[:16]}"


def split_listing(root: str | Path, split: str, acc: str) -> dict[str, str]:
    """``{file name: ends_digest}`` of every ``.h5`` file of one split and acceleration (empty when the folder
    is missing)."""
    folder = acc_folder(Path(root), split, acc)
    return {path.name: ends_digest(path) for path in sorted(folder.glob("*.h5")) if path.is_file()}


def listing_changes(was: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between two :func:`split_listing` results, e.g. ``["vol03.h5 changed", "vol09.h5 new"]``
    (at most three of each kind named, then a count)."""
    kinds = (("changed", [n for n in was if n in now and was[n] != now[n]]),
             ("missing", [n for n in was if n not in now]), ("new", [n for n in now if n not in was]))
    parts = []
    for label, names in kinds:
        parts += [f"{name} {label}" for name in names[:3]]
        if len(names) > 3:
            parts.append(f"{len(names) - 3} more {label}")
    return parts
