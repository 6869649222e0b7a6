"""The collectives segen's own code runs under DDP (Lightning's DDP averages gradients; these are the rest):
codebook statistics, a GAN's manual gradient sync, the VAE's fitted scale."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["all_reduce_mean_", "distributed"]


def distributed() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean_(tensors: list[Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in one flat all_reduce (one message, not one per tensor)."""
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        tensor.copy_(synced)
