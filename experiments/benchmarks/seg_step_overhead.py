"""Time per training step: SegmentationTask under a Lightning Trainer vs. the same work in a hand-written loop.

Both train the same U-Net (same initial weights) on the same precomputed batches with the same AdamW, the same
warm-up/cosine schedule and the same Dice + CE loss, so their losses must agree step by step. Warm-up steps are
excluded from the timing. Prints the ratio (goal <= 1.10 on CPU) and the largest loss difference.

    python experiments/benchmarks/seg_step_overhead.py                 # defaults: 64 px, batch 16, 30 timed steps
    python experiments/benchmarks/seg_step_overhead.py --barebones     # Trainer(barebones=True)
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from _overhead import compare, timed_fit

from segen import SegmentationTask, ShapesDataModule, UNet
from segen.tasks.optim import param_groups, warmup_cosine


def make_batches(n: int, batch_size: int, image_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = ShapesDataModule(image_size=image_size, num_train=n * batch_size, batch_size=batch_size)
    data.setup("fit")
    dataset = data.train_dataset
    batches = []
    for b in range(n):
        items = [dataset[b * batch_size + i] for i in range(batch_size)]
        batches.append((torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])))
    return batches


def build_task(seed: int, args: argparse.Namespace, total_steps: int) -> SegmentationTask:
    torch.manual_seed(seed)
    net = functools.partial(UNet, base_channels=args.base_channels, depth=args.depth)
    return SegmentationTask(num_classes=4, in_channels=3, net=net, lr=args.lr, warmup_steps=args.warmup_steps)


def run_lightning(batches, args, total: int) -> tuple[float, list[float]]:
    return timed_fit(build_task(0, args, total), batches, total, args.warmup, args.barebones)


def run_plain(batches, args, total: int) -> tuple[float, list[float]]:
    task = build_task(0, args, total)  # same weights; only .net and .criterion are used
    net, criterion = task.net, task.criterion
    optimizer = torch.optim.AdamW(param_groups(net, 1e-4), lr=args.lr)
    scheduler = warmup_cosine(optimizer, args.warmup_steps, total)
    net.train()
    losses, start = [], 0.0
    for step, (images, masks) in enumerate(batches[:total]):
        if step == args.warmup:
            start = time.perf_counter()
        loss = criterion(net(images), masks)
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
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs of each; the best time counts"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--barebones", action="store_true")
    args = parser.parse_args()

    total = args.warmup + args.steps
    batches = make_batches(total, args.batch_size, args.image_size)
    plain, lightning, diff = compare(
        lambda: run_plain(batches, args, total), lambda: run_lightning(batches, args, total), args.repeats
    )
    print("| setting | plain loop s/step | SegmentationTask s/step | ratio | max |loss diff| |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| U-Net {args.base_channels}ch depth {args.depth}, {args.image_size}px, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads{', barebones' if args.barebones else ''} | {plain:.4f} | "
        f"{lightning:.4f} | {lightning / plain:.3f} | {diff} |"
    )


if __name__ == "__main__":
    main()
