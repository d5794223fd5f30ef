"""What each inference mode (models/inference/forward.py) costs in quality: every network in every mode over one
data set, scored as evaluate.py scores it, and each mode's change against the exact forward."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from data.dataset import SliceDataset
from models.evaluation.engine import ZF_NAME, reconstructed_volumes, scored_slices
from models.evaluation.metrics import used_for
from models.evaluation.sets import score_with, summarize
from models.inference.forward import for_inference, inference_network
from utils import UserError

# The metrics of the report tables (the registry's ``table`` ones: PSNR and SSIM), evaluate.py's functions.
QUALITY_METRICS = {m.name: m.function for m in used_for("table")}


def entry_name(network: str, mode: str) -> str:
    """A network in a mode, as scripts/compression.py names it: ``student``, ``student+fused``."""
    return network if mode == "exact" else f"{network}+{mode}"


def mode_quality(nets: Mapping[str, nn.Module], modes: Sequence[str], dataset: SliceDataset,
                 device: torch.device | str = "cpu", batch_size: int = 4, progress: bool = True) -> dict[str, dict]:
    """Every network of ``nets`` (name -> a registered reconstructor taking the data's image type) in the exact
    mode and each of ``modes`` over ``dataset``, through evaluate.py's loop
    (:func:`models.evaluation.engine.reconstructed_volumes`: same batches, memory layout, magnitude, targets) and
    metrics (:data:`QUALITY_METRICS` on the slices evaluate.py scores, compared in float64, the mean over slices
    as in summary.json), so the exact mode's figures are evaluate.py's for the same ``batch_size``.

    Returns ``{network: {mode: {"PSNR", "SSIM", "slices", "PSNR_change", "SSIM_change", "max_abs_difference",
    "max_relative_difference"}}}``: means over the scored slices; the changes are the mode's mean minus the
    exact mode's; the differences compare the mode's output magnitude with the exact one slice by slice,
    ``max |mode - exact|`` per slice in network units, and divided by the slice's maximum of the exact output,
    each the largest over the slices. A mode a network does not run (``fused`` of a non-DC-CNN) is left out of
    its entry."""
    device = torch.device(device)
    entries: dict[str, nn.Module] = {}
    owner: dict[str, tuple[str, str]] = {}
    for name, net in nets.items():
        ready = for_inference(net, device, dataset.shape, batch_size)
        for mode in dict.fromkeys(["exact", *modes]):
            try:
                wrapped = inference_network(ready, mode)
            except UserError:
                if mode == "exact":
                    raise
                continue
            entries[entry_name(name, mode)] = wrapped
            owner[entry_name(name, mode)] = (name, mode)
    rows: dict[str, list[dict]] = {entry: [] for entry in entries}
    absolute: dict[str, list[float]] = {entry: [] for entry in entries}
    relative: dict[str, list[float]] = {entry: [] for entry in entries}
    for _volume, target, outputs in reconstructed_volumes(entries, dataset, device, batch_size, False, progress):
        scored = scored_slices(target)
        for entry, recon in outputs.items():
            if entry == ZF_NAME:
                continue
            exact = outputs[owner[entry][0]]
            rows[entry] += [{"model": entry, **score_with(QUALITY_METRICS, target[s], recon[s])} for s in scored]
            for s in scored:
                # float64: a difference of float32 outputs, not rounded again.
                difference = float(np.abs(recon[s].astype(np.float64) - exact[s]).max())
                absolute[entry].append(difference)
                relative[entry].append(difference / max(float(exact[s].max()), np.finfo(np.float32).tiny))
    if not any(rows.values()):
        raise UserError("the scored split holds no slice with a nonzero target; score another split")
    means = {entry: {metric: stats["mean"] for metric, stats in per_metric.items()}
             for entry, per_metric in summarize([row for group in rows.values() for row in group],
                                                tuple(QUALITY_METRICS)).items()}
    found: dict[str, dict] = {}
    for entry, (name, mode) in owner.items():
        exact = means[name]
        found.setdefault(name, {})[mode] = {
            **means[entry], "slices": len(rows[entry]),
            **{f"{metric}_change": means[entry][metric] - exact[metric] for metric in QUALITY_METRICS},
            "max_abs_difference": max(absolute[entry]), "max_relative_difference": max(relative[entry])}
    return found
