"""The data of one training run: its train and validation splits, checked against each other and against the run
it resumes, and their loaders over the resumable shuffle (models/training/distributed.EpochSampler)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from data.augment import AugmentedSlices
from data.dataset import build_dataset, data_kind
from data.split_check import check_split
from models.checkpoints.format import check_coils, check_image
from models.training.config import DataConfig, OptimConfig, TrainConfig
from models.training.distributed import Dist, EpochSampler
from models.training.experiment import check_resume_content, check_resume_data, content_record
from utils import UserError


@dataclass
class RunData:
    """``train`` / ``validation``: the splits' slices (data.dataset.Sample items); ``shape``: a slice's (H, W);
    ``content``: the fingerprint record of what the run reads (masks, data files, checkpoints), which
    ``config.json`` keeps for ``--resume``; ``image`` (``magnitude`` or ``complex``) and ``kspace`` (its origin):
    what the data hold, which the networks are built for; ``coils``: the coil count of multi-coil data (None:
    single-coil) and ``coil_kind`` what config.json records of it (``coils``, ``maps``, ``coil_source``; empty for
    single-coil data, whose records keep the keys they always had); ``note``: the line that says data files were hashed at
    their first use (a fresh run prints it once its set-up has succeeded, so that a refusal stays one line)."""

    train: Dataset
    validation: Dataset
    shape: tuple[int, int]
    content: dict
    image: str
    kspace: str | None
    note: str | None = None
    coil_kind: dict = field(default_factory=dict)

    @property
    def coils(self) -> int | None:
        return self.coil_kind.get("coils")

    @classmethod
    def load(cls, config: TrainConfig, resume: dict | None) -> "RunData":
        """Both splits of ``--data-root`` at ``--acc``. With ``resume`` (the loaded ``model.pt`` of the run's
        --exp-dir) the data must be what that run trained on, else a UserError says what changed."""
        data = config.data
        masks = data.masks()
        preload = {"auto": "auto", "yes": True, "no": False}[data.preload]
        train = build_dataset(data.data_root, "train", list(data.acc), masks, preload)
        validation = build_dataset(data.data_root, "validation", list(data.acc), masks, preload)
        # Files may have been moved or merged since data/prepare.py checked them; this reads only attributes.
        check_split(data.data_root, list(data.acc))
        # The image type is the data's: config.json, every checkpoint and evaluate.py's summary.json record it
        # with the k-space's origin.
        kind = data_kind(train)
        if data_kind(validation).get("coils") != kind.get("coils"):
            raise UserError(f"--data-root {data.data_root}: train/ and validation/ hold different coil counts; "
                            "prepare both splits in one data/prepare.py run")
        if data_kind(validation) != kind:
            raise UserError(f"--data-root {data.data_root}: train/ holds {kind['image']} images, validation/ "
                            f"{data_kind(validation)['image']} ones; prepare both splits in one data/prepare.py run")
        shape = tuple(train[0].target.shape[-2:])
        content, note = content_record(data, config.checkpoints, shape)
        if resume is not None:
            check_resume_data(resume, config, len(train), len(validation))
            # The image type first: data of the other type differs in content too, but this says why.
            check_image(resume.get("arch") or {}, kind["image"], config.run.exp_dir / "model.pt", "--resume:")
            check_coils(resume, kind.get("coils"), config.run.exp_dir / "model.pt", "--resume:")
            check_resume_content(resume, content, config)
        coil_kind = {key: kind[key] for key in ("coils", "maps", "coil_source") if key in kind}
        return cls(train, validation, shape, content, kind["image"], kind["kspace"],
                   note if resume is None else None, coil_kind)

    def loaders(self, data: DataConfig, optim: OptimConfig, dist: Dist
                ) -> tuple[DataLoader, EpochSampler, DataLoader]:
        """(training loader, its sampler, validation loader) for this rank. Build them after a resumed run's RNG
        is restored, as the original run did; ``--augment`` wraps the training split here. The set-up is then
        complete: :attr:`note` is printed here."""
        if self.note and dist.main:  # information, not a problem: stdout, so stderr stays one error line
            print(self.note)
        seed = optim.seed
        train = AugmentedSlices(self.train, seed) if data.augment else self.train
        sampler = EpochSampler(len(train), seed, dist.rank, dist.world, keys=data.augment)
        val_sampler = EpochSampler(len(self.validation), seed, dist.rank, dist.world, shuffle=False)
        opts = dict(batch_size=optim.batch_size, num_workers=data.num_workers,
                    pin_memory=dist.device.type == "cuda", persistent_workers=data.num_workers > 0)
        # Each epoch's iterator draws a base seed (for worker processes): from a generator of the loader's own,
        # not the global RNG, which model.pt saves. Otherwise a run resumed mid-epoch, which builds that epoch's
        # iterator a second time, would end one draw ahead of an uninterrupted run. The data pipeline itself
        # draws no random numbers, so the base seed changes nothing it computes.
        train_loader = DataLoader(train, sampler=sampler, **opts,
                                  generator=torch.Generator().manual_seed(seed + dist.rank))
        val_loader = DataLoader(self.validation, sampler=val_sampler, **opts,
                                generator=torch.Generator().manual_seed(seed + dist.rank))
        return train_loader, sampler, val_loader
