"""LightningDataModules and datasets: the embedded shapes and digits, Pascal VOC, Cityscapes, COCO-format json, any
image/mask folder, MNIST / Fashion-MNIST / CIFAR-10 and ImageNet-style class folders.

A data file that cannot be decoded raises :class:`CorruptFileError` naming it; file-based data modules take
``skip_corrupt=True`` to skip such files instead and list them in ``corrupt_files``."""

from segen.data._files import CorruptFileError
from segen.data.cityscapes import CityscapesDataModule
from segen.data.coco import CocoInstanceDataModule
from segen.data.generation import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    GenerationDataset,
    ImageFolderDataModule,
    MNISTDataModule,
)
from segen.data.mask_folder import MaskFolderDataModule
from segen.data.predict import ImageFolderDataset
from segen.data.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset
from segen.data.transforms import EvalTransform, InstanceTransform, SegmentationTransform, TrainTransform
from segen.data.voc import VOCDataModule

__all__ = [
    "SHAPE_NAMES",
    "CIFAR10DataModule",
    "CityscapesDataModule",
    "CocoInstanceDataModule",
    "CorruptFileError",
    "DigitsDataModule",
    "EvalTransform",
    "FashionMNISTDataModule",
    "GenerationDataset",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "InstanceTransform",
    "MNISTDataModule",
    "MaskFolderDataModule",
    "SegmentationTransform",
    "ShapesDataModule",
    "ShapesDataset",
    "TrainTransform",
    "VOCDataModule",
]
