"""GANTask: manual optimization with two optimizers, step semantics, gradients, EMA, sampling, resume, DDP."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from task_helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from segen import GANTask
from segen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from segen.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from segen.tasks.gan import max_steps_for

# tiny nets: 16 px, narrow
SMALL_G = functools.partial(DCGANGenerator, base_channels=8)
SMALL_D = functools.partial(DCGANDiscriminator, base_channels=8)


def images(n: int = 32, channels: int = 1, size: int = 16, classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, channels, size, size, generator=g) * 2 - 1, torch.arange(n) % classes)


def loader(n: int = 32, batch_size: int = 8, **kwargs) -> DataLoader:
    return DataLoader(images(n, **kwargs), batch_size=batch_size, shuffle=False)


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, **{"limit_val_batches": 0, "num_sanity_val_steps": 2, **kwargs})


def task(**kwargs) -> GANTask:
    defaults = dict(
        channels=1, image_size=16, latent_dim=8, generator=SMALL_G, discriminator=SMALL_D, fid_feature=None
    )
    return GANTask(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_classes": 3},
        {"loss": "wgan-gp"},
        {"loss": "hinge", "r1_gamma": 1.0, "r1_interval": 1, "diffaugment": "color,translation,cutout"},
        {
            "generator": StyleGAN2Generator,
            "discriminator": StyleGAN2Discriminator,
            "r1_gamma": 1.0,
            "r1_interval": 1,
        },
        {"generator": StyleGAN2Generator, "discriminator": StyleGAN2Discriminator, "num_classes": 3},
    ],
    ids=["dcgan", "conditional", "wgan-gp", "hinge-r1-diffaugment", "stylegan2-r1", "stylegan2-conditional"],
)
def test_every_parameter_of_both_nets_gets_a_gradient(kwargs, tmp_path):
    torch.manual_seed(0)
    gan = task(**kwargs)
    before = {name: p.detach().clone() for name, p in gan.named_parameters()}
    trainer(tmp_path, max_steps=2).fit(gan, loader())
    for net in (gan.generator, gan.discriminator):
        for name, p in net.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
    changed = [n for n, p in gan.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    trainable = [n for n, p in gan.named_parameters() if p.requires_grad]
    assert len(changed) >= 0.9 * len(trainable)  # Adam moved (nearly) every parameter
    assert not any(p.requires_grad for p in gan.generator_ema.parameters())


@pytest.mark.parametrize(
    "n_critic, max_steps, g_steps, d_steps", [(1, 10, 5, 5), (2, 9, 3, 6), (5, 12, 2, 10)]
)
def test_max_steps_counts_generator_and_discriminator_updates(
    n_critic, max_steps, g_steps, d_steps, tmp_path
):
    gan = task(n_critic=n_critic)
    fit = trainer(tmp_path, max_steps=max_steps)
    fit.fit(gan, loader(n=128))
    assert fit.global_step == max_steps
    assert (gan.generator_steps, gan.discriminator_steps) == (g_steps, d_steps)
    assert fit.callback_metrics["train/generator_steps"] == g_steps
    assert fit.callback_metrics["train/discriminator_steps"] == d_steps
    assert max_steps_for(g_steps, n_critic) == g_steps * (n_critic + 1)


def test_sample_is_in_range_and_conditional_labels_choose_the_class():
    torch.manual_seed(0)
    gan = task(num_classes=3)
    out = gan.sample(6)
    assert out.shape == (6, 1, 16, 16) and out.min() >= -1 and out.max() <= 1
    noise = torch.randn(1, 8).repeat(3, 1)
    by_class = gan.sample(3, labels=torch.tensor([0, 1, 2]), noise=noise)
    assert not torch.allclose(by_class[0], by_class[1])
    with pytest.raises(ValueError, match="unconditional"):
        task().sample(2, labels=torch.tensor([0, 1]))


def test_ema_generator_lags_behind_and_is_used_for_sampling(tmp_path):
    torch.manual_seed(0)
    gan = task(ema_decay=0.9)
    trainer(tmp_path, max_steps=8).fit(gan, loader())
    ema = dict(gan.generator_ema.named_parameters())
    differs = [n for n, p in gan.generator.named_parameters() if not torch.allclose(p, ema[n])]
    assert differs, "after a few steps the EMA weights differ from the trained ones"
    noise = torch.randn(2, 8)
    gan.generator_ema.eval()
    assert torch.allclose(gan.sample(2, noise=noise), gan.generator_ema(noise).clamp(-1, 1))


def test_bad_batches_and_arguments_are_named():
    gan = task()
    with pytest.raises(ValueError, match=r"expected \(B, 1, 16, 16\)"):
        gan._unpack((torch.zeros(2, 3, 16, 16), torch.zeros(2)))
    with pytest.raises(ValueError, match="has no labels"):
        task(num_classes=3)._unpack(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="n_critic must be an integer >= 1"):
        task(n_critic=0)
    with pytest.raises(ValueError, match="did you mean 'hinge'"):
        task(loss="hing")


def test_bf16_mixed_fits(tmp_path):
    gan = task()
    trainer(tmp_path, max_steps=4, precision="bf16-mixed").fit(gan, loader())
    assert all(torch.isfinite(p).all() for p in gan.parameters())


def test_checkpoint_restores_the_whole_training_state(tmp_path):
    """A checkpoint holds both optimizers, the EMA generator, the fixed noise, the step counters and the training
    noise generator: resuming from it restores every one of them exactly."""
    torch.manual_seed(0)
    gan = task(ema_decay=0.99, num_classes=3)
    fit = trainer(tmp_path, max_steps=6)
    fit.fit(gan, loader())
    fit.save_checkpoint(tmp_path / "gan.ckpt")
    saved_optimizers = [o.state_dict() for o in fit.optimizers]
    saved_rng = gan.noise_rng.get_state()

    torch.manual_seed(1)  # a differently initialised task: everything must come from the checkpoint
    resumed = task(ema_decay=0.99, num_classes=3, seed=7)
    again = trainer(tmp_path, max_steps=6)  # already reached: fit restores, then stops
    again.fit(resumed, loader(), ckpt_path=tmp_path / "gan.ckpt")
    assert (resumed.generator_steps, resumed.discriminator_steps) == (3, 3)
    assert torch.equal(resumed.noise_rng.get_state(), saved_rng)
    for (name, a), (_, b) in zip(gan.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name  # G, D, EMA generator, fixed noise and labels
    for saved, restored in zip(saved_optimizers, again.optimizers):
        for key, value in saved["state"].items():
            for field in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(value[field], restored.state_dict()["state"][key][field])
    reloaded = GANTask.load_from_checkpoint(tmp_path / "gan.ckpt", generator=SMALL_G, discriminator=SMALL_D)
    assert torch.equal(
        reloaded.sample(4, noise=resumed.fixed_noise[:4]), resumed.sample(4, noise=resumed.fixed_noise[:4])
    )


def test_resume_from_an_epoch_checkpoint_equals_the_unbroken_run(tmp_path):
    """2 epochs unbroken == 1 epoch, checkpoint, resume for the 2nd: same batches, noise, DiffAugment draws,
    optimizers and EMA."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segen import DigitsDataModule

    def run(ckpt: str | None = None) -> GANTask:
        torch.manual_seed(123 if ckpt is None else 456)  # the checkpoint must override the initialisation
        gan = task(ema_decay=0.99, num_classes=10, diffaugment="color,translation,cutout")
        fit = trainer(
            tmp_path,
            max_epochs=2,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)],
        )
        fit.fit(gan, DigitsDataModule(image_size=16, batch_size=256, conditional=True), ckpt_path=ckpt)
        return gan

    unbroken = run()
    resumed = run(str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    assert (resumed.generator_steps, resumed.discriminator_steps) == (unbroken.generator_steps,) * 2
    for (name, a), (_, b) in zip(unbroken.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_one_epoch_on_digits_stays_finite_and_logs_fid(tmp_path, monkeypatch):
    """The embedded default, with the real digits feature network (trained once into a temporary cache)."""
    from segen import DigitsDataModule

    monkeypatch.setenv("SEGEN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=32, batch_size=64)
    gan = GANTask(channels=1, image_size=32, latent_dim=32, fid_samples=200)
    fit = trainer(tmp_path, max_epochs=1, limit_val_batches=None)
    fit.fit(gan, dm)
    metrics = fit.callback_metrics
    assert torch.isfinite(metrics["train/loss_g"]) and torch.isfinite(metrics["train/loss_d"])
    assert all(torch.isfinite(p).all() for p in gan.parameters())
    assert metrics["val/fid"] > 0 and torch.isfinite(metrics["val/kid"])
    assert gan.generator_steps == len(dm.train_dataloader())


def test_default_nets_train_at_28_px_and_score_with_the_digits_features(tmp_path, monkeypatch):
    """MNIST's side is 28 px, not a power of two: the default DCGAN pair goes 4 -> 7 -> 14 -> 28 and back."""
    from segen import DigitsDataModule

    monkeypatch.setenv("SEGEN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=28, batch_size=32)
    gan = GANTask(channels=1, image_size=28, fid_samples=64)
    kernels = [m.kernel_size[0] for m in gan.generator.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert kernels == [4, 3, 4, 4]
    fit = trainer(
        tmp_path, max_steps=8, limit_val_batches=1, val_check_interval=4, check_val_every_n_epoch=None
    )
    fit.fit(gan, dm)
    assert gan.sample(3).shape == (3, 1, 28, 28)
    assert all(torch.isfinite(p).all() for p in gan.parameters())
    assert fit.callback_metrics["val/fid"] > 0 and torch.isfinite(fit.callback_metrics["val/kid"])


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset
    from segen import GANTask
    from segen.nets.dcgan import DCGANGenerator, DCGANDiscriminator
    import functools

    out = sys.argv[1]
    data = TensorDataset(torch.rand(64, 1, 16, 16) * 2 - 1, torch.arange(64) % 3)
    torch.manual_seed(0)
    gan = GANTask(channels=1, image_size=16, latent_dim=8, num_classes=3, fid_feature=None,
                  generator=functools.partial(DCGANGenerator, base_channels=8),
                  discriminator=functools.partial(DCGANDiscriminator, base_channels=8))
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0)
    trainer.fit(gan, DataLoader(data, batch_size=8))
    torch.save({k: v.detach() for k, v in gan.state_dict().items()}, f"{out}/rank{trainer.global_rank}.pt")
    """
)


def test_two_process_ddp_keeps_both_nets_identical_without_unused_parameter_errors(tmp_path):
    script = tmp_path / "ddp_gan.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in rank0:
        if (
            name.startswith(("generator.", "discriminator."))
            and "running" not in name
            and "num_batches" not in name
        ):
            assert torch.equal(rank0[name], rank1[name]), name
    # and they trained: the generator moved away from its (seeded, shared) initialisation
    torch.manual_seed(0)
    fresh = task(num_classes=3).state_dict()
    moved = [k for k in rank0 if k.startswith("generator.") and not torch.equal(rank0[k], fresh[k])]
    assert moved


class _CountingScaler(torch.amp.GradScaler):
    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self.updates = 0

    def update(self, new_scale=None) -> None:
        self.updates += 1
        super().update(new_scale)


@pytest.mark.parametrize("n_critic, max_steps, iterations", [(1, 6, 3), (2, 9, 6)])
def test_16_mixed_updates_the_grad_scaler_once_per_iteration(n_critic, max_steps, iterations, tmp_path):
    """fp16 autocast with a GradScaler (run on the CPU here; the same plugin runs on CUDA): one update per training
    step, after its last optimizer step, as PyTorch's recipe for several optimizers asks."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = _CountingScaler()
    gan = task(n_critic=n_critic)
    fit = trainer(tmp_path, max_steps=max_steps, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    fit.fit(gan, loader(n=128))
    assert gan.discriminator_steps == iterations
    assert scaler.updates == iterations
    assert all(torch.isfinite(p).all() for p in gan.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only path: 16-mixed on a GPU")
def test_16_mixed_on_cuda_one_scaler_update_per_iteration(tmp_path):
    from lightning.pytorch import Callback
    from lightning.pytorch.plugins import MixedPrecision

    class _Devices(Callback):  # where the steps ran: Lightning moves the task back to the CPU after fit
        def __init__(self) -> None:
            self.seen: set[str] = set()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seen.add(pl_module.device.type)

    scaler = _CountingScaler("cuda")
    devices = _Devices()
    gan = task(num_classes=3, r1_gamma=1.0, r1_interval=2)
    fit = trainer(
        tmp_path,
        accelerator="gpu",
        devices=1,
        max_steps=8,
        callbacks=[devices],
        plugins=[MixedPrecision("16-mixed", "cuda", scaler=scaler)],
    )
    fit.fit(gan, loader(n=128))
    assert devices.seen == {"cuda"}
    assert scaler.updates == gan.discriminator_steps == 4
    assert all(torch.isfinite(p).all() for p in gan.parameters())
    assert torch.isfinite(gan.sample(4)).all()
