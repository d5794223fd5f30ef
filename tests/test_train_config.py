"""The typed training configs (models/training/config.py): the record config.json keeps has the keys the scripts
wrote before the configs were typed, each checkpoint file is read once, and --resume compares config dicts."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train_student_kd
from data.fingerprint import file_digest
from models.checkpoints.format import model_payload
from models.checkpoints.io import save_checkpoint
from models.nets.sft import SFTNet
from models.training.config import ResumeRules
from models.training.experiment import check_resume_config
from models.training.flags import common_parser, parse_args, train_config
from utils import UserError

# config.json's flag entries of a train_student_kd.py run, in the order the scripts wrote them when the loop took
# argparse namespaces: runs started then are resumed by comparing these entries.
KD_KEYS = ["data_root", "acc", "mask", "num_workers", "augment", "preload", "epochs", "batch_size", "lr",
           "lr_schedule", "lr_step_size", "lr_gamma", "ema", "average_last", "scale_lr", "seed", "exp_dir", "resume",
           "overwrite", "device", "memory_format", "amp", "save_every_iters", "log_every", "image_every",
           "no_progress", "teacher_checkpoint", "init_from_sft", "init_student", "kd_method", "kd_weight",
           "feature_epochs", "cache_teacher", "student_model", "cascades", "depth", "width", "ref_padding",
           "residual", "prepared_maps", "image", "kspace"]


@pytest.fixture
def sft(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "sft.pt"
    save_checkpoint(model_payload(SFTNet(), "sft", {"roles": {"model": "sft"}}), path)
    return path


def kd_argv(tmp_path: Path, sft: Path, *extra: str) -> list[str]:
    return ["--data-root", str(tmp_path / "data"), "--exp-dir", str(tmp_path / "exp"), "--teacher-checkpoint",
            str(sft), "--init-from-sft", str(sft), "--mask", str(tmp_path / "m.npy"), *extra]


def test_the_record_keeps_the_keys_and_json_types_of_config_json(tmp_path, sft):
    args = parse_args(train_student_kd.build_parser(), kd_argv(tmp_path, sft))
    record = train_config(args).record(image="magnitude", kspace=None)
    assert list(record) == KD_KEYS
    assert record["acc"] == ["4x"] and record["mask"] == [str(tmp_path / "m.npy")]
    assert record["data_root"] == str(tmp_path / "data") and record["teacher_checkpoint"] == str(sft)


def test_one_file_given_to_two_flags_is_read_once_and_hashed_from_that_read(tmp_path, sft, monkeypatch):
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    run = train_student_kd.kd_run(train_student_kd.build_parser().parse_args(kd_argv(tmp_path, sft)))
    assert reads == [sft]
    assert run.digests() == {"teacher_checkpoint": file_digest(sft), "init_from_sft": file_digest(sft)}
    assert run.teacher is run.init and run.teacher_role == "sft" and run.init_kind == "sft-blocks"


def test_resume_compares_the_config_dicts(tmp_path):
    parser = common_parser("t")
    parser.add_argument("--kd-weight", type=float, default=None)
    rules = ResumeRules(resolve={"kd_weight": lambda values: 0.5})
    base = ["--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "exp")]
    recorded = {"config": train_config(parse_args(parser, base), rules).record(image="magnitude", kspace=None)}
    # The resolved default given explicitly, and a setting that may change, are no change.
    check_resume_config(train_config(parse_args(parser, [*base, "--kd-weight", "0.5", "--epochs", "9"]), rules),
                        recorded, tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"--lr 0.01 \(the run: 0.001\); --kd-weight 0.7 \(the run: 0.5\) differ"):
        check_resume_config(train_config(parse_args(parser, [*base, "--kd-weight", "0.7", "--lr", "0.01"]), rules),
                            recorded, tmp_path / "model.pt")
