"""Turn NIfTI volumes (or nilearn's MNI152 demo brain) into the original KD-MRI / SFT-KD-Recon HDF5 layout.

    python data/prepare.py --input ACDC/database/training --out data/acdc --size 150
    python data/prepare.py --input MRBrainS/TrainingData/*/T1.nii --out data/mrbrains --size 240
    python data/prepare.py --demo --out data/demo --size 64 --max-slices-per-volume 40

Any 3-D NIfTI works; a 4-D volume (e.g. an ACDC cine ``patient001_4d.nii.gz``) is split along its last
axis into 3-D volumes named ``{name}_t{k}`` (k zero-padded). Directories are searched recursively for
``.nii`` / ``.nii.gz``; ``--exclude`` (default ``*_gt.nii*``, ACDC's segmentation label maps) drops files by
name. For ACDC point ``--input`` at the patient folders (or their parent); each folder's cine
``_4d`` and its ED/ES ``_frameXX`` files are then all used (the frames repeat cine frames); add
``--exclude '*_gt.nii*' '*_4d.nii*'`` to keep only ED and ES. The paper used 150 x 150 slices for ACDC and
240 x 240 for MRBrainS; MRBrainS folders also hold other sequences and label maps, so name the T1 files.

Per volume: float64, min-max scaled to [0, 1], slice axis moved last -> (H, W, S), centre crop/pad (or
``--resize``) to N x N, near-empty slices dropped. The split is by volume group, never by slice, so no
anatomy is shared: files are grouped by the folder holding them (one patient / subject per folder, as ACDC
and MRBrainS ship, which keeps a patient's cine, ED and ES frames together) unless all files sit in one
folder, in which case each file is its own group. A single input file (the demo) is split by slice blocks:
the highest kept slices form the validation block, the two kept slices below it are dropped as a gap, and
the rest is training, so no slice has a neighbour in the other split. The MNI152 template is one average
brain: the demo exercises the pipeline, it is no benchmark.

Output: ``{out}/mask_{acc}.npy`` (N, N) float32 and ``{out}/{train,validation}/acc_{acc}/{volume}.h5`` with
``volfs`` (H, W, S) float32, ``kspace_volus_{acc}`` (H, W, S) complex64 = mask * fft2(volfs) (unshifted,
orthonormal) and ``img_volus_{acc}`` (H, W, S) float32 = |ifft2(kspace)|. Attributes ``source_file``,
``slice_axis`` and ``source_slices`` (the slice index in the source volume of each of the S slices) are
extras that the original readers ignore.
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Run as `python data/prepare.py` from the repo root: make the top-level packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.fft import fft2, zero_filled  # noqa: E402
from data.masks import cartesian_row_mask, load_mask, parse_acc, save_mask  # noqa: E402
from utils import CliParser, UserError, first_line, run_cli  # noqa: E402

SPLITS = ("train", "validation")
DEFAULT_ACCS = ("4x", "5x")
DEFAULT_EXCLUDE = ("*_gt.nii*",)
# A pixel counts as foreground above 5% of the volume maximum (1 after min-max scaling).
FOREGROUND_LEVEL = 0.05
# Slices dropped between the train and validation blocks of a single volume, so no neighbours are shared.
BLOCK_GAP = 2
STAGE_PREFIX = ".prepare-"


@dataclass
class Source:
    """One input image: ``name`` unique in the output, ``label`` for messages, ``group`` decides the split."""

    name: str
    label: str
    group: str
    image: Any  # nibabel image; its data is read only when the volume is processed
    shape: tuple[int, ...]  # 3-D or 4-D, trailing singleton dimensions past the third removed


# --------------------------------------------------------------------------- finding and opening inputs

def _is_nifti(name: str) -> bool:
    return name.lower().endswith((".nii", ".nii.gz"))


def _base_name(path: Path) -> str:
    lower = path.name.lower()
    for ext in (".nii.gz", ".nii"):
        if lower.endswith(ext):
            return path.name[:-len(ext)]
    return path.stem


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "volume"


def find_nifti(inputs: list[str | Path], exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE) -> list[Path]:
    """Files named by ``inputs``: files as given, directories searched recursively for ``.nii``/``.nii.gz``.

    Hidden files (``._x.nii`` from macOS) and names matching a glob in ``exclude`` are skipped inside
    directories; an explicitly named file is always used. Duplicates are removed, order is kept.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise UserError(f"--input {path} does not exist; check the path")
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.rglob("*")
                       if p.is_file() and _is_nifti(p.name) and not p.name.startswith("."))
        kept = [p for p in found if not any(fnmatch.fnmatch(p.name, pattern) for pattern in exclude)]
        if not kept:
            why = f" ({len(found)} matched --exclude {' '.join(exclude)})" if found else ""
            raise UserError(f"--input {path}: no .nii or .nii.gz files found, searched recursively{why}; "
                            "point --input at the folders holding the NIfTI volumes")
        files.extend(kept)
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def volume_names(paths: list[Path]) -> list[str]:
    """Unique output names: the file name without ``.nii[.gz]``, prefixed by as many parent folders as needed.

    MRBrainS ships ``1/T1.nii``, ``2/T1.nii``, ...: they become ``1_T1``, ``2_T1``.
    """
    bases = [_clean(_base_name(p)) for p in paths]
    parents = [p.resolve().parent.parts for p in paths]
    for depth in range(max(len(parts) for parts in parents) + 1):
        names = ["_".join([*(_clean(part) for part in parts[len(parts) - depth:]), base])
                 for parts, base in zip(parents, bases)]
        if len(set(names)) == len(names):
            return names
    return [f"{base}_{i}" for i, base in enumerate(bases)]


def _volume_shape(image: Any, label: str) -> tuple[int, ...]:
    shape = list(getattr(image, "shape", ()))
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) < 3:
        raise UserError(f"{label} has {len(shape)} dimension(s) {tuple(shape)}; a 3-D volume "
                        "(or a 4-D cine, split into 3-D volumes) is required")
    if len(shape) > 4:
        raise UserError(f"{label} has {len(shape)} dimensions {tuple(shape)}; only 3-D volumes and 4-D "
                        "series (split along the last axis) are supported")
    return tuple(shape)


def nifti_sources(inputs: list[str | Path], exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE) -> list[Source]:
    """Open (headers only) every NIfTI under ``inputs`` and assign split groups (see the module docstring)."""
    paths = find_nifti(inputs, exclude)
    folders = {p.resolve().parent for p in paths}
    sources = []
    for path, name in zip(paths, volume_names(paths)):
        try:
            image = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for foreign or corrupt files
            raise UserError(f"{path} cannot be read by nibabel ({first_line(exc)}); pass NIfTI volumes "
                            "(.nii or .nii.gz)") from exc
        if not hasattr(image, "dataobj"):
            raise UserError(f"{path} is not a volume image ({type(image).__name__}); pass NIfTI volumes")
        group = str(path.resolve().parent) if len(folders) > 1 else str(path.resolve())
        sources.append(Source(name, str(path), group, image, _volume_shape(image, str(path))))
    return sources


def demo_source(resolution: int = 1) -> Source:
    """nilearn's MNI152 T1 template (197 x 233 x 189 at 1 mm, 99 x 117 x 95 at 2 mm), from the wheel, offline."""
    from nilearn.datasets import load_mni152_template  # slow import, only the demo needs it
    image = load_mni152_template(resolution=resolution)
    label = f"the MNI152 template ({resolution} mm)"
    return Source(f"MNI152_T1_{resolution}mm", label, "demo", image, _volume_shape(image, label))


def read_volumes(source: Source) -> list[tuple[str, np.ndarray]]:
    """Read a source's data: ``[(name, (X, Y, Z) float64)]``, one entry per frame of a 4-D series."""
    try:
        data = np.asarray(source.image.dataobj, dtype=np.float64).reshape(source.shape)
    except Exception as exc:
        raise UserError(f"{source.label}: cannot read the image data ({first_line(exc)}); the file may be "
                        "truncated: re-copy it") from exc
    if not np.isfinite(data).all():
        raise UserError(f"{source.label} contains NaN or Inf values; fix or remove this volume")
    if data.ndim == 3:
        return [(source.name, data)]
    width = len(str(data.shape[3] - 1))
    return [(f"{source.name}_t{t:0{width}d}", data[..., t]) for t in range(data.shape[3])]


# --------------------------------------------------------------------------- slices

def crop_or_pad(slices: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop or zero-pad each in-plane axis. slices: (H, W, S) -> (size, size, S), same dtype."""
    for axis in (0, 1):
        extent = slices.shape[axis]
        if extent > size:
            start = (extent - size) // 2
            slices = np.take(slices, np.arange(start, start + size), axis=axis)
        elif extent < size:
            widths = [(0, 0)] * slices.ndim
            widths[axis] = ((size - extent) // 2, size - extent - (size - extent) // 2)
            slices = np.pad(slices, widths)
    return slices


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad to square (keeps the aspect ratio), then anti-aliased bilinear resize to (size, size, S).

    slices: (H, W, S) float64 in [0, 1]. Returns (size, size, S) float64 clipped to [0, 1].
    """
    from skimage.transform import resize  # slow import, only --resize needs it
    square = crop_or_pad(slices, max(slices.shape[:2]))
    resized = resize(square, (size, size, slices.shape[2]), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(resized, 0.0, 1.0)


def fft_friendly(n: int) -> int:
    """Smallest integer >= ``n`` whose only prime factors are 2, 3 and 5 (e.g. 233 -> 240).

    Training runs 10 to 30 FFTs per step; a prime side such as the template's 233 makes each several
    times slower than a 5-smooth one.
    """
    while True:
        rest = n
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


def make_slices(volume: np.ndarray, axis: int, size: int, resize: bool = False) -> np.ndarray:
    """Volume (X, Y, Z) float -> (size, size, S) float32 slices in [0, 1], ``axis`` becoming the slice axis.

    Min-max scaling is per volume; a constant volume becomes all zeros (and all its slices are dropped).
    """
    low, high = float(volume.min()), float(volume.max())
    scaled = (volume - low) / (high - low) if high > low else np.zeros_like(volume)
    slices = np.moveaxis(scaled, axis, -1)
    slices = resize_slices(slices, size) if resize else crop_or_pad(slices, size)
    return np.ascontiguousarray(slices, dtype=np.float32)


def kept_slices(slices: np.ndarray, min_foreground: float, max_slices: int | None = None) -> np.ndarray:
    """Indices of slices whose foreground fraction is at least ``min_foreground``; int64 (K,).

    slices: (H, W, S) float in [0, 1]. ``max_slices`` keeps only that many central ones of the kept slices.
    """
    fraction = (slices > FOREGROUND_LEVEL).mean(axis=(0, 1))
    kept = np.flatnonzero(fraction >= min_foreground)
    if max_slices is not None and len(kept) > max_slices:
        start = (len(kept) - max_slices) // 2
        kept = kept[start:start + max_slices]
    return kept


def block_split(indices: np.ndarray, val_fraction: float, label: str) -> dict[str, np.ndarray]:
    """Split sorted slice ``indices`` of one volume into a training block and a higher validation block.

    The top ``ceil(val_fraction * K)`` indices are validation, the ``BLOCK_GAP`` below them are dropped.
    """
    n_val = math.ceil(val_fraction * len(indices))
    n_train = len(indices) - n_val - BLOCK_GAP
    if n_train < 1:
        raise UserError(f"{label} has only {len(indices)} usable slices: too few to split one volume into "
                        f"train and validation blocks with a {BLOCK_GAP}-slice gap; lower --min-foreground "
                        "or raise --max-slices-per-volume")
    return {"train": indices[:n_train], "validation": indices[len(indices) - n_val:]}


def split_groups(groups: list[str], val_fraction: float, seed: int) -> set[str]:
    """Groups drawn for validation: seeded shuffle, ``round(val_fraction * n)`` of them, at least 1, at most n-1."""
    order = sorted(set(groups))
    np.random.default_rng(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, int(val_fraction * len(order) + 0.5)))
    return set(order[:n_val])


# --------------------------------------------------------------------------- k-space and files

def undersample(volfs: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Undersampled k-space and zero-filled images of a volume for each acceleration.

    volfs: (H, W, S) float32; masks: acc -> (H, W) float32 {0, 1}. Returns acc -> (``kspace`` (H, W, S)
    complex64 = mask * fft2(volfs), ``zf`` (H, W, S) float32 = |ifft2(kspace)|), computed in double
    precision from the stored values so the files satisfy these relations to float32 rounding.
    """
    full = fft2(torch.from_numpy(np.moveaxis(volfs, -1, 0).astype(np.float64)))
    result = {}
    for acc, mask in masks.items():
        kspace = (full * torch.from_numpy(mask.astype(np.float64))).to(torch.complex64)
        zf = zero_filled(kspace.to(torch.complex128)).to(torch.float32)
        result[acc] = (np.ascontiguousarray(np.moveaxis(kspace.numpy(), 0, -1)),
                       np.ascontiguousarray(np.moveaxis(zf.numpy(), 0, -1)))
    return result


def write_volume(path: Path, volfs: np.ndarray, kspace: np.ndarray, zf: np.ndarray, acc: str,
                 attrs: dict[str, Any]) -> None:
    """Write one volume file. volfs, zf: (H, W, S) float32; kspace: (H, W, S) complex64.

    Uncompressed for read speed, but chunked one slice per chunk: with S last, a contiguous layout would
    make reading one slice a strided gather over the whole dataset.
    """
    chunks = (volfs.shape[0], volfs.shape[1], 1)
    with h5py.File(path, "w") as f:
        f.create_dataset("volfs", data=volfs, chunks=chunks)
        f.create_dataset(f"kspace_volus_{acc}", data=kspace, chunks=chunks)
        f.create_dataset(f"img_volus_{acc}", data=zf, chunks=chunks)
        for key, value in attrs.items():
            f.attrs[key] = value


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace its mask_*.npy, "
                        "train/ and validation/, or choose another folder")


def _remove_outputs(out: Path, keep: Path) -> None:
    """Delete what an earlier run of this tool wrote in ``out`` (and stale staging folders), nothing else."""
    for path in out.glob("mask_*.npy"):
        path.unlink()
    for path in [*(out / split for split in SPLITS), *out.glob(f"{STAGE_PREFIX}*")]:
        if path == keep or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextmanager
def _staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder inside ``out``; on success move its contents into ``out``, on failure delete it.

    A crash or a bad volume half-way therefore never leaves a partial data set, and with --overwrite the
    old data stays until the new one is complete.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    if overwrite:
        _remove_outputs(out, keep=stage)
    for item in sorted(stage.iterdir()):
        os.replace(item, out / item.name)
    stage.rmdir()


# --------------------------------------------------------------------------- the whole job

def _check_options(inputs, demo, size, resize, accs, val_fraction, min_foreground, max_slices,
                   seed) -> list[str]:
    if demo and inputs:
        raise UserError("pass either --input or --demo, not both")
    if not demo and not inputs:
        raise UserError("no data: pass --input FILES_OR_FOLDERS (NIfTI) or --demo (MNI152 template)")
    if size is not None and size < 8:
        raise UserError(f"--size {size} is too small; use at least 8 (the paper: 150 for ACDC, 240 for MRBrainS)")
    if resize and size is None:
        raise UserError("--resize needs --size N (the output slice size)")
    if not accs:
        raise UserError("--acc needs at least one acceleration, e.g. --acc 4x 5x")
    for acc in accs:
        parse_acc(acc)
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction} must be between 0 and 1 (exclusive), e.g. 0.2")
    if not 0.0 <= min_foreground < 1.0:
        raise UserError(f"--min-foreground {min_foreground} must be in [0, 1), e.g. 0.05")
    if max_slices is not None and max_slices < 1:
        raise UserError(f"--max-slices-per-volume {max_slices} must be at least 1")
    if not 0 <= seed < 2 ** 32:
        raise UserError(f"--seed {seed} is out of range; use a whole number from 0 to {2 ** 32 - 1}")
    return list(dict.fromkeys(accs))


def _masks(accs: list[str], size: int, mask_dir: str | Path | None, seed: int) -> dict[str, np.ndarray]:
    if mask_dir is None:
        return {acc: cartesian_row_mask((size, size), acc, seed=seed) for acc in accs}
    folder = Path(mask_dir)
    if not folder.is_dir():
        raise UserError(f"--mask-dir {folder} does not exist; pass the folder holding mask_{{acc}}.npy")
    masks = {}
    for acc in accs:
        path = folder / f"mask_{acc}.npy"
        if not path.is_file():
            raise UserError(f"--mask-dir {folder} has no mask_{acc}.npy; add it or drop --mask-dir to "
                            "generate masks")
        masks[acc] = load_mask(path, (size, size))
    return masks


def _plan_source(source: Source, axis: int, size: int, resize: bool, min_foreground: float,
                 max_slices: int | None, val_fraction: float, by_blocks: bool, val_groups: set[str]
                 ) -> tuple[list[tuple[str, np.ndarray, dict[str, np.ndarray]]], int]:
    """Read one source and decide which slices of each of its volumes go to which split.

    Returns ``[(name, slices (N, N, S) float32, {split: kept source slice indices})]`` and the number of
    near-empty slices skipped. In block mode all frames of a 4-D source share one slice partition, so a
    slice position is never in both splits.
    """
    frames, skipped = [], 0
    for name, volume in read_volumes(source):
        slices = make_slices(volume, axis, size, resize)
        kept = kept_slices(slices, min_foreground, max_slices)
        skipped += slices.shape[2] - len(kept)
        frames.append((name, slices, kept))
    if not by_blocks:
        split = "validation" if source.group in val_groups else "train"
        return [(name, slices, {split: kept}) for name, slices, kept in frames], skipped
    union = np.unique(np.concatenate([kept for _, _, kept in frames]))
    if len(union) == 0:
        return [], skipped
    blocks = block_split(union, val_fraction, source.label)
    return [(name, slices, {split: np.intersect1d(kept, blocks[split]) for split in SPLITS})
            for name, slices, kept in frames], skipped


def prepare(*, out: str | Path, inputs: list[str | Path] | None = None, demo: bool = False,
            demo_resolution: int = 1, size: int | None = None, resize: bool = False, axis: int = 2,
            accs: list[str] | tuple[str, ...] = DEFAULT_ACCS, mask_dir: str | Path | None = None,
            val_fraction: float = 0.2, seed: int = 42, min_foreground: float = 0.05,
            max_slices_per_volume: int | None = None, overwrite: bool = False,
            exclude: list[str] | tuple[str, ...] = DEFAULT_EXCLUDE) -> dict[str, Any]:
    """Prepare a data set (arguments mirror the CLI flags); returns a summary dict.

    ``size=None`` keeps every slice whole: slices are zero-padded to a square of the largest in-plane
    extent over all volumes, rounded up by :func:`fft_friendly` (the 1 mm template: 233 -> 240).
    Summary keys: ``out``, ``size``, ``accs``, ``split`` ("volumes" or "slice blocks"), ``{split}_volumes``
    (names), ``{split}_slices`` (counts), ``skipped_slices``, ``elapsed_s``.
    """
    start = time.perf_counter()
    accs = _check_options(inputs, demo, size, resize, list(accs), val_fraction, min_foreground,
                          max_slices_per_volume, seed)
    if axis not in (0, 1, 2):
        raise UserError(f"--axis {axis} must be 0, 1 or 2")
    out = Path(out)
    _check_output(out, overwrite)
    sources = [demo_source(demo_resolution)] if demo else nifti_sources(inputs, exclude)
    if size is None:
        size = fft_friendly(max(extent for s in sources for i, extent in enumerate(s.shape[:3]) if i != axis))
    masks = _masks(accs, size, mask_dir, seed)
    by_blocks = len({s.group for s in sources}) == 1
    val_groups = set() if by_blocks else split_groups([s.group for s in sources], val_fraction, seed)

    volumes: dict[str, list[str]] = {split: [] for split in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    skipped = 0
    with _staged_output(out, overwrite) as stage:
        for acc, mask in masks.items():
            save_mask(stage / f"mask_{acc}.npy", mask)
            for split in SPLITS:
                (stage / split / f"acc_{acc}").mkdir(parents=True)
        for source in tqdm(sources, desc="volumes", unit="vol", disable=None):
            plan, n_skipped = _plan_source(source, axis, size, resize, min_foreground, max_slices_per_volume,
                                           val_fraction, by_blocks, val_groups)
            skipped += n_skipped
            for name, slices, assigned in plan:
                for split, indices in assigned.items():
                    if len(indices) == 0:
                        continue
                    volfs = np.ascontiguousarray(slices[:, :, indices])
                    attrs = {"source_file": source.label, "slice_axis": axis,
                             "source_slices": indices.astype(np.int64)}
                    for acc, (kspace, zf) in undersample(volfs, masks).items():
                        write_volume(stage / split / f"acc_{acc}" / f"{name}.h5", volfs, kspace, zf, acc, attrs)
                    volumes[split].append(name)
                    counts[split] += len(indices)
        if counts["train"] + counts["validation"] == 0:
            raise UserError(f"every slice was skipped as near-empty (--min-foreground {min_foreground}); "
                            "lower --min-foreground, e.g. 0.01 or 0")
        for split in SPLITS:
            if counts[split] == 0:
                raise UserError(f"the {split} split got no slices (its volumes were all near-empty); lower "
                                "--min-foreground or change --seed / --val-fraction")
    return {"out": str(out), "size": size, "accs": accs, "split": "slice blocks" if by_blocks else "volumes",
            "train_volumes": volumes["train"], "validation_volumes": volumes["validation"],
            "train_slices": counts["train"], "validation_slices": counts["validation"],
            "skipped_slices": skipped, "elapsed_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = CliParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="NIfTI files (.nii/.nii.gz) or folders searched recursively; any 3-D volume, "
                             "4-D volumes are split along the last axis into {name}_t{k}")
    parser.add_argument("--demo", action="store_true",
                        help="use nilearn's MNI152 T1 template (shipped with nilearn, no network) instead of --input")
    parser.add_argument("--demo-resolution", type=int, choices=(1, 2), default=1, help="template resolution in mm")
    parser.add_argument("--out", required=True, type=Path, help="output folder (train/, validation/, mask_*.npy)")
    parser.add_argument("--size", type=int, default=None,
                        help="slices become N x N (centre crop/pad; default: pad to a square of the largest "
                             "in-plane extent rounded up to a 2-3-5 FFT size, nothing cropped). The paper: 150 "
                             "(ACDC), 240 (MRBrainS)")
    parser.add_argument("--resize", action="store_true",
                        help="resample slices to --size (anti-aliased, aspect kept by padding) instead of crop/pad")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=2, help="slice axis of the volumes")
    parser.add_argument("--acc", nargs="+", default=list(DEFAULT_ACCS), help="accelerations, e.g. 4x 5x")
    parser.add_argument("--mask-dir", type=Path, default=None,
                        help="use mask_{acc}.npy from this folder instead of generating masks")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of volumes (or slices of a "
                                                                         "single volume) for validation")
    parser.add_argument("--seed", type=int, default=42, help="seed of the masks and of the volume split")
    parser.add_argument("--min-foreground", type=float, default=0.05,
                        help="skip slices where fewer than this fraction of the N x N output slice's pixels "
                             "exceed 5%% of the volume max")
    parser.add_argument("--max-slices-per-volume", type=int, default=None,
                        help="keep at most this many central slices of each volume (handy for the demo)")
    parser.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE), metavar="GLOB",
                        help="file-name patterns skipped inside --input folders (default: *_gt.nii*, ACDC "
                             "label maps); pass --exclude alone to skip nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace mask_*.npy, train/ and validation/ in a non-empty --out")
    args = parser.parse_args(argv)
    summary = prepare(out=args.out, inputs=args.input, demo=args.demo, demo_resolution=args.demo_resolution,
                      size=args.size, resize=args.resize, axis=args.axis, accs=args.acc, mask_dir=args.mask_dir,
                      val_fraction=args.val_fraction, seed=args.seed, min_foreground=args.min_foreground,
                      max_slices_per_volume=args.max_slices_per_volume, overwrite=args.overwrite,
                      exclude=args.exclude)
    size = summary["size"]
    print(f"train: {len(summary['train_volumes'])} volumes, {summary['train_slices']} slices; validation: "
          f"{len(summary['validation_volumes'])} volumes, {summary['validation_slices']} slices "
          f"(split by {summary['split']}; {summary['skipped_slices']} near-empty slices skipped); "
          f"{size}x{size}, acc {' '.join(summary['accs'])} -> {summary['out']} in {summary['elapsed_s']:.1f} s")
    return summary


if __name__ == "__main__":
    run_cli(main)
