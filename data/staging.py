"""The output folder of data/prepare.py: refuse an unusable or busy one, and write each run into a hidden staging
folder inside it that is moved into place only once complete."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from data.split_check import SPLITS
from utils import UserError, os_error_message

STAGE_PREFIX = ".prepare-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stage_owner(stage: Path) -> int | None:
    """The process id a staging folder ``.prepare-{pid}-XXXX`` belongs to (None for other names)."""
    match = re.fullmatch(rf"{re.escape(STAGE_PREFIX)}(\d+)-.*", stage.name)
    return int(match.group(1)) if match else None


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an unusable or non-empty ``out``; delete staging folders that runs killed before they could
    clean up (SIGTERM, SIGKILL, power loss) left there."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file; choose a folder")
    if not out.is_dir():
        return
    for stage in sorted(out.glob(f"{STAGE_PREFIX}*")):
        owner = _stage_owner(stage)
        if owner is not None and owner != os.getpid() and _alive(owner):
            raise UserError(f"--out-dir {out} is being written by another data/prepare.py run (process {owner}, "
                            f"{stage.name}); wait for it or choose another --out-dir (if no such run exists, delete "
                            f"{stage})")
        shutil.rmtree(stage) if stage.is_dir() and not stage.is_symlink() else stage.unlink()
    if any(out.iterdir()) and not overwrite:
        raise UserError(f"--out-dir {out} exists and is not empty; pass --overwrite to replace its mask_*.npy, "
                        "split.json, train/ and validation/, or choose another folder")


def _remove_outputs(out: Path, keep: Path) -> None:
    """Delete what an earlier run of this tool wrote in ``out``, nothing else."""
    for path in [*out.glob("mask_*.npy"), out / "split.json"]:
        path.unlink(missing_ok=True)
    for path in (out / split for split in SPLITS):
        if path == keep or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


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
    if overwrite:
        _remove_outputs(out, keep=stage)
    for item in sorted(stage.iterdir()):
        os.replace(item, out / item.name)
    stage.rmdir()
