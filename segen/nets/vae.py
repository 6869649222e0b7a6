"""Convolutional VAE encoder and decoder, optionally class-conditional (a conditional VAE).

Encoder: stride-2 convolutions halve the image down to 4x4 -> a linear layer to ``(mu, logvar)`` of ``q(z|x)``.
Decoder: a linear layer to 4x4 -> transposed convolutions double it back -> ``out_per_channel`` maps per image
channel (1: a mean or Bernoulli logits; 2: mean and log-scale of the discretised logistic). Any side >= 8 works: an
odd side is reached by a 3x3 kernel instead of 4x4, and some sides bottom out at 3x3
(:func:`segen.nets.dcgan.side_ladder`). With ``num_classes=K`` a label
embedding is concatenated to the encoder's flattened features and to ``z`` (Sohn et al. 2015), so ``q(z|x, y)`` and
``p(x|z, y)`` both see the class. GroupNorm keeps both nets independent of the batch size (and of batch
composition, which matters for likelihood evaluation).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from segen.nets.dcgan import check_labels, resample_kernel, side_ladder

__all__ = ["VAEDecoder", "VAEEncoder"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class VAEEncoder(nn.Module):
    """``(B, C, S, S)`` images (and labels) -> ``mu, logvar`` of ``q(z|x)``, each ``(B, latent_dim)``."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        latent_dim: int = 32,
        num_classes: int | None = None,
        base_channels: int = 32,
        max_channels: int = 256,
    ) -> None:
        super().__init__()
        sides = side_ladder(type(self).__name__, image_size)[::-1]  # [S, ..., 8, 4] for powers of two
        self.num_classes, self.latent_dim = num_classes, latent_dim
        layers: list[nn.Module] = []
        width_in = channels
        for i, (large, small) in enumerate(itertools.pairwise(sides)):
            width = min(max_channels, base_channels * 2**i)
            k = resample_kernel(small, large)
            layers += [nn.Conv2d(width_in, width, k, stride=2, padding=1), _norm(width), nn.SiLU()]
            width_in = width
        self.features = nn.Sequential(*layers)
        flat = width_in * sides[-1] ** 2
        self.embed = nn.Embedding(num_classes, 64) if num_classes else None
        self.head = nn.Linear(flat + (64 if num_classes else 0), 2 * latent_dim)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_labels(type(self).__name__, self.num_classes, labels, images.shape[0])
        h = self.features(images).flatten(1)  # (B, C, S, S) -> (B, W * 4 * 4) (3 * 3 for some sides)
        if self.embed is not None:
            h = torch.cat([h, self.embed(labels)], dim=1)
        mu, logvar = self.head(h).chunk(2, dim=1)  # (B, Z) each
        return mu, logvar.clamp(-30.0, 20.0)


class VAEDecoder(nn.Module):
    """``(B, latent_dim)`` latents (and labels) -> ``(B, out_per_channel * C, S, S)`` likelihood parameters."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        latent_dim: int = 32,
        num_classes: int | None = None,
        base_channels: int = 32,
        max_channels: int = 256,
        out_per_channel: int = 1,
    ) -> None:
        super().__init__()
        self.sides = side_ladder(type(self).__name__, image_size)  # [4, 8, ..., S] for powers of two
        blocks = len(self.sides) - 1
        self.num_classes, self.latent_dim = num_classes, latent_dim
        widths = [min(max_channels, base_channels * 2**i) for i in reversed(range(blocks))]
        self.embed = nn.Embedding(num_classes, 64) if num_classes else None
        self.start_width = widths[0] if widths else base_channels
        self.fc = nn.Linear(latent_dim + (64 if num_classes else 0), self.start_width * self.sides[0] ** 2)
        layers: list[nn.Module] = []
        width_in = self.start_width
        for width, (small, large) in zip(widths, itertools.pairwise(self.sides)):
            k = resample_kernel(small, large)
            layers += [
                _norm(width_in),
                nn.SiLU(),
                nn.ConvTranspose2d(width_in, width, k, stride=2, padding=1),
            ]
            width_in = width
        layers += [_norm(width_in), nn.SiLU(), nn.Conv2d(width_in, out_per_channel * channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(type(self).__name__, self.num_classes, labels, z.shape[0])
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        side = self.sides[0]
        h = self.fc(z).view(z.shape[0], self.start_width, side, side)  # (B, Z) -> (B, W, 4, 4) (or 3, 3)
        return self.net(h)  # (B, out_per_channel * C, S, S)
