"""The train / validation split of data/prepare.py: over subjects (seeded, or fixed by a list or a split file),
or over contiguous slice blocks when there is only one subject."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from data.split_check import SPLITS
from utils import UserError, first_line

# Slice positions dropped between the train and validation blocks of a single subject.
BLOCK_GAP = 2


def block_split(indices: np.ndarray, val_fraction: float, label: str) -> dict[str, np.ndarray]:
    """Split sorted slice positions ``indices`` (int64 (K,)) of one subject into a training block and a
    higher validation block.

    The top ``ceil(val_fraction * K)`` indices are validation, the ``BLOCK_GAP`` below them are dropped.
    """
    n_val = math.ceil(val_fraction * len(indices))
    n_train = len(indices) - n_val - BLOCK_GAP
    if n_train < 1:
        raise UserError(f"{label} has only {len(indices)} usable slice positions: too few to split one subject into "
                        f"train and validation blocks with a {BLOCK_GAP}-slice gap; lower --min-foreground "
                        "or raise --max-slices-per-volume")
    return {"train": indices[:n_train], "validation": indices[len(indices) - n_val:]}


def split_groups(groups: list[str], val_fraction: float, seed: int) -> set[str]:
    """Groups drawn for validation: seeded shuffle, ``round(val_fraction * n)`` of them, at least 1, at most n-1."""
    order = sorted(set(groups))
    np.random.default_rng(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, int(val_fraction * len(order) + 0.5)))
    return set(order[:n_val])


def _read_split_file(path: Path) -> dict[str, str]:
    """subject -> split from a split.json of this tool, or from ``{"train": [ids], "validation": [ids]}``."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"--split-file {path} does not exist; check the path") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--split-file {path} is not a JSON file ({first_line(exc)}); pass a split.json "
                        "written by data/prepare.py") from exc
    if isinstance(content, dict) and isinstance(content.get("subjects"), dict):
        table = {str(subject): entry.get("split") if isinstance(entry, dict) else entry
                 for subject, entry in content["subjects"].items()}
    elif isinstance(content, dict) and set(content) <= set(SPLITS) and content:
        table = {str(subject): split for split, ids in content.items() for subject in ids}
        twice = sorted({s for split, ids in content.items() for s in map(str, ids) if table[s] != split})
        if twice:
            raise UserError(f"--split-file {path} lists {', '.join(twice[:3])} in more than one split; list each "
                            "subject once")
    else:
        raise UserError(f"--split-file {path} holds neither a split.json of data/prepare.py nor "
                        '{"train": [subject ids], "validation": [subject ids]}')
    wrong = {subject: split for subject, split in table.items() if split not in SPLITS}
    if wrong:
        subject, split = next(iter(wrong.items()))
        raise UserError(f"--split-file {path}: subject {subject} has split {split!r}; each subject must be "
                        "'train' or 'validation' (a split by slice blocks cannot be reused)")
    return table


def assign_subjects(subjects: list[str], val_fraction: float, seed: int, val_subjects: list[str] | None = None,
                    split_file: str | Path | None = None) -> dict[str, str] | None:
    """subject -> ``"train"`` / ``"validation"``, or None when fewer than two subjects (split by slice blocks).

    ``val_subjects`` or ``split_file`` fix the split; otherwise :func:`split_groups` draws it.
    """
    found = list(dict.fromkeys(subjects))
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
    if val_subjects is not None:
        unknown = [subject for subject in val_subjects if subject not in found]
        if unknown:
            raise UserError(f"--val-subjects {unknown[0]} is not among the {len(found)} subjects found ({shown})")
        assigned = {subject: "validation" if subject in val_subjects else "train" for subject in found}
    elif split_file is not None:
        table = _read_split_file(Path(split_file))
        missing = [subject for subject in found if subject not in table]
        if missing:
            raise UserError(f"--split-file {split_file} does not list subject {missing[0]} ({len(missing)} "
                            "unlisted); add them to the file, or leave their files out of --input")
        absent = [subject for subject in table if subject not in found]
        if absent:
            print(f"warning: --split-file {split_file} lists {len(absent)} subject(s) not in --input "
                  f"(e.g. {absent[0]}); they are ignored", file=sys.stderr)
        assigned = {subject: table[subject] for subject in found}
    elif len(found) < 2:
        return None
    else:
        validation = split_groups(found, val_fraction, seed)
        return {subject: "validation" if subject in validation else "train" for subject in found}
    for split in SPLITS:
        if split not in assigned.values():
            raise UserError(f"the explicit split puts no subject in {split} (subjects found: {shown}); "
                            "give each split at least one subject")
    return assigned
