"""MaskFolderDataModule: index / palette-index / binary / palette mappings, pairing, split, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_trees import PALETTE, H, W, write_mask_folder
from PIL import Image

from segen.data.mask_folder import MaskFolderDataModule


def _all_masks(dataset) -> dict[str, torch.Tensor]:
    return {name[1].rsplit("/", 1)[-1][:-4]: dataset[i][1] for i, name in enumerate(dataset.names)}


@pytest.mark.parametrize(
    ("variant", "kwargs"),
    [
        ("index", {"num_classes": 3}),
        ("index_p", {"num_classes": 3}),  # palette PNG: indices are used, not its colours
        ("binary", {"num_classes": 2, "mask_mapping": "binary"}),
        ("palette", {"num_classes": 3, "mask_mapping": "palette", "palette": PALETTE}),
    ],
)
def test_mappings_give_class_ids(tmp_path, variant, kwargs):
    images, masks, ids = write_mask_folder(tmp_path, variant)
    dm = MaskFolderDataModule(images, masks, batch_size=2, crop_size=16, val_fraction=0.5, **kwargs)
    dm.setup()
    loaded = {**_all_masks(dm.val_dataset), **_all_masks(dm.test_dataset)}
    assert len(loaded) == 2
    for stem, mask in loaded.items():
        assert torch.equal(mask, torch.from_numpy(ids[stem]).long()), stem
    batch_images, batch_masks = next(iter(dm.train_dataloader()))
    assert batch_images.shape == (2, 3, 16, 16) and batch_masks.shape == (2, 16, 16)


def test_attributes_before_setup_and_inferred_channels(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, "binary", image_mode="L")
    dm = MaskFolderDataModule(images, masks, num_classes=2, mask_mapping="binary")
    assert dm.num_classes == 2 and dm.in_channels == 1
    assert dm.class_names == ("background", "foreground") and len(dm.mean) == len(dm.std) == 1
    dm.setup("validate")
    assert dm.val_dataset[0][0].shape == (1, H, W)


def test_split_is_deterministic_and_disjoint(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, "index", n=4)
    a = MaskFolderDataModule(images, masks, num_classes=3, seed=1)
    b = MaskFolderDataModule(images, masks, num_classes=3, seed=1)
    assert a.val_pairs == b.val_pairs and len(a.val_pairs) == 1 and len(a.train_pairs) == 3
    assert not set(a.val_pairs) & set(a.train_pairs)


def test_val_folders(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path / "train", "index", n=2)
    val_images, val_masks, _ = write_mask_folder(tmp_path / "val", "index", n=2)
    dm = MaskFolderDataModule(images, masks, 3, val_images=val_images, val_masks=val_masks)
    assert len(dm.train_pairs) == 2 and dm.val_pairs[0][0].parent == val_images


def test_binary_error_names_file_and_values(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, "binary", n=2)
    bad = np.zeros((H, W), np.uint8)
    bad[0, :3] = (255, 128, 1)  # anti-aliased edge
    Image.fromarray(bad).save(masks / "case_0.png")
    dm = MaskFolderDataModule(images, masks, 2, mask_mapping="binary", val_fraction=0.5)
    dm.setup()
    dataset = next(d for d in (dm.train_dataset, dm.val_dataset) if "case_0" in d.names[0][1])
    with pytest.raises(ValueError, match=r"case_0\.png.*\[0, 1, 128, 255\]"):
        dataset[0]


def test_index_value_out_of_range_names_file(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, "index", n=2, num_classes=3)
    dm = MaskFolderDataModule(images, masks, num_classes=2, val_fraction=0.5)  # masks hold class 2
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"case_.\.png.*\[2\]"):
        dm.val_dataset[0]


def test_unknown_palette_colour_names_file_and_colour(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, "palette", n=2)
    dm = MaskFolderDataModule(images, masks, 2, mask_mapping="palette", palette=PALETTE[:2], val_fraction=0.5)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"case_.\.png.*\[0, 255, 0\]"):
        dm.val_dataset[0]


def test_ignore_colors(tmp_path):
    images, masks, ids = write_mask_folder(tmp_path, "palette", n=2)
    dm = MaskFolderDataModule(
        images,
        masks,
        2,
        mask_mapping="palette",
        palette=PALETTE[:2],
        ignore_colors=[PALETTE[2]],
        val_fraction=0.5,
    )
    dm.setup("validate")
    stem = dm.val_pairs[0][1].stem
    expected = torch.from_numpy(ids[stem]).long()
    expected[expected == 2] = 255
    assert torch.equal(dm.val_dataset[0][1], expected)


def test_unpaired_files_are_listed(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, "index", n=3)
    (masks / "case_1.png").unlink()
    (masks / "case_1.png").parent.joinpath("extra.png").write_bytes((masks / "case_0.png").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"case_1\.png.*extra\.png"):
        MaskFolderDataModule(images, masks, 3)


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        MaskFolderDataModule(tmp_path / "nothing", tmp_path / "masks", 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 3, "mask_mapping": "binary"}, "binary"),
        ({"num_classes": 3, "mask_mapping": "palette"}, "palette"),
        ({"num_classes": 3, "mask_mapping": "palette", "palette": PALETTE[:2]}, "2 colours"),
        ({"num_classes": 3, "mask_mapping": "colour"}, "mask_mapping"),
        ({"num_classes": 3, "val_images": "x"}, "val_masks"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    images, masks, _ = write_mask_folder(tmp_path, "index", n=2)
    with pytest.raises(ValueError, match=match):
        MaskFolderDataModule(images, masks, **kwargs)


def test_transforms_from_yaml_class_path(tmp_path):
    """A config can replace the default transform with a class_path entry (what LightningCLI parses)."""
    from jsonargparse import ArgumentParser

    from segen.data.transforms import TrainTransform

    images, masks, _ = write_mask_folder(tmp_path, "index", n=2)
    parser = ArgumentParser()
    parser.add_class_arguments(MaskFolderDataModule, "data")
    cfg = parser.parse_string(
        f"""
data:
  images: {images}
  masks: {masks}
  num_classes: 3
  train_transform:
    class_path: segen.data.transforms.TrainTransform
    init_args: {{crop_size: 20, scale_range: [0.75, 1.5]}}
"""
    )
    dm = parser.instantiate(cfg).data
    assert isinstance(dm.train_transform, TrainTransform) and dm.train_transform.crop_size == (20, 20)
    dm.setup("fit")
    assert dm.train_dataset[0][0].shape == (3, 20, 20)
