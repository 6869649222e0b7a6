"""segen: image segmentation and image generation as PyTorch Lightning tasks and data modules."""

from segen.callbacks import MaskWriter, SegmentationImageLogger
from segen.data import (
    CityscapesDataModule,
    CocoInstanceDataModule,
    MaskFolderDataModule,
    ShapesDataModule,
    ShapesDataset,
    VOCDataModule,
)
from segen.losses import DiceCELoss, DiceLoss, FocalLoss, dice_ce_loss, dice_loss, focal_loss
from segen.nets import DeepLabV3, DeepLabV3Plus, UNet
from segen.tasks import InstanceSegmentationTask, SegmentationTask

__version__ = "0.1.0"

__all__ = [
    "CityscapesDataModule",
    "CocoInstanceDataModule",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DiceCELoss",
    "DiceLoss",
    "FocalLoss",
    "InstanceSegmentationTask",
    "MaskFolderDataModule",
    "MaskWriter",
    "SegmentationImageLogger",
    "SegmentationTask",
    "ShapesDataModule",
    "ShapesDataset",
    "UNet",
    "VOCDataModule",
    "__version__",
    "dice_ce_loss",
    "dice_loss",
    "focal_loss",
]
