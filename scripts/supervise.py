"""Process supervision for the benchmark and the GPU check: a run-wide deadline, per-block time limits with a
watchdog, child processes that stream to a log and are killed on their limit, and the report that turns every
result or failure into a table cell or note (rewritten as it goes, so a run cut short still leaves a table)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from utils import clean_lines

ROOT = Path(__file__).resolve().parents[1]
STUCK_GRACE_S = 30  # after a block's limit, how long a call that never returns to Python gets before its part ends


class Overran(Exception):
    """A step, wait or part that ran past its limit."""


class Deadline:
    """The whole run's ``--time-limit``: every wait gets the smaller of its own limit and the time left."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def limit(self, own: float) -> float:
        left = self.left()
        if left <= 0:
            raise Overran("not run: the --time-limit of the whole run was spent")
        return min(own, left)


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`Overran` in the block after ``seconds`` (SIGALRM, so main thread only).

    This ends a step that sleeps or is far slower than it should be; a CUDA call that never returns cannot be
    interrupted from Python, and is why the check runs each part as its own process with a limit."""
    def expire(signum, frame):
        raise Overran(f"over its {seconds:.0f} s limit")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(text: str, chars: int = 600) -> str:
    """The end of a log as one line (markdown notes and table cells cannot hold line breaks or pipes)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " // ".join(lines)[-chars:].replace("|", "/")


def child_env(threads: int | None) -> dict:
    # Unbuffered: a child's output is a file, which Python would buffer by 8 KB and lose when the child is killed.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class Child:
    """A subprocess whose stdout and stderr stream to ``log`` as it writes them (never to an unread pipe, which
    blocks a child once it fills), in its own process group so its DataLoader workers die with it.

    The peak RSS is the child's own VmHWM, polled from /proc while waiting: getrusage's ru_maxrss of a child
    also counts the pages it inherited from this (large) benchmark process before exec."""

    def __init__(self, command: list[str], log: Path, threads: int | None = None):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log, self.peak_kb = log, 0
        self.start = time.perf_counter()
        with open(log, "w") as handle:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(command, cwd=ROOT, env=child_env(threads), stdin=subprocess.DEVNULL,
                                         stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, limit: float, until: Callable[[], bool] | None = None) -> bool:
        """Wait for the exit (or for ``until()``) at most ``limit`` seconds; False if that time ran out."""
        end = time.perf_counter() + limit
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.poll() is None and not (until is not None and until()):
            if time.perf_counter() > end:
                return False
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return True

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def run(self, limit: float) -> None:
        """Wait for the exit within ``limit``, killing it after that; raises :class:`Overran` or RuntimeError
        (with the log's tail) unless it exited 0."""
        if not self.wait(limit):
            self.kill()
            raise Overran(f"over its {limit:.0f} s limit, killed; log {self.log}: {self.tail()}")
        if self.proc.returncode != 0:
            raise RuntimeError(f"exit {self.proc.returncode}; log {self.log}: {self.tail()}")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def tail(self, chars: int = 600) -> str:
        return one_line(self.log.read_text(errors="replace"), chars)


class Report:
    """Collects the results, prints them as they come and writes one markdown table (rewritten after every cell
    and note, so a run cut short still leaves what it measured) and the same as report.json, which the check
    merges from its parts. ``columns``: the table's columns, key -> heading (the benchmark's precisions)."""

    def __init__(self, header: str, columns: dict[str, str], out: Path | None):
        self.header, self.columns, self.out = header, columns, out
        self.notes: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.failed = False

    def note(self, text: str, failed: bool = False) -> None:
        print(text, flush=True)
        self.notes.append(" ".join(text.split()))
        self.failed |= failed
        self.write()

    def cell(self, row: str, precision: str, text: str) -> None:
        print(f"{row:<42}{self.columns[precision]:<20}{text}", flush=True)
        self.rows.setdefault(row, {})[precision] = " ".join(text.split()).replace("|", "/")
        self.write()

    @contextmanager
    def attempt(self, what: str, cells: list[tuple[str, str]] = ()):
        """Run the block; an exception there (an OOM, a cuDNN error, :class:`Overran`) becomes a FAILED note and
        FAILED ``cells`` (row, precision), and the run goes on with the next block."""
        try:
            yield
            return
        except Exception as exc:  # noqa: BLE001 - every failure of a measured block is reported, none ends the run
            # one_line keeps the end of the message, where a log's tail has the error.
            self.fail(what, cells, f"{type(exc).__name__}: {one_line(str(exc), 1200)}")
        # Out here the exception and the frames it held (an OOM's tensors) are gone: give their memory back. A
        # broken CUDA context (an illegal memory access) raises here too; the next block reports it as its failure.
        if torch.cuda.is_available():
            with suppress(RuntimeError):
                torch.cuda.empty_cache()

    def fail(self, what: str, cells: list[tuple[str, str]], reason: str) -> None:
        for row, precision in cells:
            self.cell(row, precision, f"FAILED ({reason[:80]})")
        self.note(f"{what} FAILED: {reason}", failed=True)

    def markdown(self) -> str:
        head = "| step | " + " | ".join(self.columns.values()) + " |"
        lines = [self.header, "", *[f"- {n}" for n in self.notes], "", head, "|---" * (len(self.columns) + 1) + "|"]
        for row, cells in self.rows.items():
            lines.append(f"| {row} | " + " | ".join(cells.get(p, "-") for p in self.columns) + " |")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.out is not None:
            for name, text in (("table.md", clean_lines(self.markdown())),
                               ("report.json", json.dumps({"notes": self.notes, "rows": self.rows,
                                                           "failed": self.failed}, indent=1))):
                (self.out / f"{name}.tmp").write_text(text)
                os.replace(self.out / f"{name}.tmp", self.out / name)  # a killed run leaves a whole file

    def merge(self, path: Path) -> bool:
        """Add the notes and cells of a part's report.json (if it wrote one); whether it reported a failure."""
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        self.notes += part["notes"]
        for row, cells in part["rows"].items():
            self.rows.setdefault(row, {}).update(cells)
        self.failed |= part["failed"]
        self.write()
        return part["failed"]


@dataclass
class Run:
    """What every part needs: the flags, the device, the precisions, the report, the time left and where logs go."""
    args: argparse.Namespace
    device: torch.device
    precisions: list[str]
    repeats: int
    report: Report
    deadline: Deadline
    log_dir: Path

    @contextmanager
    def block(self, what: str, cells: list[tuple[str, str]] = ()):
        """One measured in-process block under ``--cell-timeout`` (or the time left, if less): an exception or an
        overrun is a FAILED note and ``cells`` (:meth:`Report.attempt`), and the part goes on.

        A call that never comes back to Python (a hung CUDA kernel or synchronisation) cannot be interrupted: a
        watchdog thread then writes the same failure :data:`STUCK_GRACE_S` after the limit and ends this process,
        so that the check's next part still runs."""
        with self.report.attempt(what, cells):
            limit = self.deadline.limit(self.args.cell_timeout)

            def stuck():
                self.report.fail(what, cells, f"Overran: stuck in one call {limit + STUCK_GRACE_S:.0f} s, which "
                                              "never returned to Python; this part was ended there")
                os._exit(1)
            watchdog = threading.Timer(limit + STUCK_GRACE_S, stuck)
            watchdog.daemon = True
            watchdog.start()
            try:
                with time_limit(limit):
                    yield
            finally:
                watchdog.cancel()
