"""LightningModules, one file per algorithm family."""

from segen.tasks.segmentation import SegmentationTask

__all__ = ["SegmentationTask"]
