"""Output folders a tool owns only in part: the manifest of the files it wrote, and the crash-safe swap of a
complete staged tree for the files of the tool's previous run (data/prepare.py's --out-dir, evaluate.py's).

The swap is a sequence of renames inside one folder, recorded on disk as it goes: the staged tree is first
renamed to ``{out}/.swap-new`` (from then on the new run is committed), the previous run's files (those its
``manifest.json`` lists, the manifest last) are moved into ``{out}/.swap-old``, the new files are moved into
place (their manifest last), and only then does ``.swap-old`` go. A run killed anywhere in between leaves
enough on disk for :func:`finish_swap`, called by the next run under the folder's lock, to complete it;
files the manifests do not list are never moved or deleted.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from utils import UserError, write_json

MANIFEST = "manifest.json"
NEW, OLD = ".swap-new", ".swap-old"


def _files(manifest: Path) -> list[str]:
    """The relative paths (``/``-separated) a manifest lists; a manifest that is not one is an error."""
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{manifest} is damaged, so which files the earlier run wrote is unknown; restore it or "
                        "move the folder's contents away by hand") from exc
    if not isinstance(files, list) or not all(_safe(f) for f in files):
        raise UserError(f"{manifest} lists paths outside its folder; restore it or move the folder's contents "
                        "away by hand")
    return files


def _safe(rel) -> bool:
    return isinstance(rel, str) and bool(rel) and not rel.startswith("/") and ".." not in rel.split("/")


def owned_files(out: Path) -> list[str] | None:
    """The files the previous run wrote in ``out`` (relative paths), or None when ``out`` has no manifest."""
    return _files(out / MANIFEST) if (out / MANIFEST).is_file() else None


def new_files(stage: Path) -> list[str]:
    """The files of a staged tree, as relative paths."""
    return sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if not p.is_dir())


def check_replaceable(out: Path, files: list[str], owned: list[str], layout: list[str], flag: str) -> None:
    """Refuse the swap before anything moves when a file the previous run did not write (not in ``owned``) is
    where the new run writes one of ``files``, or inside one of its ``layout`` folders (e.g. ``train``), where
    readers of the folder would take it for the tool's own."""
    owned_set = set(owned) | {MANIFEST}
    foreign = sorted(rel for rel in files if (out / rel).exists() and rel not in owned_set)
    for folder in layout:
        if (out / folder).is_dir():
            foreign += sorted(p.relative_to(out).as_posix() for p in (out / folder).rglob("*")
                              if not p.is_dir() and p.relative_to(out).as_posix() not in owned_set)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{flag} {out} holds files this tool did not write ({shown}) where its output goes; move "
                        f"them away or choose another {flag}")


def swap_in(out: Path, stage: Path, owned: list[str]) -> None:
    """Replace the files ``owned`` (the previous run's, relative to ``out``) by the complete tree ``stage``
    (a folder inside ``out``), crash-safely; writes the new ``manifest.json``."""
    write_json(stage / MANIFEST, {"files": new_files(stage)})
    if owned and not (out / MANIFEST).is_file():
        # An older run that wrote no manifest: record what it owns, so an interrupted swap can be finished.
        write_json(out / MANIFEST, {"files": owned})
    os.replace(stage, out / NEW)
    finish_swap(out)


def clean_up(out: Path, stage_prefix: str) -> bool:
    """Finish a swap a killed run began in ``out`` and delete the staging folders (``{stage_prefix}*``) killed
    runs left there; True when a swap was finished. Only safe holding ``out``'s lock (utils.folder_lock)."""
    finished = finish_swap(out)
    for stage in sorted(out.glob(f"{stage_prefix}*")):
        shutil.rmtree(stage) if stage.is_dir() and not stage.is_symlink() else stage.unlink()
    return finished


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def finish_swap(out: Path) -> bool:
    """Complete a swap :func:`swap_in` began (it may have been killed at any rename); False if none began."""
    new, old = out / NEW, out / OLD
    if not new.is_dir():
        return False
    if (new / MANIFEST).is_file():
        if (out / MANIFEST).is_file():
            # The previous run's files are still (partly) in place: move the rest aside, its manifest last.
            for rel in _files(out / MANIFEST):
                if (out / rel).exists() or (out / rel).is_symlink():
                    _move(out / rel, old / rel)
            _move(out / MANIFEST, old / MANIFEST)
        for rel in _files(new / MANIFEST):
            if (new / rel).exists():
                _move(new / rel, out / rel)
        _move(new / MANIFEST, out / MANIFEST)
    if old.is_dir():
        _prune(out, [p.relative_to(old).as_posix() for p in old.rglob("*") if not p.is_dir()])
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)
    return True


def _prune(out: Path, moved: list[str]) -> None:
    """Remove folders of ``out`` that held only the previous run's files (e.g. ``train/acc_8x``)."""
    folders = {parent for rel in moved for parent in Path(rel).parents if parent != Path(".")}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        path = out / folder
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
