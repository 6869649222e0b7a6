"""Do the defaults train well on data they were not tuned on?  A task built with its shape arguments only
(``SegmentationTask(num_classes=K, in_channels=C)``, ``VAETask(channels=C, image_size=S)``,
``VQVAETask(channels=C, image_size=S)``), against the same task at other learning rates, on procedural data sets
made here, in memory, nothing downloaded. For segmentation (``--task seg``, the default), two sets unlike the
embedded shapes:

- ``textures``: greyscale 64 px images cut into 3-6 Voronoi cells, each filled with one of 4 textures (smooth
  noise, horizontal stripes, vertical stripes, fine grain) at a random brightness and contrast, so neither colour
  nor intensity gives the class away: only local structure does.
- ``digits``: 1-3 of scikit-learn's digits 0-3 (16-24 px) on a noisy 64 px canvas; the mask gives each digit pixel
  its digit's class (5 classes with the background), so the class is the shape of a whole digit.
- ``digits10``: the same with all ten digits (11 classes).

Before ``segen.nets.unet.init_classifier``, a tiny (std 0.01) classifier kept the U-Net at "every digit is the
same class" on both digit sets for thousands of steps (its class vectors started equal); this script is how that
was found.

For the VAE and the VQ-VAE (``--task vae``, ``--task vqvae``), images only, all 32 px in ``[-1, 1]``: the
``textures`` images (greyscale), scikit-learn's ``digits`` themselves (greyscale, 1500 to train, 297 to validate)
and segen's ``shapes`` in colour (RGB). The VAE reports ``val/bpd`` (the ELBO, its objective) and ``val/mse``; the
VQ-VAE ``val/recon`` (MSE) and ``val/perplexity`` (codes in use).

For the GAN (``--task gan``, ``GANTask(channels=1, image_size=S)``), scikit-learn's digits only, at 32 px
(``digits``) and at 16 px (``digits16``, a shallower DCGAN): FID and KID of 1000 samples of the EMA generator
against the 297 held-out digits, in the features of segen's digit classifier, the only FID network here that
means something without downloads.

    python experiments/scripts/defaults_check.py                    # textures and digits, lr 1e-3 / default / 1e-2
    python experiments/scripts/defaults_check.py --sets digits10 --lrs default --steps 1000
    python experiments/scripts/defaults_check.py --task vqvae       # 800 steps, lr 2e-4 / default / 3e-3
    python experiments/scripts/defaults_check.py --task vae --sets shapes --steps 2400 --lrs default
    python experiments/scripts/defaults_check.py --task gan         # 6000 steps, lr 1e-4 / default / 5e-4

Prints one markdown row per (data set, learning rate): the task's metrics after training, validated once at the end.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import time
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from segen import GANTask, SegmentationTask, VAETask, VQVAETask


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


def texture_images(n: int, split: str) -> Tensor:
    """The ``textures`` images, average-pooled to 32 px: ``(n, 1, 32, 32)`` in ``[-1, 1]``."""
    images = textures(n, size=64, seed=0 if split == "train" else 1000).tensors[0]
    return F.avg_pool2d(images, 2).clamp(-1, 1)


def digit_images(n: int, split: str, size: int = 32) -> Tensor:
    """scikit-learn's digits at ``size`` px, ``(n, 1, size, size)`` in ``[-1, 1]``: the first 1500 of a fixed
    shuffle train, the other 297 validate (so ``n`` is at most that)."""
    from sklearn.datasets import load_digits

    glyphs = (
        torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    )  # (1797, 1, 8, 8) in [0, 1]
    order = torch.randperm(len(glyphs), generator=torch.Generator().manual_seed(0))
    chosen = order[:1500][:n] if split == "train" else order[1500:][:n]
    images = F.interpolate(glyphs[chosen], size=size, mode="bilinear", align_corners=False)
    return (images * 2 - 1).clamp(-1, 1)


def shape_images(n: int, split: str) -> Tensor:
    """segen's procedural shapes in colour at 32 px, ``(n, 3, 32, 32)`` in ``[-1, 1]``."""
    from segen.data.shapes import ShapesDataset

    data = ShapesDataset(n, image_size=32, split=split, normalize=False)
    return (torch.stack([data[i][0] for i in range(n)]) * 2 - 1).clamp(-1, 1)


IMAGE_SETS = {"textures": texture_images, "digits": digit_images, "shapes": shape_images}
# the GAN's FID only means something on digits (its feature network is a digit classifier; 16 px is resized to 32)
DIGIT_SETS = {"digits": digit_images, "digits16": functools.partial(digit_images, size=16)}


class TaskCheck(NamedTuple):
    """How one task family is checked: its data sets, its budget and the metrics that are printed."""

    sets: tuple[str, ...]
    lrs: tuple[str, ...]
    steps: int
    batch_size: int
    n_train: int
    n_val: int
    metrics: tuple[str, ...]


# the VAE and the VQ-VAE see the same images, for the same budget
IMAGE_CHECK = {
    "sets": ("textures", "digits", "shapes"),
    "steps": 800,
    "batch_size": 64,
    "n_train": 1500,
    "n_val": 300,
}
TASKS = {
    "seg": TaskCheck(
        ("textures", "digits"), ("1e-3", "default", "1e-2"), 400, 16, 800, 200, ("val/mIoU", "val/dice")
    ),
    "vae": TaskCheck(lrs=("3e-4", "default", "3e-3"), metrics=("val/bpd", "val/mse"), **IMAGE_CHECK),
    "vqvae": TaskCheck(
        lrs=("2e-4", "default", "3e-3"), metrics=("val/recon", "val/perplexity"), **IMAGE_CHECK
    ),
    # 6000 optimizer steps = 3000 generator and 3000 discriminator updates, as in dcgan_digits.yaml
    "gan": TaskCheck(
        ("digits", "digits16"), ("1e-4", "default", "5e-4"), 6000, 64, 1500, 297, ("val/fid", "val/kid")
    ),
}
TASK_CLASSES = {"seg": SegmentationTask, "vae": VAETask, "vqvae": VQVAETask, "gan": GANTask}
TASK_SETS = {"seg": SETS, "vae": IMAGE_SETS, "vqvae": IMAGE_SETS, "gan": DIGIT_SETS}


def build(
    task: str, name: str, n_train: int, n_val: int, seed: int, lr: float | None
) -> tuple[Any, Any, Any]:
    """The default task of family ``task`` for data set ``name`` (with ``lr`` if given), and its two data sets."""
    options = {} if lr is None else {"lr": lr}
    if task == "seg":
        make, num_classes = SETS[name]
        train, val = make(n_train, seed=seed), make(n_val, seed=seed + 1000)
        return SegmentationTask(num_classes=num_classes, in_channels=1, **options), train, val
    make = TASK_SETS[task][name]
    train, val = TensorDataset(make(n_train, "train")), TensorDataset(make(n_val, "val"))
    channels, size = train.tensors[0].shape[1], train.tensors[0].shape[-1]
    if task == "vae":
        # no FID: its feature network only means something for digits
        return VAETask(channels=channels, image_size=size, fid_feature=None, **options), train, val
    if task == "gan":
        # FID against the held-out digits, 1000 samples from the EMA generator
        return GANTask(channels=channels, image_size=size, fid_samples=1000, **options), train, val
    return VQVAETask(channels=channels, image_size=size, **options), train, val


def run(
    task: str, name: str, lr: float | None, steps: int, n_train: int, n_val: int, seed: int
) -> dict[str, float]:
    """Train the default task for ``steps`` steps, then validate once: the ``val/`` metrics and the seconds taken."""
    seed_everything(seed, verbose=False)
    model, train, val = build(task, name, n_train, n_val, seed, lr)
    batch_size = TASKS[task].batch_size
    trainer = Trainer(
        max_steps=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(
        model, DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) > batch_size)
    )
    validation = trainer.validate(model, DataLoader(val, batch_size=100), verbose=False)[0]
    metrics = {k: float(v) for k, v in validation.items() if k.startswith("val/")}
    metrics["seconds"] = time.perf_counter() - start  # training and the one validation
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="seg", choices=list(TASKS))
    parser.add_argument("--sets", nargs="+", help="default: the task's own (see TASKS)")
    parser.add_argument(
        "--lrs", nargs="+", help="'default' = the task's own rate; default: it and two others"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the task's, see TASKS)")
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--n-val", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    check = TASKS[args.task]
    choices = TASK_SETS[args.task]
    for name in args.sets or check.sets:
        if name not in choices:
            parser.error(
                f"--sets: {name!r} is not a data set of --task {args.task}; choose from {sorted(choices)}"
            )
    default = inspect.signature(TASK_CLASSES[args.task]).parameters["lr"].default
    print(f"| data set | lr | {' | '.join(check.metrics)} | time |")
    print("| --- | --- | " + "--- | " * len(check.metrics) + "--- |")
    for name in args.sets or check.sets:
        for lr_text in args.lrs or check.lrs:
            lr = None if lr_text == "default" else float(lr_text)
            m = run(
                args.task,
                name,
                lr,
                args.steps or check.steps,
                args.n_train or check.n_train,
                args.n_val or check.n_val,
                args.seed,
            )
            # the GAN's default lr is None: the rate of its loss's paper (2e-4 for the default "ns")
            label = lr_text if lr is not None else "default" if default is None else f"{default:g} (default)"
            values = " | ".join(f"{m[k]:.4f}" for k in check.metrics)
            print(f"| {name} | {label} | {values} | {m['seconds']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
