"""Every output written whole or not at all, in one place: one run per folder (an advisory lock), atomic files
(written beside their target and renamed over it), and for output folders a tool owns only in part, the
manifest of the files it wrote and the crash-safe swap of a complete staged tree for the files of the tool's
previous run (data/prepare.py's --out-dir, evaluate.py's, scripts/report.py's).

The swap is a sequence of renames inside one folder, recorded on disk as it goes: the staged tree is first
renamed to ``{out}/.swap-new`` (from then on the new run is committed), the previous run's files (those its
``manifest.json`` lists, the manifest last) are moved into ``{out}/.swap-old``, the new files are moved into
place (their manifest last), and only then does ``.swap-old`` go. A run killed anywhere in between leaves
enough on disk for :func:`finish_swap`, called by the next run under the folder's lock, to complete it;
files the manifests do not list are never moved or deleted.

Several tools may share a folder (scripts/report.py writes its tables beside evaluation folders and
data): each names its own manifest (``manifest``, default ``manifest.json``; report.py's is
``report_manifest.json``) and so gets swap folders of its own, and never moves another tool's files.
:func:`staged` wraps the whole sequence for a tool that writes a few files.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from utils import UserError, clean_text, format_bytes, os_error_message, refuse_to_overwrite

MANIFEST = "manifest.json"
NEW, OLD = ".swap-new", ".swap-old"


def swap_dirs(manifest: str = MANIFEST) -> tuple[str, str]:
    """The names of the swap folders of the tool whose manifest is ``manifest``: :data:`NEW`, :data:`OLD` for
    the default one, ``.swap-new-{name}`` / ``.swap-old-{name}`` for others."""
    if manifest == MANIFEST:
        return NEW, OLD
    stem = Path(manifest).stem
    return f"{NEW}-{stem}", f"{OLD}-{stem}"


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


def owned_files(out: Path, manifest: str = MANIFEST) -> list[str] | None:
    """The files the previous run wrote in ``out`` (relative paths), or None when ``out`` has no manifest."""
    return _files(out / manifest) if (out / manifest).is_file() else None


def new_files(stage: Path) -> list[str]:
    """The files of a staged tree, as relative paths."""
    return sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if not p.is_dir())


def check_replaceable(out: Path, files: list[str], owned: list[str], layout: list[str], flag: str,
                      manifest: str = MANIFEST) -> None:
    """Refuse the swap before anything moves when a file the previous run did not write (not in ``owned``) is
    where the new run writes one of ``files``, or inside one of its ``layout`` folders (e.g. ``train``), where
    readers of the folder would take it for the tool's own."""
    owned_set = set(owned) | {manifest}
    foreign = sorted(rel for rel in files if (out / rel).exists() and rel not in owned_set)
    for folder in layout:
        if (out / folder).is_dir():
            foreign += sorted(p.relative_to(out).as_posix() for p in (out / folder).rglob("*")
                              if not p.is_dir() and p.relative_to(out).as_posix() not in owned_set)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{flag} {out} holds files this tool did not write ({shown}) where its output goes; move "
                        f"them away or choose another {flag}")


def swap_in(out: Path, stage: Path, owned: list[str], manifest: str = MANIFEST, record: dict | None = None) -> None:
    """Replace the files ``owned`` (the previous run's, relative to ``out``) by the complete tree ``stage``
    (a folder inside ``out``), crash-safely; writes the new ``manifest``, with the JSON-able ``record`` (how the
    files were made) beside its file list."""
    write_json(stage / manifest, {"files": new_files(stage), **(record or {})})
    if owned and not (out / manifest).is_file():
        # An older run that wrote no manifest: record what it owns, so an interrupted swap can be finished.
        write_json(out / manifest, {"files": owned})
    os.replace(stage, out / swap_dirs(manifest)[0])
    finish_swap(out, manifest)


def clean_up(out: Path, stage_prefix: str, manifest: str = MANIFEST) -> bool:
    """Finish a swap a killed run began in ``out`` and delete the staging folders (``{stage_prefix}*``) killed
    runs left there; True when a swap was finished. Only safe holding ``out``'s lock (data.outputs.folder_lock)."""
    finished = finish_swap(out, manifest)
    for stage in sorted(out.glob(f"{stage_prefix}*")):
        shutil.rmtree(stage) if stage.is_dir() and not stage.is_symlink() else stage.unlink()
    return finished


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def finish_swap(out: Path, manifest: str = MANIFEST) -> bool:
    """Complete a swap :func:`swap_in` began (it may have been killed at any rename); False if none began."""
    new, old = (out / name for name in swap_dirs(manifest))
    if not new.is_dir():
        return False
    if (new / manifest).is_file():
        if (out / manifest).is_file():
            # The previous run's files are still (partly) in place: move the rest aside, its manifest last.
            for rel in _files(out / manifest):
                if (out / rel).exists() or (out / rel).is_symlink():
                    _move(out / rel, old / rel)
            _move(out / manifest, old / manifest)
        for rel in _files(new / manifest):
            if (new / rel).exists():
                _move(new / rel, out / rel)
        _move(new / manifest, out / manifest)
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


@contextmanager
def staged(out: Path, flag: str, stage_prefix: str, manifest: str, overwrite: bool,
           record: dict | None = None) -> Iterator[Path]:
    """Hold ``out``'s lock and yield a fresh staging folder inside it for the tool to write its files into. When
    the block succeeds, they replace the previous run's files (those ``manifest`` lists; for a run older than
    the manifest, same-named files) in one crash-safe swap; when it fails, ``out`` is as it was, so a plain
    rerun works. Without ``overwrite`` a file already where one of the new ones goes is refused, naming it.
    ``record``, a dict the block may fill, goes into the manifest beside the file list (:func:`swap_in`)."""
    with folder_lock(out, flag):
        clean_up(out, stage_prefix, manifest)
        stage = Path(tempfile.mkdtemp(prefix=stage_prefix, dir=out))
        try:
            yield stage
            files = new_files(stage)
            for rel in files:
                refuse_to_overwrite(out / rel, overwrite, flag)
            owned = owned_files(out, manifest)
            if owned is None:
                owned = [rel for rel in files if (out / rel).is_file()]
            check_replaceable(out, files, owned, [], flag, manifest)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        swap_in(out, stage, owned, manifest, record)


# --------------------------------------------------------------------------- one run per folder

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        return clean_text(path.read_text().strip()) or "an unknown process"
    except OSError:
        return "an unknown process"


@contextmanager
def folder_lock(folder: str | Path, flag: str) -> Iterator[None]:
    """Hold an advisory lock on ``folder`` (``{folder}/.lock``, created with the folder if missing) while the
    block runs; another run holding it is a :class:`UserError` naming its process and host.

    ``flock`` is released by the kernel when its holder dies, so a lock file left by a killed run is simply
    taken over (with a warning). Folders this created are removed again if the block leaves them empty.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file; choose a folder")
    if folder.resolve() == Path(folder.resolve().anchor):
        raise UserError(f"{flag} {folder} is the file system's root; give the outputs a folder of their own")
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {folder} cannot be created: {os_error_message(exc)}") from exc
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{flag} {folder} is in use by another run ({_holder(path)}); wait for it to finish "
                            f"or choose another {flag}") from None
        # The previous holder unlinks the file on release: a lock on an unlinked file would lock nothing.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:
            print(f"warning: {flag} {folder}: took over the lock of {clean_text(previous)}, which ended without "
                  "releasing it (killed?)", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        for made in created:
            if made.is_dir() and not any(made.iterdir()):
                made.rmdir()


# --------------------------------------------------------------------------- atomic files

def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(fileobj)`` so that a crash never leaves a half-written file.

    The data goes to a temporary file in the same directory, is flushed and fsynced, and is then renamed
    over ``path`` (atomic on POSIX): readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Free space to ask beyond an HDF5 file's arrays: its superblock, object headers, attributes and page buffer,
# whose failing flush on a full disk crashes h5py instead of raising.
HDF5_MARGIN = 1 << 20


def check_free_space(path: str | Path, nbytes: int) -> None:
    """An ``OSError`` (ENOSPC) naming ``path`` and the space needed when its file system has less than
    ``nbytes`` free: asked before writes whose library fails badly on a full disk (h5py can crash the process,
    torch.save reports "unexpected pos")."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    free = usage.free
    # A pseudo file system (/proc, /sys) reports no size at all: the write itself then gives the true error.
    if usage.total > 0 and free < nbytes:
        raise OSError(errno.ENOSPC, f"No space left on device: {format_bytes(nbytes)} needed, "
                                    f"{format_bytes(free)} free", str(path))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"), mode="w")


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda f: f.write(text), mode="w")
