"""Variational autoencoders: VAE, beta-VAE with KL warm-up, and the conditional VAE, as one LightningModule.

Every number is in **nats per image** (see :mod:`segen.losses.vae`): ``train/loss = recon + beta * kl`` is what is
minimised; ``train/elbo`` and ``val/elbo`` are the ELBO itself (``-(recon + kl)``, beta = 1, higher is better);
``val/bpd`` converts ``-val/elbo`` to bits per dimension; ``val/nll_iwae`` is the importance-weighted bound with
``iwae_samples`` samples (at most ``-val/elbo``, tighter as ``k`` grows); ``val/mse`` is the reconstruction error
of the decoder's mean on ``[-1, 1]``; ``val/fid`` and ``val/kid`` measure samples from the prior (see ``fid_feature``).

The reparameterisation noise comes from the task's own generator, saved in checkpoints, so a resumed run draws the
same noise as an unbroken one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from segen._distributed import all_reduce_mean_, distributed
from segen.losses.vae import (
    ELBO,
    LIKELIHOODS,
    bits_per_dim,
    elbo,
    gaussian_log_scale,
    log_normal,
    negative_log_likelihood,
)
from segen.metrics.sample_quality import SampleQualityHooks
from segen.nets.vae import VAEDecoder, VAEEncoder
from segen.registry import lookup
from segen.tasks._parts import build_module, drop_object_hparams
from segen.tasks.base import SegenTask, check_nan_policy
from segen.tasks.batches import check_image_dtype, generation_batch
from segen.tasks.optim import configure_optimizers

__all__ = ["VAETask"]

# Factories get the shape as keywords (a config class_path without these first arguments becomes one).
EncoderFactory = Callable[
    [int, int, int, int | None], nn.Module
]  # f(channels=, image_size=, latent_dim=, num_classes=)
DecoderFactory = Callable[[int, int, int, int | None], nn.Module]

_OUT_PER_CHANNEL = {"bernoulli": 1, "gaussian": 1, "logistic": 2}


class VAETask(SampleQualityHooks, SegenTask):
    """A (conditional, beta-) VAE with a Gaussian posterior and a standard normal prior.

    Args:
        channels, image_size: image shape (linked from the data module by the CLI).
        latent_dim: size of ``z``.
        num_classes: ``K`` makes it a conditional VAE (labels into encoder and decoder); ``None``: unconditional.
        likelihood: ``"gaussian"`` (one global scale, fitted in closed form to each training batch, and at evaluation
            a running mean of those fits: :func:`~segen.losses.vae.gaussian_log_scale`), ``"bernoulli"`` (binary
            data) or ``"logistic"`` (discretised logistic, exact 8-bit likelihood).
        beta: weight of the KL term in the loss (1: the ELBO; > 1: beta-VAE).
        kl_warmup_steps: the KL weight ramps linearly from 0 to ``beta`` over these optimizer steps.
        encoder, decoder: modules or factories (called with ``channels``, ``image_size``, ``latent_dim``,
            ``num_classes``); default :class:`~segen.nets.vae.VAEEncoder` / ``VAEDecoder``.
        lr, weight_decay, warmup_steps, optimizer, scheduler: segen's default AdamW with warm-up and cosine decay, or
            LightningCLI callables replacing it.
        iwae_samples: ``k`` of the importance-weighted bound at validation (0 disables ``val/nll_iwae``).
        fid_feature, inception_weights, fid_samples: ``val/fid`` and ``val/kid`` of ``fid_samples`` samples against
            the validation images, as for :class:`~segen.tasks.gan.GANTask` (``"auto"``: the digits classifier for
            1-channel data, Inception with a local weights file, else none; ``None`` turns them off).
        num_fixed_samples, seed: fixed latents for sample grids (in the checkpoint) and the noise generator's seed.
        nan_policy: ``"raise"`` | ``"skip"`` | ``"off"``: what a non-finite training loss does
            (:class:`~segen.tasks.base.SegenTask`).
    """

    monitor: tuple[str, str] = ("val/elbo", "max")

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 32,
        latent_dim: int = 32,
        num_classes: int | None = None,
        likelihood: str = "gaussian",
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        encoder: EncoderFactory | nn.Module | None = None,
        decoder: DecoderFactory | nn.Module | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        iwae_samples: int = 16,
        fid_feature: str | nn.Module | None = "auto",
        inception_weights: str | None = None,
        fid_samples: int = 2048,
        num_fixed_samples: int = 64,
        seed: int = 0,
        nan_policy: str = "raise",
    ) -> None:
        super().__init__()
        check_nan_policy(nan_policy)
        kind = lookup("likelihood", likelihood, LIKELIHOODS)
        if beta < 0 or kl_warmup_steps < 0 or iwae_samples < 0:
            raise ValueError(
                f"VAETask: beta, kl_warmup_steps and iwae_samples must be >= 0, got {beta}, {kl_warmup_steps}, "
                f"{iwae_samples}"
            )
        self.save_hyperparameters()
        drop_object_hparams(self.hparams, ("encoder", "decoder", "optimizer", "scheduler"))
        drop_object_hparams(self.hparams, ("fid_feature",), (dict, str, type(None)))  # a name is config
        self.channels, self.image_size, self.latent_dim = channels, image_size, latent_dim
        self.num_classes, self.likelihood = num_classes, kind
        shape = dict(channels=channels, image_size=image_size, latent_dim=latent_dim, num_classes=num_classes)
        self.encoder = build_module(encoder, VAEEncoder, "encoder", **shape)
        # factories get the shape only; the default decoder also its outputs per channel (2 for the logistic)
        default_decoder = functools.partial(VAEDecoder, out_per_channel=_OUT_PER_CHANNEL[kind])
        self.decoder = build_module(decoder, default_decoder, "decoder", **shape)
        if kind == "gaussian":
            # the gaussian likelihood's scale: fitted to each training batch (a calibrated decoder; sigma = 1 would
            # let the KL win); evaluation uses the debiased running mean of the batches' squared errors
            self.register_buffer("running_mse", torch.zeros(()))
            self.register_buffer("running_weight", torch.zeros(()))
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        fixed = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("fixed_noise", torch.randn(num_fixed_samples, latent_dim, generator=fixed))
        self.noise_rng = torch.Generator().manual_seed(seed)
        self.fid_feature = fid_feature

    # ------------------------------------------------------------------ model
    def _labels(self, labels: Tensor | None) -> Tensor | None:
        return labels if self.num_classes else None

    def encode(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``q(z|x)``: ``mu, logvar`` each ``(B, latent_dim)``."""
        return self.encoder(images, labels) if self.num_classes else self.encoder(images)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Likelihood parameters ``(B, k C, S, S)`` for latents ``z (B, latent_dim)``."""
        return self.decoder(z, labels) if self.num_classes else self.decoder(z)

    def _mean(self, output: Tensor) -> Tensor:
        """The decoder's mean image in ``[-1, 1]``."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(output.float()) * 2 - 1
        if self.likelihood == "logistic":
            output = output.chunk(2, dim=1)[0]
        return output.float().clamp(-1, 1)

    def _noise(self, shape: tuple[int, ...]) -> Tensor:
        if self.training:  # each DDP rank its own rows of the shared stream (see SegenTask.per_rank_randn)
            return self.per_rank_randn(self.noise_rng, shape)
        # evaluation: the same draws on every rank, so a rank's metrics equal one process's on the same batches
        return torch.randn(shape, generator=self.noise_rng).to(self.device, non_blocking=True)

    @property
    def log_scale(self) -> Tensor | float:
        """``log sigma`` of the gaussian likelihood at evaluation (0 before any training step; 0.0 for the others)."""
        if self.likelihood != "gaussian":
            return 0.0
        fitted = gaussian_log_scale(self.running_mse / self.running_weight.clamp(min=1e-12))
        return torch.where(self.running_weight > 0, fitted, torch.zeros_like(fitted))

    def fit_log_scale(self, images: Tensor, output: Tensor, decay: float = 0.99) -> Tensor:
        """The gaussian ``log sigma`` for a training batch, fitted to it (over all DDP ranks, so every rank uses the
        same scale and keeps the same running mean), and the running mean's update."""
        mse = (images.float() - output.float()).square().mean().detach()
        if distributed():
            all_reduce_mean_([mse])
        # a non-finite batch (nan_policy="skip") leaves the running mean alone, without a host sync
        with torch.no_grad():
            finite = torch.isfinite(mse)
            self.running_mse.copy_(
                torch.where(finite, decay * self.running_mse + (1 - decay) * mse, self.running_mse)
            )
            self.running_weight.copy_(
                torch.where(finite, decay * self.running_weight + 1 - decay, self.running_weight)
            )
        return gaussian_log_scale(mse)

    def compute_elbo(self, images: Tensor, labels: Tensor | None, beta: float = 1.0) -> ELBO:
        """The ELBO's parts for a batch with one reparameterised sample; override to change the objective."""
        mu, logvar = self.encode(images, labels)  # (B, Z) each
        z = mu + (0.5 * logvar).exp() * self._noise(tuple(mu.shape))
        output = self.decode(z, labels)
        fitted = self.likelihood == "gaussian" and self.training
        log_scale = self.fit_log_scale(images, output) if fitted else self.log_scale
        return elbo(images, output, mu, logvar, self.likelihood, beta, log_scale)

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """``n`` images ``(n, C, S, S)`` in ``[-1, 1]`` decoded from ``z ~ N(0, I)`` (the decoder's mean);
        ``labels (n,)`` choose the classes of a conditional VAE (default: cycling 0..K-1)."""
        if labels is not None and not self.num_classes:
            raise ValueError("VAETask.sample: labels given, but the VAE is unconditional (num_classes=None)")
        z = (noise if noise is not None else torch.randn(n, self.latent_dim)).to(self.device)
        if self.num_classes:
            labels = torch.arange(n, device=self.device) % self.num_classes if labels is None else labels
            labels = labels.to(self.device).long()
        return self._mean(self.decode(z, labels))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode the posterior mean of each image: ``(B, C, S, S) -> (B, C, S, S)`` in ``[-1, 1]``."""
        labels = labels.to(self.device).long() if labels is not None and self.num_classes else None
        mu, _ = self.encode(images.to(self.device), labels)
        return self._mean(self.decode(mu, labels))

    # ------------------------------------------------------------------ training
    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        images, labels = generation_batch("VAETask", batch)
        check_image_dtype("VAETask", images, self.dtype, "in [-1, 1]")
        if images.ndim != 4 or images.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"VAETask: images of shape {tuple(images.shape)}, expected (B, {self.channels}, {self.image_size}, "
                f"{self.image_size}); set channels/image_size to the data's"
            )
        if self.num_classes and labels is None:
            raise ValueError("VAETask: num_classes is set (conditional VAE) but the batch has no labels")
        return images, (labels.long() if self.num_classes else None)

    def kl_weight(self) -> float:
        """``beta``, ramped linearly from 0 over ``kl_warmup_steps`` optimizer steps."""
        warmup = self.hparams.kl_warmup_steps
        ramp = min(1.0, (self.global_step + 1) / warmup) if warmup else 1.0
        return self.hparams.beta * ramp

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        images, labels = self._unpack(batch)
        beta = self.kl_weight()
        parts = self.compute_elbo(images, labels, beta)
        self.log_train(
            {
                "train/loss": parts.loss,
                "train/elbo": -(parts.recon + parts.kl).detach(),
                "train/recon": parts.recon.detach(),
                "train/kl": parts.kl.detach(),
                # a CPU tensor: a Python float would become torch.tensor(beta, device=<the GPU>), a blocking copy
                # every step; Lightning keeps a logged value on its own device, so this one never leaves the host
                "train/beta": torch.tensor(float(beta)),
            },
            images.shape[0],
        )
        usable = self.loss_is_usable({"loss": parts.loss, "recon": parts.recon, "kl": parts.kl})
        return parts.loss if usable else None

    def _iwae(self, images: Tensor, labels: Tensor | None, k: int) -> Tensor:
        """``-log p(x)`` bounds per image ``(B,)`` from ``k`` importance samples of ``q(z|x)``."""
        mu, logvar = self.encode(images, labels)
        log_scale = self.log_scale
        log_w = []
        for _ in range(k):
            z = mu + (0.5 * logvar).exp() * self._noise(tuple(mu.shape))
            nll = negative_log_likelihood(images, self.decode(z, labels), self.likelihood, log_scale)
            prior = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
            log_w.append(-nll + prior - log_normal(z, mu, logvar))
        log_w_t = torch.stack(log_w)  # (k, B)
        return -(torch.logsumexp(log_w_t.float(), 0) - torch.log(torch.tensor(float(k))))

    def _evaluate(self, batch: Any, stage: str) -> None:
        images, labels = self._unpack(batch)
        state = self.noise_rng.get_state()  # evaluation must not move the training noise
        try:
            parts = self.compute_elbo(images, labels, 1.0)
            negative_elbo = parts.recon + parts.kl
            num_dims = images[0].numel()
            logs = {
                f"{stage}/elbo": -negative_elbo,
                f"{stage}/recon": parts.recon,
                f"{stage}/kl": parts.kl,
                f"{stage}/bpd": bits_per_dim(negative_elbo, num_dims, self.likelihood),
                f"{stage}/mse": (self.reconstruct(images, labels) - images.float()).square().mean(),
            }
            if self.hparams.iwae_samples:
                logs[f"{stage}/nll_iwae"] = self._iwae(images, labels, self.hparams.iwae_samples).mean()
        finally:
            self.noise_rng.set_state(state)
        self.log_dict(logs, batch_size=images.shape[0], sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")
        self.add_real_images(self._unpack(batch)[0])

    def draw_samples(self, n: int, rng: torch.Generator) -> Tensor:
        noise = torch.randn(n, self.latent_dim, generator=rng)
        labels = torch.randint(0, self.num_classes, (n,), generator=rng) if self.num_classes else None
        return self.sample(n, labels=labels, noise=noise)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return configure_optimizers(
            self, self.optimizer_fn, self.scheduler_fn, hp.lr, hp.weight_decay, hp.warmup_steps
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["vae_noise_rng"] = self.noise_rng.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        if self.likelihood == "gaussian" and "log_scale" in state and "running_mse" not in state:
            # written before the scale was fitted (2026-11-27): its learned log sigma becomes the running fit
            state["running_mse"] = (2 * state.pop("log_scale").float()).exp()
            state["running_weight"] = torch.ones(())
        super().on_load_checkpoint(checkpoint)
        if "vae_noise_rng" in checkpoint:
            self.noise_rng.set_state(checkpoint["vae_noise_rng"])
