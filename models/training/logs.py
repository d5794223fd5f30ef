"""What a run tells its reader, on rank 0: TensorBoard (training losses per step, validation metrics and an image
grid per epoch, the hparams entry) and the console's epoch and closing lines."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from models.evaluation.metrics import used_for


def image_grid(images: dict) -> torch.Tensor:
    """(1, H, 4W) image: target | zero-filled | output | 5 x |error|, clipped to [0, 1] for display. images:
    ``{"target", "zero_filled", "output"}``, each (1, 1, H, W) float32."""
    target, zf, out = images["target"][0, 0], images["zero_filled"][0, 0], images["output"][0, 0]
    scale = float(target.max()) or 1.0
    panels = [target / scale, zf / scale, out / scale, 5 * (out - target).abs() / scale]
    return torch.cat(panels, dim=1).clamp(0, 1)[None]


class RunLog:
    """The TensorBoard writer of ``exp/summary`` and the console lines. ``purge_step``: a resumed run's global
    step, so that TensorBoard drops what the interrupted run logged after its last checkpoint."""

    def __init__(self, exp: Path, purge_step: int | None, epochs: int, image_every: int):
        from torch.utils.tensorboard import SummaryWriter  # slow to import: only where a run logs
        self.exp, self.epochs, self.image_every = exp, epochs, image_every
        self.writer = SummaryWriter(str(exp / "summary"), purge_step=purge_step)

    def steps(self, last_step: int, losses: list[float], terms: dict[str, list[float]]) -> None:
        """Training scalars of the steps up to global step ``last_step``: one loss per step, and per term name
        one value per step."""
        first = last_step - len(losses) + 1
        for index, (step, value) in enumerate(zip(range(first, last_step + 1), losses)):
            self.writer.add_scalar("train/loss", value, step)
            for name, values in terms.items():
                self.writer.add_scalar(f"train/{name}", values[index], step)

    def epoch(self, epoch: int, train_loss: float, lr: float, seconds: float, metrics: dict,
              images: dict | None, improved: bool) -> None:
        """Epoch ``epoch`` (1-based, completed): its scalars, the image grid on the first, every ``image_every``-th
        and the last epoch, and the console line with the registry's validation metrics."""
        writer = self.writer
        writer.add_scalar("train/epoch_loss", train_loss, epoch)
        writer.add_scalar("train/lr", lr, epoch)
        writer.add_scalar("train/seconds_per_epoch", seconds, epoch)
        for key, value in metrics.items():
            writer.add_scalar(f"val/{key}", value, epoch)
        if images is not None and (epoch == 1 or epoch % self.image_every == 0 or epoch == self.epochs):
            writer.add_image("val/target_zf_output_error", image_grid(images), epoch)
        writer.flush()
        scores = "".join(f", {m.name} {metrics[m.key]:.{m.digits}f}{' ' + m.unit if m.unit else ''}"
                         for m in used_for("validation"))
        tqdm.write(f"epoch {epoch}/{self.epochs}: train loss {train_loss:.5f}, "
                   f"val loss {metrics['loss']:.5f}{scores}{' (best)' if improved else ''}, {seconds:.1f} s")

    def close(self, hparams: dict, best_loss: float) -> None:
        """TensorBoard's hparams entry and the closing line."""
        self.writer.add_hparams({k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                                 for k, v in hparams.items()},
                                {"hparam/best_val_loss": best_loss}, run_name=".")
        self.writer.close()
        print(f"done: best validation L1 {best_loss:.5f}; checkpoints in {self.exp} "
              f"(best_model.pt, model.pt); TensorBoard: tensorboard --logdir {self.exp / 'summary'}")
