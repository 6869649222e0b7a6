"""LightningDataModules and datasets: the embedded shapes, Pascal VOC, Cityscapes, COCO-format json and any image/mask
folder."""

from segen.data.cityscapes import CityscapesDataModule
from segen.data.coco import CocoInstanceDataModule
from segen.data.mask_folder import MaskFolderDataModule
from segen.data.predict import ImageFolderDataset
from segen.data.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset
from segen.data.transforms import EvalTransform, InstanceTransform, SegmentationTransform, TrainTransform
from segen.data.voc import VOCDataModule

__all__ = [
    "SHAPE_NAMES",
    "CityscapesDataModule",
    "CocoInstanceDataModule",
    "EvalTransform",
    "ImageFolderDataset",
    "InstanceTransform",
    "MaskFolderDataModule",
    "SegmentationTransform",
    "ShapesDataModule",
    "ShapesDataset",
    "TrainTransform",
    "VOCDataModule",
]
