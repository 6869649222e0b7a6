"""Sample grids of generative tasks, for every logger and as PNG files in the run's folder.

Works with any task that has ``sample(n, labels=None, noise=None)`` returning images in ``[-1, 1]``, a
``latent_dim`` and optionally ``num_classes`` and a ``fixed_noise`` buffer (GANTask, VAETask). Using the task's
fixed noise (saved in its checkpoint) makes grids of different epochs, and of a resumed run, directly comparable.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchvision.utils import make_grid

from segen.callbacks.images import log_image_grid

__all__ = ["SampleImageLogger", "slerp"]


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between latent vectors ``a, b (D,)`` at fractions ``t (T,)`` -> ``(T, D)``; it keeps
    the norm of Gaussian latents, where linear interpolation passes through unlikely low-norm points."""
    a_unit, b_unit = a / a.norm(), b / b.norm()
    omega = torch.acos((a_unit * b_unit).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    if omega.abs() < 1e-4:  # (nearly) parallel: linear interpolation is exact enough
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def _grid(images: Tensor, nrow: int) -> Tensor:
    images = (images.float().clamp(-1, 1) + 1) / 2  # (N, C, H, W) in [0, 1]
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=1.0)


class SampleImageLogger(Callback):
    """After each validation (every ``every_n_epochs``): a grid of ``num_images`` samples from the fixed noise, one row
    per class for a conditional task (the same noise in each column, so only the class changes down a column), and
    ``num_interpolations`` rows of slerp interpolations with ``interpolation_steps`` images each."""

    def __init__(
        self,
        num_images: int = 64,
        interpolation_steps: int = 8,
        num_interpolations: int = 4,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        if num_images < 1 or interpolation_steps < 2 or num_interpolations < 0 or every_n_epochs < 1:
            raise ValueError(
                "SampleImageLogger: num_images >= 1, interpolation_steps >= 2, num_interpolations >= 0 and "
                f"every_n_epochs >= 1 are required, got {num_images}, {interpolation_steps}, {num_interpolations}, "
                f"{every_n_epochs}"
            )
        self.num_images, self.interpolation_steps = num_images, interpolation_steps
        self.num_interpolations, self.every_n_epochs = num_interpolations, every_n_epochs

    def _noise(self, pl_module: LightningModule, n: int) -> Tensor:
        fixed = getattr(pl_module, "fixed_noise", None)
        if fixed is not None and len(fixed) >= n:
            return fixed[:n]
        return torch.randn(n, pl_module.latent_dim, generator=torch.Generator().manual_seed(0)).to(
            pl_module.device
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        epoch = trainer.current_epoch
        num_classes = getattr(pl_module, "num_classes", None)
        n = self.num_images
        noise = self._noise(pl_module, n)
        labels = torch.arange(n, device=pl_module.device) % num_classes if num_classes else None
        nrow = max(1, int(math.sqrt(n)))
        log_image_grid(
            trainer,
            "samples",
            _grid(pl_module.sample(n, labels=labels, noise=noise), nrow),
            f"samples_epoch{epoch:03d}.png",
        )
        if num_classes:
            columns = 8
            column_noise = self._noise(pl_module, columns).repeat(num_classes, 1)  # (K * 8, D)
            class_labels = torch.arange(num_classes, device=pl_module.device).repeat_interleave(columns)
            images = pl_module.sample(len(class_labels), labels=class_labels, noise=column_noise)
            log_image_grid(
                trainer, "samples_by_class", _grid(images, columns), f"samples_by_class_epoch{epoch:03d}.png"
            )
        if self.num_interpolations:
            ends = self._noise(pl_module, 2 * self.num_interpolations)
            t = torch.linspace(0, 1, self.interpolation_steps, device=ends.device)
            path = torch.cat([slerp(ends[2 * i], ends[2 * i + 1], t) for i in range(self.num_interpolations)])
            path_labels = None
            if num_classes:  # one class per row
                path_labels = (
                    torch.arange(self.num_interpolations, device=ends.device).repeat_interleave(
                        self.interpolation_steps
                    )
                    % num_classes
                )
            images = pl_module.sample(len(path), labels=path_labels, noise=path)
            log_image_grid(
                trainer,
                "interpolations",
                _grid(images, self.interpolation_steps),
                f"interpolations_epoch{epoch:03d}.png",
            )
