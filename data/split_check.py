"""Leak check of a prepared data set: no subject, no source slice and no identical slice in two splits.

data/prepare.py records in every volume file it writes the attributes ``subject`` (str), ``source_file``
(str), ``source_slices`` (S,) int64 and ``slice_hashes`` (S,) uint64 (:func:`slice_hashes` of ``volfs``).
The check reads only these attributes, never the images, so it is cheap enough to run at every training
start-up and evaluation. Files written by other tools (the public KD-MRI data) carry none of them: their slice
hashes are computed from ``volfs`` (constant slices, e.g. all-zero ones at a volume's edge, left out: they
carry no image).

The splits are train, validation and (when the data set has one) test; every pair of them is checked. A
subject may sit in several splits only when it is the data set's one subject: then data/prepare.py has split
it by slice blocks, and the slice-position and hash checks are what guard the split.
"""
from __future__ import annotations

import hashlib
from itertools import combinations
from collections import Counter
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from data.layout import SPLITS, TARGET_KEY, acc_folder
from utils import UserError, first_line


def slice_hashes(volfs: np.ndarray) -> np.ndarray:
    """64-bit BLAKE2b digest of each slice's bytes. volfs: (H, W, S) float32 -> (S,) uint64.

    Identical digests mean bit-identical slices (a 2**-64 chance otherwise), e.g. an ACDC ``_frameNN`` file
    that repeats a frame of the ``_4d`` cine.
    """
    digests = [hashlib.blake2b(np.ascontiguousarray(volfs[:, :, s]).tobytes(), digest_size=8).digest()
               for s in range(volfs.shape[2])]
    return np.frombuffer(b"".join(digests), dtype=np.uint64).copy()


def _image_hashes(f: h5py.File) -> np.ndarray | None:
    """:func:`slice_hashes` of a file's ``volfs`` (H, W, S), non-constant slices only; None without ``volfs``."""
    if TARGET_KEY not in f or len(f[TARGET_KEY].shape) != 3:
        return None
    volfs = f[TARGET_KEY][()]
    varies = volfs.max(axis=(0, 1)) > volfs.min(axis=(0, 1))
    return slice_hashes(volfs)[varies]


def _records(folder: Path) -> list[dict]:
    """The split attributes of every ``.h5`` in ``folder`` (slice hashes computed for files without them)."""
    records = []
    for path in sorted(folder.glob("*.h5")):
        try:
            with h5py.File(path, "r") as f:
                attrs = {key: f.attrs[key] for key in ("subject", "source_file", "source_slices", "slice_hashes")
                         if key in f.attrs}
                if "slice_hashes" not in attrs and (computed := _image_hashes(f)) is not None:
                    attrs["slice_hashes"] = computed
        except OSError as exc:
            raise UserError(f"{path} is not a readable HDF5 file ({first_line(exc)}); re-copy it or re-run "
                            "data/prepare.py") from exc
        records.append({"path": path, **attrs})
    return records


def check_split(root: str | Path, accs: Iterable[str], fix: str = "re-run data/prepare.py into a fresh --out, "
                "and never move files between train/ and validation/", label: str | None = None,
                splits: Iterable[str] = SPLITS) -> dict:
    """Raise :class:`UserError` if two of ``splits`` (split folder names, default train, validation and test) of
    the data set at ``root`` share anything, over ``accs``: training start-up and evaluate.py (the scored split
    against the training ones) both ask it.

    Checked across all accelerations at once (a slice trained at 4x must not be validated at 5x): subjects
    (unless there is only one), ``(source_file, source slice)`` pairs, and slice hashes. Messages name the
    data set ``label`` (default: ``root``) and end with ``fix``. Returns ``{"subjects": {split: sorted ids}, "duplicates": {split: n}}``, where ``duplicates``
    counts slices of the first acceleration identical to another slice of the same split (harmless for the
    split, but wasted work, e.g. ACDC's ED/ES files next to the cine frames they repeat).
    """
    root = Path(root)
    label = label or str(root)
    accs = list(dict.fromkeys(accs))
    names = tuple(dict.fromkeys(splits))
    # Per split: the first file holding each subject / source slice / slice hash.
    subjects: dict[str, dict[str, dict]] = {split: {} for split in names}
    positions: dict[str, dict[tuple[str, int], dict]] = {split: {} for split in names}
    hashes: dict[str, dict[int, dict]] = {split: {} for split in names}
    counts = {split: Counter() for split in names}
    for split in names:
        for acc in accs:
            for record in _records(acc_folder(root, split, acc)):
                if "subject" in record:
                    subjects[split].setdefault(str(record["subject"]), record)
                if "source_file" in record and "source_slices" in record:
                    for index in np.asarray(record["source_slices"]).tolist():
                        positions[split].setdefault((str(record["source_file"]), int(index)), record)
                if "slice_hashes" in record:
                    values = np.asarray(record["slice_hashes"], dtype=np.uint64).tolist()
                    if acc == accs[0]:
                        counts[split].update(values)
                    for value in values:
                        hashes[split].setdefault(value, record)

    def where(record: dict) -> str:
        source = f" (from {record['source_file']})" if "source_file" in record else ""
        return f"{record['path'].relative_to(root)}{source}"

    everywhere = set().union(*(subjects[split].keys() for split in names))
    for first, second in combinations(names, 2):
        shared = sorted(subjects[first].keys() & subjects[second].keys())
        if shared and len(everywhere) > 1:
            name = shared[0]
            raise UserError(f"leak in {label}: subject {name} is in both {first} and {second} ({len(shared)} "
                            f"subject(s) in all), e.g. {where(subjects[first][name])} and "
                            f"{where(subjects[second][name])}; {fix}")
        for what, table, show in (("source slice", positions, lambda key: f"{key[0]} slice {key[1]}"),
                                  ("identical slice", hashes, lambda key: f"hash {key:016x}")):
            common = table[first].keys() & table[second].keys()
            if common:
                key = min(common)
                raise UserError(f"leak in {label}: {len(common)} {what}(s) in both {first} and {second}, e.g. "
                                f"{show(key)} in {where(table[first][key])} and {where(table[second][key])}; {fix}")
    return {"subjects": {split: sorted(subjects[split]) for split in names},
            "duplicates": {split: sum(n - 1 for n in counts[split].values()) for split in names}}
