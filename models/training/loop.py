"""The one training loop behind train_teacher.py, train_sft.py and train_student_kd.py.

A script builds a :class:`TrainStep` (the network to train, its loss, its validation output; the project's are
in models/training/steps.py) and calls :func:`train` with its :class:`~models.training.config.TrainConfig`. The
loop owns everything else (the flags behind the config are in models/training/flags.py): seeding, device, data
loaders with a resumable shuffle, Adam + StepLR (or cosine), optional weight averaging
(models/training/averaging.py), validation with PSNR/SSIM, ``model.pt`` / ``best_model.pt``, exact ``--resume``,
SIGINT/SIGTERM handling, torchrun (DDP), tqdm and TensorBoard.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import Sample
from data.fft import magnitude
from models.checkpoints.format import arch_of, describe_arch, model_payload
from models.checkpoints.io import load_checkpoint, save_checkpoint
from models.training.averaging import weight_average
from models.training.config import TrainConfig
from models.training.distributed import Dist
from models.training.experiment import (drop_replaced_run, git_commit, prepare_exp_dir, restore_old_run,
                                        set_aside_old_run)
from models.evaluation.metrics import psnr, used_for
from models.training.logs import RunLog
from models.training.run_data import RunData
from models.training.speed import MEMORY_FORMATS, resolve_memory_format
from models.training.state import RunState
from data.outputs import folder_lock, write_json
from utils import UserError, first_line, machine, seed_everything


class TrainStep(nn.Module):
    """What a training script plugs into the loop.

    ``self.model`` is the network that is checkpointed under ``model``; any other registered submodule with
    parameters (e.g. a KD loss's regressor) is optimised too and stored under ``extra``. A network that must
    not be trained or saved (a frozen teacher) is held through :class:`Frozen`.
    """

    model: nn.Module

    # Set by the loop: may forward() run the backward pass itself? Not under DDP, whose gradient hooks expect
    # exactly one backward of the wrapped module's output.
    allow_own_backward = False
    # True when some trainable parameters sit out whole steps (DDP must then look for them every step).
    find_unused_parameters = False

    def forward(self, batch: Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss (scalar) and its terms (detached scalars) for a batch (a collated data.dataset.Sample).

        The loss keeps its autograd graph, unless :meth:`runs_own_backward` says this call computes the
        gradients itself; then it is returned detached."""
        raise NotImplementedError

    def runs_own_backward(self, batch: Sample) -> bool:
        """Whether ``forward(batch)`` will run the backward pass itself (only when :attr:`allow_own_backward`).
        The loop checks the answer against the loss it gets, so a loss detached by mistake is an error
        rather than a step that trains nothing."""
        return False

    def predict(self, batch: Sample) -> dict[str, torch.Tensor]:
        """Validation outputs, (B, 1, H, W) float32 each; the key ``"output"`` defines the validation loss,
        other keys (e.g. ``"student_branch1"``) get their own PSNR in the logs."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def hparams(self) -> dict:
        """Script-specific hyperparameters for TensorBoard's hparams tab."""
        return {}

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based), for schedules that change the loss."""

    def begins_stage(self, epoch: int) -> bool:
        """True when epoch (0-based) opens a new stage that must start as a separate run would: from the best
        model so far (``best_model.pt``), with a fresh Adam and StepLR and a new best validation loss."""
        return False


class Frozen(nn.Module):
    """Holds a network that follows its owner's ``.to()`` / ``.cuda()`` (device and memory layout) but is
    never trained, optimised, saved in ``state_dict()`` or synchronised by DDP: it stays in eval mode without
    gradients, and it is kept outside the module registry, which is what parameters(), state_dict() and DDP
    walk, while :meth:`_apply` (what ``.to()`` calls on every submodule) forwards to it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        # A tuple is not a Module, so nn.Module stores it as a plain attribute, outside the registry.
        self._held = (module.eval().requires_grad_(False),)

    @property
    def module(self) -> nn.Module:
        return self._held[0]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> "Frozen":
        return self  # the owner's train() must not switch dropout or batch norm of a frozen network

    def _apply(self, fn, recurse: bool = True):
        self.module._apply(fn)
        return self


# --------------------------------------------------------------------------- batches and validation

@torch.inference_mode()
def validate(step: TrainStep, loader: DataLoader, dist: Dist, amp: bool) -> tuple[dict, dict | None]:
    """Mean validation L1 of ``output`` (over its channels), the registry's validation metrics per slice of the
    magnitude (overall and per acceleration; models/evaluation/metrics.py), and the PSNR of every extra output;
    sums are reduced over ranks so all ranks see the same numbers.

    Also returns the first slice this rank saw as images for the logs, ``{"target", "zero_filled",
    "output"}`` each (1, 1, H, W) float32 on the CPU (None for an empty loader)."""
    step.eval()
    # Sums per group: "" is every slice, "_4x" etc. one acceleration; counts sit under "n".
    sums: dict[tuple[str, str], float] = {}
    images = None

    def add(group: str, key: str, value: float) -> None:
        sums[group, key] = sums.get((group, key), 0.0) + value

    for batch in loader:
        batch = batch.to(dist.device)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = step.predict(batch)
        outputs = {k: v.float() for k, v in outputs.items()}
        l1 = (outputs["output"] - batch.target).abs().mean(dim=(1, 2, 3)).cpu().numpy()
        target = magnitude(batch.target)[:, 0].double().cpu().numpy()
        recons = {k: magnitude(v)[:, 0].double().cpu().numpy() for k, v in outputs.items()}
        for i, acc in enumerate(batch.acc):
            for group in ("", f"_{acc}"):
                add(group, "n", 1.0)
                add(group, "loss", float(l1[i]))
                for metric in used_for("validation"):
                    add(group, metric.key, metric.function(target[i], recons["output"][i]))
            for key in recons.keys() - {"output"}:
                add("", f"psnr_{key}", psnr(target[i], recons[key][i]))
        if images is None:
            images = {"target": magnitude(batch.target[:1]).float().cpu(),
                      "zero_filled": magnitude(batch.zero_filled[:1]).float().cpu(),
                      "output": magnitude(outputs["output"][:1]).cpu()}
    keys = sorted(sums)
    totals = dist.all_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()
    sums = dict(zip(keys, totals))
    metrics = {f"{key}{group}": value / sums[group, "n"] for (group, key), value in sums.items() if key != "n"}
    return metrics, images


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


class Trainer:
    """One run of the loop, in the order a reader meets it: :meth:`build` (data, step, optimiser),
    :meth:`resume_from`, :meth:`open_logs`, then per epoch :meth:`train_epoch`, :meth:`validate`,
    :meth:`end_epoch` (best checkpoint, logs, ``model.pt``), and :meth:`finish`. Where the run stands (epoch,
    batch, step, best loss, RNG) is its :class:`~models.training.state.RunState`, which ``model.pt`` saves."""

    # A test's hook, set by tests/interrupt.py: called with the global step after each optimiser step and its
    # --save-every-iters checkpoint, before the stop check, so a test can signal the run at an exact step
    # instead of racing a timer. A staticmethod when set; None in every real run.
    after_step = None

    def __init__(self, config: TrainConfig, build_step, run_name: str, dist: Dist, roles: dict):
        self.config, self.build_step, self.run_name, self.dist, self.roles = config, build_step, run_name, dist, roles
        self.optim, self.run_config = config.optim, config.run
        self.exp: Path = config.run.exp_dir
        self.state = RunState()  # position, best validation loss, RNG: what --resume restores
        self.log: RunLog | None = None
        # A fresh run before its first model.pt: on failure its files go and a run it replaced comes back.
        self.before_first_model = False

    def run(self) -> Path:
        epochs = self.optim.epochs
        resume = prepare_exp_dir(self.config)
        if resume is not None and RunState.finished(resume, epochs):
            if self.dist.main:
                print(f"{self.exp} already finished {resume['epoch']} of {epochs} epochs; nothing to resume")
            return self.exp
        self.build(resume)
        if resume is not None:
            self.resume_from(resume)
        self.make_loaders()
        self.wrap()
        self.open_logs(resume)
        show = self.dist.main and not self.run_config.no_progress
        state = self.state
        epochs_bar = tqdm(range(state.epoch, epochs), initial=state.epoch, total=epochs,
                          desc=self.run_name, unit="epoch", disable=not show, dynamic_ncols=True)
        with _StopRequest() as stop:
            for epoch in epochs_bar:
                first_batch = state.batch_in_epoch  # non-zero only in the epoch a run resumed inside
                if first_batch == 0 and self.step.begins_stage(epoch):
                    self.begin_stage()
                train_loss, seconds = self.train_epoch(first_batch, stop, show)
                self.scheduler.step()
                if self.average is not None:
                    self.average.after_epoch()
                # Validation, and so best_model.pt, sees the averaged weights when averaging is on.
                with self.average.applied() if self.average is not None else contextlib.nullcontext():
                    metrics, images = validate(self.step, self.val_loader, self.dist, self.amp)
                    self.end_epoch(metrics, images, train_loss, seconds, epochs_bar)
                state.end_epoch()
                self.save_last()
        self.finish()
        return self.exp

    # ----------------------------------------------------------------------- set-up

    def build(self, resume: dict | None) -> None:
        """Seed, the run's data (checked against a resumed run), the step on its device in its memory layout,
        Adam and its schedule."""
        optim, run, dist = self.optim, self.run_config, self.dist
        seed_everything(optim.seed + dist.rank)
        self.data = RunData.load(self.config, resume)
        # The step is built for the data's image type (1 or 2 channels), known now.
        # Multi-coil data also give their coil count (a step that loads checkpoints checks them against it).
        coils = {} if self.data.coils is None else {"coils": self.data.coils}
        self.step = step = self.build_step(self.data.image, **coils)
        recorded = resume.get("config", {}).get("memory_format") if resume is not None else None
        self.memory_format = resolve_memory_format(run.memory_format, dist.device, self.data.shape, bool(run.amp),
                                                   recorded, batch=optim.batch_size)
        step.to(device=dist.device, memory_format=MEMORY_FORMATS[self.memory_format])
        self.amp = bool(run.amp)
        self.lr = optim.lr * (dist.world if optim.scale_lr else 1)
        self.params = [p for p in step.parameters() if p.requires_grad]
        self.average = weight_average(step.model, optim.ema, optim.average_last)
        self.build_optimizer()

    def build_optimizer(self) -> None:
        """A fresh Adam over the trainable parameters and its schedule (``--lr-schedule``; cosine over the epochs
        left from here)."""
        optim = self.optim
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        if optim.lr_schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                        T_max=optim.epochs - self.state.epoch)
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=optim.lr_step_size,
                                                             gamma=optim.lr_gamma)

    def begin_stage(self) -> None:
        """Start a stage of the step's schedule (:meth:`TrainStep.begins_stage`) from the previous stage's best
        model, with a fresh optimiser and schedule; every rank reads the same ``best_model.pt``. A run resumed
        at the stage's first epoch passes here again and gets the same start."""
        best = load_checkpoint(self.exp / "best_model.pt", "new stage:")
        self.step.model.load_state_dict(best["model"])
        self.build_optimizer()
        # A stage averages its own weights.
        self.average = weight_average(self.step.model, self.optim.ema, self.optim.average_last)
        self.state.new_stage()
        if self.dist.main:
            tqdm.write(f"epoch {self.state.epoch + 1}: new stage from best_model.pt of epoch {best['epoch']}, fresh "
                       "optimiser and learning-rate schedule")

    def resume_from(self, resume: dict) -> None:
        """Weights, optimiser, schedule, and the run's state (position, best loss, RNG) from ``model.pt``."""
        step = self.step
        # The architecture first: the settings that choose it are compared through it (ResumeRules.network_own).
        if resume.get("arch") != arch_of(step.model):
            raise UserError(f"--resume: {self.exp / 'model.pt'} holds a {describe_arch(resume.get('arch'), True)}, "
                            f"but these flags build a {describe_arch(arch_of(step.model), True)}; resume with the "
                            "original command")
        try:
            step.model.load_state_dict(resume["model"])
            step.load_state_dict({**step.state_dict(), **resume.get("extra", {})})
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            if self.average is not None:
                self.average.load_state_dict(resume["average"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"--resume: {self.exp / 'model.pt'} does not match this script and flags "
                            f"({first_line(exc)}); resume with the original command") from exc
        self.state = RunState.restore(resume, self.dist.rank, self.dist.world)

    def make_loaders(self) -> None:
        """The loaders, built after the RNG is restored, as the original run did."""
        self.train_loader, self.train_sampler, self.val_loader = self.data.loaders(self.config.data, self.optim,
                                                                                  self.dist)

    def wrap(self) -> None:
        """The module the loop calls: the step itself, or under torchrun the step inside DDP."""
        step, dist = self.step, self.dist
        # DDP's gradient hooks expect exactly one backward of the wrapped module's output.
        step.allow_own_backward = dist.world == 1
        self.net = step
        if dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                step, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                find_unused_parameters=step.find_unused_parameters)

    def open_logs(self, resume: dict | None) -> None:
        """``config.json`` (fresh runs), the TensorBoard writer and the start-up line, on rank 0."""
        dist, batch_size = self.dist, self.optim.batch_size
        self.settings = self.config.record(memory_format=self.memory_format, image=self.data.image,
                                           kspace=self.data.kspace, **self.data.coil_kind)
        self.record = {**self.settings, "run_name": self.run_name, "roles": self.roles, "git_commit": git_commit(),
                       "torch_version": str(torch.__version__), "machine": machine(), "device": str(dist.device),
                       "world_size": dist.world, "effective_batch_size": batch_size * dist.world,
                       "effective_lr": self.lr, "train_slices": len(self.data.train),
                       "validation_slices": len(self.data.validation),
                       "trainable_parameters": sum(p.numel() for p in self.params),
                       "model_parameters": sum(p.numel() for p in self.step.model.parameters()),
                       "content": self.data.content}
        if not dist.main:
            return
        if resume is None:
            self.before_first_model = True
            set_aside_old_run(self.exp)
            write_json(self.exp / "config.json", self.record)
        self.log = RunLog(self.exp, self.state.global_step if resume else None, self.optim.epochs,
                          self.run_config.image_every)
        print(f"{self.run_name}: {len(self.data.train)} training / {len(self.data.validation)} validation slices, "
              f"{self.record['model_parameters']:,} parameters, device {dist.device}, "
              f"batch {batch_size} x {dist.world} process(es) = {self.record['effective_batch_size']}, "
              f"lr {self.lr:g}; writing to {self.exp}", flush=True)

    # ----------------------------------------------------------------------- training

    def train_epoch(self, first_batch: int, stop: _StopRequest, show: bool) -> tuple[float, float]:
        """The state's epoch from batch ``first_batch`` on (non-zero when resumed inside it); returns (mean
        training loss, seconds)."""
        optim, run, dist, state = self.optim, self.run_config, self.dist, self.state
        epoch = state.epoch
        self.train_sampler.set_epoch(epoch, first_batch * optim.batch_size)
        self.step.start_epoch(epoch)
        self.step.train()
        pending: list[tuple[int, torch.Tensor, dict]] = []
        running, seen = 0.0, 0
        last = first_batch + len(self.train_loader) - 1
        batches = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{optim.epochs}", leave=False,
                       disable=not show, unit="batch", dynamic_ncols=True, initial=first_batch,
                       total=last + 1)
        t0 = time.time()
        for i, batch in enumerate(batches, start=first_batch):
            loss, terms = self.train_step(batch.to(dist.device))
            pending.append((i, loss, terms))
            # Losses stay on the device until the logging interval: no per-iteration host sync.
            if len(pending) >= run.log_every or i == last:
                losses = self.log_interval(pending)
                running += float(losses.sum())
                seen += len(losses)
                batches.set_postfix(loss=f"{running / seen:.4g}")
                pending.clear()
            saved = bool(run.save_every_iters and state.global_step % run.save_every_iters == 0)
            if saved:
                self.save_last()
            if self.after_step is not None:
                self.after_step(state.global_step)
            if stop.signal:
                if not saved:
                    self.save_last()
                if dist.main:
                    print(f"\nstopped by {stop.signal} in epoch {epoch + 1}; model.pt is saved. "
                          "Continue with the same command plus --resume", file=sys.stderr)
                sys.exit(130 if stop.signal == "SIGINT" else 143)
        batches.close()
        return running / max(seen, 1), time.time() - t0

    def train_step(self, batch: Sample) -> tuple[torch.Tensor, dict]:
        """One optimiser step; returns the detached loss and its terms."""
        self.optimizer.zero_grad(set_to_none=True)
        own_backward = self.step.runs_own_backward(batch)
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, terms = self.net(batch)
        if own_backward == loss.requires_grad:
            kind = type(self.step).__name__
            raise RuntimeError(
                f"{kind}.runs_own_backward() said {own_backward} but forward() returned a loss "
                f"{'with' if loss.requires_grad else 'without'} an autograd graph: a step that runs its own "
                "backward returns the loss detached, any other returns it attached (else nothing trains)")
        if not own_backward:
            loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.after_step()
        self.state.step_done()
        return loss.detach(), terms

    def log_interval(self, pending: list[tuple[int, torch.Tensor, dict]]) -> torch.Tensor:
        """The NaN check and TensorBoard scalars for the iterations in ``pending`` (iteration in epoch, loss,
        terms); returns their losses averaged over ranks (the global batch's, whatever the world size)."""
        losses = self.dist.all_sum(torch.stack([p[1] for p in pending]).float()) / self.dist.world
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            iteration = pending[int(bad[0])][0] + 1
            raise UserError(f"training loss became {losses[int(bad[0])].item()} at epoch {self.state.epoch + 1}, "
                            f"iteration {iteration}; the last good checkpoints in {self.exp} are kept. "
                            "Lower --lr or check the data")
        if self.log is not None:
            names = list(pending[0][2])
            # One device-to-host copy for the whole interval, not one per scalar.
            terms = torch.stack([torch.stack([p[2][n] for n in names]) for p in pending], dim=1).float().cpu()
            self.log.steps(self.state.global_step, losses.tolist(), dict(zip(names, terms.tolist())))
        return losses

    # ----------------------------------------------------------------------- checkpoints and logs

    def checkpoint(self) -> dict:
        """Everything ``--resume`` needs (the state's entries gather every rank's RNG: a collective call)."""
        return {**model_payload(self.step.model, self.run_name, self.record), "extra": self.step.extra_state(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                **self.state.entries(self.dist.world),
                **({"average": self.average.state_dict()} if self.average is not None else {})}

    def save_last(self) -> None:
        """``model.pt`` at the state's position (all ranks take part; rank 0 writes); the replaced run goes."""
        state = self.checkpoint()
        if self.dist.main:
            save_checkpoint(state, self.exp / "model.pt", record=True)
            drop_replaced_run(self.exp)
            self.before_first_model = False

    def end_epoch(self, metrics: dict, images: dict | None, train_loss: float, seconds: float,
                  epochs_bar) -> None:
        """``best_model.pt`` when validation improved and the epoch's logs (:meth:`run` then writes
        ``model.pt``, outside the averaged weights)."""
        epoch = self.state.epoch + 1  # epochs completed
        improved = self.state.record(metrics["loss"])
        if self.dist.main:
            if improved:
                save_checkpoint({**model_payload(self.step.model, self.run_name, self.record), "epoch": epoch,
                                 "val_metrics": metrics}, self.exp / "best_model.pt", record=True)
            epochs_bar.set_postfix(val_loss=f"{metrics['loss']:.4g}")
            self.log.epoch(epoch, train_loss, self.optimizer.param_groups[0]["lr"], seconds, metrics, images, improved)

    def finish(self) -> None:
        """TensorBoard's hparams entry and the closing line (rank 0)."""
        if self.log is not None:
            self.log.close({**self.settings, **self.step.hparams()}, self.state.best_loss)


def train(config: TrainConfig, build_step, run_name: str, roles: dict) -> Path:
    """Train ``build_step(image)`` (a :class:`TrainStep` for the data's image type, ``"magnitude"`` or
    ``"complex"``; for multi-coil data ``build_step(image, coils=N)``, N the coil count, against which a step that
    loads checkpoints checks them) as ``config`` says; ``roles`` (what the network is, see models/distill/roles.py) goes into
    ``config.json`` and every checkpoint, beside ``config.record()``.

    Writes into ``config.run.exp_dir``: ``config.json``, ``model.pt`` (every epoch, and every
    ``--save-every-iters``), ``best_model.pt`` (best validation L1) and ``summary/`` (TensorBoard).
    Returns the experiment folder.
    """
    dist = Dist(config.run.device)
    trainer = Trainer(config, build_step, run_name, dist, roles)
    exp = config.run.exp_dir
    try:
        # Rank 0 writes every file, so it alone holds the folder's lock (ranks of one job must not refuse each other).
        with folder_lock(exp, "--exp-dir") if dist.main else contextlib.nullcontext():
            try:
                return trainer.run()
            except BaseException:
                # A fresh run that never saved a model.pt leaves nothing of its own (a best_model.pt without
                # model.pt would pass for a result) and gives the run it replaced back.
                if trainer.before_first_model:
                    restore_old_run(exp)
                raise
    finally:
        dist.close()
