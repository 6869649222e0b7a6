"""Do the defaults train well on data they were not tuned on?  ``SegmentationTask(num_classes=K, in_channels=C)``,
built with its shape arguments only, against the same task at other learning rates, on two procedural data sets
that are unlike the embedded shapes (made here, in memory, nothing downloaded):

- ``textures``: greyscale 64 px images cut into 3-6 Voronoi cells, each filled with one of 4 textures (smooth
  noise, horizontal stripes, vertical stripes, fine grain) at a random brightness and contrast, so neither colour
  nor intensity gives the class away: only local structure does.
- ``digits``: 1-3 of scikit-learn's digits 0-3 (16-24 px) on a noisy 64 px canvas; the mask gives each digit pixel
  its digit's class (5 classes with the background), so the class is the shape of a whole digit.
- ``digits10``: the same with all ten digits (11 classes).

Before ``segen.nets.unet.init_classifier``, a tiny (std 0.01) classifier kept the U-Net at "every digit is the
same class" on both digit sets for thousands of steps (its class vectors started equal); this script is how that
was found.

    python experiments/scripts/defaults_check.py                    # textures and digits, lr 1e-3 / default / 1e-2
    python experiments/scripts/defaults_check.py --sets digits10 --lrs default --epochs 20
    python experiments/scripts/defaults_check.py --sets textures --epochs 4 --lrs default

Prints one markdown row per (data set, learning rate): val/mIoU and val/dice at the end of training.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from segen import SegmentationTask


def _smooth_noise(g: torch.Generator, size: int, scale: int) -> Tensor:
    coarse = torch.rand(1, 1, scale, scale, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]


def textures(n: int, size: int = 64, seed: int = 0) -> TensorDataset:
    """``n`` greyscale images ``(1, size, size)`` and masks of 4 texture classes in Voronoi cells."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    images, masks = torch.empty(n, 1, size, size), torch.empty(n, size, size, dtype=torch.long)
    for i in range(n):
        cells = int(torch.randint(3, 7, (1,), generator=g))
        centres = torch.rand(cells, 2, generator=g) * size  # (cells, 2)
        distance = (ys[None] - centres[:, 0, None, None]) ** 2 + (xs[None] - centres[:, 1, None, None]) ** 2
        cell = distance.argmin(0)  # (H, W) cell index
        classes = torch.randint(0, 4, (cells,), generator=g)
        image = torch.zeros(size, size)
        for c in range(cells):
            period = 3.0 + 4.0 * float(torch.rand(1, generator=g))
            phase = 2 * math.pi * float(torch.rand(1, generator=g))
            kind = int(classes[c])
            if kind == 0:
                texture = _smooth_noise(g, size, 6) * 2 - 1
            elif kind == 1:
                texture = torch.sin(2 * math.pi * ys / period + phase)
            elif kind == 2:
                texture = torch.sin(2 * math.pi * xs / period + phase)
            else:
                texture = torch.rand(size, size, generator=g) * 2 - 1
            brightness = float(torch.rand(1, generator=g)) * 0.6 - 0.3
            contrast = 0.3 + 0.5 * float(torch.rand(1, generator=g))
            image = torch.where(cell == c, brightness + contrast * texture, image)
        images[i, 0] = image + 0.1 * torch.randn(size, size, generator=g)
        masks[i] = classes[cell]
    return TensorDataset(images, masks)


def digits(n: int, size: int = 64, seed: int = 0, num_digits: int = 4) -> TensorDataset:
    """``n`` greyscale canvases with 1-3 digits below ``num_digits``; mask = digit + 1 on its ink, 0 elsewhere."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = torch.tensor(data.target) < num_digits
    glyphs = torch.tensor(data.images, dtype=torch.float32)[keep, None] / 16  # (N, 1, 8, 8) in [0, 1]
    labels = torch.tensor(data.target)[keep]
    g = torch.Generator().manual_seed(seed)
    images = 0.15 * torch.randn(n, 1, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            k = int(torch.randint(0, len(glyphs), (1,), generator=g))
            side = int(torch.randint(16, 25, (1,), generator=g))
            glyph = F.interpolate(glyphs[k : k + 1], size=(side, side), mode="bilinear", align_corners=False)[
                0, 0
            ]
            top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
            region = (slice(top, top + side), slice(left, left + side))
            ink = glyph > 0.35
            images[i, 0][region] = torch.where(ink, glyph, images[i, 0][region])
            masks[i][region] = torch.where(ink, labels[k] + 1, masks[i][region])
    return TensorDataset(images, masks)


SETS = {
    "textures": (textures, 4),
    "digits": (digits, 5),
    "digits10": (functools.partial(digits, num_digits=10), 11),
}


def run(name: str, lr: float | None, epochs: int, n_train: int, n_val: int, seed: int) -> dict[str, float]:
    make, num_classes = SETS[name]
    train, val = make(n_train, seed=seed), make(n_val, seed=seed + 1000)
    seed_everything(seed, verbose=False)
    task = SegmentationTask(num_classes=num_classes, in_channels=1, **({} if lr is None else {"lr": lr}))
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(task, DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=32))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["textures", "digits"], choices=list(SETS))
    parser.add_argument(
        "--lrs", nargs="+", default=["1e-3", "default", "1e-2"], help="'default' = the task's own"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    default = inspect.signature(SegmentationTask).parameters["lr"].default
    print("| data set | lr | val/mIoU | val/dice | time |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.sets:
        for lr_text in args.lrs:
            lr = None if lr_text == "default" else float(lr_text)
            m = run(name, lr, args.epochs, args.n_train, args.n_val, args.seed)
            label = f"{default:g} (default)" if lr is None else lr_text
            print(
                f"| {name} | {label} | {m['val/mIoU']:.3f} | {m['val/dice']:.3f} | {m['seconds']:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
