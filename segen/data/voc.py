"""Pascal VOC semantic segmentation (21 classes), on torchvision's ``datasets.VOCSegmentation``.

Expected layout under ``root`` (for ``year="2012"``; other years use ``VOC<year>``)::

    root/VOCdevkit/VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png          palette PNGs: pixel index = class id, 255 = object boundary / ignore
        ImageSets/Segmentation/train.txt    one <id> per line
        ImageSets/Segmentation/val.txt

Get it from the official Pascal VOC 2012 site (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/, file
``VOCtrainval_11-May-2012.tar``) and unpack it into ``root``; segen never downloads it.

Masks are read as palette indices (``np.array`` of the ``P`` image), never as colours: 0 is background, 1..20 the
object classes in :data:`VOC_CLASSES` order, and the boundary value 255 stays the ignore value. VOC's test set has
no public masks, so the ``test`` split (``test_dataset``) is ``val_split`` as well.

Files are read by torchvision's ``VOCSegmentation``; a JPEG or PNG that cannot be decoded raises
:class:`~segen.data._files.CorruptFileError` naming it, or is skipped with ``skip_corrupt=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import VOCSegmentation
from torchvision.datasets.voc import DATASET_YEAR_DICT

from segen.data._common import (
    PairDataset,
    PairTransform,
    SemanticDataModule,
    check_mask_values,
    require_layout,
)

__all__ = ["VOC_CLASSES", "VOC_PALETTE", "VOCDataModule", "voc_palette"]

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

_HOW_TO_GET = (
    "Get Pascal VOC 2012 from the official site (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/, "
    "file VOCtrainval_11-May-2012.tar) and untar it into the root folder."
)


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC colour map: colour of index ``i`` spreads the bits of ``i`` over the high bits of R, G and B."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


VOC_PALETTE: tuple[tuple[int, int, int], ...] = tuple(voc_palette(len(VOC_CLASSES)))


def _layout(base_dir: str, splits: Sequence[str]) -> str:
    lines = [
        f"  <root>/{base_dir}/",
        "      JPEGImages/<id>.jpg",
        "      SegmentationClass/<id>.png   (palette PNG, 255 = boundary)",
    ]
    lines += [f"      ImageSets/Segmentation/{s}.txt" for s in splits]
    return "\n".join(lines)


class VOCDataModule(SemanticDataModule):
    """Pascal VOC semantic segmentation: 21 classes (:data:`VOC_CLASSES`), 255 = ignore (object boundaries).

    ``num_classes``, ``in_channels``, ``class_names``, ``mean``, ``std`` and ``palette`` exist right after
    ``__init__``; the layout under ``root`` is checked there too (``FileNotFoundError`` naming what is missing, the
    expected layout and where to get the data). Batches are ``(images [B, 3, H, W] normalised, masks [B, H, W])``;
    images of different sizes (evaluation at full resolution) are padded per batch with mask 255.

    Args:
        root: folder holding ``VOCdevkit/`` (see the module docstring).
        batch_size, num_workers, pin_memory, seed: loader settings (``seed`` orders the shuffled training set).
        predict_dir: a folder of unlabelled images for ``segen predict`` (:mod:`segen.data.predict`).
        crop_size, scale_range, hflip: the default training transform (:class:`~segen.data.transforms.TrainTransform`).
        eval_size: resize of the default evaluation transform (``None``: full resolution).
        year: ``"2007"`` ... ``"2012"``.
        train_split, val_split: image sets under ``ImageSets/Segmentation`` (e.g. ``"trainval"``).
        mean, std: normalisation (default ImageNet's).
        train_transform, val_transform: optional joint transforms replacing the defaults.
        skip_corrupt: decode every file once at ``setup`` and skip the items whose image or mask cannot be decoded,
            listing them in ``corrupt_files`` (default: such a file raises ``CorruptFileError`` naming it).
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 8,
        crop_size: int | tuple[int, int] = 321,
        year: str = "2012",
        num_workers: int = 0,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        hflip: float = 0.5,
        eval_size: int | tuple[int, int] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_transform: PairTransform | None = None,
        val_transform: PairTransform | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        predict_dir: str | Path | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if year not in DATASET_YEAR_DICT or year == "2007-test":
            years = sorted(y for y in DATASET_YEAR_DICT if y != "2007-test")
            raise ValueError(f"year must be one of {years}, got {year!r}")
        super().__init__(
            num_classes=len(VOC_CLASSES),
            in_channels=3,
            class_names=VOC_CLASSES,
            batch_size=batch_size,
            num_workers=num_workers,
            crop_size=crop_size,
            scale_range=scale_range,
            hflip=hflip,
            eval_size=eval_size,
            mean=mean,
            std=std,
            train_transform=train_transform,
            val_transform=val_transform,
            seed=seed,
            pin_memory=pin_memory,
            predict_dir=predict_dir,
            skip_corrupt=skip_corrupt,
        )
        self.save_hyperparameters(ignore=["train_transform", "val_transform"])
        self.year, self.train_split, self.val_split = year, train_split, val_split
        self.base_dir: str = DATASET_YEAR_DICT[year]["base_dir"]
        self.palette: tuple[tuple[int, int, int], ...] = VOC_PALETTE
        splits = dict.fromkeys((train_split, val_split))
        self.root = require_layout(
            root,
            [f"{self.base_dir}/JPEGImages", f"{self.base_dir}/SegmentationClass"]
            + [f"{self.base_dir}/ImageSets/Segmentation/{s}.txt" for s in splits],
            f"Pascal VOC {year}",
            _layout(self.base_dir, list(splits)),
            _HOW_TO_GET,
        )

    def _make_dataset(self, split: str, transform: PairTransform) -> PairDataset:
        image_set = self.train_split if split == "train" else self.val_split
        voc = VOCSegmentation(str(self.root), year=self.year, image_set=image_set, download=False)
        listed = self.root / self.base_dir / "ImageSets" / "Segmentation" / f"{image_set}.txt"
        if not voc.images:
            raise FileNotFoundError(
                f"the {split} split's image set {str(listed)!r} lists no image id; expected one <id> per line, "
                f"each with JPEGImages/<id>.jpg and SegmentationClass/<id>.png.\n{_HOW_TO_GET}"
            )
        missing = [p for p in (*voc.images, *voc.masks) if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} files listed in {str(listed)!r} do not exist, e.g. "
                f"{', '.join(repr(p) for p in missing[:3])}.\nExpected layout:\n{_layout(self.base_dir, [image_set])}\n"
                f"{_HOW_TO_GET}"
            )
        source, names = self._drop_corrupt(
            voc, list(zip(voc.images, voc.masks)), f"the {split} split ({str(listed)!r})"
        )
        return PairDataset(source, names, self._mask, transform)

    def _mask(self, mask: Image.Image, mask_file: str) -> np.ndarray:
        if mask.mode not in ("P", "L"):
            raise ValueError(
                f"VOC mask {mask_file!r} has PIL mode {mask.mode!r}; SegmentationClass PNGs are palette ('P') "
                "images whose indices are the class ids (colour-converted masks cannot be read back reliably)"
            )
        return check_mask_values(np.array(mask), self.num_classes, mask_file)
