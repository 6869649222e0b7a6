"""DCGAN (Radford et al., 2016) generator and discriminator as plain ``nn.Module`` networks, optionally class-conditional.

Generator: ``z`` (concatenated with a label embedding when conditional) → a 4×4 transposed convolution → one
stride-2 transposed convolution per doubling of the resolution, each with BatchNorm and ReLU, halving the width →
``tanh`` images in ``[-1, 1]``.

Discriminator: stride-2 4×4 convolutions with LeakyReLU(0.2), doubling the width, down to 4×4 (the first layer has
no normalisation) → a linear layer on the flattened 4×4 features. When conditional it is a projection discriminator
(Miyato & Koyama, 2018): ``logit = linear(h) + <embed(y), h>``.

Any ``image_size >= 8`` works; the number of blocks follows from it (32 px: 3, 64 px: 4, the paper's). For powers of
two the networks are the paper's; other sides (28, 48, 100) replace the 4×4 stride-2 kernel by a 3×3 one wherever a
side is odd (28 = 2·14, 14 = 2·7, 7 = 2·4 − 1), see :func:`side_ladder`.
The helpers :func:`check_image_size`, :func:`check_labels` and :func:`check_latents` are shared with
:mod:`segen.nets.stylegan2`, so both families reject bad input with the same messages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from segen.registry import lookup

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "check_image_size",
    "check_images",
    "check_labels",
    "check_latents",
    "resample_kernel",
    "side_ladder",
]


# ------------------------------------------------------------------------------------------ shared input checks
def check_image_size(owner: str, image_size: int, minimum: int = 8) -> int:
    """Validate a power-of-two ``image_size >= minimum``; return ``log2(image_size)``."""
    if not isinstance(image_size, int) or image_size < minimum or image_size & (image_size - 1):
        raise ValueError(
            f"{owner}: image_size must be a power of two >= {minimum} (e.g. 32 or 64), got {image_size!r}; "
            f"resize or pad the data to a supported size"
        )
    return int(math.log2(image_size))


def side_ladder(owner: str, image_size: int) -> list[int]:
    """The feature-map sides of a DCGAN-style network, from the bottom (3 or 4) up to ``image_size``.

    Each side is the next larger one halved and rounded up: 32 -> [4, 8, 16, 32] (the paper's networks),
    28 -> [4, 7, 14, 28], 48 -> [3, 6, 12, 24, 48]. Between two sides sits a stride-2 (transposed) convolution with
    padding 1: a 4×4 kernel where the larger side is even (exactly 2x), a 3×3 kernel where it is odd (2x - 1), see
    :func:`resample_kernel`. So every side >= 8 works, and each keeps a small bottom map that the discriminator's
    last layer sees whole.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"{owner}: image_size must be an integer >= 8 (pixels), got {image_size!r}")
    sides = [image_size]
    while sides[-1] > 4:
        sides.append((sides[-1] + 1) // 2)
    return sides[::-1]


def resample_kernel(small: int, large: int) -> int:
    """Kernel of the stride-2, padding-1 convolution between sides ``large`` and ``small = ceil(large / 2)``."""
    return 4 if large == 2 * small else 3


def check_positive(owner: str, **values: int | None) -> None:
    """Every value must be an integer >= 1 (``None`` is allowed: it means "not set")."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")


def check_labels(owner: str, num_classes: int | None, labels: Tensor | None, batch: int) -> None:
    """Labels must be given exactly when the network is class-conditional, as a ``(B,)`` integer tensor."""
    if num_classes is None:
        if labels is not None:
            raise ValueError(
                f"{owner} is unconditional (num_classes=None) but got labels of shape {tuple(labels.shape)}; "
                f"pass labels=None, or build it with num_classes=K for class-conditional generation"
            )
        return
    if labels is None:
        raise ValueError(
            f"{owner} is class-conditional (num_classes={num_classes}) and needs labels: a long tensor of shape "
            f"({batch},) with values in [0, {num_classes}); got labels=None"
        )
    if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"{owner}: labels must be an integer tensor of shape ({batch},) (one class index in "
            f"[0, {num_classes}) per sample), got {labels.dtype} of shape {tuple(labels.shape)}"
        )


def check_latents(owner: str, z: Tensor, latent_dim: int) -> None:
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(
            f"{owner} expects latents z of shape (B, {latent_dim}) (latent_dim={latent_dim}), got {tuple(z.shape)}"
        )


def check_images(owner: str, images: Tensor, channels: int, image_size: int) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (channels, image_size, image_size):
        raise ValueError(
            f"{owner} expects images of shape (B, {channels}, {image_size}, {image_size}) "
            f"(channels={channels}, image_size={image_size}), got {tuple(images.shape)}"
        )


# ---------------------------------------------------------------------------------------------------- networks
def _dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: N(0, 0.02) weights, BatchNorm scales N(1, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``(B, latent_dim)`` latents (and ``(B,)`` labels) → ``(B, channels, S, S)`` in ``[-1, 1]``.

    Args:
        channels: image channels.
        image_size: output side ``S >= 8`` (32 and 64 give the paper's network; 28, 48, ... work too).
        latent_dim: size of ``z``.
        num_classes: class-conditional when set: a label embedding is concatenated with ``z``.
        base_channels: width at ``S/2``; it doubles at every lower resolution (64 px, 64: 512 at 4×4, as in the paper).
        embed_dim: size of the label embedding (default ``latent_dim``, so label and noise carry equal weight).
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        latent_dim: int = 128,
        num_classes: int | None = None,
        base_channels: int = 64,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(
            name,
            channels=channels,
            latent_dim=latent_dim,
            num_classes=num_classes,
            base_channels=base_channels,
            embed_dim=embed_dim,
        )
        sides = side_ladder(name, image_size)  # [4, 8, ..., S] for powers of two
        self.channels, self.image_size, self.latent_dim, self.num_classes = (
            channels,
            image_size,
            latent_dim,
            num_classes,
        )
        embed_dim = latent_dim if embed_dim is None else embed_dim
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes is not None else None
        in_dim = latent_dim + (embed_dim if num_classes is not None else 0)

        n_up = len(sides) - 1
        widths = [base_channels * 2**i for i in reversed(range(n_up))]  # at sides[0], ..., sides[-2]
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, widths[0], sides[0], 1, 0, bias=False)]
        layers += [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for (w_in, w_out), (small, large) in zip(itertools.pairwise(widths), itertools.pairwise(sides)):
            # No bias before BatchNorm: its shift replaces it.
            layers += [
                nn.ConvTranspose2d(w_in, w_out, resample_kernel(small, large), 2, 1, bias=False),
                nn.BatchNorm2d(w_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, resample_kernel(*sides[-2:]), 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCGAN init for the convolutions; the label embedding keeps N(0, 1), the same scale as ``z``."""
        _dcgan_init(self.net)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        check_latents(name, z, self.latent_dim)
        check_labels(name, self.num_classes, labels, z.shape[0])
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # (B, latent_dim) -> (B, latent_dim + embed_dim)
        return self.net(z[:, :, None, None])  # (B, D, 1, 1) -> (B, C, S, S)


def _no_norm(channels: int) -> nn.Module:
    return nn.Identity()


# Each entry: (norm layer for a width, wrapper applied to every weight layer).
D_NORMS: dict[str, tuple[Callable[[int], nn.Module], Callable[[nn.Module], nn.Module]]] = {
    "batch": (nn.BatchNorm2d, lambda m: m),
    "none": (_no_norm, lambda m: m),
    "spectral": (_no_norm, spectral_norm),
}


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: ``(B, channels, S, S)`` images (and ``(B,)`` labels) → ``(B,)`` raw logits.

    Args:
        channels: image channels.
        image_size: input side ``S >= 8``.
        num_classes: class-conditional when set: projection discriminator, ``linear(h) + <embed(y), h>``.
        base_channels: width after the first convolution; it doubles at every halving of the resolution.
        norm: ``"spectral"`` (default), ``"batch"`` (the paper's) or ``"none"`` (for WGAN-GP).

    Why spectral norm by default: BatchNorm in D normalises all-real and all-fake batches with different statistics,
    so D can separate them by batch statistics rather than by image content, and it breaks per-sample gradient
    penalties (WGAN-GP, R1). Spectral normalisation (Miyato et al., 2018) bounds each layer's Lipschitz constant
    without batch coupling; in their comparison it was the most robust normaliser across Adam settings, including
    the DCGAN one used with the non-saturating loss, Adam(2e-4, betas=(0.5, 0.999)) with one D step per G step.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int | None = None,
        base_channels: int = 64,
        norm: str = "spectral",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, channels=channels, num_classes=num_classes, base_channels=base_channels)
        sides = side_ladder(name, image_size)[::-1]  # [S, ..., 8, 4] for powers of two
        make_norm, wrap = lookup("norm", norm, D_NORMS)
        self.channels, self.image_size, self.num_classes, self.norm = channels, image_size, num_classes, norm

        widths = [base_channels * 2**i for i in range(len(sides) - 1)]  # after each stride-2 convolution
        kernels = [resample_kernel(small, large) for large, small in itertools.pairwise(sides)]
        layers: list[nn.Module] = [
            nn.Conv2d(channels, widths[0], kernels[0], 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for w_in, w_out, k in zip(widths, widths[1:], kernels[1:]):
            conv = nn.Conv2d(w_in, w_out, k, 2, 1, bias=norm != "batch")  # no bias before BatchNorm
            layers += [conv, make_norm(w_out), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        feature_dim = widths[-1] * sides[-1] ** 2
        self.linear = nn.Linear(feature_dim, 1)  # = the paper's final 4×4 convolution
        self.embed = nn.Embedding(num_classes, feature_dim) if num_classes is not None else None

        # Initialise before wrapping: spectral norm estimates its singular vectors from the weight it is given.
        _dcgan_init(self)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        for m in list(self.modules()):
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                wrap(m)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        check_images(name, images, self.channels, self.image_size)
        check_labels(name, self.num_classes, labels, images.shape[0])
        h = self.features(images).flatten(1)  # (B, C, S, S) -> (B, c * 4 * 4) (3 * 3 for some sides)
        logits = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(dim=1)  # projection term <embed(y), h>
        return logits
