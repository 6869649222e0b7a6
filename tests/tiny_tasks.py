"""Tiny tasks of every family with matching data, for tests that run a few real training steps of each
(tests/test_no_sync.py, tests/test_bad_input.py)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, TensorDataset

from segen import (
    DCGANDiscriminator,
    DCGANGenerator,
    GANTask,
    InstanceSegmentationTask,
    MaskToImageTask,
    SegmentationTask,
    ShapesDataModule,
    UNet,
    VAETask,
    VQVAETask,
)
from segen.nets import SegmentationDiscriminator, SPADEGenerator


def image_dataset(n: int, channels: int, size: int) -> TensorDataset:
    """``n`` random images in [-1, 1) (seeded) with labels ``0, 1, 2, 0, ...``."""
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, channels, size, size, generator=g) * 2 - 1, torch.arange(n) % 3)


def segmentation() -> tuple[LightningModule, Any]:
    task = SegmentationTask(
        num_classes=4, in_channels=3, net=functools.partial(UNet, base_channels=4, depth=2), warmup_steps=0
    )
    return task, ShapesDataModule(image_size=32, num_train=8, num_val=4, batch_size=4)


def gan() -> tuple[LightningModule, Any]:
    task = GANTask(
        channels=1,
        image_size=16,
        latent_dim=8,
        generator=functools.partial(DCGANGenerator, base_channels=8),
        discriminator=functools.partial(DCGANDiscriminator, base_channels=8),
        fid_feature=None,
    )
    return task, DataLoader(image_dataset(8, 1, 16), batch_size=4)


def gan_r1() -> tuple[LightningModule, Any]:
    """R1 and DiffAugment: the regulariser's schedule is decided on the host (a step counter, no tensor)."""
    task, data = gan()
    task = GANTask(
        **{**task.hparams, "r1_gamma": 1.0, "r1_interval": 1, "diffaugment": "color,translation,cutout"},
        generator=functools.partial(DCGANGenerator, base_channels=8),
        discriminator=functools.partial(DCGANDiscriminator, base_channels=8),
    )
    return task, data


def vae() -> tuple[LightningModule, Any]:
    task = VAETask(
        channels=1, image_size=16, latent_dim=4, fid_feature=None, warmup_steps=0, kl_warmup_steps=10
    )
    return task, DataLoader(image_dataset(8, 1, 16), batch_size=4)


def vqvae() -> tuple[LightningModule, Any]:
    task = VQVAETask(channels=1, image_size=16, num_embeddings=16, embedding_dim=4, hidden=8, warmup_steps=0)
    return task, DataLoader(image_dataset(8, 1, 16), batch_size=4)


def mask_to_image() -> tuple[LightningModule, Any]:
    task = MaskToImageTask(
        num_classes=4,
        channels=3,
        image_size=16,
        latent_dim=8,
        generator=functools.partial(SPADEGenerator, base_channels=8, max_channels=8, hidden=8, num_blocks=2),
        discriminator=lambda channels, image_size, num_classes: SegmentationDiscriminator(
            num_classes=num_classes, channels=channels, base_channels=8, depth=2
        ),
    )
    return task, ShapesDataModule(image_size=16, num_train=4, num_val=2, batch_size=2)


def instance() -> tuple[LightningModule, Any]:
    task = InstanceSegmentationTask(
        num_classes=4,
        backbone="resnet18",
        input_min_size=48,
        input_max_size=48,
        anchor_sizes=(8, 16, 32, 64, 128),
        rois_per_image=32,
        warmup_steps=0,
    )
    # the syncs are in the forward (training_step); a frozen backbone and box head only make backward and Adam cheap
    task.model.backbone.body.requires_grad_(False)
    task.model.roi_heads.box_head.requires_grad_(False)
    data = ShapesDataModule(
        image_size=48, num_train=4, num_val=2, batch_size=2, mode="instance", max_shapes=3
    )
    return task, data


FAMILIES = {
    "segmentation": segmentation,
    "instance": instance,
    "gan": gan,
    "vae": vae,
    "vqvae": vqvae,
    "mask_to_image": mask_to_image,
}
