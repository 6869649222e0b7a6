"""Image grids of generative tasks, for every logger and as PNG files in the run's folder.

* :class:`SampleImageLogger`: samples, one row per class, and latent interpolations. Works with any task that has
  ``sample(n, labels=None, noise=None)`` returning images in ``[-1, 1]``, a ``latent_dim`` and optionally
  ``num_classes`` and a ``fixed_noise`` buffer (GANTask, VAETask); a task without ``latent_dim`` (the VQ-VAE prior)
  gets ``sample(n, labels=..., generator=<seeded>)`` and no interpolations. The task's fixed noise (saved in its
  checkpoint) makes grids of different epochs, and of a resumed run, directly comparable.
* :class:`ReconstructionLogger`: validation images above their reconstructions (``task.reconstruct``; VAETask,
  VQVAETask).
* :class:`SynthesisImageLogger`: for mask-to-image synthesis, each validation mask next to its real image and
  images generated from it with ``num_styles`` noise vectors (``task.generate(masks, noise)``).
* :class:`LatentTraversalLogger`: for a VAE, one row per latent dimension, that dimension swept over
  ``[-span, span]`` around an image's posterior mean; the rows are the dimensions with the largest KL first (the
  active units), so the grid shows what the model uses.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchvision.utils import make_grid

from segen.callbacks.images import colorize, log_image_grid, to_unit_range

__all__ = [
    "LatentTraversalLogger",
    "ReconstructionLogger",
    "SampleImageLogger",
    "SynthesisImageLogger",
    "slerp",
]


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
        if not _due(trainer, self.every_n_epochs):
            return
        epoch = trainer.current_epoch
        num_classes = getattr(pl_module, "num_classes", None)
        latent = getattr(pl_module, "latent_dim", None) is not None
        n = self.num_images

        def sample(count: int, labels: Tensor | None, noise_rows: int) -> Tensor:
            if latent:
                noise = self._noise(pl_module, noise_rows)
                return pl_module.sample(count, labels=labels, noise=noise.repeat(count // noise_rows, 1))
            # no latent (an autoregressive prior): a seeded generator, so epochs stay comparable
            return pl_module.sample(count, labels=labels, generator=torch.Generator().manual_seed(0))

        labels = torch.arange(n, device=pl_module.device) % num_classes if num_classes else None
        nrow = max(1, int(math.sqrt(n)))
        log_image_grid(trainer, "samples", _grid(sample(n, labels, n), nrow), f"samples_epoch{epoch:03d}.png")
        if num_classes:
            columns = 8  # with a latent: the same noise in every row, so only the class changes down a column
            class_labels = torch.arange(num_classes, device=pl_module.device).repeat_interleave(columns)
            images = sample(len(class_labels), class_labels, columns)
            log_image_grid(
                trainer, "samples_by_class", _grid(images, columns), f"samples_by_class_epoch{epoch:03d}.png"
            )
        if self.num_interpolations and latent:
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


def _due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Log on rank 0, after real validations (not the sanity check), every ``every_n_epochs`` epochs."""
    if trainer.sanity_checking or not trainer.is_global_zero:
        return False
    return (trainer.current_epoch + 1) % every_n_epochs == 0


def fixed_validation_batch(trainer: Trainer, n: int) -> tuple[Tensor, Tensor | None]:
    """The first ``n`` validation items ``(images (n, C, H, W), targets or None)``: from the data module's
    ``val_dataset`` when it has one, else from the validation loader(s). Targets are what the data pairs images
    with: class labels ``(n,)`` or masks ``(n, H, W)``."""
    dataset = getattr(trainer.datamodule, "val_dataset", None) if trainer.datamodule is not None else None
    if dataset is not None:
        items = [dataset[i] for i in range(min(n, len(dataset)))]
        batch = [torch.stack([torch.as_tensor(item[j]) for item in items]) for j in range(len(items[0]))]
    else:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            raise RuntimeError("the image logger needs validation data (a val_dataset or a val dataloader)")
        parts: list[list[Tensor]] = []
        for batch_ in loader:
            batch_ = batch_ if isinstance(batch_, (list, tuple)) else [batch_]
            parts.append(list(batch_))
            if sum(len(p[0]) for p in parts) >= n:
                break
        batch = [torch.cat([p[j] for p in parts])[:n] for j in range(len(parts[0]))]
    return batch[0], (batch[1] if len(batch) > 1 else None)


def _class_labels(targets: Tensor | None) -> Tensor | None:
    return targets.long() if targets is not None and targets.ndim == 1 else None


class ReconstructionLogger(Callback):
    """Fixed validation images (row 1) above their reconstructions (row 2), ``num_images`` per row, for tasks with
    ``reconstruct(images[, labels])``; labels go to conditional tasks (``num_classes`` set)."""

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__()
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(
                f"ReconstructionLogger: num_images and every_n_epochs must be >= 1, got {num_images}, "
                f"{every_n_epochs}"
            )
        self.num_images, self.every_n_epochs = num_images, every_n_epochs

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs):
            return
        images, targets = fixed_validation_batch(trainer, self.num_images)
        labels = _class_labels(targets)
        images = images.to(pl_module.device)
        if getattr(pl_module, "num_classes", None) and labels is not None:
            recon = pl_module.reconstruct(images, labels.to(pl_module.device))
        else:
            recon = pl_module.reconstruct(images)
        grid = _grid(torch.cat([images, recon.to(images.dtype)]), len(images))  # inputs above reconstructions
        log_image_grid(
            trainer, "reconstructions", grid, f"reconstructions_epoch{trainer.current_epoch:03d}.png"
        )


class LatentTraversalLogger(Callback):
    """For a VAE (``encode(images[, labels]) -> (mu, logvar)`` and ``sample(n, labels, noise)``): one row per
    latent dimension, ``steps`` images with that dimension set to ``linspace(-span, span)`` and the others at the
    posterior mean of the first validation image. Rows: the ``num_dims`` dimensions with the largest mean KL over
    ``num_images`` validation images, largest first."""

    def __init__(
        self,
        num_dims: int = 8,
        steps: int = 9,
        span: float = 3.0,
        num_images: int = 64,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__()
        if num_dims < 1 or steps < 2 or span <= 0 or num_images < 1 or every_n_epochs < 1:
            raise ValueError(
                "LatentTraversalLogger: num_dims >= 1, steps >= 2, span > 0, num_images >= 1 and every_n_epochs >= 1 "
                f"are required, got {num_dims}, {steps}, {span}, {num_images}, {every_n_epochs}"
            )
        self.num_dims, self.steps, self.span = num_dims, steps, span
        self.num_images, self.every_n_epochs = num_images, every_n_epochs
        self.last_dims: list[int] = []

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs):
            return
        if not callable(getattr(pl_module, "encode", None)) or getattr(pl_module, "latent_dim", None) is None:
            raise TypeError(
                f"LatentTraversalLogger needs a task with encode(images) -> (mu, logvar) and latent_dim (a VAE); "
                f"{type(pl_module).__name__} has none"
            )
        images, targets = fixed_validation_batch(trainer, self.num_images)
        labels = _class_labels(targets)
        conditional = bool(getattr(pl_module, "num_classes", None)) and labels is not None
        labels = labels.to(pl_module.device) if conditional else None
        mu, logvar = pl_module.encode(images.to(pl_module.device), labels)  # (N, Z) each
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).mean(0)  # (Z,) mean KL per dimension, nats
        dims = kl.argsort(descending=True)[: min(self.num_dims, len(kl))]
        self.last_dims = dims.tolist()
        values = torch.linspace(-self.span, self.span, self.steps, device=mu.device)
        z = mu[:1].repeat(len(dims) * self.steps, 1)  # (rows * steps, Z)
        for row, dim in enumerate(dims):
            z[row * self.steps : (row + 1) * self.steps, dim] = values
        row_labels = labels[:1].repeat(len(z)) if labels is not None else None
        samples = pl_module.sample(len(z), labels=row_labels, noise=z)
        log_image_grid(
            trainer,
            "traversals",
            _grid(samples, self.steps),
            f"traversals_epoch{trainer.current_epoch:03d}.png",
        )


class SynthesisImageLogger(Callback):
    """Rows of mask | real image | ``num_styles`` generated images (fixed noise per column) for ``num_images``
    validation pairs, for tasks with ``generate(masks, noise)`` and ``latent_dim`` (MaskToImageTask)."""

    def __init__(self, num_images: int = 8, num_styles: int = 2, every_n_epochs: int = 1) -> None:
        super().__init__()
        if num_images < 1 or num_styles < 1 or every_n_epochs < 1:
            raise ValueError(
                f"SynthesisImageLogger: num_images, num_styles and every_n_epochs must be >= 1, got {num_images}, "
                f"{num_styles}, {every_n_epochs}"
            )
        self.num_images, self.num_styles, self.every_n_epochs = num_images, num_styles, every_n_epochs

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs):
            return
        images, masks = fixed_validation_batch(trainer, self.num_images)
        if masks is None or masks.ndim != 3:
            raise ValueError(
                "SynthesisImageLogger needs validation pairs (image, mask (H, W)) from segmentation data"
            )
        n = len(images)
        rng = torch.Generator().manual_seed(0)
        styles = torch.randn(self.num_styles, pl_module.latent_dim, generator=rng)  # one noise per column
        generated = [
            pl_module.generate(masks, styles[k : k + 1].expand(n, -1)) for k in range(self.num_styles)
        ]
        unit = [(g.cpu().float() + 1) / 2 for g in generated]  # (N, C, H, W) in [0, 1] each
        ignore = getattr(pl_module, "ignore_index", 255)
        columns = [colorize(masks.long(), ignore), to_unit_range(images.float(), trainer), *unit]
        columns = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c[:, :3] for c in columns]
        panels = torch.stack(columns, dim=1).flatten(0, 1)  # (N * columns, 3, H, W)
        grid = make_grid(panels, nrow=len(columns), padding=2, pad_value=1.0)
        log_image_grid(trainer, "synthesis", grid, f"synthesis_epoch{trainer.current_epoch:03d}.png")
