"""The shared loader recipe: epoch-seeded shuffling (exact resume), ordered evaluation, a clear error before setup."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from segen.data.loaders import EpochShuffleSampler, PassCounter, make_loader


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
    assert dm.state_dict() == {"train_passes": 3}
    fresh = ShapesDataModule(image_size=16, num_train=8, num_val=2, batch_size=4)
    fresh.setup("fit")
    fresh.load_state_dict(dm.state_dict())
    assert torch.equal(next(iter(fresh.train_dataloader()))[0], next(iter(dm.train_dataloader()))[0])


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
