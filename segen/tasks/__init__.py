"""LightningModules, one file per algorithm family."""

from segen.tasks.gan import GANTask, max_steps_for
from segen.tasks.instance import InstanceSegmentationTask
from segen.tasks.segmentation import SegmentationTask

__all__ = ["GANTask", "InstanceSegmentationTask", "SegmentationTask", "max_steps_for"]
