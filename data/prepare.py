"""Turn NIfTI volumes, fastMRI files or nilearn's MNI152 demo brain into the KD-MRI / SFT-KD-Recon HDF5 layout.

    python -m data.prepare --preset mrbrains --input MRBrainS/TrainingData --out-dir datasets/mrbrains
    python -m data.prepare --preset acdc --input ACDC/database/training --out-dir datasets/acdc
    python -m data.prepare --preset fastmri-knee-sc --fastmri knee/singlecoil_train knee/singlecoil_val \
        --acc 4x 8x --center-fraction 0.08 0.04 --out-dir datasets/fastmri-knee
    python -m data.prepare --demo --out-dir datasets/demo --size 64 --max-slices-per-volume 40

The flags fill ``Options``; the volumes are read by their source (data/sources.py), split by subject
(data/subjects.py), sliced (data/slicing.py), written into a staging folder and checked for leaks
(data/staging.py, data/split_check.py) before anything is moved into ``--out-dir``. Presets, inputs, masks, the
split rules, fastMRI, complex images, multi-coil data and the layout written: data/README.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m data.prepare ...", file=sys.stderr)
    sys.exit(2)

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.layout import (COIL_SOURCE_ATTR, MAPS_METHOD_ATTR, SPLITS, acc_folder, mask_name, undersample,  # noqa: E402
                         write_volume)
from data.masks import MASK_KINDS, MaskError, acc_type, load_mask, make_mask, parse_acc, save_mask  # noqa: E402
from data.dataset import KSPACE_SOURCE_ATTR, SYNTHETIC_FROM_MAGNITUDE  # noqa: E402
from data.fft import IMAGE_CHANNELS  # noqa: E402
from data.multicoil import MAP_METHODS, TRUE_MAPS, multicoil_volume  # noqa: E402
from data.slicing import fft_friendly, kept_slices, make_slices, synthetic_phase, window_slices  # noqa: E402
from data.sources import (DEFAULT_EXCLUDE, FASTMRI, LABEL_LIKE_VALUES, NIFTI, SOURCE_KINDS, Source,  # noqa: E402
                          SourceKind, check_unique_names, read_volumes)
from data.split_check import check_split, slice_hashes  # noqa: E402
from data.fingerprint import HASH_KEY, tree_hashes  # noqa: E402
from data.staging import check_apart, check_output, staged_output  # noqa: E402
from data.subjects import BLOCK_GAP, assign_subjects, block_split  # noqa: E402
from data.outputs import HDF5_MARGIN, check_free_space, folder_lock, write_json  # noqa: E402
from utils import (CliParser, UserError, check_fits_memory, check_seed, clean_text,  # noqa: E402
                   old_spellings, run_cli, seed_type)

DEFAULT_ACCS = ("4x", "5x")
DEFAULT_CENTER_FRACTION = 0.08
# Characters of subject ids printed per split: ACDC's 80 training patients fit, fastMRI's hundreds of
# 64-character patient ids do not (split.json lists them all).
SHOWN_SUBJECT_CHARS = 1000
# The kspace_source of data/fastmri.py's complex images, formed from the files' own k-space.
ACQUIRED_FASTMRI = "acquired (fastMRI single-coil kspace)"
ACQUIRED_FASTMRI_MC = "acquired (fastMRI multi-coil kspace)"
DEFAULT_MAPS = "espirit"
SIMULATED_COILS, ACQUIRED_COILS = "simulated (birdcage)", "acquired"
# More simulated coils than any scanner's receive array (fastMRI's have at most 20-odd).
MAX_COILS = 64
FASTMRI_NOTE = ("This is retrospective undersampling of the magnitude reference (the paper's protocol), not "
                "reconstruction of the raw (multi-coil) k-space: numbers are not comparable with fastMRI leaderboard "
                "entries that reconstruct raw k-space.")


PRESETS: dict[str, dict[str, Any]] = {
    # ACDC's patientNNN_frameNN files are the ED and ES frames (Info.cfg); the _4d cine repeats them.
    # The paper's two data sets get the public code's own masks, which exist for their sizes only.
    "acdc": {"kind": NIFTI, "include": ("*_frame[0-9][0-9].nii*",), "exclude": (*DEFAULT_EXCLUDE, "*_4d*"),
             "size": 150, "mask_kind": "public"},
    # MRBrainS 2013: TrainingData/N/T1.nii beside T1_IR, T2_FLAIR and two label maps; the paper uses T1.
    "mrbrains": {"kind": NIFTI, "include": ("T1.nii", "T1.nii.gz"), "exclude": DEFAULT_EXCLUDE, "size": 240,
                 "mask_kind": "public"},
    # fastMRI's references are 320 x 320; its knee baselines train with random masks, its brain ones with
    # equispaced masks (fastmri_examples/*_leaderboard.py).
    "fastmri-knee-sc": {"kind": FASTMRI, "size": 320, "mask_kind": "fastmri-random"},
    "fastmri-brain-mc": {"kind": FASTMRI, "size": 320, "mask_kind": "fastmri-equispaced"},
}


# --------------------------------------------------------------------------- what a run is asked to do

@dataclass(frozen=True)
class Options:
    """The flags of a run as :func:`prepare` takes them (the CLI's, under their ``dest`` names); None means the
    preset's value or the default. :meth:`resolved` checks them and fills the preset in.

    ``center_fraction``: one value, or one per acceleration of ``accs`` (resolved: a tuple, one per ``accs``).
    ``slice_range``: ``(start, stop)`` of Python's ``range(S)[start:stop]`` per volume, or None for all slices.
    """

    out: Path
    inputs: list[str | Path] | None = None
    fastmri: list[str | Path] | None = None
    demo: bool = False
    demo_resolution: int = 1
    preset: str | None = None
    size: int | None = None
    resize: bool = False
    pad_to: int | None = None
    axis: int = 2
    accs: list[str] | tuple[str, ...] = DEFAULT_ACCS
    mask_dir: str | Path | None = None
    mask_kind: str | None = None
    center_fraction: float | list[float] | tuple[float, ...] = DEFAULT_CENTER_FRACTION
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 42
    min_foreground: float = 0.05
    max_slices_per_volume: int | None = None
    slice_range: tuple[int, int] | list[int] | None = None
    overwrite: bool = False
    include: list[str] | tuple[str, ...] | None = None
    exclude: list[str] | tuple[str, ...] | None = None
    acquisitions: list[str] | None = None
    subject_regex: str | None = None
    val_subjects: list[str] | None = None
    test_subjects: list[str] | None = None
    test_only: bool = False
    split_file: str | Path | None = None
    allow_label_like: bool = False
    image: str = "magnitude"
    synthetic_phase: int | None = None
    coils: int | None = None
    maps: str | None = None
    coil_compress: int | None = None

    @property
    def given(self) -> list[SourceKind]:
        """The input kinds whose flag was passed (one, once :meth:`resolved` has checked)."""
        return [kind for kind in SOURCE_KINDS if getattr(self, kind.dest)]

    @property
    def kind(self) -> SourceKind | None:
        """What the inputs are: an entry of :data:`SOURCE_KINDS`, or None when no input flag was passed."""
        return self.given[0] if self.given else None

    @property
    def input_paths(self) -> list[str | Path]:
        """The files and folders named by the input flag (none for a kind that reads no files, the demo)."""
        return getattr(self, self.kind.dest) if self.kind is not None and self.kind.suffixes else []

    def resolved(self) -> Options:
        """These options checked, with the preset's defaults filled in and one centre fraction per acceleration."""
        self._check_sources()
        self._check_image()
        self._check_slices()
        self._check_split()
        accs = tuple(self.accs)
        fractions = self._center_fractions(accs)
        if self.mask_dir is not None and self.mask_kind is not None:
            raise UserError("pass either --mask-dir (existing masks) or --mask-kind (generated masks), not both")
        preset = PRESETS.get(self.preset, {})
        mask_kind = self.mask_kind or preset.get("mask_kind", "rows")
        if (self.mask_kind is None and self.mask_dir is None and mask_kind == "public"
                and self.size not in (None, preset["size"])):
            print(f"note: --size {self.size} replaces --preset {self.preset}'s {preset['size']}, for which the public "
                  "masks were made; generating --mask-kind rows masks (pass --mask-kind to choose another)",
                  file=sys.stderr)
            mask_kind = "rows"
        if mask_kind not in MASK_KINDS:
            raise UserError(f"--mask-kind {mask_kind!r} is unknown; choose one of: {', '.join(MASK_KINDS)}")
        return replace(self, out=Path(self.out), accs=accs, center_fraction=fractions, mask_kind=mask_kind,
                       include=preset.get("include") if self.include is None else self.include,
                       exclude=preset.get("exclude", DEFAULT_EXCLUDE) if self.exclude is None else self.exclude,
                       size=preset.get("size") if self.size is None else self.size)

    def _check_sources(self) -> None:
        given = [kind.flag for kind in self.given]
        if len(given) > 1:
            raise UserError(f"pass either {given[0]} or {given[1]}, not both")
        if not given:
            usages = [kind.usage for kind in SOURCE_KINDS]
            raise UserError(f"no data: pass {', '.join(usages[:-1])} or {usages[-1]}")
        if self.preset is not None and self.preset not in PRESETS:
            raise UserError(f"--preset {self.preset!r} is unknown; choose one of: {', '.join(PRESETS)}")
        if self.demo and self.preset is not None:
            raise UserError(f"--preset {self.preset} is for {PRESETS[self.preset]['kind'].flag} data; the demo "
                            "takes --size directly")
        if self.preset is not None and PRESETS[self.preset]["kind"] is not self.kind:
            flag = PRESETS[self.preset]["kind"].flag
            raise UserError(f"--preset {self.preset} is for {flag} data; pass the files with {flag}")
        if self.kind is not FASTMRI and self.acquisitions is not None:
            raise UserError("--acquisition filters fastMRI files by their 'acquisition' attribute; it needs --fastmri")
        if self.kind is FASTMRI and self.subject_regex is not None:
            raise UserError("--subject-regex does not apply to --fastmri: a file's subject is its patient_id "
                            "attribute (else its name); use --val-subjects or --split-file to fix the split")

    def _check_coils(self) -> None:
        """--coils, --maps and --coil-compress: multi-coil data are simulated (--coils on --input / --demo) or
        read (--fastmri multi-coil files with --image complex)."""
        if self.coils is not None:
            if self.kind is FASTMRI:
                raise UserError("--coils simulates coils on --input / --demo images; fastMRI multi-coil files bring "
                                "their own coils: pass them with --image complex and drop --coils")
            if not 1 <= self.coils <= MAX_COILS:
                raise UserError(f"--coils {self.coils} must be between 1 and {MAX_COILS}, e.g. 8")
            if self.synthetic_phase is None:
                raise UserError("--coils multiplies a complex image by the coils' maps: give the magnitude images a "
                                "phase with --synthetic-phase SEED")
        multicoil_possible = self.coils is not None or (self.kind is FASTMRI and self.image == "complex")
        for flag, value in (("--maps", self.maps), ("--coil-compress", self.coil_compress)):
            if value is not None and not multicoil_possible:
                raise UserError(f"{flag} applies to multi-coil data: simulate coils with --coils N (and "
                                "--synthetic-phase), or read fastMRI multi-coil files with --image complex")
        if self.maps is not None and self.maps not in MAP_METHODS:
            raise UserError(f"--maps {self.maps!r} is unknown; choose one of: {', '.join(MAP_METHODS)}")
        if self.maps == TRUE_MAPS and self.kind is FASTMRI:
            raise UserError("--maps true keeps a simulation's own coil maps (a control), but acquired data "
                            "(--fastmri) have no true maps: use --maps espirit or --maps acs-rss")
        if self.coil_compress is not None:
            if self.coil_compress < 1 or (self.coils is not None and self.coil_compress > self.coils):
                raise UserError(f"--coil-compress {self.coil_compress} must be between 1 and the number of coils"
                                f"{f' ({self.coils})' if self.coils else ''}")
            if self.maps == TRUE_MAPS:
                raise UserError("--maps true keeps the simulated coils' maps, which compressed (virtual) coils do "
                                "not have: drop --coil-compress or estimate the maps (--maps espirit)")

    @property
    def maps_method(self) -> str:
        """How the sensitivity maps of multi-coil data are made (--maps, default ESPIRiT)."""
        return self.maps or DEFAULT_MAPS

    def _check_image(self) -> None:
        self._check_coils()
        if self.image not in IMAGE_CHANNELS:
            raise UserError(f"--image {self.image!r} is unknown; choose one of: {', '.join(IMAGE_CHANNELS)}")
        if self.image == "complex" and self.kind is not FASTMRI:
            raise UserError(f"--image complex takes the acquired k-space of --fastmri single-coil files, but "
                            f"{self.kind.flag} gives magnitude images: give them a phase with --synthetic-phase SEED")
        if self.image == "complex" and self.resize:
            raise UserError("--resize resamples magnitude images; --image complex centre-crops the complex image "
                            "(fastMRI's complex_center_crop) to --size: drop --resize")
        if self.synthetic_phase is not None:
            if self.kind is FASTMRI:
                raise UserError("--synthetic-phase gives magnitude images (--input, --demo) a phase, but fastMRI "
                                "files hold their acquired one: use --image complex (single-coil files)")
            check_seed(self.synthetic_phase)

    @property
    def kspace_source(self) -> str:
        """Where the written k-space comes from (the files' ``kspace_source`` attribute, see data/dataset.py)."""
        if self.image == "complex":
            return ACQUIRED_FASTMRI
        if self.synthetic_phase is not None:
            source = f"{SYNTHETIC_FROM_MAGNITUDE} with a smooth random phase (--synthetic-phase {self.synthetic_phase})"
            if self.coils is not None:
                source += f", {self.coils} simulated birdcage coils (--coils {self.coils})"
            return source
        return SYNTHETIC_FROM_MAGNITUDE

    def _check_slices(self) -> None:
        if self.axis not in (0, 1, 2):
            raise UserError(f"--axis {self.axis} must be 0, 1 or 2")
        if self.kind is FASTMRI and self.axis != 2:
            raise UserError(f"--axis {self.axis} does not apply to --fastmri: its slices are those of the "
                            "reference images; drop --axis")
        if self.size is not None and self.size < 8:
            raise UserError(f"--size {self.size} is too small; use at least 8 (the paper: 150 for ACDC, 240 for "
                            "MRBrainS; fastMRI: 320)")
        if self.resize and self.size is None and self.preset is None:
            raise UserError("--resize needs --size N (the output slice size)")
        if self.pad_to is not None and (not self.resize or self.pad_to < 1):
            raise UserError(f"--pad-to {self.pad_to} sets the field of view that --resize scales down: pass it with "
                            "--resize, as a positive number of source pixels (e.g. 233 for the MNI152 demo)")
        if not 0.0 <= self.min_foreground < 1.0:
            raise UserError(f"--min-foreground {self.min_foreground} must be in [0, 1), e.g. 0.05")
        if self.max_slices_per_volume is not None and self.max_slices_per_volume < 1:
            raise UserError(f"--max-slices-per-volume {self.max_slices_per_volume} must be at least 1")
        if self.slice_range is not None:
            start, stop = self.slice_range
            if (start >= 0) == (stop >= 0) and start >= stop:
                raise UserError(f"--slice-range {start} {stop} keeps no slice: START must come before STOP "
                                "(Python's slice rules, e.g. --slice-range 5 -5)")

    def _check_split(self) -> None:
        if not self.accs:
            raise UserError("--acc needs at least one acceleration, e.g. --acc 4x 5x")
        for acc in self.accs:
            parse_acc(acc)
        if len(set(self.accs)) < len(self.accs):
            raise UserError(f"--acc {' '.join(self.accs)} lists an acceleration twice; give each once")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction {self.val_fraction} must be between 0 and 1 (exclusive), e.g. 0.2")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UserError(f"--test-fraction {self.test_fraction} must be in [0, 1), e.g. 0.2 (0: no test split, "
                            "the original two-split layout)")
        check_seed(self.seed)
        for flag, value in (("--val-subjects", self.val_subjects), ("--test-subjects", self.test_subjects)):
            if value is not None and self.split_file is not None:
                raise UserError(f"pass either {flag} or --split-file, not both")
            if value is not None and not value:
                raise UserError(f"{flag} needs at least one subject id")
            if value is not None and self.test_only:
                raise UserError(f"--test-only puts every subject in test/; drop {flag}")
        if self.test_only and self.split_file is not None:
            raise UserError("--test-only puts every subject in test/; drop --split-file")

    def _center_fractions(self, accs: tuple[str, ...]) -> tuple[float, ...]:
        """One centre fraction per acceleration: one value for all, or one each (fastMRI: 0.08 at 4x, 0.04 at 8x)."""
        given = [self.center_fraction] if isinstance(self.center_fraction, (int, float)) else self.center_fraction
        if len(given) not in (1, len(accs)):
            raise UserError(f"--center-fraction has {len(given)} values for {len(accs)} accelerations (--acc "
                            f"{' '.join(accs)}); give one for all, or one per acceleration")
        for value in given:
            if not 0.0 < value < 1.0:
                raise UserError(f"--center-fraction {value} must be between 0 and 1 (exclusive), e.g. 0.08")
        return tuple(given) * len(accs) if len(given) == 1 else tuple(given)


# --------------------------------------------------------------------------- from volumes to the staging folder

@dataclass
class SliceRules:
    """How a volume becomes slices (the slice and image flags), and how many slices each rule dropped.

    ``image``: ``"magnitude"`` or ``"complex"`` (fastMRI k-space, data/fastmri.py); ``phase_seed``: the
    ``--synthetic-phase`` seed (None: magnitude images stay real); ``kspace_source``: what the files record."""

    axis: int
    size: int
    resize: bool
    pad_to: int | None
    min_foreground: float
    max_slices: int | None
    window: tuple[int, int] | None
    allow_label_like: bool
    image: str = "magnitude"
    phase_seed: int | None = None
    kspace_source: str = SYNTHETIC_FROM_MAGNITUDE
    coils: int | None = None  # --coils: simulate this many coils
    maps: str = DEFAULT_MAPS
    coil_compress: int | None = None
    dropped: Counter = field(default_factory=Counter)  # "near-empty" / "outside --slice-range" -> slices

    def frames(self, source: Source) -> list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]:
        """``[(name, slices (N, N, S) float32 or complex64, kept slice indices int64 (K,), extra file
        attributes)]`` of one source; fastMRI multi-coil files give coil images (C, N, N, S) complex64. Slices are
        kept by their magnitude (coil images: their root sum of squares)."""
        frames = []
        for name, slices, attrs in self._volumes(source):
            magnitudes = slices if np.isrealobj(slices) else np.abs(slices)
            if magnitudes.ndim == 4:
                magnitudes = np.sqrt((magnitudes ** 2).sum(axis=0))
            window = window_slices(slices.shape[-1], self.window)
            kept = kept_slices(magnitudes, self.min_foreground, self.max_slices, window)
            self.dropped["outside --slice-range"] += slices.shape[-1] - len(window)
            self.dropped["near-empty"] += len(window) - len(kept)
            if self.phase_seed is not None:
                slices = (slices * synthetic_phase(slices.shape, self.phase_seed, name)).astype(np.complex64)
            frames.append((name, slices, kept, attrs))
        return frames

    def _volumes(self, source: Source) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
        """``[(name, slices (N, N, S), attributes)]``: float32 in [0, 1] (min-max scaled magnitude), or for
        fastMRI k-space complex64 with ``|slices| <= 1`` and its ``scale`` attribute."""
        if self.image == "complex":
            slices, scale = source.image.complex_slices(self.size)
            return [(source.name, slices.astype(np.complex64), {"scale": scale})]
        return [(name, make_slices(volume, self.axis, self.size, self.resize, self.pad_to), {})
                for name, volume in read_volumes(source, self.allow_label_like)]


class Staging:
    """Writes the volumes of a run into the staging folder and records, per subject, what went where."""

    def __init__(self, stage: Path, masks: dict[str, np.ndarray], sources: list[Source], rules: SliceRules,
                 assigned: dict[str, str] | None):
        self.stage, self.masks, self.rules = stage, masks, rules
        self.record = {subject: {"split": assigned[subject] if assigned else "slice blocks", "sources": [],
                                 "files": {split: [] for split in SPLITS}, "slices": dict.fromkeys(SPLITS, 0)}
                       for subject in dict.fromkeys(s.group for s in sources)}
        self.volumes: dict[str, list[str]] = {split: [] for split in SPLITS}
        # Multi-coil data: the coil count of the volumes written so far, and the first file that had it.
        self.coils: int | None = None
        self.coils_from: str | None = None
        for acc, mask in masks.items():
            save_mask(stage / mask_name(acc), mask)

    def folder(self, split: str, acc: str) -> Path:
        """``{stage}/{split}/acc_{acc}``, created on first use: a split that gets no volume gets no folder
        (no test/ in the two-split layout, only test/ in a --test-only set)."""
        folder = acc_folder(self.stage, split, acc)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write(self, source: Source, name: str, slices: np.ndarray, split: str, indices: np.ndarray,
              extra: dict[str, Any]) -> None:
        """Write slices[:, :, indices] ((N, N, S) float32 or complex64, indices int64 (K,)) as volume ``name``
        of ``split``, with the ``extra`` attributes of its frame."""
        if len(indices) == 0:
            return
        volfs = np.ascontiguousarray(slices[..., indices])
        attrs = {"source_file": source.label, "slice_axis": self.rules.axis,
                 "source_slices": indices.astype(np.int64), "subject": source.group,
                 KSPACE_SOURCE_ATTR: self.rules.kspace_source, **source.attrs, **extra}
        if self.rules.coils is not None or volfs.ndim == 4:
            self._write_multicoil(source, name, volfs, split, attrs)
        else:
            attrs["slice_hashes"] = slice_hashes(volfs)
            # h5py can crash the process on a full disk instead of raising (its page buffer fails in a flush): ask
            # first, for volfs, complex kspace and zf, and room for HDF5's own metadata.
            check_free_space(self.stage, (4 * volfs.nbytes + HDF5_MARGIN) * len(self.masks))
            for acc, (kspace, zf) in undersample(volfs, self.masks).items():
                write_volume(self.folder(split, acc) / f"{name}.h5", volfs, kspace, zf, acc, attrs)
        self.volumes[split].append(name)
        self.record[source.group]["files"][split].append(f"{name}.h5")
        self.record[source.group]["slices"][split] += len(indices)

    def _write_multicoil(self, source: Source, name: str, images: np.ndarray, split: str,
                         attrs: dict[str, Any]) -> None:
        """Write one multi-coil volume (data/multicoil.py): ``images`` (N, N, S) complex, a simulation's image
        (--coils), or (C, N, N, S) complex acquired coil images (fastMRI)."""
        rules = self.rules
        try:
            volume = multicoil_volume(images, self.masks, rules.maps, rules.coils, rules.coil_compress)
        except ValueError as exc:
            raise UserError(f"{source.label}: {exc}") from exc
        coils = volume.coils
        if self.coils is not None and coils != self.coils:
            raise UserError(f"{source.label} has {coils} coils but {self.coils_from} has {self.coils}; one coil count "
                            "per data set: pass --coil-compress K (K at most the smallest count) to make them equal")
        self.coils, self.coils_from = coils, self.coils_from or source.label
        attrs = {**attrs, "slice_hashes": slice_hashes(volume.rss), MAPS_METHOD_ATTR: rules.maps, "coils": coils,
                 COIL_SOURCE_ATTR: SIMULATED_COILS if rules.coils is not None else ACQUIRED_COILS}
        if rules.coil_compress is not None:
            attrs["coil_compress"] = rules.coil_compress
        check_free_space(self.stage, (2 * (coils + 2) * 8 * volume.rss.size + HDF5_MARGIN) * len(self.masks))
        for acc, arrays in volume.arrays.items():
            write_volume(self.folder(split, acc) / f"{name}.h5", arrays["target"], arrays["kspace"], arrays["zf"], acc,
                         attrs, maps=arrays["maps"], rss=volume.rss)

    def by_subject(self, sources: list[Source], assigned: dict[str, str]) -> None:
        """Every volume of a subject goes whole to the subject's split."""
        for source in tqdm(sources, desc="volumes", unit="vol", disable=None):
            self.record[source.group]["sources"].append(source.label)
            for name, slices, kept, extra in self.rules.frames(source):
                self.write(source, name, slices, assigned[source.group], kept, extra)

    def by_blocks(self, sources: list[Source], val_fraction: float, test_fraction: float) -> None:
        """One subject: contiguous blocks of slice positions per split (see :func:`block_split`)."""
        # Every volume gets the same slice positions per split (an ED frame and the cine frame it repeats then
        # land together), so the subject's frames are read first.
        frames = [(source, *frame) for source in sources for frame in self.rules.frames(source)]
        positions = np.unique(np.concatenate([kept for _, _, _, kept, _ in frames]))
        if len(positions):
            label = sources[0].label if len(sources) == 1 else f"subject {sources[0].group}"
            blocks = block_split(positions, val_fraction, label, test_fraction)
            for source, name, slices, kept, extra in frames:
                for split in blocks:
                    self.write(source, name, slices, split, np.intersect1d(kept, blocks[split]), extra)
        for source in sources:
            self.record[source.group]["sources"].append(source.label)

    def counts(self, expected: tuple[str, ...]) -> dict[str, int]:
        """Slices written per split; an error when a split of ``expected`` got none."""
        counts = {split: sum(entry["slices"][split] for entry in self.record.values()) for split in SPLITS}
        if sum(counts.values()) == 0:
            outside = self.rules.dropped["outside --slice-range"]
            because = f" ({outside} outside --slice-range)" if outside else ""
            raise UserError(f"every slice was skipped{because}; lower --min-foreground (now "
                            f"{self.rules.min_foreground}), e.g. 0.01 or 0, or widen --slice-range")
        for split in expected:
            if counts[split] == 0:
                raise UserError(f"the {split} split got no slices (its volumes were all near-empty); lower "
                                "--min-foreground or change --seed / --val-fraction / --test-fraction / the "
                                "subjects per split")
        return counts


# --------------------------------------------------------------------------- the whole job

def _masks(options: Options, size: int) -> dict[str, np.ndarray]:
    """acc -> (size, size) float32 {0, 1} mask: generated (--mask-kind, --center-fraction) or from --mask-dir."""
    if options.mask_dir is None:
        masks = {}
        for acc, fraction in zip(options.accs, options.center_fraction):
            try:
                masks[acc] = make_mask((size, size), acc, options.mask_kind, options.seed, fraction)
            except MaskError as exc:
                raise UserError(f"--mask-kind {options.mask_kind} --acc {acc} --center-fraction {fraction}: "
                                f"{exc}") from exc
        return masks
    folder = Path(options.mask_dir)
    if not folder.is_dir():
        raise UserError(f"--mask-dir {folder} does not exist; pass the folder holding mask_{{acc}}.npy")
    masks = {}
    for acc in options.accs:
        path = folder / mask_name(acc)
        if not path.is_file():
            raise UserError(f"--mask-dir {folder} has no {mask_name(acc)}; add it or drop --mask-dir to "
                            "generate masks")
        masks[acc] = load_mask(path, (size, size))
    return masks


def _subjects_line(sources: list[Source]) -> str:
    """How the subjects were found, for the log, e.g. ``8 subjects (patient001, ...; by the subject token)``."""
    rules = {"token": "the subject token in the path", "regex": "--subject-regex",
             "folder": "the folder under --input", "file": "one per file", "demo": "the demo's volumes",
             "patient_id": "the patient_id attribute", "stem": "the file name (no patient_id attribute)"}
    by_rule: dict[str, list[str]] = {}
    for source in sources:
        names = by_rule.setdefault(source.found_by, [])
        if source.group not in names:
            names.append(source.group)
    parts = [f"{len(names)} by {rules[rule]} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for rule, names in by_rule.items()]
    total = len({source.group for source in sources})
    return f"{total} subject(s): {'; '.join(parts)}"


def _split_how(options: Options) -> str:
    if options.test_only:
        return "--test-only"
    if options.val_subjects is not None or options.test_subjects is not None:
        return " ".join(flag for flag, value in (("--val-subjects", options.val_subjects),
                                                 ("--test-subjects", options.test_subjects)) if value)
    if options.split_file is not None:
        return f"--split-file {options.split_file}"
    return (f"seeded (--seed {options.seed}, --val-fraction {options.val_fraction}, --test-fraction "
            f"{options.test_fraction})")


def _expected_splits(options: Options, assigned: dict[str, str] | None) -> tuple[str, ...]:
    """The splits this run must fill: test alone for --test-only, test beside the two others when asked for."""
    if options.test_only:
        return ("test",)
    with_test = ("test" in assigned.values()) if assigned is not None else options.test_fraction > 0
    return SPLITS if with_test else ("train", "validation")


def _fill_stage(stage: Path, options: Options, sources: list[Source], assigned: dict[str, str] | None,
                masks: dict[str, np.ndarray], rules: SliceRules) -> dict[str, Any]:
    """Write the whole data set into ``stage``, check it for leaks and write its split.json; returns the
    summary entries of what was written."""
    staging = Staging(stage, masks, sources, rules, assigned)
    if assigned is not None:
        staging.by_subject(sources, assigned)
    else:
        staging.by_blocks(sources, options.val_fraction, options.test_fraction)
    counts = staging.counts(_expected_splits(options, assigned))
    leak_check = check_split(stage, options.accs, fix=(
        "the same image is filed under two subjects (a copy of a file, or a subject id the default rule "
        "cannot see): remove the copy, or group the files with --subject-regex or --split-file"),
        label=f"the data for --out-dir {options.out}")
    subjects = {split: [s for s, entry in staging.record.items() if entry["slices"][split]] for split in SPLITS}
    split_by = "slice blocks" if assigned is None else "subjects"
    found_line = _subjects_line(sources)
    per_split = {f"{split}_subjects": subjects[split] for split in SPLITS}
    coils = {} if staging.coils is None else _coil_record(options, staging.coils)
    write_json(stage / "split.json", {
        "split_by": split_by, "how": _split_how(options), "subjects_found": found_line, **coils, **per_split,
        "subjects": staging.record, HASH_KEY: tree_hashes(stage)})
    return {"split": split_by, "subjects_found": found_line, **coils, **per_split,
            **{f"{split}_volumes": staging.volumes[split] for split in SPLITS},
            **{f"{split}_slices": counts[split] for split in SPLITS},
            "duplicates": leak_check["duplicates"], "skipped_slices": rules.dropped["near-empty"],
            "slices_outside_range": rules.dropped["outside --slice-range"]}


def prepare(*, out: str | Path, **options: Any) -> dict[str, Any]:
    """Prepare a data set into ``out``; ``options`` are the fields of :class:`Options` (the CLI flags).

    ``size=None`` (and no preset) keeps every slice whole: slices are zero-padded to a square of the largest
    in-plane extent over all volumes, rounded up by :func:`fft_friendly` (the 1 mm template: 233 -> 240).
    Returns a summary dict: ``out``, ``size``, ``accs``, ``mask_kind``, ``split`` ("subjects" or "slice
    blocks"), ``subjects_found`` (a line saying how), ``per_file_subjects``, ``{split}_subjects`` (ids),
    ``{split}_volumes`` (names), ``{split}_slices`` (counts), ``duplicates`` ({split: slices identical to
    another of the same split}), ``skipped_files`` (paths skipped by --include / --exclude),
    ``skipped_acquisitions`` ({acquisition: fastMRI files left out}), ``fastmri_references`` ({dataset:
    files}, empty for other inputs), ``skipped_slices`` (near-empty), ``slices_outside_range``, ``elapsed_s``.
    """
    start = time.perf_counter()
    opts = Options(out=out, **options).resolved()
    check_apart(opts.out, opts.input_paths)
    with folder_lock(opts.out, "--out-dir"):
        return _prepare(opts, start)


def _coil_record(options: Options, coils: int) -> dict[str, Any]:
    """What split.json and the summary record of multi-coil data: the coil count, how the maps were made, and
    whether the coils are simulated or compressed."""
    record = {"coils": coils, "maps": options.maps_method,
              "coil_source": SIMULATED_COILS if options.coils is not None else ACQUIRED_COILS}
    if options.coil_compress is not None:
        record["coil_compress"] = options.coil_compress
    return record


def _check_acs(options: Options, masks: dict[str, np.ndarray]) -> None:
    """Maps are estimated from each acceleration's autocalibration lines: a mask without them is refused before
    anything is written."""
    from data.coils import acs_region  # noqa: PLC0415 - multi-coil work only
    for (acc, mask), fraction in zip(masks.items(), options.center_fraction):
        where = (f"{Path(options.mask_dir) / mask_name(acc)}" if options.mask_dir else
                 f"(--mask-kind {options.mask_kind}, --center-fraction {fraction})")
        try:
            acs_region(mask, source=f"the {acc} mask {where}")
        except ValueError as exc:
            raise UserError(str(exc)) from exc


def _prepare(opts: Options, start: float) -> dict[str, Any]:
    """:func:`prepare` for resolved options, holding the lock of ``opts.out``."""
    check_output(opts.out, opts.overwrite)
    sources, skipped_files, skipped_acquisitions = opts.kind.open(opts)
    check_unique_names(sources)
    groups = [s.group for s in sources]
    assigned = (dict.fromkeys(groups, "test") if opts.test_only else
                assign_subjects(groups, opts.val_fraction, opts.seed, opts.val_subjects, opts.split_file,
                                opts.test_fraction, opts.test_subjects))
    size = opts.size
    if size is None:
        size = fft_friendly(max(extent for s in sources for i, extent in enumerate(s.shape[:3]) if i != opts.axis))
    # A volume's arrays at the output size (float32 image, complex64 k-space, float32 zero-filled, a float64 copy
    # while resampling), before the first is allocated.
    deepest = max(s.shape[opts.axis] for s in sources)
    check_fits_memory(24 * size ** 2 * deepest, f"{'--size ' if opts.size else 'slices of '}{size}: a {size} x {size} "
                      f"x {deepest} volume", "choose a smaller --size")
    masks = _masks(opts, size)
    multicoil = [s for s in sources if getattr(s.image, "coils", 1) > 1] if opts.image == "complex" else []
    if multicoil and len(multicoil) < len(sources):
        single = next(s for s in sources if s not in multicoil)
        raise UserError(f"{single.label} is single-coil but {multicoil[0].label} is multi-coil "
                        f"({multicoil[0].image.coils} coils): prepare them separately")
    if opts.image == "complex" and not multicoil and (opts.maps or opts.coil_compress):
        raise UserError("--maps / --coil-compress apply to multi-coil data, but the --fastmri files are single-coil")
    if multicoil and opts.coil_compress is not None and opts.coil_compress > min(s.image.coils for s in multicoil):
        fewest = min(multicoil, key=lambda s: s.image.coils)
        raise UserError(f"--coil-compress {opts.coil_compress}: {fewest.label} has only {fewest.image.coils} coils; "
                        "pass a smaller K")
    if multicoil and opts.coil_compress is None and len({s.image.coils for s in multicoil}) > 1:
        counts = Counter(s.image.coils for s in multicoil)
        odd = next(s for s in multicoil if s.image.coils != multicoil[0].image.coils)
        raise UserError(f"the --fastmri files hold different coil counts ({', '.join(f'{n} files with {c}' for c, n in sorted(counts.items()))}; "
                        f"e.g. {multicoil[0].label}: {multicoil[0].image.coils}, {odd.label}: {odd.image.coils}); "
                        "pass --coil-compress K to compress every volume to K virtual coils")
    if (opts.coils is not None or multicoil) and opts.maps_method != TRUE_MAPS:
        _check_acs(opts, masks)
    kspace_source = ACQUIRED_FASTMRI_MC if multicoil else opts.kspace_source
    rules = SliceRules(opts.axis, size, opts.resize, opts.pad_to, opts.min_foreground, opts.max_slices_per_volume,
                       None if opts.slice_range is None else tuple(opts.slice_range), opts.allow_label_like,
                       opts.image, opts.synthetic_phase, kspace_source, opts.coils, opts.maps_method,
                       opts.coil_compress)
    with staged_output(opts.out, opts.overwrite) as stage:
        written = _fill_stage(stage, opts, sources, assigned, masks, rules)
    references = Counter(s.attrs["reference"] for s in sources if "reference" in s.attrs)
    return {"out": str(opts.out), "size": size, "accs": list(opts.accs), "mask_kind": opts.mask_kind,
            "image": "complex" if opts.synthetic_phase is not None else opts.image, "kspace": kspace_source,
            **written,
            "per_file_subjects": sorted({s.group for s in sources if s.found_by == "file"}),
            "skipped_files": [str(p) for p in skipped_files], "skipped_acquisitions": skipped_acquisitions,
            "fastmri_references": dict(references), "elapsed_s": time.perf_counter() - start}


# --------------------------------------------------------------------------- the command line

def _add_input_flags(parser: CliParser) -> None:
    g = parser.add_argument_group("inputs")
    for kind in SOURCE_KINDS:
        for names, keywords in kind.arguments:
            g.add_argument(*names, **keywords)
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="defaults of known data sets: acdc = ED/ES frames only (no _4d, no _gt), --size 150; "
                        "mrbrains = T1.nii only, --size 240; fastmri-knee-sc / fastmri-brain-mc (with "
                        "--fastmri) = --size 320, --mask-kind fastmri-random / fastmri-equispaced. Flags "
                        "override them")
    g.add_argument("--include", nargs="+", default=None, metavar="GLOB",
                   help="use only files whose name matches one of these (default: all; acdc: "
                        "*_frame[0-9][0-9].nii*; mrbrains: T1.nii T1.nii.gz)")
    g.add_argument("--exclude", nargs="*", default=None, metavar="GLOB",
                   help=f"skip files whose name matches one of these, named files too (default: "
                        f"{' '.join(DEFAULT_EXCLUDE)}, the label-map names; acdc adds *_4d*); --exclude "
                        "alone skips nothing")
    g.add_argument("--acquisition", dest="acquisitions", nargs="+", default=None, metavar="NAME",
                   help="--fastmri: use only files whose 'acquisition' attribute is one of these, e.g. "
                        "CORPD_FBK CORPDFS_FBK (knee), AXT2 AXFLAIR (brain); the others are counted and skipped")
    g.add_argument("--allow-label-like", action="store_true",
                   help=f"accept volumes with at most {LABEL_LIKE_VALUES} distinct values (refused by default "
                        "as label maps)")


def _add_image_flags(parser: CliParser) -> None:
    g = parser.add_argument_group("image type")
    g.add_argument("--image", choices=tuple(IMAGE_CHANNELS), default="magnitude",
                   help="magnitude (default, the paper's protocol): real images, k-space synthesised from them; "
                        "complex: with --fastmri single-coil files, the complex image of the file's kspace (multi-coil "
                        "files: their coil k-space, maps estimated, data/README.md 'Multi-coil') "
                        "(fastMRI's ifft2c and complex_center_crop to --size, scaled to max |x| = 1), networks "
                        "get 2 channels (real, imaginary)")
    g.add_argument("--synthetic-phase", type=seed_type, default=None, metavar="SEED",
                   help="--input / --demo: multiply each magnitude slice by a smooth random phase (a degree-2 "
                        "polynomial drawn from SEED, the volume and the slice; data/README.md), so the k-space "
                        "is not Hermitian-symmetric; the images become complex (2 channels)")
    g.add_argument("--coils", type=int, default=None, metavar="N",
                   help="--input / --demo with --synthetic-phase: simulate N receive coils (birdcage "
                        "sensitivities) on the complex image; multi-coil data: coil k-space, maps, E^H images")
    g.add_argument("--maps", choices=MAP_METHODS, default=None,
                   help="multi-coil sensitivity maps, estimated per slice from the undersampled k-space's "
                        "autocalibration lines: espirit (default, sigpy's EspiritCalib) or acs-rss (the ACS "
                        "coil images over their RSS, DIRECT's default); true: the simulation's own maps, a "
                        "control (refused for acquired data)")
    g.add_argument("--coil-compress", type=int, default=None, metavar="K",
                   help="multi-coil data: SVD-compress each volume's coils to K virtual coils before the maps are "
                        "estimated (fastMRI's 15-20 coils to 8 keeps CPU runs practical)")


def _add_split_flags(parser: CliParser) -> None:
    g = parser.add_argument_group("split")
    g.add_argument("--subject-regex", default=None, metavar="REGEX",
                   help="subject id of a file: the first group (or the match) of REGEX in its path below "
                        "--input, e.g. 'TrainingData/(\\d+)' (default: a patientNNN / sub-NN / subjectN / "
                        "caseN token, else the folder under --input; --fastmri: the patient_id attribute)")
    g.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of subjects (or, for a single subject, of slice positions) for validation")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of subjects (single subject: of slice positions, the highest block) held out in "
                        "test/, scored by evaluate.py and never used to choose a checkpoint; 0: no test split "
                        "(the original two-split layout of the public code)")
    g.add_argument("--seed", type=seed_type, default=42, help="seed of the masks and of the subject split")
    g.add_argument("--val-subjects", nargs="+", default=None, metavar="ID",
                   help="these subjects are the validation split, all others training (e.g. a paper's split), "
                        "or test with --test-subjects")
    g.add_argument("--test-subjects", nargs="+", default=None, metavar="ID",
                   help="these subjects are the test split (validation: --val-subjects, else drawn from the rest)")
    g.add_argument("--test-only", action="store_true",
                   help="every slice goes to test/: an external test set, e.g. another brain; pass the training "
                        "data's masks with --mask-dir so both sets are undersampled alike")
    g.add_argument("--split-file", type=Path, default=None, metavar="JSON",
                   help="reuse a split.json written by this tool, or {\"train\": [ids], \"validation\": [ids], "
                        "\"test\": [ids]}")


def _add_slice_flags(parser: CliParser) -> None:
    g = parser.add_argument_group("slices")
    g.add_argument("--size", type=int, default=None,
                   help="slices become N x N (centre crop/pad; default: the preset's, else pad to a square of "
                        "the largest in-plane extent rounded up to a 2-3-5 FFT size, nothing cropped)")
    g.add_argument("--resize", action="store_true",
                   help="resample slices to --size (anti-aliased, aspect kept by padding) instead of crop/pad")
    g.add_argument("--pad-to", type=int, default=None, metavar="N",
                   help="with --resize: zero-pad (or crop) each slice to N x N source pixels before resizing "
                        "(default: its largest in-plane extent); give another brain the training set's N (the "
                        "MNI152 demo: 233) so both have the same millimetres per pixel")
    g.add_argument("--axis", type=int, choices=(0, 1, 2), default=2, help="slice axis of the volumes")
    g.add_argument("--slice-range", type=int, nargs=2, default=None, metavar=("START", "STOP"),
                   help="per volume, keep only slices range(S)[START:STOP] (Python's rules: 5 -5 drops five at "
                        "each end, e.g. the noise-only outer slices of fastMRI knees)")
    g.add_argument("--min-foreground", type=float, default=0.05,
                   help="skip slices where fewer than this fraction of the N x N output slice's pixels "
                        "exceed 5%% of the volume max (all-zero slices are always skipped)")
    g.add_argument("--max-slices-per-volume", type=int, default=None,
                   help="keep at most this many central slices of each volume (handy for the demo)")


def _add_output_flags(parser: CliParser) -> None:
    g = parser.add_argument_group("masks and output")
    old_spellings(g.add_argument("--out-dir", "--out", dest="out", required=True, type=Path,
                                 help="output folder (train/, validation/, test/, mask_*.npy, split.json); keep it "
                                      "outside the source tree, e.g. datasets/acdc"), "--out")
    g.add_argument("--acc", dest="accs", nargs="+", type=acc_type, default=list(DEFAULT_ACCS), metavar="ACC",
                   help="accelerations, e.g. 4x 5x")
    g.add_argument("--mask-kind", choices=MASK_KINDS, default=None,
                   help="public: the public SFT-KD-Recon mask files, 240x240 and 150x150 at 4x/5x only "
                        "(default of the mrbrains / acdc presets); rows: whole rows, a fixed low-frequency band "
                        "at both ends plus uniform rows, exactly H/acc (default otherwise); variable-density: "
                        "as many rows, Gaussian density around DC, any size; fastmri-random / "
                        "fastmri-equispaced: fastMRI's column masks with a fully sampled centre, in the "
                        "unshifted convention (default of the fastmri presets)")
    g.add_argument("--center-fraction", type=float, nargs="+", default=[DEFAULT_CENTER_FRACTION],
                   metavar="F", help="share of fully sampled low-frequency lines: one value, or one per --acc "
                                     "(fastMRI: 0.08 at 4x, 0.04 at 8x)")
    g.add_argument("--mask-dir", type=Path, default=None,
                   help="use mask_{acc}.npy from this folder instead of generating masks")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the files an earlier run wrote in a non-empty --out-dir (listed in its "
                        "manifest.json); other files stay, and the old data stay until the new are complete")


def _shorten(subjects: list[str]) -> str:
    """The ids joined by spaces, cut after :data:`SHOWN_SUBJECT_CHARS` characters with a pointer to split.json."""
    text = " ".join(subjects)
    if len(text) <= SHOWN_SUBJECT_CHARS:
        return text
    shown = text[:SHOWN_SUBJECT_CHARS].rsplit(" ", 1)[0]
    return f"{shown} ... and {len(subjects) - len(shown.split(' '))} more (split.json)"


def _report(summary: dict[str, Any], preset: str | None) -> None:
    """Print what a run did: skipped files, subjects, splits, counts, warnings."""
    skipped_files = summary["skipped_files"]
    if skipped_files:
        names = ", ".join(clean_text(Path(p).name) for p in skipped_files[:3])
        names += ", ..." if len(skipped_files) > 3 else ""
        print(f"skipped {len(skipped_files)} file(s) by --include / --exclude: {names}")
    if summary["skipped_acquisitions"]:
        left_out = ", ".join(f"{n} {acq}" for acq, n in sorted(summary["skipped_acquisitions"].items()))
        print(f"skipped {sum(summary['skipped_acquisitions'].values())} fastMRI file(s) by --acquisition: {left_out}")
    if summary["fastmri_references"] and summary.get("coils"):
        n_files = sum(summary["fastmri_references"].values())
        print(f"fastMRI: the kspace of {n_files} multi-coil file(s) made into {summary['coils']} coil images each; "
              "targets are their root sum of squares")
    elif summary["fastmri_references"] and summary["image"] == "complex":
        n_files = sum(summary["fastmri_references"].values())
        print(f"fastMRI: the kspace of {n_files} single-coil file(s) made into complex images (ifft2c, "
              f"complex_center_crop to {summary['size']} x {summary['size']}, each volume scaled to max |x| = 1, "
              "its 'scale' attribute); their magnitude is scale * reconstruction_esc")
    elif summary["fastmri_references"]:
        used = ", ".join(f"{name} of {n} file(s)" for name, n in sorted(summary["fastmri_references"].items()))
        print(f"fastMRI: {used} taken as the fully sampled images. {FASTMRI_NOTE}")
    print(summary["subjects_found"])
    if len(summary["per_file_subjects"]) > 1:
        print(f"warning: {len(summary['per_file_subjects'])} files sit directly in their --input folder with no "
              "subject token (patientNNN, sub-NN, ...), so each is taken as its own subject; if some belong to "
              "one subject, give --subject-regex, --val-subjects or --split-file", file=sys.stderr)
    if summary["split"] == "slice blocks":
        print(f"only one subject: split by contiguous slice blocks with {BLOCK_GAP}-slice gaps, not by subject")
    for split in SPLITS:
        subjects = summary[f"{split}_subjects"]
        if not subjects:
            continue
        print(f"{split} subjects ({len(subjects)}): {_shorten(subjects)}")
    duplicates = summary["duplicates"]
    if any(duplicates.values()):
        hint = "" if preset else " (ACDC: the _frameNN files repeat _4d cine frames; --preset acdc takes ED/ES only)"
        print(f"warning: {duplicates['train']} training, {duplicates['validation']} validation and "
              f"{duplicates['test']} test slices are exact copies of other slices of their split{hint}",
              file=sys.stderr)
    size = summary["size"]
    outside = f", {summary['slices_outside_range']} outside --slice-range" if summary["slices_outside_range"] else ""
    counts = "; ".join(f"{split}: {len(summary[f'{split}_volumes'])} volumes, {summary[f'{split}_slices']} slices"
                       for split in SPLITS if summary[f"{split}_volumes"])
    if "coils" in summary:
        compressed = f", compressed to {summary['coil_compress']} virtual coils" if "coil_compress" in summary else ""
        how = ("the simulation's own maps, a control" if summary["maps"] == TRUE_MAPS else
               "estimated per slice from the undersampled k-space's ACS lines")
        print(f"multi-coil: {summary['coils']} coils ({summary['coil_source']}{compressed}), maps: {summary['maps']} "
              f"({how})")
    print(f"{counts} (split by {summary['split']}; {summary['skipped_slices']} near-empty slices skipped{outside}; leak "
          f"check passed); {size}x{size} {summary['image']} images (k-space: {summary['kspace']}), "
          f"{summary['mask_kind']} masks, acc {' '.join(summary['accs'])} -> "
          f"{summary['out']} (split.json) in {summary['elapsed_s']:.1f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = CliParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_flags in (_add_input_flags, _add_image_flags, _add_split_flags, _add_slice_flags, _add_output_flags):
        add_flags(parser)
    args = parser.parse_args(argv)
    summary = prepare(**{option.name: getattr(args, option.name) for option in fields(Options)})
    _report(summary, args.preset)
    return summary


if __name__ == "__main__":
    run_cli(main)
