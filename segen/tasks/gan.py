"""GANs as a LightningModule with two optimizers through Lightning's manual optimization.

One training step = one discriminator update, and every ``n_critic``-th step also one generator update::

    D step:  loss_d = adv_d(D(aug(x)), D(aug(G(z)).detach())) [+ r1_gamma/2 * R1 * r1_interval every r1_interval]
                                                            [+ gp_weight * GP for loss="wgan-gp"]
    G step:  loss_g = adv_g(D(aug(G(z))))  then  G_ema <- lerp(G_ema, G, 1 - ema_decay)

**Step semantics.** In manual optimization Lightning's ``trainer.global_step`` counts *every* optimizer step, of G
and of D. With ``n_critic=1`` each batch makes two optimizer steps, so ``Trainer(max_steps=N)`` trains ``N // 2``
batches and ``N // 2`` generator updates; with ``n_critic=k``, ``N`` steps give ``N * k // (k + 1)`` discriminator
and ``N // (k + 1)`` generator updates. ``train/generator_steps`` and ``train/discriminator_steps`` are logged so
curves can be read against generator updates. :func:`max_steps_for` converts a wanted number of generator updates.

**DDP.** Lightning wraps the whole LightningModule in one ``DistributedDataParallel``, whose reducer expects a
gradient for every parameter in every backward; the D step gives none to G and the G step none to D, which is why
Lightning's own GAN example fails under DDP. This task does its own gradient averaging instead: each backward runs
with DDP's gradient sync off, then the gradients of the net about to step are averaged over ranks in one flat
``all_reduce``. No ``find_unused_parameters`` is needed, and every parameter of the stepping net is synced.

**Mixed precision** comes from the Trainer: ``manual_backward`` applies the loss scaling of ``16-mixed``, and the
GradScaler is updated once per iteration, after the last optimizer step (see ``_scaler_update_deferred``);
``bf16-mixed`` needs no scaler. R1 and the gradient penalty are computed in float32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from segen._distributed import all_reduce_mean_, distributed
from segen.losses.adversarial import ADVERSARIAL_LOSSES, gradient_penalty, r1_penalty
from segen.metrics.sample_quality import SampleQualityHooks, resolve_fid_feature
from segen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from segen.nets.diffaugment import diff_augment, parse_policy
from segen.registry import lookup
from segen.tasks._parts import build_module, drop_object_hparams
from segen.tasks.base import SegenTask, check_nan_policy
from segen.tasks.batches import check_image_dtype, generation_batch

__all__ = ["GANTask", "max_steps_for"]

# Factories get the shape as keywords: a config class_path without these first arguments becomes one, so the shape
# is typed once (in the data). Every segen generator starts (channels, image_size, latent_dim, num_classes).
GeneratorFactory = Callable[
    [int, int, int, int | None], nn.Module
]  # f(channels=, image_size=, latent_dim=, num_classes=)
DiscriminatorFactory = Callable[[int, int, int | None], nn.Module]  # f(channels=, image_size=, num_classes=)

# Adam settings of the papers each loss comes from: DCGAN (ns, hinge) and WGAN-GP.
_DEFAULT_ADAM = {"ns": (2e-4, (0.5, 0.999)), "hinge": (2e-4, (0.5, 0.999)), "wgan-gp": (1e-4, (0.0, 0.9))}


def max_steps_for(generator_steps: int, n_critic: int = 1) -> int:
    """The ``Trainer(max_steps=...)`` that gives ``generator_steps`` generator updates (see the module docstring)."""
    return generator_steps * (n_critic + 1)


class GANTask(SampleQualityHooks, SegenTask):
    """A GAN: generator and discriminator, adversarial loss, regularisers, EMA generator, FID/KID.

    Args:
        channels, image_size: image shape (linked from the data module by the CLI).
        latent_dim: size of ``z``.
        num_classes: ``K`` makes G and D class-conditional (the nets' embedding / projection); ``None``: unconditional.
        generator, discriminator: modules, or factories called with the shape as keywords (a config ``class_path``
            without them); default the DCGAN pair.
        loss: ``"ns"`` (non-saturating), ``"hinge"`` or ``"wgan-gp"`` (:mod:`segen.losses.adversarial`).
        n_critic: discriminator updates per generator update (5 is WGAN-GP's).
        r1_gamma, r1_interval: R1 penalty weight on real data, applied lazily every ``r1_interval`` D steps (scaled
            by the interval, as StyleGAN2 does); 0 disables it.
        gp_weight: gradient-penalty weight for ``wgan-gp``.
        ema_decay: decay of the EMA generator used by ``sample`` and the metrics (``None``: no EMA); ramped up as
            ``min(ema_decay, (1 + t) / (10 + t))`` over the first generator steps ``t``.
        diffaugment: DiffAugment policy, e.g. ``"color,translation,cutout"`` for small data sets.
        lr, betas: the default Adam for both nets; ``None`` picks the paper's setting of the loss (2e-4, (0.5, 0.999)
            for ns/hinge; 1e-4, (0, 0.9) for wgan-gp).
        optimizer_g, optimizer_d, scheduler_g, scheduler_d: LightningCLI callables replacing the defaults.
        fid_feature: ``"auto"`` (the digits classifier for 1-channel data, Inception when ``inception_weights`` is
            given, else no FID), ``"digits"``, ``"inception"``, a module mapping images to features, or ``None``.
        inception_weights: local FID Inception weights file (nothing is downloaded).
        fid_samples: generated images per FID/KID evaluation (fixed noise, so evaluations are comparable).
        num_fixed_samples: size of the fixed noise used by the sample callbacks (saved in the checkpoint).
        seed: seeds the training noise, the fixed noise and the evaluation noise.
        nan_policy: ``"raise"`` | ``"skip"`` | ``"off"``: what a non-finite D or G loss does
            (:class:`~segen.tasks.base.SegenTask`); ``"skip"`` drops that network's update.
    """

    # the networks built when generator / discriminator is None (a subclass may change them)
    default_generator: Callable[..., nn.Module] = DCGANGenerator
    default_discriminator: Callable[..., nn.Module] = DCGANDiscriminator

    @property
    def monitor(self) -> tuple[str, str] | None:
        """What the CLI's checkpoint callback tracks: ``val/fid`` when there is a feature network, else nothing."""
        feature = resolve_fid_feature(
            "GANTask", self.fid_feature, self.channels, self.hparams.inception_weights
        )
        return ("val/fid", "min") if feature is not None else None

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        latent_dim: int = 128,
        num_classes: int | None = None,
        generator: GeneratorFactory | nn.Module | None = None,
        discriminator: DiscriminatorFactory | nn.Module | None = None,
        loss: str = "ns",
        n_critic: int = 1,
        r1_gamma: float = 0.0,
        r1_interval: int = 16,
        gp_weight: float = 10.0,
        ema_decay: float | None = 0.999,
        diffaugment: str | None = None,
        lr: float | None = None,
        betas: tuple[float, float] | None = None,
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        scheduler_g: LRSchedulerCallable | None = None,
        scheduler_d: LRSchedulerCallable | None = None,
        fid_feature: str | nn.Module | None = "auto",
        inception_weights: str | None = None,
        fid_samples: int = 2048,
        num_fixed_samples: int = 64,
        seed: int = 0,
        nan_policy: str = "raise",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        check_nan_policy(nan_policy)
        lookup("adversarial loss", loss, ADVERSARIAL_LOSSES)
        for name, value, minimum in (("n_critic", n_critic, 1), ("r1_interval", r1_interval, 1)):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"GANTask: {name} must be an integer >= {minimum}, got {value!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(
                f"GANTask: num_classes must be None (unconditional) or an integer >= 2, got {num_classes!r}"
            )
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"GANTask: ema_decay must be in (0, 1) or None, got {ema_decay!r}")
        self.save_hyperparameters()
        drop_object_hparams(
            self.hparams,
            (
                "generator",
                "discriminator",
                "optimizer_g",
                "optimizer_d",
                "scheduler_g",
                "scheduler_d",
                "fid_feature",
            ),
            (dict, str, type(None)),  # fid_feature may be a name
        )
        self.channels, self.image_size, self.latent_dim = channels, image_size, latent_dim
        self.num_classes = num_classes
        self.generator = build_module(
            generator,
            type(self).default_generator,
            "generator",
            channels=channels,
            image_size=image_size,
            latent_dim=latent_dim,
            num_classes=num_classes,
        )
        self.discriminator = build_module(
            discriminator,
            type(self).default_discriminator,
            "discriminator",
            channels=channels,
            image_size=image_size,
            num_classes=num_classes,
        )
        self.generator_ema: nn.Module | None = None
        if ema_decay is not None:
            # left in train mode like the rest (sample() switches to eval itself), so Lightning sees no stray eval modules
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.augment = parse_policy(diffaugment)
        self.loss_fns = ADVERSARIAL_LOSSES[loss]
        self.optimizer_fns = (optimizer_g, optimizer_d)
        self.scheduler_fns = (scheduler_g, scheduler_d)
        self.fid_feature = fid_feature
        # Fixed noise (and labels) for sample grids, saved in the checkpoint so grids stay comparable after a resume.
        fixed = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("fixed_noise", torch.randn(num_fixed_samples, latent_dim, generator=fixed))
        labels = (
            torch.arange(num_fixed_samples) % num_classes if num_classes else torch.zeros(num_fixed_samples)
        )
        self.register_buffer("fixed_labels", labels.long())
        # Training noise comes from the task's own generator, whose state is checkpointed: exact resume.
        self.noise_rng = torch.Generator().manual_seed(seed)
        # DiffAugment's draws: its own checkpointed stream, so resuming repeats them and the global RNG is untouched
        self.augment_rng = torch.Generator().manual_seed(seed + 2)
        self.generator_steps = 0
        self.discriminator_steps = 0
        # FID/KID live outside the module tree: their feature network must not enter checkpoints (see setup)

    # ------------------------------------------------------------------ sampling
    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The training generator: ``(B, latent_dim) -> (B, C, S, S)`` in ``[-1, 1]``."""
        return self.generator(z, labels) if self.num_classes else self.generator(z)

    def _sampler(self) -> nn.Module:
        return self.generator_ema if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """``n`` images ``(n, C, S, S)`` in ``[-1, 1]`` from the EMA generator (the training one without EMA), in eval
        mode. ``labels (n,)`` choose the classes of a conditional GAN (default: cycling 0..K-1)."""
        if labels is not None and not self.num_classes:
            raise ValueError("GANTask.sample: labels given, but the GAN is unconditional (num_classes=None)")
        if noise is None:
            noise = torch.randn(n, self.latent_dim, device=self.device)
        noise = noise.to(self.device)
        if self.num_classes:
            labels = torch.arange(n, device=self.device) % self.num_classes if labels is None else labels
            labels = labels.to(self.device).long()
        net = self._sampler()
        was_training = net.training
        net.eval()
        try:
            images = net(noise, labels) if self.num_classes else net(noise)
        finally:
            net.train(was_training)
        return images.float().clamp(-1, 1)

    # ------------------------------------------------------------------ losses (override points)
    def _noise(self, n: int) -> Tensor:
        return self.per_rank_randn(self.noise_rng, (n, self.latent_dim))  # (n, latent_dim), this rank's rows

    def _d(self, images: Tensor, labels: Tensor | None) -> Tensor:
        if self.augment:
            images = diff_augment(images, self.augment, self.per_rank_generator(self.augment_rng))
        return self.discriminator(images, labels) if self.num_classes else self.discriminator(images)

    def discriminator_loss(self, real: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """D's loss ``loss`` and its logged parts, for a batch of real images ``(B, C, S, S)``."""
        with torch.no_grad():
            fake = self(self._noise(real.shape[0]), labels)
        apply_r1 = self.hparams.r1_gamma > 0 and self.discriminator_steps % self.hparams.r1_interval == 0
        if apply_r1:
            real = real.detach().requires_grad_(True)
        real_logits, fake_logits = self._d(real, labels), self._d(fake, labels)
        parts = self.loss_fns.discriminator(real_logits.float(), fake_logits.float())
        out = {"loss": parts.loss, "loss_d_real": parts.real, "loss_d_fake": parts.fake}
        out["d_real"], out["d_fake"] = (
            real_logits.detach().float().mean(),
            fake_logits.detach().float().mean(),
        )
        if apply_r1:
            r1 = r1_penalty(real_logits, real)
            out["loss"] = out["loss"] + 0.5 * self.hparams.r1_gamma * self.hparams.r1_interval * r1
            out["r1"] = r1.detach()
        if self.hparams.loss == "wgan-gp":
            gp = gradient_penalty(lambda x: self._d(x, labels).float(), real, fake)
            out["loss"] = out["loss"] + self.hparams.gp_weight * gp
            out["gp"] = gp.detach()
        return out

    def generator_loss(
        self, batch_size: int, labels: Tensor | None, real: Tensor | None = None
    ) -> dict[str, Tensor]:
        """G's loss ``loss`` and its logged parts for ``batch_size`` generated images (labels as in the batch;
        ``real``, the batch's real images, for losses that compare with them, e.g. feature matching)."""
        fake = self(self._noise(batch_size), labels)
        return {"loss": self.loss_fns.generator(self._d(fake, labels).float())}

    # ------------------------------------------------------------------ training
    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        images, labels = generation_batch("GANTask", batch)
        check_image_dtype("GANTask", images, self.dtype, "in [-1, 1]")
        if images.ndim != 4 or images.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"GANTask: images of shape {tuple(images.shape)}, expected (B, {self.channels}, {self.image_size}, "
                f"{self.image_size}); set channels/image_size to the data's"
            )
        if not self.num_classes:
            return images, None
        if labels is None:
            raise ValueError("GANTask: num_classes is set (conditional GAN) but the batch has no labels")
        return images, labels.long()

    @contextmanager
    def _own_gradient_sync(self) -> Iterator[None]:
        """Backward with DDP's reducer off (see the module docstring); a no-op without DDP."""
        model = self.trainer.strategy.model if self._trainer is not None else None
        if not isinstance(model, DistributedDataParallel):
            yield
            return
        previous = model.require_backward_grad_sync
        model.require_backward_grad_sync = False
        try:
            yield
        finally:
            model.require_backward_grad_sync = previous

    def _average_gradients(self, module: nn.Module) -> None:
        """Average the gradients of ``module`` over ranks in one flat all_reduce (missing gradients count as 0)."""
        if not distributed():
            return
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        all_reduce_mean_([p.grad for p in params])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._average_buffers(self.generator, self.discriminator, self.generator_ema)

    @torch.no_grad()
    def _average_buffers(self, *modules: nn.Module | None) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) of ``modules`` over ranks, in one flat
        all_reduce after every iteration. Each rank's nets see their own real shard and their own noise, so running
        statistics drift apart within an iteration; averaged, every rank validates and checkpoints the same nets,
        with statistics of the whole global batch."""
        if not distributed():
            return
        buffers = [b for m in modules if m is not None for b in m.buffers() if b.is_floating_point()]
        if buffers:
            all_reduce_mean_(buffers)

    @contextmanager
    def _scaler_update_deferred(self, defer: bool) -> Iterator[None]:
        """With ``16-mixed``, Lightning updates the GradScaler after *every* optimizer step. PyTorch's recipe for
        several optimizers is one ``update()`` per iteration, after all of them stepped with the same scale (so the
        D and G steps of an iteration see the same scale, and inf checks of both count). When another step follows
        in this iteration, the update is skipped here and happens after the last step."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        if not defer or scaler is None:
            yield
            return
        shadowed = scaler.__dict__.get("update")
        # an instance attribute hides the method for this one step
        scaler.update = lambda *args, **kwargs: None
        try:
            yield
        finally:
            if shadowed is None:
                del scaler.update
            else:
                scaler.update = shadowed

    def _update(
        self, optimizer: Any, net: nn.Module, loss: Tensor, scheduler: Any, more_steps_follow: bool = False
    ) -> None:
        self.toggle_optimizer(optimizer)
        try:
            optimizer.zero_grad(set_to_none=True)
            with self._own_gradient_sync():
                self.manual_backward(loss)
            self._average_gradients(net)
            with self._scaler_update_deferred(more_steps_follow):
                optimizer.step()
        finally:
            self.untoggle_optimizer(optimizer)
        if scheduler is not None:
            scheduler.step()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, labels = self._unpack(batch)  # (B, C, S, S), (B,) | None
        opt_g, opt_d = self.optimizers()
        sch = self.lr_schedulers()
        sch_g, sch_d = sch if isinstance(sch, (list, tuple)) else (None, None)
        batch_size = real.shape[0]

        self.toggle_optimizer(opt_d)  # G's parameters stop requiring grad while D's loss is built
        d_parts = self.discriminator_loss(real, labels)
        self.untoggle_optimizer(opt_d)
        if not self.loss_is_usable(d_parts, "discriminator loss"):
            return  # nan_policy="skip": no D update and no G update in this iteration
        generator_step_follows = (self.discriminator_steps + 1) % self.hparams.n_critic == 0
        self._update(
            opt_d, self.discriminator, d_parts["loss"], sch_d, more_steps_follow=generator_step_follows
        )
        self.discriminator_steps += 1
        logs = {f"train/{'loss_d' if k == 'loss' else k}": v.detach() for k, v in d_parts.items()}

        if self.discriminator_steps % self.hparams.n_critic == 0:
            self.toggle_optimizer(opt_g)
            g_parts = self.generator_loss(batch_size, labels, real)
            self.untoggle_optimizer(opt_g)
            if self.loss_is_usable(g_parts, "generator loss"):
                self._update(opt_g, self.generator, g_parts["loss"], sch_g)
                self.generator_steps += 1
                self._update_ema()
            logs.update({f"train/{'loss_g' if k == 'loss' else k}": v.detach() for k, v in g_parts.items()})
        # The counters are host ints. self.log of a Python number would build torch.tensor(x, device=<the GPU>), a
        # blocking copy every step; a CPU tensor stays on the host all the way to the logger (Lightning keeps each
        # logged value on its own device), so logging it costs no device work at all.
        logs["train/generator_steps"] = torch.tensor(float(self.generator_steps))
        logs["train/discriminator_steps"] = torch.tensor(float(self.discriminator_steps))
        self.log_train(logs, batch_size, prog_bar=("train/loss_d", "train/loss_g"))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.generator_ema is None:
            return
        t = self.generator_steps
        decay = min(self.hparams.ema_decay, (1 + t) / (10 + t))
        ema_params = list(self.generator_ema.parameters())
        params = [p.detach() for p in self.generator.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.generator_ema.buffers(), self.generator.buffers()):
            ema_buffer.copy_(buffer)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real, labels = self._unpack(batch)
        # D's mean score on held-out real images: falling while the training scores rise means D memorises
        with torch.no_grad():
            scores = self.discriminator(real, labels) if self.num_classes else self.discriminator(real)
        self.log("val/d_real", scores.float().mean(), batch_size=real.shape[0], sync_dist=True)
        self.add_real_images(real)

    def draw_samples(self, n: int, rng: torch.Generator) -> Tensor:
        noise = torch.randn(n, self.latent_dim, generator=rng)
        labels = torch.randint(0, self.num_classes, (n,), generator=rng) if self.num_classes else None
        return self.sample(n, labels=labels, noise=noise)

    # ------------------------------------------------------------------ optimizers and checkpoints
    def adam_settings(self) -> tuple[tuple[float, tuple[float, float]], tuple[float, tuple[float, float]]]:
        """``((lr_g, betas_g), (lr_d, betas_d))`` of the default Adam optimizers."""
        default_lr, default_betas = _DEFAULT_ADAM[self.hparams.loss]
        lr = self.hparams.lr if self.hparams.lr is not None else default_lr
        betas = tuple(self.hparams.betas) if self.hparams.betas is not None else default_betas
        return (lr, betas), (lr, betas)

    def configure_optimizers(self) -> Any:
        optimizers, schedulers = [], []
        for net, optimizer_fn, scheduler_fn, (lr, betas) in zip(
            (self.generator, self.discriminator), self.optimizer_fns, self.scheduler_fns, self.adam_settings()
        ):
            params = [p for p in net.parameters() if p.requires_grad]
            optimizer = (
                optimizer_fn(params)
                if optimizer_fn is not None
                else torch.optim.Adam(params, lr=lr, betas=betas)
            )
            optimizers.append(optimizer)
            if scheduler_fn is not None:
                schedulers.append(scheduler_fn(optimizer))
        if schedulers and len(schedulers) != 2:
            raise ValueError("GANTask: give both scheduler_g and scheduler_d, or neither")
        return (optimizers, schedulers) if schedulers else optimizers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["gan_state"] = {
            "generator_steps": self.generator_steps,
            "discriminator_steps": self.discriminator_steps,
            "noise_rng": self.noise_rng.get_state(),
            "augment_rng": self.augment_rng.get_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("gan_state")
        if state is not None:
            self.generator_steps = int(state["generator_steps"])
            self.discriminator_steps = int(state["discriminator_steps"])
            self.noise_rng.set_state(state["noise_rng"])
            if "augment_rng" in state:  # checkpoints written before DiffAugment had its own stream
                self.augment_rng.set_state(state["augment_rng"])
