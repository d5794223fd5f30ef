"""A user's own scans as inputs of scripts/reconstruct.py: one reader per file format (:data:`SCAN_FORMATS`), and
the network inputs of a scan at a checkpoint's image size and mask (:func:`network_inputs`).

A reader turns a file into :class:`Scan` volumes of one of two kinds:

- ``image``: a real magnitude volume (NIfTI; a fastMRI train / validation file's reference for a magnitude
  network). It is sliced and scaled as data/prepare.py does (:func:`data.slicing.make_slices`) and undersampled
  synthetically with the checkpoint's mask (the paper's protocol, :func:`data.layout.undersample`), so a slice
  gives exactly the network inputs that evaluate.py reads from data prepared from the same file.
- ``kspace``: acquired Cartesian k-space, (S, coils, H, W) complex, centred (fastMRI's and ISMRMRD's
  convention: readout along H, phase-encode lines along W). Fully sampled k-space (a fastMRI train /
  validation file, an ISMRMRD scan with every line) becomes fastMRI's complex images at the checkpoint's size
  (:func:`data.fastmri.complex_images`, as ``data.prepare --image complex``) and is undersampled with the
  checkpoint's mask. Undersampled k-space (a fastMRI test file with its ``mask``, an ISMRMRD scan with lines
  missing, or any file with ``--no-undersample``) keeps its own lines: the zero-filled image is cropped along the
  readout only (which keeps every unacquired line exactly zero), the network runs on all acquired columns, and
  the output is centre-cropped to the checkpoint's width, as fastMRI's ``complex_center_crop``.

Acquired k-space needs a network for complex images (``--image complex``): a magnitude network's data-fidelity
step assumes the Hermitian k-space of a real image.

Multi-coil k-space (S, N, H, W) goes to a checkpoint trained on multi-coil data (its config's ``coils`` K and
``maps``), through the code that prepared its training data (:func:`data.multicoil.multicoil_volume`): fastMRI's
coil images (:func:`data.fastmri.coil_images`, scaled by ``1 / max RSS``; acquired k-space: cropped along the
readout only, as above), SVD-compressed to K virtual coils when the file has more (N > K; fewer is refused),
undersampled, sensitivity maps estimated from the undersampled ACS lines by the run's method (ESPIRiT or
ACS-over-RSS; a run on a simulation's ``true`` maps is refused: acquired data have none), and the zero-filled
image E^H y. A fully sampled file thus gives exactly the inputs data.prepare wrote for it. A single-coil file is
one coil: only a checkpoint of one (virtual) coil takes it, whose run saw one coil per slice as such a file has
(more coils cannot be made from fewer). Multi-coil k-space to a single-coil checkpoint is refused (a magnitude
network still takes a fastMRI train / validation file's ``reconstruction_rss``, as data.prepare's magnitude
protocol does).

Intensities: every scan is scaled as the network's training data were (magnitude: min-max to [0, 1] per volume;
complex: ``1 / max |image|`` per volume); :class:`NetworkInputs` keeps the factor, so outputs can be given back in
the input's units.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch

from data.fastmri import REFERENCE_OF, coil_images, complex_images
from data.fft import ifft2c, to_channels
from data.layout import undersample
from data.multicoil import MAP_METHODS, TRUE_MAPS, multicoil_volume
from data.slicing import make_slices
from data.sources import Source, nifti_sources, read_volumes
from utils import UserError, first_line

# The map methods that acquired data allow: all but a simulation's own maps.
ESTIMATED_MAPS = tuple(method for method in MAP_METHODS if method != TRUE_MAPS)


@dataclass(frozen=True)
class Scan:
    """One volume of a user's file.

    kind ``"image"``: ``data`` (X, Y, Z) float64 magnitude volume, sliced along ``axis``; ``affine`` its 4 x 4
    voxel-to-world matrix where the file has one. kind ``"kspace"``: ``data`` (S, coils, H, W) complex64 centred
    k-space; ``lines`` (W,) bool, the acquired phase-encode lines in centred order, or None when fully sampled.
    """

    name: str
    label: str
    kind: str
    data: np.ndarray
    lines: np.ndarray | None = None
    affine: np.ndarray | None = None
    axis: int = 2

    @property
    def coils(self) -> int:
        return self.data.shape[1] if self.kind == "kspace" else 1


@dataclass(frozen=True)
class ReadOptions:
    """What a reader needs to know: the network's ``image`` type (``"magnitude"`` or ``"complex"``), the slice
    ``axis`` of image volumes, and ``no_undersample`` (take a file's k-space as acquired)."""

    image: str
    axis: int = 2
    no_undersample: bool = False


@dataclass(frozen=True)
class ScanFormat:
    """One input format: ``claims(path)`` says whether a file is one of its kind (by name or content), ``read``
    gives its volumes."""

    name: str
    what: str
    claims: Callable[[Path], bool]
    read: Callable[[Path, ReadOptions], list[Scan]]


def _is_hdf5(path: Path) -> bool:
    return path.suffix.lower() in (".h5", ".hdf5", ".mrd") and h5py.is_hdf5(path)


def _hdf5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({first_line(exc)}); re-copy it") from exc


# --------------------------------------------------------------------------- fastMRI

def _claims_fastmri(path: Path) -> bool:
    if not _is_hdf5(path):
        return False
    with _hdf5(path) as f:
        return isinstance(f.get("kspace"), h5py.Dataset)


def read_fastmri(path: Path, options: ReadOptions) -> list[Scan]:
    """A fastMRI file as one scan: a test file's undersampled ``kspace`` with its ``mask``; a train / validation
    file's reference image (magnitude networks) or its fully sampled ``kspace`` (complex networks)."""
    with _hdf5(path) as f:
        kspace = f["kspace"]
        if kspace.ndim not in REFERENCE_OF or kspace.dtype.kind != "c":
            raise UserError(f"{path}: 'kspace' has shape {kspace.shape} and dtype {kspace.dtype}; fastMRI files hold "
                            "(S, H, W) single-coil or (S, C, H, W) multi-coil complex k-space")
        reference = REFERENCE_OF[kspace.ndim]
        if "mask" in f:
            lines = np.asarray(f["mask"][()]).astype(bool).ravel()
        elif options.no_undersample:
            lines = None
        elif options.image == "magnitude" and reference in f:
            image = np.moveaxis(f[reference][()], 0, -1)
            source = Source(path.stem, str(path), path.stem, _Volume(image), image.shape)
            # The user named this file: an image of few distinct values is still theirs to reconstruct.
            volumes = read_volumes(source, allow_label_like=True)
            return [Scan(name, str(path), "image", volume) for name, volume in volumes]
        else:
            lines = False  # fully sampled, read below
        data = kspace[()]
    data = data[:, None] if data.ndim == 3 else data
    if lines is None:  # --no-undersample: the lines the file holds
        lines = np.abs(data).max(axis=(0, 1, 2)) > 0
    if lines is False:
        lines = None
    elif lines.shape != (data.shape[-1],):
        raise UserError(f"{path}: 'mask' has {lines.size} entries for {data.shape[-1]} phase-encode columns of "
                        "'kspace'; the file is damaged")
    return [Scan(path.stem, str(path), "kspace", data.astype(np.complex64, copy=False), lines)]


@dataclass(frozen=True)
class _Volume:
    """An in-memory array offered like a nibabel image (``dataobj``), for data/sources.py's reader."""

    dataobj: np.ndarray


# --------------------------------------------------------------------------- ISMRMRD

# Acquisitions that are no image lines: noise, navigator and phase-correction data.
_SKIPPED_FLAGS = ("ACQ_IS_NOISE_MEASUREMENT", "ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA")


def _claims_ismrmrd(path: Path) -> bool:
    if not _is_hdf5(path):
        return False
    with _hdf5(path) as f:
        return isinstance(f.get("dataset"), h5py.Group) and "xml" in f["dataset"]


def read_ismrmrd(path: Path, options: ReadOptions) -> list[Scan]:
    """An ISMRMRD raw-data file (Cartesian 2-D, through the ``ismrmrd`` package) as one scan of its slices:
    k-space (S, coils, readout samples, phase-encode lines), each line placed by ``kspace_encode_step_1``
    relative to the encoding's centre line, averages added up and divided by their count."""
    import ismrmrd  # only this format needs it
    import ismrmrd.xsd

    try:
        dataset = ismrmrd.Dataset(str(path), "dataset", mode="r")
        header = ismrmrd.xsd.CreateFromDocument(dataset.read_xml_header())
    except Exception as exc:  # the package raises many types for foreign or damaged files
        raise UserError(f"{path} is not a readable ISMRMRD file ({first_line(exc)}); re-export it") from exc
    with dataset:
        encoding = header.encoding[0]
        trajectory = getattr(encoding.trajectory, "value", str(encoding.trajectory))
        if trajectory != "cartesian":
            raise UserError(f"{path}: unsupported trajectory {trajectory!r}; reconstruct takes Cartesian 2-D data "
                            "(grid non-Cartesian k-space first, e.g. with BART or sigpy)")
        matrix = encoding.encodedSpace.matrixSize
        if (matrix.z or 1) > 1:
            raise UserError(f"{path}: a 3-D Cartesian encoding ({matrix.x} x {matrix.y} x {matrix.z}); reconstruct "
                            "takes 2-D (multi-slice) data: inverse-FFT along the partitions first")
        limit = encoding.encodingLimits.kspace_encoding_step_1
        n_lines = int(matrix.y)
        centre = int(limit.center) if limit is not None and limit.center is not None else n_lines // 2
        skipped = [getattr(ismrmrd, flag) for flag in _SKIPPED_FLAGS]
        lines: dict[tuple[int, int], list[np.ndarray]] = {}
        for index in range(dataset.number_of_acquisitions()):
            acq = dataset.read_acquisition(index)
            if any(acq.is_flag_set(flag) for flag in skipped):
                continue
            data = np.asarray(acq.data)  # (coils, samples) complex64
            # Centre the readout: the centre sample to the middle, as fastMRI's centred k-space has it.
            data = np.roll(data, data.shape[1] // 2 - int(acq.center_sample), axis=1)
            column = int(acq.idx.kspace_encode_step_1) - centre + n_lines // 2
            if not 0 <= column < n_lines:
                raise UserError(f"{path}: acquisition {index} is line {acq.idx.kspace_encode_step_1}, outside the "
                                f"{n_lines} lines of the encoding (centre {centre}); the header does not fit the data")
            lines.setdefault((int(acq.idx.slice), column), []).append(data)
    if not lines:
        raise UserError(f"{path} holds no imaging acquisitions (only noise, navigator or phase-correction data)")
    shapes = {line[0].shape for line in lines.values()}
    if len(shapes) > 1:
        raise UserError(f"{path}: acquisitions of different sizes {sorted(shapes)}; reconstruct takes one readout "
                        "length and one coil count per scan")
    coils, samples = shapes.pop()
    slices = sorted({s for s, _ in lines})
    kspace = np.zeros((len(slices), coils, samples, n_lines), dtype=np.complex64)
    acquired = np.zeros((len(slices), n_lines), dtype=bool)
    for (s, column), repeats in lines.items():
        kspace[slices.index(s), :, :, column] = np.mean(repeats, axis=0)
        acquired[slices.index(s), column] = True
    if not (acquired == acquired[:1]).all():
        raise UserError(f"{path}: its slices are sampled on different lines; reconstruct takes one mask per scan")
    full = acquired[0].all() and not options.no_undersample
    return [Scan(path.stem, str(path), "kspace", kspace, None if full else acquired[0])]


# --------------------------------------------------------------------------- NIfTI

def _claims_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_nifti(path: Path, options: ReadOptions) -> list[Scan]:
    """A NIfTI magnitude volume (a 4-D series: one scan per frame) through data/sources.py's reader, affine kept."""
    if options.no_undersample:
        raise UserError(f"--no-undersample takes a file's k-space as acquired, but {path} is a magnitude image with "
                        "none; drop --no-undersample (it is undersampled synthetically, the paper's protocol)")
    sources, _ = nifti_sources([path], exclude=())
    source = sources[0]
    affine = getattr(source.image, "affine", None)
    return [Scan(name, source.label, "image", volume, None, None if affine is None else np.asarray(affine),
                 options.axis) for name, volume in read_volumes(source, allow_label_like=True)]


# One entry per format, tried in this order.
SCAN_FORMATS: dict[str, ScanFormat] = {
    "fastmri": ScanFormat("fastmri", "fastMRI HDF5 (kspace, and mask in test files)", _claims_fastmri, read_fastmri),
    "ismrmrd": ScanFormat("ismrmrd", "ISMRMRD HDF5 raw data (Cartesian 2-D)", _claims_ismrmrd, read_ismrmrd),
    "nifti": ScanFormat("nifti", "NIfTI magnitude volume (.nii, .nii.gz)", _claims_nifti, read_nifti),
}


def read_scans(path: str | Path, options: ReadOptions) -> list[Scan]:
    """The volumes of one input file, read by the first format of :data:`SCAN_FORMATS` that claims it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input {path} {'is not a file' if path.exists() else 'does not exist'}; pass fastMRI, "
                        "ISMRMRD or NIfTI files")
    for scan_format in SCAN_FORMATS.values():
        if scan_format.claims(path):
            return scan_format.read(path, options)
    kinds = "; ".join(f.what for f in SCAN_FORMATS.values())
    raise UserError(f"input {path} is none of the formats reconstruct reads ({kinds})")


# --------------------------------------------------------------------------- to the network's inputs

@dataclass(frozen=True)
class Target:
    """What the network was trained on (from its checkpoint): ``image`` type, slice ``size`` (H, W), its
    sampling pattern ``lines`` (data/masks.mask_lines: ``rows``, ``columns`` or ``2-D``; None: not recorded), and
    the (H, W) float32 {0, 1} unshifted ``mask`` of its file ``mask_file``, or None with ``mask_problem`` saying
    why (one line): only scans undersampled synthetically need it. Multi-coil checkpoints: ``coils``, the coil
    count of their training data, and ``maps``, how its sensitivity maps were made; None for single-coil ones."""

    image: str
    size: tuple[int, int]
    lines: str | None
    mask: np.ndarray | None
    mask_file: str
    mask_problem: str | None = None
    coils: int | None = None
    maps: str | None = None

    def synthetic_mask(self) -> np.ndarray:
        """The mask for synthetic undersampling; a :class:`UserError` when the checkpoint's cannot be had."""
        if self.mask is None:
            raise UserError(self.mask_problem or "no mask: pass --mask FILE")
        return self.mask


@dataclass(frozen=True)
class NetworkInputs:
    """One scan ready for the network: ``zero_filled`` (S, C, H, W') float32, ``kspace_under`` (S, 1, H, W')
    complex64 ((S, N, H, W') for N coils), ``mask`` (1, 1, H, W') float32 (W' >= W: acquired k-space keeps all
    its columns), ``width`` the checkpoint's W the output is centre-cropped to, ``slope``, ``intercept``: input
    units = slope * network units + intercept, ``affine`` the 4 x 4 voxel-to-world matrix of the (H, W, S)
    slices, or None, and for multi-coil data ``maps`` (S, N, H, W') complex64 and ``coil_record`` (JSON-able:
    the file's coil count, the compression to the network's, the maps method), else None."""

    zero_filled: torch.Tensor
    kspace_under: torch.Tensor
    mask: torch.Tensor
    width: int
    slope: float
    intercept: float
    affine: np.ndarray | None = None
    maps: torch.Tensor | None = None
    coil_record: dict | None = None

    def crop(self, images: np.ndarray) -> np.ndarray:
        """(S, H, W') -> (S, H, W), the centre columns (fastMRI's complex_center_crop)."""
        left = (images.shape[-1] - self.width) // 2
        return images[..., left:left + self.width]


def check_scan(scan: Scan, target: Target) -> None:
    """Refuse, in one line and before any work, a scan the network trained as ``target`` says cannot take: an image
    for a complex network, acquired k-space for a magnitude one, coils it was not trained on, a size it cannot
    give, a missing mask, a mask without the ACS lines its coil maps are estimated from."""
    height, width = target.size
    if scan.kind == "image":
        if target.image != "magnitude":
            raise UserError(f"{scan.label} is a magnitude image, but the checkpoint reconstructs complex images from "
                            "acquired k-space; use a checkpoint trained on magnitude images (the paper's protocol)")
        if height != width:
            raise UserError(f"the checkpoint was trained on {height} x {width} slices; magnitude volumes are cut "
                            "into square slices (data/prepare.py --size)")
        target.synthetic_mask()
        return
    if target.image != "complex":
        raise UserError(f"{scan.label} holds acquired k-space, but the checkpoint is a magnitude network (its data "
                        "fidelity assumes the Hermitian k-space of a real image); use a checkpoint trained with "
                        "data.prepare --image complex")
    if target.coils is None and scan.coils != 1:
        raise UserError(f"{scan.label} is multi-coil ({scan.coils} coils), but the checkpoint was trained on "
                        "single-coil data; use a checkpoint trained on multi-coil data (data.prepare --fastmri "
                        "MULTICOIL_FILES --image complex)")
    if target.coils is not None:
        _check_coils(scan, target)
    _check_size(scan, target)
    if scan.lines is None:
        target.synthetic_mask()
    if target.coils is not None:
        _check_acs(scan, target)


def network_inputs(scan: Scan, target: Target) -> NetworkInputs:
    """The inputs of ``scan`` for a network trained as ``target`` says (see the module docstring), after
    :func:`check_scan`."""
    check_scan(scan, target)
    height, width = target.size
    if scan.kind == "image":
        slices = make_slices(scan.data, scan.axis, height)
        low, high = float(scan.data.min()), float(scan.data.max())
        inputs = _undersampled(slices, target.synthetic_mask(), width, high - low if high > low else 1.0, low)
        return replace(inputs, affine=slice_affine(scan.affine, scan.data.shape, scan.axis, height))
    if target.coils is not None:
        return _multicoil_inputs(scan, target)
    kspace = scan.data[:, 0]
    if scan.lines is None:
        slices, scale = complex_images(kspace, height, scan.label)
        return _undersampled(slices.astype(np.complex64), target.synthetic_mask(), width, 1.0 / scale, 0.0)
    image = ifft2c(torch.from_numpy(kspace.astype(np.complex128))).numpy()
    top = (kspace.shape[-2] - height) // 2
    # Cropping the readout only: every unacquired column stays zero in the cropped image's k-space.
    image = np.moveaxis(image[:, top:top + height], 0, -1)
    peak = float(np.abs(image).max())
    scale = 1.0 / peak if peak > 0 else 1.0
    return _undersampled((image * scale).astype(np.complex64), _column_mask(scan.lines, height), width, 1.0 / scale,
                         0.0)


def _column_mask(lines: np.ndarray, height: int) -> np.ndarray:
    """(height, W) float32 {0, 1} unshifted mask of acquired phase-encode ``lines`` (W,) bool in centred order."""
    mask = np.zeros((height, lines.size), dtype=np.float32)
    mask[:, np.fft.ifftshift(lines)] = 1.0
    return mask


def _check_coils(scan: Scan, target: Target) -> None:
    """A multi-coil checkpoint takes acquired k-space of at least its coil count, and maps acquired data can have."""
    wanted = target.coils
    if scan.coils < wanted:
        have = "single-coil k-space" if scan.coils == 1 else f"{scan.coils} coils"
        raise UserError(f"{scan.label} holds {have}, but the checkpoint was trained on {wanted}-coil data and coil "
                        f"compression only reduces the count; use a checkpoint trained on at most {scan.coils} "
                        "(virtual) coils (data.prepare --coil-compress K)")
    if target.maps not in ESTIMATED_MAPS:
        why = ("a simulation's true maps (--maps true), which acquired data do not have"
               if target.maps == TRUE_MAPS else f"maps made by {target.maps!r}, which reconstruct cannot make")
        raise UserError(f"the checkpoint's run used {why}; use a checkpoint trained with --maps "
                        f"{' or --maps '.join(ESTIMATED_MAPS)} ({scan.label} is acquired data)")


def _check_acs(scan: Scan, target: Target) -> None:
    """The mask a multi-coil scan is reconstructed with (its own lines, or the checkpoint's for fully sampled
    k-space) must have the autocalibration block its coil maps are estimated from (data/coils.py's acs_region)."""
    from data.coils import acs_region  # noqa: PLC0415 - only multi-coil scans need it
    if scan.lines is None:
        mask, which = target.synthetic_mask(), f"the checkpoint's mask {target.mask_file}"
    else:
        mask, which = _column_mask(scan.lines, target.size[0]), f"the mask of {scan.label}"
    try:
        acs_region(mask, source=which)
    except ValueError as exc:
        raise UserError(f"{exc}; the checkpoint's coil maps ({target.maps}) are estimated from them") from exc


def _check_size(scan: Scan, target: Target) -> None:
    """Refuse k-space that cannot give the checkpoint's slices: images smaller than its size; fully sampled
    k-space for a non-square size (fastMRI's complex images are square crops); acquired lines of another kind
    than its masks'."""
    height, width = target.size
    n_rows, n_columns = scan.data.shape[-2:]
    if n_rows < height or n_columns < width:
        raise UserError(f"{scan.label}: its k-space gives {n_rows} x {n_columns} images, smaller than the "
                        f"{height} x {width} slices the checkpoint was trained on; use a checkpoint of its size")
    if scan.lines is None and height != width:
        raise UserError(f"the checkpoint was trained on {height} x {width} slices; fastMRI's complex images are "
                        "square (data.prepare --size)")
    if scan.lines is not None and target.lines not in ("columns", None):
        raise UserError(f"{scan.label} samples whole phase-encode columns, but the checkpoint was trained with "
                        f"masks sampling {target.lines} ({target.mask_file}); use a checkpoint trained with column "
                        "masks (data.prepare --mask-kind fastmri-random / fastmri-equispaced)")


def _multicoil_inputs(scan: Scan, target: Target) -> NetworkInputs:
    """The inputs of acquired coil k-space for a multi-coil checkpoint (see the module docstring), after
    :func:`check_scan`: exactly data.prepare's multi-coil arrays (:func:`data.multicoil.multicoil_volume`) for a
    fully sampled scan."""
    wanted = target.coils
    height, width = target.size
    if scan.lines is None:
        images, scale = coil_images(scan.data, height, scan.label)
        mask = target.synthetic_mask()
    else:
        # Cropping the readout only: every unacquired column stays unacquired (the mask zeroes its rounding).
        image = ifft2c(torch.from_numpy(scan.data.astype(np.complex128))).numpy()
        top = (image.shape[-2] - height) // 2
        images = np.moveaxis(image[..., top:top + height, :], 0, -1)  # (N, H, W', S)
        peak = float(np.sqrt((np.abs(images) ** 2).sum(axis=0)).max())
        scale = 1.0 / peak if peak > 0 else 1.0
        images = images * scale
        mask = _column_mask(scan.lines, height)
    compress = wanted if scan.coils > wanted else None
    # data.prepare stores complex64 coil images before it builds the arrays.
    volume = multicoil_volume(images.astype(np.complex64), {"scan": mask}, target.maps, None, compress)
    arrays = volume.arrays["scan"]

    def slices_first(key: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(arrays[key], -1, 0)))

    record = {"coils": scan.coils, "coil_compress": compress, "maps": target.maps}
    return NetworkInputs(to_channels(slices_first("zf")[:, None]).contiguous(), slices_first("kspace"),
                         torch.from_numpy(mask)[None, None], width, 1.0 / scale, 0.0, maps=slices_first("maps"),
                         coil_record=record)


def slice_affine(affine: np.ndarray | None, shape: tuple[int, ...], axis: int, size: int) -> np.ndarray | None:
    """The affine of the (size, size, S) slices that :func:`data.slicing.make_slices` cuts from a volume of
    ``shape`` along ``axis``: the volume's ``affine`` with its axes in slice order and its origin moved by the
    centre crop or pad (:func:`data.slicing.crop_or_pad`)."""
    if affine is None:
        return None
    order = [a for a in range(3) if a != axis] + [axis]
    moved = np.asarray(affine, dtype=np.float64)[:, [*order, 3]]
    offset = np.zeros(4)
    offset[3] = 1.0
    for out_axis, extent in enumerate(shape[a] for a in order[:2]):
        offset[out_axis] = (extent - size) // 2 if extent > size else -((size - extent) // 2)
    moved[:, 3] = moved @ offset
    return moved


def _undersampled(slices: np.ndarray, mask: np.ndarray, width: int, slope: float, intercept: float) -> NetworkInputs:
    """slices: (H, W', S) float32 or complex64 in network units; mask (H, W') float32."""
    if mask.shape != slices.shape[:2]:
        raise UserError(f"the mask is {mask.shape[0]}x{mask.shape[1]} but the slices are "
                        f"{slices.shape[0]}x{slices.shape[1]}; pass a mask of the checkpoint's size (--mask)")
    kspace, zero_filled = undersample(slices, {"scan": mask})["scan"]
    zero_filled = torch.from_numpy(np.moveaxis(zero_filled, -1, 0))[:, None]
    if zero_filled.is_complex():
        zero_filled = to_channels(zero_filled)
    return NetworkInputs(zero_filled.contiguous(), torch.from_numpy(np.moveaxis(kspace, -1, 0))[:, None].contiguous(),
                         torch.from_numpy(mask)[None, None], width, slope, intercept)

