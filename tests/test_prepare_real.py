"""data/prepare.py on trees shaped like the real ACDC and MRBrainS releases (tiny arrays, real names), and the
real-checkpoint path into train_student_kd.py: no patient or identical slice in both splits, no label map
used as an image, presets, split.json, name clashes, leftovers and one-line errors."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

import train_student_kd
import train_teacher
from data.prepare import main, prepare
from data.staging import STAGE_PREFIX
from data.subjects import BLOCK_GAP
from scripts import import_checkpoint as import_script
from tests.conftest import ROOT, make_dataset, phantom
from tests.test_checkpoint_import import reference, save_public
from utils import UserError, run_cli

SIZE, SLICES, FRAMES, ED, ES = 32, 6, 5, 1, 4
PATIENTS = range(1, 7)
SUBJECTS_MRB = (1, 2, 3, 4, 5)


def write_nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def scan(seed: int, size: int = SIZE, n_slices: int = SLICES) -> np.ndarray:
    """(size, size, n_slices) int16 in scanner-like units (background 20, up to 820), as the releases store."""
    return np.round(20 + 800 * phantom(size, n_slices, seed)).astype(np.int16)


def labels_of(image: np.ndarray, classes: int) -> np.ndarray:
    """A segmentation-like uint8 map (0 .. classes-1) of an image, same shape."""
    return np.digitize(image, np.quantile(image, np.linspace(0, 1, classes + 1)[1:-1])).astype(np.uint8)


def acdc_tree(root: Path, patients=PATIENTS) -> Path:
    """ACDC's layout: patientNNN/{patientNNN_4d, _frameNN (ED, ES), _frameNN_gt}.nii.gz and Info.cfg.

    The ED / ES files repeat cine frames ED-1 and ES-1 exactly, as in the release."""
    for p in patients:
        pid = f"patient{p:03d}"
        cine = np.stack([scan(100 * p + t) for t in range(FRAMES)], axis=-1)
        write_nifti(root / pid / f"{pid}_4d.nii.gz", cine)
        for frame in (ED, ES):
            write_nifti(root / pid / f"{pid}_frame{frame:02d}.nii.gz", cine[..., frame - 1])
            write_nifti(root / pid / f"{pid}_frame{frame:02d}_gt.nii.gz", labels_of(cine[..., frame - 1], 4))
        (root / pid / "Info.cfg").write_text(f"ED: {ED}\nES: {ES}\nGroup: NOR\nNbFrame: {FRAMES}\n")
    return root


def mrbrains_tree(root: Path, size: int = 24, n_slices: int = 4) -> Path:
    """MRBrainS 2013's layout: TrainingData/N/{T1, T1_IR, T2_FLAIR, LabelsForTraining, LabelsForTesting}.nii."""
    for n in SUBJECTS_MRB:
        folder = root / "TrainingData" / str(n)
        for k, name in enumerate(("T1", "T1_IR", "T2_FLAIR")):
            write_nifti(folder / f"{name}.nii", scan(10 * n + k, size, n_slices))
        t1 = scan(10 * n, size, n_slices)
        write_nifti(folder / "LabelsForTraining.nii", labels_of(t1, 9))
        write_nifti(folder / "LabelsForTesting.nii", labels_of(t1, 4))
    return root / "TrainingData"


@pytest.fixture(scope="module")
def acdc(tmp_path_factory) -> Path:
    return acdc_tree(tmp_path_factory.mktemp("acdc") / "ACDC" / "database" / "training")


def read_out(out: Path, acc: str = "4x") -> dict[str, dict[str, np.ndarray]]:
    """split -> volume name -> volfs (H, W, S) float32, read from the files."""
    result = {}
    for split in ("train", "validation"):
        result[split] = {}
        for path in sorted((out / split / f"acc_{acc}").glob("*.h5")):
            with h5py.File(path, "r") as f:
                result[split][path.stem] = f["volfs"][()]
    return result


def slice_digests(volumes) -> list[bytes]:
    """SHA-1 of each (H, W) slice of each (H, W, S) volume: an implementation apart from the tool's hashes."""
    return [hashlib.sha1(np.ascontiguousarray(v[:, :, s]).tobytes()).digest() for v in volumes
            for s in range(v.shape[2])]


def assert_no_leak(out: Path) -> dict:
    """No identical slice, no subject in both splits; returns split.json after checking it against the files."""
    data = read_out(out)
    train, val = (slice_digests(data[split].values()) for split in ("train", "validation"))
    assert train and val and not set(train) & set(val)
    split_json = json.loads((out / "split.json").read_text())
    for split in ("train", "validation"):
        listed = {name for entry in split_json["subjects"].values() for name in entry["files"][split]}
        assert listed == {f"{name}.h5" for name in data[split]}
        for entry in split_json["subjects"].values():
            assert entry["slices"][split] == sum(data[split][Path(n).stem].shape[2] for n in entry["files"][split])
    if split_json["split_by"] == "subjects":
        for subject, entry in split_json["subjects"].items():
            other = "validation" if entry["split"] == "train" else "train"
            assert entry["slices"][entry["split"]] > 0 and not entry["files"][other], subject
        assert not set(split_json["train_subjects"]) & set(split_json["validation_subjects"])
    return split_json


def scaled(volume: np.ndarray) -> np.ndarray:
    volume = volume.astype(np.float64)
    return ((volume - volume.min()) / (volume.max() - volume.min())).astype(np.float32)


# --------------------------------------------------------------------------- ACDC

def test_acdc_preset_takes_ed_es_only_and_splits_by_patient(acdc: Path, tmp_path: Path):
    out = tmp_path / "acdc"
    # 32 x 32 volumes padded to the preset's 150 x 150 cover only ~3 % of it: keep every slice with signal.
    summary = prepare(test_fraction=0, preset="acdc", inputs=[acdc], out=out, accs=["4x"], min_foreground=0.0)
    assert summary["size"] == 150 and summary["split"] == "subjects"
    patients = [f"patient{p:03d}" for p in PATIENTS]
    assert sorted(summary["train_subjects"] + summary["validation_subjects"]) == patients
    assert len(summary["validation_subjects"]) == 1  # round(0.2 * 6)
    data = read_out(out)
    names = set(data["train"]) | set(data["validation"])
    assert names == {f"{pid}_frame{f:02d}" for pid in patients for f in (ED, ES)}  # no _4d, no _gt
    assert summary["train_slices"] + summary["validation_slices"] == len(patients) * 2 * SLICES
    assert summary["duplicates"] == {"train": 0, "validation": 0, "test": 0}
    split_json = assert_no_leak(out)
    assert split_json["subjects"]["patient003"]["sources"] == [
        str(acdc / "patient003" / f"patient003_frame{f:02d}.nii.gz") for f in (ED, ES)]
    # The ED file, centre-padded to 150 x 150, is what was written.
    split = split_json["subjects"]["patient001"]["split"]
    ed = scaled(nib.load(str(acdc / "patient001" / "patient001_frame01.nii.gz")).get_fdata())
    pad = (150 - SIZE) // 2
    np.testing.assert_allclose(data[split]["patient001_frame01"][pad:pad + SIZE, pad:pad + SIZE], ed, atol=1e-6)
    # No written slice is a label map's.
    labels = [scaled(nib.load(str(p)).get_fdata()) for p in acdc.glob("*/*_gt.nii.gz")]
    written = {s for split in data.values() for s in slice_digests(v[pad:pad + SIZE, pad:pad + SIZE]
                                                                    for v in split.values())}
    assert not written & set(slice_digests(labels))


def test_readme_default_on_acdc_warns_that_frames_repeat_the_cine(acdc: Path, tmp_path: Path, capsys):
    summary = main(["--test-fraction", "0", "--input", str(acdc), "--out", str(tmp_path / "all"), "--size", str(SIZE), "--acc", "4x"])
    err = capsys.readouterr().err
    # Every cine frame and the ED/ES files: each ED/ES slice repeats a cine slice of its own split.
    n_val = len(summary["validation_subjects"])
    assert summary["duplicates"] == {"train": (6 - n_val) * 2 * SLICES, "validation": n_val * 2 * SLICES, "test": 0}
    assert "exact copies" in err and "--preset acdc" in err
    assert summary["train_slices"] + summary["validation_slices"] == 6 * (FRAMES + 2) * SLICES
    assert_no_leak(tmp_path / "all")


def test_single_patient_folder_is_split_by_slice_blocks(acdc: Path, tmp_path: Path, capsys):
    out = tmp_path / "one"
    summary = main(["--test-fraction", "0", "--input", str(acdc / "patient002"), "--out", str(out), "--size", str(SIZE), "--acc", "4x"])
    assert "only one subject" in capsys.readouterr().out
    assert summary["split"] == "slice blocks"
    assert summary["train_subjects"] == summary["validation_subjects"] == ["patient002"]
    split_json = assert_no_leak(out)
    assert split_json["split_by"] == "slice blocks"
    for split in ("train", "validation"):  # the cine frames and the ED/ES files, split alike
        assert len(split_json["subjects"]["patient002"]["files"][split]) == FRAMES + 2
    positions = {}
    for split in ("train", "validation"):
        for path in (out / split / "acc_4x").glob("*.h5"):
            with h5py.File(path, "r") as f:
                positions.setdefault(split, set()).update(f.attrs["source_slices"].tolist())
    # 6 positions: ceil(0.2 * 6) = 2 on top for validation, a 2-position gap, 2 below for training.
    assert positions == {"train": {0, 1}, "validation": {4, 5}} and max(positions["train"]) + BLOCK_GAP < 4


def _flat_copy(tree: Path, dest: Path) -> Path:
    for path in tree.rglob("*.nii.gz"):
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.name)
    return dest


def _annex_copy(tree: Path, dest: Path) -> Path:
    """git-annex / DataLad: every file a symlink into an object store, one folder per object."""
    for path in sorted(tree.rglob("*.nii.gz")):
        key = hashlib.md5(path.read_bytes()).hexdigest()
        obj = dest / ".git" / "annex" / "objects" / key[:2] / key / f"MD5E-{key}.nii.gz"
        obj.parent.mkdir(parents=True)
        shutil.copy(path, obj)
        link = dest / path.relative_to(tree)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(obj, link.parent))
    return dest


def _linked_folders(tree: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for folder in sorted(tree.iterdir()):
        (dest / folder.name).symlink_to(folder, target_is_directory=True)
    return dest


def test_flat_and_symlinked_copies_split_like_the_original(acdc: Path, tmp_path: Path):
    kwargs = dict(size=SIZE, accs=["4x"], seed=7)
    original = prepare(test_fraction=0, inputs=[acdc], out=tmp_path / "original", **kwargs)
    expected = {split: original[f"{split}_volumes"] for split in ("train", "validation")}
    for make in (_flat_copy, _annex_copy, _linked_folders):
        copy = make(acdc, tmp_path / make.__name__ / "in")
        out = tmp_path / make.__name__ / "out"
        summary = prepare(test_fraction=0, inputs=[copy], out=out, **kwargs)
        assert {split: summary[f"{split}_volumes"] for split in expected} == expected, make.__name__
        assert summary["subjects_found"].startswith("6 subject(s): 6 by the subject token")
        assert_no_leak(out)


# --------------------------------------------------------------------------- label maps, presets, names

def test_label_maps_are_refused_even_when_named(acdc: Path, tmp_path: Path, capsys):
    named = sorted(str(p) for p in acdc.glob("patient00[12]/*_frame*.nii.gz"))  # the shell glob: _gt included
    assert sum("_gt" in p for p in named) == 4
    summary = main(["--test-fraction", "0", "--input", *named, "--out", str(tmp_path / "named"), "--size", str(SIZE), "--acc", "4x"])
    assert "skipped 4 file(s) by --include / --exclude" in capsys.readouterr().out
    assert sorted(summary["train_volumes"] + summary["validation_volumes"]) == [
        "patient001_frame01", "patient001_frame04", "patient002_frame01", "patient002_frame04"]

    # A label map under a name no pattern knows is refused by its few values.
    disguised = tmp_path / "disguised" / "patient009" / "patient009_anatomy.nii.gz"
    write_nifti(disguised, labels_of(scan(9), 4))
    with pytest.raises(UserError, match=r"patient009_anatomy.nii.gz looks like a label map.*4 distinct value\(s\) "
                                        r"\(0, 1, 2, 3\).*--allow-label-like"):
        prepare(test_fraction=0, inputs=[disguised, acdc / "patient001" / "patient001_frame01.nii.gz"], out=tmp_path / "x",
                size=SIZE, accs=["4x"])
    assert not (tmp_path / "x").exists()


def test_mrbrains_folder_without_and_with_preset(tmp_path: Path):
    training = mrbrains_tree(tmp_path / "MRBrainS")
    plain = prepare(test_fraction=0, inputs=[training], out=tmp_path / "plain", size=SIZE, accs=["4x"])
    names = plain["train_volumes"] + plain["validation_volumes"]
    assert sorted(names) == sorted(f"{n}_{seq}" for n in SUBJECTS_MRB for seq in ("T1", "T1_IR", "T2_FLAIR"))
    assert len(plain["skipped_files"]) == 10 and all("Labels" in Path(p).name for p in plain["skipped_files"])

    out = tmp_path / "mrbrains"
    summary = prepare(test_fraction=0, preset="mrbrains", inputs=[training], out=out, accs=["4x"], min_foreground=0.0)
    assert summary["size"] == 240 and summary["subjects_found"].startswith("5 subject(s): 5 by the folder under")
    assert sorted(summary["train_volumes"] + summary["validation_volumes"]) == [f"{n}_T1" for n in SUBJECTS_MRB]
    assert len(summary["train_subjects"]) == 4 and len(summary["validation_subjects"]) == 1
    validation = summary["validation_subjects"][0]
    assert read_out(out)["validation"][f"{validation}_T1"].shape == (240, 240, 4)
    assert_no_leak(out)
    # A flag overrides the preset; --subject-regex names other layouts' subjects.
    again = prepare(test_fraction=0, preset="mrbrains", inputs=[training.parent], out=tmp_path / "regex", size=SIZE, accs=["4x"],
                    subject_regex=r"TrainingData/(\d+)/")
    assert again["size"] == SIZE and again["validation_subjects"] == [validation]
    with pytest.raises(UserError, match=r"none of its 25 NIfTI files passes --include \*_frame"):
        prepare(test_fraction=0, preset="acdc", inputs=[training], out=tmp_path / "wrong")


def test_a_volume_name_clash_is_an_error_not_an_overwrite(tmp_path: Path):
    folder = tmp_path / "scans"
    write_nifti(folder / "scan.nii.gz", np.stack([scan(1), scan(2)], axis=-1))  # frames scan_t0, scan_t1
    write_nifti(folder / "scan_t0.nii", scan(3))
    with pytest.raises(UserError, match=r"scan.nii.gz and .*scan_t0.nii would both be written as volume scan_t0"):
        prepare(test_fraction=0, inputs=[folder], out=tmp_path / "out", size=SIZE, accs=["4x"])
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- explicit splits

def test_val_subjects_and_split_file_fix_the_split(acdc: Path, tmp_path: Path, capsys):
    first = prepare(test_fraction=0, preset="acdc", inputs=[acdc], out=tmp_path / "a", size=SIZE, accs=["4x"],
                    val_subjects=["patient002", "patient005"])
    assert first["validation_subjects"] == ["patient002", "patient005"]
    again = prepare(test_fraction=0, preset="acdc", inputs=[acdc], out=tmp_path / "b", size=SIZE, accs=["4x"], seed=1,
                    split_file=tmp_path / "a" / "split.json")
    assert {k: again[k] for k in ("train_volumes", "validation_volumes")} == \
        {k: first[k] for k in ("train_volumes", "validation_volumes")}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"train": [f"patient{p:03d}" for p in (1, 2, 3, 4)],
                                 "validation": ["patient005", "patient006", "patient099"]}))
    third = prepare(test_fraction=0, preset="acdc", inputs=[acdc], out=tmp_path / "c", size=SIZE, accs=["4x"], split_file=plain)
    assert third["validation_subjects"] == ["patient005", "patient006"]
    assert "lists 1 subject(s) not in --input (e.g. patient099)" in capsys.readouterr().err
    with pytest.raises(UserError, match="--val-subjects patient042 is not among the 6 subjects found"):
        prepare(test_fraction=0, inputs=[acdc], out=tmp_path / "d", val_subjects=["patient042"])
    plain.write_text(json.dumps({"train": ["patient001"], "validation": ["patient002"]}))
    with pytest.raises(UserError, match="does not list subject patient003"):
        prepare(test_fraction=0, inputs=[acdc], out=tmp_path / "d", split_file=plain)


# --------------------------------------------------------------------------- leftovers and errors

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_folders_of_killed_runs_are_cleaned(tmp_path: Path):
    source = write_nifti(tmp_path / "patient001" / "patient001.nii.gz", scan(1))
    out = tmp_path / "out"
    for stale in (f"{STAGE_PREFIX}{_dead_pid()}-abc123", f"{STAGE_PREFIX}x7q2_9k"):  # today's and older names
        (out / stale / "train" / "acc_4x").mkdir(parents=True)
        (out / stale / "train" / "acc_4x" / "half.h5").write_bytes(b"partial")
    prepare(test_fraction=0, inputs=[source], out=out, size=SIZE, accs=["4x"])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mask_4x.npy", "split.json", "train",
                                                      "validation"]


@pytest.mark.slow
def test_a_sigkilled_run_does_not_block_the_rerun(tmp_path: Path):
    """A real run killed while it writes; the same command then succeeds."""
    for n in range(12):
        write_nifti(tmp_path / "in" / f"patient{n:03d}" / "t1.nii.gz", scan(n, 96, 48))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "in"), "--out", str(out), "--acc", "4x", "5x"]
    process = subprocess.Popen([sys.executable, "-m", "data.prepare", "--test-fraction", "0", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(f"{STAGE_PREFIX}*/train/acc_4x/*.h5")) and time.monotonic() < deadline:
            assert process.poll() is None, "finished before it could be killed"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert list(out.glob(f"{STAGE_PREFIX}*"))
    summary = main(["--test-fraction", "0", *argv])
    assert summary["train_slices"] + summary["validation_slices"] == 12 * 48
    assert not list(out.glob(f"{STAGE_PREFIX}*"))


def _one_line_error(entry, argv, capsys) -> str:
    """The one ``error:`` line ``entry`` ends with (after any warnings), exit code 2, no traceback."""
    with pytest.raises(SystemExit) as info:
        run_cli(entry, argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert info.value.code == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert all(line.startswith("warning: ") for line in lines[:-1]), err
    return lines[-1]


def test_unusable_output_paths_are_one_line_errors(acdc: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)
    afile = tmp_path / "afile"
    afile.write_text("a file")
    source = str(acdc / "patient001" / "patient001_frame01.nii.gz")
    for out, reason in ((afile / "sub", "Not a directory"), (Path("/proc/sftkd/out"), "No such file")):
        err = _one_line_error(main, ["--input", source, "--out", str(out), "--size", str(SIZE)], capsys)
        assert f"--out-dir {out} cannot be created" in err and reason in err
    assert afile.read_text() == "a file"

    src = save_public(reference("student", seed=0)[0], tmp_path / "public.pt")
    err = _one_line_error(import_script.main, ["--input", str(src), "--output", str(afile / "x.pt")], capsys)
    assert err == f"error: --output {afile / 'x.pt'}: {afile} is a file, not a folder; choose another --output"
    err = _one_line_error(import_script.main, ["--input", str(src), "--output", "/proc/sftkd/x.pt"], capsys)
    assert err.startswith("error: No such file or directory: /proc/sftkd")
    data = make_dataset(tmp_path / "data")
    err = _one_line_error(train_teacher.main, ["--data-root", str(data), "--exp-dir", str(afile / "run"),
                                               "--epochs", "1"], capsys)
    assert str(afile) in err


def test_min_foreground_zero_still_drops_all_zero_slices(tmp_path: Path):
    volume = scan(4).astype(np.float64)
    volume[:, :, [0, 5]] = volume.min()  # blank slices: zero after min-max scaling
    source = write_nifti(tmp_path / "patient004" / "patient004.nii.gz", volume)
    summary = prepare(test_fraction=0, inputs=[source], out=tmp_path / "out", size=SIZE, accs=["4x"], min_foreground=0.0,
                      val_fraction=0.25)
    assert summary["skipped_slices"] == 2
    written = [v for split in read_out(tmp_path / "out").values() for v in split.values()]
    assert all(v[:, :, s].max() > 0 for v in written for s in range(v.shape[2]))


def test_training_start_up_refuses_a_data_root_with_a_leak(acdc: Path, tmp_path: Path):
    out = tmp_path / "data"
    prepare(test_fraction=0, preset="acdc", inputs=[acdc], out=out, size=SIZE, accs=["4x"])
    moved = next((out / "validation" / "acc_4x").glob("*.h5"))
    shutil.copy(moved, out / "train" / "acc_4x" / moved.name)  # a hand-made mix-up
    with pytest.raises(UserError, match=f"leak in {out}: subject {moved.stem.split('_')[0]} is in both train and validation"):
        train_teacher.main(["--data-root", str(out), "--exp-dir", str(tmp_path / "run"), "--epochs", "1"])


# --------------------------------------------------------------------------- imported checkpoints

def test_kd_student_takes_its_architecture_from_an_imported_sft_checkpoint(tmp_path: Path, capsys):
    public = save_public(reference("sft", seed=0)[0], tmp_path / "public_sft.pt")
    imported = tmp_path / "sft.pt"
    import_script.main(["--input", str(public), "--output", str(imported)])
    base = ["--data-root", "unused", "--exp-dir", "unused", "--teacher-checkpoint", str(imported),
            "--init-from-sft", str(imported)]
    parser = train_student_kd.build_parser()
    step = train_student_kd.build_step(train_student_kd.kd_run(parser.parse_args(base)))
    assert step.model.config.ref_padding == 5 and step.teacher.config.ref_padding == 5
    sft = torch.load(imported, weights_only=True)["model"]
    for key, value in step.model.state_dict().items():
        assert key.startswith("cascades.0.") or torch.equal(value, sft[f"student.{key}"]), key

    capsys.readouterr()
    override = train_student_kd.build_step(train_student_kd.kd_run(parser.parse_args([*base, "--ref-padding", "0"])))
    assert override.model.config.ref_padding == 0
    assert "--ref-padding 0 overrides the 5" in capsys.readouterr().err
    with pytest.raises(UserError, match="--residual conflicts with --init-from-sft"):
        train_student_kd.build_step(train_student_kd.kd_run(parser.parse_args([*base, "--residual"])))
    # Std-KD: no checkpoint to follow.
    plain = train_student_kd.build_step(train_student_kd.kd_run(parser.parse_args(base[:6])))
    assert plain.model.config.ref_padding == 0
