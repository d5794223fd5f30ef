"""Evaluate reconstruction checkpoints on one split and acceleration: metric CSVs, summary JSON, optional recons.

Usage::

    python evaluate.py --checkpoints runs/teacher/best_model.pt runs/sftkd-at/best_model.pt \
        --data-root data/demo --acc 4x --out-dir results/eval_4x [--metrics paper|fastmri|public-volume|all] \
        [--save-recons]

Every checkpoint is loaded with :func:`models.checkpoints.format.load_reconstructor` (an SFT checkpoint gives its
teacher). The zero-filled input is always evaluated too, as model ``ZF``. Outputs in ``--out-dir``:

- ``metrics.csv`` (``--metrics paper``, the default, or ``all``): per-slice metrics, one row per model and
  slice, header ``model,volume,slice,PSNR,SSIM,NMSE,HFEN-LoG,VIF`` (``volume`` is the HDF5 file name without
  ``.h5``); ZF rows first, then the models in command-line order. PSNR, SSIM and NMSE are those of the public
  code's ``measures.py`` (each slice's own maximum); HFEN-LoG and VIF are extra (see
  :data:`models.evaluation.metrics.METRICS`). Slices with an all-zero target are left out (their metrics are undefined)
  and counted in a note.
- ``metrics_fastmri.csv`` (``--metrics fastmri`` or ``all``): fastMRI's volume-wise metrics, one row per model
  and volume, header ``model,volume,NMSE,PSNR,SSIM``, same model order. A volume is every slice of one file,
  stacked by slice index, all-zero slices included (see :data:`models.evaluation.metrics.FASTMRI_METRICS`); only a
  volume whose target is all zero is left out.
- ``metrics_public_volume.csv`` (``--metrics public-volume`` or ``all``): the public SFT-KD-Recon ``evaluate.py``'s
  volume-wise metrics, one row per model and volume, header ``model,volume,NMSE,PSNR,SSIM,HFN``, volumes as for
  fastMRI (see :data:`models.evaluation.metrics.PUBLIC_VOLUME_METRICS`). Its HFN is the 3 x 3 Laplacian one with the
  prediction clipped to [0, 1], not the per-slice HFEN-LoG.
- ``summary.json``: ``{model: {metric: {"mean", "std", "n"}}}`` of the paper's metrics (std over slices,
  ``ddof=0``), with fastMRI's a ``"fastmri"`` entry of the same form over volumes (``n`` volumes, ``ddof=0``;
  fastMRI's own script prints mean +/- 2 sample std), the public code's volume-wise ones a ``"public_volume"``
  entry of the same form (the public script prints mean +/- 2 sample std too), plus the top-level entries
  ``acc``, ``split``, ``data_root``, ``mask``, ``checkpoints`` (``{name: path}``), ``test_set`` (``--test-set``,
  default ``{data folder name}/{split}``), ``roles`` (``{name: the roles its checkpoint records,
  models/distill/roles.py, plus its training seed}``), ``trained_acc`` (``{name: the accelerations it was
  trained at}``, empty where it records none: with ``--cross-acc`` they differ from ``acc``, and report.py gives
  such a model a row of its own), ``machine`` (the evaluating machine, utils.machine: CPU, ISA, torch build,
  threads), ``trained_on`` (``{name: the machine its checkpoint's training recorded, or null}``), ``recipe``
  (``{name: the training flags that make runs comparable, models.training.flags.RECIPE_KEYS}``), ``image``
  (``magnitude`` or ``complex``; complex images are scored on their magnitude, as fastMRI does) and ``kspace``
  (where the data's k-space came from, e.g. ``synthetic from magnitude``); these words cannot be model names.

What is scored is checked against what each checkpoint records of its training data: another acceleration is
refused unless ``--cross-acc``; another slice size, another mask sampling pattern (rows, columns, 2-D) or files
of its own training split are refused.
- with ``--save-recons``: ``recons/{name}/{volume}.h5`` holding one dataset ``reconstruction`` of shape
  (S, H, W) float32, slice-first. Note that this differs from the data files, whose ``volfs`` is
  (H, W, S); the target and the ZF image are not copied (read them from the data), and ZF gets no folder.

Split: ``test`` when the data set has one (data/prepare.py writes it; it never chose a checkpoint), else
``validation`` with a printed note (the original two-split layout: the slices ``best_model.pt`` was chosen on,
so the scores are optimistic); ``--split`` overrides.

Model names default to each checkpoint's ``run_name``, then its folder name, then its file stem;
``--names`` overrides them. ``scripts/report.py`` takes each model's role from ``roles``, and from the name
(``teacher``, ``sft``, ``stdkd-{method}``, ..., optionally ``-seed{N}``) only for checkpoints without roles.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import SliceDataset, build_dataset, data_kind
from data.fft import magnitude
from data.fingerprint import split_listing
from data.layout import acc_folder
from data.masks import acc_type, mask_lines
from data.outputs import check_replaceable, clean_up, new_files, owned_files, swap_in
from models.checkpoints.format import load_model, load_reconstructor
from models.nets.registry import reconstructor
from models.training.speed import MEMORY_FORMATS, auto_layout
from models.training.distributed import resolve_device
from models.training.flags import recipe
from models.evaluation.metrics import FASTMRI_METRICS, METRICS, PUBLIC_VOLUME_METRICS
from data.outputs import atomic_write, check_free_space, folder_lock, write_json, write_text
from utils import CliParser, UserError, clean_text, csv_text, machine, run_cli

ZF_NAME = "ZF"
CSV_COLUMNS = ["model", "volume", "slice", *METRICS]


@dataclass(frozen=True)
class MetricSet:
    """One metric set of --metrics: its metric functions (name -> fn(target, recon) -> float, on (H, W) slices
    or on (S, H, W) volumes as ``per_volume`` says), the CSV it writes with that file's columns, and the
    summary.json entry of its statistics (None: the top level, where the paper's statistics have always been)."""

    functions: Mapping[str, Callable[[np.ndarray, np.ndarray], float]]
    per_volume: bool
    file: str
    columns: list[str]
    summary_key: str | None

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.functions)


METRIC_SETS = {
    "paper": MetricSet(METRICS, False, "metrics.csv", CSV_COLUMNS, None),
    "fastmri": MetricSet(FASTMRI_METRICS, True, "metrics_fastmri.csv", ["model", "volume", *FASTMRI_METRICS],
                         "fastmri"),
    "public-volume": MetricSet(PUBLIC_VOLUME_METRICS, True, "metrics_public_volume.csv",
                               ["model", "volume", *PUBLIC_VOLUME_METRICS], "public_volume"),
}
METRIC_CHOICES = {**{name: (name,) for name in METRIC_SETS}, "all": tuple(METRIC_SETS)}
META_KEYS = ("acc", "split", "test_set", "data_root", "mask", "checkpoints", "roles", "trained_acc", "machine",
             "trained_on", "recipe", "fastmri", "public_volume", "image", "kspace")
RECON_KEY = "reconstruction"
STAGE_PREFIX = ".evaluate-"


# --------------------------------------------------------------------------- names and devices

def default_names(paths: list[Path], checkpoints: list[dict]) -> list[str]:
    """Each checkpoint's ``run_name`` (``checkpoints``: the loaded dicts of ``paths``), else its folder name,
    else its file stem.

    Repeats and reserved words (``ZF``, the summary.json entries) get ``-2``, ``-3``, ... appended.
    """
    names = []
    for path, ckpt in zip(paths, checkpoints):
        # A run name is text from a file: it becomes a folder name and is printed.
        run_name = clean_text(ckpt.get("run_name") or "").strip()
        names.append(run_name or path.resolve().parent.name or path.stem)
    taken: set[str] = {ZF_NAME, *META_KEYS}
    unique = []
    for name in names:
        candidate, copy = name, 1
        while candidate in taken:
            copy += 1
            candidate = f"{name}-{copy}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def default_split(data_root: Path, acc: str) -> str:
    """``test`` when ``data_root`` has a test split for ``acc``, else ``validation`` (with a note saying what
    that means for the numbers)."""
    if acc_folder(data_root, "test", acc).is_dir():
        return "test"
    print(f"note: {data_root} has no test/ split (the original two-split layout): scoring validation, the slices "
          "best_model.pt was chosen on, so the numbers are optimistic; data/prepare.py writes test/ by default")
    return "validation"


def recorded_roles(ckpt: dict) -> dict:
    """The roles a checkpoint's run recorded (models/distill/roles.py) plus its ``seed``; empty for checkpoints of
    older versions and imported ones, which scripts/report.py then names by their model name."""
    config = ckpt.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("roles"), dict):
        return {}
    seed = config.get("seed")
    return {**config["roles"], **({"seed": seed} if isinstance(seed, int) else {})}


def trained_on(ckpt: dict) -> dict | None:
    """The machine (utils.machine) of the training process that wrote a checkpoint; None for checkpoints of older
    versions and imported ones."""
    config = ckpt.get("config")
    recorded = config.get("machine") if isinstance(config, dict) else None
    return recorded if isinstance(recorded, dict) else None


def check_names(names: list[str], n_checkpoints: int) -> None:
    """Model names must match the checkpoints one to one, be unique and be usable as folder names."""
    if len(names) != n_checkpoints:
        raise UserError(f"--names has {len(names)} names but --checkpoints has {n_checkpoints} files; "
                        "give one name per checkpoint (or leave --names out)")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise UserError(f"--names repeats {', '.join(repeated)}; every model needs its own name")
    for name in names:
        if name == ZF_NAME or name in META_KEYS:
            raise UserError(f"model name {name!r} is reserved ({ZF_NAME} is the zero-filled input, "
                            f"{', '.join(META_KEYS)} are summary.json entries); pass another with --names")
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise UserError(f"model name {name!r} cannot be a folder name; pass another with --names")


# --------------------------------------------------------------------------- what a checkpoint was trained on

def trained_accs(ckpt: dict) -> list[str]:
    """The accelerations a checkpoint's run trained on: its --acc; for an imported public checkpoint its
    ``acceleration_factor`` flag (``"4x"`` or ``"4x,5x"``); empty when it records neither."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    accs = config.get("acc")
    if accs is None:
        source = config.get("source_args") if isinstance(config.get("source_args"), dict) else {}
        accs = str(source.get("acceleration_factor") or "").split(",")
    return [clean_text(acc).strip() for acc in (accs if isinstance(accs, list) else [accs]) if str(acc).strip()]


_PATTERN = {"rows": "whole rows", "columns": "whole columns", "2-D": "a 2-D pattern"}


def check_trained_on(path: Path, ckpt: dict, dataset: SliceDataset, scored: dict[str, str],
                     args: argparse.Namespace) -> list[str]:
    """Refuse to score a checkpoint on data other than the kind it was trained on, as far as it records it:
    another acceleration (unless ``--cross-acc``), another slice size, another mask sampling pattern, or files
    of its own training split (``scored``: :func:`data.fingerprint.split_listing` of the scored split). Returns
    the accelerations it was trained on."""
    accs = trained_accs(ckpt)
    if accs and args.acc not in accs and not args.cross_acc:
        raise UserError(f"--checkpoints {path} was trained at {' '.join(accs)}, but --acc {args.acc} scores it on "
                        f"{args.acc} data; evaluate it at {accs[0]}, or pass --cross-acc to score it across "
                        "accelerations (summary.json records both, report.py gives it a row of its own)")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    content = config.get("content") if isinstance(config.get("content"), dict) else {}
    size = content.get("image_size")
    if isinstance(size, list) and list(dataset.shape) != size:
        raise UserError(f"--checkpoints {path} was trained on {'x'.join(map(str, size))} slices, but --split "
                        f"{args.split} of {args.data_root} holds {dataset.shape[0]}x{dataset.shape[1]}; score it on "
                        "data prepared at its size (data/prepare.py --size)")
    lines = content.get("mask_lines") if isinstance(content.get("mask_lines"), dict) else {}
    expected = lines.get(args.acc) or next(iter(lines.values()), None)
    found = mask_lines(dataset.mask[0].numpy())
    if expected in _PATTERN and found != expected:
        raise UserError(f"--checkpoints {path} was trained with masks sampling {_PATTERN[expected]}, but the "
                        f"{args.acc} mask of this data samples {_PATTERN[found]}; score it with the mask kind it "
                        "was trained with (--mask, or data prepared with its --mask-kind)")
    listings = content.get("data", {}).get("train", {}) if isinstance(content.get("data"), dict) else {}
    seen = sorted({name for listing in listings.values() if isinstance(listing, dict)
                   for name, digest in listing.items() if scored.get(name) == digest})
    if seen:
        raise UserError(f"--checkpoints {path} was trained on {len(seen)} of the {len(scored)} files of --split "
                        f"{args.split} ({', '.join(seen[:3])}{', ...' if len(seen) > 3 else ''}): scores there "
                        "measure memory, not reconstruction; score the test split, or data it never saw")
    return accs


# --------------------------------------------------------------------------- evaluation

def score(metric_set: MetricSet, target: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """Every metric of ``metric_set`` for one slice (H, W) or one volume (S, H, W), compared in float64."""
    target, recon = target.astype(np.float64), recon.astype(np.float64)
    return {name: fn(target, recon) for name, fn in metric_set.functions.items()}


def write_recon(path: Path, volume: np.ndarray, model: str, acc: str) -> None:
    """Atomically write one volume's reconstruction: volume (S, H, W) float32 as dataset ``reconstruction``."""
    def write(f):
        with h5py.File(f, "w") as h5:
            h5.create_dataset(RECON_KEY, data=volume.astype(np.float32))
            h5.attrs.update({"model": model, "acc": acc, "layout": "(S, H, W)"})
    # h5py can crash the process on a full disk instead of raising: ask first.
    check_free_space(path, volume.size * 4)
    atomic_write(path, write, mode="w+b")


def reconstructed_volumes(nets: Mapping[str, nn.Module], dataset: SliceDataset, device: torch.device,
                          batch_size: int, amp: bool, progress: bool
                          ) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """``(volume, target, outputs)`` for each volume of ``dataset``, in dataset order, once all its slices have
    been through every network: target (S, H, W) float32, outputs ``{name: (S, H, W) float32}`` with the
    zero-filled input first (as ``ZF``), then ``nets`` in order; slices stacked by slice index. Complex images
    are given as their magnitude (data/fft.py's :func:`~data.fft.magnitude`), which every metric scores."""
    slices_per_volume = Counter(Path(dataset.files[file_idx]).stem for file_idx, _ in dataset.samples)
    targets: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    outputs: dict[str, dict[str, dict[int, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        inputs = batch.to(device).inputs
        batch_outputs = {ZF_NAME: magnitude(batch.zero_filled).numpy()}
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            recons = {name: net(*inputs) for name, net in nets.items()}
        batch_outputs.update({name: magnitude(out.float()).cpu().numpy() for name, out in recons.items()})
        target_magnitude = magnitude(batch.target)
        for i, (fname, slice_idx) in enumerate(zip(batch.fname, batch.slice.tolist())):
            volume = Path(fname).stem
            targets[volume][slice_idx] = target_magnitude[i, 0].numpy()
            for name, out in batch_outputs.items():
                outputs[volume][name][slice_idx] = out[i, 0]
            if len(targets[volume]) == slices_per_volume[volume]:
                order = sorted(targets[volume])
                yield (volume, np.stack([targets[volume][s] for s in order]),
                       {name: np.stack([done[s] for s in order]) for name, done in outputs[volume].items()})
                del targets[volume], outputs[volume]


def evaluate_sets(models: Mapping[str, nn.Module | str | Path], dataset: SliceDataset,
                  metric_sets: Sequence[str] = ("paper",), device: str | torch.device = "cpu", batch_size: int = 4,
                  recons_dir: str | Path | None = None, progress: bool = True, amp: bool = False
                  ) -> dict[str, list[dict]]:
    """The zero-filled input (``ZF``) and every model on ``dataset``, scored by each of ``metric_sets``.

    models: name -> a reconstructor (a registered network, models/nets/registry.py, called with
    ``(zero_filled, kspace_under, mask)``, each (B, C, H, W)) or a checkpoint path; it must take the data's
    image type (C = 1 magnitude, 2 complex).
    metric_sets: keys of :data:`METRIC_SETS`: ``"paper"`` (rows ``{"model", "volume", "slice", "PSNR", "SSIM",
    "NMSE", "HFEN-LoG", "VIF"}``, one per slice), ``"fastmri"`` (rows ``{"model", "volume", "NMSE", "PSNR",
    "SSIM"}``, one per volume), ``"public-volume"`` (rows ``{"model", "volume", "NMSE", "PSNR", "SSIM", "HFN"}``).
    Returns ``{metric_set: rows}``, rows grouped by model: all ZF rows first, then each model's in the order of
    ``models``, slices and volumes in dataset order. Per-slice rows leave out slices whose target is all zero
    (PSNR -inf, NMSE inf there); per-volume rows keep them, as fastMRI does, and leave out only all-zero volumes;
    a note says how many. ``amp`` runs the networks under bfloat16 autocast. With ``recons_dir``, writes
    ``{recons_dir}/{name}/{volume}.h5`` (see the module docstring).
    """
    if ZF_NAME in models:
        raise UserError(f"model name {ZF_NAME!r} is reserved for the zero-filled input; rename that model")
    device = torch.device(device)
    nets = {}
    # The faster layout for forward passes on this device, measured once (models/training/speed.py); results differ
    # between layouts only by float rounding.
    memory_format = MEMORY_FORMATS[auto_layout(device, dataset.shape, amp, backward=False, batch=batch_size)]
    for name, model in models.items():
        net = (load_reconstructor(model, "--checkpoints", dataset.image, dataset.coils) if isinstance(model, (str, Path))
               else model)
        nets[name] = net.to(device, memory_format=memory_format).eval()
    rows = {metric_set: {name: [] for name in [ZF_NAME, *nets]} for metric_set in metric_sets}
    empty_slices = empty_volumes = 0
    for volume, target, outputs in reconstructed_volumes(nets, dataset, device, batch_size, amp, progress):
        scored = [int(s) for s in np.flatnonzero(target.max(axis=(1, 2)) > 0)]
        empty_slices += len(target) - len(scored)
        empty_volumes += not scored
        for name, recon in outputs.items():
            for set_name, set_rows in rows.items():
                metric_set = METRIC_SETS[set_name]
                if not metric_set.per_volume:
                    set_rows[name] += [{"model": name, "volume": volume, "slice": s,
                                        **score(metric_set, target[s], recon[s])} for s in scored]
                elif scored:
                    set_rows[name].append({"model": name, "volume": volume, **score(metric_set, target, recon)})
            if recons_dir is not None and name != ZF_NAME:
                write_recon(Path(recons_dir) / name / f"{volume}.h5", recon, name, dataset.acc)
    if "paper" in rows and empty_slices:
        print(f"note: {empty_slices} slice(s) with an all-zero target were left out of the metrics (PSNR, NMSE and "
              "HFEN-LoG are undefined there); their reconstructions are still saved", file=sys.stderr)
    if any(METRIC_SETS[name].per_volume for name in rows) and empty_volumes:
        print(f"note: {empty_volumes} volume(s) with an all-zero target were left out of the volume-wise metrics",
              file=sys.stderr)
    return {metric_set: [row for group in per_model.values() for row in group]
            for metric_set, per_model in rows.items()}


def summarize(rows: list[dict], metrics: Sequence[str] = tuple(METRICS)) -> dict[str, dict[str, dict]]:
    """``{model: {metric: {"mean", "std", "n"}}}`` over rows (slices or volumes; ``ddof=0``), models in
    first-seen order."""
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        per_model = values.setdefault(row["model"], {metric: [] for metric in metrics})
        for metric in metrics:
            per_model[metric].append(row[metric])
    return {model: {metric: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                    for metric, v in per_metric.items()}
            for model, per_metric in values.items()}


def format_table(summary: dict, metrics: Sequence[str] = tuple(METRICS)) -> str:
    """A fixed-width text table: model | one column per metric (default PSNR | SSIM | NMSE | HFEN-LoG | VIF),
    each mean +- std."""
    digits = {"PSNR": 2, "SSIM": 4, "NMSE": 4, "HFEN-LoG": 4, "HFN": 4, "VIF": 4}
    header = ["model", *(f"{m} mean +- std" for m in metrics)]
    lines = [[model, *(f"{stats[m]['mean']:.{digits[m]}f} +- {stats[m]['std']:.{digits[m]}f}" for m in metrics)]
             for model, stats in summary.items()]
    widths = [max(len(r[c]) for r in [header, *lines]) for c in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths))
    return "\n".join([fmt(header), "-+-".join("-" * w for w in widths), *map(fmt, lines)])


# --------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, type=Path,
                        help="checkpoints of this project (teacher, student, KD student or SFT -> its teacher)")
    parser.add_argument("--names", nargs="+", help="one model name per checkpoint (default: run_name)")
    parser.add_argument("--data-root", required=True, type=Path,
                        help="folder with train/, validation/ and (data/prepare.py's default) test/")
    parser.add_argument("--acc", required=True, type=acc_type, help="acceleration, e.g. 4x")
    parser.add_argument("--cross-acc", action="store_true",
                        help="score checkpoints trained at another acceleration than --acc (refused without it); "
                             "summary.json records both, report.py gives them rows of their own")
    parser.add_argument("--mask", type=Path, help="mask .npy (default: DATA_ROOT/mask_{acc}.npy)")
    parser.add_argument("--split", default=None,
                        help="data split folder (default: test when DATA_ROOT has it, else validation)")
    parser.add_argument("--test-set", default=None, metavar="NAME",
                        help="name of the scored set in summary.json and report.py's tables (default: "
                             "{data folder name}/{split})")
    parser.add_argument("--out-dir", required=True, type=Path, help="where metrics.csv and summary.json go")
    parser.add_argument("--metrics", choices=tuple(METRIC_CHOICES), default="paper",
                        help="paper: per-slice PSNR, SSIM, NMSE, HFEN-LoG, VIF (metrics.csv); fastmri: fastMRI's "
                             "volume-wise NMSE, PSNR, SSIM (metrics_fastmri.csv, summary.json 'fastmri'); "
                             "public-volume: the public SFT-KD-Recon evaluate.py's volume-wise NMSE, PSNR, SSIM, "
                             "HFN (metrics_public_volume.csv, summary.json 'public_volume'); all: every set")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", action="store_true",
                        help="bfloat16 autocast of the CNNs (DF in float32): ~2x faster on GPUs and AMX CPUs; "
                             "metrics then differ from float32 in the last digits")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="slices per forward; 4 is fastest on CPU at 240 x 240 (larger tensors pass "
                             "glibc's 32 MB mmap threshold and are page-faulted in afresh)")
    parser.add_argument("--save-recons", action="store_true",
                        help="also write recons/{name}/{volume}.h5, dataset 'reconstruction' (S, H, W)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out-dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with folder_lock(args.out_dir, "--out-dir"):
        _main(args)


def _main(args: argparse.Namespace) -> None:
    """:func:`main` holding the lock of ``--out-dir``."""
    if clean_up(args.out_dir, STAGE_PREFIX):
        print(f"note: finished moving the results an interrupted evaluate.py run wrote into {args.out_dir}",
              file=sys.stderr)
    metric_sets = METRIC_CHOICES[args.metrics]
    metric_files = {name: args.out_dir / metric_set.file for name, metric_set in METRIC_SETS.items()}
    existing = sorted(p for p in [*metric_files.values(), args.out_dir / "summary.json"] if p.exists())
    if existing and not args.overwrite:
        raise UserError(f"{existing[0]} already exists; pass --overwrite to replace it or choose another "
                        "--out-dir")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    names = args.names
    if names is not None:
        check_names(names, len(args.checkpoints))
    device = resolve_device(args.device)
    args.split = args.split or default_split(args.data_root, args.acc)
    dataset = build_dataset(args.data_root, args.split, [args.acc],
                            {args.acc: str(args.mask)} if args.mask else None)
    args.data_kind = data_kind(dataset)
    # Read once: net, name, roles; each must take the data's image type.
    loaded = [load_model(path, "--checkpoints", dataset.image, dataset.coils) for path in args.checkpoints]
    if names is None:
        names = default_names(args.checkpoints, [ckpt for _, ckpt in loaded])
        check_names(names, len(args.checkpoints))  # a run_name may still hold a path separator
    scored = split_listing(args.data_root, args.split, args.acc)
    args.trained_acc = {name: check_trained_on(path, ckpt, dataset, scored, args)
                        for name, path, (_, ckpt) in zip(names, args.checkpoints, loaded)}
    models = {name: reconstructor(model) for name, (model, _) in zip(names, loaded)}
    args.roles = {name: recorded_roles(ckpt) for name, (_, ckpt) in zip(names, loaded)}
    args.trained_on = {name: trained_on(ckpt) for name, (_, ckpt) in zip(names, loaded)}
    args.recipe = {name: recipe(ckpt.get("config")) for name, (_, ckpt) in zip(names, loaded)}
    # Results go to a staging folder that replaces the previous run's files (and only those) once complete, so a
    # failed or killed run leaves the old results as they were (data/outputs.py).
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=args.out_dir))
    try:
        rows = evaluate_sets(models, dataset, metric_sets, device, args.batch_size,
                             stage / "recons" if args.save_recons else None, amp=args.amp)
        stats = write_results(args, names, rows, stage)
        owned = owned_results(args.out_dir) if args.overwrite else []
        check_replaceable(args.out_dir, new_files(stage), owned, ["recons"], "--out-dir")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    swap_in(args.out_dir, stage, owned)
    # A file of a metric set not run now would contradict the new summary.json (--overwrite was given).
    for metric_set, path in metric_files.items():
        if metric_set not in metric_sets and path.name in owned:
            print(f"removed {path} (not computed with --metrics {args.metrics})")
    print_results(args.out_dir, stats, rows)
    if args.save_recons:
        print(f"wrote reconstructions under {args.out_dir / 'recons'}/{{model}}/{{volume}}.h5 (dataset "
              f"'{RECON_KEY}', S x H x W)")


def owned_results(out_dir: Path) -> list[str]:
    """The files an earlier run wrote in ``out_dir``: its manifest.json, or for runs older than the manifest,
    its metric files, summary.json and the reconstructions of the models summary.json names."""
    owned = owned_files(out_dir)
    if owned is not None:
        return owned
    owned = [name for name in [*(s.file for s in METRIC_SETS.values()), "summary.json"] if (out_dir / name).is_file()]
    try:
        models = json.loads((out_dir / "summary.json").read_text())["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError):
        return owned
    for name in models if isinstance(models, dict) else ():
        folder = out_dir / "recons" / str(name)
        if folder.parent == out_dir / "recons" and folder.is_dir():
            owned += sorted(f"recons/{name}/{p.name}" for p in folder.glob("*.h5") if p.is_file())
    return owned


def write_results(args: argparse.Namespace, names: list[str], rows: dict[str, list[dict]],
                  folder: Path | None = None) -> dict:
    """Write each metric set's CSV and summary.json into ``folder`` (default ``args.out_dir``); returns
    ``{metric_set: summary}``."""
    folder = args.out_dir if folder is None else folder
    summary, stats = {}, {}
    for name, set_rows in rows.items():
        metric_set = METRIC_SETS[name]
        write_text(folder / metric_set.file, csv_text(set_rows, metric_set.columns))
        stats[name] = summarize(set_rows, metric_set.metrics)
        key = metric_set.summary_key
        summary.update(stats[name] if key is None else {key: stats[name]})
    write_json(folder / "summary.json",
               {**summary, "acc": args.acc, "split": args.split,
                "test_set": args.test_set or f"{Path(args.data_root).resolve().name}/{args.split}",
                "data_root": str(args.data_root), "mask": str(args.mask) if args.mask else None,
                "checkpoints": {n: str(p) for n, p in zip(names, args.checkpoints)}, "roles": args.roles,
                "trained_acc": args.trained_acc, "machine": machine(), "trained_on": args.trained_on,
                "recipe": args.recipe, **args.data_kind})
    return stats


def print_results(out_dir: Path, stats: dict[str, dict], rows: dict[str, list[dict]]) -> None:
    """Print each metric set's table and what was written."""
    if "paper" in stats:
        print(format_table(stats["paper"]))
    for name, title in (("fastmri", "fastMRI volume-wise metrics"),
                        ("public-volume", "public SFT-KD-Recon evaluate.py volume-wise metrics")):
        if name in stats:
            volumes = len({row["volume"] for row in rows[name]})
            print(f"{title} (mean +- std over {volumes} volume(s)):")
            print(format_table(stats[name], METRIC_SETS[name].metrics))
    written = [f"{out_dir / METRIC_SETS[s].file} ({len(set_rows)} rows)" for s, set_rows in rows.items()]
    print(f"wrote {' and '.join(written)} and {out_dir / 'summary.json'}")


if __name__ == "__main__":
    run_cli(main)
