"""Semantic segmentation as a LightningModule: any ``[B,C,H,W] -> [B,K,H,W]`` network, Dice + cross-entropy.

Batches are ``(images, masks)``: images float ``(B, C, H, W)``, masks long ``(B, H, W)`` with ``255`` = ignore.
Logged: ``train/loss`` (and its parts, e.g. ``train/dice``, ``train/ce``), ``val/loss``, ``val/mIoU``, ``val/dice``,
``val/acc`` and ``val/IoU_<class>``; the same under ``test/``.

Metrics are dataset-level (one confusion matrix over the whole split, as the Cityscapes and VOC benchmarks define
mIoU), computed by torchmetrics after ignored pixels are removed: a class absent from both prediction and truth in
the whole split is left out of the mean.

Mask values are checked on the host, before the batch moves to the accelerator (``on_before_batch_transfer``), so
the training step never waits for the GPU to say whether a mask is valid; see :meth:`SegmentationTask.on_before_batch_transfer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from segen.inference import sliding_window
from segen.losses import build_loss
from segen.losses.segmentation import check_target, check_target_values
from segen.nets.deeplab import DeepLabV3, DeepLabV3Plus
from segen.nets.unet import UNet
from segen.registry import lookup
from segen.tasks._parts import build_module, drop_object_hparams
from segen.tasks.base import SegenTask, check_nan_policy
from segen.tasks.batches import check_image_dtype, describe_batch
from segen.tasks.optim import configure_optimizers

__all__ = ["NETS", "NetFactory", "SegmentationTask", "build_net"]

# A network factory: called with the data's shape as keywords, e.g. UNet or functools.partial(UNet, depth=3).
NetFactory = Callable[[int, int], nn.Module]


# the networks a config or a script can name (``net: deeplabv3plus``), each with its default settings
NETS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "deeplabv3": DeepLabV3,
    "deeplabv3plus": DeepLabV3Plus,
}


def build_net(net: str | NetFactory | nn.Module | None, in_channels: int, num_classes: int) -> nn.Module:
    """The task's network: ``net`` itself if it is a module, a name of :data:`NETS`, else
    ``net(in_channels=..., num_classes=...)``."""
    if isinstance(net, str):
        net = lookup("net", net, NETS)
    return build_module(net, UNet, "net", in_channels=in_channels, num_classes=num_classes)


def _is_float_or_bool(tensor: Tensor) -> bool:
    return tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool


class SegmentationTask(SegenTask):
    """Train a segmentation network with Dice + cross-entropy; ``task(images)`` returns logits.

    Args:
        num_classes: number of classes ``K`` (linked from the data module by the CLI).
        in_channels: image channels ``C`` (linked from the data module by the CLI).
        net: the network, mapping ``(B, C, H, W)`` to ``(B, K, H, W)`` logits: a name (``"unet"``, ``"deeplabv3"``,
            ``"deeplabv3plus"``: that net's defaults), a module, or a factory called as
            ``net(in_channels=C, num_classes=K)`` (a config ``class_path`` without those two arguments becomes such
            a factory, so shapes are typed once). Default ``UNet(C, K)``.
        loss: ``"dice_ce"`` (default), ``"dice"``, ``"ce"`` or ``"focal"``.
        loss_kwargs: options of that loss, e.g. ``{"dice_weight": 1.0, "ce_weight": 0.5}``.
        lr: learning rate of the default AdamW optimizer.
        weight_decay: decoupled weight decay of the default AdamW (not applied to norms and biases).
        optimizer: replaces the default optimizer entirely (``lr``/``weight_decay`` are then unused).
        scheduler: replaces the default schedule (stepped every optimizer step).
        warmup_steps: linear warm-up of the default schedule, which then decays with a cosine to 0 at the end of
            training (``trainer.estimated_stepping_batches``); constant after warm-up if training has no set end.
        ignore_index: mask value excluded from loss and metrics.
        class_names: names for the per-class IoU logs (default: the data module's ``class_names`` or indices).
        val_window: when set, validation and test run sliding-window inference with this square window (for
            images larger than the training crop, e.g. Cityscapes' 1024x2048), Gaussian-blended with
            ``val_overlap``; training is unchanged.
        nan_policy: what a NaN or infinite training loss does: ``"raise"`` (stop, naming the step and the loss part),
            ``"skip"`` (skip that optimizer step, counted in ``train/skipped_steps``) or ``"off"`` (no check, no
            host-device sync); see :class:`~segen.tasks.base.SegenTask`.
    """

    monitor: tuple[str, str] = ("val/mIoU", "max")  # what the CLI's checkpoint callback tracks

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        net: str | NetFactory | nn.Module | None = None,
        loss: str = "dice_ce",
        loss_kwargs: dict[str, Any] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 100,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        val_window: int | None = None,
        val_overlap: float = 0.25,
        nan_policy: str = "raise",
    ) -> None:
        super().__init__()
        check_nan_policy(nan_policy)
        if not isinstance(num_classes, int) or num_classes < 2:
            binary = (
                "; binary segmentation is num_classes=2 (background 0 and foreground 1, softmax over both), "
                "not one sigmoid channel"
                if num_classes == 1
                else ""
            )
            raise ValueError(
                f"SegmentationTask: num_classes must be an integer >= 2, got {num_classes!r}{binary}"
            )
        self.save_hyperparameters()
        # Objects that are not config (a module or callable built in Python) are not stored as hyper-parameters, so
        # checkpoints stay loadable with weights_only=True. From a config (the CLI) they are stored as class_path dicts
        # and load_from_checkpoint rebuilds them; from Python, pass net=... again to load_from_checkpoint.
        drop_object_hparams(self.hparams, ("optimizer", "scheduler"))
        drop_object_hparams(self.hparams, ("net",), (dict, str, type(None)))  # a name is config
        self.num_classes, self.in_channels, self.ignore_index = num_classes, in_channels, ignore_index
        self.net = build_net(net, in_channels=in_channels, num_classes=num_classes)
        # the task checks the masks itself (see on_before_batch_transfer); the loss's own per-step check would read
        # the device on every step. An explicit loss_kwargs={"validate": True} turns it back on.
        self.criterion = build_loss(
            loss, ignore_index=ignore_index, **{"validate": False, **(loss_kwargs or {})}
        )
        self._masks_checked_on_host = False  # set by on_before_batch_transfer, consumed by the next step
        self.class_names = list(class_names) if class_names else None
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.val_metrics = self._make_metrics("val")
        self.test_metrics = self._make_metrics("test")

    # ------------------------------------------------------------------ model
    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, K, H, W)`` logits."""
        return self.net(images)

    def compute_loss(self, logits: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """Loss and its named parts. Override this one method to change the loss; ``"loss"`` is minimised."""
        if hasattr(self.criterion, "parts"):
            return self.criterion.parts(logits, masks)._asdict()
        return {"loss": self.criterion(logits, masks)}

    # ------------------------------------------------------------------ steps
    def _check_batch(self, images: Tensor, masks: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"SegmentationTask expects images (B, {self.in_channels}, H, W), got {tuple(images.shape)}: "
                f"the data has {images.shape[1] if images.ndim == 4 else '?'} channels but the model was built "
                f"with in_channels={self.in_channels}"
            )
        if masks.shape != images.shape[:1] + images.shape[2:]:
            # (B, 1, H, W): read_image's layout of a mask file
            channel = masks.ndim == 4 and masks.shape[1] == 1
            hint = (
                "; drop the channel dimension of the masks in the data set (mask[0] per item)"
                if channel
                else ""
            )
            raise ValueError(
                f"SegmentationTask: mask shape {tuple(masks.shape)} does not match image shape "
                f"{tuple(images.shape)}; expected masks (B, H, W) = {(images.shape[0], *images.shape[2:])}{hint}"
            )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Check the mask values while the batch is still on the host, where reading the result costs no sync.

        Lightning calls this hook on every batch it feeds to a step (fit, validate, test), before moving the batch
        to the accelerator. The step then checks only metadata (shapes, dtypes: free) and skips the value check,
        which on a GPU would make the host wait for the device every step. A step that did not follow this hook (a
        direct ``task.training_step(batch, 0)``, a data module that overrides the hook) checks the values itself:
        free on CPU, one sync on a GPU. Masks that are not integer ``(B, H, W)`` tensors are left to the step, whose
        metadata check names the problem.
        """
        masks = batch[1] if isinstance(batch, (tuple, list)) and len(batch) >= 2 else None
        predicting = self._trainer is not None and self.trainer.predicting  # predict_step ignores masks
        if isinstance(masks, Tensor) and masks.ndim == 3 and not _is_float_or_bool(masks) and not predicting:
            check_target_values(masks, self.num_classes, self.ignore_index)
            self._masks_checked_on_host = True
        return batch

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[dict[str, Tensor], Tensor]:
        checked = self._masks_checked_on_host  # this batch's masks were checked on the host
        self._masks_checked_on_host = False  # the mark is used up by this step
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"SegmentationTask: a batch must be (images, masks), got {describe_batch(batch)}")
        images, masks = batch  # (B, C, H, W), (B, H, W)
        check_image_dtype(
            "SegmentationTask", images, self.dtype, "normalised, e.g. by transforms.v2.Normalize"
        )
        self._check_batch(images, masks)
        window = self.hparams.get("val_window")
        if stage != "train" and window is not None:
            logits = sliding_window(self, images, window, overlap=self.hparams.val_overlap)  # (B, K, H, W)
        else:
            logits = self(images)  # (B, K, H, W)
        # metadata always; values only if on_before_batch_transfer did not check them on the host
        check_target(logits, masks, self.ignore_index, values=not checked)
        parts = self.compute_loss(logits, masks)
        batch_size = images.shape[0]
        values = {f"{stage}/{name}": value.detach() for name, value in parts.items()}
        if stage == "train":
            self.log_train(values, batch_size, prog_bar=("train/loss",))
        else:
            for key, value in values.items():
                self.log(
                    key,
                    value,
                    on_epoch=True,
                    prog_bar=key.endswith("/loss"),
                    batch_size=batch_size,
                    sync_dist=True,
                )
        return parts, logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        parts, _ = self._shared_step(batch, "train")
        return parts["loss"] if self.loss_is_usable(parts) else None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, logits = self._shared_step(batch, "val")
        self._update_metrics(self.val_metrics, logits, batch[1])

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, logits = self._shared_step(batch, "test")
        self._update_metrics(self.test_metrics, logits, batch[1])

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class maps ``(B, H, W)`` (long). Accepts ``images``, ``(images, masks)`` or ``(images, info)`` from a
        ``predict_dir``; uses sliding-window inference when ``val_window`` is set, as validation does."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch  # (B, C, H, W)
        sizes = (
            batch[1].get("sizes") if isinstance(batch, (tuple, list)) and isinstance(batch[1], dict) else None
        )
        if sizes is not None and len(set(sizes)) > 1:
            # Images of different sizes were padded into one batch. Zero padding is not what the network saw in
            # training and changes predictions near the border, so each image runs alone at its own size.
            masks = torch.full(
                images.shape[:1] + images.shape[2:], 255, dtype=torch.long, device=images.device
            )
            for i, (height, width) in enumerate(sizes):
                masks[i, :height, :width] = self._predict(images[i : i + 1, :, :height, :width])[0]
            return masks  # (B, H, W), 255 outside each image
        return self._predict(images)

    def _predict(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> class maps (B, H, W), through the sliding window when ``val_window`` is set."""
        window = self.hparams.get("val_window")
        if window is not None:
            return sliding_window(self, images, window, overlap=self.hparams.val_overlap).argmax(dim=1)
        return self(images).argmax(dim=1)

    # ------------------------------------------------------------------ metrics
    def _make_metrics(self, stage: str) -> MetricCollection:
        k = self.num_classes
        return MetricCollection(
            {
                "mIoU": MulticlassJaccardIndex(k, average="macro", validate_args=False),
                "IoU": MulticlassJaccardIndex(k, average="none", validate_args=False),
                "dice": MulticlassF1Score(k, average="macro", validate_args=False),
                "acc": MulticlassAccuracy(k, average="micro", validate_args=False),
            },
            prefix=f"{stage}/",
        )

    def _update_metrics(self, metrics: MetricCollection, logits: Tensor, masks: Tensor) -> None:
        valid = masks != self.ignore_index  # torchmetrics' segmentation metrics reject 255: drop those pixels
        metrics.update(logits.argmax(dim=1)[valid], masks[valid])

    def _log_metrics(self, metrics: MetricCollection, stage: str) -> None:
        values = metrics.compute()  # already reduced over all ranks by torchmetrics
        per_class = values.pop(f"{stage}/IoU")
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        values.update({f"{stage}/IoU_{n}": v for n, v in zip(names, per_class)})
        # identical on every rank; sync_dist only tells Lightning so (a mean of equal values) instead of warning
        self.log_dict(values, sync_dist=True)
        metrics.reset()

    def setup(self, stage: str) -> None:
        if self.class_names is None and self._trainer is not None:
            names = getattr(self.trainer.datamodule, "class_names", None)
            if names is not None and len(names) == self.num_classes:
                self.class_names = list(names)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return configure_optimizers(
            self, self.optimizer_fn, self.scheduler_fn, hp.lr, hp.weight_decay, hp.warmup_steps
        )
