"""The one DataLoader recipe every segen data module uses for its splits, and the mixin that applies it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from segen.data.predict import ImageFolderDataset, collate_predict

__all__ = ["SplitLoaders", "make_loader"]


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


class SplitLoaders:
    """``train/val/test/predict_dataloader`` over the ``*_dataset`` attributes that ``setup`` fills, all through
    :func:`make_loader`. Mix in before ``LightningDataModule``; the class sets ``batch_size``, ``seed``,
    ``num_workers``, ``pin_memory`` and overrides ``_collate_fn`` when its items need one. A ``predict_dir``
    data set (:class:`~segen.data.predict.ImageFolderDataset`) always uses ``collate_predict``."""

    batch_size: int
    seed: int
    num_workers: int
    pin_memory: bool
    train_dataset: Dataset | None
    val_dataset: Dataset | None
    test_dataset: Dataset | None
    predict_dataset: Dataset | None

    def _collate_fn(self) -> Callable[[Any], Any] | None:
        """The collate function of the labelled splits (a picklable function, for worker processes)."""
        return None

    def _loader(self, dataset: Dataset | None, name: str, stage: str, train: bool = False) -> DataLoader:
        return make_loader(
            dataset,
            name,
            stage,
            batch_size=self.batch_size,
            seed=self.seed,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_predict if isinstance(dataset, ImageFolderDataset) else self._collate_fn(),
            train=train,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train_dataset", "fit", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val_dataset", "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test_dataset", "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, "predict_dataset", "predict")
