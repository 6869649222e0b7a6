"""Any folder of images with same-named mask PNGs: medical, satellite or custom semantic segmentation data.

Layout: ``images/<name>.<png|jpg|jpeg|bmp|tif|tiff>`` and ``masks/<name>.png`` (also ``.tif``/``.tiff``/``.bmp``),
paired by file stem (``case_01.jpg`` ↔ ``case_01.png``); sub-folders are not searched. Every image needs a mask and
every mask an image, else ``FileNotFoundError`` lists a few unpaired names. Without ``val_images``/``val_masks`` a
fraction ``val_fraction`` of the pairs is held out for validation by a permutation seeded with ``seed`` (the same
seed always gives the same split). The ``test`` split is ``test_images``/``test_masks`` when given, else val.

How mask pixels become class ids (``mask_mapping``):

- ``"index"``: the PNG stores class ids directly (mode ``L``, 16-bit ``I``, or ``P`` where the palette *indices*
  are used, not the colours). Values must lie in ``[0, num_classes) ∪ {255}`` (255 = ignore).
- ``"binary"``: foreground/background masks, ``num_classes = 2``. A mask holding only 0 and 255, or only 0 and 1
  (mode ``1`` too), becomes 0/1; any other value is a ``ValueError`` naming the file and the values found
  (anti-aliased or JPEG-damaged masks). Grey RGB masks (equal channels) are accepted.
- ``"palette"``: RGB colour masks; ``palette[k] = [r, g, b]`` is the colour of class ``k``; colours listed in
  ``ignore_colors`` become 255. Any other colour is a ``ValueError`` naming the file and the colours.

Images are read as greyscale (``in_channels=1``) or RGB (``in_channels=3``); ``None`` infers it from the first
image (modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F`` → 1, others → 3). 16-bit greyscale images are converted to
8 bits by PIL (values above 255 clip): rescale such data beforehand.

An image or mask file that cannot be decoded (cut short, random bytes) raises
:class:`~segen.data._files.CorruptFileError` naming it when it is read; ``skip_corrupt=True`` instead drops such
pairs at ``setup`` (after the train/val split, so a good pair stays in the same split) and lists the files in
``corrupt_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segen.data._common import PairDataset, PairTransform, SemanticDataModule, check_mask_values
from segen.data._files import CorruptFileError, image_mode, open_image

__all__ = ["IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "MaskFolderDataModule", "MaskMapping", "pair_files"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp")
_MAPPINGS = ("index", "binary", "palette")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
MaskMapping = Literal["index", "binary", "palette"]


def _files(folder: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{what} folder {str(folder)!r} does not exist or is not a folder; expected a folder of "
            f"{'/'.join(extensions)} files paired by name (e.g. images/case_01.jpg with masks/case_01.png)"
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions:
            if path.stem in found:
                raise ValueError(
                    f"{what} folder {str(folder)!r} holds two files named {path.stem!r} "
                    f"({found[path.stem].name}, {path.name}); keep one per name"
                )
            found[path.stem] = path
    if not found:
        raise FileNotFoundError(
            f"{what} folder {str(folder)!r} holds no {'/'.join(extensions)} files (sub-folders are not searched)"
        )
    return found


def pair_files(images: str | Path, masks: str | Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths paired by file stem, sorted by name; unpaired files raise ``FileNotFoundError``."""
    image_files = _files(Path(images).expanduser(), IMAGE_EXTENSIONS, "image")
    mask_files = _files(Path(masks).expanduser(), MASK_EXTENSIONS, "mask")
    no_mask = sorted(set(image_files) - set(mask_files))
    no_image = sorted(set(mask_files) - set(image_files))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(
                f"{len(no_mask)} images in {str(images)!r} have no mask in {str(masks)!r} "
                f"(e.g. {', '.join(image_files[s].name for s in no_mask[:5])})"
            )
        if no_image:
            parts.append(
                f"{len(no_image)} masks in {str(masks)!r} have no image in {str(images)!r} "
                f"(e.g. {', '.join(mask_files[s].name for s in no_image[:5])})"
            )
        raise FileNotFoundError(
            "; ".join(parts)
            + ". Images and masks are paired by file name without extension: add the missing "
            "files or move the unpaired ones out of the folders."
        )
    return [(image_files[s], mask_files[s]) for s in sorted(image_files)]


class _PILPairs:
    """``pairs[i]`` -> ``(PIL image, PIL mask)`` decoded from disk (a bad file raises ``CorruptFileError`` naming
    it)."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]]) -> None:
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        image_file, mask_file = self.pairs[index]
        return open_image(image_file), open_image(mask_file, what="mask")


class _MaskMapper:
    """Picklable ``(PIL mask, file name) -> class ids [H, W]`` for one ``mask_mapping``."""

    def __init__(
        self,
        mapping: str,
        num_classes: int,
        palette: Sequence[Sequence[int]] | None,
        ignore_colors: Sequence[Sequence[int]],
    ) -> None:
        self.mapping, self.num_classes = mapping, num_classes
        self.colour_to_class: dict[int, int] = {}
        if palette is not None:
            for k, colour in enumerate(palette):
                self.colour_to_class[_pack(colour)] = k
            for colour in ignore_colors:
                self.colour_to_class[_pack(colour)] = 255

    def __call__(self, mask: Image.Image, mask_file: str) -> np.ndarray:
        if self.mapping == "palette":
            return self._palette(mask, mask_file)
        if mask.mode in ("RGB", "RGBA"):
            rgb = np.array(mask)[..., :3]
            if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                raise ValueError(
                    f"mask {mask_file!r} is a colour {mask.mode} image; mask_mapping={self.mapping!r} needs class "
                    "ids. Use mask_mapping='palette' with palette=[[r, g, b], ...] (one colour per class)"
                )
            values = rgb[..., 0]
        else:
            values = np.array(mask)
        if values.ndim != 2:
            raise ValueError(f"mask {mask_file!r} has shape {values.shape}; expected one channel [H, W]")
        if self.mapping == "binary":
            return self._binary(values, mask_file)
        return check_mask_values(values.astype(np.int64), self.num_classes, mask_file)

    def _binary(self, values: np.ndarray, mask_file: str) -> np.ndarray:
        if values.dtype == bool:
            return values.astype(np.uint8)
        found = set(np.unique(values).tolist())
        if found <= {0, 1}:
            return values.astype(np.uint8)
        if found <= {0, 255}:
            return (values == 255).astype(np.uint8)
        raise ValueError(
            f"binary mask {mask_file!r} holds values {sorted(found)[:10]}; mask_mapping='binary' accepts only "
            "{0, 255} or {0, 1}. Re-save the mask without anti-aliasing (PNG, not JPEG), or use "
            "mask_mapping='index' if the values are class ids"
        )

    def _palette(self, mask: Image.Image, mask_file: str) -> np.ndarray:
        rgb = np.array(mask.convert("RGB")).astype(np.int64)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        colours, inverse = np.unique(packed, return_inverse=True)
        unknown = [c for c in colours.tolist() if c not in self.colour_to_class]
        if unknown:
            shown = ", ".join(str(list(_unpack(c))) for c in unknown[:5])
            raise ValueError(
                f"mask {mask_file!r} holds {len(unknown)} colours not in the palette: {shown}. Add them to "
                "`palette` (one [r, g, b] per class, in class order) or to `ignore_colors` (mapped to 255)"
            )
        lut = np.array([self.colour_to_class[c] for c in colours.tolist()], dtype=np.uint8)
        return lut[inverse.reshape(packed.shape)]


def _pack(colour: Sequence[int]) -> int:
    if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
        raise ValueError(f"palette colours are [r, g, b] with integers in [0, 255], got {colour!r}")
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


def _unpack(packed: int) -> tuple[int, int, int]:
    return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


class MaskFolderDataModule(SemanticDataModule):
    """Semantic segmentation from a folder of images and a folder of same-named masks (see the module docstring).

    ``num_classes``, ``in_channels``, ``class_names``, ``mean`` and ``std`` exist right after ``__init__``, where the
    folders are paired and split too (so unpaired files fail before any model is built). Mask values are checked
    when an item is read.

    Args:
        images, masks: training folders (and the source of the validation split when no val folders are given).
        num_classes: number of classes ``K`` (``2`` for ``mask_mapping="binary"``).
        val_images, val_masks: optional validation folders (both or neither).
        val_fraction: share of the pairs held out for validation when there are no val folders.
        mask_mapping: ``"index"``, ``"binary"`` or ``"palette"``.
        palette: ``[[r, g, b], ...]``, one colour per class (``mask_mapping="palette"`` only).
        ignore_colors: colours mapped to 255 (``mask_mapping="palette"`` only).
        crop_size, scale_range, hflip, eval_size: the default transforms (see ``segen.data.transforms``).
        batch_size, num_workers, pin_memory: loader settings.
        seed: seeds the train/val split and the order of the shuffled training set.
        predict_dir: a folder of unlabelled images for ``segen predict`` (:mod:`segen.data.predict`).
        in_channels: 1 (greyscale) or 3 (RGB); ``None`` infers it from the first image.
        class_names: ``K`` names; default ``("background", "foreground")`` for binary masks, else
            ``("class_0", ...)``.
        mean, std: normalisation; default ImageNet's (its channel average for greyscale).
        train_transform, val_transform: optional joint transforms replacing the defaults.
        test_images, test_masks: optional test folders (default: the validation split).
        skip_corrupt: decode every file once at ``setup`` and skip the pairs whose image or mask cannot be decoded,
            listing them in ``corrupt_files`` (default: such a file raises ``CorruptFileError`` naming it). With
            ``in_channels=None`` the channels are then inferred from the first image PIL can identify.
    """

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        num_classes: int,
        val_images: str | Path | None = None,
        val_masks: str | Path | None = None,
        val_fraction: float = 0.2,
        mask_mapping: MaskMapping = "index",
        palette: list[list[int]] | None = None,
        ignore_colors: list[list[int]] | None = None,
        crop_size: int | tuple[int, int] = 256,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        hflip: float = 0.5,
        eval_size: int | tuple[int, int] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        in_channels: int | None = None,
        class_names: list[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_transform: PairTransform | None = None,
        val_transform: PairTransform | None = None,
        test_images: str | Path | None = None,
        test_masks: str | Path | None = None,
        pin_memory: bool = False,
        predict_dir: str | Path | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 255:
            raise ValueError(
                f"num_classes must be an integer in [2, 255] (255 is the ignore value), got {num_classes!r}"
            )
        if mask_mapping not in _MAPPINGS:
            raise ValueError(f"mask_mapping must be one of {_MAPPINGS}, got {mask_mapping!r}")
        if mask_mapping == "binary" and num_classes != 2:
            raise ValueError(f"mask_mapping='binary' gives 2 classes (0/1), but num_classes is {num_classes}")
        if (mask_mapping == "palette") != (palette is not None):
            raise ValueError(
                "palette=[[r, g, b], ...] is required with mask_mapping='palette' and only then; got "
                f"mask_mapping={mask_mapping!r}, palette={palette!r}"
            )
        if palette is not None and len(palette) != num_classes:
            raise ValueError(
                f"palette has {len(palette)} colours but num_classes is {num_classes}; give one per class"
            )
        if ignore_colors and mask_mapping != "palette":
            raise ValueError("ignore_colors only applies to mask_mapping='palette'")
        for a, b, what in ((val_images, val_masks, "val"), (test_images, test_masks, "test")):
            if (a is None) != (b is None):
                raise ValueError(f"give both {what}_images and {what}_masks, or neither")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if in_channels not in (None, 1, 3):
            raise ValueError(
                f"in_channels must be 1 (greyscale), 3 (RGB) or None (inferred), got {in_channels!r}"
            )

        pairs = pair_files(images, masks)
        if val_images is None:
            if len(pairs) < 2:
                raise ValueError(
                    f"{len(pairs)} image/mask pair in {str(images)!r}: a train/val split needs at least 2; "
                    "add data or give val_images/val_masks"
                )
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
            num_val = min(max(1, round(val_fraction * len(pairs))), len(pairs) - 1)
            train_pairs = [pairs[i] for i in sorted(order[num_val:])]
            val_pairs = [pairs[i] for i in sorted(order[:num_val])]
        else:
            train_pairs, val_pairs = pairs, pair_files(val_images, val_masks)
        test_pairs = val_pairs if test_images is None else pair_files(test_images, test_masks)

        if in_channels is None:
            in_channels = 1 if _first_mode(train_pairs, images, skip_corrupt) in _GREY_MODES else 3
        if class_names is None:
            class_names = (
                ["background", "foreground"]
                if mask_mapping == "binary"
                else [f"class_{k}" for k in range(num_classes)]
            )
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
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
        # in_channels may be inferred (None here, 1 or 3 in the model): the task records the resolved value, and
        # Lightning refuses a data module and a task that log the same key with different values
        self.save_hyperparameters(ignore=["train_transform", "val_transform", "in_channels"])
        self.mask_mapping = mask_mapping
        self.palette: tuple[tuple[int, int, int], ...] | None = (
            tuple(tuple(c) for c in palette) if palette is not None else None
        )
        self.train_pairs, self.val_pairs, self.test_pairs = train_pairs, val_pairs, test_pairs
        self._mapper = _MaskMapper(mask_mapping, num_classes, palette, ignore_colors or [])

    def _make_dataset(self, split: str, transform: PairTransform) -> Dataset:
        pairs = {"train": self.train_pairs, "val": self.val_pairs, "test": self.test_pairs}[split]
        names = [(str(i), str(m)) for i, m in pairs]
        folder = str(Path(pairs[0][0]).parent)
        source, names = self._drop_corrupt(_PILPairs(pairs), names, f"the {split} split ({folder!r})")
        return PairDataset(source, names, self._mapper, transform, "L" if self.in_channels == 1 else "RGB")


def _first_mode(pairs: Sequence[tuple[Path, Path]], folder: str | Path, skip_corrupt: bool) -> str:
    """PIL mode of the first image (from its header); with ``skip_corrupt`` of the first one PIL can identify."""
    for image_file, _ in pairs:
        try:
            return image_mode(image_file)
        except CorruptFileError:
            if not skip_corrupt:
                raise
    raise CorruptFileError(
        f"none of the {len(pairs)} training images in {str(folder)!r} can be identified as an image, so in_channels "
        "cannot be inferred; replace the files or pass in_channels=1 or 3"
    )
