"""data/layout.py writes the original HDF5 layout without nibabel, and data/dataset.py reads it back."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT, phantom
from data.dataset import SliceDataset
from data.fft import fft2, zero_filled
from data.layout import undersample, write_volume
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
    torch.testing.assert_close(item["target"][0], target)
    torch.testing.assert_close(item["kspace_under"][0], (fft2(target) * torch.from_numpy(mask)).to(torch.complex64),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(item["zero_filled"][0], zero_filled(item["kspace_under"][0]), rtol=1e-5, atol=1e-6)


def test_importing_the_writer_needs_no_nibabel():
    code = ("import sys; sys.modules['nibabel'] = None; sys.modules['nilearn'] = None; "
            "import data.layout, models.speed")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1000:]
