"""Instance segmentation with torchvision's Mask R-CNN as a LightningModule.

Batches are torchvision's detection format: ``(list of images float [C, H, W] in [0, 1], list of target dicts)``
with ``boxes`` float ``[N, 4]`` (x1, y1, x2, y2), ``labels`` int64 ``[N]`` (1..K-1; 0 is the background) and
``masks`` uint8 ``[N, H, W]``. Logged: ``train/loss`` and its parts ``train/loss_classifier``,
``train/loss_box_reg``, ``train/loss_mask``, ``train/loss_objectness``, ``train/loss_rpn_box_reg``; and
``val/mAP_mask``, ``val/mAP_box`` (COCO mAP@[.5:.95]) with ``val/mAP50_mask``, ``val/mAP50_box`` from torchmetrics.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

from segen.nets.maskrcnn import build_maskrcnn
from segen.tasks._parts import drop_object_hparams
from segen.tasks.base import SegenTask, check_nan_policy
from segen.tasks.optim import configure_optimizers

__all__ = ["InstanceSegmentationTask"]

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


class InstanceSegmentationTask(SegenTask):
    """Mask R-CNN; ``num_classes`` counts the background, as torchvision does (shapes: 4 = background + 3).

    Args:
        num_classes: classes including the background (linked from the data module by the CLI).
        backbone: ``resnet18`` | ``resnet34`` | ``resnet50`` | ``resnet101`` (FPN).
        input_min_size, input_max_size: Mask R-CNN's internal resize (short side, long side cap). Several short
            sides (``[96, 112, 128]``) train at a random one per batch (multi-scale training, scale augmentation)
            and evaluate at the last.
        anchor_sizes: one anchor size per FPN level; smaller for small images.
        weights_path: local torchvision ResNet weights for the backbone (never downloaded).
        trainable_backbone_layers: with ``weights_path``, how many ResNet stages are fine-tuned (default 3).
        rois_per_image: proposals per image sampled to train the box head (torchvision's 512 suits COCO; 128 is
            plenty for images with a few objects and makes steps several times cheaper).
        lr, weight_decay, warmup_steps: the default AdamW with warm-up and cosine decay.
        optimizer, scheduler: replace the defaults (LightningCLI callables).
        nan_policy: ``"raise"`` | ``"skip"`` | ``"off"``: what a non-finite training loss does
            (:class:`~segen.tasks.base.SegenTask`).
    """

    monitor: tuple[str, str] = ("val/mAP_mask", "max")

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        input_min_size: int | tuple[int, ...] = 800,
        input_max_size: int = 1333,
        anchor_sizes: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512),
        weights_path: str | None = None,
        trainable_backbone_layers: int | None = None,
        rois_per_image: int = 512,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 100,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        nan_policy: str = "raise",
    ) -> None:
        super().__init__()
        check_nan_policy(nan_policy)
        self.save_hyperparameters()
        drop_object_hparams(self.hparams, ("optimizer", "scheduler"))
        self.num_classes = num_classes
        self.model = build_maskrcnn(
            num_classes,
            backbone=backbone,
            min_size=tuple(input_min_size) if isinstance(input_min_size, (list, tuple)) else input_min_size,
            max_size=input_max_size,
            anchor_sizes=tuple(anchor_sizes),
            weights_path=weights_path,
            trainable_backbone_layers=trainable_backbone_layers,
            rois_per_image=rois_per_image,
        )
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.val_map = MeanAveragePrecision(iou_type=["bbox", "segm"])
        self.test_map = MeanAveragePrecision(iou_type=["bbox", "segm"])

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Predictions (eval mode): per image ``boxes``, ``labels``, ``scores``, ``masks`` float ``[N, 1, H, W]``."""
        return self.model(images)

    def compute_loss(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Mask R-CNN's loss parts and their sum ``loss``; override to re-weight them."""
        parts = self.model(images, targets)
        return {"loss": sum(parts.values()), **parts}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        images, targets = batch
        parts = self.compute_loss(images, targets)
        values = {f"train/{name}": value.detach() for name, value in parts.items()}
        self.log_train(values, len(images), prog_bar=("train/loss",))
        return parts["loss"] if self.loss_is_usable(parts) else None

    def _update_map(self, metric: MeanAveragePrecision, batch: Batch) -> None:
        images, targets = batch
        outputs = self(images)
        preds = [
            {
                "boxes": o["boxes"],
                "scores": o["scores"],
                "labels": o["labels"],
                "masks": o["masks"][:, 0] > 0.5,
            }
            for o in outputs
        ]
        # crowd regions (COCO iscrowd=1) are kept in evaluation targets and ignored by the metric, as in COCO's
        truth = [
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "masks": t["masks"].bool(),
                **({"iscrowd": t["iscrowd"]} if "iscrowd" in t else {}),
            }
            for t in targets
        ]
        metric.update(preds, truth)

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        values = metric.compute()
        self.log_dict(
            {
                f"{stage}/mAP_mask": values["segm_map"],
                f"{stage}/mAP_box": values["bbox_map"],
                f"{stage}/mAP50_mask": values["segm_map_50"],
                f"{stage}/mAP50_box": values["bbox_map_50"],
            },
            sync_dist=True,  # already reduced over ranks by torchmetrics; identical everywhere
        )
        metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._update_map(self.val_map, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._update_map(self.test_map, batch)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        images = batch[0] if isinstance(batch, (tuple, list)) and isinstance(batch[0], list) else batch
        return self(images)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return configure_optimizers(
            self, self.optimizer_fn, self.scheduler_fn, hp.lr, hp.weight_decay, hp.warmup_steps
        )
