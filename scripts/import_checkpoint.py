"""Convert a checkpoint of the public SFT-KD-Recon / KD-MRI code into this project's checkpoint format.

    python -m scripts.import_checkpoint --input best_model.pt --output imported/teacher.pt

The output loads with ``torch.load(weights_only=True)`` and with ``models.checkpoints.format.load_model`` /
``load_reconstructor`` / ``models.distill.student_init.load_sft``; it computes what the source network computed.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.import_checkpoint ...", file=sys.stderr)
    sys.exit(2)

from models.checkpoints.format import describe_arch  # noqa: E402
from models.checkpoints.public import import_checkpoint  # noqa: E402
from utils import CliParser, UserError, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path,
                        help="public-code checkpoint (torch.save dict with 'model', or a bare state dict)")
    parser.add_argument("--output", required=True, type=Path, help="where to write the converted checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--ref-padding", type=int, default=None,
                        help="zero padding around each block input in the source network "
                             "(default: 5 for SFT-KD-Recon tcascade/scascade keys, 0 for KD-MRI cascade keys)")
    args = parser.parse_args(argv)
    # Nothing may be created before the input is known to convert, so only look for a file in the way.
    blocker = next((p for p in args.output.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(f"--output {args.output}: {blocker} is a file, not a folder; choose another --output")
    summary = import_checkpoint(args.input, args.output, overwrite=args.overwrite,
                                ref_padding=args.ref_padding)
    epoch = "unknown" if summary["epoch"] is None else summary["epoch"]
    print(f"found {summary['layout']}: {describe_arch(summary['arch'], detail=True)}, "
          f"{summary['parameters']:,} parameters, epoch {epoch}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
