"""Callbacks that work with every logger (image grids as W&B images, TensorBoard images and PNG files)."""

from segen.callbacks.images import SegmentationImageLogger

__all__ = ["SegmentationImageLogger"]
