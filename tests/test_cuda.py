"""The CUDA path: AMP, float32 DF, evaluation, pinned DataLoader workers, the frozen KD teacher, NCCL, checkpoints.

Every test needs a GPU and is skipped without one, so CI stays green; ``bash scripts/gpu_check.sh`` runs them
first on a GPU machine. Tolerances were set from the same comparisons on the CPU (bf16 autocast there rounds
like cuDNN's: loss within 1.2e-3, gradients within 2e-2 relative norm) with a margin of 5-10x.
"""
from __future__ import annotations

import copy
import datetime
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from conftest import ROOT, make_dataset, phantom, run_cli
from data.dataset import build_dataset
from data.fft import data_fidelity, fft2, ifft2
from data.masks import cartesian_row_mask
from models.nets.dccnn import DCCNN, STUDENT, TEACHER
from models.training.distributed import EpochSampler
from models.distill.losses import build_kd_loss
from models.nets.sft import SFTNet, sft_forward_backward
from models.training.speed import float32_mode

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda", 0)
NCCL_TIMEOUT = datetime.timedelta(seconds=60)  # rendezvous and each collective


@pytest.fixture
def ieee_float32():
    """float32 convolutions in IEEE arithmetic (no TF32) for the test, PyTorch's settings afterwards."""
    with float32_mode(tf32=False):
        yield


def brain_batch(size: int = 64, batch: int = 4, seed: int = 0):
    """zero_filled, kspace_under, mask, target: (B, 1, H, W) float32 / complex64 / float32 / float32."""
    target = torch.from_numpy(phantom(size, batch, seed)).float().permute(2, 0, 1)[:, None]
    mask = torch.from_numpy(cartesian_row_mask((size, size), "4x", seed=seed))[None, None]
    mask = mask.expand(batch, 1, size, size).contiguous()
    kspace = fft2(target) * mask
    return [t.to(CUDA) for t in (ifft2(kspace).abs(), kspace, mask, target)]


def gradient(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("kind", ["teacher", "sft"])
def test_amp_training_step_is_finite_and_within_tolerance_of_float32(kind, ieee_float32):
    zf, kspace, mask, target = brain_batch()
    results = []
    for amp in (False, True):
        torch.manual_seed(0)
        model = (DCCNN(TEACHER) if kind == "teacher" else SFTNet()).to(CUDA, memory_format=torch.channels_last)
        with torch.autocast(CUDA.type, dtype=torch.bfloat16, enabled=amp):
            if kind == "teacher":
                loss = F.l1_loss(model(zf, kspace, mask), target)
            else:
                loss = sft_forward_backward(model, zf, kspace, mask, target)[0]
        if loss.requires_grad:
            loss.backward()
        results.append((loss.detach().float(), gradient(model)))
    (loss32, grad32), (loss16, grad16) = results
    assert torch.isfinite(loss16) and torch.isfinite(grad16).all()
    assert abs(loss16 - loss32) / loss32 < 1e-2
    assert (grad16 - grad32).norm() / grad32.norm() < 0.1
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.99


def test_data_fidelity_runs_in_float32_under_autocast():
    zf, kspace, mask, target = brain_batch()
    x_cnn = (target + 0.1 * torch.randn_like(target)).to(torch.bfloat16)
    with torch.autocast(CUDA.type, dtype=torch.bfloat16):
        out = data_fidelity(x_cnn, kspace, mask)
        recon = DCCNN(STUDENT).to(CUDA)(zf, kspace, mask)
    assert out.dtype == torch.float32 and recon.dtype == torch.float32
    exact = data_fidelity(x_cnn.double().cpu(), kspace.cpu().to(torch.complex128), mask.cpu())
    torch.testing.assert_close(out.cpu().double(), exact, rtol=0, atol=1e-6)


def test_evaluation_on_cuda_matches_cpu_metrics(tmp_path):
    from models.evaluation.engine import evaluate_sets
    data = make_dataset(tmp_path / "data", size=32)
    dataset = build_dataset(data, "validation", ["4x"])
    torch.manual_seed(0)
    model = DCCNN(TEACHER)
    cpu_rows = evaluate_sets({"teacher": copy.deepcopy(model)}, dataset, device="cpu", progress=False)["paper"]
    cuda_rows = evaluate_sets({"teacher": copy.deepcopy(model)}, dataset, device="cuda", progress=False)["paper"]
    assert [(r["model"], r["volume"], r["slice"]) for r in cpu_rows] == \
           [(r["model"], r["volume"], r["slice"]) for r in cuda_rows]
    # Tolerances cover cuDNN's TF32 convolutions (PyTorch's default): ~1e-3 relative per convolution output.
    for a, b in zip(cpu_rows, cuda_rows):
        assert b["PSNR"] == pytest.approx(a["PSNR"], abs=0.05)
        assert b["SSIM"] == pytest.approx(a["SSIM"], abs=2e-3)
        assert b["VIF"] == pytest.approx(a["VIF"], abs=5e-3)
        assert b["NMSE"] == pytest.approx(a["NMSE"], rel=2e-2, abs=1e-6)
        assert b["HFEN-LoG"] == pytest.approx(a["HFEN-LoG"], rel=2e-2, abs=1e-6)


def test_dataloader_workers_with_pinned_memory_give_the_same_batches(tiny_data):
    # preload off: the workers open the HDF5 files lazily, each with its own handles.
    dataset = build_dataset(tiny_data, "train", ["4x"], preload=False)
    sampler = EpochSampler(len(dataset), seed=3)
    sampler.set_epoch(1)
    plain = list(DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=0))
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=2, pin_memory=True,
                        persistent_workers=True)
    for _ in range(2):  # persistent workers serve a second epoch too
        batches = list(loader)
        assert len(batches) == len(plain)
        for got, want in zip(batches, plain):
            assert type(got) is type(want)
            for key, value in want._asdict().items():
                if torch.is_tensor(value):
                    assert getattr(got, key).is_pinned(), key
                    on_device = getattr(got.to(CUDA), key)
                    assert on_device.device.type == CUDA.type and torch.equal(on_device.cpu(), value), key
                else:
                    assert getattr(got, key) == value, key


def test_frozen_kd_teacher_and_teacher_cache_live_on_the_device(tiny_data):
    from models.training.steps import KDStep
    dataset = build_dataset(tiny_data, "train", ["4x"])
    batch = next(iter(DataLoader(dataset, batch_size=4))).to(CUDA)
    torch.manual_seed(0)
    step = KDStep(DCCNN(STUDENT), DCCNN(TEACHER), build_kd_loss("imitation", STUDENT, TEACHER), 1.0,
                  cache_teacher=True).to(device=CUDA, memory_format=torch.channels_last)
    assert all(p.device.type == CUDA.type and not p.requires_grad for p in step.teacher.parameters())
    assert not step.teacher.training
    inputs = (batch.zero_filled, batch.kspace_under, batch.mask)
    first = step.teacher_output(batch, inputs)
    assert len(step.teacher_cache) == 4
    assert all(value.device.type == CUDA.type for value in step.teacher_cache.values())
    cached = step.teacher_output(batch, inputs)
    assert cached.device.type == CUDA.type
    torch.testing.assert_close(cached, first)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_nccl_group_initialises_and_trains_a_step(tiny_data):
    from models.training.steps import SFTStep
    # A bounded wait: the default of 10 minutes would use up a borrowed GPU machine's whole command limit.
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                         world_size=1, device_id=CUDA, timeout=NCCL_TIMEOUT)
    try:
        dataset = build_dataset(tiny_data, "train", ["4x"])
        batch = next(iter(DataLoader(dataset, batch_size=2))).to(CUDA)
        torch.manual_seed(0)
        step = SFTStep(SFTNet(), 1.0, 1.0).to(device=CUDA, memory_format=torch.channels_last)
        net = torch.nn.parallel.DistributedDataParallel(step, device_ids=[CUDA.index or 0])
        optimizer = torch.optim.Adam([p for p in step.parameters() if p.requires_grad])
        before = {k: v.clone() for k, v in step.model.state_dict().items()}
        loss, _ = net(batch)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        after = step.model.state_dict()
        assert not torch.equal(after["teacher.cascades.0.conv1.weight"], before["teacher.cascades.0.conv1.weight"])
        assert torch.equal(after["student.cascades.0.conv1.weight"], before["student.cascades.0.conv1.weight"])
        total = torch.ones(1, device=CUDA)
        torch.distributed.all_reduce(total)
        assert total.item() == 1.0
    finally:
        torch.distributed.destroy_process_group()


def test_checkpoints_written_on_cuda_load_on_a_cpu_only_machine(tmp_path):
    data = make_dataset(tmp_path / "data", size=32)
    exp = tmp_path / "sft"
    common = ["train_sft.py", "--data-root", str(data), "--exp-dir", str(exp), "--no-progress"]
    result = run_cli(*common, "--epochs", "1", "--device", "cuda", "--amp")
    assert result.returncode == 0, result.stderr[-2000:]
    cpu_only = {"CUDA_VISIBLE_DEVICES": ""}
    load = ("import torch; assert not torch.cuda.is_available(); "
            f"c = torch.load({str(exp / 'best_model.pt')!r}, weights_only=True); "
            "assert all(v.device.type == 'cpu' for v in c['model'].values())")
    result = subprocess.run([sys.executable, "-c", load], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, **cpu_only}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("evaluate.py", "--checkpoints", str(exp / "best_model.pt"), "--data-root", str(data),
                     "--acc", "4x", "--out-dir", str(tmp_path / "eval"), "--device", "cpu", env=cpu_only)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(*common, "--epochs", "2", "--device", "cpu", "--resume", env=cpu_only)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(exp / "model.pt", weights_only=True)["epoch"] == 2
