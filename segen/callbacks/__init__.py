"""Callbacks that work with every logger (image grids as W&B images, TensorBoard images and PNG files), and the
writer of ``segen predict``'s colourised masks; sample grids of generative tasks; speed options (channels-last,
``torch.compile``) for every task."""

from segen.callbacks.images import SegmentationImageLogger
from segen.callbacks.predictions import MaskWriter, palette_image
from segen.callbacks.samples import (
    LatentTraversalLogger,
    ReconstructionLogger,
    SampleImageLogger,
    SynthesisImageLogger,
    slerp,
)
from segen.callbacks.speed import SpeedOptions

__all__ = [
    "LatentTraversalLogger",
    "MaskWriter",
    "ReconstructionLogger",
    "SampleImageLogger",
    "SegmentationImageLogger",
    "SpeedOptions",
    "SynthesisImageLogger",
    "palette_image",
    "slerp",
]
