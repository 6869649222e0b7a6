"""Sliding-window inference: segment images larger (or smaller) than the size a network was trained on.

The image is covered by overlapping tiles of size ``window``; each tile goes through the model, and the tile
logits are blended back into one logit map per image with a per-pixel weighted average.

Tiling
    Along each axis of length ``L`` (after padding, see below) tiles start every ``stride = floor(window ·
    (1 − overlap))`` pixels (at least 1), and one more tile is aligned to the far border when the regular grid
    stops short of it. No tile ever reaches outside the image, so no tile sees padding except when the image is
    smaller than the window: such an image is padded (bottom/right, ``pad_mode``) up to the window and the
    output is cropped back. :func:`tile_positions` returns the tile corners.

Blending
    Logits (not probabilities) are blended: ``out = Σ_t w_t · logits_t / Σ_t w_t`` per pixel. Averaging logits
    keeps the output a drop-in replacement for ``model(images)`` (apply ``softmax``/``argmax`` afterwards as
    usual) and costs no extra memory. ``blend="gaussian"`` weights each tile by a separable Gaussian centred on
    the tile (``sigma = sigma_scale · window``, normalised to a maximum of 1 and clamped to ``min_weight`` so
    border pixels still count); tile centres, where the network has the most context, dominate. ``"constant"``
    gives every tile pixel weight 1 (a plain average).

Gradients
    Nothing here switches autograd on or off: call it under ``torch.no_grad()`` / ``torch.inference_mode()``
    for inference (the normal case), or with grad enabled to back-propagate through the blended logits.

There is no torchvision counterpart; segen adds the whole routine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BLENDS", "PAD_MODES", "sliding_window", "tile_positions", "tile_starts"]

BLENDS = ("gaussian", "constant")
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _as_window(window: int | Sequence[int]) -> tuple[int, int]:
    """``16`` or ``(16, 24)`` -> ``(h, w)``; ValueError naming ``window`` otherwise."""
    if isinstance(window, int) and not isinstance(window, bool):
        pair = (window, window)
    elif isinstance(window, Sequence) and len(window) == 2:
        pair = tuple(window)
    else:
        raise ValueError(f"window must be a positive int or a pair (h, w) of them, got {window!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"window must be a positive int or a pair (h, w) of them, got {window!r}")
    return pair  # type: ignore[return-value]


def _check_overlap(overlap: float) -> None:
    if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}")


def tile_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of length ``size >= window``.

    Every ``stride = max(1, floor(window · (1 − overlap)))`` pixels, plus ``size − window`` when the regular grid
    does not reach the border. E.g. ``tile_starts(50, 16, 0.25) == [0, 12, 24, 34]``.
    """
    _check_overlap(overlap)
    if window <= 0 or size < window:
        raise ValueError(f"tile_starts needs 0 < window <= size, got window={window}, size={size}")
    stride = max(1, math.floor(window * (1.0 - overlap)))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)  # last tile aligned to the border
    return starts


def tile_positions(
    height: int, width: int, window: int | Sequence[int], overlap: float = 0.25
) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the tiles covering a ``height × width`` image, row-major.

    An axis shorter than the window is padded up to it first (as :func:`sliding_window` does), so it has the
    single start 0.
    """
    wh, ww = _as_window(window)
    ys = tile_starts(max(height, wh), wh, overlap)
    xs = tile_starts(max(width, ww), ww, overlap)
    return [(y, x) for y in ys for x in xs]


def _blend_weights(
    window: tuple[int, int], blend: str, sigma_scale: float, min_weight: float, device: torch.device
) -> Tensor:
    """Per-pixel tile weight ``(h, w)`` float32: Gaussian (max 1, >= min_weight) or all ones."""
    if blend == "constant":
        return torch.ones(window, dtype=torch.float32, device=device)
    axes = []
    for n in window:
        coords = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0  # centred on the tile
        sigma = sigma_scale * n
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    weight = axes[0][:, None] * axes[1][None, :]  # (h, 1) * (1, w) -> (h, w), separable
    weight = weight / weight.max()
    return weight.clamp_min(min_weight)


def sliding_window(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    window: int | Sequence[int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    num_classes: int | None = None,
    sigma_scale: float = 0.125,
    pad_mode: str = "constant",
    min_weight: float = 1e-3,
) -> Tensor:
    """Blend a model's logits over overlapping tiles: ``(B, C, H, W) -> (B, K, H, W)`` float32.

    Args:
        model: any callable mapping ``(N, C, h, w)`` tiles to ``(N, K, h, w)`` logits (a net, a task, a lambda).
            Tiles are passed in the device and dtype of ``images``; put the model there.
        images: ``(B, C, H, W)`` batch, any ``H, W >= 1``.
        window: tile size, an int or ``(h, w)``.
        overlap: fraction of the window shared by neighbouring tiles, in ``[0, 1)``.
        blend: ``"gaussian"`` or ``"constant"`` (see the module docstring).
        batch_size: tiles per model call, gathered across images and positions.
        num_classes: expected ``K``; when given, the model's output is checked against it.
        sigma_scale: Gaussian sigma as a fraction of the window size (``blend="gaussian"`` only).
        pad_mode: how an image smaller than the window is padded: ``"constant"`` (zeros), ``"reflect"``,
            ``"replicate"`` or ``"circular"`` (``torch.nn.functional.pad`` modes).
        min_weight: smallest Gaussian weight, > 0, so that every pixel of a tile counts.

    Returns:
        Blended logits ``(B, K, H, W)`` float32 on ``images.device``. Autograd is left as the caller set it.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        found = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a 4-D tensor (B, C, H, W), got {found}")
    wh, ww = _as_window(window)
    _check_overlap(overlap)
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if blend == "gaussian" and not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
    if not 0.0 < min_weight <= 1.0:
        raise ValueError(f"min_weight must be in (0, 1], got {min_weight!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")

    b, _, h, w = images.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    pad_h, pad_w = max(0, wh - h), max(0, ww - w)
    if pad_h or pad_w:
        try:
            # (B, C, H, W) -> (B, C, max(H, wh), max(W, ww)), padded at the bottom/right
            images = F.pad(images, (0, pad_w, 0, pad_h), mode=pad_mode)
        except (RuntimeError, NotImplementedError) as err:
            raise ValueError(
                f"pad_mode={pad_mode!r} cannot pad an image of size {h}×{w} up to the window {wh}×{ww} ({err}); "
                f"use pad_mode='replicate' or 'constant'"
            ) from err
    ph, pw = images.shape[-2:]

    positions = tile_positions(ph, pw, (wh, ww), overlap)
    tiles = [(i, y, x) for i in range(b) for (y, x) in positions]  # every (image, corner), image-major
    weight = _blend_weights((wh, ww), blend, sigma_scale, min_weight, images.device)  # (wh, ww)

    # The weight sum is the same for every image: accumulate it once.
    weight_sum = torch.zeros(ph, pw, dtype=torch.float32, device=images.device)  # (H', W')
    for y, x in positions:
        weight_sum[y : y + wh, x : x + ww] += weight

    out: Tensor | None = None
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        batch = torch.stack([images[i, :, y : y + wh, x : x + ww] for i, y, x in chunk])  # (n, C, wh, ww)
        logits = model(batch)  # (n, K, wh, ww)
        if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[0] != len(chunk):
            found = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"model must map (N, C, h, w) tiles to (N, K, h, w) logits; got {found} for N={len(chunk)}"
            )
        if tuple(logits.shape[-2:]) != (wh, ww):
            raise ValueError(
                f"model changed the tile size: input tiles {wh}×{ww}, output {tuple(logits.shape)}; "
                "sliding_window needs logits at the input resolution (upsample inside the model)"
            )
        k = logits.shape[1]
        if out is None:
            if num_classes is not None and k != num_classes:
                raise ValueError(f"model returned {k} logit channels, but num_classes={num_classes}")
            out = torch.zeros(b, k, ph, pw, dtype=torch.float32, device=images.device)  # (B, K, H', W')
        elif k != out.shape[1]:
            raise ValueError(
                f"model returned {k} logit channels for one tile batch and {out.shape[1]} for another"
            )
        weighted = logits.float() * weight  # (n, K, wh, ww)
        for t, (i, y, x) in enumerate(chunk):
            out[i, :, y : y + wh, x : x + ww] += weighted[t]

    assert out is not None  # at least one tile per image
    out = out / weight_sum  # every pixel has weight >= min_weight > 0
    return out[..., :h, :w]  # crop the padding back: (B, K, H, W)
