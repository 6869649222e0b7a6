"""The one DataLoader recipe every segen data module uses for its splits, and the mixin that applies it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segen.data.predict import ImageFolderDataset, collate_predict

__all__ = ["EpochShuffleSampler", "PassCounter", "SplitLoaders", "make_loader"]


class PassCounter:
    """How many passes over the training data have started; part of the data module's checkpoint state."""

    def __init__(self) -> None:
        self.value = 0


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on ``seed`` and how many passes over the data came before.

    torch's ``RandomSampler`` with a seeded generator draws each epoch's order from the generator's running state,
    so a run resumed from a checkpoint (a fresh generator) sees different batches than the unbroken run. Here pass
    ``n`` is always ``randperm(seed, n)``, and the pass count lives in a :class:`PassCounter` that the data module
    saves in checkpoints (:class:`SplitLoaders`), so a resumed run sees exactly the batches of the unbroken one.
    Lightning's ``set_epoch`` is ignored: after a resume it can be one ahead of the passes actually made. Under DDP,
    Lightning's sampler wrapper shards the one permutation that every rank draws alike.
    """

    def __init__(self, num_samples: int, seed: int = 0, counter: PassCounter | None = None) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.counter = counter if counter is not None else PassCounter()

    def set_epoch(self, epoch: int) -> None:  # see the class docstring
        pass

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.counter.value)
        self.counter.value += 1
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


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
    passes: PassCounter | None = None,
) -> DataLoader:
    """Loader for one split: training shuffles in an order fixed by ``seed`` and the pass count ``passes``
    (:class:`EpochShuffleSampler`)
    and drops a last partial batch (when there is a full one); evaluation keeps order. ``dataset`` is ``None`` until
    ``setup(stage)`` made it: say so."""
    if dataset is None:
        raise RuntimeError(f"{name} does not exist yet: call setup({stage!r}) before asking for its loader")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(dataset), seed, passes) if train else None,
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

    predict_dir: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int

    def _setup_predict_dir(self, stage: str | None) -> None:
        """With ``predict_dir``, prediction runs on that folder's images (normalised like the training data)."""
        if stage in (None, "predict") and self.predict_dir is not None:
            self.predict_dataset = ImageFolderDataset(self.predict_dir, self.mean, self.std, self.in_channels)

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
            passes=self._passes(),
        )

    def _passes(self) -> PassCounter:
        if not hasattr(self, "_train_passes"):
            self._train_passes = PassCounter()
        return self._train_passes

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints by Lightning: the number of passes over the training data, for an exact resume."""
        return {"train_passes": self._passes().value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._passes().value = int(state_dict.get("train_passes", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train_dataset", "fit", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val_dataset", "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test_dataset", "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, "predict_dataset", "predict")
