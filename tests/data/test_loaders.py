"""The shared loader recipe: epoch-seeded shuffling and mid-epoch resume (exact resume), ordered evaluation, a
clear error before setup."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, Dataset, TensorDataset

from segen.data.loaders import EpochShuffleSampler, PassCounter, ResumableDataLoader, make_loader

LOADER = dict(batch_size=4, seed=0, num_workers=0, pin_memory=False, collate_fn=None)


class Recording(Dataset):
    """``range(n)``, remembering which items were loaded."""

    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        self.loaded.append(index)
        return index


def batches(loader) -> list[list[int]]:
    return [b.tolist() if isinstance(b, torch.Tensor) else b[0].tolist() for b in loader]


def fake_trainer(num_training_batches: int) -> SimpleNamespace:
    """What the data module's state reads of a Trainer in the middle of ``fit``."""
    current = SimpleNamespace(processed=0)
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=current)))
    return SimpleNamespace(
        state=SimpleNamespace(fn="fit"), num_training_batches=num_training_batches, fit_loop=loop
    )


def test_order_depends_only_on_seed_and_the_pass_count():
    counter = PassCounter()
    a = EpochShuffleSampler(20, seed=3, counter=counter)
    first, second = list(a), list(a)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert second != first and counter.value == 2  # a new order each pass
    resumed = PassCounter()
    resumed.value = 1  # a resumed run restores the count from the checkpoint ...
    assert list(EpochShuffleSampler(20, seed=3, counter=resumed)) == second  # ... and sees pass 1's order
    a.set_epoch(7)  # Lightning's epoch number does not move the order (it can be off by one after a resume)
    assert list(EpochShuffleSampler(20, seed=3)) == first
    assert list(EpochShuffleSampler(20, seed=4)) != first


def test_data_module_checkpoints_the_pass_count():
    from segen import ShapesDataModule

    dm = ShapesDataModule(image_size=16, num_train=8, num_val=2, batch_size=4)
    dm.setup("fit")
    for _ in range(3):
        list(dm.train_dataloader())
    assert dm.state_dict() == {
        "train_passes": 3,
        "train_skip": 0,
    }  # outside a fit, a started pass counts as done
    fresh = ShapesDataModule(image_size=16, num_train=8, num_val=2, batch_size=4)
    fresh.setup("fit")
    fresh.load_state_dict(dm.state_dict())
    assert torch.equal(next(iter(fresh.train_dataloader()))[0], next(iter(dm.train_dataloader()))[0])


def test_the_next_pass_leaves_out_the_skipped_batches_without_loading_them():
    data, passes = Recording(20), PassCounter()
    loader = make_loader(data, "train_dataset", "fit", train=True, passes=passes, **LOADER)
    assert isinstance(loader, ResumableDataLoader) and len(loader) == 5
    pass_0, pass_1 = batches(loader), batches(loader)
    passes.value, passes.skip = 0, 2  # what loading a checkpoint written after 2 batches of pass 0 does
    data.loaded.clear()
    assert batches(loader) == pass_0[2:]
    assert sorted(data.loaded) == sorted(
        i for batch in pass_0[2:] for i in batch
    )  # skipped items never loaded
    assert len(loader) == 5  # Lightning counts the skipped batches as processed: the length is the full pass
    assert batches(loader) == pass_1  # the skip applies to one pass only
    passes.value, passes.skip = 0, 5  # a checkpoint at the last batch of a pass: nothing of it is left
    assert batches(loader) == []


def test_data_module_state_in_the_middle_of_a_pass_round_trips():
    from segen import ShapesDataModule

    def data_module() -> ShapesDataModule:
        dm = ShapesDataModule(image_size=16, num_train=16, num_val=2, batch_size=4)
        dm.setup("fit")
        dm.trainer = fake_trainer(num_training_batches=4)
        return dm

    dm = data_module()
    progress = dm.trainer.fit_loop.epoch_loop.batch_progress.current
    loader = dm.train_dataloader()
    assert dm.state_dict() == {"train_passes": 0, "train_skip": 0}  # before the first pass began
    iterator = iter(loader)
    assert dm.state_dict() == {"train_passes": 0, "train_skip": 0}  # an iterator draws its pass lazily
    first_two = [next(iterator) for _ in range(2)]
    assert dm.state_dict() == {
        "train_passes": 0,
        "train_skip": 0,
    }  # drawn, but the trainer processed none yet
    progress.processed = 2
    state = dm.state_dict()
    assert state == {"train_passes": 0, "train_skip": 2}
    rest = list(iterator)
    progress.processed = 4
    assert dm.state_dict() == {"train_passes": 1, "train_skip": 0}  # a finished pass: the next one is due

    resumed = data_module()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # saved again before the resumed run drew a batch: the same state
    again = list(resumed.train_dataloader())
    assert len(first_two) == 2 and len(again) == len(rest) == 2
    for a, b in zip(again, rest, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    following = [b[0] for b in dm.train_dataloader()], [b[0] for b in resumed.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(*following, strict=True))  # and pass 1 is the same too
    assert resumed.load_state_dict({"train_passes": 3}) is None and resumed.state_dict()["train_skip"] == 0


def test_an_iterator_dropped_before_its_first_batch_does_not_use_up_a_pass():
    """Lightning makes a training iterator at the start of a resumed fit and, when the checkpoint was written at the
    end of an epoch, drops it for the next epoch's; a worker that fetched ahead has drawn a pass by then."""
    passes = PassCounter()
    kwargs = {**LOADER, "num_workers": 1}
    loader = make_loader(
        TensorDataset(torch.arange(12)), "train_dataset", "fit", train=True, passes=passes, **kwargs
    )
    iter(loader)  # the worker starts fetching pass 0 at once
    expected = list(EpochShuffleSampler(12, seed=0))
    assert [i for batch in batches(loader) for i in batch] == expected
    assert passes.value == 1


@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_each_rank_resumes_its_own_shard_of_the_same_order(rank):
    """Lightning re-creates the training loader around a ``DistributedSamplerWrapper`` (as in ``Trainer.fit`` with
    DDP); every rank draws the same pass order, keeps its shard and leaves out the same number of its batches."""
    data = TensorDataset(torch.arange(32))

    def rank_loader(passes: PassCounter) -> DataLoader:
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            loader = make_loader(data, "train_dataset", "fit", train=True, passes=passes, **LOADER)
        shuffle = _is_dataloader_shuffled(loader)
        sampler = _get_distributed_sampler(loader, shuffle, overfit_batches=0, num_replicas=2, rank=rank)
        return _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)

    unbroken = rank_loader(PassCounter())
    assert isinstance(unbroken, ResumableDataLoader) and isinstance(
        unbroken.sampler, DistributedSamplerWrapper
    )
    assert len(unbroken) == 4
    passes_0_and_1 = batches(unbroken) + batches(unbroken)
    order = list(EpochShuffleSampler(32, seed=0))
    assert [i for batch in passes_0_and_1[:4] for i in batch] == order[rank::2]  # the shard of pass 0's order
    skipping = PassCounter()
    skipping.skip = 3  # a checkpoint after 3 batches (on every rank) of pass 0
    resumed = rank_loader(skipping)
    assert batches(resumed) + batches(resumed) == passes_0_and_1[3:]


def test_training_loader_shuffles_and_drops_the_partial_batch_evaluation_keeps_order():
    data = TensorDataset(torch.arange(10))
    kwargs = dict(batch_size=4, seed=0, num_workers=0, pin_memory=False, collate_fn=None)
    train = make_loader(data, "train_dataset", "fit", train=True, **kwargs)
    batches = [b[0].tolist() for b in train]
    flat = [i for batch in batches for i in batch]
    assert len(batches) == 2 and len(set(flat)) == 8 and flat != sorted(flat)
    val = make_loader(data, "val_dataset", "validate", **kwargs)
    assert [b[0].tolist() for b in val] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_loader_before_setup_says_what_to_call():
    with pytest.raises(RuntimeError, match=r"val_dataset does not exist yet: call setup\('validate'\)"):
        make_loader(
            None,
            "val_dataset",
            "validate",
            batch_size=2,
            seed=0,
            num_workers=0,
            pin_memory=False,
            collate_fn=None,
        )
