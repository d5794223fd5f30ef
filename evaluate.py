"""Evaluate reconstruction checkpoints on one split and acceleration: metric CSVs, summary JSON, optional recons.

Usage::

    python evaluate.py --checkpoints runs/teacher/best_model.pt runs/sftkd-at/best_model.pt \
        --data-root data/demo --acc 4x --out-dir results/eval_4x [--metrics paper|fastmri|public-volume|all] \
        [--save-recons]

Scores ``test/`` when the data has one (else ``validation/``, with a note: its slices chose ``best_model.pt``),
every model, the zero-filled input (model ``ZF``) and the classical baseline "CS (L1-wavelet)" (its lambda chosen
on validation slices; ``--no-cs`` leaves it out), and refuses checkpoints trained on other data. What it
writes (``metrics.csv``, ``summary.json`` and its entries, ``recons/``), the metric sets and how models are named:
scripts/README.md, "Outputs" and "Model names, roles and the report".
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from data.dataset import build_dataset, data_kind
from data.fingerprint import split_listing
from data.layout import acc_folder
from data.masks import acc_type
from data.outputs import check_replaceable, clean_up, folder_lock, new_files, swap_in
from models.checkpoints.format import load_model
from models.evaluation.cs_row import CS_ITERATIONS, choose_cs_row
from models.evaluation.engine import evaluate_sets
from models.evaluation.provenance import (check_scored_split, check_trained_on, default_split, recorded_roles,
                                          trained_on)
from models.evaluation.recons import RECON_KEY
from models.evaluation.results import check_names, default_names, owned_results, write_results
from models.evaluation.sets import METRIC_CHOICES, METRIC_SETS, format_table
from models.nets.registry import reconstructor
from models.training.distributed import resolve_device
from models.training.flags import recipe
from utils import CliParser, UserError, machine, run_cli

STAGE_PREFIX = ".evaluate-"


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
    parser.add_argument("--no-cs", action="store_true",
                        help="leave out the 'CS (L1-wavelet)' row (sigpy's L1WaveletRecon, seconds per slice at 320 x "
                             "320 on a CPU)")
    parser.add_argument("--cs-lambda", type=float, default=None, metavar="LAM",
                        help="the CS row's lambda (default: the best of 1e-5, 1e-4, 1e-3, 1e-2 by mean PSNR on 4 "
                             "validation slices; recorded in summary.json 'cs')")
    parser.add_argument("--cs-iterations", type=int, default=CS_ITERATIONS, metavar="N",
                        help="FISTA iterations of the CS row")
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
    if args.cs_iterations < 1 or (args.cs_lambda is not None and not args.cs_lambda >= 0):
        raise UserError("--cs-iterations must be at least 1 and --cs-lambda a number >= 0")
    names = args.names
    if names is not None:
        check_names(names, len(args.checkpoints))
    device = resolve_device(args.device)
    split = args.split or default_split(args.data_root, args.acc)
    dataset = build_dataset(args.data_root, split, [args.acc], {args.acc: str(args.mask)} if args.mask else None)
    # Read once: net, name, roles; each must take the data's image type.
    loaded = [load_model(path, "--checkpoints", dataset.image, dataset.coils) for path in args.checkpoints]
    if names is None:
        names = default_names(args.checkpoints, [ckpt for _, ckpt in loaded])
        check_names(names, len(args.checkpoints))  # a run_name may still hold a path separator
    check_scored_split(args.data_root, split, args.acc)
    scored = split_listing(args.data_root, split, args.acc)
    trained_acc = {name: check_trained_on(path, ckpt, dataset, scored, acc=args.acc, split=split,
                                          data_root=args.data_root, cross_acc=args.cross_acc)
                   for name, path, (_, ckpt) in zip(names, args.checkpoints, loaded)}
    models = {name: reconstructor(model) for name, (model, _) in zip(names, loaded)}
    ckpts = {name: ckpt for name, (_, ckpt) in zip(names, loaded)}
    meta = {"acc": args.acc, "split": split, "test_set": args.test_set or f"{args.data_root.resolve().name}/{split}",
            "data_root": str(args.data_root), "mask": str(args.mask) if args.mask else None,
            "checkpoints": {n: str(p) for n, p in zip(names, args.checkpoints)},
            "roles": {name: recorded_roles(ckpt) for name, ckpt in ckpts.items()}, "trained_acc": trained_acc,
            "machine": machine(), "trained_on": {name: trained_on(ckpt) for name, ckpt in ckpts.items()},
            "recipe": {name: recipe(ckpt.get("config")) for name, ckpt in ckpts.items()}, **data_kind(dataset)}
    cs = None
    if not args.no_cs:
        if args.cs_lambda is None and not acc_folder(args.data_root, "validation", args.acc).is_dir():
            print(f"note: {args.data_root} has no validation/ split to choose the CS (L1-wavelet) lambda on: the row "
                  "is left out (pass --cs-lambda to give one)", file=sys.stderr)
        else:
            cs = choose_cs_row(args.data_root, args.acc, str(args.mask) if args.mask else None, split,
                               iterations=args.cs_iterations, lam=args.cs_lambda)
            meta["cs"] = cs.choice
    # Results go to a staging folder that replaces the previous run's files (and only those) once complete, so a
    # failed or killed run leaves the old results as they were (data/outputs.py).
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=args.out_dir))
    try:
        rows = evaluate_sets(models, dataset, metric_sets, device, args.batch_size,
                             stage / "recons" if args.save_recons else None, amp=args.amp, cs=cs)
        stats = write_results(stage, rows, meta)
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
