"""segen against reference implementations on the same tensors: the Dice + CE loss against MONAI's, the validation
metrics against torchmetrics' segmentation metrics and MONAI's, and the data module against a bare DataLoader.

Definitions, matched on both sides
    DiceCELoss: the criterion of a default ``SegmentationTask`` (``dice_ce``, ``ignore_index=255``; the task checks
    mask values on the host before the batch moves, so its loss runs with ``validate=False``): softmax
    Dice with the batch summed per class (``batch=True``), background included, ``smooth`` 1e-5 in numerator and
    denominator, mean over classes, plus the cross-entropy mean over pixels, weights 1 and 1. MONAI:
    ``DiceCELoss(to_onehot_y=True, softmax=True, include_background=True, squared_pred=False, jaccard=False,
    smooth_nr=1e-5, smooth_dr=1e-5, batch=True, reduction="mean", lambda_dice=1, lambda_ce=1)``, target ``(B, 1, H, W)``.
    MONAI's DiceCELoss has no ``ignore_index`` (only its DiceLoss has one), so the row's targets hold no 255.

    Metrics: segen's ``val/mIoU``, ``val/IoU_<class>`` and ``val/dice`` (``SegmentationTask``'s own metric objects
    and update, i.e. torchmetrics' MulticlassJaccardIndex / F1Score on the pixels left after removing 255) are
    dataset-level: one confusion matrix over every validation pixel, per-class IoU ``tp / (tp + fp + fn)`` and Dice
    ``2tp / (2tp + fp + fn)``, then the mean over the classes present in the prediction or the target (a class absent
    from both is left out; a class predicted but absent from the target counts as 0), background included. The
    references are set up to compute exactly that, with ignored pixels zeroed in both one-hot tensors (they then add
    only true negatives, which neither IoU nor Dice uses):
    - torchmetrics ``DiceScore(average="macro", aggregation_level="global")``, updated batch by batch;
    - torchmetrics ``MeanIoU`` (per image by definition) on the whole split laid out as one image;
    - MONAI ``ConfusionMatrixMetric(metric_name=("threat score", "f1 score"), compute_sample=False,
      reduction="sum_batch")`` (confusion matrices summed over the split first), then the mean over the classes that
      are not NaN. MONAI's ``DiceMetric`` / ``MeanIoU`` give the same numbers when every class occurs in the target,
      but not in general: with ``ignore_empty=True`` they drop a class absent from the target even when it is
      predicted, with ``ignore_empty=False`` they score a class absent from both as 1. The data here has both cases.
    The per-image mean (the default of torchmetrics' MeanIoU / DiceScore and of MONAI's DiceMetric) is a different
    number, usually higher for small objects; segen does not report it.

    Data module: ``ShapesDataModule.train_dataloader()`` against ``DataLoader(dataset, batch_size, shuffle=True,
    drop_last=True, num_workers)`` over the same data set, images per second over the same number of batches.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from _overhead import alternate, best_time
from torch import Tensor, nn
from torch.utils.data import DataLoader

from segen import SegmentationTask, ShapesDataModule

# ---------------------------------------------------------------------------------------------------- DiceCE


def segen_task(num_classes: int) -> SegmentationTask:
    """A SegmentationTask with default options (its loss and metrics are the ones compared) and no network."""
    with warnings.catch_warnings():  # Lightning's advice to leave the net out of the hyper-parameters
        warnings.filterwarnings("ignore", ".*is an instance of `nn.Module`.*")
        return SegmentationTask(num_classes=num_classes, in_channels=num_classes, net=nn.Identity())


def monai_dice_ce(**overrides: Any) -> nn.Module:
    """MONAI's DiceCELoss configured to compute segen's default DiceCELoss (see the module docstring)."""
    from monai.losses import DiceCELoss

    options: dict[str, Any] = dict(
        to_onehot_y=True,
        softmax=True,
        include_background=True,
        squared_pred=False,
        jaccard=False,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        batch=True,
        reduction="mean",
        lambda_dice=1.0,
        lambda_ce=1.0,
    )
    options.update(overrides)
    return DiceCELoss(**options)


def value_and_grad(
    loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """The loss and its gradient with respect to the logits."""
    x = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(x, target)
    loss.backward()
    return loss.detach(), x.grad


class LossResult(NamedTuple):
    segen: float  # seconds per forward + backward
    monai: float
    value: float  # segen's loss value
    delta: float  # max(|value difference|, max |gradient difference|)


DICE_CE_SIZES = {False: (16, 4, 64, 64), True: (2, 3, 16, 16)}  # (B, K, H, W): U-Net row's batch


def dice_ce_benchmark(tiny: bool, repeats: int, device: str) -> LossResult:
    b, k, h, w = DICE_CE_SIZES[tiny]
    gen = torch.Generator().manual_seed(0)
    logits = (2.0 * torch.randn(b, k, h, w, generator=gen)).to(device)
    target = torch.randint(0, k, (b, h, w), generator=gen).to(device)
    target_monai = target[:, None]  # MONAI's label format (B, 1, H, W)
    segen_loss = segen_task(k).criterion.to(device)  # exactly the loss SegmentationTask trains with
    reference = monai_dice_ce().to(device)

    value_s, grad_s = value_and_grad(segen_loss, logits, target)
    value_m, grad_m = value_and_grad(reference, logits, target_monai)
    delta = max(float((value_s - value_m).abs()), float((grad_s - grad_m).abs().max()))

    x = logits.detach().clone().requires_grad_(True)
    iterations = 2 if tiny else 20

    def timed(fn: Callable[[Tensor, Tensor], Tensor], t: Tensor) -> Callable[[], float]:
        def step() -> None:
            x.grad = None
            fn(x, t).backward()

        def run() -> float:
            step()  # warm-up
            return best_time(step, iterations, device)

        return run

    segen_s, monai_s = alternate([timed(segen_loss, target), timed(reference, target_monai)], repeats)
    return LossResult(segen_s, monai_s, float(value_s), delta)


# ---------------------------------------------------------------------------------------------------- metrics

METRIC_SIZES = {False: (4, 8, 5, 64, 64), True: (2, 2, 5, 16, 16)}  # (batches, B, K, H, W)


def metric_data(tiny: bool, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Validation batches ``(logits (B, K, H, W), masks (B, H, W))`` with K = 5: targets use classes 0-2 and 255
    (ignored, ~5%); predictions are the targets with ~30% of pixels changed to a random class 0-3, so class 3 is
    predicted but never in the target, and class 4 is in neither (both empty-class cases of the definitions)."""
    n, b, k, h, w = METRIC_SIZES[tiny]
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        # 4x4 blocks of one class: a target with regions, not salt-and-pepper noise
        masks = torch.randint(0, 3, (b, h // 4, w // 4), generator=gen)
        masks = masks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (B, H, W)
        noise = torch.rand(b, h, w, generator=gen)
        preds = torch.where(noise < 0.3, torch.randint(0, 4, (b, h, w), generator=gen), masks)
        masks = torch.where(torch.rand(b, h, w, generator=gen) < 0.05, torch.full_like(masks, 255), masks)
        logits = 0.1 * torch.randn(b, k, h, w, generator=gen) + 4.0 * F.one_hot(preds, k).permute(0, 3, 1, 2)
        batches.append((logits, masks))
    return batches


def onehot_pair(logits: Tensor, masks: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """One-hot prediction (argmax) and target, ``(B, K, H, W)`` each, both zero at ignored pixels."""
    k = logits.shape[1]
    valid = (masks != ignore_index)[:, None]  # (B, 1, H, W)
    pred = F.one_hot(logits.argmax(1), k).permute(0, 3, 1, 2) * valid
    target = F.one_hot(masks.masked_fill(~valid[:, 0], 0), k).permute(0, 3, 1, 2) * valid
    return pred.long(), target.long()


def one_image(x: Tensor) -> Tensor:
    """Lay a batch ``(B, K, H, W)`` out as one image ``(1, K, B * H, W)``: a per-image metric becomes dataset-level."""
    b, k, h, w = x.shape
    return x.permute(1, 0, 2, 3).reshape(1, k, b * h, w)


class MetricValues(NamedTuple):
    miou: float
    iou: (
        Tensor  # (K,) per class; NaN for a class absent from both prediction and target (segen: 0, see below)
    )
    dice: float


def segen_metrics(batches: list[tuple[Tensor, Tensor]]) -> MetricValues:
    """segen's validation metrics through SegmentationTask's own metric objects and update."""
    task = segen_task(batches[0][0].shape[1])
    metrics = task.val_metrics
    for logits, masks in batches:
        task._update_metrics(metrics, logits, masks)
    values = metrics.compute()
    return MetricValues(float(values["val/mIoU"]), values["val/IoU"].float(), float(values["val/dice"]))


def torchmetrics_metrics(batches: list[tuple[Tensor, Tensor]]) -> MetricValues:
    from torchmetrics.segmentation import DiceScore, MeanIoU

    k = batches[0][0].shape[1]
    pairs = [onehot_pair(logits, masks) for logits, masks in batches]
    preds = one_image(torch.cat([p for p, _ in pairs]))
    target = one_image(torch.cat([t for _, t in pairs]))
    miou = MeanIoU(num_classes=k, input_format="one-hot")(preds, target)
    iou = MeanIoU(num_classes=k, per_class=True, input_format="one-hot")(preds, target)  # -1: absent class
    dice = DiceScore(num_classes=k, average="macro", aggregation_level="global", input_format="one-hot")
    for p, t in pairs:
        dice.update(p, t)
    return MetricValues(float(miou), torch.where(iou < 0, torch.nan, iou).float(), float(dice.compute()))


def monai_metrics(batches: list[tuple[Tensor, Tensor]]) -> MetricValues:
    from monai.metrics import ConfusionMatrixMetric

    metric = ConfusionMatrixMetric(
        include_background=True,
        metric_name=("threat score", "f1 score"),
        compute_sample=False,
        reduction="sum_batch",
    )
    for logits, masks in batches:
        metric(*onehot_pair(logits, masks))
    iou, f1 = (t.float() for t in metric.aggregate())
    return MetricValues(float(iou.nanmean()), iou, float(f1.nanmean()))


def iou_delta(a: MetricValues, b: MetricValues) -> float:
    """|difference| of mIoU and of the per-class IoUs of the classes present in prediction or target."""
    present = ~(a.iou.isnan() | b.iou.isnan())
    per_class = float((a.iou[present] - b.iou[present]).abs().max()) if present.any() else 0.0
    return max(abs(a.miou - b.miou), per_class)


def present_iou(values: MetricValues, reference: MetricValues) -> MetricValues:
    """segen's per-class IoU with NaN where the reference says the class is absent from both (segen logs 0)."""
    return values._replace(iou=torch.where(reference.iou.isnan(), torch.nan, values.iou))


# ---------------------------------------------------------------------------------------------------- data

DATA_SIZES = {
    False: dict(image_size=64, batch_size=16, warmup=3, batches=40),
    True: dict(image_size=16, batch_size=4, warmup=1, batches=3),
}


class DataResult(NamedTuple):
    segen: float  # images per second
    bare: float
    setting: str


def images_per_second(loader: DataLoader, warmup: int, batches: int) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += next(iterator)[0].shape[0]
    return images / (time.perf_counter() - start)


def data_benchmark(tiny: bool, repeats: int, num_workers: int) -> DataResult:
    size = DATA_SIZES[tiny]
    bs, warmup, n = size["batch_size"], size["warmup"], size["batches"]
    data = ShapesDataModule(
        image_size=size["image_size"], num_train=(warmup + n) * bs, batch_size=bs, num_workers=num_workers
    )
    data.setup("fit")

    def segen() -> float:
        return -images_per_second(
            data.train_dataloader(), warmup, n
        )  # negated: alternate() keeps the minimum

    def bare() -> float:
        loader = DataLoader(
            data.train_dataset, batch_size=bs, shuffle=True, drop_last=True, num_workers=num_workers
        )
        return -images_per_second(loader, warmup, n)

    segen_rate, bare_rate = (-v for v in alternate([segen, bare], repeats))
    setting = f"shapes {size['image_size']} px, batch {bs}, {num_workers} workers, {n} batches"
    return DataResult(segen_rate, bare_rate, setting)
