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
from segen.losses.vae import ELBO, bits_per_dim, elbo, gaussian_kl, iwae_nll

__all__ = [
    "ADVERSARIAL_LOSSES",
    "ELBO",
    "LOSSES",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DiceCEParts",
    "DiceLoss",
    "DiscriminatorLoss",
    "FocalLoss",
    "bits_per_dim",
    "build_loss",
    "check_target",
    "cross_entropy_loss",
    "dice_ce_loss",
    "dice_loss",
    "discriminator_loss",
    "elbo",
    "focal_loss",
    "gaussian_kl",
    "generator_loss",
    "gradient_penalty",
    "iwae_nll",
    "r1_penalty",
]
