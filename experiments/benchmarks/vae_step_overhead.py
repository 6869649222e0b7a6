"""Time per training step: VAETask under a Lightning Trainer vs. the same work in a hand-written loop.

Both train the same encoder/decoder (same initial weights) on the same precomputed digit batches with the same
AdamW, warm-up/cosine schedule, reparameterisation noise (the same seeded generator, drawn in the same order) and
ELBO, so their losses must agree step by step. Warm-up steps are not timed. Prints the ratio (goal <= 1.10 on CPU)
and the largest loss difference.

    python experiments/benchmarks/vae_step_overhead.py              # 32 px digits, batch 64, 40 timed steps
    python experiments/benchmarks/vae_step_overhead.py --barebones  # Trainer(barebones=True)
"""

from __future__ import annotations

import argparse
import time

import torch
from _overhead import compare, timed_fit
from torch.utils.data import DataLoader

from segen import DigitsDataModule, VAETask
from segen.losses.vae import elbo
from segen.tasks.optim import param_groups, warmup_cosine


def make_batches(n: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = DigitsDataModule(image_size=32, batch_size=batch_size)
    data.setup("fit")
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(batches) < n:
        for batch in DataLoader(data.train_dataset, batch_size=batch_size, shuffle=False, drop_last=True):
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def build_task(args: argparse.Namespace) -> VAETask:
    torch.manual_seed(0)
    return VAETask(channels=1, image_size=32, latent_dim=args.latent_dim, lr=args.lr, warmup_steps=10, seed=0)


def run_lightning(batches, args, total: int) -> tuple[float, list[float]]:
    return timed_fit(build_task(args), batches, total, args.warmup, args.barebones)


def run_plain(batches, args, total: int) -> tuple[float, list[float]]:
    task = build_task(args)  # the same initial weights; only its nets and log-scale are used
    encoder, decoder, log_scale = task.encoder, task.decoder, task.log_scale
    optimizer = torch.optim.AdamW(param_groups(task, 0.0), lr=args.lr)
    scheduler = warmup_cosine(optimizer, 10, total)
    rng = torch.Generator().manual_seed(0)
    losses, start = [], 0.0
    for step, (images, _) in enumerate(batches[:total]):
        if step == args.warmup:
            start = time.perf_counter()
        mu, logvar = encoder(images)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=rng)
        loss = elbo(images, decoder(z), mu, logvar, "gaussian", 1.0, log_scale).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return (time.perf_counter() - start) / (total - args.warmup), losses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs of each; the best time counts"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--barebones", action="store_true")
    args = parser.parse_args()

    total = args.warmup + args.steps
    batches = make_batches(total, args.batch_size)
    plain, lightning, diff = compare(
        lambda: run_plain(batches, args, total), lambda: run_lightning(batches, args, total), args.repeats
    )
    print("| setting | plain loop s/step | VAETask s/step | ratio | max |loss diff| |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| conv VAE, 32px digits, batch {args.batch_size}, {torch.get_num_threads()} threads"
        f"{', barebones' if args.barebones else ''} | {plain:.4f} | {lightning:.4f} | {lightning / plain:.3f} | "
        f"{diff} |"
    )


if __name__ == "__main__":
    main()
