"""Reconstruct one's own scans (fastMRI, ISMRMRD, NIfTI) with a trained checkpoint, to NIfTI or fastMRI submissions.

Usage::

    python -m scripts.reconstruct CHECKPOINT INPUT... --out-dir DIR [--format nifti|fastmri] [--png]
        [--no-undersample] [--mask FILE] [--acc 4x] [--mode exact|fused|bf16] [--batch-size 4]
        [--device auto|cpu|cuda] [--overwrite]
    python -m scripts.reconstruct CHECKPOINT --export student.pt2 [--mode exact|fused]

Inputs (data/scans.py, one reader per format): fastMRI single- and multi-coil HDF5 (test files hold undersampled
``kspace`` and its ``mask``; train / validation files are undersampled with the checkpoint's mask unless
``--no-undersample``), ISMRMRD HDF5 raw data (Cartesian 2-D, any number of coils), NIfTI magnitude volumes
(undersampled synthetically, the paper's protocol). The checkpoint's mask is the one its run recorded (its
``--mask`` or ``{data_root}/mask_{acc}.npy``, checked by content); ``--mask`` replaces it. A magnitude network
(the paper's) takes NIfTI volumes and fastMRI references, a complex one (``data.prepare --image complex``)
acquired single-coil k-space, and a multi-coil one (trained on K coils) acquired k-space of at least K coils,
SVD-compressed to K where it has more, with sensitivity maps estimated from its ACS lines by the method its run
used, exactly as data.prepare made its training data (data/scans.py says how).

Outputs in ``--out-dir``, one per input volume, named after it (data/recon_files.py): ``{name}.nii.gz``
(``--format nifti``, the default: network units with ``scl_slope`` / ``scl_inter`` back to the input's units,
the input's affine where it has one) or ``{name}.h5`` (``--format fastmri``: dataset ``reconstruction`` (S, H, W)
in the input's units, which fastMRI's evaluate.py scores); with ``--png`` also ``png/{name}_{slice}.png``. They
replace the previous run's files only once every input is done (``manifest.json``, which also records each
scan's input, slices and, for multi-coil data, its coil count, compression and maps); on any error nothing is
written. A slice's reconstruction is evaluate.py's for the same slice and checkpoint, bit for bit, in the default
``--mode exact`` (the training forward); the faster modes (models/inference/forward.py) differ by float rounding
(fused) or bfloat16 rounding (bf16), as tests/test_inference_modes.py bounds.

``--export FILE.pt2`` writes the network instead, as a torch.export program that runs with torch alone (no
checkout of this repository): ``torch.export.load(FILE).module()(zero_filled, kspace_under, mask)``; the file's
extra entry ``sftkd.json`` records the checkpoint, architecture, image type, training size and the usage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.reconstruct ...", file=sys.stderr)
    sys.exit(2)

from data.fft import IMAGE_TYPES  # noqa: E402
from data.masks import acc_type  # noqa: E402
from data.outputs import staged  # noqa: E402
from data.recon_files import FILE_NAMES, WRITERS, write_png  # noqa: E402
from data.scans import ReadOptions, check_scan, network_inputs, read_scans  # noqa: E402
from models.checkpoints.format import load_model  # noqa: E402
from models.inference.forward import (EXPORT_USAGE, INFERENCE_MODES, checkpoint_target, export_program,  # noqa: E402
                              for_inference, inference_network, reconstruct)
from models.nets.registry import describe_arch, image_channels_of, reconstructor  # noqa: E402
from models.training.distributed import resolve_device  # noqa: E402
from utils import CliParser, UserError, refuse_to_overwrite, run_cli  # noqa: E402

STAGE_PREFIX = ".reconstruct-"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="a checkpoint of this project (best_model.pt; an SFT checkpoint gives its teacher)")
    parser.add_argument("inputs", type=Path, nargs="*", metavar="INPUT",
                        help="fastMRI .h5, ISMRMRD .h5 / .mrd or NIfTI .nii / .nii.gz files")
    parser.add_argument("--out-dir", type=Path, help="where the reconstructions go")
    parser.add_argument("--export", type=Path, metavar="FILE.pt2",
                        help="instead: write the network (in --mode) as a torch.export program that runs with torch "
                             "alone, without this repository (dynamic batch, height and width)")
    parser.add_argument("--format", choices=tuple(WRITERS), default="nifti",
                        help="nifti: {name}.nii.gz; fastmri: {name}.h5 with 'reconstruction' (S, H, W), fastMRI's "
                             "submission format")
    parser.add_argument("--png", action="store_true", help="also write png/{name}_{slice}.png previews")
    parser.add_argument("--no-undersample", action="store_true",
                        help="take a file's k-space as acquired (its non-zero lines) instead of undersampling fully "
                             "sampled k-space with the checkpoint's mask")
    parser.add_argument("--mask", type=Path, help="mask .npy (H, W) for synthetic undersampling (default: the one "
                                                  "the checkpoint's run recorded)")
    parser.add_argument("--acc", type=acc_type, help="which of the checkpoint's accelerations' mask to use "
                                                     "(default: its first)")
    parser.add_argument("--size", type=int, help="slice size, only for checkpoints that record none")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=2, help="slice axis of NIfTI volumes")
    parser.add_argument("--mode", choices=tuple(INFERENCE_MODES), default="exact",
                        help="; ".join(f"{name}: {text}" for name, (text, _) in INFERENCE_MODES.items()))
    parser.add_argument("--batch-size", type=int, default=4, help="slices per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    model, ckpt = load_model(args.checkpoint, "CHECKPOINT")
    if args.export is not None:
        if args.inputs or args.out_dir:
            raise UserError("--export writes the network alone; drop the INPUT files and --out-dir (or --export)")
        export(args, model, ckpt)
        return
    if not args.inputs or args.out_dir is None:
        raise UserError("pass INPUT files and --out-dir (or --export FILE.pt2 to write the network alone)")
    target = checkpoint_target(args.checkpoint, ckpt, args.acc, args.mask, args.size)
    options = ReadOptions(target.image, args.axis, args.no_undersample)
    scans = [scan for path in args.inputs for scan in read_scans(path, options)]
    seen: dict[str, str] = {}
    for scan in scans:
        other = seen.setdefault(scan.name.lower(), scan.label)
        if other != scan.label:
            raise UserError(f"{other} and {scan.label} would both be written as {scan.name}; rename one of them")
    for scan in scans:  # before any work; staged() checks again, under the folder's lock
        check_scan(scan, target)
        refuse_to_overwrite(args.out_dir / FILE_NAMES[args.format].format(name=scan.name), args.overwrite, "--out-dir")
    device = resolve_device(args.device)
    net = reconstructor(model)
    write = WRITERS[args.format]
    total = 0
    record: dict = {"checkpoint": str(args.checkpoint), "mode": args.mode, "scans": {}}
    with staged(args.out_dir, "--out-dir", STAGE_PREFIX, "manifest.json", args.overwrite, record) as stage:
        for scan in scans:
            if target.coils and not args.no_progress:  # maps take seconds a slice, before the progress bar starts
                print(f"{scan.name}: {target.maps} coil maps of {len(scan.data)} slices ...", file=sys.stderr,
                      flush=True)
            start = time.perf_counter()
            inputs = network_inputs(scan, target)
            preparing = (time.perf_counter() - start) / len(inputs.zero_filled)
            ready = inference_network(for_inference(net, device, tuple(inputs.zero_filled.shape[-2:]), args.batch_size),
                                      args.mode)
            recon, seconds = reconstruct(ready, inputs, device, args.batch_size, not args.no_progress, scan.name)
            recon = inputs.crop(recon)
            write(stage, scan.name, recon, (inputs.slope, inputs.intercept), inputs.affine)
            if args.png:
                write_png(stage, scan.name, recon)
            total += len(recon)
            record["scans"][scan.name] = {"input": scan.label, "slices": len(recon),
                                          **({"multicoil": inputs.coil_record} if inputs.coil_record else {})}
            print(f"{scan.name}: {len(recon)} slices of {recon.shape[1]} x {recon.shape[2]}, "
                  f"{seconds * 1e3:.1f} ms per slice ({device.type}), inputs {preparing * 1e3:.1f} ms per slice"
                  f"{_coil_note(inputs.coil_record)}")
    print(f"wrote {len(scans)} reconstruction(s), {total} slices, to {args.out_dir} (--format {args.format}"
          f"{', png/' if args.png else ''})")


def _coil_note(coils: dict | None) -> str:
    """'; 16 coils compressed to 8, espirit maps' for a multi-coil scan's record, '' for single-coil ones."""
    if coils is None:
        return ""
    compressed = f" compressed to {coils['coil_compress']}" if coils["coil_compress"] else ""
    return f"; {coils['coils']} coil{'s' if coils['coils'] > 1 else ''}{compressed}, {coils['maps']} maps"


def export(args: argparse.Namespace, model, ckpt: dict) -> None:
    """--export: the checkpoint's reconstructing network as a self-contained torch.export program."""
    if args.export.suffix != ".pt2":
        raise UserError(f"--export {args.export}: name the program FILE.pt2 (torch.export's format)")
    refuse_to_overwrite(args.export, args.overwrite, "--export path", "--export")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if config.get("coils"):
        raise UserError(f"{args.checkpoint} was trained on multi-coil data ({config['coils']} coils); --export "
                        "writes single-coil programs (zero_filled, kspace_under, mask): reconstruct its scans with "
                        "INPUT files")
    content = config.get("content", {})
    channels = image_channels_of(ckpt["arch"])
    info = {"checkpoint": str(args.checkpoint), "arch": ckpt["arch"], "run_name": ckpt.get("run_name"),
            "image": IMAGE_TYPES.get(channels), "trained_size": content.get("image_size") if isinstance(content, dict)
            else None}
    export_program(reconstructor(model), args.export, channels, info, args.mode)
    print(f"wrote {args.export}: {describe_arch(ckpt['arch'])} in --mode {args.mode} as a torch.export program; "
          f"{EXPORT_USAGE.replace('PATH', repr(str(args.export)))}")


if __name__ == "__main__":
    run_cli(main)
