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
from _overhead import compare, timed_fit
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


def logged_losses(trainer, outputs) -> tuple[float, float] | None:
    """(loss_d, loss_g) of the step; None with barebones=True (no logging)."""
    metrics = trainer.callback_metrics
    if "train/loss_d" not in metrics:
        return None
    return metrics["train/loss_d"].item(), metrics["train/loss_g"].item()


def run_lightning(batches, args, total: int) -> tuple[float, list[tuple[float, float]]]:
    task = build_task(args)
    return timed_fit(task, batches, total, args.warmup, args.barebones, max_steps_for(total), logged_losses)


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
    plain, lightning, diff = compare(
        lambda: run_plain(batches, args, total), lambda: run_lightning(batches, args, total), args.repeats
    )
    print("| setting | plain loop s/iter | GANTask s/iter | ratio | max |loss diff| |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| DCGAN base {args.base_channels}, 32px digits, batch {args.batch_size}, {torch.get_num_threads()} threads"
        f"{', barebones' if args.barebones else ''} | {plain:.4f} | {lightning:.4f} | {lightning / plain:.3f} | "
        f"{diff} |"
    )


if __name__ == "__main__":
    main()
