"""The one training loop behind train_teacher.py, train_sft.py and train_student_kd.py.

A script builds a :class:`TrainStep` (the network to train, its loss, its validation output) and calls
:func:`train`. The loop owns everything else: flags common to all scripts, seeding, device, data loaders
with a resumable shuffle, Adam + StepLR, validation with PSNR/SSIM, ``model.pt`` / ``best_model.pt``,
exact ``--resume``, SIGINT/SIGTERM handling, torchrun (DDP), tqdm and TensorBoard.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.augment import AugmentedSlices
from data.dataset import build_dataset
from data.masks import parse_acc
from data.split_check import check_split
from models.checkpoint import model_payload
from models.distributed import Dist, EpochSampler
from models.experiment import (REPLACED, drop_replaced_run, git_commit, jsonable, prepare_exp_dir,
                               restore_old_run, set_aside_old_run)
from models.speed import MEMORY_FORMATS, resolve_memory_format
from utils import (CliParser, UserError, first_line, get_rng_state, psnr, save_checkpoint, seed_everything,
                   set_rng_state, ssim, write_json)


class TrainStep(nn.Module):
    """What a training script plugs into the loop.

    ``self.model`` is the network that is checkpointed under ``model``; any other registered submodule with
    parameters (e.g. a KD loss's regressor) is optimised too and stored under ``extra``. Modules that must
    not be trained or saved (a frozen teacher) are kept out of the registry (see :meth:`attach_frozen`).
    """

    model: nn.Module

    # Set by the loop: may forward() run the backward pass itself (returning a detached loss)? Not under
    # DDP, whose gradient hooks expect exactly one backward of the wrapped module's output.
    own_backward = False
    # True when some trainable parameters sit out whole steps (DDP must then look for them every step).
    find_unused_parameters = False

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss (scalar) and its terms (detached scalars) for a batch (see data.dataset items).

        With :attr:`own_backward` the step may also compute the gradients and return the loss detached."""
        raise NotImplementedError

    def predict(self, batch: dict) -> dict[str, torch.Tensor]:
        """Validation outputs, (B, 1, H, W) float32 each; the key ``"output"`` defines the validation loss,
        other keys (e.g. ``"student_branch1"``) get their own PSNR in the logs."""
        raise NotImplementedError

    def attach_frozen(self, name: str, module: nn.Module) -> None:
        """Keep a frozen network (eval mode, no gradients) on this step without registering it, so it is
        neither optimised, checkpointed nor wrapped by DDP."""
        module.eval().requires_grad_(False)
        object.__setattr__(self, name, module)
        self._frozen = getattr(self, "_frozen", []) + [name]

    def to_device(self, device: torch.device, memory_format=torch.contiguous_format) -> "TrainStep":
        self.to(device=device, memory_format=memory_format)
        for name in getattr(self, "_frozen", []):
            getattr(self, name).to(device=device, memory_format=memory_format)
        return self

    def extra_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def hparams(self) -> dict:
        """Script-specific hyperparameters for TensorBoard's hparams tab."""
        return {}

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based), for schedules that change the loss."""


# --------------------------------------------------------------------------- flags

def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def acc_name(text: str) -> str:
    try:
        parse_acc(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace(f"--acc {text!r}", repr(text)))
    return text


def common_parser(description: str) -> CliParser:
    """Parser with the flags every training script shares (defaults are the paper's)."""
    p = CliParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", type=Path, required=True,
                   help="folder with train/ and validation/ (acc_{acc}/*.h5) and mask_{acc}.npy")
    g.add_argument("--acc", type=acc_name, nargs="+", default=["4x"],
                   help="acceleration(s); several train one model on the union, e.g. --acc 4x 5x")
    g.add_argument("--mask", type=Path, nargs="+", default=None,
                   help="mask .npy per --acc (default {data-root}/mask_{acc}.npy)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--augment", action="store_true",
                   help="random flips, 90-degree rotations and intensity scaling of the training slices, "
                        "k-space recomputed (seeded by seed, epoch, slice; off in the paper's protocol)")
    g.add_argument("--preload", choices=["auto", "yes", "no"], default="auto",
                   help="hold the data in memory (auto: when it needs < 2 GiB)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive(int), default=150)
    g.add_argument("--batch-size", type=positive(int), default=4, help="per process")
    g.add_argument("--lr", type=positive(float), default=1e-3, help="Adam learning rate")
    g.add_argument("--lr-step-size", type=positive(int), default=40, help="StepLR step (epochs)")
    g.add_argument("--lr-gamma", type=positive(float), default=0.1, help="StepLR factor")
    g.add_argument("--scale-lr", action="store_true",
                   help="multiply --lr by the number of processes (linear scaling rule under torchrun)")
    g.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("run")
    g.add_argument("--exp-dir", type=Path, required=True, help="experiment folder for checkpoints and logs")
    g.add_argument("--resume", action="store_true", help="continue from {exp-dir}/model.pt")
    g.add_argument("--overwrite", action="store_true", help="replace an existing experiment in --exp-dir")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--memory-format", choices=["auto", *MEMORY_FORMATS], default="auto",
                   help="tensor layout of the CNNs; auto times both at start-up (a fraction of a second) and "
                        "takes channels_last unless contiguous is 10%% faster; --resume reuses the run's layout")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for the CNNs (DF stays float32): faster on GPUs and on CPUs with "
                        "AMX/AVX-512 bf16, numerically not identical to float32")
    g.add_argument("--save-every-iters", type=positive(int), default=None,
                   help="also write model.pt every N iterations inside an epoch")
    g.add_argument("--log-every", type=positive(int), default=10, help="iterations between loss logs")
    g.add_argument("--image-every", type=positive(int), default=5, help="epochs between image grids")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars (for log files)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.mask is not None and len(args.mask) != len(args.acc):
        raise UserError(f"--mask has {len(args.mask)} file(s) but --acc has {len(args.acc)}; give one per "
                        "acceleration, in the same order")
    if args.num_workers < 0:
        raise UserError("--num-workers must be >= 0")
    return args


# --------------------------------------------------------------------------- batches and validation

def to_device(batch: dict, device: torch.device) -> dict:
    """The batch dict with its tensors on ``device`` (names and indices stay as they are)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


@torch.inference_mode()
def validate(step: TrainStep, loader: DataLoader, dist: Dist, amp: bool) -> dict:
    """Mean validation L1 of ``output``, PSNR and SSIM per slice (overall and per acceleration), and the
    PSNR of every extra output; sums are reduced over ranks so all ranks see the same numbers."""
    step.eval()
    # Sums per group: "" is every slice, "_4x" etc. one acceleration; counts sit under "n".
    sums: dict[tuple[str, str], float] = {}
    sample = None

    def add(group: str, key: str, value: float) -> None:
        sums[group, key] = sums.get((group, key), 0.0) + value

    for batch in loader:
        batch = to_device(batch, dist.device)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = step.predict(batch)
        outputs = {k: v.float() for k, v in outputs.items()}
        l1 = (outputs["output"] - batch["target"]).abs().mean(dim=(1, 2, 3)).cpu().numpy()
        target = batch["target"][:, 0].double().cpu().numpy()
        recons = {k: v[:, 0].double().cpu().numpy() for k, v in outputs.items()}
        for i, acc in enumerate(batch["acc"]):
            for group in ("", f"_{acc}"):
                add(group, "n", 1.0)
                add(group, "loss", float(l1[i]))
                add(group, "psnr", psnr(target[i], recons["output"][i]))
                add(group, "ssim", ssim(target[i], recons["output"][i]))
            for key in recons.keys() - {"output"}:
                add("", f"psnr_{key}", psnr(target[i], recons[key][i]))
        if sample is None:
            sample = {"target": batch["target"][:1].float().cpu(),
                      "zero_filled": batch["zero_filled"][:1].float().cpu(),
                      "output": outputs["output"][:1].cpu()}
    keys = sorted(sums)
    totals = dist.all_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()
    sums = dict(zip(keys, totals))
    metrics = {f"{key}{group}": value / sums[group, "n"] for (group, key), value in sums.items() if key != "n"}
    metrics["_sample"] = sample
    return metrics


def image_grid(sample: dict) -> torch.Tensor:
    """(1, H, 4W) image: target | zero-filled | output | 5 x |error|, clipped to [0, 1] for display."""
    target, zf, out = sample["target"][0, 0], sample["zero_filled"][0, 0], sample["output"][0, 0]
    scale = float(target.max()) or 1.0
    panels = [target / scale, zf / scale, out / scale, 5 * (out - target).abs() / scale]
    return torch.cat(panels, dim=1).clamp(0, 1)[None]


# --------------------------------------------------------------------------- the loop

class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the current step, saves and exits."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(args: argparse.Namespace, build_step, run_name: str) -> Path:
    """Train ``build_step(args)`` (a :class:`TrainStep`) with the common flags in ``args``.

    Writes into ``args.exp_dir``: ``config.json``, ``model.pt`` (every epoch, and every
    ``--save-every-iters``), ``best_model.pt`` (best validation L1) and ``summary/`` (TensorBoard).
    Returns the experiment folder.
    """
    dist = Dist(args.device)
    parked = {"old_run": False}
    try:
        return _train(args, build_step, run_name, dist, parked)
    except BaseException:
        # Still parked means this run never saved a model.pt: give the replaced run back.
        if parked["old_run"] and (args.exp_dir / REPLACED).is_dir():
            restore_old_run(args.exp_dir)
        raise
    finally:
        dist.close()


def _train(args, build_step, run_name: str, dist: Dist, parked: dict) -> Path:
    resume = prepare_exp_dir(args)
    exp = args.exp_dir
    if resume is not None and resume["epoch"] >= args.epochs and resume["batch_in_epoch"] == 0:
        if dist.main:
            print(f"{exp} already finished {resume['epoch']} of {args.epochs} epochs; nothing to resume")
        return exp
    seed_everything(args.seed + dist.rank)
    masks = dict(zip(args.acc, args.mask)) if args.mask else None
    preload = {"auto": "auto", "yes": True, "no": False}[args.preload]
    train_set = build_dataset(args.data_root, "train", args.acc, masks, preload)
    val_set = build_dataset(args.data_root, "validation", args.acc, masks, preload)
    # Files may have been moved or merged since data/prepare.py checked them; this reads only attributes.
    check_split(args.data_root, args.acc)
    step = build_step(args)
    recorded = resume.get("config", {}).get("memory_format") if resume is not None else None
    args.memory_format = resolve_memory_format(args.memory_format, dist.device,
                                               tuple(train_set[0]["target"].shape[-2:]), bool(args.amp), recorded)
    step.to_device(dist.device, MEMORY_FORMATS[args.memory_format])
    amp = bool(args.amp)
    lr = args.lr * (dist.world if args.scale_lr else 1)
    params = [p for p in step.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)

    start_epoch, start_batch, global_step, best_loss = 0, 0, 0, math.inf
    if resume is not None:
        try:
            step.model.load_state_dict(resume["model"])
            step.load_state_dict({**step.state_dict(), **resume.get("extra", {})})
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"--resume: {exp / 'model.pt'} does not match this script and flags "
                            f"({first_line(exc)}); resume with the original command") from exc
        start_epoch, start_batch = resume["epoch"], resume["batch_in_epoch"]
        global_step, best_loss = resume["global_step"], resume["best_val_loss"]
        if resume.get("world_size", 1) != dist.world:
            print(f"warning: resuming a {resume.get('world_size', 1)}-process run with {dist.world} "
                  "process(es); training continues but is not bit-identical to an uninterrupted run",
                  file=sys.stderr)
        elif resume.get("rng_per_rank") and dist.rank < len(resume["rng_per_rank"]):
            set_rng_state(resume["rng_per_rank"][dist.rank])

    if args.augment:
        train_set = AugmentedSlices(train_set, args.seed)
    train_sampler = EpochSampler(len(train_set), args.seed, dist.rank, dist.world, keys=args.augment)
    val_sampler = EpochSampler(len(val_set), args.seed, dist.rank, dist.world, shuffle=False)
    loader_opts = dict(num_workers=args.num_workers, pin_memory=dist.device.type == "cuda",
                       persistent_workers=args.num_workers > 0)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler, **loader_opts)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, sampler=val_sampler, **loader_opts)

    net = step
    step.own_backward = dist.world == 1
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            step, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=step.find_unused_parameters)

    writer = None
    config = {**jsonable(args), "run_name": run_name, "git_commit": git_commit(),
              "torch_version": str(torch.__version__), "device": str(dist.device), "world_size": dist.world,
              "effective_batch_size": args.batch_size * dist.world, "effective_lr": lr,
              "train_slices": len(train_set), "validation_slices": len(val_set),
              "trainable_parameters": sum(p.numel() for p in params),
              "model_parameters": sum(p.numel() for p in step.model.parameters())}
    if dist.main:
        if resume is None:
            parked["old_run"] = set_aside_old_run(exp)
            write_json(exp / "config.json", config)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(exp / "summary"), purge_step=global_step if resume else None)
        print(f"{run_name}: {len(train_set)} training / {len(val_set)} validation slices, "
              f"{config['model_parameters']:,} parameters, device {dist.device}, "
              f"batch {args.batch_size} x {dist.world} process(es) = {config['effective_batch_size']}, "
              f"lr {lr:g}; writing to {exp}", flush=True)

    def checkpoint(epoch: int, batch_in_epoch: int) -> dict:
        rng = [get_rng_state()]
        if dist.world > 1:
            gathered = [None] * dist.world
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        return {**model_payload(step.model, run_name, config), "extra": step.extra_state(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
                "best_val_loss": best_loss, "rng_per_rank": rng, "world_size": dist.world}

    def save_last(epoch: int, batch_in_epoch: int) -> None:
        state = checkpoint(epoch, batch_in_epoch)
        if dist.main:
            save_checkpoint(state, exp / "model.pt")
            drop_replaced_run(exp)

    show = dist.main and not args.no_progress
    epochs_bar = tqdm(range(start_epoch, args.epochs), initial=start_epoch, total=args.epochs,
                      desc=run_name, unit="epoch", disable=not show, dynamic_ncols=True)
    with _StopRequest() as stop:
        for epoch in epochs_bar:
            skip = start_batch * args.batch_size if epoch == start_epoch else 0
            train_sampler.set_epoch(epoch, skip)
            step.start_epoch(epoch)
            step.train()
            pending: list[tuple[int, torch.Tensor, dict]] = []
            running, seen = 0.0, 0
            first_batch = start_batch if epoch == start_epoch else 0
            batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                           disable=not show, unit="batch", dynamic_ncols=True,
                           initial=first_batch, total=first_batch + len(train_loader))
            t0 = time.time()
            for i, batch in enumerate(batches, start=first_batch):
                batch = to_device(batch, dist.device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
                    loss, terms = net(batch)
                if loss.requires_grad:  # a step that ran its own backward returns a detached loss
                    loss.backward()
                optimizer.step()
                global_step += 1
                pending.append((i, loss.detach(), terms))
                # Losses stay on the device until the logging interval: no per-iteration host sync.
                if len(pending) >= args.log_every or i == first_batch + len(train_loader) - 1:
                    # Averaged over ranks so the logged loss is the global batch's, whatever the world size.
                    losses = dist.all_sum(torch.stack([p[1] for p in pending]).float()) / dist.world
                    bad = (~torch.isfinite(losses)).nonzero()
                    if len(bad):
                        iteration = pending[int(bad[0])][0] + 1
                        raise UserError(f"training loss became {losses[int(bad[0])].item()} at epoch "
                                        f"{epoch + 1}, iteration {iteration}; the last good checkpoints "
                                        f"in {exp} are kept. Lower --lr or check the data")
                    if writer is not None:
                        names = list(pending[0][2])
                        # One device-to-host copy for the whole interval, not one per scalar.
                        terms = torch.stack([torch.stack([p[2][n] for n in names]) for p in pending]).float()
                        first = global_step - len(pending) + 1
                        for g, value, row in zip(range(first, global_step + 1), losses.tolist(),
                                                 terms.cpu().tolist()):
                            writer.add_scalar("train/loss", value, g)
                            for name, term in zip(names, row):
                                writer.add_scalar(f"train/{name}", term, g)
                    running += float(losses.sum())
                    seen += len(losses)
                    batches.set_postfix(loss=f"{running / seen:.4g}")
                    pending.clear()
                if stop.signal or (args.save_every_iters and global_step % args.save_every_iters == 0):
                    save_last(epoch, i + 1)
                if stop.signal:
                    if dist.main:
                        print(f"\nstopped by {stop.signal} in epoch {epoch + 1}; model.pt is saved. "
                              "Continue with the same command plus --resume", file=sys.stderr)
                    sys.exit(130 if stop.signal == "SIGINT" else 143)
            batches.close()
            train_time = time.time() - t0
            scheduler.step()
            metrics = validate(step, val_loader, dist, amp)
            sample = metrics.pop("_sample")
            improved = metrics["loss"] < best_loss
            if improved:
                best_loss = metrics["loss"]
            if dist.main:
                if improved:
                    save_checkpoint({**model_payload(step.model, run_name, config), "epoch": epoch + 1,
                                     "val_metrics": metrics}, exp / "best_model.pt")
                writer.add_scalar("train/epoch_loss", running / max(seen, 1), epoch + 1)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], epoch + 1)
                writer.add_scalar("train/seconds_per_epoch", train_time, epoch + 1)
                for key, value in metrics.items():
                    writer.add_scalar(f"val/{key}", value, epoch + 1)
                if sample is not None and (epoch == 0 or (epoch + 1) % args.image_every == 0
                                           or epoch + 1 == args.epochs):
                    writer.add_image("val/target_zf_output_error", image_grid(sample), epoch + 1)
                writer.flush()
                epochs_bar.set_postfix(val_loss=f"{metrics['loss']:.4g}", psnr=f"{metrics['psnr']:.2f}")
                tqdm.write(f"epoch {epoch + 1}/{args.epochs}: train loss {running / max(seen, 1):.5f}, "
                           f"val loss {metrics['loss']:.5f}, PSNR {metrics['psnr']:.2f} dB, "
                           f"SSIM {metrics['ssim']:.4f}{' (best)' if improved else ''}, {train_time:.1f} s")
            save_last(epoch + 1, 0)
    if writer is not None:
        writer.add_hparams({k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                            for k, v in {**jsonable(args), **step.hparams()}.items()},
                           {"hparam/best_val_loss": best_loss}, run_name=".")
        writer.close()
        print(f"done: best validation L1 {best_loss:.5f}; checkpoints in {exp} "
              f"(best_model.pt, model.pt); TensorBoard: tensorboard --logdir {exp / 'summary'}")
    return exp


def add_arch_args(parser: argparse.ArgumentParser) -> None:
    """Architecture flags shared by the scripts that build fresh DC-CNNs."""
    g = parser.add_argument_group("architecture")
    g.add_argument("--ref-padding", type=int, default=0, choices=[0, 5],
                   help="zero-pad each block input by 5 pixels and crop before DF, as the public code does")
    g.add_argument("--residual", action="store_true", help="add the block input to its output (not in the paper)")


def arch_config(base, args: argparse.Namespace):
    """``base`` (a DCCNNConfig) with the architecture flags applied."""
    from dataclasses import replace
    return replace(base, ref_padding=args.ref_padding, residual=args.residual)
