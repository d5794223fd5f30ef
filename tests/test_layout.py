"""data/layout.py writes the original HDF5 layout without nibabel, and data/dataset.py reads it back."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import ROOT, phantom
from data.dataset import SliceDataset
from data.fft import fft2, zero_filled
from data.layout import SPLITS, acc_folder, keys_for, mask_name, undersample, write_volume
from data.masks import cartesian_row_mask


def test_written_volume_reads_back_with_the_fft_relations(tmp_path):
    volfs = phantom(16, 3, seed=0).astype(np.float32)
    mask = cartesian_row_mask((16, 16), "4x", seed=0)
    np.save(tmp_path / "mask_4x.npy", mask)
    folder = tmp_path / "train" / "acc_4x"
    folder.mkdir(parents=True)
    kspace, zf = undersample(volfs, {"4x": mask})["4x"]
    write_volume(folder / "v.h5", volfs, kspace, zf, "4x", {"source_file": "synthetic"})
    dataset = SliceDataset(tmp_path, "train", "4x")
    assert len(dataset) == 3
    item = dataset[1]
    target = torch.from_numpy(volfs[:, :, 1])
    torch.testing.assert_close(item.target[0], target)
    torch.testing.assert_close(item.kspace_under[0], (fft2(target) * torch.from_numpy(mask)).to(torch.complex64),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(item.zero_filled[0], zero_filled(item.kspace_under[0]), rtol=1e-5, atol=1e-6)


def test_importing_the_writer_needs_no_nibabel():
    code = ("import sys; sys.modules['nibabel'] = None; sys.modules['nilearn'] = None; "
            "import data.layout, models.training.speed")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1000:]


def test_the_layout_names_are_the_original_ones():
    # The public KD-MRI / SFT-KD-Recon data and code use exactly these; changing one would orphan their files.
    assert SPLITS == ("train", "validation", "test")
    assert keys_for("4x") == ("volfs", "img_volus_4x", "kspace_volus_4x")
    assert acc_folder(Path("root"), "validation", "5x") == Path("root/validation/acc_5x")
    assert mask_name("6.5x") == "mask_6.5x.npy"


def spelled_layout(path: Path) -> list[str]:
    """Where a module builds a layout name itself: an f-string shaped ``acc_{}``, ``mask_{}.npy``,
    ``img_volus_{}`` or ``kspace_volus_{}``, or the literal ``"volfs"`` ({} marks a formatted value)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            text = "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
            if any(p in text for p in ("acc_{}", "mask_{}.npy", "img_volus_{}", "kspace_volus_{}")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {text}")
        elif isinstance(node, ast.Constant) and node.value == "volfs":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} 'volfs'")
    return found


def test_only_data_layout_spells_the_layout():
    modules = sorted(ROOT.glob("*.py")) + sorted(f for package in ("data", "models", "scripts")
                                              for f in (ROOT / package).glob("*.py"))
    owner = ROOT / "data" / "layout.py"
    assert spelled_layout(owner)  # the check sees the owner's own spellings
    hits = [hit for path in modules if path != owner for hit in spelled_layout(path)]
    # data/public_masks/ is the repository's copy of the public code's mask files, named as there, not a data
    # root; data/masks.py stays free of torch (which data/layout.py needs) for scripts/report.py.
    assert [hit for hit in hits if not hit.startswith("data/masks.py:")] == []
