"""Does a mask-to-image GAN trained on few labels make useful training data for the segmenter it serves?

The experiment behind segen's bridge between segmentation and generation. With only a ``fraction`` of the labels of
a pool of ``--num-train`` procedural shapes images, per fraction and seed:

    (a) real only:        a U-Net (SegmentationTask) trained on the labelled images;
    (b) the generator:    a SPADE GAN (MaskToImageTask) trained on the same labelled (image, mask) pairs;
    (c) real + synthetic: the same U-Net recipe, from the same initial weights, for the same number of optimizer
                          steps, on the labelled pairs plus ``round(synthetic_ratio * labelled)`` synthetic pairs:
                          images painted by (b)'s EMA generator for NEW masks, mapped to the data's normalisation.
                          With ``--synthetic-use mix`` (the default) both sets are shuffled together (a
                          ConcatDataset), so with ``--synthetic-ratio r`` a batch holds ``r / (1 + r)`` synthetic
                          pairs on average (half at the default r = 1). With ``--synthetic-use pretrain`` the U-Net
                          first trains ``--pretrain-steps`` steps on the synthetic pairs alone, then the usual
                          ``--unet-steps`` on the labelled pairs alone (a fresh optimizer and schedule): the
                          synthetic-to-real recipe of "Playing for Data" (Richter et al. 2016), where the real
                          images have the last word on texture.

With ``--oracle``, a fourth arm (o) repeats (c) with the *real* images of the new masks in place of the generated
ones: what a perfect generator would give, so (o) - (a) is the most (c) can gain with this recipe, and (o) - (c) is
what the generator loses.

The new masks are the masks of train-split items *outside the pool* (indices ``num_train ...``), so they never
coincide with a labelled item; their images are discarded. Masks are the cheap part of a segmentation label when
layouts can be drawn procedurally (or edited from predictions), so the question is whether the images painted for
them add information the labelled images lack, or only noise. (a) and (c) are scored on the same held-out test
split (``test/mIoU`` from ``trainer.test``: SegmentationTask's dataset-level macro mIoU), so (c) - (a) is the gain.

Everything a seed controls: ``lightning.seed_everything(seed)`` before each of (a), (b), (c) (so (a) and (c) start
from the same U-Net weights), the labelled subset (a seeded permutation of the pool: the labelled set of a smaller
fraction is a prefix of a larger one's), the choice of new masks, the generator's noise. The shapes data set
itself is the same for every seed (``ShapesDataset(seed=0)``), as a real data set would be.

Defaults are sized for CPUs: 32 px images (the README's U-Net job uses 64 px) and small nets. Prints one markdown
table (a row per fraction: mean ± sample std over seeds) and writes it, a JSON of every run and one PNG of
(mask | generated image) pairs per fraction (first seed) to ``--out``:

    python experiments/scripts/synthetic_augmentation.py --config experiments/scripts/synthetic_augmentation.yaml
    python experiments/scripts/synthetic_augmentation.py --fractions 0.05 0.1 --seeds 0 1 --gan-steps 500

``--config`` reads a YAML of the same options with underscores (``fractions: [0.05, 0.1]``); flags override it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from lightning.pytorch import Trainer
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset
from torchvision.utils import make_grid, save_image

from segen import MaskToImageTask, SegmentationTask, ShapesDataset, SPADEGenerator, UNet
from segen.callbacks.images import colorize
from segen.data.shapes import SHAPE_NAMES, denormalize
from segen.nets import MultiscalePatchDiscriminator, SegmentationDiscriminator
from segen.tasks.gan import max_steps_for

DATA_SEED = 0  # the shapes data set: fixed, the same for every experiment seed


# ------------------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--config", type=str, default=None, help="YAML of these options (underscores); flags override it")
    add("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25], help="labelled fractions, in (0, 1]")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--num-train", type=int, default=2000, help="pool size (unet_shapes.yaml's num_train)")
    add("--num-test", type=int, default=200, help="held-out test images")
    add("--image-size", type=int, default=32, help="a power of two >= 16 (32 keeps CPU runs feasible)")
    add("--num-classes", type=int, default=4, help="background + shape kinds (ShapesDataset)")
    add("--synthetic-ratio", type=float, default=1.0, help="synthetic pairs per labelled pair in (c)")
    add(
        "--synthetic-use",
        choices=("mix", "pretrain"),
        default="mix",
        help="(c): shuffle synthetic and labelled pairs together, or pretrain on synthetic then fine-tune on labelled",
    )
    add(
        "--pretrain-steps",
        type=int,
        default=None,
        help="(c) with --synthetic-use pretrain: steps on the synthetic pairs (default: --unet-steps)",
    )
    add("--batch-size", type=int, default=16, help="batch size of the U-Nets and the GAN")
    # segmentation (a) and (c)
    add("--unet-steps", type=int, default=800, help="optimizer steps of each U-Net")
    add("--unet-base-channels", type=int, default=32)
    add("--unet-depth", type=int, default=3)
    add("--unet-lr", type=float, default=4e-3)
    add("--unet-warmup-steps", type=int, default=20)
    # mask-to-image GAN (b)
    add("--gan-steps", type=int, default=800, help="generator updates (one D update each)")
    add("--latent-dim", type=int, default=32)
    add("--gan-base-channels", type=int, default=16, help="SPADE width at full resolution")
    add("--gan-max-channels", type=int, default=64)
    add("--gan-hidden", type=int, default=16, help="width of every SPADE's shared convolution")
    add(
        "--discriminator-type",
        choices=("segmentation", "patch"),
        default="segmentation",
        help="MaskToImageTask's discriminator: OASIS's per-pixel segmenter (the task's default) or the PatchGAN",
    )
    add("--d-base-channels", type=int, default=16, help="discriminator width (U-Net or PatchGAN)")
    # the paper's 1e-4 (G) / 4e-4 (D) paint only colour blobs in ~1000 steps here; 2e-3 for both draws shapes
    add("--gan-lr-g", type=float, default=2e-3, help="Adam lr of the generator")
    add("--gan-lr-d", type=float, default=2e-3, help="Adam lr of the discriminator")
    add(
        "--diffaugment",
        type=str,
        default=None,
        help="DiffAugment policy of the GAN's discriminator, e.g. color,translation (image and mask move together)",
    )
    add(
        "--feature-matching",
        type=float,
        default=None,
        help="weight of the PatchGAN's feature-matching loss (default 10; --discriminator-type patch only)",
    )
    add("--ema-decay", type=float, default=0.999)
    add(
        "--oracle",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also train (o): (c) with the real images of the new masks (a perfect generator's ceiling)",
    )
    # output
    add("--grid-examples", type=int, default=16, help="(mask | generated) pairs in each PNG")
    add("--out", type=str, default="runs/synthetic_augmentation")
    add("--accelerator", type=str, default="auto")
    return parser


def load_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The YAML's options, converted with the parser's types; unknown keys are an error."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path!r}: no such file")
    raw = yaml.safe_load(file.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"--config {path!r}: expected a mapping of option names to values, got {type(raw).__name__}"
        )
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(raw) - set(actions))
    if unknown:
        raise ValueError(f"--config {path!r}: unknown options {unknown}; known: {sorted(actions)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        action = actions[key]
        convert = action.type or (lambda v: v)
        if action.type is int:  # YAML's 2.5 must not become 2 silently
            convert = _strict_int
        try:
            if action.nargs in ("+", "*"):
                items = value if isinstance(value, list) else [value]
                values[key] = [convert(v) for v in items]
            else:
                values[key] = None if value is None else convert(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--config {path!r}: bad value for {key}: {value!r} ({error})") from None
    return values


def _strict_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    return int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags over ``--config`` over the defaults, then checked (``ValueError`` names the bad option)."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=str, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**load_config(known.config, parser))
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    for fraction in args.fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"--fractions must lie in (0, 1] (a share of the pool's labels), got {fraction}")
    if len(set(args.fractions)) != len(args.fractions) or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--fractions and --seeds must not repeat, got {args.fractions} and {args.seeds}")
    if args.pretrain_steps is not None and args.synthetic_use != "pretrain":
        raise ValueError(
            f"--pretrain-steps {args.pretrain_steps} needs --synthetic-use pretrain, got --synthetic-use "
            f"{args.synthetic_use}"
        )
    if args.pretrain_steps is None:
        args.pretrain_steps = args.unet_steps if args.synthetic_use == "pretrain" else 0
    elif args.pretrain_steps < 1:
        raise ValueError(f"--pretrain-steps must be >= 1, got {args.pretrain_steps}")
    for name in ("num_train", "num_test", "batch_size", "unet_steps", "gan_steps", "grid_examples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    size = args.image_size
    if size < 16 or size & (size - 1):
        raise ValueError(f"--image-size must be a power of two >= 16 (SPADE upsamples from 4 px), got {size}")
    if args.synthetic_ratio <= 0:
        raise ValueError(
            f"--synthetic-ratio must be > 0 (synthetic pairs per labelled pair), got {args.synthetic_ratio}"
        )
    for fraction in args.fractions:
        labelled = num_labelled(fraction, args.num_train)
        if labelled < 2:
            raise ValueError(
                f"--fractions {fraction} of --num-train {args.num_train} labels {labelled} image(s); the U-Net's "
                "batch norm needs at least 2: raise --num-train or the fraction"
            )


def num_labelled(fraction: float, num_train: int) -> int:
    return round(fraction * num_train)


# ------------------------------------------------------------------------------------------------ data
class ItemCache:
    """Rendered shapes items (image ``(3, H, W)`` normalised, mask ``(H, W)`` long) by index, rendered once."""

    def __init__(self, dataset: ShapesDataset) -> None:
        self.dataset, self.items = dataset, {}

    def stack(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(N, 3, H, W)`` images and ``(N, H, W)`` masks of the items ``indices``."""
        for i in indices:
            if i not in self.items:
                self.items[i] = self.dataset[i]
        images = torch.stack([self.items[i][0] for i in indices])
        masks = torch.stack([self.items[i][1] for i in indices])
        return images, masks


def choose_indices(seed: int, fraction: float, args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """The labelled pool items and the train-split items whose masks get synthetic images (all >= num_train).

    One seeded permutation of the pool per seed, so a smaller fraction's labelled set is a prefix of a larger
    one's; the new masks come from the next ``max(num_train, needed)`` train-split items, again permuted."""
    labelled_count = num_labelled(fraction, args.num_train)
    synthetic_count = max(1, round(args.synthetic_ratio * labelled_count))
    rng = torch.Generator().manual_seed(seed)
    labelled = torch.randperm(args.num_train, generator=rng)[:labelled_count]
    span = max(args.num_train, synthetic_count)
    masks = args.num_train + torch.randperm(span, generator=rng)[:synthetic_count]
    return sorted(labelled.tolist()), sorted(masks.tolist())


# ------------------------------------------------------------------------------------------------ training
def trainer(args: argparse.Namespace, max_steps: int) -> Trainer:
    return Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def loader(dataset: Dataset, args: argparse.Namespace, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=args.batch_size if shuffle else 100, shuffle=shuffle)


def train_unet(
    seed: int,
    train_set: Dataset,
    test_set: Dataset,
    args: argparse.Namespace,
    pretrain_set: Dataset | None = None,
) -> dict[str, float]:
    """Fit the U-Net recipe for ``--unet-steps`` steps on ``train_set``; its test metrics (``test/mIoU``, per-class
    ``test/IoU_<class>``, ...), its last training loss and the time taken. With ``pretrain_set``, ``--pretrain-steps``
    steps on it come first (their last loss is ``pretrain/loss``); the fine-tuning Trainer builds a fresh optimizer
    and warm-up/cosine schedule, as fine-tuning from a checkpoint would."""
    start = time.perf_counter()
    lightning.seed_everything(seed, verbose=False)
    net = functools.partial(UNet, base_channels=args.unet_base_channels, depth=args.unet_depth)
    task = SegmentationTask(
        num_classes=args.num_classes,
        in_channels=3,
        net=net,
        lr=args.unet_lr,
        warmup_steps=args.unet_warmup_steps,
        class_names=list(SHAPE_NAMES[: args.num_classes]),
    )
    record: dict[str, float] = {}
    if pretrain_set is not None:
        pretrain = trainer(args, args.pretrain_steps)
        pretrain.fit(task, loader(pretrain_set, args, shuffle=True))
        record["pretrain/loss"] = float(pretrain.callback_metrics["train/loss"])
        record["pretrain/steps"] = pretrain.global_step
    fit = trainer(args, args.unet_steps)
    fit.fit(task, loader(train_set, args, shuffle=True))
    record["train/loss"] = float(fit.callback_metrics["train/loss"])
    record["train/steps"] = fit.global_step  # this Trainer's steps only (a fresh Trainer counts from 0)
    (metrics,) = fit.test(task, loader(test_set, args, shuffle=False), verbose=False)
    scores = {k: float(v) for k, v in metrics.items() if k.startswith("test/")}
    return {**scores, **record, "seconds": time.perf_counter() - start}


def train_with_extra(
    seed: int, real: Dataset, extra: Dataset, test_set: Dataset, args: argparse.Namespace
) -> dict[str, float]:
    """(c) or (o): the U-Net recipe on the labelled pairs plus ``extra`` pairs, as ``--synthetic-use`` says."""
    if args.synthetic_use == "mix":
        return train_unet(seed, ConcatDataset([real, extra]), test_set, args)
    return train_unet(seed, real, test_set, args, pretrain_set=extra)


def _discriminator(
    channels: int, image_size: int, num_classes: int, base_channels: int, kind: str
) -> torch.nn.Module:
    if kind == "patch":
        return MultiscalePatchDiscriminator(
            num_classes=num_classes, channels=channels, base_channels=base_channels
        )
    depth = SegmentationDiscriminator.depth_for(image_size)  # the task's default depth, at this width
    return SegmentationDiscriminator(num_classes, channels, base_channels=base_channels, depth=depth)


def train_gan(
    seed: int, pairs: TensorDataset, args: argparse.Namespace
) -> tuple[MaskToImageTask, dict[str, float]]:
    """Fit the SPADE GAN for ``--gan-steps`` generator updates on the labelled pairs; the task, its last losses
    and the time taken."""
    start = time.perf_counter()
    lightning.seed_everything(seed, verbose=False)
    task = MaskToImageTask(
        num_classes=args.num_classes,
        channels=3,
        image_size=args.image_size,
        latent_dim=args.latent_dim,
        generator=functools.partial(
            SPADEGenerator,
            base_channels=args.gan_base_channels,
            max_channels=args.gan_max_channels,
            hidden=args.gan_hidden,
        ),
        discriminator=functools.partial(
            _discriminator, base_channels=args.d_base_channels, kind=args.discriminator_type
        ),
        discriminator_type=args.discriminator_type,
        feature_matching=args.feature_matching,
        diffaugment=args.diffaugment,
        ema_decay=args.ema_decay,
        lr_g=args.gan_lr_g,
        lr_d=args.gan_lr_d,
        mean=ShapesDataset.MEAN,
        std=ShapesDataset.STD,
        seed=seed,
    )
    fit = trainer(args, max_steps_for(args.gan_steps))
    fit.fit(task, loader(pairs, args, shuffle=True))
    if task.generator_steps != args.gan_steps:  # the step semantics of GANTask, checked rather than assumed
        raise RuntimeError(
            f"the GAN made {task.generator_steps} generator updates, expected {args.gan_steps}"
        )
    record = {k: float(fit.callback_metrics[k]) for k in ("train/loss_g", "train/loss_d")}
    record.update(generator_steps=task.generator_steps, seconds=time.perf_counter() - start)
    return task, record


def synthesise(task: MaskToImageTask, masks: Tensor, seed: int) -> Tensor:
    """Images ``(N, 3, H, W)`` in the data's normalisation for masks ``(N, H, W)``, from the EMA generator."""
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(masks), task.latent_dim, generator=rng)  # (N, latent_dim): one style per mask
    chunks = [
        task.to_data_range(task.generate(masks[i : i + 256], noise[i : i + 256]).cpu())
        for i in range(0, len(masks), 256)
    ]
    return torch.cat(chunks)


def save_grid(path: Path, masks: Tensor, images: Tensor, examples: int) -> None:
    """PNG of ``examples`` (mask | generated image) pairs, four pairs per row."""
    masks, images = masks[:examples], images[:examples]
    unit = denormalize(images, ShapesDataset.MEAN, ShapesDataset.STD).clamp(0, 1)  # (N, 3, H, W) in [0, 1]
    panels = torch.stack([colorize(masks), unit], dim=1).flatten(0, 1)  # (2N, 3, H, W): mask, image, ...
    save_image(make_grid(panels, nrow=2 * min(4, len(masks)), padding=2, pad_value=1.0), path)


# ------------------------------------------------------------------------------------------------ report
def mean_std(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table (a row per fraction) and its numbers."""
    rows = []
    lines = [
        f"| fraction | labelled images | (a) real only mIoU | (c) real + synthetic mIoU ({args.synthetic_use}, "
        f"ratio {args.synthetic_ratio:g}) | (c) - (a) | seeds (c) > (a) |"
        + (" (o) real images for the new masks | (o) - (a) |" if args.oracle else ""),
        "| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if args.oracle else ""),
    ]
    for fraction in args.fractions:
        mine = [r for r in runs if r["fraction"] == fraction]
        real = [r["real_only"]["test/mIoU"] for r in mine]
        synthetic = [r["with_synthetic"]["test/mIoU"] for r in mine]
        gains = [s - r for r, s in zip(real, synthetic)]
        wins = sum(g > 0 for g in gains)
        row = {
            "fraction": fraction,
            "labelled": mine[0]["num_labelled"],
            "real_only": real,
            "with_synthetic": synthetic,
            "gain": gains,
            "wins": wins,
            "seeds": len(mine),
        }
        line = (
            f"| {fraction:g} | {mine[0]['num_labelled']} | {mean_std(real)} | {mean_std(synthetic)} | "
            f"{mean_std(gains)} | {wins}/{len(mine)} |"
        )
        if args.oracle:
            row["oracle"] = [r["oracle"]["test/mIoU"] for r in mine]
            row["oracle_gain"] = [o - r for r, o in zip(real, row["oracle"])]
            line += f" {mean_std(row['oracle'])} | {mean_std(row['oracle_gain'])} |"
        rows.append(row)
        lines.append(line)
    return "\n".join(lines), rows


# ------------------------------------------------------------------------------------------------ main
@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-Trainer banners and the warnings that small in-memory loaders trigger (27 Trainers)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (
                "does not have many workers",
                "smaller than the logging interval",
                "have no `val_dataloader`",
                r"isinstance\(treespec, LeafSpec\)",
            ):
                warnings.filterwarnings("ignore", message=f".*{message}.*")
            yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns ``{"table", "rows", "runs", "out"}`` (also written to ``--out``)."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = dict(image_size=args.image_size, num_classes=args.num_classes, seed=DATA_SEED)
    # the pool (items < num_train) and the mask-only items beyond it are one train split (see choose_indices)
    beyond = max(args.num_train, round(args.synthetic_ratio * args.num_train), 1)
    train_items = ItemCache(ShapesDataset(args.num_train + beyond, split="train", **shapes))
    test_set = TensorDataset(
        *ItemCache(ShapesDataset(args.num_test, split="test", **shapes)).stack(range(args.num_test))
    )

    runs: list[dict[str, Any]] = []
    with quiet_lightning():
        for fraction in args.fractions:
            for seed in args.seeds:
                labelled, new_masks = choose_indices(seed, fraction, args)
                real = TensorDataset(*train_items.stack(labelled))
                real_only = train_unet(seed, real, test_set, args)  # (a)
                gan, gan_record = train_gan(seed, real, args)  # (b)
                real_images, masks = train_items.stack(new_masks)  # the images only for --oracle
                images = synthesise(gan, masks, seed)  # (N, 3, H, W), data normalisation
                with_synthetic = train_with_extra(
                    seed, real, TensorDataset(images, masks), test_set, args
                )  # (c)
                if seed == args.seeds[0]:
                    save_grid(out / f"samples_fraction{fraction:g}.png", masks, images, args.grid_examples)
                run = {
                    "fraction": fraction,
                    "seed": seed,
                    "num_labelled": len(labelled),
                    "num_synthetic": len(new_masks),
                    "real_only": real_only,
                    "gan": gan_record,
                    "with_synthetic": with_synthetic,
                    "labelled_indices": labelled,
                    "mask_indices": new_masks,
                }
                if args.oracle:  # (o): the same recipe with the true images of the new masks
                    run["oracle"] = train_with_extra(
                        seed, real, TensorDataset(real_images, masks), test_set, args
                    )
                runs.append(run)
                arms = {"a": real_only, "b": gan_record, "c": with_synthetic, "o": run.get("oracle")}
                scores = ", ".join(f"({k}) {v['test/mIoU']:.4f}" for k, v in arms.items() if k != "b" and v)
                times = ", ".join(f"({k}) {v['seconds']:.0f} s" for k, v in arms.items() if v)
                print(
                    f"fraction {fraction:g} seed {seed}: {len(labelled)} labelled + {len(new_masks)} synthetic; "
                    f"mIoU {scores}; {times}",
                    file=sys.stderr,
                    flush=True,
                )

    table, rows = summarise(runs, args)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "runs.json").write_text(
        json.dumps({"config": vars(args), "rows": rows, "runs": runs}, indent=1) + "\n"
    )
    return {"table": table, "rows": rows, "runs": runs, "out": out}


if __name__ == "__main__":
    try:
        parse_args(sys.argv[1:])  # bad options end with one line, not a traceback
    except ValueError as error:
        sys.exit(f"error: {error}")
    main()
