"""SampleImageLogger and slerp: grids from the task's fixed noise, per-class rows, interpolations, PNG files."""

from __future__ import annotations

import functools

import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from segen import GANTask, SampleImageLogger
from segen.callbacks.samples import slerp
from segen.nets import DCGANDiscriminator, DCGANGenerator


def test_slerp_keeps_the_ends_and_the_norm_of_orthogonal_unit_vectors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b)
    assert torch.allclose(path.norm(dim=1), torch.ones(5))  # linear interpolation would dip to 0.707
    assert torch.allclose(path[2], torch.tensor([0.5**0.5, 0.5**0.5]))


def test_logger_writes_sample_class_and_interpolation_grids(tmp_path):
    torch.manual_seed(0)
    gan = GANTask(
        channels=1,
        image_size=16,
        latent_dim=8,
        num_classes=3,
        fid_feature=None,
        generator=functools.partial(DCGANGenerator, base_channels=8),
        discriminator=functools.partial(DCGANDiscriminator, base_channels=8),
    )
    data = TensorDataset(torch.rand(16, 1, 16, 16) * 2 - 1, torch.arange(16) % 3)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[SampleImageLogger(num_images=16, interpolation_steps=4, num_interpolations=2)],
    )
    trainer.fit(gan, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    images = tmp_path / "images"
    names = sorted(p.name for p in images.glob("*.png"))
    assert names == ["interpolations_epoch000.png", "samples_by_class_epoch000.png", "samples_epoch000.png"]
    # 4x4 samples of 16 px with 2 px padding; 3 class rows of 8; 2 interpolation rows of 4
    assert Image.open(images / "samples_epoch000.png").size == (4 * 18 + 2, 4 * 18 + 2)
    assert Image.open(images / "samples_by_class_epoch000.png").size == (8 * 18 + 2, 3 * 18 + 2)
    assert Image.open(images / "interpolations_epoch000.png").size == (4 * 18 + 2, 2 * 18 + 2)
