"""The one DataLoader recipe every segen data module uses for its splits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["make_loader"]


def make_loader(
    dataset: Dataset | None,
    name: str,
    stage: str,
    *,
    batch_size: int,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    collate_fn: Callable[[Any], Any] | None,
    train: bool = False,
) -> DataLoader:
    """Loader for one split: training shuffles with a seeded generator and drops a last partial batch (when there
    is a full one); evaluation keeps order. ``dataset`` is ``None`` until ``setup(stage)`` made it: say so."""
    if dataset is None:
        raise RuntimeError(f"{name} does not exist yet: call setup({stage!r}) before asking for its loader")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        generator=torch.Generator().manual_seed(seed) if train else None,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
    )
