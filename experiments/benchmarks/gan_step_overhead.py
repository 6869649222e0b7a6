"""Time per training iteration: GANTask under a Lightning Trainer vs. the same work in a hand-written loop.

One iteration = one discriminator step and one generator step (non-saturating loss, Adam, EMA generator), on the
same precomputed batches, from the same initial weights, with the noise drawn from the same seeded generator in the
same order; so both must produce the same losses step by step. The plain loop is a careful one (it also switches off
the gradients of the net that is not being trained), not a naive one. Warm-up iterations are not timed. Prints the
ratio (goal <= 1.10 on CPU) and the largest loss difference.

    python experiments/benchmarks/gan_step_overhead.py              # DCGAN, 32 px, batch 64, 30 timed iterations
    python experiments/benchmarks/gan_step_overhead.py --barebones  # Trainer(barebones=True)
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from segen import DigitsDataModule, GANTask
from segen.nets import DCGANDiscriminator, DCGANGenerator
from segen.tasks.gan import max_steps_for


def make_batches(n: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = DigitsDataModule(image_size=32, batch_size=batch_size)
    data.setup("fit")
    loader = iter(DataLoader(data.train_dataset, batch_size=batch_size, shuffle=False, drop_last=True))
    batches = []
    while len(batches) < n:
        try:
            batches.append(next(loader))
        except StopIteration:
            loader = iter(
                DataLoader(data.train_dataset, batch_size=batch_size, shuffle=False, drop_last=True)
            )
    return batches


def build_task(args: argparse.Namespace) -> GANTask:
    torch.manual_seed(0)
    return GANTask(
        channels=1,
        image_size=32,
        latent_dim=args.latent_dim,
        generator=functools.partial(DCGANGenerator, base_channels=args.base_channels),
        discriminator=functools.partial(DCGANDiscriminator, base_channels=args.base_channels),
        ema_decay=0.999,
        fid_feature=None,
        seed=0,
    )


class StepTimer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.losses, self.start, self.end = warmup, [], 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = (
            trainer.callback_metrics
        )  # empty with barebones=True (no logging): losses are not compared then
        if "train/loss_d" in metrics:
            self.losses.append((metrics["train/loss_d"].item(), metrics["train/loss_g"].item()))
        self.end = time.perf_counter()


def run_lightning(batches, args, total: int) -> tuple[float, list[tuple[float, float]]]:
    task = build_task(args)
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps_for(total),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        barebones=args.barebones,
        **({} if args.barebones else {"log_every_n_steps": 50}),
    )
    trainer.fit(task, DataLoader(batches, batch_size=None, shuffle=False))
    return (timer.end - timer.start) / (total - args.warmup), timer.losses


def run_plain(batches, args, total: int) -> tuple[float, list[tuple[float, float]]]:
    task = build_task(args)  # the same initial weights; only the nets are used
    g, d, ema = task.generator, task.discriminator, task.generator_ema
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(0)
    losses, start = [], 0.0
    for step, (real, _) in enumerate(batches[:total]):
        if step == args.warmup:
            start = time.perf_counter()
        b = real.shape[0]
        # discriminator
        g.requires_grad_(False)
        with torch.no_grad():
            fake = g(torch.randn(b, args.latent_dim, generator=rng))
        loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        g.requires_grad_(True)
        # generator
        d.requires_grad_(False)
        loss_g = F.softplus(-d(g(torch.randn(b, args.latent_dim, generator=rng)))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        # EMA, with the same warm-up ramp as GANTask
        with torch.no_grad():
            decay = min(0.999, (1 + step + 1) / (10 + step + 1))
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in g.parameters()], 1 - decay)
            for e, buf in zip(ema.buffers(), g.buffers()):
                e.copy_(buf)
        losses.append((loss_d.item(), loss_g.item()))
    return (time.perf_counter() - start) / (total - args.warmup), losses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="timed iterations (one D and one G step each)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs of each; the best time counts"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=64)
    parser.add_argument("--barebones", action="store_true")
    args = parser.parse_args()

    total = args.warmup + args.steps
    batches = make_batches(total, args.batch_size)
    plain_times, lightning_times = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both
        t, plain_losses = run_plain(batches, args, total)
        plain_times.append(t)
        t, lightning_losses = run_lightning(batches, args, total)
        lightning_times.append(t)
    plain, lightning = min(plain_times), min(lightning_times)
    diffs = [abs(a - b) for pa, pb in zip(plain_losses, lightning_losses) for a, b in zip(pa, pb)]
    diff = f"{max(diffs):.2e}" if diffs else "n/a (no logging)"
    print("| setting | plain loop s/iter | GANTask s/iter | ratio | max |loss diff| |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| DCGAN base {args.base_channels}, 32px digits, batch {args.batch_size}, {torch.get_num_threads()} threads"
        f"{', barebones' if args.barebones else ''} | {plain:.4f} | {lightning:.4f} | {lightning / plain:.3f} | "
        f"{diff} |"
    )


if __name__ == "__main__":
    main()
