"""A training run's settings as typed, frozen values: the data, the optimisation, the run itself, and the
script's own settings with what ``--resume`` needs to know about them. The training scripts build a
:class:`TrainConfig` from their flags (models/training/flags.py); the loop and its parts take it.

:meth:`TrainConfig.record` is the flat dict that ``config.json`` and every checkpoint keep under ``config``: its
keys are the scripts' flag names with ``_`` (``data_root``, ``kd_method``, ...), and ``--resume`` compares it
with the run's (models/training/experiment.check_resume_config).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any, Callable, Mapping

from data.layout import mask_name


@dataclass(frozen=True)
class DataConfig:
    """What a run trains and validates on: ``data_root``'s train/ and validation/ splits at the accelerations
    ``acc``, with one mask file per acceleration (``mask``; None: ``{data_root}/mask_{acc}.npy``).
    ``preload``: ``auto`` (when the data need < 2 GiB), ``yes`` or ``no``."""

    data_root: Path
    acc: tuple[str, ...] = ("4x",)
    mask: tuple[Path, ...] | None = None
    num_workers: int = 0
    augment: bool = False
    preload: str = "auto"

    def masks(self) -> dict[str, str] | None:
        """``{acc: mask file}`` of the masks given, for data.dataset.build_dataset; None: the data's own."""
        return {acc: str(path) for acc, path in zip(self.acc, self.mask)} if self.mask else None

    def mask_path(self, acc: str) -> Path:
        """The mask file the run reads for ``acc``: the one given, else ``{data_root}/mask_{acc}.npy``."""
        given = dict(zip(self.acc, self.mask)) if self.mask else {}
        return Path(given.get(acc) or Path(self.data_root) / mask_name(acc))


@dataclass(frozen=True)
class OptimConfig:
    """Adam with a step or cosine schedule, optional weight averaging (``ema`` decay or the mean of the last
    ``average_last`` epochs), the seed; defaults are the paper's. ``batch_size`` is per process; ``scale_lr``
    multiplies ``lr`` by the number of processes."""

    epochs: int = 150
    batch_size: int = 4
    lr: float = 1e-3
    lr_schedule: str = "step"
    lr_step_size: int = 40
    lr_gamma: float = 0.1
    ema: float | None = None
    average_last: int | None = None
    scale_lr: bool = False
    seed: int = 42


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run goes: its experiment folder, whether it resumes or replaces one, the device, the
    memory layout (``auto``, ``contiguous``, ``channels_last``), bfloat16 autocast, checkpoint and log
    intervals."""

    exp_dir: Path
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    memory_format: str = "auto"
    amp: bool = False
    save_every_iters: int | None = None
    log_every: int = 10
    image_every: int = 5
    no_progress: bool = False


@dataclass(frozen=True)
class ResumeRules:
    """What ``--resume`` must know of a script's own settings (:attr:`TrainConfig.settings`).

    may_change: settings a resumed run may change (they do not change what it computes); network_own: settings
    where None means "the network's own" (its size, padding), compared through the architecture they build;
    resolve: ``key -> function of all settings`` giving the value a None stands for (``kd_weight`` None is the
    KD method's own weight), so that giving that value explicitly is no change."""

    may_change: tuple[str, ...] = ()
    network_own: tuple[str, ...] = ()
    resolve: Mapping[str, Callable[[dict], Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: :class:`DataConfig`, :class:`OptimConfig`, :class:`RunConfig`, plus the script's own
    settings (``settings``: name -> JSON-able value, recorded in config.json under these names), the SHA-256
    of each checkpoint the run reads (``checkpoints``: setting name -> digest; the setting holds its path) and
    the :class:`ResumeRules` of its settings."""

    data: DataConfig
    optim: OptimConfig
    run: RunConfig
    settings: Mapping[str, Any] = field(default_factory=dict)
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    rules: ResumeRules = field(default_factory=ResumeRules)

    def record(self, **resolved: Any) -> dict:
        """The flat, JSON-able entries config.json keeps: every field of data, optim and run, then the settings,
        then ``resolved`` (what the run found out: ``image``, ``kspace``, the ``memory_format`` it chose)."""
        entries = {f.name: getattr(part, f.name) for part in (self.data, self.optim, self.run) for f in fields(part)}
        return {key: _jsonable(value) for key, value in {**entries, **self.settings, **resolved}.items()}


def _jsonable(value: Any) -> Any:
    """Paths as strings, tuples as lists (as config.json has them)."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
