"""Semantic-segmentation losses: soft Dice, cross-entropy, Dice + cross-entropy, focal.

Every loss takes ``logits`` float ``(B, K, H, W)`` and ``target`` integer ``(B, H, W)`` holding class ids in
``[0, K)`` or ``ignore_index`` (255 by default, the segen batch contract). Pure functions come first; the
``nn.Module`` classes below only hold the options so that a task or a config can name them.

Ignored pixels
    A pixel whose target equals ``ignore_index`` is removed from every loss: it changes neither the value nor
    the gradient (its logits receive a gradient of exactly 0). When *every* pixel is ignored each loss returns
    0, still connected to the autograd graph, never NaN (``torch.nn.functional.cross_entropy`` alone returns
    NaN there).

Dice on empty classes (the policy)
    Per-class Dice is ``(2·I + smooth) / (P + T + smooth)`` with ``I = Σ p·t``, ``P = Σ p``, ``T = Σ t``.
    Because of the smoothing term, a class absent from both the prediction and the target has Dice 1, so it
    contributes 0 loss (it still counts in the mean over classes). A class absent from the target but
    predicted has Dice ≈ 0, so it contributes ≈ 1, which pushes its probability mass down. Hence the loss is
    never NaN, also with ``smooth`` tiny; ``smooth`` must be > 0.

Precision
    All losses compute in float32 (``logits.float()``) so bf16 / fp16 logits under mixed precision give the
    same values and finite gradients.

Validation
    With ``validate=True`` (the default) the target is checked by :func:`check_target` with a single host
    sync. Pass ``validate=False`` on hot paths whose data are known to be clean (e.g. under ``torch.compile``),
    or whose values were checked earlier on the host with :func:`check_target_values` (what
    :class:`~segen.tasks.segmentation.SegmentationTask` does before a batch moves to the accelerator).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segen.registry import lookup

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceCEParts",
    "DiceLoss",
    "FocalLoss",
    "build_loss",
    "check_target",
    "check_target_values",
    "cross_entropy_loss",
    "dice_ce_loss",
    "dice_loss",
    "focal_loss",
]

WeightsLike = Tensor | Sequence[float] | None

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------


def check_target(logits: Tensor, target: Tensor, ignore_index: int = 255, *, values: bool = True) -> None:
    """Fail loudly when ``(logits, target)`` cannot be a segmentation batch.

    Checks ranks, shapes, dtypes and devices from metadata (free), then, with ``values=True``, the target values
    with :func:`check_target_values` (one host sync on an accelerator); the message names the offending values,
    ``num_classes`` and ``ignore_index``.
    """
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"expected tensors, got logits={type(logits).__name__} and target={type(target).__name__}"
        )
    if logits.ndim != 4:
        raise ValueError(
            f"logits must be 4-D (B, K, H, W), got shape {tuple(logits.shape)}; "
            f"target has shape {tuple(target.shape)} and should be (B, H, W)"
        )
    if target.ndim != 3:
        hint = (
            " (drop the channel dimension: mask.squeeze(1))"
            if target.ndim == 4 and target.shape[1] == 1
            else ""
        )
        raise ValueError(
            f"target must be 3-D (B, H, W) class indices, got shape {tuple(target.shape)}{hint}; "
            f"logits have shape {tuple(logits.shape)} (B, K, H, W)"
        )
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if target.dtype not in _INTEGER_DTYPES:
        raise TypeError(
            f"target must hold integer class indices, got dtype {target.dtype}; "
            f"long class indices (B, H, W) are expected, e.g. use mask.long()"
        )
    b, k, h, w = logits.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"logits (B, K, H, W) = {tuple(logits.shape)} and target (B, H, W) = {tuple(target.shape)} "
            f"disagree; expected target shape {(b, h, w)}"
        )
    if k < 2:
        raise ValueError(
            f"logits have K={k} class channel(s), shape {tuple(logits.shape)}; these losses take a softmax over "
            f"K >= 2 classes, so a binary mask needs K=2 (background, foreground)"
        )
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but logits are on {logits.device}; move both to one device"
        )

    if values:
        check_target_values(target, k, ignore_index)


def check_target_values(target: Tensor, num_classes: int, ignore_index: int = 255) -> None:
    """Fail loudly when ``target`` holds a value outside ``[0, num_classes)`` that is not ``ignore_index``.

    The value part of :func:`check_target`, for any integer tensor of class ids (e.g. a ``(B, H, W)`` batch of
    masks before the logits exist). The result is read on the host: free on CPU, one sync on an accelerator, so a
    training loop checks its masks while they are still on the host. Valid masks without ``ignore_index`` pixels cost
    one ``aminmax`` pass (0.13 ms for 16 x 256 x 256 on 2 CPU cores, against 1.7 ms for the full check).
    """
    if target.numel() == 0:
        return
    lo, hi = torch.aminmax(target)  # one pass, no (B, H, W) temporaries: the common all-valid case stops here
    if bool((lo >= 0) & (hi < num_classes)):  # the only host sync when the values are valid
        return
    bad = (target < 0) | (target >= num_classes)  # (B, H, W)
    bad = bad & (target != ignore_index)
    if bad.any():
        found_values = torch.unique(target[bad]).tolist()
        if len(found_values) == 1:
            found = f"target holds class {found_values[0]}"
        else:
            shown = ", ".join(str(v) for v in found_values[:5]) + (", ..." if len(found_values) > 5 else "")
            found = (
                f"target holds {len(found_values)} invalid values "
                f"({shown}; smallest {found_values[0]}, largest {found_values[-1]})"
            )
        k = num_classes
        raise ValueError(
            f"{found}, but the loss has num_classes={k} (valid: 0..{k - 1} and ignore_index={ignore_index}); "
            f"check that the mask's label ids match num_classes, or map unlabelled pixels to {ignore_index}"
        )


def _check_nonnegative(name: str, value: float) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_smooth(smooth: float) -> None:
    if not isinstance(smooth, (int, float)) or not math.isfinite(smooth) or smooth <= 0:
        raise ValueError(
            f"smooth must be a finite number > 0, got {smooth!r}; it makes the Dice of a class absent from "
            f"both prediction and target 1 instead of 0/0"
        )


def _check_weight_values(name: str, weights: Tensor, skip_first: bool = False) -> None:
    """Value checks on a CPU weight tensor (free: no device sync)."""
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {weights.tolist()}")
    used = weights[1:] if skip_first else weights
    if used.numel() == 0 or used.sum() <= 0:
        what = " (class 0 is dropped by include_background=False)" if skip_first else ""
        raise ValueError(
            f"{name} must have a positive sum over the classes used{what}, got {weights.tolist()}"
        )


def _weights_buffer(name: str, weights: WeightsLike) -> Tensor | None:
    """Turn a constructor's weight list into a validated float32 CPU tensor (for ``register_buffer``)."""
    if weights is None:
        return None
    tensor = torch.as_tensor(weights, dtype=torch.float32).detach().clone()
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be a 1-D list of per-class weights, got shape {tuple(tensor.shape)}")
    _check_weight_values(name, tensor)
    return tensor


def _as_class_weights(
    name: str, weights: WeightsLike, num_classes: int, device: torch.device, skip_first: bool = False
) -> Tensor | None:
    """Per-class weights as a float32 ``(K,)`` tensor on ``device``.

    Length is always checked; values are checked when they are on the CPU (no device sync). Module buffers
    were checked once at construction.
    """
    if weights is None:
        return None
    tensor = torch.as_tensor(weights, dtype=torch.float32)
    if tensor.ndim != 1 or tensor.shape[0] != num_classes:
        raise ValueError(
            f"{name} must hold one weight per class, i.e. shape ({num_classes},), got shape {tuple(tensor.shape)}"
        )
    if tensor.device.type == "cpu":
        _check_weight_values(name, tensor, skip_first=skip_first)
    return tensor.to(device)


def _valid_and_onehot(target: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Valid-pixel mask and one-hot target, both zero at ignored pixels."""
    target = target.long()
    valid = target != ignore_index  # (B, H, W)
    safe = target.masked_fill(~valid, 0)  # (B, H, W) ignore -> class 0, masked out below
    # explicit float32: under Trainer(precision="bf16-true" / "64-true") Lightning changes torch's default dtype
    valid_f = valid.unsqueeze(1).to(torch.float32)  # (B, 1, H, W)
    # scatter into a contiguous (B, K, H, W) tensor: F.one_hot(...).permute(...) would keep channels-last strides,
    # and every product with the contiguous probabilities would then run on mismatched strides (1.8x slower loss)
    shape = (target.shape[0], num_classes, *target.shape[1:])
    onehot = torch.zeros(shape, dtype=torch.float32, device=target.device)
    onehot.scatter_(1, safe.unsqueeze(1), valid_f)  # (B, K, H, W)
    return valid_f, onehot


# --------------------------------------------------------------------------------------------------------------
# functional losses
# --------------------------------------------------------------------------------------------------------------


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    smooth: float = 1e-5,
    batch: bool = True,
    include_background: bool = True,
    class_weights: WeightsLike = None,
    validate: bool = True,
) -> Tensor:
    """Soft multi-class Dice loss ``1 - mean_k Dice_k`` on softmax probabilities; a scalar.

    ``batch=True`` sums intersection and cardinality over the whole batch per class (stable on small crops
    where a class is often missing from one sample); ``batch=False`` computes Dice per sample and class, then
    averages over the samples that hold at least one non-ignored pixel. ``include_background=False`` drops
    class 0 from the mean; ``class_weights`` (length K) turns the mean over classes into a weighted mean.
    See the module docstring for the empty-class policy.
    """
    _check_smooth(smooth)
    if validate:
        check_target(logits, target, ignore_index)
    num_classes = logits.shape[1]
    if not include_background and num_classes < 2:
        raise ValueError(f"include_background=False needs K >= 2 classes, logits have K={num_classes}")
    weights = _as_class_weights(
        "class_weights", class_weights, num_classes, logits.device, skip_first=not include_background
    )

    probs = logits.float().softmax(dim=1)  # (B, K, H, W)
    valid, onehot = _valid_and_onehot(target, num_classes, ignore_index)  # (B, 1, H, W), (B, K, H, W)
    probs = probs * valid  # ignored pixels: no value, zero gradient

    dims = (0, 2, 3) if batch else (2, 3)
    intersection = (probs * onehot).sum(dims)  # (K,) or (B, K)
    cardinality = probs.sum(dims) + onehot.sum(dims)  # (K,) or (B, K)
    per_class = 1.0 - (2.0 * intersection + smooth) / (cardinality + smooth)  # (K,) or (B, K)

    if not batch:
        has_pixels = valid.flatten(1).amax(dim=1)  # (B,) 1 where the sample has a non-ignored pixel
        per_class = (per_class * has_pixels[:, None]).sum(0) / has_pixels.sum().clamp_min(1.0)  # (K,)

    if not include_background:
        per_class = per_class[1:]
        weights = None if weights is None else weights[1:]
    if weights is None:
        return per_class.mean()
    return (per_class * weights).sum() / weights.sum()


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    class_weights: WeightsLike = None,
    validate: bool = True,
) -> Tensor:
    """``F.cross_entropy`` mean over non-ignored pixels, but 0 (not NaN) when every pixel is ignored.

    With ``class_weights`` the mean is weighted exactly as torch does it: ``Σ w_t·ce / Σ w_t``.
    """
    if validate:
        check_target(logits, target, ignore_index)
    weights = _as_class_weights("class_weights", class_weights, logits.shape[1], logits.device)
    target = target.long()
    # the sum over non-ignored pixels (weighted by class if asked); "sum" has a faster backward than "none" + .sum()
    total = F.cross_entropy(
        logits.float(), target, weight=weights, ignore_index=ignore_index, reduction="sum"
    )
    valid = target != ignore_index  # (B, H, W)
    if weights is None:
        denominator = valid.sum().float()
    else:
        denominator = (weights[target.masked_fill(~valid, 0)] * valid).sum()
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))  # no host sync
    return total / denominator


class DiceCEParts(NamedTuple):
    """The parts of :func:`dice_ce_loss`, so a task can log each one."""

    loss: Tensor  # what is minimised: dice_weight * dice + ce_weight * ce
    dice: Tensor  # soft Dice loss, 1 - mean Dice over classes
    ce: Tensor  # cross-entropy, mean over non-ignored pixels (nats)


def dice_ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    ignore_index: int = 255,
    smooth: float = 1e-5,
    class_weights: WeightsLike = None,
    batch: bool = True,
    include_background: bool = True,
    validate: bool = True,
) -> DiceCEParts:
    """Dice + cross-entropy (the U-Net recipe), returned with its parts.

    Dice handles class imbalance, cross-entropy gives well-shaped per-pixel gradients early in training.
    ``class_weights`` apply to both parts; ``batch`` and ``include_background`` apply to Dice only.
    The target is validated once.
    """
    _check_nonnegative("dice_weight", dice_weight)
    _check_nonnegative("ce_weight", ce_weight)
    if validate:
        check_target(logits, target, ignore_index)
    dice = dice_loss(
        logits,
        target,
        ignore_index=ignore_index,
        smooth=smooth,
        batch=batch,
        include_background=include_background,
        class_weights=class_weights,
        validate=False,
    )
    ce = cross_entropy_loss(
        logits, target, ignore_index=ignore_index, class_weights=class_weights, validate=False
    )
    return DiceCEParts(loss=dice_weight * dice + ce_weight * ce, dice=dice, ce=ce)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: WeightsLike = None,
    ignore_index: int = 255,
    validate: bool = True,
) -> Tensor:
    """Multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, mean over non-ignored pixels (0 if none).

    Down-weights easy pixels so that many well-classified background pixels do not drown the rare hard
    ones. ``gamma=0, alpha=None`` is exactly cross-entropy. ``alpha`` is an optional per-class weight of
    length K; unlike weighted cross-entropy the mean is a plain mean over pixels (not divided by Σ alpha_t).
    """
    _check_nonnegative("gamma", gamma)
    if validate:
        check_target(logits, target, ignore_index)
    alpha_t = _as_class_weights("alpha", alpha, logits.shape[1], logits.device)
    target = target.long()
    valid = target != ignore_index  # (B, H, W)
    safe = target.masked_fill(~valid, 0)  # (B, H, W)

    log_probs = F.log_softmax(logits.float(), dim=1)  # (B, K, H, W)
    log_pt = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, H, W)
    loss = -log_pt  # (B, H, W)
    if gamma != 0:
        # 1 - p_t computed stably; the clamp keeps d/dx x^gamma finite at p_t == 1 for gamma < 1
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(1e-12)  # (B, H, W)
        loss = one_minus_pt.pow(gamma) * loss
    if alpha_t is not None:
        loss = alpha_t[safe] * loss
    loss = torch.where(valid, loss, torch.zeros_like(loss))  # (B, H, W)
    return loss.sum() / valid.sum().clamp_min(1).float()


# --------------------------------------------------------------------------------------------------------------
# modules: hold the options, call the functions
# --------------------------------------------------------------------------------------------------------------


class _LossModule(nn.Module):
    """Holds the keyword options of a loss function; ``forward(logits, target)`` calls the function with them.

    Per-class weight options become non-persistent buffers: they follow ``.to(device)`` but stay out of the
    ``state_dict``, since they are configuration, not learned state.
    """

    _weight_options: tuple[str, ...] = ("class_weights",)

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        super().__init__()
        self._fn = fn
        for name in self._weight_options:
            self.register_buffer(name, _weights_buffer(name, options.pop(name)), persistent=False)
        self.options = options

    def _kwargs(self) -> dict[str, Any]:
        return {**self.options, **{name: getattr(self, name) for name in self._weight_options}}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self._fn(logits, target, **self._kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items() if k != "validate")


class DiceLoss(_LossModule):
    """Module form of :func:`dice_loss`; ``forward(logits (B,K,H,W), target (B,H,W)) -> scalar``."""

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        smooth: float = 1e-5,
        batch: bool = True,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        validate: bool = True,
    ) -> None:
        _check_smooth(smooth)
        super().__init__(
            dice_loss,
            ignore_index=ignore_index,
            smooth=smooth,
            batch=batch,
            include_background=include_background,
            class_weights=class_weights,
            validate=validate,
        )


class CrossEntropyLoss(_LossModule):
    """Module form of :func:`cross_entropy_loss`: torch's ignore semantics, but 0 when all pixels are ignored."""

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | Tensor | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(
            cross_entropy_loss, ignore_index=ignore_index, class_weights=class_weights, validate=validate
        )


class DiceCELoss(_LossModule):
    """Module form of :func:`dice_ce_loss`; ``forward`` returns the scalar loss, ``parts`` all three parts."""

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int = 255,
        smooth: float = 1e-5,
        class_weights: Sequence[float] | Tensor | None = None,
        batch: bool = True,
        include_background: bool = True,
        validate: bool = True,
    ) -> None:
        _check_nonnegative("dice_weight", dice_weight)
        _check_nonnegative("ce_weight", ce_weight)
        if dice_weight == 0 and ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0, so the loss would be constantly 0")
        _check_smooth(smooth)
        super().__init__(
            dice_ce_loss,
            dice_weight=dice_weight,
            ce_weight=ce_weight,
            ignore_index=ignore_index,
            smooth=smooth,
            class_weights=class_weights,
            batch=batch,
            include_background=include_background,
            validate=validate,
        )

    def parts(self, logits: Tensor, target: Tensor) -> DiceCEParts:
        return dice_ce_loss(logits, target, **self._kwargs())

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.parts(logits, target).loss


class FocalLoss(_LossModule):
    """Module form of :func:`focal_loss`; ``forward(logits, target) -> scalar``."""

    _weight_options = ("alpha",)

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: Sequence[float] | Tensor | None = None,
        ignore_index: int = 255,
        validate: bool = True,
    ) -> None:
        _check_nonnegative("gamma", gamma)
        super().__init__(focal_loss, gamma=gamma, alpha=alpha, ignore_index=ignore_index, validate=validate)


# --------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------

LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "dice_ce": DiceCELoss,
    "focal": FocalLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a segmentation loss module by its registry name, e.g. ``build_loss("dice_ce", ce_weight=0.5)``."""
    cls = lookup("loss", name, LOSSES)
    signature = inspect.signature(cls)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        raise TypeError(
            f"loss {name!r} ({cls.__name__}) got unknown argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(signature.parameters)}"
        )
    return cls(**kwargs)
