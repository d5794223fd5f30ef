"""The output folder of ``evaluate.py``: model names (which summary.json's own entries and ``ZF`` cannot be), the
metric CSVs and summary.json, and the files an earlier run owns there."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from data.outputs import owned_files, write_json, write_text
from models.evaluation.cs import CS_ROW
from models.evaluation.engine import ZF_NAME
from models.evaluation.sets import METRIC_SETS, summarize
from utils import UserError, clean_text, csv_text

META_KEYS = ("acc", "split", "test_set", "data_root", "mask", "checkpoints", "roles", "trained_acc", "machine",
             "trained_on", "recipe", "fastmri", "public_volume", "image", "kspace", "coils", "maps", "coil_source",
             "cs")


def default_names(paths: list[Path], checkpoints: list[dict], reserved: tuple[str, ...] | None = None) -> list[str]:
    """Each checkpoint's ``run_name`` (``checkpoints``: the loaded dicts of ``paths``), else its folder name,
    else its file stem.

    Repeats and reserved words (default: ``ZF``, the CS row, the summary.json entries) get ``-2``, ``-3``, ...
    appended.
    """
    names = []
    for path, ckpt in zip(paths, checkpoints):
        # A run name is text from a file: it becomes a folder name and is printed.
        run_name = clean_text(ckpt.get("run_name") or "").strip()
        names.append(run_name or path.resolve().parent.name or path.stem)
    taken: set[str] = {ZF_NAME, CS_ROW, *META_KEYS} if reserved is None else set(reserved)
    unique = []
    for name in names:
        candidate, copy = name, 1
        while candidate in taken:
            copy += 1
            candidate = f"{name}-{copy}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def check_names(names: list[str], n_checkpoints: int) -> None:
    """Model names must match the checkpoints one to one, be unique and be usable as folder names."""
    if len(names) != n_checkpoints:
        raise UserError(f"--names has {len(names)} names but --checkpoints has {n_checkpoints} files; "
                        "give one name per checkpoint (or leave --names out)")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise UserError(f"--names repeats {', '.join(repeated)}; every model needs its own name")
    for name in names:
        if name in (ZF_NAME, CS_ROW) or name in META_KEYS:
            raise UserError(f"model name {name!r} is reserved ({ZF_NAME} is the zero-filled input, {CS_ROW} the CS "
                            "baseline, "
                            f"{', '.join(META_KEYS)} are summary.json entries); pass another with --names")
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise UserError(f"model name {name!r} cannot be a folder name; pass another with --names")


def owned_results(out_dir: Path) -> list[str]:
    """The files an earlier run wrote in ``out_dir``: its manifest.json, or for runs older than the manifest,
    its metric files, summary.json and the reconstructions of the models summary.json names."""
    owned = owned_files(out_dir)
    if owned is not None:
        return owned
    owned = [name for name in [*(s.file for s in METRIC_SETS.values()), "summary.json"] if (out_dir / name).is_file()]
    try:
        models = json.loads((out_dir / "summary.json").read_text())["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError):
        return owned
    for name in models if isinstance(models, dict) else ():
        folder = out_dir / "recons" / str(name)
        if folder.parent == out_dir / "recons" and folder.is_dir():
            owned += sorted(f"recons/{name}/{p.name}" for p in folder.glob("*.h5") if p.is_file())
    return owned


def write_results(folder: Path, rows: dict[str, list[dict]], meta: dict) -> dict:
    """Write each metric set's CSV (``rows``: :func:`models.evaluation.engine.evaluate_sets`'s) and summary.json
    into ``folder``: the statistics of every set, then ``meta``, the run's top-level entries (:data:`META_KEYS`).
    Returns ``{metric_set: summary}``."""
    summary, stats = {}, {}
    for name, set_rows in rows.items():
        metric_set = METRIC_SETS[name]
        write_text(folder / metric_set.file, csv_text(set_rows, metric_set.columns))
        stats[name] = summarize(set_rows, metric_set.metrics)
        key = metric_set.summary_key
        summary.update(stats[name] if key is None else {key: stats[name]})
    write_json(folder / "summary.json", {**summary, **meta})
    return stats
