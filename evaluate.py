"""Evaluate reconstruction checkpoints on one split and acceleration: per-slice CSV, summary JSON, optional recons.

Usage::

    python evaluate.py --checkpoints runs/teacher/best_model.pt runs/sftkd-at/best_model.pt \
        --data-root data/demo --acc 4x --out-dir results/eval_4x [--save-recons]

Every checkpoint is loaded with :func:`models.checkpoint.load_reconstructor` (an SFT checkpoint gives its
teacher). The zero-filled input is always evaluated too, as model ``ZF``. Outputs in ``--out-dir``:

- ``metrics.csv``: one row per model and slice, header ``model,volume,slice,PSNR,SSIM,NMSE,HFN,VIF``
  (``volume`` is the HDF5 file name without ``.h5``); ZF rows first, then the models in command-line order.
  Slices with an all-zero target are left out (their metrics are undefined) and counted in a note.
- ``summary.json``: ``{model: {metric: {"mean", "std", "n"}}}`` (std over slices, ``ddof=0``) plus the
  top-level entries ``acc``, ``split``, ``data_root``, ``mask`` and ``checkpoints`` (``{name: path}``);
  those five words cannot be model names.
- with ``--save-recons``: ``recons/{name}/{volume}.h5`` holding one dataset ``reconstruction`` of shape
  (S, H, W) float32, slice-first. Note that this differs from the data files, whose ``volfs`` is
  (H, W, S); the target and the ZF image are not copied (read them from the data), and ZF gets no folder.

Model names default to each checkpoint's ``run_name``, then its folder name, then its file stem;
``--names`` overrides them. ``scripts/report.py`` reads roles from names (``teacher``, ``student``,
``sft``, ``stdkd-{method}``, ``sftkd-{method}``, optionally ``-seed{N}``).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import SliceDataset, build_dataset
from models.checkpoint import load_reconstructor
from models.speed import MEMORY_FORMATS, measured_layout
from models.distributed import resolve_device
from utils import (METRICS, CliParser, UserError, acc_type, atomic_write, csv_text, load_checkpoint, run_cli,
                   write_json, write_text)

ZF_NAME = "ZF"
CSV_COLUMNS = ["model", "volume", "slice", *METRICS]
META_KEYS = ("acc", "split", "data_root", "mask", "checkpoints")
RECON_KEY = "reconstruction"


# --------------------------------------------------------------------------- names and devices

def default_names(paths: list[Path]) -> list[str]:
    """Each checkpoint's ``run_name``, else its folder name, else its file stem.

    Repeats and reserved words (``ZF``, the summary.json entries) get ``-2``, ``-3``, ... appended.
    """
    names = []
    for path in paths:
        run_name = str(load_checkpoint(path, "--checkpoints").get("run_name") or "").strip()
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


# --------------------------------------------------------------------------- evaluation

def slice_metrics(target: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`utils.METRICS` for one slice; target, recon: (H, W), compared in float64."""
    target, recon = target.astype(np.float64), recon.astype(np.float64)
    return {name: fn(target, recon) for name, fn in METRICS.items()}


def write_recon(path: Path, volume: np.ndarray, model: str, acc: str) -> None:
    """Atomically write one volume's reconstruction: volume (S, H, W) float32 as dataset ``reconstruction``."""
    def write(f):
        with h5py.File(f, "w") as h5:
            h5.create_dataset(RECON_KEY, data=volume.astype(np.float32))
            h5.attrs.update({"model": model, "acc": acc, "layout": "(S, H, W)"})
    atomic_write(path, write, mode="w+b")


def evaluate(models: Mapping[str, nn.Module | str | Path], dataset: SliceDataset,
             device: str | torch.device = "cpu", batch_size: int = 4, recons_dir: str | Path | None = None,
             progress: bool = True, amp: bool = False) -> list[dict]:
    """Per-slice metrics of the zero-filled input (``ZF``) and of every model on ``dataset``.

    models: name -> a reconstructor (a :class:`models.dccnn.DCCNN`, called with
    ``(zero_filled, kspace_under, mask)``, each (B, 1, H, W)) or a checkpoint path.
    Returns rows ``{"model", "volume", "slice", "PSNR", "SSIM", "NMSE", "HFN", "VIF"}``: all ZF rows
    first, then each model's rows in the order of ``models``, slices in dataset order. Slices whose
    target is all zero (metrics undefined: PSNR -inf, NMSE inf) get no rows; a note says how many.
    ``amp`` runs the networks under bfloat16 autocast. With ``recons_dir``, writes ``{recons_dir}/{name}/{volume}.h5`` (see the module docstring).
    """
    if ZF_NAME in models:
        raise UserError(f"model name {ZF_NAME!r} is reserved for the zero-filled input; rename that model")
    device = torch.device(device)
    nets = {}
    # The faster layout for forward passes on this device, measured once (models/speed.py): channels_last
    # halves the teacher forward on AVX-512 CPUs; results differ between layouts only by float rounding.
    memory_format = MEMORY_FORMATS[measured_layout(device, dataset.shape, amp, backward=False)[0]]
    for name, model in models.items():
        net = load_reconstructor(model, "--checkpoints") if isinstance(model, (str, Path)) else model
        nets[name] = net.to(device, memory_format=memory_format).eval()
    slices_per_volume = Counter(Path(dataset.files[file_idx]).stem for file_idx, _ in dataset.samples)
    pending: dict[str, dict[str, dict[int, np.ndarray]]] = {name: defaultdict(dict) for name in nets}
    rows: dict[str, list[dict]] = {name: [] for name in [ZF_NAME, *nets]}
    empty = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
            inputs = [batch[key].to(device) for key in ("zero_filled", "kspace_under", "mask")]
            outputs = {ZF_NAME: batch["zero_filled"].numpy()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                recons = {name: net(*inputs) for name, net in nets.items()}
            outputs.update({name: out.float().cpu().numpy() for name, out in recons.items()})
            targets = batch["target"].numpy()
            for i, (fname, slice_idx) in enumerate(zip(batch["fname"], batch["slice"].tolist())):
                volume = Path(fname).stem
                scored = targets[i, 0].max() > 0
                empty += not scored
                for name, out in outputs.items():
                    if scored:
                        rows[name].append({"model": name, "volume": volume, "slice": slice_idx,
                                           **slice_metrics(targets[i, 0], out[i, 0])})
                    if recons_dir is None or name == ZF_NAME:
                        continue
                    done = pending[name][volume]
                    done[slice_idx] = out[i, 0]
                    if len(done) == slices_per_volume[volume]:
                        stacked = np.stack([done[s] for s in sorted(done)])
                        write_recon(Path(recons_dir) / name / f"{volume}.h5", stacked, name, dataset.acc)
                        del pending[name][volume]
    if empty:
        print(f"note: {empty} slice(s) with an all-zero target were left out of the metrics (PSNR, NMSE and "
              "HFN are undefined there); their reconstructions are still saved", file=sys.stderr)
    return [row for group in rows.values() for row in group]


def summarize(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {metric: {"mean", "std", "n"}}}`` over slices (``ddof=0``), models in first-seen order."""
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        per_model = values.setdefault(row["model"], {metric: [] for metric in METRICS})
        for metric in METRICS:
            per_model[metric].append(row[metric])
    return {model: {metric: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                    for metric, v in metrics.items()}
            for model, metrics in values.items()}


def format_table(summary: dict) -> str:
    """A fixed-width text table: model | PSNR | SSIM | NMSE | HFN | VIF, each mean +- std."""
    digits = {"PSNR": 2, "SSIM": 4, "NMSE": 4, "HFN": 4, "VIF": 4}
    header = ["model", *(f"{m} mean +- std" for m in METRICS)]
    lines = [[model, *(f"{stats[m]['mean']:.{digits[m]}f} +- {stats[m]['std']:.{digits[m]}f}" for m in METRICS)]
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
    parser.add_argument("--data-root", required=True, type=Path, help="folder with train/ and validation/")
    parser.add_argument("--acc", required=True, type=acc_type, help="acceleration, e.g. 4x")
    parser.add_argument("--mask", type=Path, help="mask .npy (default: DATA_ROOT/mask_{acc}.npy)")
    parser.add_argument("--split", default="validation", help="data split folder (default: validation)")
    parser.add_argument("--out-dir", required=True, type=Path, help="where metrics.csv and summary.json go")
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
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UserError(f"--out-dir {args.out_dir} is a file; choose a folder")
    metrics_path, summary_path = args.out_dir / "metrics.csv", args.out_dir / "summary.json"
    existing = [p for p in (metrics_path, summary_path) if p.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{existing[0]} already exists; pass --overwrite to replace it or choose another "
                        "--out-dir")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    names = args.names
    if names is not None:
        check_names(names, len(args.checkpoints))
    device = resolve_device(args.device)
    dataset = build_dataset(args.data_root, args.split, [args.acc],
                            {args.acc: str(args.mask)} if args.mask else None)
    if names is None:
        names = default_names(args.checkpoints)
        check_names(names, len(args.checkpoints))  # a run_name may still hold a path separator
    models = {name: load_reconstructor(path, "--checkpoints") for name, path in zip(names, args.checkpoints)}
    recons_dir = args.out_dir / "recons" if args.save_recons else None
    rows = evaluate(models, dataset, device, args.batch_size, recons_dir, amp=args.amp)
    summary = summarize(rows)
    write_text(metrics_path, csv_text(rows, CSV_COLUMNS))
    write_json(summary_path, {**summary, "acc": args.acc, "split": args.split,
                              "data_root": str(args.data_root), "mask": str(args.mask) if args.mask else None,
                              "checkpoints": {n: str(p) for n, p in zip(names, args.checkpoints)}})
    print(format_table(summary))
    print(f"wrote {metrics_path} ({len(rows)} rows) and {summary_path}")
    if recons_dir is not None:
        print(f"wrote reconstructions under {recons_dir}/{{model}}/{{volume}}.h5 (dataset '{RECON_KEY}', S x H x W)")


if __name__ == "__main__":
    run_cli(main)
