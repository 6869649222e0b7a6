"""Inference helpers: sliding-window inference for large images and segmentation post-processing."""

from segen.inference.postprocess import (
    boxes_from_masks,
    connected_components,
    mask_iou,
    mask_nms,
    nms,
    remove_small_regions,
    semantic_to_instances,
)
from segen.inference.sliding_window import sliding_window, tile_positions, tile_starts

__all__ = [
    "boxes_from_masks",
    "connected_components",
    "mask_iou",
    "mask_nms",
    "nms",
    "remove_small_regions",
    "semantic_to_instances",
    "sliding_window",
    "tile_positions",
    "tile_starts",
]
