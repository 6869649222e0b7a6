"""Write tiny fake data sets in the exact on-disk formats of Pascal VOC, Cityscapes and mask folders.

Images are 32x48 (H x W) by default, so every test stays in the millisecond range. Each writer returns what it
wrote (the class-id arrays), so tests can compare loaded masks with hand-known values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 32, 48


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _voc_palette_bytes() -> list[int]:
    from segen.data.voc import voc_palette

    return [channel for colour in voc_palette(256) for channel in colour]


def write_voc(
    root: Path,
    train: tuple[str, ...] = ("2007_000001", "2007_000002"),
    val: tuple[str, ...] = ("2007_000003",),
) -> dict[str, np.ndarray]:
    """``root/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}`` with palette PNG masks
    holding background 0, two object classes (15 person, the item's index + 1) and a 255 boundary ring."""
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    masks: dict[str, np.ndarray] = {}
    for i, name in enumerate((*train, *val)):
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[4:20, 6:30] = 255  # boundary ring ...
        mask[5:19, 7:29] = 15  # ... around a person
        mask[22:30, 34:44] = i + 1
        image = _rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=90)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(_voc_palette_bytes())
        png.save(base / "SegmentationClass" / f"{name}.png")
        masks[name] = mask
    (base / "ImageSets/Segmentation/train.txt").write_text("".join(f"{n}\n" for n in train))
    (base / "ImageSets/Segmentation/val.txt").write_text("".join(f"{n}\n" for n in val))
    return masks


# label ids written into the fake Cityscapes label maps, row bands top to bottom
CITYSCAPES_BANDS: tuple[int, ...] = (0, 7, 26, 4, 23, 33, 255)


def write_cityscapes(
    root: Path, cities: dict[str, tuple[str, ...]] | None = None, per_city: int = 2
) -> dict[str, dict[str, np.ndarray]]:
    """``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``root/gtFine/<split>/<city>/*_gtFine_*`` with
    labelIds (8-bit L: horizontal bands of ``CITYSCAPES_BANDS``), instanceIds (16-bit grey PNG: two cars 26000 and
    26001, a person 24000, a crowd of cars stored as the plain label id 26, and a non-instance class id 23 sky),
    color (RGB) and polygons (json). Returns ``{stem: {"labelIds": ..., "instanceIds": ...}}``."""
    cities = cities or {"train": ("aachen",), "val": ("frankfurt",)}
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, names in cities.items():
        for city in names:
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            gt = root / "gtFine" / split / city
            gt.mkdir(parents=True, exist_ok=True)
            for k in range(per_city):
                stem = f"{city}_{k:06d}_{19 + k:06d}"
                image = _rng(len(written)).integers(0, 256, (H, W, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                label = np.zeros((H, W), dtype=np.uint8)
                rows = np.array_split(np.arange(H), len(CITYSCAPES_BANDS))
                for band, value in zip(rows, CITYSCAPES_BANDS):
                    label[band] = value
                Image.fromarray(label, mode="L").save(gt / f"{stem}_gtFine_labelIds.png")
                inst = np.full((H, W), 23, dtype=np.int32)  # sky everywhere: no instance
                inst[2:10, 3 + k : 12 + k] = 26000  # car 0, box x 3+k..12+k (exclusive), y 2..10
                inst[12:20, 20:30] = 26001  # car 1
                inst[22:31, 40:45] = 24000  # person
                inst[24:28, 2:8] = 26  # a crowd of cars: label id only, not an instance
                Image.fromarray(inst.astype(np.uint16)).save(  # 16-bit grey PNG
                    gt / f"{stem}_gtFine_instanceIds.png"
                )
                colour = np.zeros((H, W, 3), dtype=np.uint8)
                colour[label == 7] = (128, 64, 128)
                Image.fromarray(colour).save(gt / f"{stem}_gtFine_color.png")
                polygons = {
                    "imgHeight": H,
                    "imgWidth": W,
                    "objects": [{"label": "road", "polygon": [[0, 5], [47, 5], [47, 9]]}],
                }
                (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
                written[stem] = {"labelIds": label, "instanceIds": inst}
    return written


PALETTE: list[list[int]] = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def write_mask_folder(
    root: Path, variant: str = "index", n: int = 4, image_mode: str = "RGB", num_classes: int = 3
) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """``root/images/case_<i>.png`` with ``root/masks/case_<i>.png``. ``variant``: ``"index"`` (mode L class ids
    with a 255 patch), ``"index_p"`` (palette PNG whose colours differ from the indices), ``"binary"`` (0/255),
    ``"palette"`` (RGB colours from ``PALETTE``). Returns the folders and the class ids of each stem."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    ids: dict[str, np.ndarray] = {}
    for i in range(n):
        stem = f"case_{i}"
        classes = 2 if variant == "binary" else num_classes
        label = np.zeros((H, W), dtype=np.uint8)
        for c in range(1, classes):
            label[4 * c : 4 * c + 8, 5 * c + i : 5 * c + i + 12] = c
        if variant in ("index", "index_p"):
            label[0:2, 0:3] = 255
        shape = (H, W) if image_mode == "L" else (H, W, 3)
        Image.fromarray(_rng(i).integers(0, 256, shape, dtype=np.uint8), mode=image_mode).save(
            images / f"{stem}.png"
        )
        if variant == "index":
            Image.fromarray(label, mode="L").save(masks / f"{stem}.png")
        elif variant == "index_p":
            png = Image.fromarray(label, mode="P")
            png.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [7, 7, 7] * 253)
            png.save(masks / f"{stem}.png")
        elif variant == "binary":
            Image.fromarray(label * 255, mode="L").save(masks / f"{stem}.png")
        elif variant == "palette":
            Image.fromarray(np.array(PALETTE, dtype=np.uint8)[label]).save(masks / f"{stem}.png")
        else:
            raise ValueError(f"unknown variant {variant!r}")
        ids[stem] = label
    return images, masks, ids


def write_coco(
    root: Path, num_images: int = 4, name: str = "train"
) -> tuple[Path, Path, dict[int, list[dict]]]:
    """``root/<name>/*.jpg`` and ``root/annotations/instances_<name>.json`` in COCO instance format.

    Categories have COCO-style gaps (ids 3 "cat" and 7 "dog"). Image ``i`` (id ``100 + i``) holds a polygon
    rectangle of category 3; odd images add an RLE-encoded square of category 7; image 0 adds a crowd region
    (``iscrowd=1``) of category 7; the last image has no annotation at all. Returns the image folder, the json and
    the annotations per image id.
    """
    from pycocotools import mask as mask_utils

    images_dir, ann_dir = root / name, root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    rng = _rng(7)
    images, annotations, per_image = [], [], {}
    for i in range(num_images):
        image_id, file_name = 100 + i, f"{i:012d}.jpg"
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
        anns: list[dict] = []
        if i < num_images - 1:
            x, y = 2 + i, 3
            poly = [x, y, x + 12, y, x + 12, y + 10, x, y + 10]
            anns.append({"category_id": 3, "segmentation": [poly], "bbox": [x, y, 12, 10], "iscrowd": 0})
            if i % 2 == 1:
                square = np.zeros((H, W), dtype=np.uint8, order="F")
                square[16:28, 30:42] = 1
                rle = mask_utils.encode(square)
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append({"category_id": 7, "segmentation": rle, "bbox": [30, 16, 12, 12], "iscrowd": 0})
            if i == 0:
                crowd = np.zeros((H, W), dtype=np.uint8, order="F")
                crowd[20:30, 2:20] = 1
                rle = mask_utils.encode(crowd)
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append({"category_id": 7, "segmentation": rle, "bbox": [2, 20, 18, 10], "iscrowd": 1})
        for ann in anns:
            ann.update(
                id=len(annotations) + 1, image_id=image_id, area=float(ann["bbox"][2] * ann["bbox"][3])
            )
            annotations.append(ann)
        per_image[image_id] = anns
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    path = ann_dir / f"instances_{name}.json"
    path.write_text(json.dumps(data))
    return images_dir, path, per_image


def corrupt_file(path: Path, how: str = "truncate") -> Path:
    """Damage a data file in place, keeping its name: ``"truncate"`` keeps its first half (a valid header and
    pixel data cut off, as after an interrupted copy), ``"random"`` replaces it by as many random bytes (not an
    image at all). Returns ``path``."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(_rng(len(data)).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:
        raise ValueError(f"how must be 'truncate' or 'random', got {how!r}")
    return path
