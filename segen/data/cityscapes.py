"""Cityscapes (fine annotations) for semantic and instance segmentation, on torchvision's ``datasets.Cityscapes``.

Expected layout under ``root``::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       8-bit label ids
                                        <city>_<seq>_<frame>_gtFine_instanceIds.png    16-bit (instance mode)
                                        <city>_<seq>_<frame>_gtFine_color.png, _polygons.json (not read)

Get ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` from https://www.cityscapes-dataset.com
(registration required) and unzip both into ``root``; segen never downloads them. The public test split has no
labels, so the ``test`` split (``test_dataset``) is ``val`` as well.

``target="semantic"``: ``(image, mask)`` with the label ids of ``*_labelIds.png`` mapped to the 19 *train ids* of the
official cityscapesScripts table (:data:`CITYSCAPES_CLASSES`, colours :data:`CITYSCAPES_PALETTE`) through a
256-entry lookup table; every other label id (unlabeled 0, ego vehicle, ..., license plate -1 stored as 255) becomes
255 = ignore.

``target="instance"``: ``(image, target)`` in torchvision's detection format built from ``*_instanceIds.png``. In that
file a pixel value ``v >= 1000`` belongs to instance ``v`` of label id ``v // 1000``; values below 1000 are plain label
ids (stuff, or groups of objects annotated without instances) and are not instances. Only the 8 instance classes
person, rider, car, truck, bus, train, motorcycle, bicycle are kept, as labels 1..8 (0 = background, so
``num_classes = 9``). ``target`` holds ``boxes`` float ``[N, 4]`` (``x1, y1, x2, y2`` in pixels from the mask,
``x2``/``y2`` exclusive: max + 1), ``labels`` int64 ``[N]`` and ``masks`` uint8 ``[N, H, W]``. The image is float
``[3, H, W]`` in ``[0, 1]``, not normalised (torchvision's Mask R-CNN normalises itself; ``mean``/``std`` are the
identity); training applies only a random horizontal flip (``hflip``) to image, boxes and masks together.

Files are read by torchvision's ``Cityscapes``; an image or label map that cannot be decoded raises
:class:`~segen.data._files.CorruptFileError` naming it, or is skipped with ``skip_corrupt=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import Cityscapes

from segen.data._common import PairDataset, PairTransform, SemanticDataModule, require_layout
from segen.data._files import read_item
from segen.data.shapes import collate_instances
from segen.data.transforms import InstanceTransform
from segen.inference.postprocess import boxes_from_masks

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_INSTANCE_CLASSES",
    "CITYSCAPES_PALETTE",
    "CityscapesDataModule",
    "CityscapesInstances",
    "instance_target",
    "label_ids_to_train_ids",
]

# (name, label id, colour) of the 19 evaluated classes, in train-id order (cityscapesScripts' labels.py).
_TRAIN_CLASSES: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

CITYSCAPES_CLASSES: tuple[str, ...] = tuple(name for name, _, _ in _TRAIN_CLASSES)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(colour for _, _, colour in _TRAIN_CLASSES)

# label id -> train id; every id not listed (0..6, 9, 10, 14..16, 18, 29, 30, -1 stored as 255) -> 255.
LABEL_TO_TRAIN_ID = torch.full((256,), 255, dtype=torch.uint8)
for _train_id, (_, _label_id, _) in enumerate(_TRAIN_CLASSES):
    LABEL_TO_TRAIN_ID[_label_id] = _train_id
_LABEL_TO_TRAIN_ID_NP = LABEL_TO_TRAIN_ID.numpy()

# Instance classes: label id -> detection label 1..8 (0 = background).
_INSTANCE_LABEL_IDS: tuple[int, ...] = (24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_INSTANCE_CLASSES: tuple[str, ...] = (
    "background",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

_LAYOUT = """\
  <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     (semantic)
  <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png  (instance)
  with <split> in train, val"""
_HOW_TO_GET = (
    "Get leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com "
    "(registration required) and unzip both into the root folder."
)
_TARGETS = ("semantic", "instance")


def label_ids_to_train_ids(label_ids: np.ndarray | Tensor) -> Tensor:
    """Map Cityscapes label ids (``[H, W]`` integers in ``[0, 255]``) to train ids 0..18 and 255 = ignore."""
    ids = torch.as_tensor(np.asarray(label_ids)).long()
    if ids.numel() and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"label ids must lie in [0, 255], found range [{ids.min()}, {ids.max()}]")
    return LABEL_TO_TRAIN_ID[ids]


def instance_target(instance_ids: np.ndarray | Tensor, min_area: int = 1) -> dict[str, Tensor]:
    """Detection target (``boxes``, ``labels``, ``masks``) from a Cityscapes ``instanceIds`` map (see the module
    docstring): ids ``>= 1000`` of the 8 instance classes, labels 1..8, boxes with exclusive ``x2``/``y2``."""
    ids = torch.as_tensor(np.asarray(instance_ids).astype(np.int64))
    values = [v for v in ids.unique().tolist() if v >= 1000 and v // 1000 in _INSTANCE_LABEL_IDS]
    masks = ids.unsqueeze(0) == torch.tensor(values, dtype=torch.long).view(-1, 1, 1)  # [N, H, W]
    keep = masks.flatten(1).sum(1) >= min_area
    masks = masks[keep]
    labels = torch.tensor([_INSTANCE_LABEL_IDS.index(v // 1000) + 1 for v in values], dtype=torch.int64)[keep]
    return {"boxes": boxes_from_masks(masks), "labels": labels, "masks": masks.to(torch.uint8)}


class CityscapesInstances(Dataset):
    """Instance items ``(image float [3, H, W] in [0, 1], target dict)`` over a torchvision ``Cityscapes`` with
    ``target_type="instance"``; ``hflip`` flips image, boxes and masks together with that probability
    (:class:`~segen.data.transforms.InstanceTransform`)."""

    def __init__(self, source: Cityscapes, hflip: float = 0.0, min_area: int = 1) -> None:
        self.source, self.min_area = source, min_area
        self.transform = InstanceTransform(hflip=hflip)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        files = ((self.source.images[index], "image"), (self.source.targets[index][0], "instance map"))
        image, instance_ids = read_item(self.source, index, files)
        if image.size != instance_ids.size:
            raise ValueError(
                f"image {self.source.images[index]!r} and {self.source.targets[index][0]!r} differ in size: "
                f"{image.size} vs {instance_ids.size} (W, H)"
            )
        return self.transform(image.convert("RGB"), instance_target(np.array(instance_ids), self.min_area))


class CityscapesDataModule(SemanticDataModule):
    """Cityscapes fine annotations: 19 train-id classes (semantic) or 8 instance classes (instance).

    ``num_classes`` (19, or 9 = background + 8 in instance mode), ``in_channels``, ``class_names``, ``mean``,
    ``std`` and ``palette`` (the official colours of the 19 classes) exist right after ``__init__``; the layout
    under ``root`` is checked there too. Semantic batches are ``(images [B, 3, H, W] normalised, masks [B, H, W])``
    with 255 = ignore; instance batches are ``(list of images, list of target dicts)``.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/`` (see the module docstring).
        target: ``"semantic"`` or ``"instance"``.
        batch_size, num_workers, pin_memory, seed: loader settings.
        predict_dir: a folder of unlabelled images for ``segen predict`` (:mod:`segen.data.predict`).
        crop_size, scale_range, hflip: the default semantic training transform; in instance mode only ``hflip``
            is used.
        eval_size: resize of the default semantic evaluation transform (``None``: full 1024x2048 resolution).
        mean, std: semantic normalisation (default ImageNet's); ignored in instance mode (identity).
        train_transform, val_transform: optional semantic joint transforms replacing the defaults.
        min_instance_area: instance mode drops instances with fewer pixels.
        skip_corrupt: decode every file once at ``setup`` and skip the items whose image or label map cannot be
            decoded, listing them in ``corrupt_files`` (default: such a file raises ``CorruptFileError`` naming it).
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 4,
        crop_size: int | tuple[int, int] = 512,
        target: Literal["semantic", "instance"] = "semantic",
        num_workers: int = 0,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        hflip: float = 0.5,
        eval_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_transform: PairTransform | None = None,
        val_transform: PairTransform | None = None,
        min_instance_area: int = 1,
        seed: int = 0,
        pin_memory: bool = False,
        predict_dir: str | Path | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if target not in _TARGETS:
            raise ValueError(f"target must be one of {_TARGETS}, got {target!r}")
        instance = target == "instance"
        if instance and (train_transform is not None or val_transform is not None):
            raise ValueError(
                "train_transform/val_transform are semantic (image, mask) transforms and do not apply with "
                "target='instance'; drop them (instance mode flips with `hflip` only)"
            )
        super().__init__(
            num_classes=len(CITYSCAPES_INSTANCE_CLASSES) if instance else len(CITYSCAPES_CLASSES),
            in_channels=3,
            class_names=CITYSCAPES_INSTANCE_CLASSES if instance else CITYSCAPES_CLASSES,
            batch_size=batch_size,
            num_workers=num_workers,
            crop_size=crop_size,
            scale_range=scale_range,
            hflip=hflip,
            eval_size=eval_size,
            mean=(0.0, 0.0, 0.0) if instance else mean,
            std=(1.0, 1.0, 1.0) if instance else std,
            train_transform=train_transform,
            val_transform=val_transform,
            seed=seed,
            pin_memory=pin_memory,
            predict_dir=predict_dir,
            skip_corrupt=skip_corrupt,
        )
        self.save_hyperparameters(ignore=["train_transform", "val_transform"])
        self.target, self.hflip, self.min_instance_area = target, hflip, min_instance_area
        self.palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE
        self.root = require_layout(
            root,
            ["leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val"],
            "Cityscapes",
            _LAYOUT,
            _HOW_TO_GET,
        )

    def _source(self, split: str) -> Cityscapes:
        folder = "train" if split == "train" else "val"
        source = Cityscapes(
            str(self.root),
            split=folder,
            mode="fine",
            target_type="instance" if self.target == "instance" else "semantic",
        )
        # torchvision lists files in os.listdir order, which differs between file systems: sort for reproducibility.
        order = sorted(range(len(source.images)), key=source.images.__getitem__)
        source.images = [source.images[i] for i in order]
        source.targets = [source.targets[i] for i in order]
        if len(source) == 0:
            raise FileNotFoundError(
                f"no *_leftImg8bit.png images under {str(self.root / 'leftImg8bit' / folder)!r}.\n"
                f"Expected layout:\n{_LAYOUT}\n{_HOW_TO_GET}"
            )
        missing = [t[0] for t in source.targets if not Path(t[0]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} annotation files are missing under {str(self.root / 'gtFine' / folder)!r}, e.g. "
                f"{', '.join(repr(m) for m in missing[:3])}.\nExpected layout:\n{_LAYOUT}\n{_HOW_TO_GET}"
            )
        if self.skip_corrupt:  # the same lists torchvision reads, without the items holding a bad file
            names = [(image, targets[0]) for image, targets in zip(source.images, source.targets)]
            kept = self._corrupt.keep(
                names, f"the {folder} split ({str(self.root / 'leftImg8bit' / folder)!r})"
            )
            source.images = [source.images[i] for i in kept]
            source.targets = [source.targets[i] for i in kept]
        return source

    def _make_dataset(self, split: str, transform: PairTransform) -> Dataset:
        source = self._source(split)
        if self.target == "instance":
            hflip = self.hflip if split == "train" else 0.0
            return CityscapesInstances(source, hflip=hflip, min_area=self.min_instance_area)
        names = [(image, targets[0]) for image, targets in zip(source.images, source.targets)]
        return PairDataset(source, names, _train_ids, transform)

    def _collate_fn(self) -> Any:
        return collate_instances if self.target == "instance" else super()._collate_fn()


def _train_ids(mask: Image.Image, mask_file: str) -> np.ndarray:
    ids = np.array(mask)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or (ids.size and (ids.min() < 0 or ids.max() > 255)):
        raise ValueError(
            f"Cityscapes label map {mask_file!r} must be an 8-bit single-channel *_gtFine_labelIds.png, got "
            f"PIL mode {mask.mode!r} with shape {ids.shape}"
        )
    return _LABEL_TO_TRAIN_ID_NP[ids]
