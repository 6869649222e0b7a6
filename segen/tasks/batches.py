"""The batch checks every task makes before its first layer, so that bad input is named, not met inside a convolution.

Without them a ``uint8`` image batch (``torchvision.io.read_image``'s output, or a ``TensorDataset`` of raw pixels)
fails in ``F.conv2d`` with "Input type (unsigned char) and bias type (float) should be the same", a dict batch with
"'str' object has no attribute 'ndim'", and a ``TensorDataset(images)`` batch (a 1-tuple) with an ``IndexError``.
Each task keeps its own shape check (the shapes differ per task); these helpers cover the structure and the dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_image_dtype", "describe_batch", "generation_batch"]


def describe_batch(batch: Any) -> str:
    """A short description of what a batch is, for error messages."""
    if isinstance(batch, dict):
        return f"a dict with keys {sorted(map(str, batch))}"
    if isinstance(batch, (tuple, list)):
        items = ", ".join(describe_batch(item) for item in batch[:4])
        return f"a {type(batch).__name__} of {len(batch)} ({items}{', ...' if len(batch) > 4 else ''})"
    if isinstance(batch, Tensor):
        return f"a {batch.dtype} tensor of shape {tuple(batch.shape)}"
    return f"a {type(batch).__name__}"


def check_image_dtype(owner: str, images: Any, weights_dtype: torch.dtype, scaled: str) -> None:
    """Images must be a floating-point tensor the weights can take.

    ``scaled`` says what the task expects the values to be (e.g. "normalised" or "in [-1, 1]"), for the message.
    Lightning converts floating-point inputs to the weights' dtype only under ``bf16-true`` / ``16-true`` /
    ``64-true``; under the default precision a ``float64`` batch would meet ``float32`` weights.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{owner}: images must be a tensor (B, C, H, W), got {describe_batch(images)}")
    if not images.is_floating_point():
        raise TypeError(
            f"{owner}: images must be floating point ({scaled}), got {images.dtype}; convert them in the data "
            f"set, e.g. torchvision.transforms.v2.ToDtype(torch.float32, scale=True) for 0..255 pixels"
        )
    if images.dtype == torch.float64 and weights_dtype != torch.float64:
        raise TypeError(
            f"{owner}: images are float64 but the weights are {weights_dtype}; convert the images with .float() "
            f"(or ToDtype(torch.float32)), or train in double precision with Trainer(precision='64-true')"
        )


def generation_batch(owner: str, batch: Any) -> tuple[Any, Any]:
    """``(images, labels or None)`` from ``(images, labels, ...)``, ``(images,)`` (a ``TensorDataset(images)``) or a
    bare image tensor; anything else is a ``TypeError`` naming what the batch is."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(
        f"{owner}: a batch must be (images, labels), (images,) or an image tensor, got {describe_batch(batch)}"
    )
