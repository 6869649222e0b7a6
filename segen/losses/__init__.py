"""Losses: pure functions first, thin ``nn.Module`` wrappers second."""

from segen.losses.segmentation import (
    LOSSES,
    CrossEntropyLoss,
    DiceCELoss,
    DiceCEParts,
    DiceLoss,
    FocalLoss,
    build_loss,
    check_target,
    cross_entropy_loss,
    dice_ce_loss,
    dice_loss,
    focal_loss,
)

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceCEParts",
    "DiceLoss",
    "FocalLoss",
    "build_loss",
    "check_target",
    "cross_entropy_loss",
    "dice_ce_loss",
    "dice_loss",
    "focal_loss",
]
