"""LightningModules, one file per algorithm family."""

from segen.tasks.base import CheckpointMismatchError, NonFiniteLossError, SegenTask
from segen.tasks.gan import GANTask, max_steps_for
from segen.tasks.instance import InstanceSegmentationTask
from segen.tasks.mask_to_image import MaskToImageTask
from segen.tasks.segmentation import SegmentationTask
from segen.tasks.vae import VAETask
from segen.tasks.vq_prior import VQPriorTask
from segen.tasks.vqvae import VQVAETask

__all__ = [
    "CheckpointMismatchError",
    "GANTask",
    "InstanceSegmentationTask",
    "MaskToImageTask",
    "NonFiniteLossError",
    "SegenTask",
    "SegmentationTask",
    "VAETask",
    "VQPriorTask",
    "VQVAETask",
    "max_steps_for",
]
