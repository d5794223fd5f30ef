"""The train / validation / test split of data/prepare.py: over subjects (seeded, or fixed by lists or a split
file), or over contiguous slice blocks when there is only one subject."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from data.layout import SPLITS
from utils import UserError, first_line

# Slice positions dropped between neighbouring blocks of a single subject.
BLOCK_GAP = 2


def block_split(indices: np.ndarray, val_fraction: float, label: str,
                test_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Split sorted slice positions ``indices`` (int64 (K,)) of one subject into contiguous blocks, low to high:
    training, validation, test (when ``test_fraction`` > 0), with ``BLOCK_GAP`` positions dropped between
    neighbours; values are int64 arrays.

    Validation gets ``ceil(val_fraction * K)`` positions, test ``ceil(test_fraction * K)``. Validation sits
    between training and test, so the test block is the one farthest from the anatomy trained on.
    """
    n_val = math.ceil(val_fraction * len(indices))
    n_test = math.ceil(test_fraction * len(indices))
    gaps = BLOCK_GAP * (2 if n_test else 1)
    n_train = len(indices) - n_val - n_test - gaps
    if n_train < 1:
        raise UserError(f"{label} has only {len(indices)} usable slice positions: too few to split one subject into "
                        f"{'train, validation and test' if n_test else 'train and validation'} blocks with "
                        f"{BLOCK_GAP}-slice gaps; lower --min-foreground, --val-fraction or --test-fraction, or "
                        "raise --max-slices-per-volume")
    val_start = n_train + BLOCK_GAP
    blocks = {"train": indices[:n_train], "validation": indices[val_start:val_start + n_val]}
    if n_test:
        blocks["test"] = indices[len(indices) - n_test:]
    return blocks


def split_groups(groups: list[str], val_fraction: float, seed: int,
                 test_fraction: float = 0.0) -> tuple[set[str], set[str]]:
    """(validation, test) groups: a seeded shuffle, ``round(fraction * n)`` of them each (validation at least
    1, test at least 1 when ``test_fraction`` > 0), training keeping at least 1."""
    order = sorted(set(groups))
    np.random.default_rng(seed).shuffle(order)
    n_test = max(1, int(test_fraction * len(order) + 0.5)) if test_fraction > 0 else 0
    n_val = max(1, int(val_fraction * len(order) + 0.5))
    if n_val + n_test >= len(order):
        raise UserError(f"{len(order)} subjects are too few for a training, a validation and a test split "
                        f"(--val-fraction {val_fraction}, --test-fraction {test_fraction}); pass --test-fraction 0 "
                        "for the two-split layout, or give more subjects")
    return set(order[:n_val]), set(order[n_val:n_val + n_test])


def _read_split_file(path: Path) -> dict[str, str]:
    """subject -> split from a split.json of this tool, or from ``{"train": [ids], "validation": [ids],
    "test": [ids]}`` (test optional)."""
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
                        '{"train": [subject ids], "validation": [subject ids], "test": [subject ids]}')
    wrong = {subject: split for subject, split in table.items() if split not in SPLITS}
    if wrong:
        subject, split = next(iter(wrong.items()))
        raise UserError(f"--split-file {path}: subject {subject} has split {split!r}; each subject must be "
                        "'train', 'validation' or 'test' (a split by slice blocks cannot be reused)")
    return table


def _assign(subjects: list[str], validation: set[str], test: set[str]) -> dict[str, str]:
    """subject -> its split, in the order of ``subjects``; every subject in neither set trains."""
    return {subject: "test" if subject in test else "validation" if subject in validation else "train"
            for subject in subjects}


def assign_subjects(subjects: list[str], val_fraction: float, seed: int, val_subjects: list[str] | None = None,
                    split_file: str | Path | None = None, test_fraction: float = 0.0,
                    test_subjects: list[str] | None = None) -> dict[str, str] | None:
    """subject -> ``"train"`` / ``"validation"`` / ``"test"``, or None when fewer than two subjects (split by
    slice blocks).

    ``val_subjects`` / ``test_subjects`` (either or both) or ``split_file`` fix the split; otherwise
    :func:`split_groups` draws it. Given ``test_subjects`` alone, validation is drawn from the other subjects;
    given ``val_subjects`` alone, there is no test split.
    """
    found = list(dict.fromkeys(subjects))
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
    if val_subjects is not None or test_subjects is not None:
        for flag, listed in (("--val-subjects", val_subjects), ("--test-subjects", test_subjects)):
            unknown = [subject for subject in listed or [] if subject not in found]
            if unknown:
                raise UserError(f"{flag} {unknown[0]} is not among the {len(found)} subjects found ({shown})")
        both = sorted(set(val_subjects or []) & set(test_subjects or []))
        if both:
            raise UserError(f"subject {both[0]} is in both --val-subjects and --test-subjects; list it once")
        test = set(test_subjects or [])
        if val_subjects is None:
            rest = [subject for subject in found if subject not in test]
            # One subject left: none for validation, which the check below reports.
            validation = split_groups(rest, val_fraction, seed)[0] if len(rest) > 1 else set()
        else:
            validation = set(val_subjects)
        assigned = _assign(found, validation, test)
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
        return _assign(found, *split_groups(found, val_fraction, seed, test_fraction))
    for split in ("train", "validation"):
        if split not in assigned.values():
            raise UserError(f"the explicit split puts no subject in {split} (subjects found: {shown}); "
                            "give each split at least one subject")
    return assigned
