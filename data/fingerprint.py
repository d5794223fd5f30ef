"""Content fingerprints of what a run reads, so that ``--resume`` and evaluate.py can tell the same file under
the same path from another one: the SHA-256 of each whole file (masks, checkpoints, every data file).

data/prepare.py hashes each data file once, as it writes it, into ``split.json`` (``"sha256": {relative path:
hex digest}``); :func:`data_listing` hashes the files again wherever they are read (training start-up, --resume,
evaluate.py) and refuses one whose content has changed since, even an edit in the middle that keeps its size. A
streamed SHA-256 reads about 0.5 GB/s on one core (docs/measurements.md): minutes for a fastMRI-sized set, once
per run start. Data prepared before split.json recorded hashes is hashed at first use (one note says so), as
are files in the public layout (no split.json), and the run's config.json records those hashes.

A run record whose entries are ends digests (:func:`ends_digest`, ``"{size}:{16 hex digits}"``: the size and a
hash of the first and last 64 KiB) is compared that way.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from data.layout import ACC_FOLDER_PREFIX, acc_folder
from utils import UserError

_CHUNK = 1 << 20
_END = 64 << 10
SPLIT_RECORD = "split.json"
HASH_KEY = "sha256"
PREFIX = "sha256:"


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of the whole file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def ends_digest(path: str | Path) -> str:
    """``"{size}:{hash}"``: the file's size and a SHA-256 (first 16 hex digits) of its first and last 64 KiB (what
    run records without whole-file hashes hold)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        head = f.read(_END)
        f.seek(max(size - _END, len(head)))
        tail = f.read(_END)
    return f"{size}:{hashlib.sha256(head + tail).hexdigest()[:16]}"


def tree_hashes(root: str | Path) -> dict[str, str]:
    """``{relative path: SHA-256 hex}`` of every ``.h5`` under ``root``'s split folders, for split.json."""
    root = Path(root)
    files = sorted(root.glob(f"*/{ACC_FOLDER_PREFIX}*/*.h5"))
    return {p.relative_to(root).as_posix(): file_digest(p) for p in files if p.is_file()}


def recorded_hashes(root: str | Path) -> dict[str, str] | None:
    """The hashes data/prepare.py recorded in ``root``'s split.json: empty for data prepared before it recorded
    them, None for data without a split.json (the public KD-MRI files, which no run of this project prepared)."""
    try:
        record = json.loads((Path(root) / SPLIT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    hashes = record.get(HASH_KEY) if isinstance(record, dict) else None
    return {str(k): str(v) for k, v in hashes.items()} if isinstance(hashes, dict) else {}


def data_listing(root: str | Path, splits: Iterable[str],
                 accs: Iterable[str]) -> tuple[dict[str, dict[str, dict[str, str]]], str | None]:
    """``{split: {acc: {file name: "sha256:<hex>"}}}`` of every ``.h5`` of those splits (empty for a missing
    folder), each file hashed now and compared with split.json: a :class:`UserError` names a file whose content
    changed since data/prepare.py wrote it. Also returns a one-line note when the data's split.json lacks some
    of the files (data prepared before split.json recorded hashes; None when it lists them all, or when there is
    no split.json: data in the public layout), for a run to print at its first use of them."""
    root = Path(root)
    prepared = recorded_hashes(root)
    recorded = prepared or {}
    listing, unrecorded = {}, 0
    for split in splits:
        for acc in accs:
            folder = acc_folder(root, split, acc)
            files = {}
            for path in sorted(folder.glob("*.h5")):
                if not path.is_file():
                    continue
                digest = file_digest(path)
                rel = path.relative_to(root).as_posix()
                if rel not in recorded:
                    unrecorded += 1
                elif recorded[rel] != digest:
                    raise UserError(f"{root}: {rel} has changed since data/prepare.py wrote it (its SHA-256 differs "
                                    f"from the one in {root / SPLIT_RECORD}); restore the file, or prepare the data "
                                    "again with data/prepare.py")
                files[path.name] = PREFIX + digest
            listing.setdefault(split, {})[acc] = files
    note = None
    if unrecorded and prepared is not None:
        why = "" if recorded else " (prepared before data/prepare.py recorded file hashes)"
        note = (f"note: {root / SPLIT_RECORD} records no file hash for {unrecorded} file(s){why}: hashed them now, "
                "and this run records them")
    return listing, note


def split_listing(root: str | Path, split: str, acc: str) -> dict[str, str]:
    """:func:`data_listing` of one split and acceleration: ``{file name: "sha256:<hex>"}``."""
    return data_listing(root, [split], [acc])[0][split][acc]


def listing_changes(was: dict[str, str], now: dict[str, str], folder: str | Path | None = None) -> list[str]:
    """What differs between a recorded listing and :func:`split_listing` now, e.g. ``["vol03.h5 changed",
    "vol09.h5 new"]`` (at most three of each kind named, then a count). Entries recorded as ends digests are
    compared as such, reading the file in ``folder``."""
    def changed(name: str) -> bool:
        if str(was[name]).startswith(PREFIX) or folder is None:
            return was[name] != now[name]
        return was[name] != ends_digest(Path(folder) / name)

    kinds = (("changed", [n for n in was if n in now and changed(n)]),
             ("missing", [n for n in was if n not in now]), ("new", [n for n in now if n not in was]))
    parts = []
    for label, names in kinds:
        parts += [f"{name} {label}" for name in names[:3]]
        if len(names) > 3:
            parts.append(f"{len(names) - 3} more {label}")
    return parts


def matching_files(recorded: Iterable[str], listing: dict[str, str], folder: str | Path) -> list[str]:
    """The names in ``listing`` (:func:`split_listing` of ``folder``) whose content is one of the ``recorded``
    digests (whole-file, or ends digests), sorted."""
    recorded = set(map(str, recorded))
    ends = any(not digest.startswith(PREFIX) for digest in recorded)
    return sorted(name for name, digest in listing.items()
                  if digest in recorded or (ends and ends_digest(Path(folder) / name) in recorded))
