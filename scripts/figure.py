"""Draw the qualitative figure: target, ZF and each model's reconstruction of one slice, with error maps.

Usage::

    python evaluate.py ... --out-dir results/eval_4x --save-recons
    python -m scripts.figure --eval-dir results/eval_4x --data-root data/demo --acc 4x \
        --models teacher student stdkd-at sftkd-at --inset 60 80 40 --out-dir results/figure_4x

Top row: target, ZF (the data file's ``img_volus_{acc}``) and every model's reconstruction (from
``EVAL_DIR/recons/{model}/{volume}.h5``), all grey with the target's range. Bottom row: ``|recon - target|``
times ``--error-scale``, one shared colour scale (0 to the target's maximum). Each panel's title gives the
slice's PSNR / SSIM (``models.evaluation.metrics.psnr`` / ``models.evaluation.metrics.ssim``). ``--inset Y0 X0 SIZE`` outlines a
square on every image and shows it enlarged in the panel's corner. ``--median-of MODEL`` shows the slice whose
PSNR for MODEL (``EVAL_DIR/metrics.csv``) is the median of the scored slices, and the figure's title says so (what
scripts/demo.sh draws: a typical slice, not the best or the edge of the brain). Otherwise the slice is the one with
the largest target energy (sum of squares) in the chosen volume (default: the first volume of the split). The
figure is ``--out-dir``/figure.png.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or available on servers
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.figure ...", file=sys.stderr)
    sys.exit(2)

from data.layout import RSS_KEY, acc_folder, keys_for  # noqa: E402
from data.masks import acc_type  # noqa: E402
from models.evaluation.engine import ZF_NAME  # noqa: E402
from models.evaluation.recons import RECON_KEY  # noqa: E402
from models.evaluation.metrics import psnr, ssim  # noqa: E402
from data.outputs import atomic_write  # noqa: E402
from utils import CliParser, UserError, clean_text, first_line, old_spellings, refuse_to_overwrite, run_cli  # noqa: E402

FIGURE = "figure.png"


def _magnitude(values: np.ndarray) -> np.ndarray:
    """float64 values of a real image as they are, the magnitude of a complex one."""
    return np.abs(values) if np.iscomplexobj(values) else np.asarray(values, dtype=np.float64)


def read_volume(path: Path, acc: str) -> tuple[np.ndarray, np.ndarray]:
    """Target and ZF images of one data file, each (S, H, W) float64 (the file stores (H, W, S)); complex images
    are shown as their magnitude, which evaluate.py scores and saves; multi-coil targets are the stored RSS."""
    target_key, zf_key, _ = keys_for(acc)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (target_key, zf_key) if k not in f]
            if missing:
                raise UserError(f"{path} has no dataset {missing[0]!r}; is it prepared for --acc {acc}?")
            # Multi-coil data are scored against the RSS of the fully sampled coils (data/layout.py).
            target = _magnitude(f[RSS_KEY][()] if RSS_KEY in f else f[target_key][()])
            zero_filled = _magnitude(f[zf_key][()])
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({first_line(exc, 100)})") from exc
    if target.ndim == 2:
        target, zero_filled = target[..., None], zero_filled[..., None]
    return np.moveaxis(target, -1, 0), np.moveaxis(zero_filled, -1, 0)


def read_recon(path: Path, n_slices: int) -> np.ndarray:
    """One model's reconstruction written by ``evaluate.py --save-recons``: (S, H, W) float64."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; run evaluate.py with --save-recons (and this model) "
                        "into --eval-dir, or leave the model out of --models")
    try:
        with h5py.File(path, "r") as f:
            if RECON_KEY not in f:
                raise UserError(f"{path} has no dataset '{RECON_KEY}'; rerun evaluate.py --save-recons")
            recon = np.asarray(f[RECON_KEY][()], dtype=np.float64)
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({first_line(exc, 100)}); rerun "
                        "evaluate.py --save-recons") from exc
    if recon.ndim != 3 or recon.shape[0] != n_slices:
        raise UserError(f"{path} holds {recon.shape} but the data volume has {n_slices} slices; was it "
                        "evaluated on another --split or --data-root?")
    return recon


def default_slice(target: np.ndarray) -> int:
    """Index of the slice with the largest energy (sum of squares); target: (S, H, W) float."""
    return int(np.argmax(np.sum(target ** 2, axis=(1, 2))))


def median_slice(scores: dict[tuple[str, int], float]) -> tuple[str, int]:
    """The (volume, slice) whose score is the median: rank ``(n - 1) // 2`` of the scores sorted ascending (the
    lower of the two middle ones when n is even, so it is always a scored slice); ties in (volume, slice) order.
    scores: (volume, slice) -> PSNR, at least one."""
    ranked = sorted(scores, key=lambda key: (scores[key], key))
    return ranked[(len(ranked) - 1) // 2]


def model_scores(eval_dir: Path, model: str, volume: str | None) -> dict[tuple[str, int], float]:
    """(volume, slice) -> PSNR of ``model`` in ``EVAL_DIR/metrics.csv`` (only ``volume``'s slices when given)."""
    path = eval_dir / "metrics.csv"
    if not path.is_file():
        raise UserError(f"--median-of needs {path}; pass an evaluate.py --out-dir as --eval-dir")
    scores: dict[tuple[str, int], float] = {}
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("model") == model and (volume is None or row.get("volume") == volume):
                    scores[(row["volume"], int(row["slice"]))] = float(row["PSNR"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not an evaluate.py metrics.csv ({first_line(exc, 100)}); "
                        "rerun evaluate.py") from exc
    if not scores:
        raise UserError(f"--median-of {model}: {path} has no rows of that model"
                        + (f" on volume {volume}" if volume else "") + "; name a model it scored")
    return scores


def eval_models(eval_dir: Path, acc: str) -> list[str]:
    """Model names with reconstructions in ``eval_dir``, in evaluate.py's order; a wrong ``acc`` is an error."""
    summary_path = eval_dir / "summary.json"
    order: list[str] = []
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{summary_path} is not valid JSON ({exc}); rerun evaluate.py") from exc
        if not isinstance(summary, dict):
            raise UserError(f"{summary_path} is not an evaluate.py summary (a JSON object); rerun evaluate.py")
        if summary.get("acc") not in (None, acc):
            raise UserError(f"{summary_path} was evaluated at {summary['acc']} but --acc is {acc}; "
                            "use the matching --acc or --eval-dir")
        order = list(summary.get("checkpoints", {}))
    recons = eval_dir / "recons"
    found = sorted(p.name for p in recons.iterdir() if p.is_dir()) if recons.is_dir() else []
    return [name for name in order if name in found] + [name for name in found if name not in order]


def draw(target: np.ndarray, recons: dict[str, np.ndarray], title: str, error_scale: float,
         inset: tuple[int, int, int] | None, suptitle: str | None = None) -> Figure:
    """The figure for one slice. target and every recon (the ZF image first): (H, W) float64; ``suptitle``, when
    given, heads the figure."""
    n_cols = 1 + len(recons)
    fig = Figure(figsize=(2.3 * n_cols, 5.0), dpi=150, layout="constrained")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    axes = fig.subplots(2, n_cols, squeeze=False)
    vmax = float(target.max()) or 1.0
    error_image = None
    for col, (name, image) in enumerate([("Target", target), *recons.items()]):
        name = clean_text(name)  # a folder name
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(image, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
        if col == 0:
            top.set_title(f"{name}\n{title}", fontsize=8)
            bottom.text(0.5, 0.5, f"error maps\n|recon - target|\nx{error_scale:g}", ha="center",
                        va="center", fontsize=9, transform=bottom.transAxes)
            bottom.set_axis_off()
        else:
            top.set_title(f"{name}\n{psnr(target, image):.2f} dB / {ssim(target, image):.4f}", fontsize=8)
            error_image = bottom.imshow(np.abs(image - target) * error_scale, cmap="inferno", vmin=0.0,
                                        vmax=vmax, interpolation="nearest")
            bottom.set_title(f"{name} error x{error_scale:g}", fontsize=8)
        if inset is not None:
            add_inset(top, image, vmax, inset)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    if error_image is not None:
        fig.colorbar(error_image, ax=axes[1, :].tolist(), shrink=0.8,
                     label=f"|recon - target| x {error_scale:g}")
    return fig


def evaluated_split(eval_dir: Path) -> str:
    """The split an evaluate.py folder scored (its summary.json), ``validation`` for folders that record none."""
    try:
        return str(json.loads((eval_dir / "summary.json").read_text()).get("split") or "validation")
    except (OSError, ValueError, AttributeError):
        return "validation"


def add_inset(ax, image: np.ndarray, vmax: float, inset: tuple[int, int, int]) -> None:
    """Outline the square ``inset = (y0, x0, size)`` on ``ax`` and show it enlarged in the lower right."""
    y0, x0, size = inset
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), size, size, fill=False, edgecolor="yellow", linewidth=0.8))
    zoom = ax.inset_axes([0.58, 0.0, 0.42, 0.42])
    zoom.imshow(image[y0:y0 + size, x0:x0 + size], cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
    zoom.set_xticks([])
    zoom.set_yticks([])
    for spine in zoom.spines.values():
        spine.set_edgecolor("yellow")


def build_parser() -> CliParser:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", required=True, type=Path, help="an evaluate.py --save-recons --out-dir")
    parser.add_argument("--data-root", required=True, type=Path, help="the data evaluate.py read")
    parser.add_argument("--acc", required=True, type=acc_type, help="acceleration, e.g. 4x")
    parser.add_argument("--split", default=None,
                        help="the split evaluate.py scored (default: the one its summary.json records)")
    parser.add_argument("--volume", help="volume (file name, .h5 optional; default: the first)")
    parser.add_argument("--slice", type=int, help="slice index (default: largest target energy)")
    parser.add_argument("--median-of", metavar="MODEL",
                        help="show the slice with the median PSNR of MODEL over the scored slices (metrics.csv; "
                             "of --volume only, when given), named in the figure's title")
    parser.add_argument("--models", nargs="+", help="models to show, in order (default: all with recons)")
    parser.add_argument("--error-scale", type=float, default=5.0, help="error map magnification (default 5)")
    parser.add_argument("--inset", nargs=3, type=int, metavar=("Y0", "X0", "SIZE"),
                        help="zoom on the square of SIZE pixels whose top-left corner is (Y0, X0)")
    old_spellings(parser.add_argument("--out-dir", "--output", "--out", required=True, type=Path,
                                      help="where the figure goes, as figure.png"), "--output", "--out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir/figure.png")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UserError(f"--out-dir {args.out_dir} is a file; give the folder the figure goes into")
    out = args.out_dir / FIGURE
    refuse_to_overwrite(out, args.overwrite, "--out-dir")
    if not args.error_scale > 0:
        raise UserError(f"--error-scale {args.error_scale} must be positive")
    if not args.eval_dir.is_dir():
        raise UserError(f"--eval-dir {args.eval_dir} does not exist; pass an evaluate.py --out-dir")
    available = eval_models(args.eval_dir, args.acc)
    args.split = args.split or evaluated_split(args.eval_dir)
    folder = acc_folder(args.data_root, args.split, args.acc)
    files = sorted(folder.glob("*.h5"))
    if not files:
        raise UserError(f"no .h5 files in {folder}; check --data-root, --split and --acc")
    if args.median_of is not None and args.slice is not None:
        raise UserError("--slice and --median-of both choose the slice; give one of them")
    suptitle = None
    if args.median_of is not None:
        volume = args.volume.removesuffix(".h5") if args.volume else None
        scores = model_scores(args.eval_dir, args.median_of, volume)
        args.volume, args.slice = median_slice(scores)
        volumes = len({v for v, _ in scores})
        suptitle = (f"{args.split} split, {args.volume} slice {args.slice}: the median {args.median_of} PSNR "
                    f"({scores[(args.volume, args.slice)]:.2f} dB) of {len(scores)} slices of {volumes} "
                    f"volume{'s' if volumes != 1 else ''}")
    if args.volume is None:
        data_file = files[0]
    else:
        data_file = folder / (args.volume if args.volume.endswith(".h5") else f"{args.volume}.h5")
        if not data_file.is_file():
            raise UserError(f"--volume {args.volume}: {data_file} does not exist; volumes are "
                            + ", ".join(f.stem for f in files[:10]))
    target, zero_filled = read_volume(data_file, args.acc)
    n_slices, height, width = target.shape
    slice_idx = default_slice(target) if args.slice is None else args.slice
    if not 0 <= slice_idx < n_slices:
        raise UserError(f"--slice {slice_idx} is outside 0..{n_slices - 1} of {data_file.name}")
    if args.inset is not None:
        y0, x0, size = args.inset
        if size < 2 or y0 < 0 or x0 < 0 or y0 + size > height or x0 + size > width:
            raise UserError(f"--inset {y0} {x0} {size} does not fit in the {height}x{width} slices; "
                            "Y0 + SIZE and X0 + SIZE must stay inside (SIZE >= 2)")
    models = args.models or available
    if not models:
        raise UserError(f"{args.eval_dir} has no recons/ folder with reconstructions; rerun evaluate.py "
                        "with --save-recons")
    recons = {ZF_NAME: zero_filled[slice_idx]}
    for name in models:
        if name == ZF_NAME:
            continue
        path = args.eval_dir / "recons" / name / f"{data_file.stem}.h5"
        recons[name] = read_recon(path, n_slices)[slice_idx]

    fig = draw(target[slice_idx], recons, f"{data_file.stem}, slice {slice_idx}", args.error_scale,
               tuple(args.inset) if args.inset else None, suptitle)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(out, lambda f: f.write(buffer.getvalue()))
    print(clean_text(f"wrote {out} ({data_file.stem}, slice {slice_idx}, models: {', '.join(recons)})"
                     + (f"; title: {suptitle}" if suptitle else ""), None))


if __name__ == "__main__":
    run_cli(main)
