"""The training steps the loop (models/training/loop.py) runs: reconstruction, SFT and KD.

A step is a :class:`models.training.loop.TrainStep`: its network, its loss and its validation outputs. The
training scripts build one from their flags; scripts/benchmark.py times these same steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from data.dataset import ReconInputs, Sample
from models.distill.losses import KDLoss
from models.nets.sft import SFTNet, sft_forward_backward, sft_loss
from models.training.speed import sft_variant
from models.training.loop import Frozen, TrainStep


class ReconStep(TrainStep):
    """Plain supervised reconstruction: ``|x_rec - x|_1``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Sample):
        out = self.model(*batch.inputs)
        loss = F.l1_loss(out, batch.target)
        return loss, {"l1": loss.detach()}

    def predict(self, batch: Sample):
        return {"output": self.model(*batch.inputs)}


class SFTStep(TrainStep):
    """``L_rec^T + w_s * L_rec^S + w_i * L_imit``; validation and the best checkpoint use the teacher.

    ``variant`` is how the step lays out its arithmetic (one of models/training/speed.py's ``SFT_VARIANTS``, the same
    gradients up to float rounding); None takes models/training/speed.py's choice for the batch's device."""

    def __init__(self, model: SFTNet, student_rec_weight: float, imitation_weight: float,
                 variant: str | None = None):
        super().__init__()
        self.model = model
        self.student_rec_weight, self.imitation_weight = student_rec_weight, imitation_weight
        self.variant = variant

    def variant_for(self, batch: Sample) -> str:
        return self.variant or sft_variant(batch.target.device)

    def runs_own_backward(self, batch: Sample):
        # Branch by branch, each graph is freed right after its backward (see sft_forward_backward).
        return self.allow_own_backward and self.training and self.variant_for(batch) == "branchwise"

    def forward(self, batch: Sample):
        inputs = batch.inputs
        weights = (self.student_rec_weight, self.imitation_weight)
        if self.runs_own_backward(batch):
            return sft_forward_backward(self.model, *inputs[:3], batch.target, *weights, maps=inputs.maps)
        teacher_out, branches = self.model(*inputs, batch_branches=self.variant_for(batch) == "joint-batched")
        return sft_loss(teacher_out, branches, batch.target, *weights)

    def predict(self, batch: Sample):
        teacher_out, branch1 = self.model.teacher_and_branch1(*batch.inputs)
        return {"output": teacher_out, "student_branch1": branch1}

    def hparams(self):
        return {"student_rec_weight": self.student_rec_weight, "imitation_weight": self.imitation_weight}


@dataclass(frozen=True)
class KDConfig:
    """A KD run's distillation settings: the registered KD ``method`` (models/distill/losses.py), its ``weight``
    lambda (None: the method's own), ``feature_epochs`` (N epochs of the KD loss alone first, the public code's
    two stages; 0: one stage) and ``cache_teacher`` (keep the teacher's outputs after the first epoch)."""

    method: str = "at"
    weight: float | None = None
    feature_epochs: int = 0
    cache_teacher: bool = False


class KDStep(TrainStep):
    """Student reconstruction L1 plus the weighted KD term against a frozen teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kd_loss: KDLoss, kd_weight: float,
                 feature_epochs: int = 0, cache_teacher: bool = False):
        super().__init__()
        self.model = student
        self.kd_loss = kd_loss  # registered: its learnable parts train with the student, saved under "extra"
        self.kd_weight = kd_weight
        self.feature_epochs = feature_epochs
        self.feature_stage = False
        self.frozen_teacher = Frozen(teacher)
        # (file, slice, acc) -> (1, H, W) float32 teacher output on the training device (H x W x 4 bytes a
        # slice: no host copy per step on a GPU); None: no cache.
        self.teacher_cache: dict | None = {} if cache_teacher else None
        # The second stage leaves a learnable KD loss (vid, ab, ft) without gradients.
        self.find_unused_parameters = bool(feature_epochs) and kd_loss.has_parameters

    @property
    def teacher(self) -> nn.Module:
        return self.frozen_teacher.module

    def start_epoch(self, epoch: int) -> None:
        self.feature_stage = epoch < self.feature_epochs

    def begins_stage(self, epoch: int) -> bool:
        # The public code's second script (train_kd.py) starts from the first stage's best student with a new
        # optimiser, so the second stage here does too.
        return bool(self.feature_epochs) and epoch == self.feature_epochs

    def forward(self, batch: Sample):
        inputs = batch.inputs
        if self.feature_epochs and not self.feature_stage:
            # Second stage of the public schedule (train_kd.sh, without --imitation_required): L1 alone.
            loss_rec = F.l1_loss(self.model(*inputs), batch.target)
            return loss_rec, {"reconstruction": loss_rec.detach(), "kd": torch.zeros_like(loss_rec.detach())}
        features = self.kd_loss.needs_features
        if features:
            # no_grad rather than inference_mode: inference tensors would have to be cloned before the KD
            # losses (which build autograd graphs on the student side) may use them.
            with torch.no_grad():
                teacher_out, teacher_feats = self.teacher(*inputs, return_features=True,
                                                          keep_hidden=self.kd_loss.keep_teacher_hidden())
        else:
            teacher_out, teacher_feats = self.teacher_output(batch, inputs), None
        student_out = self.model(*inputs, return_features=features)
        student_out, student_feats = student_out if features else (student_out, None)
        loss_rec = F.l1_loss(student_out, batch.target)
        loss_kd = self.kd_loss(student_out, student_feats, teacher_out, teacher_feats)
        loss = self.kd_weight * loss_kd if self.feature_stage else loss_rec + self.kd_weight * loss_kd
        return loss, {"reconstruction": loss_rec.detach(), "kd": loss_kd.detach()}

    def teacher_output(self, batch: Sample, inputs: ReconInputs) -> torch.Tensor:
        """The frozen teacher's (B, 1, H, W) float32 reconstruction, from the cache when every sample of the
        batch is in it. The teacher and the data never change, so after the first epoch an output-only
        method (imitation) needs no teacher forward at all."""
        if self.teacher_cache is not None:
            keys = list(zip(batch.fname, batch.slice.tolist(), batch.acc))
            if all(key in self.teacher_cache for key in keys):
                cached = torch.stack([self.teacher_cache[key] for key in keys])
                return cached.to(inputs[0].device, non_blocking=True)
        with torch.no_grad():
            teacher_out = self.teacher(*inputs)
        if self.teacher_cache is not None:
            self.teacher_cache.update(zip(keys, teacher_out.detach().float()))
        return teacher_out

    def predict(self, batch: Sample):
        return {"output": self.model(*batch.inputs)}

    def hparams(self):
        return {"kd_weight": self.kd_weight, "feature_epochs": self.feature_epochs}
