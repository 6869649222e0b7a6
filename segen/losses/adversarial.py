"""Adversarial losses and discriminator regularisers as pure functions.

Every loss takes the discriminator's raw scores (logits ``[B]``, no sigmoid) and returns a scalar mean over the
batch. The three families:

- ``"ns"``: the non-saturating GAN loss of Goodfellow et al. (2014): D minimises ``softplus(-D(x)) + softplus(D(G(z)))``
  (binary cross-entropy on logits), G minimises ``softplus(-D(G(z)))`` (not ``-softplus(D(G(z)))``, which saturates).
- ``"hinge"``: D minimises ``relu(1 - D(x)) + relu(1 + D(G(z)))``, G minimises ``-D(G(z))`` (SAGAN, BigGAN).
- ``"wgan"``: D minimises ``D(G(z)) - D(x)``, G minimises ``-D(G(z))``; needs a Lipschitz constraint, here the
  gradient penalty of WGAN-GP (Gulrajani et al. 2017), ``loss="wgan-gp"`` in the task.

Regularisers: :func:`r1_penalty` (Mescheder et al. 2018: squared gradient norm on real data, used with ``ns`` by
StyleGAN2) and :func:`gradient_penalty` (WGAN-GP: ``(||grad D(x_hat)|| - 1)^2`` on random interpolates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from segen.registry import lookup

__all__ = [
    "ADVERSARIAL_LOSSES",
    "AdversarialLoss",
    "DiscriminatorLoss",
    "discriminator_loss",
    "generator_loss",
    "gradient_penalty",
    "r1_penalty",
]


class DiscriminatorLoss(NamedTuple):
    loss: Tensor  # what D minimises: real + fake
    real: Tensor  # the real-data term, mean over the batch
    fake: Tensor  # the generated-data term, mean over the batch


class AdversarialLoss(NamedTuple):
    generator: Callable[[Tensor], Tensor]  # fake logits [B] -> scalar
    discriminator: Callable[[Tensor, Tensor], DiscriminatorLoss]  # (real [B], fake [B]) -> parts


def _ns_g(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


def _ns_d(real: Tensor, fake: Tensor) -> DiscriminatorLoss:
    r, f = F.softplus(-real).mean(), F.softplus(fake).mean()
    return DiscriminatorLoss(r + f, r, f)


def _hinge_g(fake: Tensor) -> Tensor:
    return -fake.mean()


def _hinge_d(real: Tensor, fake: Tensor) -> DiscriminatorLoss:
    r, f = F.relu(1.0 - real).mean(), F.relu(1.0 + fake).mean()
    return DiscriminatorLoss(r + f, r, f)


def _wgan_d(real: Tensor, fake: Tensor) -> DiscriminatorLoss:
    r, f = -real.mean(), fake.mean()
    return DiscriminatorLoss(r + f, r, f)


ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {
    "ns": AdversarialLoss(_ns_g, _ns_d),
    "hinge": AdversarialLoss(_hinge_g, _hinge_d),
    "wgan-gp": AdversarialLoss(_hinge_g, _wgan_d),  # G's wgan loss is -D(G(z)), the same as hinge's
}


def generator_loss(fake_logits: Tensor, kind: str = "ns") -> Tensor:
    """G's loss on D's scores of generated images ``[B]``; ``kind`` is ``ns`` | ``hinge`` | ``wgan-gp``."""
    return lookup("adversarial loss", kind, ADVERSARIAL_LOSSES).generator(fake_logits)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "ns") -> DiscriminatorLoss:
    """D's loss and its two terms from its scores on real and generated images (each ``[B]``)."""
    return lookup("adversarial loss", kind, ADVERSARIAL_LOSSES).discriminator(real_logits, fake_logits)


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """``mean_i ||d D(x_i) / d x_i||^2`` over the batch; ``real_images`` must have ``requires_grad=True`` and
    ``real_logits`` must be computed from them. The graph is kept so the penalty can be backpropagated; the caller
    multiplies by ``gamma / 2`` (and by the lazy interval when it is applied every k steps)."""
    if not real_images.requires_grad:
        raise ValueError(
            "r1_penalty: real_images must require grad (call real_images.requires_grad_() before D)"
        )
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)  # (B, C, H, W)
    return grad.float().square().flatten(1).sum(1).mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real_images: Tensor,
    fake_images: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP: ``mean_i (||d critic(x_hat_i) / d x_hat_i|| - 1)^2`` with ``x_hat = a x_real + (1 - a) x_fake``,
    ``a ~ U(0, 1)`` per sample. ``critic`` maps images ``[B, C, H, W]`` to scores ``[B]`` (close over labels for a
    conditional D). The caller multiplies by the weight (10 in the paper)."""
    if real_images.shape != fake_images.shape:
        raise ValueError(
            f"gradient_penalty: real {tuple(real_images.shape)} and fake {tuple(fake_images.shape)} shapes differ"
        )
    alpha = torch.rand(
        real_images.shape[0], 1, 1, 1, device=real_images.device, dtype=real_images.dtype, generator=generator
    )
    mixed = (alpha * real_images.detach() + (1 - alpha) * fake_images.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)  # (B, C, H, W)
    return (grad.float().flatten(1).norm(dim=1) - 1.0).square().mean()
