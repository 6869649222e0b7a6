"""The step benchmarks: each segen task against a hand-written loop doing the same work.

Every pair trains the same networks (built by the same seeded constructor, so the same initial weights) on the same
precomputed batches, with the same optimizer, schedule, loss and random draws (the task's own seeded generators,
drawn in the same order), so the losses agree step by step and the final weights and buffers agree too; the table's
``max abs Δ`` is the largest difference over both. The plain loops are careful ones, not naive ones: they also
switch off the gradients of the GAN net that is not being trained, and move each batch to the device the way the
Trainer does.

    U-Net      SegmentationTask: U-Net, Dice + cross-entropy, AdamW, warm-up + cosine (shapes, 64 px)
    DCGAN      GANTask: one discriminator and one generator step per iteration, non-saturating loss, Adam, EMA
               generator (digits, 32 px)
    VAE        VAETask: Gaussian ELBO with the scale fitted per batch, reparameterisation noise from the task's generator
    VQ-VAE     VQVAETask: encoder, nearest code, EMA codebook update (with Laplace smoothing and dead-code restarts)
               and commitment loss, written out by hand on the task's codebook buffers; decoder; MSE. The loop
               does not compute the codebook perplexity and usage that the task logs: their cost counts as segen's
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from _overhead import (
    LoopClock,
    LossReader,
    Run,
    accelerator_of,
    as_floats,
    float_state,
    keep_loss,
    output_loss,
    timed_fit,
)
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segen import DigitsDataModule, GANTask, SegmentationTask, ShapesDataModule, UNet, VAETask, VQVAETask
from segen.losses.vae import elbo, gaussian_log_scale
from segen.nets import DCGANDiscriminator, DCGANGenerator
from segen.nets.vae import VAEDecoder, VAEEncoder
from segen.tasks.gan import max_steps_for
from segen.tasks.optim import param_groups, warmup_cosine

Batch = tuple[Tensor, Tensor]
PlainLoop = Callable[[Sequence[Batch], int, str], Run]  # (batches, warm-up steps, device) -> Run


@dataclass(frozen=True)
class StepBenchmark:
    """One task against its plain loop: everything the shared comparison needs."""

    name: str  # the table's row name, e.g. "U-Net step"
    setting: str  # sizes, for the table
    batches: list[Batch]
    build_task: Callable[[], LightningModule]
    run_plain: PlainLoop
    read_loss: LossReader = output_loss
    max_steps: int | None = (
        None  # Trainer(max_steps=...) when it is not one per batch (GAN: two per iteration)
    )
    segen: bool = True  # False: no segen code runs in it (Lightning's loop alone), so no goal applies

    def run_task(
        self,
        warmup: int,
        device: str,
        barebones: bool,
        task: LightningModule | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> Run:
        """The task side: ``task`` (default: a fresh ``build_task()``) trained on the batches under the Trainer."""
        return timed_fit(
            task if task is not None else self.build_task(),
            self.batches,
            warmup,
            barebones=barebones,
            max_steps=self.max_steps,
            read_loss=self.read_loss,
            accelerator=accelerator_of(device),
            callbacks=callbacks,
        )


class Speed(NamedTuple):
    """The GPU options of the U-Net rows: mixed precision, channels_last memory format, torch.compile."""

    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False


_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _repeat(loader_fn: Callable[[], DataLoader], n: int) -> list[Batch]:
    """The first ``n`` batches of ``loader_fn()``'s loader, starting it again when it runs out."""
    batches: list[Batch] = []
    while len(batches) < n:
        for batch in loader_fn():
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def digits_batches(n: int, batch_size: int, image_size: int) -> list[Batch]:
    data = DigitsDataModule(image_size=image_size, batch_size=batch_size)
    data.setup("fit")
    return _repeat(
        lambda: DataLoader(data.train_dataset, batch_size=batch_size, shuffle=False, drop_last=True), n
    )


SIZE_NAMES = ("cpu", "gpu", "large")  # the choices of --size; "tiny" comes from --tiny


def size_name(size: str | None, tiny: bool, device: str) -> str:
    """The sizes a run uses: ``--tiny``, else ``--size``, else "gpu" on CUDA and "cpu" elsewhere."""
    if tiny and size is not None:
        raise ValueError("--tiny sets the sizes; give --size or --tiny, not both")
    if tiny:
        return "tiny"
    return size or ("gpu" if torch.device(device).type == "cuda" else "cpu")


# ---------------------------------------------------------------------------------------------------- U-Net
# Sizes by name: "cpu" is the measurement on 2 CPU cores; "gpu" is the default on a GPU (steps of 5-25 ms on an
# H200, where the host's Python per step still shows); "large" gives the GPU more work per step; "tiny" is the tests'
# smoke run.
SEG_SIZES = {
    "cpu": dict(image_size=64, batch_size=16, base_channels=16, depth=4),
    "gpu": dict(image_size=128, batch_size=32, base_channels=32, depth=4),
    "large": dict(image_size=256, batch_size=16, base_channels=64, depth=4),
    "tiny": dict(image_size=16, batch_size=4, base_channels=4, depth=2),
}
SEG_LR, SEG_WARMUP = 2e-3, 10


def shapes_batches(n: int, batch_size: int, image_size: int) -> list[Batch]:
    data = ShapesDataModule(image_size=image_size, num_train=n * batch_size, batch_size=batch_size)
    data.setup("fit")
    return _repeat(
        lambda: DataLoader(data.train_dataset, batch_size=batch_size, shuffle=False, drop_last=True), n
    )


def build_seg_task(base_channels: int, depth: int) -> SegmentationTask:
    torch.manual_seed(0)
    net = functools.partial(UNet, base_channels=base_channels, depth=depth)
    return SegmentationTask(num_classes=4, in_channels=3, net=net, lr=SEG_LR, warmup_steps=SEG_WARMUP)


def run_plain_seg(
    build: Callable[[], SegmentationTask],
    batches: Sequence[Batch],
    warmup: int,
    device: str,
    speed: Speed | None = None,
) -> Run:
    speed = speed or Speed()
    task = build().to(device)  # same weights; only .net and .criterion are used
    net, criterion = task.net, task.criterion
    if speed.channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(net, 1e-4), lr=SEG_LR)
    scheduler = warmup_cosine(optimizer, SEG_WARMUP, len(batches))
    if speed.compile:
        torch._dynamo.reset()  # a fresh compile per run, as on the segen side
        net.compile()
    dtype = _AUTOCAST.get(speed.precision)
    scaler = torch.amp.GradScaler(torch.device(device).type) if speed.precision == "16-mixed" else None
    memory_format = torch.channels_last if speed.channels_last else torch.preserve_format
    net.train()
    clock, losses = LoopClock(warmup, len(batches), device), []
    for step, (images, masks) in enumerate(batches):
        clock.tick(step)
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(net(images), masks)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        keep_loss(losses, loss)
    return Run(clock.seconds(), as_floats(losses), float_state(task))


def seg_benchmark(steps: int, sizes: str) -> StepBenchmark:
    size = SEG_SIZES[sizes]
    build = functools.partial(build_seg_task, size["base_channels"], size["depth"])
    return StepBenchmark(
        name="U-Net step",
        setting=f"{size['base_channels']}ch depth {size['depth']}, {size['image_size']} px, batch {size['batch_size']}",
        batches=shapes_batches(steps, size["batch_size"], size["image_size"]),
        build_task=build,
        run_plain=functools.partial(run_plain_seg, build),
    )


# ---------------------------------------------------------------------------------------------------- DCGAN
GAN_SIZES = {
    "cpu": dict(image_size=32, batch_size=64, base_channels=32, latent_dim=64),
    "gpu": dict(image_size=32, batch_size=256, base_channels=64, latent_dim=128),
    "large": dict(image_size=32, batch_size=1024, base_channels=128, latent_dim=128),
    "tiny": dict(image_size=16, batch_size=8, base_channels=8, latent_dim=8),
}


class RecordedGANTask(GANTask):
    """``GANTask`` that also keeps each iteration's ``(loss_d, loss_g)``, as handed to ``log_train``, for the
    benchmark's exactness check. What the bar and ``callback_metrics`` hold may be a step old on a GPU (host copies
    made without waiting, see ``SegenTask.log_train``), and under ``barebones=True`` nothing is logged at all."""

    last_losses: tuple[Tensor, Tensor] | None = None

    def log_train(self, values: dict[str, Tensor], batch_size: int, prog_bar: Sequence[str] = ()) -> None:
        self.last_losses = (values["train/loss_d"], values["train/loss_g"])
        super().log_train(values, batch_size, prog_bar)


def build_gan_task(image_size: int, base_channels: int, latent_dim: int) -> GANTask:
    torch.manual_seed(0)
    return RecordedGANTask(
        channels=1,
        image_size=image_size,
        latent_dim=latent_dim,
        generator=functools.partial(DCGANGenerator, base_channels=base_channels),
        discriminator=functools.partial(DCGANDiscriminator, base_channels=base_channels),
        ema_decay=0.999,
        fid_feature=None,
        seed=0,
    )


def gan_logged_losses(trainer: Trainer, outputs: Any) -> tuple[Tensor, Tensor] | None:
    """(loss_d, loss_g) of the iteration (``RecordedGANTask``); ``None`` before the first one."""
    task = trainer.lightning_module
    losses, task.last_losses = task.last_losses, None
    return losses


def run_plain_gan(
    build: Callable[[], GANTask], latent_dim: int, batches: Sequence[Batch], warmup: int, device: str
) -> Run:
    task = build().to(
        device
    )  # the same initial weights; only the nets and the noise generator's seed are used
    g, d, ema = task.generator, task.discriminator, task.generator_ema
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(0)
    clock, losses = LoopClock(warmup, len(batches), device), []
    for step, (real, _) in enumerate(batches):
        clock.tick(step)
        real = real.to(device, non_blocking=True)
        b = real.shape[0]
        # discriminator
        g.requires_grad_(False)
        with torch.no_grad():
            fake = g(torch.randn(b, latent_dim, generator=rng).to(device, non_blocking=True))
        loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        g.requires_grad_(True)
        # generator
        d.requires_grad_(False)
        noise = torch.randn(b, latent_dim, generator=rng).to(device, non_blocking=True)
        loss_g = F.softplus(-d(g(noise))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        # EMA of the generator, with the same warm-up ramp as GANTask
        with torch.no_grad():
            decay = min(0.999, (1 + step + 1) / (10 + step + 1))
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in g.parameters()], 1 - decay)
            for e, buf in zip(ema.buffers(), g.buffers()):
                e.copy_(buf)
        keep_loss(losses, (loss_d, loss_g))
    return Run(clock.seconds(), as_floats(losses), float_state(task))


def gan_benchmark(steps: int, sizes: str) -> StepBenchmark:
    size = GAN_SIZES[sizes]
    build = functools.partial(build_gan_task, size["image_size"], size["base_channels"], size["latent_dim"])
    return StepBenchmark(
        name="DCGAN iteration (D + G step)",
        setting=f"base {size['base_channels']}, {size['image_size']} px digits, batch {size['batch_size']}",
        batches=digits_batches(steps, size["batch_size"], size["image_size"]),
        build_task=build,
        run_plain=functools.partial(run_plain_gan, build, size["latent_dim"]),
        read_loss=gan_logged_losses,
        max_steps=max_steps_for(steps),
    )


# ---------------------------------------------------------------------------------------------------- VAE
VAE_SIZES = {
    "cpu": dict(image_size=32, batch_size=64, latent_dim=16, base_channels=32),
    "gpu": dict(image_size=32, batch_size=256, latent_dim=32, base_channels=64),
    "large": dict(image_size=32, batch_size=1024, latent_dim=32, base_channels=128),
    "tiny": dict(image_size=16, batch_size=8, latent_dim=4, base_channels=8),
}
VAE_LR, VAE_WARMUP = 1e-3, 10


def build_vae_task(image_size: int, latent_dim: int, base_channels: int) -> VAETask:
    torch.manual_seed(0)
    return VAETask(
        channels=1,
        image_size=image_size,
        latent_dim=latent_dim,
        encoder=functools.partial(VAEEncoder, base_channels=base_channels),
        decoder=functools.partial(VAEDecoder, base_channels=base_channels),
        lr=VAE_LR,
        warmup_steps=VAE_WARMUP,
        fid_feature=None,
        seed=0,
    )


def run_plain_vae(build: Callable[[], VAETask], batches: Sequence[Batch], warmup: int, device: str) -> Run:
    task = build().to(device)  # the same initial weights; only its nets are used
    encoder, decoder = task.encoder, task.decoder
    optimizer = torch.optim.AdamW(param_groups(task, 0.0), lr=VAE_LR)
    scheduler = warmup_cosine(optimizer, VAE_WARMUP, len(batches))
    rng = torch.Generator().manual_seed(0)
    clock, losses = LoopClock(warmup, len(batches), device), []
    for step, (images, _) in enumerate(batches):
        clock.tick(step)
        images = images.to(device, non_blocking=True)
        mu, logvar = encoder(images)
        noise = torch.randn(mu.shape, generator=rng).to(device, non_blocking=True)
        z = mu + (0.5 * logvar).exp() * noise
        output = decoder(z)
        # the likelihood's scale fitted to the batch, and the running mean kept for evaluation, as VAETask does
        mse = (images - output).square().mean().detach()
        log_scale = gaussian_log_scale(mse)
        with torch.no_grad():
            task.running_mse.copy_(0.99 * task.running_mse + (1 - 0.99) * mse)
            task.running_weight.copy_(0.99 * task.running_weight + 1 - 0.99)
        loss = elbo(images, output, mu, logvar, "gaussian", 1.0, log_scale).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        keep_loss(losses, loss)
    return Run(clock.seconds(), as_floats(losses), float_state(task))


def vae_benchmark(steps: int, sizes: str) -> StepBenchmark:
    size = VAE_SIZES[sizes]
    build = functools.partial(build_vae_task, size["image_size"], size["latent_dim"], size["base_channels"])
    return StepBenchmark(
        name="VAE step",
        setting=f"latent {size['latent_dim']}, {size['image_size']} px digits, batch {size['batch_size']}",
        batches=digits_batches(steps, size["batch_size"], size["image_size"]),
        build_task=build,
        run_plain=functools.partial(run_plain_vae, build),
    )


# ---------------------------------------------------------------------------------------------------- VQ-VAE
# The cpu size is experiments/configs/vqvae_digits.yaml's model; tiny restarts dead codes every 2 steps so that the
# test covers the restarts too (the quantiser's default is every 100 steps).
VQ_SIZES = {
    "cpu": dict(
        image_size=32, batch_size=64, num_embeddings=128, embedding_dim=32, hidden=64, restart_every=100
    ),
    "gpu": dict(
        image_size=32, batch_size=256, num_embeddings=512, embedding_dim=64, hidden=128, restart_every=100
    ),
    "large": dict(
        image_size=32, batch_size=1024, num_embeddings=512, embedding_dim=64, hidden=256, restart_every=100
    ),
    "tiny": dict(image_size=16, batch_size=8, num_embeddings=16, embedding_dim=8, hidden=16, restart_every=2),
}
VQ_LR, VQ_WARMUP = 1e-3, 10


def build_vq_task(
    image_size: int, num_embeddings: int, embedding_dim: int, hidden: int, restart_every: int
) -> VQVAETask:
    torch.manual_seed(0)
    task = VQVAETask(
        channels=1,
        image_size=image_size,
        num_embeddings=num_embeddings,
        embedding_dim=embedding_dim,
        hidden=hidden,
        lr=VQ_LR,
        warmup_steps=VQ_WARMUP,
        seed=0,
    )
    task.quantizer.restart_every = restart_every
    return task


def run_plain_vq(build: Callable[[], VQVAETask], batches: Sequence[Batch], warmup: int, device: str) -> Run:
    """A VQ-VAE loop written out: the quantiser's nearest-code search, EMA update and dead-code restarts are done
    here by hand, on the task's codebook buffers (so their final values can be compared), not by its module."""
    task = build().to(device)  # the same initial weights and codebook; its encoder and decoder are used
    encoder, decoder, vq = task.encoder, task.decoder, task.quantizer
    codebook, cluster_size, embed_sum = vq.embedding, vq.cluster_size, vq.embed_sum  # (K, D), (K,), (K, D)
    k, decay, eps, beta = vq.num_embeddings, vq.decay, vq.eps, vq.commitment
    restart_every, dead_threshold, restart_rng = vq.restart_every, vq.dead_threshold, vq.rng
    optimizer = torch.optim.AdamW(param_groups(nn.ModuleList([encoder, decoder]), 0.0), lr=VQ_LR)
    scheduler = warmup_cosine(optimizer, VQ_WARMUP, len(batches))
    clock, losses = LoopClock(warmup, len(batches), device), []
    for step, (images, _) in enumerate(batches):
        clock.tick(step)
        images = images.to(device, non_blocking=True)
        z = encoder(images)  # (B, D, h, w)
        b, d, h, w = z.shape
        flat = z.movedim(1, -1).reshape(-1, d)  # (N, D)
        with torch.no_grad():
            e = flat.detach()
            distances = torch.addmm(
                e.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None, :], e, codebook.t(), alpha=-2.0
            )  # (N, K): |z|^2 - 2 z.e + |e|^2
            indices = distances.argmin(dim=1)  # (N,)
            q = F.embedding(indices, codebook).view(b, h, w, d).movedim(-1, 1)  # (B, D, h, w), a copy
            # EMA: N <- g N + (1-g) n,  m <- g m + (1-g) sum z,  e = m / laplace(N)
            counts = torch.bincount(indices, minlength=k).float()
            sums = torch.zeros(k, d, device=e.device).index_add_(0, indices, e)
            cluster_size.copy_(cluster_size * decay + counts * (1.0 - decay))
            embed_sum.copy_(embed_sum * decay + sums * (1.0 - decay))
            total = cluster_size.sum()
            smoothed = (cluster_size + eps) / (total + k * eps) * total
            codebook.copy_(embed_sum / smoothed[:, None])
            if restart_every and (step + 1) % restart_every == 0:
                dead = cluster_size < dead_threshold
                num_dead = int(dead.sum())
                if num_dead:
                    n = e.shape[0]
                    pick = (
                        torch.randperm(n, generator=restart_rng)[:num_dead]
                        if n >= num_dead
                        else torch.randint(n, (num_dead,), generator=restart_rng)
                    )
                    new = e[pick.to(e.device)].contiguous()
                    codebook[dead] = new
                    embed_sum[dead] = new
                    cluster_size[dead] = 1.0
        commitment = beta * F.mse_loss(z, q)
        recon = decoder(z + (q - z).detach())  # straight-through
        loss = F.mse_loss(recon, images) + commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        keep_loss(losses, loss)
    return Run(clock.seconds(), as_floats(losses), float_state(task))


def vq_benchmark(steps: int, sizes: str) -> StepBenchmark:
    size = VQ_SIZES[sizes]
    build = functools.partial(
        build_vq_task,
        size["image_size"],
        size["num_embeddings"],
        size["embedding_dim"],
        size["hidden"],
        size["restart_every"],
    )
    return StepBenchmark(
        name="VQ-VAE step",
        setting=(
            f"{size['num_embeddings']} codes x {size['embedding_dim']}, hidden {size['hidden']}, "
            f"{size['image_size']} px digits, batch {size['batch_size']}"
        ),
        batches=digits_batches(steps, size["batch_size"], size["image_size"]),
        build_task=build,
        run_plain=functools.partial(run_plain_vq, build),
    )


# ---------------------------------------------------------------------------------------------------- Lightning alone
EMPTY_LR = 1e-3


class EmptyStep(LightningModule):
    """The least a training step can be under the Trainer: one scalar weight per optimizer, a loss from the batch, its
    gradient and an SGD step (two optimizers through manual optimization, as a GAN's D and G step). What it costs
    over the same plain loop is Lightning's own loop per step: a floor that no task's step row can go under, so a
    step row's extra time minus this one's is segen's."""

    def __init__(self, optimizers: int = 1) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.ones(())) for _ in range(optimizers)])
        self.automatic_optimization = optimizers == 1

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images = batch[0]
        if self.automatic_optimization:
            return (self.weights[0] * images).mean()
        for optimizer, weight in zip(self.optimizers(), self.weights, strict=True):
            loss = (weight * images).mean()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss.detach()  # the last optimizer's, as the plain loop keeps it

    def configure_optimizers(self) -> Any:
        optimizers = [torch.optim.SGD([weight], lr=EMPTY_LR) for weight in self.weights]
        return optimizers[0] if self.automatic_optimization else optimizers


def run_plain_empty(optimizers: int, batches: Sequence[Batch], warmup: int, device: str) -> Run:
    module = EmptyStep(optimizers).to(device)  # for its weights and their names only
    steps = [(weight, torch.optim.SGD([weight], lr=EMPTY_LR)) for weight in module.weights]
    clock, losses = LoopClock(warmup, len(batches), device), []
    for step, (images, _) in enumerate(batches):
        clock.tick(step)
        images = images.to(device, non_blocking=True)
        for weight, optimizer in steps:
            loss = (weight * images).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        keep_loss(losses, loss)
    return Run(clock.seconds(), as_floats(losses), float_state(module))


def empty_benchmark(optimizers: int, steps: int, sizes: str) -> StepBenchmark:
    """Lightning's loop alone, on the VAE rows' batches (the same batch transfer as theirs)."""
    size = VAE_SIZES[sizes]
    how = (
        "one weight, automatic optimization"
        if optimizers == 1
        else f"{optimizers} weights, manual optimization"
    )
    return StepBenchmark(
        name=f"Empty step ({how})",
        setting=f"{size['image_size']} px digits, batch {size['batch_size']}",
        batches=digits_batches(steps, size["batch_size"], size["image_size"]),
        build_task=functools.partial(EmptyStep, optimizers),
        run_plain=functools.partial(run_plain_empty, optimizers),
        max_steps=steps * optimizers,
        segen=False,
    )


# Lightning's own per-step cost, the floor under the step rows: `benchmark.py --only lightning`
FLOOR_BENCHMARKS: dict[str, Callable[[int, str], StepBenchmark]] = {
    "auto": functools.partial(empty_benchmark, 1),
    "manual": functools.partial(empty_benchmark, 2),
}

STEP_BENCHMARKS: dict[str, Callable[[int, str], StepBenchmark]] = {
    "seg": seg_benchmark,
    "gan": gan_benchmark,
    "vae": vae_benchmark,
    "vqvae": vq_benchmark,
}
