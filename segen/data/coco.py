"""Instance segmentation from COCO-format json (COCO itself, or any tool that exports it: CVAT, Label Studio, ...).

Expected files::

    <root>/<file_name of every image in the json>       e.g. root = coco/train2017, file_name = 000000000009.jpg
    <annotations>                                        e.g. coco/annotations/instances_train2017.json
    {"images": [{"id", "file_name", "height", "width"}, ...],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "segmentation": polygons or RLE,
                      "iscrowd": 0 or 1, "area"}, ...],
     "categories": [{"id", "name"}, ...]}

COCO 2017 comes from https://cocodataset.org/#download (``train2017.zip``, ``val2017.zip``,
``annotations_trainval2017.zip``); segen never downloads it.

Reading is torchvision's ``CocoDetection`` wrapped for transforms v2 (``wrap_dataset_for_transforms_v2``), which
decodes polygons and RLE to masks with pycocotools. segen adds what that lacks for training Mask R-CNN:
- category ids (COCO's run 1..90 with gaps) become contiguous labels ``1..K`` in ascending id order, ``0`` is the
  background, so ``num_classes = K + 1`` and ``class_names[k]`` is the name of label ``k``;
- images without annotations get empty targets instead of a target without ``boxes``;
- crowd regions (``iscrowd=1``) are dropped from training targets and kept in evaluation targets with
  ``iscrowd``, which torchmetrics' COCO mAP then ignores as the official evaluation does;
- a validation split held out of the training json when no validation json is given;
- an image file that cannot be decoded raises :class:`~segen.data._files.CorruptFileError` naming it, or, with
  ``skip_corrupt=True``, is dropped at ``setup`` and listed in ``corrupt_files``.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

from segen.data._files import CorruptFiles, SkipsCorruptFiles, read_item
from segen.data.loaders import SplitLoaders
from segen.data.predict import ImageFolderDataset
from segen.data.shapes import collate_instances
from segen.data.transforms import InstanceTransform

__all__ = ["CocoInstanceDataModule", "CocoInstances", "read_categories"]

_HOW_TO_GET = (
    "COCO 2017: https://cocodataset.org/#download (train2017.zip, val2017.zip, annotations_trainval2017.zip); "
    "any tool that exports COCO-format json works too. segen never downloads data sets."
)
_LAYOUT = """\
  <root>/<file_name>            one image file per entry of "images" in the json
  <annotations>.json            {"images": [...], "annotations": [...], "categories": [...]}"""


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {str(path)!r} does not exist.\nExpected:\n{_LAYOUT}\n{_HOW_TO_GET}"
        )
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"COCO annotation file {str(path)!r} is not valid json: {error}") from error
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"COCO annotation file {str(path)!r} lacks the list(s) {missing} (found keys {found}); "
            f"expected COCO instance format:\n{_LAYOUT}"
        )
    return data


def read_categories(data: dict[str, Any], path: str = "<json>") -> tuple[list[int], list[str]]:
    """Category ids (ascending) and names of a parsed COCO json; label ``k`` (1-based) is ``ids[k - 1]``."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if not categories:
        raise ValueError(
            f"COCO annotation file {path!r} has no categories; instance segmentation needs at least one"
        )
    ids = [int(c["id"]) for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"COCO annotation file {path!r} repeats category ids: {ids}")
    return ids, [str(c.get("name", c["id"])) for c in categories]


class CocoInstances(Dataset):
    """Items ``(image float [3, H, W] in [0, 1], target)`` in torchvision's detection format over a COCO json.

    ``target``: ``boxes`` float ``[N, 4]`` (x1, y1, x2, y2), ``labels`` int64 ``[N]`` in ``1..K``, ``masks`` uint8
    ``[N, H, W]``, ``iscrowd`` int64 ``[N]`` (only when ``keep_crowd``) and ``image_id``.

    Args:
        root: folder the json's ``file_name`` entries are relative to.
        annotations: the COCO json.
        category_ids: the label order (``read_categories``); must cover every category used.
        image_ids: restrict to these images (a split); default all images of the json.
        transform: joint ``(image, target) -> (image, target)``, default :class:`InstanceTransform` without
            augmentation.
        keep_crowd: keep ``iscrowd=1`` regions (evaluation) instead of dropping them (training).
        corrupt: a data module's record of corrupt files: when given, every image is decoded once here and those
            that cannot be decoded are dropped (``skip_corrupt=True``); otherwise such an image raises
            :class:`~segen.data._files.CorruptFileError` naming it when read.
        split: the split's name in messages.
    """

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        category_ids: Sequence[int],
        image_ids: Sequence[int] | None = None,
        transform: InstanceTransform | None = None,
        keep_crowd: bool = False,
        corrupt: CorruptFiles | None = None,
        split: str = "train",
    ) -> None:
        self.root, self.annotations = Path(root), Path(annotations)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines on every load
            source = CocoDetection(str(self.root), str(self.annotations))
        if image_ids is not None:
            source.ids = list(image_ids)
        if not source.ids:
            raise ValueError(
                f'the {split} split of {str(self.annotations)!r} holds no image (its "images" list is empty); '
                f"expected at least one.\nExpected:\n{_LAYOUT}"
            )
        used = {a["category_id"] for a in source.coco.dataset["annotations"]}
        unknown = sorted(used - set(category_ids))
        if unknown:
            raise ValueError(
                f"{str(self.annotations)!r} uses category ids {unknown[:10]} missing from its categories"
            )
        missing = [
            source.coco.imgs[i]["file_name"]
            for i in source.ids
            if not (self.root / source.coco.imgs[i]["file_name"]).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(source.ids)} images listed in {str(self.annotations)!r} are missing under "
                f"{str(self.root)!r}, e.g. {missing[:3]}.\nExpected:\n{_LAYOUT}\n{_HOW_TO_GET}"
            )
        if corrupt is not None:
            files = [(self.root / source.coco.imgs[i]["file_name"],) for i in source.ids]
            kept = corrupt.keep(files, f"the {split} split ({str(self.annotations)!r})")
            source.ids = [source.ids[k] for k in kept]
        self.source = wrap_dataset_for_transforms_v2(
            source, target_keys=("boxes", "labels", "masks", "iscrowd")
        )
        self.image_ids = list(source.ids)
        self.files = [str(self.root / source.coco.imgs[i]["file_name"]) for i in source.ids]
        self.label_of = torch.zeros(max(category_ids) + 1, dtype=torch.int64)
        self.label_of[torch.tensor(list(category_ids))] = torch.arange(1, len(category_ids) + 1)
        self.transform = transform if transform is not None else InstanceTransform(hflip=0.0)
        self.keep_crowd = keep_crowd

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        # PIL image, {"boxes", "labels", "masks", "iscrowd"} or {} w/o objects
        image, raw = read_item(self.source, index, ((self.files[index], "image"),))
        width, height = image.size
        if "boxes" in raw:
            target = {
                "boxes": raw["boxes"].as_subclass(Tensor).float(),
                "labels": self.label_of[raw["labels"]],
                "masks": raw["masks"].as_subclass(Tensor).to(torch.uint8),
                "iscrowd": torch.as_tensor(raw["iscrowd"], dtype=torch.int64),
            }
        else:
            target = {
                "boxes": torch.zeros((0, 4)),
                "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, height, width), dtype=torch.uint8),
                "iscrowd": torch.zeros(0, dtype=torch.int64),
            }
        if not self.keep_crowd:
            keep = target.pop("iscrowd") == 0
            target = {key: value[keep] for key, value in target.items()}
        if image.mode != "RGB":
            image = image.convert("RGB")
        image, target = self.transform(image, target)
        target["image_id"] = torch.tensor(self.image_ids[index])
        return image, target


class CocoInstanceDataModule(SkipsCorruptFiles, SplitLoaders, LightningDataModule):
    """COCO-format instance segmentation for :class:`~segen.tasks.InstanceSegmentationTask`.

    ``num_classes`` (categories + background), ``in_channels`` and ``class_names`` exist right after ``__init__``
    (the json is read there). Batches are ``(list of images, list of targets)`` (:class:`CocoInstances`).

    Args:
        root: image folder of the training json.
        annotations: the training json.
        val_annotations, val_root: the validation json and its image folder (default ``root``); without
            ``val_annotations``, ``val_fraction`` of the training images (a seeded random choice) are held out.
        hflip, crop_size, scale_range: the training :class:`~segen.data.transforms.InstanceTransform`.
        batch_size, num_workers, pin_memory, seed: loader settings.
        predict_dir: a folder of images for ``segen predict``.
        skip_corrupt: decode every image once at ``setup`` and skip those that cannot be decoded, listing them in
            ``corrupt_files`` (default: such a file raises ``CorruptFileError`` naming it). The split into train and
            val is drawn first, so a good image stays in its split.
    """

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        val_annotations: str | Path | None = None,
        val_root: str | Path | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 4,
        num_workers: int = 0,
        hflip: float = 0.5,
        crop_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        predict_dir: str | Path | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_skip_corrupt(skip_corrupt)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"COCO image folder (root) {str(self.root)!r} does not exist or is not a folder.\n"
                f"Expected:\n{_LAYOUT}\n{_HOW_TO_GET}"
            )
        self.annotations = Path(annotations).expanduser()
        data = _load_json(self.annotations)
        self.category_ids, names = read_categories(data, str(self.annotations))
        self.val_annotations = Path(val_annotations).expanduser() if val_annotations is not None else None
        self.val_root = Path(val_root).expanduser() if val_root is not None else self.root
        if self.val_annotations is not None:
            val_ids, _ = read_categories(_load_json(self.val_annotations), str(self.val_annotations))
            if val_ids != self.category_ids:
                raise ValueError(
                    f"{str(self.val_annotations)!r} has category ids {val_ids[:10]}... but {str(self.annotations)!r} "
                    f"has {self.category_ids[:10]}...; both splits need the same categories"
                )
            self.train_ids = [int(image["id"]) for image in data["images"]]
            self.val_ids: list[int] | None = None
        else:
            if not 0.0 < val_fraction < 1.0:
                raise ValueError(
                    f"val_fraction must be in (0, 1) when no val_annotations is given, got {val_fraction}"
                )
            ids = sorted(int(image["id"]) for image in data["images"])
            if len(ids) < 2:
                raise ValueError(
                    f"{str(self.annotations)!r} lists {len(ids)} image(s); holding out a validation split needs "
                    "at least 2 (or give val_annotations)"
                )
            order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
            n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
            self.val_ids = sorted(ids[i] for i in order[:n_val])
            self.train_ids = sorted(ids[i] for i in order[n_val:])
        self.num_classes = len(self.category_ids) + 1
        self.in_channels = 3
        self.class_names: tuple[str, ...] = ("background", *names)
        self.mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # images stay in [0, 1]; Mask R-CNN normalises itself
        self.std: tuple[float, ...] = (1.0, 1.0, 1.0)
        self.train_transform = InstanceTransform(hflip=hflip, crop_size=crop_size, scale_range=scale_range)
        self.batch_size, self.num_workers, self.seed, self.pin_memory = (
            batch_size,
            num_workers,
            seed,
            pin_memory,
        )
        self.predict_dir = predict_dir
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None

    def _val_split(self) -> CocoInstances:
        corrupt = self._corrupt if self.skip_corrupt else None
        if self.val_annotations is not None:
            return CocoInstances(
                self.val_root,
                self.val_annotations,
                self.category_ids,
                keep_crowd=True,
                corrupt=corrupt,
                split="val",
            )
        return CocoInstances(
            self.root,
            self.annotations,
            self.category_ids,
            self.val_ids,
            keep_crowd=True,
            corrupt=corrupt,
            split="val",
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = CocoInstances(
                self.root,
                self.annotations,
                self.category_ids,
                self.train_ids,
                self.train_transform,
                corrupt=self._corrupt if self.skip_corrupt else None,
                split="train",
            )
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._val_split()
        if stage in (None, "test", "predict"):
            self.test_dataset = self.val_dataset if self.val_dataset is not None else self._val_split()
            self.predict_dataset = self.test_dataset
        self._setup_predict_dir(stage)
        if (
            self.skip_corrupt
            and stage in (None, "predict")
            and isinstance(self.predict_dataset, ImageFolderDataset)
        ):
            self.predict_dataset.drop_corrupt(self._corrupt)

    def _collate_fn(self) -> Any:
        return collate_instances
