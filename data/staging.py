"""The output folder of data/prepare.py: refuse an unusable one, and write each run into a hidden staging folder
inside it that replaces the previous run's files (and only those) once complete, crash-safely (data/outputs.py)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from data.layout import ACC_FOLDER_PREFIX, SPLITS, mask_name
from data.outputs import check_replaceable, clean_up, new_files, owned_files, swap_in
from data.outputs import LOCK_NAME
from utils import UserError, os_error_message

STAGE_PREFIX = ".prepare-"


def check_apart(out: Path, inputs: list[str | Path]) -> None:
    """Refuse an ``out`` that is, contains or lies inside one of ``inputs`` (symlinks resolved): --overwrite
    must never reach a source scan, and a rerun must not find its own output among its inputs."""
    target = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or source in target.parents or target in source.parents:
            where = "is" if target == source else "lies inside" if source in target.parents else "contains"
            raise UserError(f"--out-dir {out} {where} the input {given}; choose an --out-dir outside the inputs, "
                            "e.g. datasets/NAME")


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an unusable or non-empty ``out``; finish a swap a killed run began (see data/outputs.py) and delete
    staging folders that killed runs (SIGTERM, SIGKILL, power loss) left there. Call it holding ``out``'s lock,
    which is what makes those folders safe to delete."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file; choose a folder")
    if not out.is_dir():
        return
    if clean_up(out, STAGE_PREFIX):
        print(f"note: finished moving the data an interrupted data/prepare.py run wrote into {out}", file=sys.stderr)
    if any(p.name != LOCK_NAME for p in out.iterdir()) and not overwrite:
        raise UserError(f"--out-dir {out} exists and is not empty; pass --overwrite to replace the data an earlier "
                        "run of this tool wrote there (other files stay), or choose another folder")
    if overwrite:
        check_replaceable(out, [], _owned(out), list(SPLITS), "--out-dir")


def _owned(out: Path) -> list[str]:
    """The files the previous run wrote: its manifest, or for runs older than the manifest, the masks and
    volumes its split.json lists (nothing when there is neither)."""
    owned = owned_files(out)
    if owned is not None:
        return owned
    try:
        record = json.loads((out / "split.json").read_text())["subjects"]
        volumes = {split: [name for entry in record.values() for name in entry["files"][split]]
                   for split in SPLITS if all(split in entry["files"] for entry in record.values())}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    owned = ["split.json"]
    for split, names in volumes.items():
        for folder in sorted((out / split).glob(f"{ACC_FOLDER_PREFIX}*")):
            owned += [f"{split}/{folder.name}/{name}" for name in names if (folder / name).is_file()]
            mask = mask_name(folder.name[len(ACC_FOLDER_PREFIX):])
            if (out / mask).is_file() and mask not in owned:
                owned.append(mask)
    return owned


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder inside ``out``; on success move its contents into ``out``, on failure delete it.

    A crash or a bad volume half-way therefore never leaves a partial data set, and with --overwrite the
    old data stays until the new one is complete. Folders this creates for ``out`` go again on failure.
    """
    created = [path for path in (out, *out.parents) if not path.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=out))
    except OSError as exc:
        raise UserError(f"--out-dir {out} cannot be created: {os_error_message(exc)}") from exc
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for path in created:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    owned = _owned(out) if overwrite else []
    try:
        check_replaceable(out, new_files(stage), owned, list(SPLITS), "--out-dir")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    swap_in(out, stage, owned)
