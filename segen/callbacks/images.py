"""Image logging that works with every logger: W&B, TensorBoard, and always PNG files in the run's folder.

Tasks never call a logger's image API; this callback reads a fixed set of validation images, asks the task for its
prediction (``task(images)``), and hands one grid to each logger it knows, writing the same grid as a PNG so the
picture exists even with CSV logging or no logger at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

__all__ = ["SegmentationImageLogger", "colorize", "log_image_grid", "run_dir", "to_unit_range"]

# A fixed, high-contrast palette (class 0 black); classes beyond its length reuse it cyclically.
_PALETTE = (
    torch.tensor(
        [
            (0, 0, 0),
            (230, 25, 75),
            (60, 180, 75),
            (255, 225, 25),
            (0, 130, 200),
            (245, 130, 48),
            (145, 30, 180),
            (70, 240, 240),
            (240, 50, 230),
            (210, 245, 60),
            (250, 190, 212),
            (0, 128, 128),
            (220, 190, 255),
            (170, 110, 40),
            (255, 250, 200),
            (128, 0, 0),
            (170, 255, 195),
            (128, 128, 0),
            (255, 215, 180),
            (0, 0, 128),
            (128, 128, 128),
        ],
        dtype=torch.float32,
    )
    / 255.0
)
_IGNORE_COLOR = torch.tensor([1.0, 1.0, 1.0])


def colorize(masks: Tensor, ignore_index: int = 255) -> Tensor:
    """Class maps ``(B, H, W)`` long -> RGB ``(B, 3, H, W)`` in ``[0, 1]``; ignored pixels are white."""
    palette = _PALETTE.to(masks.device)
    ignored = masks == ignore_index
    rgb = palette[masks.clamp(min=0) % len(palette)]  # (B, H, W, 3)
    rgb[ignored] = _IGNORE_COLOR.to(masks.device)
    return rgb.permute(0, 3, 1, 2)


def to_unit_range(images: Tensor, trainer: Trainer) -> Tensor:
    """Undo the data module's normalisation when it offers ``denormalize``; else rescale each image to [0, 1]."""
    denormalize = getattr(trainer.datamodule, "denormalize", None)
    if callable(denormalize):
        images = denormalize(images)
    else:
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - lo) / (hi - lo).clamp_min(1e-8)
    images = images.clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images[:, :3]


def run_dir(trainer: Trainer) -> Path:
    """The run's folder: beside its checkpoints when there are any, else the logger's or the root folder."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        return Path(ckpt.dirpath).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


def log_image_grid(trainer: Trainer, key: str, grid: Tensor, filename: str) -> Path:
    """Send ``grid`` (3, H, W) in [0, 1] to every W&B / TensorBoard logger and save it as ``<run>/images/<filename>``."""
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)
    path = run_dir(trainer) / "images" / filename
    os.makedirs(path.parent, exist_ok=True)
    save_image(grid, path)
    return path


class SegmentationImageLogger(Callback):
    """Every ``every_n_epochs``-th validation run (the first included), log image | truth | prediction rows for fixed validation images.

    The images are the first ``num_images`` items of ``trainer.datamodule.val_dataset`` (the same every epoch, so
    progress is visible); the grid goes to W&B or TensorBoard and to ``<run>/images/val_predictions_*.png``.
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1, ignore_index: int = 255) -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(
                f"SegmentationImageLogger: num_images and every_n_epochs must be >= 1, "
                f"got num_images={num_images}, every_n_epochs={every_n_epochs}"
            )
        self.num_images, self.every_n_epochs, self.ignore_index = num_images, every_n_epochs, ignore_index
        self.last_path: Path | None = None
        self._calls = 0

    def _fixed_batch(self, trainer: Trainer) -> tuple[Tensor, Tensor]:
        dataset = getattr(trainer.datamodule, "val_dataset", None)
        if dataset is None:
            raise RuntimeError(
                "SegmentationImageLogger needs trainer.datamodule.val_dataset (items (image, mask)); "
                f"the data module {type(trainer.datamodule).__name__} has none"
            )
        items = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        return torch.stack([im for im, _ in items]), torch.stack([torch.as_tensor(m) for _, m in items])

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._calls += 1
        if (self._calls - 1) % self.every_n_epochs != 0:
            return
        images, masks = self._fixed_batch(trainer)  # (N, C, H, W), (N, H, W)
        was_training = pl_module.training
        pl_module.eval()
        preds = pl_module(images.to(pl_module.device)).argmax(dim=1).cpu()  # (N, H, W)
        pl_module.train(was_training)
        # rows of three: image | truth | prediction
        panels = torch.stack(
            [
                to_unit_range(images.float(), trainer),
                colorize(masks.long(), self.ignore_index),
                colorize(preds, self.ignore_index),
            ],
            dim=1,
        ).flatten(0, 1)  # (3N, 3, H, W)
        grid = make_grid(panels, nrow=3, padding=2, pad_value=1.0)
        name = f"val_predictions_epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}.png"
        self.last_path = log_image_grid(trainer, "val/predictions", grid, name)
