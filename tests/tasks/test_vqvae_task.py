"""VQVAETask: gradients, logged codebook statistics, training lowers the reconstruction error, checkpoints."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from segen import DigitsDataModule, VQVAETask


def small(**kwargs) -> VQVAETask:
    return VQVAETask(channels=1, image_size=16, num_embeddings=32, embedding_dim=8, hidden=16, **kwargs)


def test_every_parameter_gets_a_gradient_and_the_codebook_none():
    torch.manual_seed(0)
    vqvae = small()
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    recon, vq = vqvae(images)
    assert recon.shape == images.shape and vq.indices.shape == (4, 4, 4)
    ((recon - images).square().mean() + vq.commitment_loss).backward()
    for name, p in vqvae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(b.requires_grad for b in vqvae.quantizer.buffers())


def test_training_lowers_reconstruction_error_and_logs_codebook_use(tmp_path):
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=16, batch_size=64)
    vqvae = small(lr=3e-3, warmup_steps=0)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    dm.setup("fit")
    images = torch.stack([dm.val_dataset[i][0] for i in range(64)])
    before = (vqvae.reconstruct(images) - images).square().mean().item()
    trainer.fit(vqvae, dm)
    after = (vqvae.reconstruct(images) - images).square().mean().item()
    assert after < 0.5 * before
    m = trainer.callback_metrics
    assert 1.0 <= m["val/perplexity"] <= 32 and 0 < m["val/usage"] <= 1
    assert m["val/recon"] == pytest.approx(after, rel=0.5)


def test_checkpoint_holds_the_codebook(tmp_path):
    torch.manual_seed(0)
    vqvae = small()
    vqvae.train()
    vqvae(torch.rand(8, 1, 16, 16) * 2 - 1)  # one EMA update moves the codebook
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(vqvae)
    trainer.save_checkpoint(tmp_path / "vq.ckpt")
    again = VQVAETask.load_from_checkpoint(tmp_path / "vq.ckpt")
    assert torch.equal(again.quantizer.embedding, vqvae.quantizer.embedding)
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(again.reconstruct(images), vqvae.reconstruct(images))


def test_bad_image_size_is_named():
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*num_downsamples = 4"):
        VQVAETask(channels=1, image_size=18)
