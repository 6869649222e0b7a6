"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for training GANs on small data sets.

The same random colour, translation and cutout are applied to *every* image the discriminator sees, real and
generated, in both the discriminator and the generator step. Because every op is differentiable, the generator
gets gradients through the augmentation, and D cannot overfit the few real images by memorising them.

Policies are comma-separated names: ``"color"`` (brightness, saturation, contrast), ``"translation"`` (shift by up to
1/8 of the size, zero fill), ``"cutout"`` (one zeroed square of half the size). ``"color,translation,cutout"`` is the
paper's recommendation for data sets of a few thousand images or fewer.

Every op takes an optional ``torch.Generator`` (on the CPU): the few random parameters per image are drawn from it and
moved to the images' device, so a task that checkpoints its generator resumes with the same augmentations, and the
global RNG (which data loading and dropout share) is not touched. Without one the global RNG of the images' device
is used, as in the paper's code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DIFFAUGMENT_OPS", "diff_augment", "parse_policy"]


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``(B, 1, 1, 1)`` uniform ``[0, 1)`` draws in ``x``'s dtype and device."""
    device = x.device if generator is None else generator.device
    return torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=device).to(x.device, x.dtype)


def _randint(
    low: int, high: int, shape: tuple[int, ...], x: Tensor, generator: torch.Generator | None
) -> Tensor:
    device = x.device if generator is None else generator.device
    return torch.randint(low, high, shape, generator=generator, device=device).to(x.device)


def _brightness(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return x + (_uniform(x, generator) - 0.5)


def _saturation(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - mean) * (_uniform(x, generator) * 2) + mean


def _contrast(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def _color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return _contrast(_saturation(_brightness(x, generator), generator), generator)


def _translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(-sy, sy + 1, (b, 1), x, generator)
    dx = _randint(-sx, sx + 1, (b, 1), x, generator)
    rows = torch.arange(h, device=x.device)[None] + dy + sy  # (B, H) rows of the padded image
    cols = torch.arange(w, device=x.device)[None] + dx + sx  # (B, W)
    padded = F.pad(x, (sx, sx, sy, sy))  # (B, C, H + 2 sy, W + 2 sx), zero fill
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def _cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = _randint(0, h + (1 - ch % 2), (b, 1, 1), x, generator)
    cx = _randint(0, w + (1 - cw % 2), (b, 1, 1), x, generator)
    ys = torch.arange(h, device=x.device)[None, :, None]  # (1, H, 1)
    xs = torch.arange(w, device=x.device)[None, None, :]  # (1, 1, W)
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)  # (B, C, H, W)


DIFFAUGMENT_OPS: dict[str, Callable[..., Tensor]] = {  # op(images, generator=None)
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``None`` or ``""`` -> ``()``; unknown names raise."""
    if not policy:
        return ()
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in DIFFAUGMENT_OPS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment op(s) {unknown} in policy {policy!r}; valid: {', '.join(DIFFAUGMENT_OPS)}"
        )
    return names


def diff_augment(
    images: Tensor, policy: str | tuple[str, ...] | None, generator: torch.Generator | None = None
) -> Tensor:
    """Apply the ops of ``policy`` in order to ``images [B, C, H, W]``; differentiable w.r.t. ``images``. Random
    parameters come from ``generator`` (a CPU generator) when given, else from the global RNG."""
    names = parse_policy(policy) if isinstance(policy, str) or policy is None else policy
    for name in names:
        images = DIFFAUGMENT_OPS[name](images, generator)
    return images
