"""sliding_window: exact on local models, full coverage, tiling as documented, batch-size independent, loud errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from segen.inference import sliding_window, tile_positions, tile_starts
from segen.nets import UNet


class Recorder:
    """Wrap a model; remember every tile batch it receives."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x: Tensor) -> Tensor:
        self.calls.append(x.clone())
        return self.model(x)


def position_model(x: Tensor) -> Tensor:
    """Per-pixel but NOT translation-invariant: adds a ramp over tile coordinates, so overlapping tiles disagree."""
    h, w = x.shape[-2:]
    ramp = torch.arange(h * w, dtype=x.dtype).view(1, 1, h, w) / (h * w)
    return torch.cat([x.sum(1, keepdim=True) + ramp, x[:, :1] * ramp], dim=1)  # (n, 2, h, w)


@pytest.fixture
def conv1x1() -> nn.Module:
    return nn.Conv2d(3, 4, kernel_size=1).eval()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("size", [(5, 7), (16, 16), (21, 30), (33, 9)])
def test_pointwise_model_matches_full_forward(conv1x1, blend, overlap, size):
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = conv1x1(images)
        out = sliding_window(conv1x1, images, window=16, overlap=overlap, blend=blend, batch_size=3)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_rectangular_window_and_pad_modes(conv1x1):
    images = torch.randn(1, 3, 11, 40)
    with torch.no_grad():
        expected = conv1x1(images)
        for mode in ("constant", "replicate", "reflect"):
            out = sliding_window(conv1x1, images, window=(16, 12), overlap=0.3, pad_mode=mode)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_window_covering_image_equals_model_output_exactly():
    unet = UNet(3, 5, base_channels=4, depth=2).eval()
    images = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        expected = unet(images)
        constant = sliding_window(unet, images, window=(20, 24), blend="constant", batch_size=2)
        gaussian = sliding_window(unet, images, window=(20, 24), blend="gaussian", batch_size=2)
    assert torch.equal(constant, expected)
    torch.testing.assert_close(gaussian, expected, atol=1e-6, rtol=1e-6)  # w·v / w: one rounding at most


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_every_pixel_covered(blend):
    ones = lambda x: torch.ones(x.shape[0], 2, *x.shape[-2:])  # noqa: E731
    out = sliding_window(ones, torch.randn(1, 1, 45, 29), window=16, overlap=0.5, blend=blend)
    # A pixel with zero total weight would give NaN (0/0); a partial weight sum would give != 1.
    torch.testing.assert_close(out, torch.ones_like(out))


def test_gaussian_blend_favours_tile_centres():
    # Two tiles along x; on their overlap the gaussian result leans to the tile whose centre is closer.
    images = torch.zeros(1, 1, 8, 12)
    model = Recorder(
        lambda x: torch.full((x.shape[0], 1, 8, 8), 0.0) + torch.arange(x.shape[0]).view(-1, 1, 1, 1)
    )
    out = sliding_window(model, images, window=8, overlap=0.5, blend="gaussian", batch_size=2)[0, 0]
    # tiles start at x = 0 (value 0) and x = 4 (value 1); overlap is x in [4, 8)
    assert out[4, 4] < 0.5 < out[4, 7]
    assert torch.all(out[:, :4] == 0) and torch.all(out[:, 8:] == 1)


def test_batch_size_does_not_change_result():
    images = torch.randn(3, 2, 37, 26)
    a = sliding_window(position_model, images, window=(12, 10), overlap=0.4, batch_size=1)
    b = sliding_window(position_model, images, window=(12, 10), overlap=0.4, batch_size=7)
    assert torch.equal(a, b)


def test_tiling_matches_documented_grid():
    assert tile_starts(50, 16, 0.25) == [0, 12, 24, 34]
    assert tile_starts(37, 16, 0.25) == [0, 12, 21]
    assert tile_starts(16, 16, 0.5) == [0]
    assert tile_starts(20, 16, 0.0) == [0, 4]
    assert tile_starts(5, 3, 0.99) == [0, 1, 2]  # stride at least 1 px
    assert tile_positions(5, 40, 16, 0.0) == [(0, 0), (0, 16), (0, 24)]  # short axis padded to one tile

    images = torch.randn(2, 3, 50, 37)
    model = Recorder(nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        sliding_window(model, images, window=16, overlap=0.25, batch_size=5)
    positions = [(y, x) for y in (0, 12, 24, 34) for x in (0, 12, 21)]
    assert len(model.calls) == math.ceil(2 * len(positions) / 5)
    tiles = torch.cat(model.calls)
    assert tiles.shape == (2 * len(positions), 3, 16, 16)
    expected = torch.stack([images[i, :, y : y + 16, x : x + 16] for i in range(2) for y, x in positions])
    assert torch.equal(tiles, expected)  # no tile outside the image, last one aligned to the border


def test_grad_mode_is_left_to_caller(conv1x1):
    images = torch.randn(1, 3, 20, 20)
    out = sliding_window(conv1x1, images, window=12)
    assert out.requires_grad
    out.sum().backward()
    assert conv1x1.weight.grad is not None
    with torch.no_grad():
        assert not sliding_window(conv1x1, images, window=12).requires_grad


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window": 0}, "window"),
        ({"window": -3}, "window"),
        ({"window": (8, 0)}, "window"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"blend": "gauss"}, "blend"),
        ({"batch_size": 0}, "batch_size"),
        ({"pad_mode": "zeros"}, "pad_mode"),
        ({"num_classes": 3}, "num_classes"),
    ],
)
def test_bad_arguments_raise(conv1x1, kwargs, name):
    args = {"window": 8} | kwargs
    with pytest.raises(ValueError, match=name):
        sliding_window(conv1x1, torch.randn(1, 3, 10, 10), **args)


def test_bad_images_raise(conv1x1):
    with pytest.raises(ValueError, match=r"images must be a 4-D tensor .* got \(3, 10, 10\)"):
        sliding_window(conv1x1, torch.randn(3, 10, 10), window=8)


def test_model_changing_tile_size_raises():
    with pytest.raises(ValueError, match="tile size"):
        sliding_window(lambda x: x[..., ::2, ::2], torch.randn(1, 1, 10, 10), window=8)


def test_reflect_padding_too_large_raises_with_fix(conv1x1):
    with pytest.raises(ValueError, match=r"pad_mode='reflect'.*replicate"):
        sliding_window(conv1x1, torch.randn(1, 3, 3, 3), window=16, pad_mode="reflect")
