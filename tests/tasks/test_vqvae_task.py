"""VQVAETask: gradients, logged codebook statistics, training lowers the reconstruction error, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch import Trainer
from task_helpers import assert_same_training_state, fit_and_resume

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


def test_encode_then_decode_is_the_reconstruction_and_leaves_the_codebook():
    torch.manual_seed(0)
    vqvae = small()
    vqvae.train()
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    before = vqvae.quantizer.embedding.clone()
    indices = vqvae.encode(images)
    assert indices.shape == (3, *vqvae.code_shape) == (3, 4, 4) and indices.dtype == torch.long
    assert torch.equal(vqvae.quantizer.embedding, before)  # encode never updates the EMA codebook
    assert torch.allclose(vqvae.decode(indices), vqvae.reconstruct(images), atol=1e-6)


def test_resume_from_an_epoch_checkpoint_equals_the_unbroken_run(tmp_path):
    """Codebook EMAs, the restart generator, weights, Adam and the schedule all continue exactly."""
    unbroken, resumed, a, b = fit_and_resume(
        lambda: VQVAETask(
            channels=1, image_size=16, num_embeddings=64, embedding_dim=8, hidden=16, warmup_steps=5
        ),
        lambda: DigitsDataModule(image_size=16, batch_size=128),
        tmp_path,
        limit_val_batches=1,
    )
    assert_same_training_state(unbroken, resumed, a, b)
    assert int(unbroken.quantizer.steps) == a.global_step == 2 * a.num_training_batches


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset
    from segen import VQVAETask

    out, devices, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    images = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    task = VQVAETask(channels=1, image_size=8, num_embeddings=16, embedding_dim=4, hidden=8, warmup_steps=0,
                     lr=1e-3)
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=3,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False)
    # rank r's k-th batch is images[8k + 4r : 8k + 4r + 4]: together the single process's k-th batch of 8
    rank = int(os.environ.get("LOCAL_RANK", 0))
    mine = torch.cat([images[8 * k + batch_size * rank :][:batch_size] for k in range(3)])
    trainer.fit(task, DataLoader(TensorDataset(mine), batch_size=batch_size))
    torch.save({k: v.detach() for k, v in task.state_dict().items() if k != "quantizer._extra_state"},
               f"{out}/world{devices}_rank{trainer.global_rank}.pt")
    """
)


def test_two_process_ddp_codebooks_are_identical_and_learn_from_the_global_batch(tmp_path):
    """After 3 DDP steps (2 gloo processes, 4 images each) both ranks hold the same codebook, and it equals the
    codebook of one process fed the same 8 images per step: the EMA statistics were all-reduced, not rank 0's
    (DDP's buffer broadcast alone would make the ranks equal but train the codebook on half the data)."""
    script = tmp_path / "ddp_vq.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for devices, batch_size in ((2, 4), (1, 8)):
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path), str(devices), str(batch_size)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1, single = (
        torch.load(tmp_path / f) for f in ("world2_rank0.pt", "world2_rank1.pt", "world1_rank0.pt")
    )
    for name in ("embedding", "cluster_size", "embed_sum", "steps"):
        key = f"quantizer.{name}"
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.allclose(rank0[key], single[key], atol=1e-5), key
    assert int(rank0["quantizer.steps"]) == 3
    for (
        key
    ) in rank0:  # and the nets: DDP-averaged gradients == the single process's gradients on the whole batch
        assert torch.allclose(rank0[key].float(), single[key].float(), atol=1e-5), key


def test_bf16_mixed_fits_with_fp32_codebook_statistics(tmp_path):
    from task_helpers import quiet_trainer

    torch.manual_seed(0)
    vqvae = small(warmup_steps=0)
    quiet_trainer(tmp_path, max_steps=4, limit_val_batches=1, precision="bf16-mixed").fit(
        vqvae, DigitsDataModule(image_size=16, batch_size=32)
    )
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in vqvae.parameters())
    q = vqvae.quantizer
    assert q.embedding.dtype == q.cluster_size.dtype == q.embed_sum.dtype == torch.float32
    assert int(q.steps) == 4 and torch.isfinite(q.embedding).all()
