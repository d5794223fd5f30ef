"""The evaluation loop: the zero-filled input and every network over one data set, volume by volume, scored by
the metric sets of models/evaluation/sets.py."""
from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import SliceDataset
from data.fft import magnitude
from models.checkpoints.format import load_reconstructor
from models.evaluation.cs import CS_ROW
from models.evaluation.cs_row import CSRow
from models.evaluation.recons import write_recon
from models.evaluation.sets import METRIC_SETS, score
from models.training.speed import MEMORY_FORMATS, auto_layout
from utils import UserError

ZF_NAME = "ZF"


def reconstructed_volumes(nets: Mapping[str, nn.Module], dataset: SliceDataset, device: torch.device,
                          batch_size: int, amp: bool, progress: bool, cs: CSRow | None = None
                          ) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """``(volume, target, outputs)`` for each volume of ``dataset``, in dataset order, once all its slices have
    been through every network: target (S, H, W) float32, outputs ``{name: (S, H, W) float32}`` with the
    zero-filled input first (as ``ZF``), then ``nets`` in order; slices stacked by slice index. Complex images
    are given as their magnitude (data/fft.py's :func:`~data.fft.magnitude`), which every metric scores; multi-coil
    targets are the RSS of the fully sampled coils (:meth:`~data.dataset.SliceDataset.scoring_targets`), the
    zero-filled input is E^H y. ``cs``: the "CS (L1-wavelet)" row (models/evaluation/cs_row.py) after ZF."""
    slices_per_volume = Counter(Path(dataset.files[file_idx]).stem for file_idx, _ in dataset.samples)
    targets: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    outputs: dict[str, dict[str, dict[int, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        inputs = batch.to(device).inputs
        batch_outputs = {ZF_NAME: magnitude(batch.zero_filled).numpy()}
        if cs is not None:
            batch_outputs[CS_ROW] = cs(batch)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            recons = {name: net(*inputs) for name, net in nets.items()}
        batch_outputs.update({name: magnitude(out.float()).cpu().numpy() for name, out in recons.items()})
        target_magnitude = dataset.scoring_targets(batch)
        for i, (fname, slice_idx) in enumerate(zip(batch.fname, batch.slice.tolist())):
            volume = Path(fname).stem
            targets[volume][slice_idx] = target_magnitude[i]
            for name, out in batch_outputs.items():
                outputs[volume][name][slice_idx] = out[i, 0]
            if len(targets[volume]) == slices_per_volume[volume]:
                order = sorted(targets[volume])
                yield (volume, np.stack([targets[volume][s] for s in order]),
                       {name: np.stack([done[s] for s in order]) for name, done in outputs[volume].items()})
                del targets[volume], outputs[volume]


def scored_slices(target: np.ndarray) -> list[int]:
    """The slices of a volume's target (S, H, W) that per-slice metrics score: those not all zero (PSNR is -inf,
    NMSE inf on an all-zero target)."""
    return [int(s) for s in np.flatnonzero(target.max(axis=(1, 2)) > 0)]


def evaluate_sets(models: Mapping[str, nn.Module | str | Path], dataset: SliceDataset,
                  metric_sets: Sequence[str] = ("paper",), device: str | torch.device = "cpu", batch_size: int = 4,
                  recons_dir: str | Path | None = None, progress: bool = True, amp: bool = False,
                  cs: CSRow | None = None) -> dict[str, list[dict]]:
    """The zero-filled input (``ZF``) and every model on ``dataset``, scored by each of ``metric_sets``.

    models: name -> a reconstructor (a registered network, models/nets/registry.py, called with
    ``(zero_filled, kspace_under, mask)``, each (B, C, H, W)) or a checkpoint path; it must take the data's
    image type (C = 1 magnitude, 2 complex).
    metric_sets: keys of :data:`METRIC_SETS`: ``"paper"`` (rows ``{"model", "volume", "slice", "PSNR", "SSIM",
    "NMSE", "HFEN-LoG", "VIF"}``, one per slice), ``"fastmri"`` (rows ``{"model", "volume", "NMSE", "PSNR",
    "SSIM"}``, one per volume), ``"public-volume"`` (rows ``{"model", "volume", "NMSE", "PSNR", "SSIM", "HFN"}``).
    Returns ``{metric_set: rows}``, rows grouped by model: all ZF rows first, then each model's in the order of
    ``models``, slices and volumes in dataset order. Per-slice rows leave out slices whose target is all zero
    (PSNR -inf, NMSE inf there); per-volume rows keep them, as fastMRI does, and leave out only all-zero volumes;
    a note says how many. ``amp`` runs the networks under bfloat16 autocast. With ``recons_dir``, writes
    ``{recons_dir}/{name}/{volume}.h5`` (models/evaluation/recons.py). ``cs``: also the "CS (L1-wavelet)" row,
    after ZF (models/evaluation/cs_row.py).
    """
    if ZF_NAME in models or CS_ROW in models:
        raise UserError(f"model names {ZF_NAME!r} and {CS_ROW!r} are reserved for the zero-filled input and the CS "
                        "baseline; rename that model")
    device = torch.device(device)
    nets = {}
    # The faster layout for forward passes on this device, measured once (models/training/speed.py); results differ
    # between layouts only by float rounding.
    memory_format = MEMORY_FORMATS[auto_layout(device, dataset.shape, amp, backward=False, batch=batch_size)]
    for name, model in models.items():
        net = (load_reconstructor(model, "--checkpoints", dataset.image, dataset.coils)
               if isinstance(model, (str, Path)) else model)
        nets[name] = net.to(device, memory_format=memory_format).eval()
    baselines = [ZF_NAME] + ([CS_ROW] if cs is not None else [])
    rows = {metric_set: {name: [] for name in [*baselines, *nets]} for metric_set in metric_sets}
    empty_slices = empty_volumes = 0
    for volume, target, outputs in reconstructed_volumes(nets, dataset, device, batch_size, amp, progress, cs):
        scored = scored_slices(target)
        empty_slices += len(target) - len(scored)
        empty_volumes += not scored
        for name, recon in outputs.items():
            for set_name, set_rows in rows.items():
                metric_set = METRIC_SETS[set_name]
                if not metric_set.per_volume:
                    set_rows[name] += [{"model": name, "volume": volume, "slice": s,
                                        **score(metric_set, target[s], recon[s])} for s in scored]
                elif scored:
                    set_rows[name].append({"model": name, "volume": volume, **score(metric_set, target, recon)})
            if recons_dir is not None and name not in baselines:
                write_recon(Path(recons_dir) / name / f"{volume}.h5", recon, name, dataset.acc)
    if "paper" in rows and empty_slices:
        print(f"note: {empty_slices} slice(s) with an all-zero target were left out of the metrics (PSNR, NMSE and "
              "HFEN-LoG are undefined there); their reconstructions are still saved", file=sys.stderr)
    if any(METRIC_SETS[name].per_volume for name in rows) and empty_volumes:
        print(f"note: {empty_volumes} volume(s) with an all-zero target were left out of the volume-wise metrics",
              file=sys.stderr)
    return {metric_set: [row for group in per_model.values() for row in group]
            for metric_set, per_model in rows.items()}

