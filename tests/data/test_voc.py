"""VOCDataModule on a fake VOCdevkit tree: palette indices, 255 boundaries, loaders, layout errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from fake_trees import H, W, write_voc

from segen.data.voc import VOC_CLASSES, VOCDataModule


def test_attributes_exist_before_setup(tmp_path):
    write_voc(tmp_path)
    dm = VOCDataModule(tmp_path, batch_size=2, crop_size=24)
    assert dm.num_classes == 21 and dm.in_channels == 3
    assert dm.class_names == VOC_CLASSES and dm.class_names[15] == "person"
    assert len(dm.mean) == len(dm.std) == 3 and len(dm.palette) == 21
    assert dm.train_dataset is None


def test_masks_keep_palette_indices_and_boundary(tmp_path):
    masks = write_voc(tmp_path)
    dm = VOCDataModule(tmp_path, batch_size=1, crop_size=24)
    dm.setup("validate")
    image, mask = dm.val_dataset[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert torch.equal(mask, torch.from_numpy(masks["2007_000003"]).long())  # indices, incl. 255, not colours
    assert set(mask.unique().tolist()) == {0, 3, 15, 255}


def test_loaders(tmp_path):
    write_voc(tmp_path)
    dm = VOCDataModule(tmp_path, batch_size=2, crop_size=24)
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 24, 24) and masks.shape == (2, 24, 24) and masks.dtype == torch.long
    assert set(masks.unique().tolist()) <= {0, 1, 2, 15, 255}
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 3, H, W) and masks.shape == (1, H, W)
    assert dm.denormalize(images).shape == images.shape


def test_missing_root_names_path_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        VOCDataModule(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "VOCdevkit/VOC2012" in message and "SegmentationClass" in message
    assert "VOCtrainval_11-May-2012.tar" in message


def test_malformed_root_names_missing_folder(tmp_path):
    write_voc(tmp_path)
    shutil.rmtree(tmp_path / "VOCdevkit/VOC2012/SegmentationClass")
    with pytest.raises(FileNotFoundError, match="SegmentationClass") as info:
        VOCDataModule(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_listed_file_missing(tmp_path):
    write_voc(tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000001.jpg").unlink()
    dm = VOCDataModule(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"2007_000001\.jpg"):
        dm.setup("fit")


def test_unknown_year(tmp_path):
    with pytest.raises(ValueError, match="year"):
        VOCDataModule(tmp_path, year="2013")
