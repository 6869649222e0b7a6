"""VAETask: gradients, the ELBO's logged parts, KL warm-up, the IWAE bound, sampling, checkpoints, bf16."""

from __future__ import annotations

import math

import pytest
import torch
from task_helpers import assert_same_training_state, fit_and_resume, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from segen import DigitsDataModule
from segen.tasks.vae import VAETask

trainer = quiet_trainer


def binary_loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, 16, 16, generator=g) > 0.5).float() * 2 - 1
    return DataLoader(TensorDataset(images, torch.arange(n) % 3), batch_size=batch_size)


@pytest.mark.parametrize(
    "kwargs",
    [{"likelihood": "gaussian"}, {"likelihood": "bernoulli", "num_classes": 3}, {"likelihood": "logistic"}],
    ids=["gaussian", "bernoulli-conditional", "logistic"],
)
def test_every_parameter_gets_a_gradient(kwargs):
    torch.manual_seed(0)
    vae = VAETask(channels=1, image_size=16, latent_dim=4, **kwargs)
    images, labels = next(iter(binary_loader()))
    parts = vae.compute_elbo(images, labels if vae.num_classes else None)
    parts.loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_fit_logs_the_elbo_in_nats_and_the_iwae_bound_is_tighter(tmp_path):
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=16, batch_size=64)
    vae = VAETask(channels=1, image_size=16, latent_dim=8, iwae_samples=32, warmup_steps=5, fid_samples=128)
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(vae, dm)
    m = fit.callback_metrics
    assert torch.isclose(m["val/elbo"], -(m["val/recon"] + m["val/kl"]), atol=1e-3)
    assert m["val/kl"] > 0
    assert m["val/nll_iwae"] < -m["val/elbo"]  # the importance-weighted bound is tighter than the ELBO
    num_dims = 16 * 16
    expected_bpd = (-m["val/elbo"] + num_dims * torch.log(torch.tensor(127.5))) / (
        num_dims * torch.log(torch.tensor(2.0))
    )
    assert torch.isclose(m["val/bpd"], expected_bpd, rtol=1e-4)
    assert 0 <= m["val/mse"] < 1.0
    assert m["val/fid"] > 0 and torch.isfinite(
        m["val/kid"]
    )  # samples in the digits classifier's feature space


def test_training_lowers_the_negative_elbo(tmp_path):
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=16, batch_size=64, binarize=True)
    dm.setup("fit")
    images = torch.stack([dm.val_dataset[i][0] for i in range(64)])
    vae = VAETask(channels=1, image_size=16, latent_dim=8, likelihood="bernoulli", warmup_steps=0, lr=3e-3)
    state = vae.noise_rng.get_state()
    before = vae.compute_elbo(images, None).loss.item()
    trainer(tmp_path, max_steps=60, limit_val_batches=0).fit(vae, dm)
    vae.noise_rng.set_state(state)
    after = vae.compute_elbo(images, None).loss.item()
    assert after < 0.75 * before, (before, after)  # nats per held-out image


def test_sides_that_are_not_powers_of_two_train(tmp_path):
    """28 px (MNIST's side): 28 -> 14 -> 7 -> 4 in the encoder, back up in the decoder (``side_ladder``)."""
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=28, batch_size=64, binarize=True)
    dm.setup("fit")
    images = torch.stack([dm.val_dataset[i][0] for i in range(64)])  # (64, 1, 28, 28)
    vae = VAETask(channels=1, image_size=28, latent_dim=8, likelihood="bernoulli", warmup_steps=0, lr=3e-3)
    assert vae.decoder.sides == [4, 7, 14, 28]  # 4 -> 7 is a 3x3 transposed convolution (2x - 1)
    assert vae.encoder.head.in_features == vae.encoder.features[-3].out_channels * 16
    assert vae.reconstruct(images[:4]).shape == (4, 1, 28, 28) and vae.sample(3).shape == (3, 1, 28, 28)
    state = vae.noise_rng.get_state()
    before = vae.compute_elbo(images, None).loss.item()
    trainer(tmp_path, max_steps=30, limit_val_batches=0).fit(vae, dm)
    vae.noise_rng.set_state(state)
    after = vae.compute_elbo(images, None).loss.item()
    assert after < 0.75 * before, (before, after)  # nats per held-out image


def test_the_gaussian_scale_is_fitted_to_each_batch_and_evaluation_uses_the_running_mean():
    torch.manual_seed(0)
    vae = VAETask(channels=1, image_size=16, latent_dim=4)
    assert float(vae.log_scale) == 0.0  # sigma = 1 before any training step
    images, _ = next(iter(binary_loader()))
    recons = []
    for batch in (images, images.flip(0) * 0.5):
        vae.train()
        recons.append(vae.compute_elbo(batch, None).recon)
    # at the fitted sigma the Gaussian NLL of D pixels is D * (log(2 pi) / 2 + log sigma + 1 / 2)
    d = images[0].numel()
    scales = [float(r) / d - 0.5 * math.log(2 * math.pi) - 0.5 for r in recons]
    mses = [math.exp(2 * s) for s in scales]
    running = (0.99 * 0.01 * mses[0] + 0.01 * mses[1]) / (0.99 * 0.01 + 0.01)  # the debiased running mean
    vae.eval()
    assert float(vae.log_scale) == pytest.approx(0.5 * math.log(running), rel=1e-5)
    evaluated = vae.compute_elbo(images, None)  # evaluation uses that scale and does not move it
    assert float(vae.log_scale) == pytest.approx(0.5 * math.log(running), rel=1e-5)
    assert torch.isfinite(evaluated.recon)
    before = (vae.running_mse.clone(), vae.running_weight.clone())
    vae.fit_log_scale(images, torch.full_like(images, float("nan")))  # a non-finite batch leaves it alone
    assert torch.equal(vae.running_mse, before[0]) and torch.equal(vae.running_weight, before[1])


def test_the_default_gaussian_vae_does_not_wait_for_its_scale(tmp_path):
    """Measured after these 46 steps: log sigma -1.02, KL 30.7 nats, 7.35 bpd, MSE 0.050. The learned scalar
    log-scale it replaced (Adam moves it about lr per step) was still at -0.02, with KL 4.7, 8.42 bpd, MSE 0.106."""
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=16, batch_size=64)
    vae = VAETask(channels=1, image_size=16, iwae_samples=0, fid_feature=None)
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(vae, dm)
    m = fit.callback_metrics
    assert float(vae.log_scale) < -0.7, float(vae.log_scale)  # sigma < 0.5 on [-1, 1]
    assert m["val/kl"] > 15.0, m["val/kl"]  # the latents carry information
    assert m["val/bpd"] < 7.8 and m["val/mse"] < 0.08, (m["val/bpd"], m["val/mse"])


def test_kl_warmup_ramps_beta():
    vae = VAETask(channels=1, image_size=16, beta=4.0, kl_warmup_steps=10)
    assert vae.kl_weight() == pytest.approx(0.4)  # step 0 of 10: (0 + 1) / 10 of beta
    assert VAETask(channels=1, image_size=16, beta=0.5).kl_weight() == 0.5


def test_the_logged_beta_follows_the_warmup(tmp_path):
    vae = VAETask(channels=1, image_size=16, latent_dim=4, beta=4.0, kl_warmup_steps=10, fid_feature=None)
    fit = trainer(tmp_path, max_steps=3, limit_val_batches=0)
    fit.fit(vae, binary_loader())
    assert fit.callback_metrics["train/beta"].item() == pytest.approx(4.0 * 3 / 10)  # the third step's beta


def test_sample_and_reconstruct_are_images_in_range_and_labels_choose_the_class():
    torch.manual_seed(0)
    vae = VAETask(channels=1, image_size=16, latent_dim=4, num_classes=3)
    out = vae.sample(5)
    assert out.shape == (5, 1, 16, 16) and out.min() >= -1 and out.max() <= 1
    noise = torch.randn(1, 4).repeat(2, 1)
    assert not torch.allclose(*vae.sample(2, labels=torch.tensor([0, 2]), noise=noise))
    images, labels = next(iter(binary_loader()))
    assert vae.reconstruct(images, labels).shape == images.shape
    with pytest.raises(ValueError, match="unconditional"):
        VAETask(channels=1, image_size=16).sample(2, labels=torch.tensor([0, 1]))


def test_checkpoint_reload_without_arguments_and_bf16(tmp_path):
    torch.manual_seed(0)
    vae = VAETask(channels=1, image_size=16, latent_dim=4)
    fit = trainer(tmp_path, max_steps=3, limit_val_batches=0, precision="bf16-mixed")
    fit.fit(vae, binary_loader())
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    fit.save_checkpoint(tmp_path / "vae.ckpt")
    again = VAETask.load_from_checkpoint(tmp_path / "vae.ckpt")
    noise = vae.fixed_noise[:3]
    assert torch.equal(again.sample(3, noise=noise), vae.sample(3, noise=noise))
    assert torch.equal(again.noise_rng.get_state(), vae.noise_rng.get_state())


def test_a_checkpoint_with_the_old_learned_scale_loads_with_that_scale(tmp_path):
    vae = VAETask(channels=1, image_size=16, latent_dim=4, fid_feature=None)
    fit = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    fit.fit(vae, binary_loader())
    fit.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    del checkpoint["state_dict"]["running_mse"], checkpoint["state_dict"]["running_weight"]
    checkpoint["state_dict"]["log_scale"] = torch.tensor(-1.5)  # the learned parameter of the earlier VAETask
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old = VAETask.load_from_checkpoint(tmp_path / "old.ckpt")
    assert float(old.log_scale) == pytest.approx(-1.5)
    assert all(torch.equal(a, b) for a, b in zip(old.decoder.parameters(), vae.decoder.parameters()))


def test_resume_from_an_epoch_checkpoint_equals_the_unbroken_run(tmp_path):
    """Mid-warm-up resume: weights, Adam moments, the cosine schedule, the KL ramp and the noise stream all match."""

    def make_task() -> VAETask:
        return VAETask(
            channels=1,
            image_size=16,
            latent_dim=4,
            num_classes=10,
            kl_warmup_steps=30,
            warmup_steps=5,
            iwae_samples=2,
            fid_feature=None,
        )

    def make_data() -> DigitsDataModule:
        return DigitsDataModule(image_size=16, batch_size=128, conditional=True)

    unbroken, resumed, a, b = fit_and_resume(make_task, make_data, tmp_path, limit_val_batches=1)
    assert_same_training_state(unbroken, resumed, a, b)
    assert a.global_step == 2 * a.num_training_batches
    assert unbroken.kl_weight() == resumed.kl_weight() < 1.0  # still inside the warm-up
    assert torch.equal(unbroken.noise_rng.get_state(), resumed.noise_rng.get_state())
