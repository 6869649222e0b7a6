"""Joint image/mask transforms for semantic segmentation, on torchvision's transforms v2.

The image is wrapped as a ``tv_tensors.Image`` and the mask as a ``tv_tensors.Mask``, so one v2 pipeline applies the
*same* random geometry (scale, crop, flip) to both, while v2 picks the right behaviour per type: masks are always
resized with nearest interpolation (no new class values appear), colour and dtype ops touch the image only.

Training recipe (:class:`TrainTransform`, the usual one for semantic segmentation, as in torchvision's segmentation
references)::

    resize the short side to a random length in [scale_range[0], scale_range[1]] * base_size  (base_size = crop_size)
    pad to at least crop_size  (image fill 0, mask fill ignore_index = 255)
    random crop of crop_size x crop_size
    horizontal flip with probability hflip
    image: uint8 -> float32 in [0, 1] -> normalised with (mean, std)

Evaluation (:class:`EvalTransform`): an optional deterministic resize, then the same conversion and normalisation.

Both are callables ``transform(image, mask) -> (image float [C, H, W], mask long [H, W])`` taking a PIL image (or a
uint8 ``[C, H, W]`` tensor) and a PIL mask, numpy array or tensor holding class ids in ``[0, 255]``. Data modules
accept any callable with that signature as ``train_transform`` / ``val_transform``; in a YAML config give either the
simple arguments (``crop_size``, ``scale_range``, ``hflip``) or a ``class_path``, e.g.::

    data:
      train_transform:
        class_path: segen.data.transforms.TrainTransform
        init_args: {crop_size: 256, scale_range: [0.75, 1.5], hflip: 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "InstanceTransform",
    "SegmentationTransform",
    "TrainTransform",
    "eval_transform",
    "mask_to_tensor",
    "train_transform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def mask_to_tensor(mask: Image.Image | np.ndarray | Tensor) -> Tensor:
    """A mask as a uint8 ``[H, W]`` tensor of class ids.

    A palette (``P``) PIL image gives its *indices*, not its colours (``np.array`` keeps them). Values must lie in
    ``[0, 255]``: map dataset-specific ids (e.g. Cityscapes label ids, 16-bit masks) to class ids first.
    """
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGB", "RGBA"):
            raise ValueError(
                f"mask is a {mask.mode} colour image; transforms need class ids [H, W]. Convert colours to ids "
                "first (e.g. MaskFolderDataModule(mask_mapping='palette', palette=[[r, g, b], ...]))"
            )
        mask = np.array(mask)
    tensor = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, Tensor) else mask
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2:
        raise ValueError(f"mask must have shape [H, W], got {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8)
    if tensor.dtype != torch.uint8:
        if tensor.is_floating_point() or (tensor.numel() and (tensor.min() < 0 or tensor.max() > 255)):
            found = tensor.unique()[:10].tolist()
            raise ValueError(
                f"mask values must be integer class ids in [0, 255] (255 = ignore), found {found} "
                f"(dtype {tensor.dtype}); map them to class ids before the transform"
            )
        tensor = tensor.to(torch.uint8)
    return tensor


def _image_to_tensor(image: Image.Image | Tensor) -> Tensor:
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image)
    if isinstance(image, Tensor) and image.dim() == 3:
        return image
    raise TypeError(f"image must be a PIL image or a [C, H, W] tensor, got {type(image).__name__}")


class SegmentationTransform:
    """Apply a v2 pipeline jointly to ``(image, mask)`` and return ``(image float [C, H, W], mask long [H, W])``.

    ``ops`` sees a ``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask`` (uint8 ``[1, H, W]``) and must end with
    a float image (e.g. ``v2.ToDtype`` + ``v2.Normalize``). ``mean``/``std`` record the normalisation so a data
    module can undo it (``denormalize``).
    """

    def __init__(self, ops: v2.Transform, mean: Sequence[float], std: Sequence[float]) -> None:
        self.ops = ops
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(
        self, image: Image.Image | Tensor, mask: Image.Image | np.ndarray | Tensor
    ) -> tuple[Tensor, Tensor]:
        img = _image_to_tensor(image)
        msk = mask_to_tensor(mask)
        if img.shape[-2:] != msk.shape:
            raise ValueError(
                f"image and mask sizes differ: image {tuple(img.shape[-2:])}, mask {tuple(msk.shape)} (H, W)"
            )
        if len(self.mean) != img.shape[0]:
            raise ValueError(
                f"the transform normalises {len(self.mean)} channels (mean={self.mean}) but the image has "
                f"{img.shape[0]}; pass mean/std with one value per channel"
            )
        out_img, out_mask = self.ops(tv_tensors.Image(img), tv_tensors.Mask(msk.unsqueeze(0)))
        return out_img.as_subclass(Tensor), out_mask.as_subclass(Tensor)[0].long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ops})"


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    if len(mean) != len(std) or not mean:
        raise ValueError(f"mean and std need one value per channel, got mean={mean!r}, std={std!r}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std!r}")
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def _size(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of them, got {value!r}")
    return int(value[0]), int(value[1])


def _random_scale(scale_range: Sequence[float], base: int) -> v2.Transform:
    """Resize the short side to a uniform random length in ``scale_range * base`` (masks: nearest)."""
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
    low, high = round(scale_range[0] * base), round(scale_range[1] * base)
    if low < 1:
        raise ValueError(f"scale_range {scale_range!r} x base_size {base} gives a short side below 1 pixel")
    # RandomResize draws the short side from [low, high) and resizes masks with nearest interpolation.
    return v2.RandomResize(low, high + 1) if high > low else v2.Resize(low)


class TrainTransform(SegmentationTransform):
    """Random scale, pad, random crop and horizontal flip, applied identically to image and mask (see the module
    docstring).

    Args:
        crop_size: output size, an int (square) or ``(height, width)``.
        scale_range: the short side is resized to a uniform random length in ``scale_range * base_size``;
            ``(1.0, 1.0)`` resizes the short side to exactly ``base_size``; ``None`` does not resize.
        hflip: probability of a horizontal flip (0 disables it).
        mean, std: per-channel normalisation of the image after scaling it to ``[0, 1]``.
        ignore_index: mask value of padded pixels.
        base_size: reference length of the random scale; defaults to ``min(crop_size)``.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = 512,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
        base_size: int | None = None,
    ) -> None:
        crop = _size(crop_size, "crop_size")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip!r}")
        if not 0 <= ignore_index <= 255:
            raise ValueError(
                f"ignore_index must be in [0, 255] (masks are uint8 inside the pipeline), got {ignore_index}"
            )
        ops: list[v2.Transform] = []
        if scale_range is not None:
            ops.append(_random_scale(scale_range, min(crop) if base_size is None else base_size))
        ops.append(
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})
        )
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        ops += _to_float(mean, std)
        super().__init__(v2.Compose(ops), mean, std)
        self.crop_size, self.scale_range, self.hflip = crop, scale_range, hflip


class EvalTransform(SegmentationTransform):
    """Deterministic evaluation transform: optional resize, then ``[0, 1]`` scaling and normalisation.

    Args:
        size: ``None`` keeps the original size (evaluate at full resolution); an int resizes the short side to it
            (aspect ratio kept); ``(height, width)`` resizes to exactly that. Masks use nearest interpolation.
        mean, std: per-channel normalisation.
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        ops: list[v2.Transform] = []
        if size is not None:
            if isinstance(size, int):
                _size(size, "size")
                ops.append(v2.Resize(size))
            else:
                ops.append(v2.Resize(list(_size(size, "size"))))
        ops += _to_float(mean, std)
        super().__init__(v2.Compose(ops), mean, std)
        self.size = size


def train_transform(
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
    base_size: int | None = None,
) -> TrainTransform:
    """The standard training transform; see :class:`TrainTransform`."""
    return TrainTransform(crop_size, scale_range, hflip, mean, std, ignore_index, base_size)


def eval_transform(
    size: int | tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> EvalTransform:
    """The deterministic evaluation transform; see :class:`EvalTransform`."""
    return EvalTransform(size, mean, std)


def _per_instance_tensors(inputs: Any) -> tuple[Tensor, ...]:
    """For ``SanitizeBoundingBoxes``: every per-instance tensor of the target (``labels``, ``iscrowd``, ...) is
    filtered with the boxes (masks are filtered by torchvision itself)."""
    target = inputs[1]
    count = target["boxes"].shape[0]
    return tuple(
        value
        for key, value in target.items()
        if key not in ("boxes", "masks")
        and isinstance(value, Tensor)
        and value.ndim >= 1
        and len(value) == count
    )


class InstanceTransform:
    """Joint transform of an instance segmentation item: image, boxes and per-instance masks move together.

    ``transform(image, target) -> (image float [C, H, W] in [0, 1], target)`` where ``target`` holds ``boxes``
    float ``[N, 4]`` (x1, y1, x2, y2), ``labels`` int64 ``[N]``, ``masks`` uint8 ``[N, H, W]`` and optionally other
    per-instance tensors (``iscrowd``). The pipeline (torchvision v2): random scale and random crop (both only with
    ``crop_size``), horizontal flip, then ``SanitizeBoundingBoxes`` drops the instances a crop removed (their labels
    and masks too). Images stay unnormalised: torchvision's Mask R-CNN normalises and resizes internally, which is
    also why a scale without a crop would be undone; for multi-scale training without crops give the task several
    sizes (``InstanceSegmentationTask(input_min_size=[96, 112, 128])``).

    Args:
        hflip: probability of a horizontal flip.
        crop_size: random crop (padded with 0 when the image is smaller); ``None`` keeps the whole image.
        scale_range: with ``crop_size``: the short side is first resized to a random length in
            ``scale_range * min(crop_size)``.
    """

    def __init__(
        self,
        hflip: float = 0.5,
        crop_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] | None = None,
    ) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip!r}")
        ops: list[v2.Transform] = []
        if scale_range is not None:
            if crop_size is None:
                raise ValueError(
                    "scale_range needs crop_size: Mask R-CNN resizes every image to input_min_size itself, which "
                    "undoes a plain rescale. Give crop_size too, or multi-scale the task with "
                    "input_min_size=[s1, s2, ...]"
                )
            ops.append(_random_scale(scale_range, min(_size(crop_size, "crop_size"))))
        if crop_size is not None:
            ops.append(v2.RandomCrop(_size(crop_size, "crop_size"), pad_if_needed=True, fill=0))
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        ops.append(v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_per_instance_tensors))
        ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
        self.ops = v2.Compose(ops)
        self.hflip, self.crop_size, self.scale_range = hflip, crop_size, scale_range

    def __call__(
        self, image: Image.Image | Tensor, target: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        img = _image_to_tensor(image)
        if img.is_floating_point():
            img = F.to_dtype(img, torch.uint8, scale=True)  # one code path for uint8 and [0, 1] inputs
        height, width = img.shape[-2:]
        masks = target["masks"]
        if masks.shape[-2:] != (height, width):
            raise ValueError(
                f"instance masks are {tuple(masks.shape[-2:])} but the image is {(height, width)} (H, W)"
            )
        wrapped = dict(target)
        wrapped["boxes"] = tv_tensors.BoundingBoxes(
            target["boxes"], format="XYXY", canvas_size=(height, width)
        )
        wrapped["masks"] = tv_tensors.Mask(masks)
        out_img, out = self.ops(tv_tensors.Image(img), wrapped)
        out = {
            key: value.as_subclass(Tensor) if isinstance(value, Tensor) else value
            for key, value in out.items()
        }
        return out_img.as_subclass(Tensor), out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ops})"
