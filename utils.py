"""Shared helpers every layer needs, one section per job: errors and the CLI entry (one-line user errors, the
CLI entry with ``--debug``, the one sanitiser of printed text, clean_text), seeding and RNG state, the machine a
figure comes from, CSV text. Files written whole or not at all (locks, atomic files, staged swaps) are
data/outputs.py's."""
from __future__ import annotations

import argparse
import csv
import errno
import io
import os
import platform
import random
import re
import stat
import sys
import unicodedata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


# --------------------------------------------------------------------------- errors and the CLI entry

DEBUG_ENV = "SFTKD_DEBUG"


class UserError(Exception):
    """A problem with the user's input (file, flag, data) that is reported as one line, exit code 2."""


class CliParser(argparse.ArgumentParser):
    """argparse that reports errors as one line, ``error: ... (see PROG --help)``, and exit code 2, and lists
    ``--debug`` (which :func:`run_cli` acts on) in every tool's ``--help``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # SUPPRESS keeps it out of the parsed flags (and so out of config.json): run_cli consumes it first.
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help=f"show the full traceback instead of a one-line error (or set {DEBUG_ENV}=1)")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, then a refusal of any argument holding a control character (a newline, an escape code):
        paths and names are printed and become file names, and must not forge a line or drive the terminal."""
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            values = getattr(parsed, action.dest, None) if action.option_strings or action.dest else None
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, (str, Path)) and clean_text(value, None) != str(value):
                    flag = "/".join(action.option_strings[:1]) or action.dest
                    self.error(f"argument {flag}: {clean_text(value, 120)!s} holds a control character (shown "
                               "escaped: a newline, tab or escape code); give it without")
        return parsed, extras

    def error(self, message: str):
        for action, visible in self._renamed():
            message = message.replace("/".join(action.option_strings), "/".join(visible))
        self.exit(2, f"error: {clean_text(message, None)} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        renamed = list(self._renamed())
        for action, visible in renamed:
            action.option_strings, action.all_spellings = visible, action.option_strings
        try:
            return super().format_help()
        finally:
            for action, _ in renamed:
                action.option_strings = action.all_spellings

    def _renamed(self):
        """(action, its current spellings) for every flag with old spellings (see :func:`old_spellings`)."""
        for action in self._actions:
            old = getattr(action, "old_spellings", ())
            if old:
                yield action, [s for s in action.option_strings if s not in old]


def old_spellings(action: argparse.Action, *names: str) -> argparse.Action:
    """Mark ``names`` (given to ``add_argument`` after the current spelling) as old spellings of a renamed
    flag: still accepted, left out of ``--help`` and of error messages."""
    action.old_spellings = names
    return action


def clean_text(text: str, limit: int | None = 200) -> str:
    """``text`` safe to print: every control or other unprintable character (Unicode category C) shown as its
    Python escape, so a newline becomes ``\\n`` and an escape code ``\\x1b[2J``: nothing from a user or a file
    can start a line of its own (a fake ``error:``) or move the terminal's cursor. Cut to ``limit``
    characters (None: whole). The one sanitiser: run_cli passes every error line through it, and text read from
    files (run names, attributes, lock contents) goes through it before it is printed or stored."""
    escaped = "".join(repr(c)[1:-1] if unicodedata.category(c)[0] == "C" else c for c in str(text))
    return escaped if limit is None else escaped[:limit]


def format_bytes(nbytes: int | float) -> str:
    """A size for messages, in the largest binary unit that keeps it at 1 or more: ``"0 B"``, ``"140.0 KiB"``,
    ``"1.5 MiB"``, ``"37.3 GiB"`` (so nothing reads "0.0 MiB")."""
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def machine_memory() -> int:
    """Bytes of memory this process may use: the smaller of the machine's RAM and a cgroup (container) limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_fits_memory(nbytes: int | float, what: str, fix: str) -> None:
    """A :class:`UserError` naming ``what`` and the estimate when ``nbytes`` exceeds :func:`machine_memory`:
    asked before an allocation that would otherwise end in an allocator traceback or the OOM killer."""
    available = machine_memory()
    if nbytes > available:
        raise UserError(f"{what} needs about {format_bytes(nbytes)} of memory, more than this machine's "
                        f"{format_bytes(available)}; {fix}")


def clean_lines(text: str) -> str:
    """:func:`clean_text` of every line of ``text``, whole, its line breaks kept: for a table or report that is
    printed or written and quotes names read from files."""
    return "\n".join(clean_text(line, None) for line in str(text).split("\n"))


def not_a_file(path: Path) -> str:
    """What ``path`` is when it is not a regular file, for an error: ``"does not exist"``, ``"is a FIFO (named
    pipe), not a file"``, ``"is a folder, not a file"``, ``"is a broken link"``, ..."""
    if not os.path.lexists(path):
        return "does not exist"
    if not path.exists():
        return "is a broken link"
    mode = path.stat().st_mode
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return f"is {next((name for test, name in kinds if test(mode)), 'not a regular file')}, not a file"


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line
    errors that quote a library's reason."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


# The last line of a formatted traceback: "module.ExceptionType: message".
_TRACEBACK_LAST_LINE = re.compile(r"^[\w.]+: (.*)$")


def _one_line(exc: UserError) -> str:
    """The message of ``exc``; for one re-raised by a DataLoader worker, the worker's own message.

    torch re-raises a worker's exception as a new one of the same type (so it is still a :class:`UserError`)
    whose message is ``Caught <type> in DataLoader worker process N.`` plus the worker's formatted traceback:
    the original object is gone and that text is all there is. The user needs only its last line. Should
    torch change the wording, the whole message is printed: longer, never wrong.
    """
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        match = _TRACEBACK_LAST_LINE.match(text.splitlines()[-1])
        text = match.group(1) if match else text
    return text


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a CLI ``main`` and turn a :class:`UserError` into ``error: ...`` on stderr and exit code 2.

    ``--debug`` on the command line or ``SFTKD_DEBUG=1`` in the environment re-raises instead, so
    developers see the traceback.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        main(args)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {clean_text(_one_line(exc), limit=None)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        # A path the user gave (an --out under a file, a folder that cannot be made), a full disk or missing
        # permissions are the user's to fix, not bugs: say which file. Other errors naming no file stay tracebacks.
        if debug or (exc.filename is None and exc.errno not in _ENVIRONMENT_ERRNOS):
            raise
        print(f"error: {clean_text(os_error_message(exc), limit=None)}", file=sys.stderr)
        sys.exit(2)


# A full disk or a read-only mount, even where the error names no file (e.g. a failed flush).
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS)
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space, then rerun", errno.EDQUOT: "free space, then rerun",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.EROFS: "choose a path on a writable file system",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EEXIST: "something is already in the way there; choose another path",
    errno.EISDIR: "it is a folder; give a file path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def refuse_to_overwrite(path: Path, overwrite: bool, other: str, flag: str = "") -> None:
    """Unless ``--overwrite`` was given, a :class:`UserError` when ``path`` exists: ``[{flag} ]{path} already
    exists; pass --overwrite to replace it or choose another {other}``."""
    if path.exists() and not overwrite:
        named = f"{flag} {path}" if flag else str(path)
        raise UserError(f"{named} already exists; pass --overwrite to replace it or choose another {other}")


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: ``<reason>: <file> (<what to do>)``."""
    reason = exc.strerror or first_line(exc)
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{reason}{where} ({_OS_ERROR_FIXES.get(exc.errno, 'check the path, then rerun')})"




# --------------------------------------------------------------------------- argparse types shared by the tools
# One type per concept, so every tool accepts and refuses the same values with the same words.

def seed_type(text: str) -> int:
    """``--seed``: a whole number NumPy can seed with (0 .. 2**32 - 1)."""
    try:
        return check_seed(int(text))
    except (ValueError, SeedError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed; use a whole number from 0 to {2 ** 32 - 1}") \
            from exc


# --------------------------------------------------------------------------- seeding and RNG state

class SeedError(UserError):
    """A seed NumPy cannot take."""


def check_seed(seed: int) -> int:
    """``seed`` itself when it fits NumPy's 0 .. 2**32 - 1, else :class:`SeedError`."""
    if not 0 <= seed < 2 ** 32:
        raise SeedError(f"seed {seed} is out of range; use a whole number from 0 to {2 ** 32 - 1}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device); ``seed`` must fit NumPy's 0..2**32-1."""
    random.seed(check_seed(seed))
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain values and tensors (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"],
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the machine a figure comes from

# Environment variables that cap the vector ISA of ATen's kernels and of oneDNN's convolutions: a run under them
# approximates another CPU kind, and its figures say so.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def machine() -> dict:
    """The machine this process computes on, as JSON-able strings and ints: ``cpu`` (model name, family and
    model numbers from /proc/cpuinfo), ``cores`` (those this process may use), ``isa`` (the vector ISA ATen
    dispatches to, ``torch.backends.cpu.get_cpu_capability()``, plus AMX where the CPU has it), ``caps`` (the
    ISA caps of :data:`ISA_CAPS` that are set), ``torch`` (version and build, e.g. ``2.13.0+cpu``),
    ``threads`` (``torch.get_num_threads()``) and, with a visible GPU, ``gpu`` (name, CUDA and cuDNN).

    Float results depend on all of these (a kernel's ISA and blocking change the rounding), so every table of
    trained results and every timing records them: :func:`describe_machine` is their one-line form."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    amx = "amx_tile" in fields.get("flags", "").split()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": cores, "isa": torch.backends.cpu.get_cpu_capability() + (" + AMX" if amx else ""),
            "caps": " ".join(f"{name}={os.environ[name]}" for name in ISA_CAPS if os.environ.get(name)),
            "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = (f"{props.name} ({props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}, "
                       f"cuDNN {torch.backends.cudnn.version()}")
    return info


def describe_machine(info: dict) -> str:
    """One line for a :func:`machine` record, e.g. ``"AMD EPYC (family 25, model 1), 2 cores, ISA AVX2,
    torch 2.13.0+cpu, 1 thread"``; fields a record lacks are left out. The record is read from files
    (checkpoints, summary.json): every field goes through :func:`clean_text`."""
    info = {key: clean_text(value) if isinstance(value, str) else value for key, value in info.items()}
    parts = [str(info.get("cpu", "unknown CPU"))]
    if info.get("cores"):
        parts.append(f"{info['cores']} cores")
    if info.get("isa"):
        parts.append(f"ISA {info['isa']}" + (f" (capped: {info['caps']})" if info.get("caps") else ""))
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    if info.get("threads"):
        parts.append(f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}")
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    return ", ".join(parts)


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV text of ``rows`` (one dict per row); ``columns`` default to the union of the rows' keys in
    first-seen order. Floats keep full precision, so means recomputed from the file match."""
    columns = list(dict.fromkeys(key for row in rows for key in row)) if columns is None else columns
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
