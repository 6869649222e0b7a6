"""CityscapesDataModule on a fake leftImg8bit/gtFine tree: label id -> train id table, instance targets, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fake_trees import CITYSCAPES_BANDS, H, W, write_cityscapes

from segen.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    LABEL_TO_TRAIN_ID,
    CityscapesDataModule,
    instance_target,
    label_ids_to_train_ids,
)

# the official cityscapesScripts table: label id -> train id (everything else -> 255)
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def test_lookup_table_matches_official_table():
    assert LABEL_TO_TRAIN_ID.shape == (256,)
    for label_id in range(256):
        assert LABEL_TO_TRAIN_ID[label_id].item() == TRAIN_IDS.get(label_id, 255), label_id
    assert label_ids_to_train_ids(np.array([[7, 26, 0, 4, 255]])).tolist() == [[0, 13, 255, 255, 255]]
    assert len(CITYSCAPES_CLASSES) == len(CITYSCAPES_PALETTE) == 19
    assert CITYSCAPES_CLASSES[13] == "car" and CITYSCAPES_PALETTE[0] == (128, 64, 128)


def test_semantic_items_are_mapped(tmp_path):
    written = write_cityscapes(tmp_path)
    dm = CityscapesDataModule(tmp_path, batch_size=2, crop_size=24)
    assert dm.num_classes == 19 and dm.in_channels == 3 and dm.palette == CITYSCAPES_PALETTE
    dm.setup("validate")
    image, mask = dm.val_dataset[0]
    assert image.shape == (3, H, W) and mask.shape == (H, W) and mask.dtype == torch.long
    label = written[next(s for s in written if s.startswith("frankfurt"))]["labelIds"]
    assert torch.equal(mask, label_ids_to_train_ids(label))
    rows = np.array_split(np.arange(H), len(CITYSCAPES_BANDS))
    expected = {0: 255, 7: 0, 26: 13, 4: 255, 23: 10, 33: 18, 255: 255}
    for band, label_id in zip(rows, CITYSCAPES_BANDS):
        assert (mask[band] == expected[label_id]).all(), label_id


def test_semantic_loader(tmp_path):
    write_cityscapes(tmp_path)
    dm = CityscapesDataModule(tmp_path, batch_size=2, crop_size=24)
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 24, 24) and masks.shape == (2, 24, 24)
    assert set(masks.unique().tolist()) <= {0, 10, 13, 18, 255}


def test_instance_targets(tmp_path):
    written = write_cityscapes(tmp_path)
    dm = CityscapesDataModule(tmp_path, batch_size=2, target="instance")
    assert dm.num_classes == 9 and dm.class_names[0] == "background" and dm.class_names[3] == "car"
    dm.setup("validate")
    images, targets = next(iter(dm.val_dataloader()))
    assert len(images) == len(targets) == 2
    assert images[0].shape == (3, H, W) and images[0].min() >= 0.0 and images[0].max() <= 1.0
    target = targets[0]
    stem = next(s for s in written if s.startswith("frankfurt"))
    assert target["labels"].tolist() == [
        1,
        3,
        3,
    ]  # person 24000, car 26000, car 26001; crowd 26 and sky dropped
    k = int(stem.split("_")[1])
    expected_boxes = [[40, 22, 45, 31], [3 + k, 2, 12 + k, 10], [20, 12, 30, 20]]  # x2/y2 exclusive
    assert target["boxes"].tolist() == expected_boxes and target["boxes"].dtype == torch.float32
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, H, W)
    assert torch.equal(target["masks"][1].bool(), torch.from_numpy(written[stem]["instanceIds"] == 26000))


def test_instance_flip_moves_boxes_and_masks(tmp_path):
    write_cityscapes(tmp_path)
    dm = CityscapesDataModule(tmp_path, target="instance", hflip=1.0)
    dm.setup("fit")
    _, target = dm.train_dataset[0]
    assert target["boxes"][0].tolist() == [W - 45, 22, W - 40, 31]
    _, xs = target["masks"][0].nonzero(as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1) == (W - 45, W - 40)


def test_instance_target_of_empty_map():
    target = instance_target(np.full((4, 5), 23))
    assert (
        target["boxes"].shape == (0, 4)
        and target["labels"].shape == (0,)
        and target["masks"].shape == (0, 4, 5)
    )


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CityscapesDataModule(tmp_path / "cs")
    message = str(info.value)
    assert str(tmp_path / "cs") in message and "leftImg8bit" in message and "gtFine" in message
    assert "https://www.cityscapes-dataset.com (registration required)" in message


def test_missing_gtfine(tmp_path):
    write_cityscapes(tmp_path)
    shutil.rmtree(tmp_path / "gtFine" / "val")
    with pytest.raises(FileNotFoundError, match="gtFine/val"):
        CityscapesDataModule(tmp_path)


def test_missing_label_file(tmp_path):
    written = write_cityscapes(tmp_path)
    stem = next(s for s in written if s.startswith("aachen"))
    (tmp_path / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png").unlink()
    dm = CityscapesDataModule(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{stem}_gtFine_labelIds.png"):
        dm.setup("fit")


def test_bad_target(tmp_path):
    with pytest.raises(ValueError, match="target"):
        CityscapesDataModule(tmp_path, target="panoptic")
