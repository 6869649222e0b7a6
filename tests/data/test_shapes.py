"""The embedded shapes data set: determinism, item formats, instance targets, the data module and bad arguments."""

from __future__ import annotations

import time

import pytest
import torch

from segen.data import SHAPE_NAMES, ShapesDataModule, ShapesDataset
from segen.data.shapes import collate_instances


def _equal_items(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return all(_equal_items(x, y) for x, y in zip(a, b, strict=True))
    return a.dtype == b.dtype and torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_same_arguments_give_bitwise_identical_items(mode):
    a = ShapesDataset(20, seed=3, mode=mode)
    b = ShapesDataset(20, seed=3, mode=mode)
    for i in range(20):
        assert _equal_items(a[i], b[i]), f"item {i} differs between two identical data sets"


def test_seeds_and_splits_give_different_items():
    base = ShapesDataset(10, seed=0, split="train")
    other_seed = ShapesDataset(10, seed=1, split="train")
    val = ShapesDataset(10, seed=0, split="val")
    test = ShapesDataset(10, seed=0, split="test")
    for i in range(10):
        images = [base[i][0], other_seed[i][0], val[i][0], test[i][0]]
        for j in range(4):
            for k in range(j + 1, 4):
                assert not torch.equal(images[j], images[k]), f"item {i}: data sets {j} and {k} coincide"
    # Different indices differ too (no accidental reuse of a generator seed).
    assert not torch.equal(base[0][0], base[1][0])


def test_item_does_not_depend_on_reading_order():
    ds = ShapesDataset(10, seed=7)
    alone = ShapesDataset(10, seed=7)[5]
    for i in range(5):
        ds[i]
    assert _equal_items(ds[5], alone)
    assert _equal_items(ds[-5], alone), "negative indices count from the end"
    with pytest.raises(IndexError):
        ds[10]


def test_global_torch_seed_does_not_matter():
    torch.manual_seed(0)
    first = ShapesDataset(3)[2]
    torch.manual_seed(123)
    torch.rand(10)
    assert _equal_items(ShapesDataset(3)[2], first)


# ---------------------------------------------------------------------------------------------- semantic items


def test_semantic_item_format_and_class_coverage():
    k = 4
    ds = ShapesDataset(50, num_classes=k, image_size=48)
    seen = torch.zeros(k, dtype=torch.bool)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
        assert torch.isfinite(image).all()
        assert mask.dtype == torch.long and mask.shape == (48, 48)
        assert mask.min() >= 0 and mask.max() < k
        seen[mask.unique()] = True
    assert seen.all(), (
        f"classes never drawn in 50 items: {[SHAPE_NAMES[c] for c in (~seen).nonzero().flatten()]}"
    )
    assert ds.class_names == ("background", "circle", "square", "triangle")


def test_every_foreground_kind_is_drawn_with_all_classes():
    k = len(SHAPE_NAMES)
    ds = ShapesDataset(50, num_classes=k)
    seen = torch.zeros(k, dtype=torch.bool)
    for i in range(len(ds)):
        seen[ds[i][1].unique()] = True
    assert seen.all()
    assert len(SHAPE_NAMES) >= 7 and SHAPE_NAMES[:4] == ("background", "circle", "square", "triangle")


def test_unnormalised_images_lie_in_unit_range_and_shapes_contrast():
    ds = ShapesDataset(20, normalize=False)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.min() >= 0 and image.max() <= 1
        # Shapes stand out: the mean colour of shape pixels is far from that of background pixels.
        if (mask == 0).any() and (mask > 0).any():
            bg = image[:, mask == 0].mean(1)
            fg = image[:, mask > 0].mean(1)
            assert (bg - fg).norm() > 0.1, f"item {i}: shapes barely differ from the background"


def test_normalisation_statistics_and_denormalize_inverts_it():
    ds = ShapesDataset(100)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    mean, std = images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.1, f"normalised per-channel means {mean.tolist()} are not near 0"
    assert (std - 1).abs().max() < 0.1, f"normalised per-channel stds {std.tolist()} are not near 1"

    raw = torch.stack([ShapesDataset(100, normalize=False)[i][0] for i in range(8)])
    torch.testing.assert_close(ds.denormalize(images[:8]), raw, rtol=0, atol=1e-6)
    dm = ShapesDataModule()
    torch.testing.assert_close(dm.denormalize(images[:8]), raw, rtol=0, atol=1e-6)
    torch.testing.assert_close(dm.denormalize(images[0]), raw[0], rtol=0, atol=1e-6)
    assert dm.mean == ShapesDataset.MEAN and dm.std == ShapesDataset.STD


# ---------------------------------------------------------------------------------------------- instance items


def _bounding_box(mask: torch.Tensor) -> list[float]:
    ys, xs = mask.nonzero(as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("min_instance_area", [1, 10])
def test_instance_targets_match_the_visible_shapes(min_instance_area):
    k = 6
    inst = ShapesDataset(30, num_classes=k, mode="instance", min_instance_area=min_instance_area)
    sem = ShapesDataset(30, num_classes=k, mode="semantic", normalize=False)
    for i in range(len(inst)):
        image, target = inst[i]
        sem_image, sem_mask = sem[i]
        assert torch.equal(image, sem_image), "instance images are the unnormalised semantic images"
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        n = len(labels)
        assert boxes.dtype == torch.float32 and boxes.shape == (n, 4)
        assert labels.dtype == torch.int64 and masks.dtype == torch.uint8 and masks.shape == (n, 64, 64)
        assert ((labels >= 1) & (labels < k)).all()
        assert (masks.flatten(1).sum(1) >= min_instance_area).all()
        assert masks.sum(0).max() <= 1, "instance masks overlap: occlusion was not applied"
        for box, label, mask in zip(boxes, labels, masks):
            assert box.tolist() == _bounding_box(mask.bool())
            assert (sem_mask[mask.bool()] == label).all(), "instance label disagrees with the semantic mask"
        union = masks.sum(0).bool()
        if min_instance_area == 1:
            assert torch.equal(union, sem_mask > 0)
        else:  # dropped fragments are tiny
            assert not (union & (sem_mask == 0)).any()
            assert ((sem_mask > 0) & ~union).sum() < min_instance_area * 5


def test_instance_item_may_be_empty():
    ds = ShapesDataset(40, mode="instance", min_shapes=0, max_shapes=1)
    empties = [ds[i][1] for i in range(len(ds)) if len(ds[i][1]["labels"]) == 0]
    assert empties, "with min_shapes=0 some of 40 items should have no shape"
    target = empties[0]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["masks"].shape == (0, 64, 64) and target["masks"].dtype == torch.uint8
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


# ---------------------------------------------------------------------------------------------- data module


def test_data_module_attributes_exist_before_setup():
    dm = ShapesDataModule(num_classes=5, image_size=32)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (5, 3, 32)
    assert dm.class_names == SHAPE_NAMES[:5]
    assert dm.mean == ShapesDataset.MEAN and dm.std == ShapesDataset.STD
    assert dm.hparams["num_classes"] == 5
    inst = ShapesDataModule(mode="instance")
    assert inst.mean == (0.0, 0.0, 0.0) and inst.std == (1.0, 1.0, 1.0), "instance images are not normalised"
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


def test_semantic_loaders():
    dm = ShapesDataModule(image_size=32, num_train=40, num_val=10, num_test=7, batch_size=16)
    dm.setup("fit")
    assert dm.test_dataset is None
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert len(train) == 2, "the last partial training batch is dropped"
    assert len(val) == 1
    images, masks = next(iter(train))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (16, 32, 32) and masks.dtype == torch.long
    images, masks = next(iter(val))
    assert images.shape == (10, 3, 32, 32)
    assert torch.equal(masks[3], dm.val_dataset[3][1]), "validation is not shuffled"
    dm.setup("test")
    dm.setup("predict")
    assert len(dm.test_dataloader()) == 1 and dm.predict_dataset is dm.test_dataset
    assert len(next(iter(dm.predict_dataloader()))[0]) == 7


def test_small_train_set_keeps_its_only_batch():
    dm = ShapesDataModule(num_train=5, batch_size=16)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1


def test_instance_loader_batches_are_lists():
    dm = ShapesDataModule(mode="instance", image_size=32, num_train=8, num_val=4, batch_size=4)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 4
    assert images[0].shape == (3, 32, 32) and images[0].min() >= 0 and images[0].max() <= 1
    assert set(targets[0]) == {"boxes", "labels", "masks"}
    assert collate_instances([]) == ([], [])


def test_train_shuffling_is_seeded():
    def first_masks(seed: int) -> torch.Tensor:
        dm = ShapesDataModule(image_size=32, num_train=64, batch_size=8, seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        first = next(iter(loader))[1]
        # The loader shuffles: the first batch is not items 0..7 in order.
        assert not torch.equal(first, torch.stack([dm.train_dataset[i][1] for i in range(8)]))
        return first

    assert torch.equal(first_masks(0), first_masks(0))
    assert not torch.equal(first_masks(0), first_masks(1))


# ---------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": len(SHAPE_NAMES) + 1}, "num_classes"),
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 0}, "image_size"),
        ({"min_shapes": 4, "max_shapes": 2}, "min_shapes"),
        ({"max_shapes": 0}, "max_shapes"),
        ({"min_size": 10, "max_size": 5}, "max_size"),
        ({"max_size": 22}, "max_size"),
        ({"split": "training"}, "split"),
        ({"mode": "panoptic"}, "mode"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs, name):
    kwargs = {"num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        ShapesDataset(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"num_test": 0}, "num_test"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"image_size": -8}, "image_size"),
        ({"num_classes": 9}, "num_classes"),
        ({"min_shapes": 6}, "min_shapes"),
        ({"mode": "detection"}, "mode"),
    ],
)
def test_data_module_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ShapesDataModule(**kwargs)


def test_error_message_names_value_and_valid_range():
    with pytest.raises(ValueError, match=rf"num_classes must be in \[2, {len(SHAPE_NAMES)}\].*got 11"):
        ShapesDataset(4, num_classes=11)


# ---------------------------------------------------------------------------------------------- speed


def test_generation_is_fast():
    ds = ShapesDataset(100, num_classes=len(SHAPE_NAMES))
    ds[0]  # warm-up
    start = time.perf_counter()
    for i in range(100):
        ds[i]
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"100 items took {elapsed:.2f} s"
