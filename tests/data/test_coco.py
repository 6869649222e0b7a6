"""CocoInstanceDataModule on a fake COCO tree (real json with polygons, RLE, a crowd region and an empty image)."""

from __future__ import annotations

import json

import pytest
import torch
from fake_trees import H, W, write_coco

from segen.data.coco import CocoInstanceDataModule, CocoInstances
from segen.data.transforms import InstanceTransform
from segen.inference import boxes_from_masks


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path, num_images=5)


def _rect(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def test_shape_attributes_exist_after_init_with_contiguous_labels(coco):
    images, annotations, _ = coco
    dm = CocoInstanceDataModule(root=images, annotations=annotations)
    assert dm.num_classes == 3  # background + cat (id 3) + dog (id 7)
    assert dm.class_names == ("background", "cat", "dog")
    assert dm.in_channels == 3


def test_items_decode_polygons_and_rle_and_map_category_ids(coco):
    images, annotations, per_image = coco
    dataset = CocoInstances(images, annotations, category_ids=[3, 7], image_ids=[101])
    image, target = dataset[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert target["labels"].tolist() == [1, 2]  # category 3 -> 1, 7 -> 2
    assert target["image_id"].item() == 101
    # polygon x 3..15, y 3..13 (image 1); RLE square rows 16..28, cols 30..42
    assert torch.equal(target["masks"][0], _rect(3, 13, 3, 15))
    assert torch.equal(target["masks"][1], _rect(16, 28, 30, 42))
    expected_boxes = [
        [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
        for a in per_image[101]
    ]
    assert torch.equal(target["boxes"], torch.tensor(expected_boxes, dtype=torch.float32))


def test_crowd_regions_are_dropped_for_training_and_flagged_for_evaluation(coco):
    images, annotations, _ = coco
    train = CocoInstances(images, annotations, [3, 7], image_ids=[100])
    val = CocoInstances(images, annotations, [3, 7], image_ids=[100], keep_crowd=True)
    _, t_train = train[0]
    _, t_val = val[0]
    assert t_train["labels"].tolist() == [1] and "iscrowd" not in t_train
    assert t_val["labels"].tolist() == [1, 2]
    assert t_val["iscrowd"].tolist() == [0, 1]


def test_image_without_annotations_gives_empty_target(coco):
    images, annotations, _ = coco
    _, target = CocoInstances(images, annotations, [3, 7], image_ids=[104])[0]
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, H, W)


def test_held_out_split_is_seeded_and_disjoint(coco):
    images, annotations, _ = coco
    a = CocoInstanceDataModule(root=images, annotations=annotations, val_fraction=0.4, seed=1)
    b = CocoInstanceDataModule(root=images, annotations=annotations, val_fraction=0.4, seed=1)
    assert a.val_ids == b.val_ids and len(a.val_ids) == 2
    assert set(a.train_ids).isdisjoint(a.val_ids)
    assert sorted(a.train_ids + a.val_ids) == [100, 101, 102, 103, 104]


def test_separate_validation_json(tmp_path):
    train_images, train_json, _ = write_coco(tmp_path, num_images=3, name="train")
    val_images, val_json, _ = write_coco(tmp_path, num_images=2, name="val")
    dm = CocoInstanceDataModule(
        root=train_images, annotations=train_json, val_annotations=val_json, val_root=val_images, batch_size=2
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 2
    images, targets = next(iter(dm.val_dataloader()))
    assert isinstance(images, list) and len(images) == 2
    assert {"boxes", "labels", "masks", "iscrowd"} <= set(targets[0])


def test_training_flip_moves_masks_and_boxes_together(coco):
    images, annotations, _ = coco
    dataset = CocoInstances(
        images, annotations, [3, 7], image_ids=[101], transform=InstanceTransform(hflip=1.0)
    )
    image, target = dataset[0]
    plain_image, plain = CocoInstances(images, annotations, [3, 7], image_ids=[101])[0]
    assert torch.equal(image, plain_image.flip(-1))
    assert torch.equal(target["masks"], plain["masks"].flip(-1))
    assert torch.equal(target["boxes"], boxes_from_masks(target["masks"].bool()).float())


def test_crop_drops_instances_outside_it_with_their_labels_and_masks():
    transform = InstanceTransform(hflip=0.0, crop_size=(16, 48))
    masks = torch.stack([_rect(0, 8, 0, 10), _rect(24, 32, 30, 40)])
    target = {"boxes": boxes_from_masks(masks.bool()).float(), "labels": torch.tensor([1, 2]), "masks": masks}
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    kept = set()
    torch.manual_seed(0)
    for _ in range(20):
        out_image, out = transform(image, target)
        assert out_image.shape == (3, 16, 48)
        assert len(out["labels"]) == len(out["boxes"]) == len(out["masks"])
        for label, mask in zip(out["labels"].tolist(), out["masks"]):
            assert mask.sum() > 0, "an instance whose mask left the crop must be dropped"
            kept.add(label)
    assert kept == {1, 2}


def test_scale_without_crop_is_refused():
    with pytest.raises(ValueError, match="scale_range needs crop_size"):
        InstanceTransform(scale_range=(0.5, 2.0))


def test_missing_annotation_file_names_path_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CocoInstanceDataModule(root=tmp_path, annotations=tmp_path / "nope.json")
    assert "nope.json" in str(info.value) and "cocodataset.org" in str(info.value)


def test_missing_image_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO image folder"):
        CocoInstanceDataModule(root=tmp_path / "absent", annotations=tmp_path / "a.json")


def test_malformed_json_names_missing_lists(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"lacks the list\(s\) \['annotations', 'categories'\]"):
        CocoInstanceDataModule(root=tmp_path, annotations=path)


def test_missing_image_files_are_listed(coco):
    images, annotations, _ = coco
    (images / "000000000002.jpg").unlink()
    dm = CocoInstanceDataModule(root=images, annotations=annotations)
    with pytest.raises(FileNotFoundError, match=r"1 of \d images .* are missing .*000000000002.jpg"):
        dm.setup()  # builds every split; image 102 is in one of them
