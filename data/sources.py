"""Finding and opening the inputs of data/prepare.py: NIfTI files, fastMRI files and the demo template, each a
:class:`Source` whose image data is read only when its volume is processed (:func:`read_volumes`).

The input formats are the entries of :data:`SOURCE_KINDS`, which data/prepare.py dispatches on: a new format
is its reader and one :class:`SourceKind` there, plus the ``Options`` field (data/prepare.py) its flag fills."""
from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import nibabel as nib
import numpy as np

from data.fastmri import open_volume
from utils import UserError, clean_text, first_line

# Label maps: ACDC's *_gt, MRBrainS's LabelsForTraining / LabelsForTesting, and the usual names elsewhere.
DEFAULT_EXCLUDE = ("*_gt*", "*Label*", "*label*", "*seg*", "*mask*")
# patient001, sub-01, subject_3, case12: a subject word, an optional - or _, digits, and no letter or digit
# on either side (so "patient_4d" is not patient 4).
SUBJECT_TOKEN = re.compile(r"(?<![a-z0-9])(?:patient|subject|subj|sub|case|pat)[-_]?\d+(?![a-z0-9])", re.I)
# No MR image has this few distinct values; a segmentation has one per class.
LABEL_LIKE_VALUES = 16


@dataclass
class Source:
    """One input image: ``name`` unique in the output, ``label`` for messages and split.json, ``group`` the
    subject it belongs to (the split is made over groups), ``found_by`` how that subject was found."""

    name: str
    label: str
    group: str
    image: Any  # nibabel image or data.fastmri.FastmriVolume; its data is read only when the volume is processed
    shape: tuple[int, ...]  # 3-D or 4-D, trailing singleton dimensions past the third removed
    found_by: str = "demo"
    attrs: dict[str, Any] = field(default_factory=dict)  # extra attributes of its output files


# What opening a kind's inputs gives: the sources, the files skipped by name, and files left out per
# acquisition (fastMRI's --acquisition; empty for the others).
Opened = tuple[list[Source], list[Path], dict[str, int]]


@dataclass(frozen=True)
class SourceKind:
    """One input format of data/prepare.py.

    ``flag`` selects it and ``dest`` is that flag's option name (data/prepare.py's ``Options`` field, true or a
    list of paths when given); ``usage`` says how to pass it in the "no data" message; ``suffixes`` are the
    file name endings searched for (empty: it reads no files) and ``what`` names those files. ``arguments``
    are its command-line flags as ``(names, argparse keywords)``, ``open`` turns a run's options into
    :data:`Opened`.
    """

    flag: str
    dest: str
    usage: str
    suffixes: tuple[str, ...]
    what: str
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]
    open: Callable[[Any], Opened]

    def takes(self, name: str) -> bool:
        return name.lower().endswith(self.suffixes) and not name.startswith(".")


@dataclass
class InputFile:
    """A NIfTI file as found or named (never symlink-resolved) and the folder its subject is judged from."""

    path: Path
    root: Path

    @property
    def rel(self) -> tuple[str, ...]:
        """The path below ``root``, as parts (the last one the file name)."""
        return Path(os.path.relpath(os.path.abspath(self.path), os.path.abspath(self.root))).parts


def _base_name(path: Path) -> str:
    lower = path.name.lower()
    for ext in (".nii.gz", ".nii"):
        if lower.endswith(ext):
            return path.name[:-len(ext)]
    return path.stem


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "volume"


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _walk(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, following folder symlinks (DataLad and hand-made copies link
    whole patient folders) but entering each real folder once, so a link cycle ends; hidden folders
    (``.git`` with git-annex's object store, staging folders) are skipped."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield from (Path(dirpath) / name for name in sorted(filenames))


def _named_root(inputs: list[str | Path], kind: SourceKind) -> Path | None:
    """The deepest folder common to the files named one by one in ``inputs`` (None if only folders); every
    input must exist."""
    named = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            if path.is_symlink():
                raise UserError(f"{kind.flag} {path} is a symbolic link to a missing file; with git-annex / DataLad "
                                "fetch the content first (datalad get / git annex get)")
            raise UserError(f"{kind.flag} {path} does not exist; check the path")
        if not path.is_dir():
            named.append(os.path.abspath(path.parent))
    return Path(os.path.commonpath(named)) if named else None


def find_files(inputs: list[str | Path], include: tuple[str, ...] | list[str] | None,
               exclude: tuple[str, ...] | list[str], kind: SourceKind) -> tuple[list[InputFile], list[Path]]:
    """The files of ``kind`` named by ``inputs`` (files, or folders searched recursively) that pass the filters.

    A file is used when its name matches a glob of ``include`` (None: any) and none of ``exclude``; this holds
    for named files too, so a shell glob that also catches label maps is safe. Hidden files (``._x.nii`` from
    macOS) are skipped inside folders. Returns the kept files (duplicates removed, order kept; the root of
    a named file is the deepest folder common to all named files) and the files skipped by name.
    """
    named_root = _named_root(inputs, kind)

    def wanted(path: Path) -> bool:
        return (include is None or _matches(path.name, include)) and not _matches(path.name, exclude)

    kept: dict[str, InputFile] = {}
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in _walk(path) if kind.takes(p.name)]
            files = [p for p in found if wanted(p)]
            if not found:
                raise UserError(f"{kind.flag} {path}: no {' or '.join(kind.suffixes)} files found, searched "
                                f"recursively; point {kind.flag} at the folders holding the {kind.what} files")
            if not files:
                filters = " ".join([*([f"--include {' '.join(include)}"] if include else []),
                                    *([f"--exclude {' '.join(exclude)}"] if exclude else [])])
                raise UserError(f"{kind.flag} {path}: none of its {len(found)} {kind.what} files passes {filters} "
                                f"(e.g. {found[0].name}); change --include / --exclude or --preset")
            skipped.extend(p for p in found if not wanted(p))
            for file in files:
                kept.setdefault(os.path.abspath(file), InputFile(file, path))
        elif wanted(path):
            kept.setdefault(os.path.abspath(path), InputFile(path, named_root))
        else:
            skipped.append(path)
    if not kept:
        raise UserError(f"every file named by {kind.flag} was skipped by --include / --exclude (e.g. {skipped[0]}); "
                        "name image files, or change --include / --exclude")
    return list(kept.values()), skipped


def subject_of(file: InputFile, pattern: re.Pattern | None = None) -> tuple[str, str]:
    """The subject of ``file`` and how it was found: ``"token"``, ``"regex"``, ``"folder"`` or ``"file"``.

    ``pattern`` (``--subject-regex``; default :data:`SUBJECT_TOKEN`) is searched in the path below the root,
    then in the root's own name; a match's first group, or the whole match, is the subject. Without a match
    the default rule falls back to the folder under the root, then to the file itself. The subject names
    output files and is printed: control characters in a file name come out escaped (utils.clean_text).
    """
    subject, how = _subject_of(file, pattern)
    return clean_text(subject, None), how


def _subject_of(file: InputFile, pattern: re.Pattern | None) -> tuple[str, str]:
    regex = pattern or SUBJECT_TOKEN
    for text in ("/".join(file.rel), file.root.name):
        match = regex.search(text)
        if match:
            return ((match.group(1) if regex.groups else None) or match.group(0)), ("regex" if pattern else "token")
    if pattern is not None:
        raise UserError(f"--subject-regex {pattern.pattern!r} matches nothing in {file.path} (searched in "
                        f"{'/'.join(file.rel)!r} and {file.root.name!r}); widen it, or --exclude that file")
    if len(file.rel) > 1:
        return file.rel[0], "folder"
    return _base_name(file.path), "file"


def volume_names(files: list[InputFile], subjects: list[str]) -> list[str]:
    """Output names: the file name without ``.nii[.gz]``, prefixed by its subject unless it holds it already.

    ACDC ``patient001_frame01`` stays as it is, MRBrainS ``1/T1.nii`` becomes ``1_T1``. Files that would
    still share a name get the folders above them (below the root), as many as needed.
    """
    bases = []
    for file, subject in zip(files, subjects):
        base, tag = _clean(_base_name(file.path)), _clean(subject)
        holds_tag = re.search(rf"(?<![a-z0-9]){re.escape(tag)}(?![a-z0-9])", base, re.I)
        bases.append(base if holds_tag else f"{tag}_{base}")
    folders = [file.rel[:-1] for file in files]
    names = list(bases)
    for depth in range(1, max(len(parts) for parts in folders) + 1):
        lower = [name.lower() for name in names]
        clashing = [i for i, name in enumerate(lower) if lower.count(name) > 1]
        if not clashing:
            break
        for i in clashing:
            names[i] = "_".join([*(_clean(part) for part in folders[i][-depth:]), bases[i]])
    return names


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


def nifti_sources(inputs: list[str | Path], include: tuple[str, ...] | list[str] | None = None,
                  exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE,
                  subject_regex: str | None = None) -> tuple[list[Source], list[Path]]:
    """Open (headers only) every NIfTI under ``inputs`` and find its subject (see the module docstring).

    Returns the sources and the files skipped by name (:func:`find_files`).
    """
    try:
        pattern = re.compile(subject_regex) if subject_regex is not None else None
    except re.error as exc:
        raise UserError(f"--subject-regex {subject_regex!r} is not a valid regular expression ({exc}); "
                        r"e.g. --subject-regex 'patient\d+'") from exc
    files, skipped = find_files(inputs, include, exclude, NIFTI)
    found = [subject_of(file, pattern) for file in files]
    subjects = [subject for subject, _ in found]
    sources = []
    for file, (subject, how), name in zip(files, found, volume_names(files, subjects)):
        path = _present(file.path)
        try:
            image = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for foreign or corrupt files
            raise UserError(f"{path} cannot be read by nibabel ({first_line(exc)}); pass NIfTI volumes "
                            "(.nii or .nii.gz)") from exc
        if not hasattr(image, "dataobj"):
            raise UserError(f"{path} is not a volume image ({type(image).__name__}); pass NIfTI volumes")
        sources.append(Source(name, str(path), subject, image, _volume_shape(image, str(path)), how))
    return sources, skipped


def _present(path: Path) -> Path:
    """``path``, unless it is a symbolic link to a missing file (an annexed file whose content is not here)."""
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path} is a symbolic link to a missing file; with git-annex / DataLad fetch the "
                        "content first (datalad get / git annex get), or --exclude it")
    return path


def fastmri_sources(inputs: list[str | Path], include: tuple[str, ...] | list[str] | None = None,
                    exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE,
                    acquisitions: list[str] | None = None, image: str = "magnitude"
                    ) -> tuple[list[Source], list[Path], dict[str, int]]:
    """Open (headers only) every fastMRI ``.h5`` under ``inputs`` (see data/fastmri.py for what is read).

    A file's subject is its ``patient_id`` attribute, else its file name; its output volume is named after the
    file. Files whose ``acquisition`` attribute is not in ``acquisitions`` (None: keep all) are left out.
    ``image="complex"``: its k-space is made into complex images (multi-coil files: coil images, data/prepare.py
    checks that their coil counts agree).
    Returns the sources, the files skipped by name, and ``{acquisition: files left out}``.
    """
    files, skipped = find_files(inputs, include, exclude, FASTMRI)
    sources, left_out = [], Counter()
    for file in files:
        volume = open_volume(_present(file.path))
        if acquisitions is not None and volume.acquisition not in acquisitions:
            left_out[volume.acquisition or "(none)"] += 1
            continue
        name = _clean(file.path.stem)
        subject, how = (volume.patient_id, "patient_id") if volume.patient_id else (name, "stem")
        attrs = {"reference": volume.reference, "acquisition": volume.acquisition or ""}
        sources.append(Source(name, str(file.path), subject, volume, volume.shape, how, attrs))
    if not sources:
        found = ", ".join(f"{acq} ({n})" for acq, n in sorted(left_out.items()))
        raise UserError(f"--acquisition {' '.join(acquisitions)} keeps none of the {len(files)} fastMRI files "
                        f"(they hold: {found}); name one of those")
    return sources, skipped, dict(left_out)


def demo_source(resolution: int = 1) -> Source:
    """nilearn's MNI152 T1 template (197 x 233 x 189 at 1 mm, 99 x 117 x 95 at 2 mm), from the wheel, offline."""
    from nilearn.datasets import load_mni152_template  # slow import, only the demo needs it
    image = load_mni152_template(resolution=resolution)
    label = f"the MNI152 template ({resolution} mm)"
    return Source(f"MNI152_T1_{resolution}mm", label, "demo", image, _volume_shape(image, label))


NIFTI = SourceKind(
    "--input", "inputs", "--input FILES_OR_FOLDERS (NIfTI)", (".nii", ".nii.gz"), "NIfTI",
    ((("--input",), {"dest": "inputs", "nargs": "+", "metavar": "PATH",
                     "help": "NIfTI files (.nii/.nii.gz) or folders searched recursively; any 3-D volume, "
                             "4-D volumes are split along the last axis into {name}_t{k}"}),),
    lambda options: (*nifti_sources(options.inputs, options.include, options.exclude, options.subject_regex), {}))
FASTMRI = SourceKind(
    "--fastmri", "fastmri", "--fastmri FILES_OR_FOLDERS (fastMRI .h5)", (".h5",), "fastMRI",
    ((("--fastmri",), {"nargs": "+", "metavar": "PATH",
                       "help": "fastMRI .h5 files as downloaded, or folders searched recursively: the reference "
                               "image (reconstruction_esc single-coil, reconstruction_rss multi-coil) is the fully "
                               "sampled image, undersampled again here (not raw k-space reconstruction); with "
                               "--image complex, single-coil files' kspace gives the complex image instead"}),),
    lambda options: fastmri_sources(options.fastmri, options.include, options.exclude, options.acquisitions,
                                    options.image))
DEMO = SourceKind(
    "--demo", "demo", "--demo (MNI152 template)", (), "demo",
    ((("--demo",), {"action": "store_true",
                    "help": "use nilearn's MNI152 T1 template (shipped with nilearn, no network) instead of "
                            "--input"}),
     (("--demo-resolution",), {"type": int, "choices": (1, 2), "default": 1, "help": "template resolution in mm"})),
    lambda options: ([demo_source(options.demo_resolution)], [], {}))
# In this order in --help and in the messages that list them.
SOURCE_KINDS: tuple[SourceKind, ...] = (NIFTI, FASTMRI, DEMO)


def frame_names(source: Source) -> list[str]:
    """Output volume names of a source: its name, or ``{name}_t{k}`` per frame of a 4-D series."""
    if len(source.shape) == 3:
        return [source.name]
    width = len(str(source.shape[3] - 1))
    return [f"{source.name}_t{t:0{width}d}" for t in range(source.shape[3])]


def check_unique_names(sources: list[Source]) -> None:
    """Refuse two inputs that would write one output volume (compared without case: macOS and Windows
    disks would otherwise overwrite one with the other), e.g. frame 0 of ``scan.nii.gz`` and ``scan_t0.nii``."""
    owners: dict[str, Source] = {}
    for source in sources:
        for name in frame_names(source):
            other = owners.setdefault(name.lower(), source)
            if other is not source:
                raise UserError(f"{other.label} and {source.label} would both be written as volume {name}; "
                                "rename one of the files or leave one out (--exclude GLOB)")


def _few_values(data: np.ndarray, limit: int = LABEL_LIKE_VALUES) -> np.ndarray | None:
    """The distinct values of ``data`` (any shape) when there are at most ``limit``, else None.

    A strided sample settles almost every real image without sorting the whole volume.
    """
    flat = data.ravel()
    if len(np.unique(flat[::101])) > limit:
        return None
    values = np.unique(flat)
    return values if len(values) <= limit else None


def read_volumes(source: Source, allow_label_like: bool = False) -> list[tuple[str, np.ndarray]]:
    """Read a source's data: ``[(name, (X, Y, Z) float64)]``, one entry per frame of a 4-D series.

    A volume with at most :data:`LABEL_LIKE_VALUES` distinct values is refused as a label map unless
    ``allow_label_like``.
    """
    dtype = source.image.get_data_dtype() if hasattr(source.image, "get_data_dtype") else None
    if dtype is not None and dtype.kind == "c":
        # Casting to float would silently drop the imaginary part.
        raise UserError(f"{source.label} holds complex values ({dtype}); this tool takes real images: save the "
                        "magnitude (np.abs) as a real-valued NIfTI and pass that")
    try:
        data = np.asarray(source.image.dataobj, dtype=np.float64).reshape(source.shape)
    except Exception as exc:
        raise UserError(f"{source.label}: cannot read the image data ({first_line(exc)}); the file may be "
                        "truncated: re-copy it") from exc
    if not np.isfinite(data).all():
        raise UserError(f"{source.label} contains NaN or Inf values; fix or remove this volume")
    values = None if allow_label_like else _few_values(data)
    if values is not None:
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise UserError(f"{source.label} looks like a label map, not an image: only {len(values)} distinct "
                        f"value(s) ({shown}); leave it out (--exclude GLOB), or pass --allow-label-like if it "
                        "is an image")
    if data.ndim == 3:
        return [(source.name, data)]
    return [(name, data[..., t]) for t, name in enumerate(frame_names(source))]
