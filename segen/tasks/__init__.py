"""LightningModules, one file per algorithm family."""

from segen.tasks.instance import InstanceSegmentationTask
from segen.tasks.segmentation import SegmentationTask

__all__ = ["InstanceSegmentationTask", "SegmentationTask"]
