"""SampleImageLogger and slerp: grids from the task's fixed noise, per-class rows, interpolations, PNG files."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from task_helpers import quiet_trainer
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
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=1,
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


def _fit_with(task, callbacks, tmp_path, logger=False) -> Trainer:
    from segen import DigitsDataModule

    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=logger, callbacks=callbacks
    )
    trainer.fit(
        task,
        DigitsDataModule(
            image_size=16, batch_size=32, conditional=getattr(task, "num_classes", None) is not None
        ),
    )
    return trainer


def test_reconstruction_logger_puts_inputs_above_reconstructions_for_every_logger(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from segen import DigitsDataModule, ReconstructionLogger, VAETask
    from segen.callbacks.samples import fixed_validation_batch

    torch.manual_seed(0)
    vae = VAETask(channels=1, image_size=16, latent_dim=4, num_classes=10, fid_feature=None, iwae_samples=0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _fit_with(vae, [ReconstructionLogger(num_images=6)], tmp_path, logger=logger)
    png = tmp_path / "tb" / "version_0" / "images" / "reconstructions_epoch000.png"
    grid = torch.from_numpy(np.array(Image.open(png))).permute(2, 0, 1).float() / 255
    assert grid.shape == (3, 2 * 18 + 2, 6 * 18 + 2)  # 2 rows (inputs, reconstructions) of 6
    images, labels = fixed_validation_batch(trainer, 6)
    dm = DigitsDataModule(image_size=16, batch_size=32, conditional=True)
    dm.setup("fit")
    assert torch.equal(images, torch.stack([dm.val_dataset[i][0] for i in range(6)]))
    expected = (torch.cat([images, vae.reconstruct(images, labels)]).clamp(-1, 1) + 1) / 2
    top_left = grid[0, 2:18, 2:18]  # first input; PNG quantises to 8 bits
    assert torch.allclose(top_left, expected[0, 0], atol=1 / 255 + 1e-6)
    first_recon = grid[0, 20:36, 2:18]
    assert torch.allclose(first_recon, expected[6, 0], atol=1 / 255 + 1e-6)
    assert list((tmp_path / "tb" / "version_0").glob("events.out.tfevents.*"))  # and TensorBoard got it


def test_latent_traversal_rows_are_the_most_used_dimensions(tmp_path):
    from segen import LatentTraversalLogger, VAETask

    torch.manual_seed(0)
    vae = VAETask(channels=1, image_size=16, latent_dim=6, fid_feature=None, iwae_samples=0)
    callback = LatentTraversalLogger(num_dims=3, steps=5, num_images=32)
    trainer = _fit_with(vae, [callback], tmp_path)
    assert Image.open(tmp_path / "images" / "traversals_epoch000.png").size == (5 * 18 + 2, 3 * 18 + 2)
    from segen.callbacks.samples import fixed_validation_batch

    images, _ = fixed_validation_batch(trainer, 32)
    mu, logvar = vae.encode(images)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).mean(0)
    assert callback.last_dims == kl.argsort(descending=True)[:3].tolist()


def test_latent_traversal_refuses_a_task_without_a_posterior(tmp_path):
    from segen import LatentTraversalLogger, VQVAETask

    vq = VQVAETask(channels=1, image_size=16, num_embeddings=8, embedding_dim=4, hidden=8)
    with pytest.raises(TypeError, match="LatentTraversalLogger needs a task with encode"):
        _fit_with(vq, [LatentTraversalLogger()], tmp_path)
