"""The "CS (L1-wavelet)" row of evaluate.py's tables: its lambda chosen on the validation split, then every scored
slice reconstructed by models/evaluation/cs.py (sigpy's L1WaveletRecon), single- and multi-coil alike (a single
coil is N = 1 with maps all ones)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.dataset import Sample, SliceDataset
from models.evaluation.cs import CS_ROW, LAMBDA_CANDIDATES, choose_lambda, l1_wavelet_recon

# Candidate lambdas, in the units of images scaled to about [0, 1] (data/prepare.py scales every volume so): the
# decades of models/evaluation/cs.py's half-decade list, 1e-5 to 1e-2; decades rank them at a quarter of the cost.
CS_LAMBDAS = LAMBDA_CANDIDATES[::2]
CS_ITERATIONS = 100
# Validation slices the lambda is chosen on, evenly spread over the split: enough to rank three candidates whose
# PSNRs differ by decibels, few enough that the row costs seconds at 320 x 320.
CS_LAMBDA_SLICES = 4


@dataclass
class CSRow:
    """The CS baseline of one evaluation: ``lam`` and ``iterations`` of :func:`l1_wavelet_recon`, and how lambda
    was chosen (``choice``: summary.json's ``cs`` entry)."""

    lam: float
    iterations: int = CS_ITERATIONS
    choice: dict = field(default_factory=dict)

    def __call__(self, batch: Sample) -> np.ndarray:
        """The magnitude of the CS reconstruction of every slice of a batch: (B, 1, H, W) float32."""
        return np.stack([np.abs(l1_wavelet_recon(*slice_problem(batch, i), self.lam, self.iterations))[None]
                         for i in range(len(batch.kspace_under))]).astype(np.float32)


def slice_problem(batch: Sample, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kspace_under (N, H, W) complex64, mask (H, W) float32, maps (N, H, W) complex64)`` of slice ``index`` of a
    batch (or of one item, index 0 of a batch of one); single-coil data get N = 1 and maps all ones."""
    kspace = batch.kspace_under[index].numpy()
    maps = batch.coil_maps
    maps = np.ones_like(kspace) if maps is None else maps[index].numpy()
    mask = batch.mask[index if batch.mask.shape[0] > 1 else 0, 0].numpy()
    return kspace, mask, maps


def choose_cs_row(data_root: Path, acc: str, mask_path: str | None, scored_split: str,
                  candidates=CS_LAMBDAS, iterations: int = CS_ITERATIONS, n_slices: int = CS_LAMBDA_SLICES,
                  lam: float | None = None) -> CSRow:
    """The CS row with lambda chosen by mean PSNR over ``n_slices`` slices of the validation split (evenly spread);
    ``lam`` given: that lambda, chosen by the user. When the scored split is the validation split itself (a data
    root without test/), lambda is chosen on the slices it is scored on, and a note says so."""
    if lam is not None:
        return CSRow(lam, iterations, {"lambda": lam, "chosen_on": "--cs-lambda", "iterations": iterations})
    validation = SliceDataset(data_root, "validation", acc, mask_path)
    picks = np.unique(np.linspace(0, len(validation) - 1, min(n_slices, len(validation))).round().astype(int))
    problems = []
    for index in picks:
        item = validation[int(index)]
        batch = Sample(*(value[None] if torch.is_tensor(value) else [value] for value in item))
        batch = batch._replace(slice=torch.tensor([item.slice]))
        problems.append((validation.scoring_targets(batch)[0], *slice_problem(batch, 0)))
    best, table = choose_lambda(problems, candidates, iterations)
    if scored_split == "validation":
        print("note: the CS (L1-wavelet) lambda is chosen on validation slices, the split being scored (no test/ "
              "split)", file=sys.stderr)
    return CSRow(best, iterations, {"lambda": best, "chosen_on": f"validation ({len(picks)} slices, mean PSNR)",
                                    "candidates": table, "iterations": iterations})


__all__ = ["CS_ROW", "CSRow", "choose_cs_row", "slice_problem"]
