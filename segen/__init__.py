"""segen: image segmentation and image generation as PyTorch Lightning tasks and data modules."""

from segen.callbacks import SegmentationImageLogger
from segen.data import ShapesDataModule, ShapesDataset
from segen.losses import DiceCELoss, DiceLoss, FocalLoss, dice_ce_loss, dice_loss, focal_loss
from segen.nets import UNet
from segen.tasks import SegmentationTask

__version__ = "0.1.0"

__all__ = [
    "DiceCELoss",
    "DiceLoss",
    "FocalLoss",
    "SegmentationImageLogger",
    "SegmentationTask",
    "ShapesDataModule",
    "ShapesDataset",
    "UNet",
    "__version__",
    "dice_ce_loss",
    "dice_loss",
    "focal_loss",
]
