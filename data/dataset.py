"""Slice dataset over the original KD-MRI / SFT-KD-Recon HDF5 layout, read unchanged.

The layout is data/layout.py's (``{root}/{split}/acc_{acc}/*.h5`` with ``volfs``, ``img_volus_{acc}`` and
``kspace_volus_{acc}``); the mask is ``{root}/mask_{acc}.npy`` (H, W) unless a path is given.
Any float / complex dtype is accepted (other tools write float64 / complex128) and converted per slice.

Image type. A data set whose ``volfs`` (and ``img_volus``) are real holds magnitude images, served as one
channel; one whose ``volfs`` are complex (data/prepare.py's ``--image complex`` and ``--synthetic-phase``)
holds complex images, served as two channels (real, imaginary; data/fft.py). Where the k-space came from is
the files' ``kspace_source`` attribute; files without it (the original data) are magnitude-derived.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from data.fft import IMAGE_CHANNELS, magnitude, to_channels
from data.layout import COIL_SOURCE_ATTR, MAPS_METHOD_ATTR, RSS_KEY, acc_folder, keys_for, maps_key, mask_name
from data.masks import load_mask, parse_acc
from utils import UserError, first_line, format_bytes


# The kspace_source of data whose k-space was computed from real magnitude images (the paper's protocol):
# Hermitian-symmetric, unlike acquired k-space (Shimron et al., PNAS 2022).
SYNTHETIC_FROM_MAGNITUDE = "synthetic from magnitude"
# A single-coil item's maps: empty, so that collating a batch needs no special case.
NO_MAPS = torch.zeros(0, dtype=torch.complex64)
KSPACE_SOURCE_ATTR = "kspace_source"


class ReconInputs(NamedTuple):
    """What every network reads from a :class:`Sample`: ``zero_filled`` (B, C, H, W) float32 image (C = 1
    magnitude, 2 real and imaginary), ``kspace_under`` (B, 1, H, W) complex64 undersampled k-space ((B, N, H,
    W) for N-coil data), ``mask`` (B, 1, H, W) float32 of {0, 1} and ``maps``: None (single-coil) or (B, N, H,
    W) complex64 coil sensitivity maps. Call a network as ``model(*batch.inputs)``."""

    zero_filled: torch.Tensor
    kspace_under: torch.Tensor
    mask: torch.Tensor
    maps: torch.Tensor | None = None


class Sample(NamedTuple):
    """One slice of a :class:`SliceDataset`, or a batch of them: the DataLoader's default collate stacks each
    field and keeps the type (tensors gain a leading batch dimension B, strings become lists, ints a tensor).

    zero_filled: (C, H, W) float32 image, ``|F^-1(y)|`` (C = 1, magnitude data) or ``F^-1(y)`` as (real,
    imaginary) (C = 2, complex data; data/fft.py); kspace_under: (1, H, W) complex64 undersampled k-space
    ``y``; target: (C, H, W) float32 fully sampled image; mask: (1, H, W) float32 of {0, 1}; fname: the file's
    name; slice: the slice's index in its file; acc: its acceleration (``"4x"``); maps: multi-coil data's
    (N, H, W) complex64 coil sensitivity maps (then kspace_under is (N, H, W) and C = 2), and for single-coil
    data :data:`NO_MAPS`, an empty tensor so that the default collate stacks it like any other field (None
    also reads as single-coil). In a batch: (B, C, H, W), a tuple of B names, a (B,) int64 tensor and a tuple
    of B accelerations."""

    zero_filled: torch.Tensor
    kspace_under: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    fname: str | tuple[str, ...]
    slice: int | torch.Tensor
    acc: str | tuple[str, ...]
    maps: torch.Tensor | None = None

    @property
    def inputs(self) -> ReconInputs:
        return ReconInputs(self.zero_filled, self.kspace_under, self.mask, self.coil_maps)

    @property
    def coil_maps(self) -> torch.Tensor | None:
        """The sensitivity maps, or None for single-coil data."""
        return self.maps if self.maps is not None and self.maps.numel() else None

    def to(self, device: torch.device) -> "Sample":
        """The sample with its tensors on ``device`` (names, indices and accelerations as they are)."""
        return Sample(*(field.to(device, non_blocking=True) if torch.is_tensor(field) else field for field in self))


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        detail = first_line(exc, 1000)
        if "signature" in detail:
            raise UserError(f"{path} is not an HDF5 file (no HDF5 signature); remove it from the data folder "
                            "or re-run data/prepare.py") from exc
        if "truncated" in detail or "eof" in detail:
            raise UserError(f"{path} is a truncated HDF5 file (shorter than its header says); re-copy it or "
                            "re-run data/prepare.py") from exc
        raise UserError(f"{path} is not a readable HDF5 file ({detail[:100]}); re-copy it or re-run "
                        "data/prepare.py") from exc


def check_stored(path: Path, ds: h5py.Dataset) -> None:
    """Refuse a dataset that declares more data than its file holds (a damaged or forged header, e.g. 10^9
    slices) before anything of that size is allocated or read. Compressed datasets legitimately hold fewer
    bytes than they declare and are not checked."""
    declared = float(np.prod(ds.shape, dtype=np.float64)) * ds.dtype.itemsize
    size = path.stat().st_size
    if ds.compression is None and declared > size:
        raise UserError(f"{path}: '{ds.name.lstrip('/')}' declares shape {ds.shape} ({format_bytes(declared)}) "
                        f"but the file holds {format_bytes(size)}: it is damaged; re-copy it or re-run "
                        "data/prepare.py")


class SliceDataset(Dataset):
    """2-D slices of one split and one acceleration.

    Each item is a dict with ``zero_filled`` (C, H, W) float32, ``kspace_under`` (1, H, W) complex64,
    ``target`` (C, H, W) float32, ``mask`` (1, H, W) float32 (C = :attr:`channels`: 1 for magnitude data, 2
    (real, imaginary) for complex data), ``fname`` (str, the file's name),
    ``slice`` (int) and ``acc`` (str).

    The (file, slice) index is built once here; HDF5 files are opened lazily in whichever process reads
    them (each DataLoader worker gets its own handles). ``preload=True`` reads every slice into memory
    up front (and checks them all for NaN/Inf), which is what a small data set should do.
    """

    def __init__(self, root: str | Path, split: str, acc: str, mask_path: str | Path | None = None,
                 preload: bool = False):
        parse_acc(acc)
        self.root, self.split, self.acc = Path(root), split, acc
        self.keys = keys_for(acc)
        if not self.root.is_dir():
            problem = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise UserError(f"data root {self.root} {problem}; pass --data-root pointing at a folder "
                            "made by data/prepare.py (with train/ and validation/ inside)")
        folder = acc_folder(self.root, split, acc)
        if not folder.is_dir():
            raise UserError(f"{folder} does not exist: no {split} data for acceleration {acc} under "
                            f"{self.root}; check --data-root and --acc")
        self.files = sorted(folder.glob("*.h5"))
        for path in self.files:
            if not path.is_file():  # opening a FIFO would wait forever for a writer
                raise UserError(f"{path} is not a regular file (a folder, FIFO, device or broken link); remove it "
                                f"from {folder}")
        if not self.files:
            raise UserError(f"no .h5 files in {folder} (acceleration {acc}); check --acc or prepare the "
                            "data with data/prepare.py")
        self.samples: list[tuple[int, int]] = []
        shape = kinds = None
        self.coils: int | None = None
        self.maps_method: str | None = None
        self.coil_source: str | None = None  # "simulated (birdcage)" or "acquired" (files without it: None)
        for file_idx, path in enumerate(self.files):
            n_slices, file_shape, file_kinds, (coils, maps_method, coil_source) = self._inspect(path)
            if file_idx and (coils, maps_method) != (self.coils, self.maps_method):
                have = f"{coils} coils (maps: {maps_method})" if coils else "single-coil data"
                want = f"{self.coils} coils (maps: {self.maps_method})" if self.coils else "single-coil data"
                raise UserError(f"{path} holds {have} but {self.files[0].name} {want}; one coil count and one map "
                                "estimate per data set: prepare them together (--coils, --coil-compress K)")
            self.coils, self.maps_method, self.coil_source = coils, maps_method, coil_source
            if shape is not None and file_shape != shape:
                raise UserError(f"{path} has {file_shape[0]}x{file_shape[1]} slices but "
                                f"{self.files[0].name} has {shape[0]}x{shape[1]}; one size per data set")
            if kinds is not None and file_kinds != kinds:
                raise UserError(f"{path} holds {file_kinds[0]} images (k-space: {file_kinds[1]}) but "
                                f"{self.files[0].name} {kinds[0]} images (k-space: {kinds[1]}); one image type "
                                "per data set: prepare them together")
            shape, kinds = file_shape, file_kinds
            self.samples.extend((file_idx, s) for s in range(n_slices))
        self.shape = shape
        # "magnitude" or "complex" (data/fft.py), and where the k-space came from.
        self.image, self.kspace_source = kinds
        mask_file = Path(mask_path) if mask_path is not None else self.root / mask_name(acc)
        mask = load_mask(mask_file, shape)
        self._check_mask_fits(mask, mask_file)
        self.mask = torch.from_numpy(mask)[None]
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()
        self._cache: list[dict[str, np.ndarray]] | None = None
        if preload:
            self.load_into_memory()

    def load_into_memory(self) -> None:
        """Read every slice now (checking all for NaN/Inf) and serve items from memory from then on."""
        self._cache = [self._read_volume(i) for i in range(len(self.files))]

    @property
    def channels(self) -> int:
        """Image channels of the items: 1 (magnitude) or 2 (real, imaginary)."""
        return IMAGE_CHANNELS[self.image]

    @property
    def multicoil(self) -> bool:
        return self.coils is not None

    def _inspect(self, path: Path) -> tuple[int, tuple[int, int], tuple[str, str], tuple]:
        """Check keys, dtypes and shapes of one file; return its slice count, (H, W), (image type, k-space
        source) and (coils, maps method, coil source), all None for single-coil data."""
        with _open_h5(path) as f:
            shapes = []
            target = f.get(self.keys[0])
            complex_image = isinstance(target, h5py.Dataset) and target.dtype.kind == "c"
            source = f.attrs.get(KSPACE_SOURCE_ATTR, SYNTHETIC_FROM_MAGNITUDE)
            source = source.decode(errors="replace") if isinstance(source, bytes) else str(source)
            kspace = f.get(self.keys[2])
            multicoil = isinstance(kspace, h5py.Dataset) and kspace.ndim == 4
            keys = self.keys + ((maps_key(self.acc),) if multicoil else ())
            for key in keys:
                if key not in f:
                    raise UserError(f"{path} has no dataset '{key}' (found: {', '.join(sorted(f.keys()))}); "
                                    f"is it prepared for acceleration {self.acc}?")
                ds = f[key]
                if not isinstance(ds, h5py.Dataset):
                    raise UserError(f"{path}: '{key}' is an HDF5 group, not a dataset; expected an (H, W, S) "
                                    "array (re-run data/prepare.py)")
                # A complex data set holds complex images and zero-filled images; k-space is always complex.
                want_complex = key.startswith(("kspace", "maps")) or complex_image
                kind = ds.dtype.kind
                if (want_complex and kind != "c") or (not want_complex and kind not in "fiu"):
                    raise UserError(f"{path}: dataset '{key}' has dtype {ds.dtype}; expected "
                                    f"{'complex' if want_complex else 'real float'} values"
                                    f"{' (its ' + self.keys[0] + ' is complex)' if complex_image else ''}")
                check_stored(path, ds)
                shapes.append(tuple(ds.shape))
            coils = maps_method = coil_source = None
            if multicoil:
                if not complex_image:
                    raise UserError(f"{path}: multi-coil k-space ('{self.keys[2]}' {kspace.shape}) needs complex "
                                    f"images, but '{self.keys[0]}' is real; re-run data/prepare.py --coils")
                if shapes[3] != shapes[2]:
                    raise UserError(f"{path}: the maps '{keys[3]}' {shapes[3]} do not match the k-space "
                                    f"'{keys[2]}' {shapes[2]} (coils, H, W, slices); re-run data/prepare.py")
                coils = shapes[2][0]
                maps_method = f.attrs.get(MAPS_METHOD_ATTR, "unknown")
                maps_method = maps_method.decode(errors="replace") if isinstance(maps_method, bytes) else str(maps_method)
                coil_source = f.attrs.get(COIL_SOURCE_ATTR)
                if isinstance(coil_source, bytes):
                    coil_source = coil_source.decode(errors="replace")
                coil_source = None if coil_source is None else str(coil_source)
                shapes = shapes[:2] + [shapes[2][1:]]
        if len(set(shapes)) != 1:
            detail = ", ".join(f"{k} {s}" for k, s in zip(self.keys, shapes))
            raise UserError(f"{path}: datasets disagree in shape ({detail}); all three must be (H, W, S)"
                            f"{' (k-space and maps (N, H, W, S))' if coils else ''}")
        shape = shapes[0]
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or min(shape) < 1:
            raise UserError(f"{path}: datasets have shape {shapes[0]}; expected (H, W, S)")
        return (shape[2], (shape[0], shape[1]), ("complex" if complex_image else "magnitude", source),
                (coils, maps_method, coil_source))

    def _check_mask_fits(self, mask: np.ndarray, mask_file: Path, n_files: int = 3) -> None:
        """The stored k-space must be zero wherever ``mask`` (H, W) is: a mask the files were not made with
        (e.g. transposed) would make every data-fidelity step wrong without an error. Reads the middle slice of
        the first, middle and last file."""
        k_key = self.keys[2]
        for file_idx in sorted({round(i * (len(self.files) - 1) / max(n_files - 1, 1)) for i in range(n_files)}):
            path = self.files[file_idx]
            with _open_h5(path) as f:
                ds = f[k_key]
                index = ds.shape[-1] // 2 if ds.ndim >= 3 else None
                kspace = np.abs(ds[()] if index is None else ds[..., index])
            outside = kspace[..., mask == 0]
            if outside.size and outside.max() > 1e-6 * kspace.max():
                transposed = mask.shape[0] == mask.shape[1] and not (kspace[..., mask.T == 0] > 1e-6 * kspace.max()).any()
                why = "the mask is transposed" if transposed else "another mask"
                raise UserError(f"{mask_file} does not fit {path}: its '{k_key}' is non-zero at "
                                f"{int((outside > 1e-6 * kspace.max()).sum())} positions the mask leaves out (slice "
                                f"{index or 0}; {why}); pass the mask the data were made with (--mask), or prepare "
                                "the data again with data/prepare.py")

    def _handle(self, file_idx: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: never share the parent's handles
            self._handles, self._pid = {}, os.getpid()
        if file_idx not in self._handles:
            self._handles[file_idx] = _open_h5(self.files[file_idx])
        return self._handles[file_idx]

    def _read(self, file_idx: int, index) -> dict[str, np.ndarray]:
        """Read slices ``index`` of one file as (H, W[, S]) arrays, checked for NaN/Inf."""
        f = self._handle(file_idx)
        target_key, zf_key, k_key = self.keys
        arrays = {}
        image_dtype = np.complex64 if self.image == "complex" else np.float32
        fields = [("target", target_key, image_dtype), ("zero_filled", zf_key, image_dtype),
                  ("kspace_under", k_key, np.complex64)]
        if self.multicoil:
            fields.append(("maps", maps_key(self.acc), np.complex64))
        for name, key, dtype in fields:
            ds = f[key]
            try:
                values = ds[()] if ds.ndim == 2 else ds[..., index]
            except (OSError, KeyError) as exc:
                raise UserError(f"{self.files[file_idx]}: cannot read '{key}' ({str(exc)[:80]}); the file "
                                "is probably truncated: re-copy it or re-run data/prepare.py") from exc
            values = values.astype(dtype, copy=False)
            if not np.isfinite(values).all():
                bad = np.argwhere(~np.isfinite(values))[0]
                # A 2-D dataset is one slice; in a 3-D one the last axis is the slice.
                where = f"slice {index if np.isscalar(index) else (bad[-1] if values.ndim == 3 else 0)}"
                kind = "NaN" if np.isnan(values[tuple(bad)]) else "Inf"
                raise UserError(f"{self.files[file_idx]}: '{key}' has {kind} values at {where}; "
                                "fix or remove this file")
            arrays[name] = values
        return arrays

    def _read_volume(self, file_idx: int) -> dict[str, np.ndarray]:
        volume = self._read(file_idx, slice(None))
        if volume["target"].ndim == 2:
            return {k: v[None] for k, v in volume.items()}
        return {k: np.ascontiguousarray(np.moveaxis(v, -1, 0)) for k, v in volume.items()}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        file_idx, s = self.samples[i]
        if self._cache is not None:
            arrays = {k: v[s] for k, v in self._cache[file_idx].items()}
        else:
            arrays = self._read(file_idx, s)
        zf, target = (torch.from_numpy(np.array(arrays[key]))[None] for key in ("zero_filled", "target"))
        if self.image == "complex":
            zf, target = to_channels(zf), to_channels(target)
        kspace_under = torch.from_numpy(np.array(arrays["kspace_under"]))
        maps = torch.from_numpy(np.array(arrays["maps"])) if self.multicoil else NO_MAPS
        return Sample(zero_filled=zf, kspace_under=kspace_under if self.multicoil else kspace_under[None],
                      target=target, mask=self.mask, fname=self.files[file_idx].name, slice=s, acc=self.acc,
                      maps=maps)

    def scoring_targets(self, batch: Sample) -> np.ndarray:
        """The (B, H, W) float32 images a batch's slices are scored against: the magnitude of the target, and for
        multi-coil data the root sum of squares of the fully sampled coil images (``reconstruction_rss``,
        fastMRI's multi-coil reference; files without it: the target's magnitude). The coil-combined images
        with maps of unit RSS have exactly the magnitude of the RSS of their coil images, so a reconstruction's
        magnitude is scored in the same convention."""
        magnitudes = magnitude(batch.target)[:, 0].numpy()
        if not self.multicoil:
            return magnitudes
        index = {path.name: i for i, path in enumerate(self.files)}
        rss = []
        for i, (fname, s) in enumerate(zip(batch.fname, batch.slice.tolist())):
            f = self._handle(index[fname])
            rss.append(np.asarray(f[RSS_KEY][:, :, s], dtype=np.float32) if RSS_KEY in f else magnitudes[i])
        return np.stack(rss)

    def nbytes(self) -> int:
        """Bytes that :attr:`preload` would hold (float32 + float32 + complex64 per pixel; complex images: three
        complex64)."""
        per_pixel = 16 if self.image == "magnitude" else 24
        if self.multicoil:  # coil k-space and maps, complex64 each, instead of one k-space
            per_pixel += 16 * self.coils - 8
        return len(self.samples) * self.shape[0] * self.shape[1] * per_pixel

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}  # h5py handles cannot cross processes; workers reopen lazily
        return state

    def __del__(self):
        for handle in getattr(self, "_handles", {}).values():
            try:
                handle.close()
            except Exception:
                pass


def build_dataset(root: str | Path, split: str, accs: list[str], mask_paths: dict[str, str] | None = None,
                  preload: bool | str = "auto", preload_limit_bytes: int = 2 << 30) -> Dataset:
    """One dataset over all accelerations ``accs`` (each sample carries its own mask).

    ``preload="auto"`` holds the data in memory when it needs less than ``preload_limit_bytes``.
    """
    parts = []
    for acc in accs:
        part = SliceDataset(root, split, acc, (mask_paths or {}).get(acc))
        if preload is True or (preload == "auto" and part.nbytes() <= preload_limit_bytes):
            part.load_into_memory()
        parts.append(part)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def data_kind(dataset: Dataset) -> dict[str, str]:
    """``{"image": "magnitude" | "complex", "kspace": where it came from}`` of a :func:`build_dataset` result
    (or a wrapper of one with a ``base``), as config.json, checkpoints and summary.json record it; multi-coil
    data add ``"coils"`` (N), ``"maps"`` (how the sensitivity maps were made) and ``"coil_source"`` (simulated or
    acquired coils)."""
    while not isinstance(dataset, (SliceDataset, ConcatDataset)):
        dataset = dataset.base
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    kind = {"image": parts[0].image, "kspace": parts[0].kspace_source}
    if parts[0].multicoil:
        kind.update(coils=parts[0].coils, maps=parts[0].maps_method)
        if parts[0].coil_source is not None:
            kind["coil_source"] = parts[0].coil_source
    return kind
