"""The experiment folder: refusing or resuming an existing run, setting a replaced run aside, run metadata."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from data.fingerprint import data_listing, file_digest, listing_changes
from data.layout import acc_folder
from data.masks import load_mask, mask_lines
from models.checkpoints.io import RECORD, load_checkpoint
from models.training.config import DataConfig, TrainConfig
from utils import UserError

REPO = Path(__file__).resolve().parents[1]
OWN_FILES = ("model.pt", "best_model.pt", "config.json", "summary", RECORD)
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "batch_in_epoch", "global_step", "best_val_loss")
# An --overwrite run parks the run it replaces here until it has saved its own first model.pt.
REPLACED = ".replaced"


# Common settings that do not change what a run computes, so --resume accepts new values (listed in --help): how
# long, how fast, where, what is logged. A moved or copied --data-root is accepted when its slice counts are the
# run's (check_resume_data). A script adds its own in its ResumeRules.
MAY_CHANGE_ON_RESUME = ("epochs", "num_workers", "preload", "device", "memory_format", "save_every_iters",
                        "log_every", "image_every", "no_progress", "data_root")
# image, kspace and (multi-coil data) coils, maps and coil_source are read from the data, not given: resume compares
# the network's image type and the coils with the data's.
_NOT_COMPARED = (*MAY_CHANGE_ON_RESUME, "exp_dir", "resume", "overwrite", "image", "kspace", "coils", "maps",
                 "coil_source")
SPLITS_READ = ("train", "validation")


def flag_names(dests) -> str:
    """``--epochs, --num-workers, ...`` for argparse ``dest`` names."""
    return ", ".join(f"--{dest.replace('_', '-')}" for dest in dests)


def _replaced_hint(exp: Path) -> str:
    if not (exp / REPLACED).is_dir():
        return ""
    return (f"; {exp / REPLACED} holds the run an interrupted --overwrite set aside, kept until a new run in "
            f"{exp} saves model.pt: to get it back, move its files back into {exp} (replacing what is there)")


def prepare_exp_dir(config: TrainConfig) -> dict | None:
    """Check --exp-dir against --resume / --overwrite; return the checkpoint to resume from (its settings checked
    by :func:`check_resume_config`), if any.

    Nothing is deleted here: an --overwrite run sets the old files aside once its own setup succeeded and
    deletes them only after saving its first model.pt (see :func:`set_aside_old_run`), so a refused or failed
    run never costs the previous one. A run stopped before its first model.pt (only config.json and logs) is
    started afresh by --resume.
    """
    run = config.run
    exp = run.exp_dir
    if run.resume and run.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if exp.exists() and not exp.is_dir():
        raise UserError(f"--exp-dir {exp} is a file, not a folder")
    existing = [name for name in OWN_FILES if (exp / name).exists()]
    started = not (exp / "model.pt").exists() and (existing or (exp / REPLACED).is_dir())
    if run.resume:
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
        check_resume_config(config, ckpt, exp / "model.pt")
        return ckpt
    if started and not run.overwrite:
        raise UserError(f"--exp-dir {exp} holds a run stopped before its first checkpoint "
                        f"({', '.join(existing) or 'no files'}); add --resume to start it afresh, --overwrite to "
                        f"replace it, or choose another --exp-dir{_replaced_hint(exp)}")
    if existing and not run.overwrite:
        raise UserError(f"--exp-dir {exp} already holds a run ({', '.join(existing)}); add --resume to "
                        "continue it, --overwrite to replace it, or choose another --exp-dir")
    return None


def _shown(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "on", False: "off", None: "unset"}[value]
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _resolved(values: dict, resolve) -> dict:
    """``values`` with every None that ``resolve`` (key -> function of all values) resolves replaced by the
    effective value, e.g. ``kd_weight`` None by the KD method's own weight."""
    return {**values, **{key: fn(values) for key, fn in resolve.items() if key in values and values[key] is None}}


def check_resume_config(config: TrainConfig, ckpt: dict, path: Path) -> None:
    """A :class:`UserError` listing every entry of ``config``'s record (:meth:`TrainConfig.record`) that differs
    from the run's in ``path`` (architecture, optimiser, data, augmentation, precision, seed, KD), outside the
    common :data:`MAY_CHANGE_ON_RESUME` and the script's own ``rules.may_change``: resuming with them would
    continue another run than the checkpoint's. Values are compared resolved on both sides (``rules.resolve``),
    so giving a default explicitly is no change; entries in ``rules.network_own`` with None on either side are
    compared through the architecture they build (Trainer.resume_from), and a run that recorded what its files
    hold has its mask and checkpoint files compared by content instead (:func:`check_resume_content`)."""
    rules = config.rules
    recorded = ckpt.get("config")
    recorded = _resolved(recorded if isinstance(recorded, dict) else {}, rules.resolve)
    now = _resolved(config.record(), rules.resolve)
    may_change = (*MAY_CHANGE_ON_RESUME, *rules.may_change)
    # A moved mask or checkpoint is the same file, a replaced one under the same path is not.
    by_content = ("mask", *config.checkpoints) if isinstance(recorded.get("content"), dict) else ()
    changed = [f"--{key.replace('_', '-')} {_shown(value)} (the run: {_shown(recorded[key])})"
               for key, value in now.items()
               if key not in (*_NOT_COMPARED, *rules.may_change, *by_content) and key in recorded
               and recorded[key] != value and not (key in rules.network_own and None in (value, recorded[key]))]
    if changed:
        raise UserError(f"--resume: {'; '.join(changed)} differ from the run in {path}; resume with its flags (see "
                        f"its config.json; only {flag_names(may_change)} may change), or start a new run in "
                        "another --exp-dir")


def check_resume_data(ckpt: dict, config: TrainConfig, train_slices: int, validation_slices: int) -> None:
    """A :class:`UserError` when --data-root now holds other slice counts than the resumed run trained on."""
    recorded = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    was = (recorded.get("train_slices"), recorded.get("validation_slices"))
    if None not in was and was != (train_slices, validation_slices):
        raise UserError(f"--resume: --data-root {config.data.data_root} has {train_slices} training / "
                        f"{validation_slices} validation slices at --acc {' '.join(config.data.acc)}, but the run in "
                        f"{config.run.exp_dir} had {was[0]} / {was[1]} (from {recorded.get('data_root')}); resume "
                        "on the run's data")


def content_record(data: DataConfig, checkpoints: dict, image_size: tuple[int, int]) -> tuple[dict, str | None]:
    """What the run reads, by content (data/fingerprint.py), for config.json, --resume and evaluate.py: the
    SHA-256 of each acceleration's mask file and its sampling pattern (data/masks.mask_lines), the slices'
    (H, W), each split's files (name -> SHA-256, checked against split.json) and ``checkpoints``, the SHA-256 of
    every checkpoint it loads (by the setting that names it; the script hashes what it reads). Also returns the
    note of :func:`data.fingerprint.data_listing` on data files split.json records no hash of."""
    listing, note = data_listing(data.data_root, SPLITS_READ, list(data.acc))
    return {
        "masks": {acc: file_digest(data.mask_path(acc)) for acc in data.acc},
        "mask_lines": {acc: mask_lines(load_mask(data.mask_path(acc))) for acc in data.acc},
        "image_size": list(image_size),
        "data": listing,
        "checkpoints": dict(checkpoints),
    }, note


def check_resume_content(ckpt: dict, now: dict, config: TrainConfig) -> None:
    """A :class:`UserError` listing what the run reads now that has other content than when it started (see
    :func:`content_record`): a mask file prepared again, other data files under the same names, a replaced
    checkpoint. Runs that recorded no content are not checked."""
    recorded = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    was = recorded.get("content")
    if not isinstance(was, dict):
        return
    changes = []
    for acc, digest in now["masks"].items():
        if was.get("masks", {}).get(acc, digest) != digest:
            changes.append(f"the {acc} mask {config.data.mask_path(acc)} has other contents")
    for split, by_acc in now["data"].items():
        for acc, listing in by_acc.items():
            old = was.get("data", {}).get(split, {}).get(acc)
            differ = listing_changes(old, listing, acc_folder(Path(config.data.data_root), split, acc)) if isinstance(
                old, dict) else []
            if differ:
                changes.append(f"{acc_folder(Path(), split, acc).as_posix()}: {', '.join(differ)}")
    for key, digest in now["checkpoints"].items():
        if was.get("checkpoints", {}).get(key, digest) != digest:
            changes.append(f"--{key.replace('_', '-')} {config.settings.get(key)} is another file than the run's "
                           "(other contents)")
    if changes:
        raise UserError(f"--resume: {'; '.join(changes)}, compared with what the run in {config.run.exp_dir} "
                        "started from; resume on the run's data and checkpoints, or start a new run in another "
                        "--exp-dir")


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


def drop_replaced_run(exp: Path) -> None:
    """Delete the run :func:`set_aside_old_run` parked, once the new run has saved its own model.pt."""
    shutil.rmtree(exp / REPLACED, ignore_errors=True)
