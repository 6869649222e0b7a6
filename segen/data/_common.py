"""Shared pieces of segen's file-based semantic segmentation data modules (VOC, Cityscapes, mask folders).

- :class:`SemanticDataModule`: batch size, workers, transforms, loaders and ``denormalize``; a subclass sets the
  shape attributes in ``__init__`` and implements ``_make_dataset(split)``.
- :class:`PairDataset`: ``(image, mask)`` items from any indexable source of PIL pairs, a mask mapping and a joint
  transform.
- :func:`pad_collate`: batches images of different sizes by padding (image 0, mask 255), so evaluation at full
  resolution works with any batch size.
- :func:`require_layout`: a missing or malformed data set folder raises ``FileNotFoundError`` naming the path, the
  expected layout and where to get the data; nothing is ever downloaded.
- Corrupt files (:mod:`segen.data._files`): :class:`PairDataset` names the image or mask file that cannot be decoded;
  ``skip_corrupt=True`` drops such items at ``setup`` and lists them in ``corrupt_files``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from segen.data._files import SkipsCorruptFiles, read_item
from segen.data.loaders import SplitLoaders
from segen.data.predict import ImageFolderDataset
from segen.data.shapes import denormalize
from segen.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

__all__ = ["PairDataset", "SemanticDataModule", "pad_collate", "require_layout"]

PairTransform = Callable[[Any, Any], tuple[Tensor, Tensor]]


def require_layout(
    root: str | Path, required: Sequence[str], dataset: str, layout: str, how_to_get: str
) -> Path:
    """Check that every path in ``required`` (relative to ``root``) exists, else raise ``FileNotFoundError``.

    The message names ``root``, the missing entries, the expected ``layout`` (a small tree) and ``how_to_get`` the
    data. Returns ``root`` as a resolved ``Path``.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        problem = f"the {dataset} root {str(path)!r} does not exist or is not a folder"
    else:
        missing = [item for item in required if not (path / item).exists()]
        if not missing:
            return path.resolve()
        problem = f"the {dataset} root {str(path)!r} lacks {', '.join(repr(m) for m in missing)}"
    raise FileNotFoundError(
        f"{problem}.\nExpected layout:\n{layout.rstrip()}\n{how_to_get} segen never downloads data sets: "
        f"unpack the data under {str(path)!r} (or point `root` at the folder that holds it)."
    )


def pad_collate(batch: Sequence[tuple[Tensor, Tensor]], ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Stack ``(image [C, H, W], mask [H, W])`` items, padding each at the bottom/right to the largest size in the
    batch: images with 0 (the mean colour after normalisation), masks with ``ignore_index``. Items of equal size
    are stacked unchanged."""
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
    masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.long)
    for i, (image, mask) in enumerate(batch):
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image
        masks[i, :h, :w] = mask
    return images, masks


class PairDataset(Dataset):
    """Semantic ``(image, mask)`` items.

    Args:
        source: indexable, ``source[i]`` returns ``(PIL image, PIL mask)`` (e.g. a torchvision data set).
        names: ``names[i]`` is the ``(image file, mask file)`` pair of item ``i``: a file that cannot be decoded
            raises :class:`~segen.data._files.CorruptFileError` naming it (:func:`~segen.data._files.read_item`).
        mask_fn: ``mask_fn(pil_mask, mask_file)`` returns class ids as an ``[H, W]`` integer array in
            ``[0, num_classes) ∪ {255}``; it raises ``ValueError`` naming the file on anything else.
        transform: joint transform ``(image, mask) -> (image float [C, H, W], mask long [H, W])``.
        image_mode: PIL mode the image is converted to (``"RGB"`` or ``"L"``), or ``None`` to keep it.
    """

    def __init__(
        self,
        source: Any,
        names: Sequence[tuple[str, str]],
        mask_fn: Callable[[Image.Image, str], np.ndarray],
        transform: PairTransform,
        image_mode: str | None = "RGB",
    ) -> None:
        if len(source) != len(names):
            raise ValueError(f"source has {len(source)} items but {len(names)} names were given")
        self.source, self.names, self.mask_fn = source, list(names), mask_fn
        self.transform, self.image_mode = transform, image_mode

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_file, mask_file = self.names[index]
        image, mask = read_item(self.source, index, ((image_file, "image"), (mask_file, "mask")))
        if self.image_mode is not None and image.mode != self.image_mode:
            image = image.convert(self.image_mode)
        if image.size != mask.size:
            raise ValueError(
                f"image {image_file!r} is {image.size[0]}x{image.size[1]} (WxH) but its mask {mask_file!r} is "
                f"{mask.size[0]}x{mask.size[1]}; every mask must have the size of its image"
            )
        return self.transform(image, self.mask_fn(mask, mask_file))


def check_mask_values(
    mask: np.ndarray, num_classes: int, mask_file: str, ignore_index: int = 255
) -> np.ndarray:
    """Raise ``ValueError`` naming ``mask_file`` when ``mask`` holds values outside ``[0, num_classes) ∪ {255}``."""
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        raise ValueError(
            f"mask {mask_file!r} holds values {bad[:10].tolist()} outside [0, {num_classes}) ∪ {{{ignore_index}}} "
            f"(values found: {values[:20].tolist()}); fix num_classes or the mask mapping"
        )
    return mask


class SemanticDataModule(SkipsCorruptFiles, SplitLoaders, LightningDataModule):
    """Base of the file-based semantic data modules: transforms, loaders and ``denormalize``.

    A subclass calls ``super().__init__(...)`` with the shape attributes (``num_classes``, ``in_channels``,
    ``class_names``) known at ``__init__`` time, so LightningCLI can link them to the model, and implements
    ``_make_dataset(split, transform)`` for the splits ``"train"``, ``"val"`` and ``"test"``.

    Transforms: ``train_transform`` / ``val_transform`` are any callables ``(image, mask) -> (image, mask)``; when
    ``None`` they are built from ``crop_size``, ``scale_range``, ``hflip`` (:class:`~segen.data.transforms.TrainTransform`)
    and ``eval_size`` (:class:`~segen.data.transforms.EvalTransform`) with ``mean``/``std``. A given transform that
    exposes ``mean``/``std`` attributes must agree with the module's, so ``denormalize`` stays correct.

    ``predict_dir``: a folder of unlabelled images that ``predict_dataloader`` yields as ``(images, info)``
    (:mod:`segen.data.predict`) instead of the test split.

    ``skip_corrupt``: ``False`` (default): an image or mask file that cannot be decoded raises
    :class:`~segen.data._files.CorruptFileError` naming it when it is read. ``True``: ``setup`` decodes every file of
    the split once and drops the items with a bad file (also from ``predict_dir``); their paths are in
    :attr:`corrupt_files` and each is logged once as a warning (:class:`~segen.data._files.CorruptFiles` says why
    a scan at ``setup``). A subclass builds its splits through :meth:`_drop_corrupt`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        class_names: Sequence[str],
        batch_size: int,
        num_workers: int,
        crop_size: int | tuple[int, int],
        scale_range: tuple[float, float] | None,
        hflip: float,
        eval_size: int | tuple[int, int] | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        train_transform: PairTransform | None,
        val_transform: PairTransform | None,
        seed: int,
        pin_memory: bool,
        predict_dir: str | Path | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__()
        self._init_skip_corrupt(skip_corrupt)
        _check_int("batch_size", batch_size, 1, "a positive integer")
        _check_int("num_workers", num_workers, 0, "a non-negative integer (0 loads in the main process)")
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        if mean is None:
            mean = IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,) * in_channels
        if std is None:
            std = IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,) * in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"mean/std need one value per input channel ({in_channels}), got mean={mean!r}, std={std!r}"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.ignore_index = 255
        self.batch_size, self.num_workers, self.seed, self.pin_memory = (
            batch_size,
            num_workers,
            seed,
            pin_memory,
        )
        if train_transform is None:
            train_transform = TrainTransform(crop_size, scale_range, hflip, self.mean, self.std)
        if val_transform is None:
            val_transform = EvalTransform(eval_size, self.mean, self.std)
        for name, transform in (("train_transform", train_transform), ("val_transform", val_transform)):
            if not callable(transform):
                raise TypeError(
                    f"{name} must be a callable (image, mask) -> (image, mask), got {transform!r}"
                )
            for attr in ("mean", "std"):
                value = getattr(transform, attr, None)
                if value is not None and tuple(float(v) for v in value) != getattr(self, attr):
                    raise ValueError(
                        f"{name} normalises with {attr}={tuple(value)} but the data module uses "
                        f"{attr}={getattr(self, attr)}; pass the same {attr} to both so denormalize is right"
                    )
        self.train_transform, self.val_transform = train_transform, val_transform
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        self.predict_dir = predict_dir

    def _drop_corrupt(
        self, source: Any, names: Sequence[tuple[str, str]], where: str
    ) -> tuple[Any, list[tuple[str, str]]]:
        """``(source, names)`` of one split without the items whose image or mask cannot be decoded, when
        ``skip_corrupt``; unchanged (and no file read) otherwise. ``where`` names the split in messages."""
        if not self.skip_corrupt:
            return source, list(names)
        kept = self._corrupt.keep(names, where)
        if len(kept) == len(names):
            return source, list(names)
        return Subset(source, kept), [names[i] for i in kept]

    # Subclasses build one split's data set with the given joint transform.
    def _make_dataset(self, split: str, transform: PairTransform) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = self._make_dataset("train", self.train_transform)
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._make_dataset("val", self.val_transform)
        if stage in (None, "test", "predict"):
            self.test_dataset = self._make_dataset("test", self.val_transform)
            self.predict_dataset = self.test_dataset
        self._setup_predict_dir(stage)
        if (
            self.skip_corrupt
            and stage in (None, "predict")
            and isinstance(self.predict_dataset, ImageFolderDataset)
        ):
            self.predict_dataset.drop_corrupt(self._corrupt)

    def denormalize(self, images: Tensor) -> Tensor:
        """Map loader images (``[B, C, H, W]`` or ``[C, H, W]``) back to ``[0, 1]``."""
        return denormalize(images, self.mean, self.std)

    def _collate_fn(self) -> Callable[[Sequence[Any]], Any]:
        """The loaders' collate function (a picklable function, not a bound method, for worker processes)."""
        return functools.partial(pad_collate, ignore_index=self.ignore_index)


def _check_int(name: str, value: Any, minimum: int, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
