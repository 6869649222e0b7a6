"""LightningDataModules and datasets: the embedded shapes, Pascal VOC, Cityscapes and any image/mask folder."""

from segen.data.cityscapes import CityscapesDataModule
from segen.data.mask_folder import MaskFolderDataModule
from segen.data.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset
from segen.data.transforms import EvalTransform, SegmentationTransform, TrainTransform
from segen.data.voc import VOCDataModule

__all__ = [
    "SHAPE_NAMES",
    "CityscapesDataModule",
    "EvalTransform",
    "MaskFolderDataModule",
    "SegmentationTransform",
    "ShapesDataModule",
    "ShapesDataset",
    "TrainTransform",
    "VOCDataModule",
]
