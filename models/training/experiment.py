"""The experiment folder: refusing or resuming an existing run, setting a replaced run aside, run metadata."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from data.fingerprint import data_listing, file_digest, listing_changes
from data.layout import acc_folder, mask_name
from data.masks import load_mask, mask_lines
from models.checkpoints.io import RECORD, load_checkpoint
from utils import UserError

REPO = Path(__file__).resolve().parents[1]
OWN_FILES = ("model.pt", "best_model.pt", "config.json", "summary", RECORD)
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "batch_in_epoch", "global_step", "best_val_loss")
# An --overwrite run parks the run it replaces here until it has saved its own first model.pt.
REPLACED = ".replaced"


# Flags that do not change what a run computes, so --resume accepts new values (listed in --help): how long, how
# fast, where, what is logged. cache_teacher (train_student_kd.py) replays the teacher's own outputs; a moved
# or copied --data-root is accepted when its slice counts are the run's (check_resume_data).
MAY_CHANGE_ON_RESUME = ("epochs", "num_workers", "preload", "device", "memory_format", "save_every_iters",
                        "log_every", "image_every", "no_progress", "cache_teacher", "data_root")
# image and kspace are read from the data, not given: resume compares the network's image type with the data's.
_NOT_COMPARED = (*MAY_CHANGE_ON_RESUME, "exp_dir", "resume", "overwrite", "image", "kspace")
# Flags that choose the network, where None means "the network's own" (the named or loaded network's size,
# padding, residual connections): a None on either side is compared through the architecture it builds, which
# --resume checks against model.pt's (Trainer.resume_from), so an explicit default (--cascades 5,
# --student-model student) is accepted and a real change is still refused.
ARCH_FLAGS = ("model", "teacher_model", "student_model", "cascades", "depth", "width", "teacher_depth",
              "teacher_width", "student_depth", "student_width", "ref_padding", "residual")
# The checkpoints a run reads, by flag: config.json records their content (see content_record).
CHECKPOINT_FLAGS = ("teacher_checkpoint", "init_from_sft", "init_student")
SPLITS_READ = ("train", "validation")


def flag_names(dests) -> str:
    """``--epochs, --num-workers, ...`` for argparse ``dest`` names."""
    return ", ".join(f"--{dest.replace('_', '-')}" for dest in dests)


def _replaced_hint(exp: Path) -> str:
    if not (exp / REPLACED).is_dir():
        return ""
    return (f"; {exp / REPLACED} holds the run an interrupted --overwrite set aside, kept until a new run in "
            f"{exp} saves model.pt: to get it back, move its files back into {exp} (replacing what is there)")


def prepare_exp_dir(args: argparse.Namespace, defaults: dict | None = None) -> dict | None:
    """Check --exp-dir against --resume / --overwrite; return the checkpoint to resume from, if any.
    ``defaults``: see :func:`check_resume_flags`.

    Nothing is deleted here: an --overwrite run sets the old files aside once its own setup succeeded and
    deletes them only after saving its first model.pt (see :func:`set_aside_old_run`), so a refused or failed
    run never costs the previous one. A run stopped before its first model.pt (only config.json and logs) is
    started afresh by --resume.
    """
    exp = args.exp_dir
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if exp.exists() and not exp.is_dir():
        raise UserError(f"--exp-dir {exp} is a file, not a folder")
    existing = [name for name in OWN_FILES if (exp / name).exists()]
    started = not (exp / "model.pt").exists() and (existing or (exp / REPLACED).is_dir())
    if args.resume:
        if started:
            print(f"note: {exp} holds no model.pt: its run was stopped before its first checkpoint, so --resume "
                  f"starts it afresh{_replaced_hint(exp)}", file=sys.stderr)
            return None
        if not (exp / "model.pt").is_file():
            raise UserError(f"--resume: there is no {exp / 'model.pt'} to resume from; start without --resume")
        ckpt = load_checkpoint(exp / "model.pt", "--resume checkpoint")
        missing = sorted(set(RESUME_KEYS) - set(ckpt))
        if missing:
            raise UserError(f"--resume: {exp / 'model.pt'} holds weights but no training state "
                            f"({', '.join(missing)} missing), e.g. a copied best_model.pt; restore the model.pt "
                            "the run wrote, or start again with --overwrite")
        for key in ("epoch", "batch_in_epoch", "global_step"):
            value = ckpt[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"--resume: {exp / 'model.pt'} has a damaged '{key}' entry ({value!r:.40}); restore "
                                "the model.pt the run wrote, or start again with --overwrite")
        check_resume_flags(args, ckpt, exp / "model.pt", defaults)
        return ckpt
    if started and not args.overwrite:
        raise UserError(f"--exp-dir {exp} holds a run stopped before its first checkpoint "
                        f"({', '.join(existing) or 'no files'}); add --resume to start it afresh, --overwrite to "
                        f"replace it, or choose another --exp-dir{_replaced_hint(exp)}")
    if existing and not args.overwrite:
        raise UserError(f"--exp-dir {exp} already holds a run ({', '.join(existing)}); add --resume to "
                        "continue it, --overwrite to replace it, or choose another --exp-dir")
    return None


def _shown(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "on", False: "off", None: "unset"}[value]
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _resolved(values: dict, defaults: dict | None) -> dict:
    """``values`` with every None that ``defaults`` (dest -> function of all values) resolves replaced by the
    effective value, e.g. ``kd_weight`` None by the KD method's own weight."""
    return {**values, **{key: resolve(values) for key, resolve in (defaults or {}).items()
                         if key in values and values[key] is None}}


def check_resume_flags(args: argparse.Namespace, ckpt: dict, path: Path, defaults: dict | None = None) -> None:
    """A :class:`UserError` listing every flag outside :data:`MAY_CHANGE_ON_RESUME` whose effective value
    differs from the run's in ``path`` (architecture, optimiser, data, augmentation, precision, seed, KD):
    resuming with them would continue another run than the checkpoint's. Values are compared resolved, on both
    sides: ``defaults`` maps a flag whose default None stands for a value computed from the other flags to that
    computation (train_student_kd.py: ``--kd-weight`` -> the method's weight), so giving the default explicitly
    is no change."""
    recorded = ckpt.get("config")
    recorded = _resolved(recorded if isinstance(recorded, dict) else {}, defaults)
    now = _resolved(jsonable(args), defaults)
    # A run that recorded what its files hold has them compared by content (check_resume_content): a moved mask
    # or checkpoint is the same file, a replaced one under the same path is not.
    by_content = ("mask", *CHECKPOINT_FLAGS) if isinstance(recorded.get("content"), dict) else ()
    changed = [f"--{key.replace('_', '-')} {_shown(value)} (the run: {_shown(recorded[key])})"
               for key, value in now.items()
               if key not in (*_NOT_COMPARED, *by_content) and key in recorded and recorded[key] != value
               and not (key in ARCH_FLAGS and None in (value, recorded[key]))]
    if changed:
        raise UserError(f"--resume: {'; '.join(changed)} differ from the run in {path}; resume with its flags (see "
                        f"its config.json; only {flag_names(MAY_CHANGE_ON_RESUME)} may change), or start a "
                        "new run in another --exp-dir")


def check_resume_data(ckpt: dict, args: argparse.Namespace, train_slices: int, validation_slices: int) -> None:
    """A :class:`UserError` when --data-root now holds other slice counts than the resumed run trained on."""
    recorded = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    was = (recorded.get("train_slices"), recorded.get("validation_slices"))
    if None not in was and was != (train_slices, validation_slices):
        raise UserError(f"--resume: --data-root {args.data_root} has {train_slices} training / {validation_slices} "
                        f"validation slices at --acc {' '.join(args.acc)}, but the run in {args.exp_dir} had "
                        f"{was[0]} / {was[1]} (from {recorded.get('data_root')}); resume on the run's data")


def _mask_path(args: argparse.Namespace, acc: str) -> Path:
    """The mask file the run reads for ``acc``: its --mask, else {data-root}/mask_{acc}.npy."""
    given = dict(zip(args.acc, args.mask)) if args.mask else {}
    return Path(given.get(acc) or Path(args.data_root) / mask_name(acc))


def content_record(args: argparse.Namespace, image_size: tuple[int, int]) -> tuple[dict, str | None]:
    """What the run reads, by content (data/fingerprint.py), for config.json, --resume and evaluate.py: the
    SHA-256 of each acceleration's mask file and its sampling pattern (data/masks.mask_lines), the slices'
    (H, W), each split's files (name -> SHA-256, checked against split.json) and the SHA-256 of every
    checkpoint it loads (--teacher-checkpoint, --init-from-sft, --init-student). Also returns the note of
    :func:`data.fingerprint.data_listing` on data files split.json records no hash of."""
    data, note = data_listing(args.data_root, SPLITS_READ, args.acc)
    return {
        "masks": {acc: file_digest(_mask_path(args, acc)) for acc in args.acc},
        "mask_lines": {acc: mask_lines(load_mask(_mask_path(args, acc))) for acc in args.acc},
        "image_size": list(image_size),
        "data": data,
        "checkpoints": {flag: file_digest(getattr(args, flag)) for flag in CHECKPOINT_FLAGS
                        if getattr(args, flag, None) is not None},
    }, note


def check_resume_content(ckpt: dict, now: dict, args: argparse.Namespace) -> None:
    """A :class:`UserError` listing what the run reads now that has other content than when it started (see
    :func:`content_record`): a mask file prepared again, other data files under the same names, a replaced
    checkpoint. Runs that recorded no content are not checked."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    was = config.get("content")
    if not isinstance(was, dict):
        return
    changes = []
    for acc, digest in now["masks"].items():
        if was.get("masks", {}).get(acc, digest) != digest:
            changes.append(f"the {acc} mask {_mask_path(args, acc)} has other contents")
    for split, by_acc in now["data"].items():
        for acc, listing in by_acc.items():
            old = was.get("data", {}).get(split, {}).get(acc)
            differ = listing_changes(old, listing, acc_folder(Path(args.data_root), split, acc)) if isinstance(
                old, dict) else []
            if differ:
                changes.append(f"{acc_folder(Path(), split, acc).as_posix()}: {', '.join(differ)}")
    for flag, digest in now["checkpoints"].items():
        if was.get("checkpoints", {}).get(flag, digest) != digest:
            changes.append(f"--{flag.replace('_', '-')} {getattr(args, flag)} is another file than the run's "
                           "(other contents)")
    if changes:
        raise UserError(f"--resume: {'; '.join(changes)}, compared with what the run in {args.exp_dir} started "
                        "from; resume on the run's data and checkpoints, or start a new run in another --exp-dir")


def set_aside_old_run(exp: Path) -> bool:
    """Move an earlier run's files into ``exp/.replaced``; False if there were none.

    An ``exp/.replaced`` left by an --overwrite run stopped before its first model.pt still holds the last run
    with a checkpoint: it stays, and the stopped run's files (config.json, logs) go instead. Only a newer
    model.pt beside it (a run stopped between saving it and dropping ``.replaced``) makes it stale.
    """
    names = [name for name in OWN_FILES if (exp / name).exists()]
    if (exp / REPLACED).is_dir():
        if not (exp / "model.pt").exists():
            _remove(exp, names)
            return True
        shutil.rmtree(exp / REPLACED)
    if names:
        (exp / REPLACED).mkdir(parents=True)
        for name in names:
            os.replace(exp / name, exp / REPLACED / name)
    return bool(names)


def _remove(exp: Path, names) -> None:
    for name in names:
        path = exp / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def restore_old_run(exp: Path) -> None:
    """Undo a fresh run that failed before its first model.pt: drop its files and move the earlier ones that
    :func:`set_aside_old_run` parked (if any) back."""
    _remove(exp, OWN_FILES)
    if (exp / REPLACED).is_dir():
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
