"""No file or flag can exhaust memory (issue 40, case 4, F2, F3): a checkpoint whose storages hold more bytes
than the tensors viewing them (a small deflated zip that would allocate a large zero storage) is refused before
any tensor is materialised, by every loader; an architecture or image size the machine's memory cannot hold is
refused with one line naming the estimate."""
from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import train_teacher
from data.prepare import main as prepare_main
from models.checkpoints.format import load_model, model_payload
from models.checkpoints.io import load_checkpoint, load_public, save_checkpoint
from models.nets.dccnn import DCCNN, STUDENT
from tests.conftest import ROOT, cli_error, make_dataset
from utils import UserError

STORAGE = 64 << 20  # large enough to tell in peak memory, small enough for a test


def inflating(path: Path, storage_bytes: int = STORAGE, deflate: bool = True, key_index: int = 0) -> Path:
    """A student checkpoint whose one weight is a view into a zero storage of ``storage_bytes``, its zip
    re-packed deflated (the issue's case 4: 1.5 MB on disk, 1 GiB when loaded)."""
    payload = model_payload(DCCNN(STUDENT), "student")
    key = list(payload["model"])[key_index]
    weight = payload["model"][key]
    storage = torch.zeros(storage_bytes // 4)
    storage[: weight.numel()] = weight.flatten()
    payload["model"][key] = storage[: weight.numel()].view(weight.shape)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    del storage
    if not deflate:
        path.write_bytes(buffer.getvalue())
        return path
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    return path


@pytest.mark.parametrize("deflate", [True, False])
def test_a_storage_larger_than_its_views_is_refused(tmp_path, deflate):
    path = inflating(tmp_path / "best_model.pt", deflate=deflate)
    assert path.stat().st_size < (STORAGE // 8 if deflate else 2 * STORAGE)
    for load in (load_checkpoint, load_public, load_model):
        with pytest.raises(UserError, match=r"storage of 64\.0 MiB that its tensors view only 1\.1 KiB of"):
            load(path)


def test_a_pickle_that_inflates_to_a_large_object_is_refused(tmp_path):
    # A deflated data.pkl holding a long run of zeros: torch reads the pickle whole before unpickling it.
    buffer = io.BytesIO()
    torch.save(model_payload(DCCNN(STUDENT), "student"), buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    path = tmp_path / "big_pickle.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            body = source.read(info.filename)
            out.writestr(info.filename, body + b"\0" * (80 << 20) if info.filename.endswith("data.pkl") else body)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UserError, match=r"inflates to 80\.\d MiB of pickled objects"):
        load_checkpoint(path)


def test_a_genuine_checkpoint_loads(tmp_path):
    path = tmp_path / "ok.pt"
    save_checkpoint(model_payload(DCCNN(STUDENT), "student"), path)
    model, _ = load_model(path)
    assert sum(p.numel() for p in model.parameters()) == 49_285


def test_evaluate_refuses_the_inflating_checkpoint_without_allocating_it(tmp_path):
    # The measure: evaluate.py's peak memory. A subprocess, so that its peak is its own.
    data = make_dataset(tmp_path / "data", size=16, train_volumes=1, slices=2)
    (tmp_path / "run").mkdir()
    path = inflating(tmp_path / "run" / "best_model.pt", storage_bytes=512 << 20)
    # VmHWM, the process's own peak (ru_maxrss would carry this process's peak across fork and exec).
    probe = ("import re, sys, evaluate, utils\n"
             "try:\n    utils.run_cli(evaluate.main, sys.argv[1:])\n"
             "finally:\n    print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1], file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe, "--checkpoints", str(path), "--data-root", str(data),
                           "--acc", "4x", "--out-dir", str(tmp_path / "eval"), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    *lines, peak_kib = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "storage of 512.0 MiB" in lines[0]
    # torch, numpy and the data take ~0.35 GB; the storage alone would add 0.5 GiB.
    assert int(peak_kib) < 450 * 1024, peak_kib


def test_an_absurd_width_is_refused_naming_the_estimate(tmp_path, capsys):
    # Issue F2: a 42-line allocator traceback.
    data = make_dataset(tmp_path / "data", size=16, train_volumes=1, slices=2)
    err = cli_error(train_teacher.main, ["--data-root", str(data), "--exp-dir", str(tmp_path / "exp"), "--width",
                                         "100000", "--epochs", "1", "--no-progress"], capsys)
    assert "--width 100000" in err and "GiB" in err and "memory" in err
    assert not (tmp_path / "exp" / "model.pt").exists()


def test_an_absurd_size_is_refused_naming_the_estimate(tmp_path, capsys):
    # Issue F3: prepare --demo --size 100000 --resize made a 37 GiB array.
    import nibabel as nib
    import numpy as np
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), str(scans / "a.nii.gz"))
    err = cli_error(prepare_main, ["--input", str(scans), "--out-dir", str(tmp_path / "out"), "--size", "100000",
                                   "--resize", "--acc", "4x"], capsys)
    assert "--size 100000" in err and "GiB" in err and "memory" in err
    assert not (tmp_path / "out").exists()
