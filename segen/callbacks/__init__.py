"""Callbacks that work with every logger (image grids as W&B images, TensorBoard images and PNG files), and the
writer of ``segen predict``'s colourised masks."""

from segen.callbacks.images import SegmentationImageLogger
from segen.callbacks.predictions import MaskWriter, palette_image

__all__ = ["MaskWriter", "SegmentationImageLogger", "palette_image"]
