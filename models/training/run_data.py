"""The data of one training run: its train and validation splits, checked against each other and against the run
it resumes, and their loaders over the resumable shuffle (models/training/distributed.EpochSampler)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from data.augment import AugmentedSlices
from data.dataset import build_dataset, data_kind
from data.split_check import check_split
from models.checkpoints.format import check_image
from models.training.distributed import Dist, EpochSampler
from models.training.experiment import check_resume_content, check_resume_data, content_record
from utils import UserError


@dataclass
class RunData:
    """``train`` / ``validation``: the splits' slices (data.dataset.Sample items); ``shape``: a slice's (H, W);
    ``content``: the fingerprint record of what the run reads (masks, data files, checkpoints), which
    ``config.json`` keeps for ``--resume``; ``note``: the line that says data files were hashed at their first
    use (a fresh run prints it once its set-up has succeeded, so that a refusal stays one line)."""

    train: Dataset
    validation: Dataset
    shape: tuple[int, int]
    content: dict
    note: str | None = None

    @classmethod
    def load(cls, args: argparse.Namespace, exp: Path, resume: dict | None) -> "RunData":
        """Both splits of ``--data-root`` at ``--acc``; sets ``args.image`` and ``args.kspace`` from the data
        (the scripts build their networks for them). With ``resume`` (the loaded ``model.pt`` of ``exp``) the
        data must be what that run trained on, else a UserError says what changed."""
        masks = dict(zip(args.acc, args.mask)) if args.mask else None
        preload = {"auto": "auto", "yes": True, "no": False}[args.preload]
        train = build_dataset(args.data_root, "train", args.acc, masks, preload)
        validation = build_dataset(args.data_root, "validation", args.acc, masks, preload)
        # Files may have been moved or merged since data/prepare.py checked them; this reads only attributes.
        check_split(args.data_root, args.acc)
        # The image type is the data's: config.json, every checkpoint and evaluate.py's summary.json record it
        # with the k-space's origin.
        kind = data_kind(train)
        if data_kind(validation) != kind:
            raise UserError(f"--data-root {args.data_root}: train/ holds {kind['image']} images, validation/ "
                            f"{data_kind(validation)['image']} ones; prepare both splits in one data/prepare.py run")
        args.image, args.kspace = kind["image"], kind["kspace"]
        shape = tuple(train[0].target.shape[-2:])
        content, note = content_record(args, shape)
        if resume is not None:
            check_resume_data(resume, args, len(train), len(validation))
            # The image type first: data of the other type differs in content too, but this says why.
            check_image(resume.get("arch") or {}, args.image, exp / "model.pt", "--resume:")
            check_resume_content(resume, content, args)
        return cls(train, validation, shape, content, note if resume is None else None)

    def loaders(self, args: argparse.Namespace, dist: Dist) -> tuple[DataLoader, EpochSampler, DataLoader]:
        """(training loader, its sampler, validation loader) for this rank. Build them after a resumed run's RNG
        is restored, as the original run did; ``--augment`` wraps the training split here. The set-up is then
        complete: :attr:`note` is printed here."""
        if self.note and dist.main:
            print(self.note, file=sys.stderr)
        train = AugmentedSlices(self.train, args.seed) if args.augment else self.train
        sampler = EpochSampler(len(train), args.seed, dist.rank, dist.world, keys=args.augment)
        val_sampler = EpochSampler(len(self.validation), args.seed, dist.rank, dist.world, shuffle=False)
        opts = dict(batch_size=args.batch_size, num_workers=args.num_workers,
                    pin_memory=dist.device.type == "cuda", persistent_workers=args.num_workers > 0)
        # Each epoch's iterator draws a base seed (for worker processes): from a generator of the loader's own,
        # not the global RNG, which model.pt saves. Otherwise a run resumed mid-epoch, which builds that epoch's
        # iterator a second time, would end one draw ahead of an uninterrupted run. The data pipeline itself
        # draws no random numbers, so the base seed changes nothing it computes.
        train_loader = DataLoader(train, sampler=sampler, **opts,
                                  generator=torch.Generator().manual_seed(args.seed + dist.rank))
        val_loader = DataLoader(self.validation, sampler=val_sampler, **opts,
                                generator=torch.Generator().manual_seed(args.seed + dist.rank))
        return train_loader, sampler, val_loader
