"""Checkpoints that survive the process being killed (atomic writes, ``last.ckpt`` on a schedule and on SIGTERM);
callbacks that work with every logger (image grids as W&B images, TensorBoard images and PNG files), and the
writer of ``segen predict``'s colourised masks; sample grids of generative tasks; speed options (channels-last,
``torch.compile``) for every task."""

from segen.callbacks.checkpoint import AtomicCheckpointIO, SegenCheckpoint
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
    "AtomicCheckpointIO",
    "LatentTraversalLogger",
    "MaskWriter",
    "ReconstructionLogger",
    "SampleImageLogger",
    "SegenCheckpoint",
    "SegmentationImageLogger",
    "SpeedOptions",
    "SynthesisImageLogger",
    "palette_image",
    "slerp",
]
