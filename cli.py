"""The error boundary of every tool: one-line user errors, the CLI entry (``--debug``), shared argparse types."""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from typing import Any, Callable

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

    def error(self, message: str):
        for action, visible in self._renamed():
            message = message.replace("/".join(action.option_strings), "/".join(visible))
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

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


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line
    errors that quote a library's reason."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def _one_line(exc: UserError) -> str:
    """The message of ``exc``; for one re-raised by a DataLoader worker, the worker's own message.

    torch re-raises a worker's exception with the message ``Caught UserError in DataLoader worker process 0.``
    followed by the worker's whole traceback; the user needs only its last line, the original message.
    """
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
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
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        # A path the user gave (an --out under a file, a folder that cannot be made), a full disk or missing
        # permissions are the user's to fix, not bugs: say which file. Other errors naming no file stay tracebacks.
        if debug or (exc.filename is None and exc.errno not in _ENVIRONMENT_ERRNOS):
            raise
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
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


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: ``<reason>: <file> (<what to do>)``."""
    reason = exc.strerror or first_line(exc)
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{reason}{where} ({_OS_ERROR_FIXES.get(exc.errno, 'check the path, then rerun')})"




# --------------------------------------------------------------------------- argparse types shared by the tools
# One type per concept, so every tool accepts and refuses the same values with the same words.

def acc_type(text: str) -> str:
    """``--acc``: an acceleration name such as ``4x`` or ``6.5x`` (kept as the name)."""
    from data.masks import AccelerationError, parse_acc
    try:
        parse_acc(text)
    except AccelerationError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def seed_type(text: str) -> int:
    """``--seed``: a whole number NumPy can seed with (0 .. 2**32 - 1)."""
    from rng import SeedError, check_seed
    try:
        return check_seed(int(text))
    except (ValueError, SeedError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed; use a whole number from 0 to {2 ** 32 - 1}") \
            from exc


def weight_type(text: str) -> float:
    """A loss weight: a finite number >= 0 (0 turns the term off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0 (0 turns the term off)")
    return value
