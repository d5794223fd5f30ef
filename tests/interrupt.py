"""Run a training script that signals itself right after one global step: the tests' fault hook.

    python tests/interrupt.py ITERATION SIGNAL SCRIPT [ARGS...]

installs :func:`signal_at` on the loop (models.training.loop.Trainer.after_step) and runs SCRIPT as
``__main__`` with ARGS, so a test interrupts a real process at an exact place instead of racing a timer.
In-process tests call :func:`signal_at` through pytest's monkeypatch instead."""
from __future__ import annotations

import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def signal_at(iteration: int, signal_name: str = "SIGKILL"):
    """A ``Trainer.after_step`` hook that sends this process ``signal_name`` right after global step
    ``iteration``. raise_signal runs the handler in this thread at once, as if the signal came during the step,
    so the loop's stop check sees it (os.kill could reach another thread a step late)."""
    sig = signal.Signals[signal_name]

    def hook(global_step: int) -> None:
        if global_step == iteration:
            signal.raise_signal(sig)
    return staticmethod(hook)


if __name__ == "__main__":
    iteration, signal_name, script, *args = sys.argv[1:]
    sys.path.insert(0, str(ROOT))  # run by path: the project's packages sit in the repository root
    from models.training.loop import Trainer
    Trainer.after_step = signal_at(int(iteration), signal_name)
    sys.argv = [script, *args]
    runpy.run_path(str(ROOT / script), run_name="__main__")
