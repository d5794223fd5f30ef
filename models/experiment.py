"""The experiment folder: refusing or resuming an existing run, setting a replaced run aside, run metadata."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from utils import UserError, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
OWN_FILES = ("model.pt", "best_model.pt", "config.json", "summary")
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "batch_in_epoch", "global_step", "best_val_loss")
# An --overwrite run parks the run it replaces here until it has saved its own first model.pt.
REPLACED = ".replaced"


def prepare_exp_dir(args: argparse.Namespace) -> dict | None:
    """Check --exp-dir against --resume / --overwrite; return the checkpoint to resume from, if any.

    Nothing is deleted here: an --overwrite run sets the old files aside once its own setup succeeded and
    deletes them only after saving its first model.pt (see :func:`set_aside_old_run`), so a refused or failed
    run never costs the previous one.
    """
    exp = args.exp_dir
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if exp.exists() and not exp.is_dir():
        raise UserError(f"--exp-dir {exp} is a file, not a folder")
    existing = [name for name in OWN_FILES if (exp / name).exists()]
    if args.resume:
        if not (exp / "model.pt").is_file():
            raise UserError(f"--resume: there is no {exp / 'model.pt'} to resume from; start without --resume")
        ckpt = load_checkpoint(exp / "model.pt", "--resume checkpoint")
        missing = sorted(set(RESUME_KEYS) - set(ckpt))
        if missing:
            raise UserError(f"--resume: {exp / 'model.pt'} holds weights but no training state "
                            f"({', '.join(missing)} missing), e.g. a copied best_model.pt; restore the model.pt "
                            "the run wrote, or start again with --overwrite")
        return ckpt
    if existing and not args.overwrite:
        raise UserError(f"--exp-dir {exp} already holds a run ({', '.join(existing)}); add --resume to "
                        "continue it, --overwrite to replace it, or choose another --exp-dir")
    return None


def set_aside_old_run(exp: Path) -> bool:
    """Move an earlier run's files into ``exp/.replaced`` (replacing a stale one); False if there were none."""
    names = [name for name in OWN_FILES if (exp / name).exists()]
    shutil.rmtree(exp / REPLACED, ignore_errors=True)
    if names:
        (exp / REPLACED).mkdir(parents=True)
        for name in names:
            os.replace(exp / name, exp / REPLACED / name)
    return bool(names)


def restore_old_run(exp: Path) -> None:
    """Undo :func:`set_aside_old_run` after a failure: drop the new run's files, move the earlier ones back."""
    for name in OWN_FILES:
        path = exp / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for item in (exp / REPLACED).iterdir():
        os.replace(item, exp / item.name)
    (exp / REPLACED).rmdir()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def jsonable(args: argparse.Namespace) -> dict:
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[key] = value
    return out


def drop_replaced_run(exp: Path) -> None:
    """Delete the run :func:`set_aside_old_run` parked, once the new run has saved its own model.pt."""
    shutil.rmtree(exp / REPLACED, ignore_errors=True)
