"""segen: image segmentation and image generation as PyTorch Lightning tasks and data modules."""

from segen.callbacks import (
    LatentTraversalLogger,
    MaskWriter,
    ReconstructionLogger,
    SampleImageLogger,
    SegmentationImageLogger,
)
from segen.data import (
    CIFAR10DataModule,
    CityscapesDataModule,
    CocoInstanceDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MaskFolderDataModule,
    MNISTDataModule,
    ShapesDataModule,
    ShapesDataset,
    VOCDataModule,
)
from segen.losses import DiceCELoss, DiceLoss, FocalLoss, dice_ce_loss, dice_loss, focal_loss
from segen.nets import (
    DCGANDiscriminator,
    DCGANGenerator,
    DeepLabV3,
    DeepLabV3Plus,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    UNet,
)
from segen.tasks import GANTask, InstanceSegmentationTask, SegmentationTask, VAETask, VQPriorTask, VQVAETask

__version__ = "0.1.0"

__all__ = [
    "CIFAR10DataModule",
    "CityscapesDataModule",
    "CocoInstanceDataModule",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DiceCELoss",
    "DiceLoss",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "FocalLoss",
    "GANTask",
    "ImageFolderDataModule",
    "InstanceSegmentationTask",
    "LatentTraversalLogger",
    "MNISTDataModule",
    "MaskFolderDataModule",
    "MaskWriter",
    "ReconstructionLogger",
    "SampleImageLogger",
    "SegmentationImageLogger",
    "SegmentationTask",
    "ShapesDataModule",
    "ShapesDataset",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "UNet",
    "VAETask",
    "VOCDataModule",
    "VQPriorTask",
    "VQVAETask",
    "__version__",
    "dice_ce_loss",
    "dice_loss",
    "focal_loss",
]
