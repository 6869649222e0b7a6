"""The one DataLoader recipe every segen data module uses for its splits, and the mixin that applies it.

Training order is a pure function of ``(seed, pass index)`` (:class:`EpochShuffleSampler`), and the data module
checkpoints which pass the trainer is in and how many of its batches it has processed (:class:`SplitLoaders`), so a
run resumed from any checkpoint, also one written in the middle of an epoch, sees exactly the batches that the
unbroken run would have seen next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segen.data.predict import ImageFolderDataset, collate_predict

__all__ = ["EpochShuffleSampler", "PassCounter", "ResumableDataLoader", "SplitLoaders", "make_loader"]


class PassCounter:
    """Where the training data stream stands; the data module saves it in checkpoints (:class:`SplitLoaders`).

    - ``value``: how many passes over the training data have started (drawn their order);
    - ``skip``: batches to leave out at the start of the next pass, set when a checkpoint written in the middle of
      a pass is loaded (those batches were trained on before the checkpoint);
    - ``open``: whether the current pass has started drawing batches. A loader's iterator is created before its
      first batch is drawn (and, with workers, draws ahead of the trainer), so the count alone cannot say whether a
      checkpoint written before the trainer's first batch of a pass belongs to that pass or to the one before;
    - ``delivered`` and ``skipped``: batches of the open pass handed to the consumer, and the skip it started
      with. A pass that was drawn (by workers fetching ahead) but of which no batch was handed out before its
      iterator was dropped is drawn again by the next iterator (:class:`ResumableDataLoader`), so an abandoned
      iterator (Lightning makes one when it resumes at an epoch's end) does not use up a pass.
    """

    def __init__(self) -> None:
        self.value = 0
        self.skip = 0
        self.open = False
        self.delivered = 0
        self.skipped = 0


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


class _SkipFirstBatches:
    """The index batches of ``batches`` (a batch sampler) without the first ``counter.skip`` of the next pass.

    Only lists of indices are skipped: no item of a skipped batch is loaded. ``len`` stays the full pass, as
    Lightning expects: it counts the skipped batches among those its restored progress says were processed.
    """

    def __init__(self, batches: Iterable[list[int]], counter: PassCounter) -> None:
        self.batches, self.counter = batches, counter

    def __len__(self) -> int:
        assert isinstance(self.batches, Sized)
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        # called when a DataLoader iterator is made; the pass begins when its first batch is asked for
        self.counter.open = False
        return self._pass()

    def _pass(self) -> Iterator[list[int]]:
        counter = self.counter
        skip, counter.skip = counter.skip, 0
        batches = iter(self.batches)
        first = next(batches, None)  # draws this pass's order (EpochShuffleSampler counts the pass)
        counter.open, counter.delivered, counter.skipped = True, 0, skip
        if first is None:
            return
        if skip == 0:
            yield first
        for _ in range(skip - 1):
            if next(batches, None) is None:
                return
        yield from batches


class _CountDelivered(Iterator[Any]):
    """A DataLoader iterator that counts the batches it hands out (``passes.delivered``)."""

    def __init__(self, iterator: Iterator[Any], passes: PassCounter) -> None:
        self.iterator, self.passes = iterator, passes

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.passes.delivered += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # anything else a caller asks of torch's iterator
        return getattr(self.iterator, name)


class ResumableDataLoader(DataLoader):
    """The training loader: a ``DataLoader`` whose next pass leaves out the batches that a checkpoint says were
    already trained on (``passes.skip``, see :class:`PassCounter`), without loading them.

    The skip wraps the loader's index batch sampler (torch's ``DataLoader._index_sampler``), not its ``sampler``,
    so the loader keeps a plain ``sampler`` + ``batch_size``: under DDP Lightning re-creates it with its
    ``DistributedSamplerWrapper`` around the :class:`EpochShuffleSampler` (``passes`` is passed again from the
    saved arguments), every rank draws the same order, takes its shard and skips the same number of its own
    batches. (A custom ``batch_sampler`` would not do: the loader's ``sampler`` would then be a
    ``SequentialSampler``, which Lightning replaces by an unshuffled ``DistributedSampler``.)

    ``state_dict``/``load_state_dict`` make it stateful for Lightning, which otherwise warns that a mid-epoch
    resume restarts the epoch. Its own state is empty on purpose: the position lives in the shared
    :class:`PassCounter`, which the data module saves (one place, also for checkpoints written before this class).
    """

    def __init__(self, *args: Any, passes: PassCounter | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes = passes

    def __iter__(self) -> Iterator[Any]:
        passes = self.passes
        if passes is None:
            return super().__iter__()
        if passes.open and passes.delivered == 0:
            # the last iterator drew a pass but handed none of it out: draw that pass again (see PassCounter)
            passes.value, passes.skip, passes.open = passes.value - 1, passes.skipped, False
        return _CountDelivered(super().__iter__(), passes)

    @property
    def _index_sampler(self) -> Any:
        batches = super()._index_sampler
        if self.passes is None or self.batch_sampler is None:
            return batches
        return _SkipFirstBatches(batches, self.passes)

    def state_dict(self) -> dict[str, Any]:
        """Empty: the data module checkpoints the position (see the class docstring)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load: the data module restores the position (see the class docstring)."""


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
    (:class:`EpochShuffleSampler`), resumes in the middle of a pass (:class:`ResumableDataLoader`) and drops a last
    partial batch (when there is a full one); evaluation keeps order. ``dataset`` is ``None`` until
    ``setup(stage)`` made it: say so."""
    if dataset is None:
        raise RuntimeError(f"{name} does not exist yet: call setup({stage!r}) before asking for its loader")
    kwargs: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
    )
    if not train:
        return DataLoader(dataset, **kwargs)
    passes = passes if passes is not None else PassCounter()
    return ResumableDataLoader(
        dataset,
        sampler=EpochShuffleSampler(len(dataset), seed, passes),
        drop_last=len(dataset) >= batch_size,
        passes=passes,
        # each new iterator draws its workers' base seed from this generator, not from the global random state:
        # how many iterators Lightning makes differs between an unbroken and a resumed run, and a draw from the
        # global state would shift every later random number of the task (augmentation, noise)
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
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
        """Saved in checkpoints by Lightning, for an exact resume: ``train_passes``, the pass over the training data
        to resume in, and ``train_skip``, how many of its batches the trainer has already processed.

        Mid-fit the trainer's own count of processed batches in the current epoch decides (the loader's workers
        and Lightning draw batches ahead of it); outside a fit every started pass counts as done.
        """
        passes = self._passes()
        if not passes.open:  # no batch of a pass was drawn since the loader was made or the state was loaded
            return {"train_passes": passes.value, "train_skip": passes.skip}
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != "fit":
            return {"train_passes": passes.value, "train_skip": 0}
        processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if (
            processed >= trainer.num_training_batches
        ):  # the pass is done (or cut short by limit_train_batches)
            return {"train_passes": passes.value, "train_skip": 0}
        return {"train_passes": passes.value - 1, "train_skip": int(processed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume in pass ``train_passes``, leaving out its first ``train_skip`` batches (absent in checkpoints
        written before mid-epoch resume existed: 0)."""
        passes = self._passes()
        passes.value = int(state_dict.get("train_passes", 0))
        passes.skip = int(state_dict.get("train_skip", 0))
        passes.open = False

    def train_dataloader(self) -> DataLoader:
        self._passes().open = False  # a new loader: its first pass has not begun
        return self._loader(self.train_dataset, "train_dataset", "fit", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val_dataset", "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test_dataset", "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, "predict_dataset", "predict")
