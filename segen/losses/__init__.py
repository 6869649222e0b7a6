"""Losses: pure functions first, thin ``nn.Module`` wrappers second."""

from segen.losses.adversarial import (
    ADVERSARIAL_LOSSES,
    DiscriminatorLoss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
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
    "ADVERSARIAL_LOSSES",
    "LOSSES",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceCEParts",
    "DiceLoss",
    "DiscriminatorLoss",
    "FocalLoss",
    "build_loss",
    "check_target",
    "cross_entropy_loss",
    "dice_ce_loss",
    "dice_loss",
    "discriminator_loss",
    "focal_loss",
    "generator_loss",
    "gradient_penalty",
    "r1_penalty",
]
