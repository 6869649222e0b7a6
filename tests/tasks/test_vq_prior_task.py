"""VQPriorTask: a PixelCNN over a frozen VQ-VAE's code maps: loading, training, sampling, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
from task_helpers import (
    assert_same_training_state,
    fit_and_resume,
    quiet_trainer,
    save_untrained_checkpoint,
)

from segen import DigitsDataModule, VAETask, VQPriorTask, VQVAETask

trainer = quiet_trainer


@pytest.fixture(scope="module")
def vqvae_ckpt(tmp_path_factory) -> str:
    """A small VQ-VAE trained briefly on 16 px digits (a 4x4 code map of 32 codes)."""
    path = tmp_path_factory.mktemp("vqvae")
    torch.manual_seed(0)
    vqvae = VQVAETask(channels=1, image_size=16, num_embeddings=32, embedding_dim=8, hidden=16, lr=3e-3)
    fit = trainer(path, max_steps=40, limit_val_batches=0)
    fit.fit(vqvae, DigitsDataModule(image_size=16, batch_size=64))
    fit.save_checkpoint(path / "vqvae.ckpt")
    return str(path / "vqvae.ckpt")


def prior(vqvae, **kwargs) -> VQPriorTask:
    return VQPriorTask(vqvae, hidden=16, num_layers=4, fid_feature=None, **kwargs)


def test_training_lowers_the_code_nll_and_leaves_the_vqvae_frozen(vqvae_ckpt, tmp_path):
    torch.manual_seed(0)
    task = prior(vqvae_ckpt, lr=3e-3, warmup_steps=0)
    frozen = {k: v.clone() for k, v in task.vqvae.state_dict().items() if k != "quantizer._extra_state"}
    dm = DigitsDataModule(image_size=16, batch_size=64)
    dm.setup("fit")
    images = torch.stack([dm.val_dataset[i][0] for i in range(128)])
    before = task._nll((images,))[0].item()
    assert before == pytest.approx(
        torch.log(torch.tensor(32.0)).item(), rel=0.2
    )  # about uniform at the start
    fit = trainer(tmp_path, max_epochs=3)
    fit.fit(task, dm)
    after = task._nll((images,))[0].item()
    assert after < 0.8 * before, (before, after)
    for key, value in task.vqvae.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key  # weights and the EMA codebook did not move
    assert not task.vqvae.training  # even though the trainer put the task in train mode
    optimised = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in task.prior.parameters()}
    m = fit.callback_metrics
    assert torch.isclose(m["val/nll_image"], m["val/nll"] * 16, rtol=1e-5)  # 4x4 codes per image


def test_sample_decodes_prior_draws_reproducibly_and_labels_choose_the_class(vqvae_ckpt):
    torch.manual_seed(0)
    task = prior(vqvae_ckpt, num_classes=3)
    out = task.sample(4)
    assert out.shape == (4, 1, 16, 16) and out.min() >= -1 and out.max() <= 1
    a = task.sample(3, labels=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(5))
    b = task.sample(3, labels=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    indices = task.prior.sample(
        2, 4, 4, labels=torch.tensor([0, 2]), generator=torch.Generator().manual_seed(1)
    )
    decoded = task.vqvae.decode(indices)
    again = task.sample(2, labels=torch.tensor([0, 2]), generator=torch.Generator().manual_seed(1))
    assert torch.equal(decoded, again)  # sample = decode(prior draw)
    with pytest.raises(ValueError, match="unconditional"):
        prior(vqvae_ckpt).sample(2, labels=torch.tensor([0, 1]))


def test_checkpoint_reloads_after_the_vqvae_file_is_gone(vqvae_ckpt, tmp_path):
    import shutil

    copy = tmp_path / "moved.ckpt"
    shutil.copy(vqvae_ckpt, copy)
    torch.manual_seed(0)
    task = prior(str(copy))
    fit = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    fit.fit(task, DigitsDataModule(image_size=16, batch_size=32))
    fit.save_checkpoint(tmp_path / "prior.ckpt")
    copy.unlink()
    again = VQPriorTask.load_from_checkpoint(tmp_path / "prior.ckpt", weights_only=True)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(again.sample(3, generator=g()), task.sample(3, generator=g()))
    assert again.hparams.vqvae["num_embeddings"] == 32


def test_a_glob_pattern_picks_the_newest_checkpoint(vqvae_ckpt, tmp_path):
    import os
    import shutil

    for i, name in enumerate(("a/checkpoints/last.ckpt", "b/checkpoints/last.ckpt")):
        (tmp_path / name).parent.mkdir(parents=True)
        shutil.copy(vqvae_ckpt, tmp_path / name)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    torch.manual_seed(0)
    newest = VQVAETask(channels=1, image_size=16, num_embeddings=8, embedding_dim=8, hidden=16)
    save_untrained_checkpoint(newest, tmp_path / "c" / "checkpoints" / "last.ckpt")
    assert prior(str(tmp_path / "**" / "last.ckpt")).num_embeddings == 8  # c/ is the newest
    with pytest.raises(FileNotFoundError, match=r"no VQ-VAE checkpoint matches '.*nothing/\*\*/last\.ckpt'"):
        prior(str(tmp_path / "nothing" / "**" / "last.ckpt"))


def test_bad_vqvae_arguments_are_named(vqvae_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VQ-VAE checkpoint 'nope\.ckpt' does not exist"):
        prior("nope.ckpt")
    with pytest.raises(ValueError, match=r"image_size=32 \(from the data\) but the VQ-VAE was trained with"):
        prior(vqvae_ckpt, image_size=32)
    with pytest.raises(ValueError, match=r"channels=3 \(from the data\)"):
        prior(vqvae_ckpt, channels=3)
    vae = VAETask(channels=1, image_size=16, latent_dim=4)
    save_untrained_checkpoint(vae, tmp_path / "vae.ckpt")
    with pytest.raises(ValueError, match=r"vae\.ckpt' is not a VQVAETask checkpoint"):
        prior(str(tmp_path / "vae.ckpt"))


def test_fit_on_digits_logs_fid_of_samples(vqvae_ckpt, tmp_path):
    torch.manual_seed(0)
    task = VQPriorTask(vqvae_ckpt, hidden=16, num_layers=4, fid_samples=128)
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=2)
    fit.fit(task, DigitsDataModule(image_size=16, batch_size=64))
    m = fit.callback_metrics
    assert m["val/fid"] > 0 and torch.isfinite(m["val/kid"]) and torch.isfinite(m["val/nll"])


def test_resume_from_an_epoch_checkpoint_equals_the_unbroken_run(vqvae_ckpt, tmp_path):
    unbroken, resumed, a, b = fit_and_resume(
        lambda: prior(vqvae_ckpt, num_classes=10, warmup_steps=3),
        lambda: DigitsDataModule(image_size=16, batch_size=256, conditional=True),
        tmp_path,
        limit_val_batches=1,
    )
    assert_same_training_state(unbroken, resumed, a, b)


def test_bf16_mixed_fits(vqvae_ckpt, tmp_path):
    torch.manual_seed(0)
    task = prior(vqvae_ckpt)
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1, precision="bf16-mixed")
    fit.fit(task, DigitsDataModule(image_size=16, batch_size=32))
    assert torch.isfinite(fit.callback_metrics["val/nll"])
    assert all(torch.isfinite(p).all() for p in task.prior.parameters())
