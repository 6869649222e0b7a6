"""Joint transforms: the same geometry for image and mask, nearest masks, 255 padding, dtypes and shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segen.data.transforms import (
    EvalTransform,
    TrainTransform,
    eval_transform,
    mask_to_tensor,
    train_transform,
)

H, W = 32, 48
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
# class c is drawn in colour COLOURS[c]; the mask is a function of the image pixels
COLOURS = np.array([[20, 200, 0], [80, 140, 30], [140, 80, 60], [200, 20, 90]], dtype=np.uint8)


def _pair(seed: int = 0, block: int = 4) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 4, (H // block, W // block)).repeat(block, 0).repeat(block, 1).astype(np.uint8)
    return Image.fromarray(COLOURS[mask]), mask


def _classes_from_image(image: torch.Tensor) -> torch.Tensor:
    """Invert COLOURS from an image in [0, 1]: the nearest colour's class; black (padding) -> 255."""
    pixels = (image * 255).permute(1, 2, 0).reshape(-1, 1, 3)
    palette = torch.tensor(np.vstack([COLOURS, [[0, 0, 0]]]), dtype=torch.float32).view(1, -1, 3)
    nearest = (pixels - palette).norm(dim=2).argmin(dim=1)
    nearest[nearest == len(COLOURS)] = 255
    return nearest.view(image.shape[1:])


def test_train_transform_output_types_and_shapes():
    image, mask = _pair()
    out_image, out_mask = train_transform(24)(image, mask)
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 24, 24)
    assert out_mask.dtype == torch.long and out_mask.shape == (24, 24)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor  # no tv_tensors leak out


@pytest.mark.parametrize("seed", range(6))
def test_crop_and_flip_are_shared_exactly(seed):
    """Without rescaling, every output mask pixel must still be the class of the output image pixel (padding:
    image 0, mask 255), whatever crop and flip were drawn."""
    torch.manual_seed(seed)
    image, mask = _pair(seed)
    t = TrainTransform(crop_size=(40, 56), scale_range=(1.0, 1.0), base_size=H, hflip=0.5, mean=ZERO, std=ONE)
    out_image, out_mask = t(image, mask)
    assert torch.equal(_classes_from_image(out_image), out_mask)
    assert (out_mask == 255).any()  # 40x56 > 32x48: padding happened and got the ignore value


def test_hflip_one_flips_both():
    image, mask = _pair()
    t = TrainTransform(crop_size=(H, W), scale_range=None, hflip=1.0, mean=ZERO, std=ONE)
    out_image, out_mask = t(image, mask)
    assert torch.equal(out_mask, torch.from_numpy(mask).long().flip(-1))
    assert torch.equal(_classes_from_image(out_image), out_mask)


@pytest.mark.parametrize("seed", range(4))
def test_random_scale_keeps_image_and_mask_aligned(seed):
    """With random rescaling the image is interpolated bilinearly (edges blend) and the mask nearest, so the
    mask agrees with the image pixels away from block edges (a misaligned crop or flip agrees on about a third
    of the pixels), and no new mask value appears."""
    torch.manual_seed(seed)
    image, mask = _pair(seed, block=8)
    t = TrainTransform(crop_size=24, scale_range=(0.5, 2.0), base_size=H, hflip=0.5, mean=ZERO, std=ONE)
    out_image, out_mask = t(image, mask)
    assert set(out_mask.unique().tolist()) <= set(np.unique(mask).tolist()) | {255}
    agree = (_classes_from_image(out_image) == out_mask).float().mean().item()
    assert agree > 0.85


def test_mask_resize_is_nearest():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[:, ::2] = 7  # stripes: bilinear would create values between 0 and 7
    mask[0] = 255
    image = Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8))
    _, out_mask = EvalTransform(size=(19, 29), mean=ZERO, std=ONE)(image, mask)
    assert out_mask.shape == (19, 29)
    assert set(out_mask.unique().tolist()) <= {0, 7, 255}


def test_eval_transform_normalises_and_keeps_size():
    image = Image.fromarray(np.full((H, W, 3), 255, dtype=np.uint8))
    out_image, out_mask = eval_transform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(
        image, np.zeros((H, W), np.uint8)
    )
    assert out_image.shape == (3, H, W) and torch.allclose(out_image, torch.ones(()))
    assert out_mask.shape == (H, W)
    short_side = eval_transform(16)(image, np.zeros((H, W), np.uint8))[0]
    assert short_side.shape == (3, 16, 24)


def test_palette_mask_gives_indices_not_colours():
    mask = Image.fromarray(np.array([[0, 1], [2, 255]], dtype=np.uint8), mode="P")
    mask.putpalette([9, 9, 9] * 256)
    assert mask_to_tensor(mask).tolist() == [[0, 1], [2, 255]]


def test_greyscale_image():
    image = Image.fromarray(np.zeros((H, W), dtype=np.uint8), mode="L")
    out_image, _ = TrainTransform(16, mean=(0.5,), std=(0.25,))(image, np.zeros((H, W), np.uint8))
    assert out_image.shape == (1, 16, 16)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: TrainTransform(16)(Image.new("RGB", (W, H)), np.zeros((H + 1, W), np.uint8)),
            "sizes differ",
        ),
        (lambda: TrainTransform(16)(Image.new("RGB", (W, H)), np.full((H, W), 300)), r"\[0, 255\]"),
        (lambda: TrainTransform(16)(Image.new("L", (W, H)), np.zeros((H, W), np.uint8)), "mean/std"),
        (lambda: TrainTransform(16)(Image.new("RGB", (W, H)), Image.new("RGB", (W, H))), "palette"),
        (lambda: TrainTransform(16, scale_range=(2.0, 1.0)), "scale_range"),
        (lambda: TrainTransform(16, hflip=1.5), "hflip"),
        (lambda: TrainTransform(0), "crop_size"),
    ],
)
def test_errors_say_what_is_wrong(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
