"""What a checkpoint records of its training (accelerations, roles, machine, data), and the checks of it against
the data ``evaluate.py`` scores."""
from __future__ import annotations

from pathlib import Path

from data.dataset import SliceDataset
from data.fingerprint import matching_files
from data.layout import acc_folder
from data.masks import mask_lines
from data.split_check import check_split
from utils import UserError, clean_text


def recorded_roles(ckpt: dict) -> dict:
    """The roles a checkpoint's run recorded (models/distill/roles.py) plus its ``seed``; empty for checkpoints
    without roles (imported ones among them), which scripts/report.py then names by their model name."""
    config = ckpt.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("roles"), dict):
        return {}
    seed = config.get("seed")
    return {**config["roles"], **({"seed": seed} if isinstance(seed, int) else {})}


def trained_on(ckpt: dict) -> dict | None:
    """The machine (utils.machine) of the training process that wrote a checkpoint; None for checkpoints that record
    none (imported ones among them)."""
    config = ckpt.get("config")
    recorded = config.get("machine") if isinstance(config, dict) else None
    return recorded if isinstance(recorded, dict) else None


def trained_accs(ckpt: dict) -> list[str]:
    """The accelerations a checkpoint's run trained on: its --acc; for an imported public checkpoint its
    ``acceleration_factor`` flag (``"4x"`` or ``"4x,5x"``); empty when it records neither."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    accs = config.get("acc")
    if accs is None:
        source = config.get("source_args") if isinstance(config.get("source_args"), dict) else {}
        accs = str(source.get("acceleration_factor") or "").split(",")
    return [clean_text(acc).strip() for acc in (accs if isinstance(accs, list) else [accs]) if str(acc).strip()]


_PATTERN = {"rows": "whole rows", "columns": "whole columns", "2-D": "a 2-D pattern"}


def default_split(data_root: Path, acc: str) -> str:
    """The split evaluate.py scores without ``--split``: ``test`` when ``data_root`` has a test split for ``acc``,
    else ``validation`` (with a note saying what that means for the numbers)."""
    if acc_folder(data_root, "test", acc).is_dir():
        return "test"
    print(f"note: {data_root} has no test/ split (the original two-split layout): scoring validation, the slices "
          "best_model.pt was chosen on, so the numbers are optimistic; data/prepare.py writes test/ by default")
    return "validation"


def check_scored_split(data_root: Path, split: str, acc: str) -> None:
    """Refuse a scored split that shares a subject, a source slice or an identical slice with the training or
    validation split of ``data_root``: the check training start-up runs (data/split_check.check_split), by
    content, so a training file renamed into test/ is caught."""
    check_split(data_root, [acc], label=f"--data-root {data_root}", splits=("train", "validation", split),
                fix="score a split that holds none of the training slices (data/prepare.py's test/), or remove "
                    "the copy")


def check_trained_on(path: Path, ckpt: dict, dataset: SliceDataset, scored: dict[str, str], *, acc: str,
                     split: str, data_root: Path, cross_acc: bool = False) -> list[str]:
    """Refuse to score a checkpoint on data other than the kind it was trained on, as far as it records it:
    another acceleration (unless ``--cross-acc``), another slice size, another mask sampling pattern, or files
    of its own training split (``scored``: :func:`data.fingerprint.split_listing` of ``split``, the split of
    ``data_root`` that ``dataset`` holds at acceleration ``acc``). Returns
    the accelerations it was trained on."""
    accs = trained_accs(ckpt)
    if accs and acc not in accs and not cross_acc:
        raise UserError(f"--checkpoints {path} was trained at {' '.join(accs)}, but --acc {acc} scores it on "
                        f"{acc} data; evaluate it at {accs[0]}, or pass --cross-acc to score it across "
                        "accelerations (summary.json records both, report.py gives it a row of its own)")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    content = config.get("content") if isinstance(config.get("content"), dict) else {}
    size = content.get("image_size")
    if isinstance(size, list) and list(dataset.shape) != size:
        raise UserError(f"--checkpoints {path} was trained on {'x'.join(map(str, size))} slices, but --split "
                        f"{split} of {data_root} holds {dataset.shape[0]}x{dataset.shape[1]}; score it on "
                        "data prepared at its size (data/prepare.py --size)")
    lines = content.get("mask_lines") if isinstance(content.get("mask_lines"), dict) else {}
    expected = lines.get(acc) or next(iter(lines.values()), None)
    found = mask_lines(dataset.mask[0].numpy())
    if expected in _PATTERN and found != expected:
        raise UserError(f"--checkpoints {path} was trained with masks sampling {_PATTERN[expected]}, but the "
                        f"{acc} mask of this data samples {_PATTERN[found]}; score it with the mask kind it "
                        "was trained with (--mask, or data prepared with its --mask-kind)")
    listings = content.get("data", {}).get("train", {}) if isinstance(content.get("data"), dict) else {}
    # By content: a training file renamed, or copied into another data set, is the same file.
    trained = [digest for listing in listings.values() if isinstance(listing, dict) for digest in listing.values()]
    seen = matching_files(trained, scored, acc_folder(data_root, split, acc))
    if seen:
        raise UserError(f"--checkpoints {path} was trained on {len(seen)} of the {len(scored)} files of --split "
                        f"{split} ({', '.join(seen[:3])}{', ...' if len(seen) > 3 else ''}): scores there "
                        "measure memory, not reconstruction; score the test split, or data it never saw")
    return accs

