"""StyleGAN2-style generator and discriminator (Karras et al., 2020), small scale (32–64 px), as plain ``nn.Module``.

Generator = mapping network + synthesis network:

- mapping: pixel-normalised ``z`` (concatenated with a pixel-normalised label embedding when conditional) → an MLP
  with equalized learning rate and a 0.01 learning-rate multiplier → ``w``;
- synthesis: a learned 4×4 constant → per resolution two *styled layers* (modulated + demodulated 3×3 convolution,
  per-pixel noise with a learned per-channel strength, bias, leaky ReLU with gain sqrt(2)), the first of them
  upsampling ×2 → a *skip* architecture: every resolution has a ToRGB (modulated 1×1, no demodulation) whose
  output is added to the upsampled RGB image of the resolution below;
- style mixing regularisation in training mode, a running average ``w_avg`` and the truncation trick.

Discriminator: residual blocks with equalized-lr convolutions and average-pool downsampling, a minibatch
standard-deviation channel, a 3×3 convolution and two dense layers; a projection term when conditional.

Simplifications with respect to the official code, chosen for readability at 32–64 px: bilinear up/downsampling
instead of the FIR filters, per-channel noise strength (StyleGAN1) instead of one scalar, no fp16 clamping, and a
``tanh`` on the output so images are in ``[-1, 1]`` like every segen generator (``GANTask.sample`` relies on it).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segen.nets.dcgan import check_image_size, check_images, check_labels, check_latents, check_positive
from segen.registry import lookup

__all__ = [
    "EqualConv2d",
    "EqualLinear",
    "MappingNetwork",
    "MinibatchStd",
    "ModulatedConv2d",
    "NoiseInjection",
    "ResBlock",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "StyledLayer",
    "SynthesisNetwork",
    "ToRGB",
    "channel_widths",
]

NOISE_MODES = ("random", "const", "none")


def lrelu(x: Tensor) -> Tensor:
    """Leaky ReLU(0.2) times sqrt(2), which keeps the second moment of a unit-variance input about constant."""
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row to unit second moment: ``(B, D) -> (B, D)``."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def channel_widths(image_size: int, base_channels: int, max_channels: int) -> dict[int, int]:
    """Width per resolution: ``base_channels`` at ``image_size``, doubling at each halving, capped at ``max_channels``."""
    return {
        2**k: min(max_channels, base_channels * image_size // 2**k)
        for k in range(2, int(math.log2(image_size)) + 1)
    }


# ------------------------------------------------------------------------------------------- equalized layers
class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate.

    Weights are stored as N(0, 1) / lr_mul and multiplied at run time by ``lr_mul / sqrt(in_features)``, so Adam's
    per-parameter step sizes are the same for every layer whatever its fan-in; ``lr_mul < 1`` slows a layer down
    (the mapping network uses 0.01).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activate: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, bias)  # (B, in) -> (B, out)
        return lrelu(x) if self.activate else x


class EqualConv2d(nn.Module):
    """Convolution (stride 1, "same" padding) with equalized learning rate: N(0, 1) weights scaled by 1/sqrt(fan_in)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        pad = self.weight.shape[-1] // 2
        x = F.conv2d(
            x, self.weight * self.weight_gain, self.bias, padding=pad
        )  # (B, C_in, H, W) -> (B, C_out, H, W)
        return lrelu(x) if self.activate else x


# ---------------------------------------------------------------------------------------------------- generator
class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per sample by a style (modulation) and renormalised (demodulation).

    The style ``s = affine(w)`` scales the input channels: ``w'_{oik} = g w_{oik} s_i``; demodulation divides each
    output channel by ``sqrt(sum_ik w'^2)``, so a unit-variance input gives a unit-variance output, which replaces
    StyleGAN1's AdaIN without its droplet artefacts. Every sample has its own weights, so the batch runs as one
    grouped convolution with ``groups=B``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        demodulate: bool = True,
        up: bool = False,
    ) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1: an unmodulated conv
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate, self.up = demodulate, up

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        b, c_in = x.shape[:2]
        c_out, _, k, _ = self.weight.shape
        styles = self.affine(w)  # (B, w_dim) -> (B, C_in)
        weight = (
            self.weight[None] * self.weight_gain * styles[:, None, :, None, None]
        )  # (B, C_out, C_in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (B, C_in, 2H, 2W)
        h, w_ = x.shape[-2:]
        x = F.conv2d(
            x.reshape(1, b * c_in, h, w_), weight.reshape(b * c_out, c_in, k, k), padding=k // 2, groups=b
        )  # (1, B C_in, H, W) -> (1, B C_out, H, W)
        return x.reshape(b, c_out, h, w_)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise (one map shared by all channels) times a learned per-channel strength (init 0).

    ``noise_mode``: ``"random"`` draws fresh noise, ``"const"`` uses a fixed map stored in the module (reproducible
    samples), ``"none"`` adds nothing.
    """

    def __init__(self, channels: int, resolution: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: Tensor, noise_mode: str = "random") -> Tensor:
        if noise_mode == "none":
            return x
        if noise_mode == "const":
            noise = self.noise_const
        else:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return x + noise * self.strength  # (B, C, H, W) + (B|1, 1, H, W) * (1, C, 1, 1)


class StyledLayer(nn.Module):
    """Modulated 3×3 convolution (optionally upsampling ×2) → noise → bias → leaky ReLU × sqrt(2)."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, demodulate=True, up=up)
        self.noise = NoiseInjection(out_channels, resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        x = self.noise(self.conv(x, w), noise_mode)  # (B, C_in, H, W) -> (B, C_out, H', W'), H' = H or 2H
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1×1 convolution to image channels, without demodulation (the output scale must stay free)."""

    def __init__(self, in_channels: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]  # (B, C_in, H, W) -> (B, channels, H, W)


class MappingNetwork(nn.Module):
    """``z`` (and labels) → ``w``: pixel norm, then ``num_layers`` equalized-lr dense layers with leaky ReLU.

    When conditional, the one-hot label goes through an equalized dense embedding, is pixel-normalised like ``z`` and
    concatenated with it (as in StyleGAN2-ADA), so noise and class enter with the same scale.
    """

    def __init__(
        self,
        latent_dim: int,
        w_dim: int,
        num_layers: int = 2,
        num_classes: int | None = None,
        lr_mul: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = EqualLinear(num_classes, w_dim) if num_classes is not None else None
        dims = [latent_dim + (w_dim if num_classes is not None else 0)] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *(
                EqualLinear(d_in, d_out, lr_mul=lr_mul, activate=True)
                for d_in, d_out in itertools.pairwise(dims)
            )
        )

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        x = pixel_norm(z)  # (B, latent_dim)
        if self.embed is not None:
            y = self.embed(F.one_hot(labels, self.num_classes).to(z.dtype))  # (B,) -> (B, w_dim)
            x = torch.cat([x, pixel_norm(y)], dim=1)  # (B, latent_dim + w_dim)
        return self.layers(x)  # (B, w_dim)


class SynthesisNetwork(nn.Module):
    """``ws`` of shape ``(B, num_ws, w_dim)`` → image ``(B, channels, S, S)`` before the output ``tanh``.

    Style indices: the 4×4 layer uses ``ws[:, 0]``; the block at each next resolution uses ``ws[:, i]`` and
    ``ws[:, i + 1]`` for its two styled layers and ``ws[:, i + 2]`` for its ToRGB, with ``i = 1, 3, 5, ...``; the
    4×4 ToRGB shares index 1 with the first layer of the 8×8 block. So ``num_ws = 2 * log2(S) - 2``.
    """

    def __init__(
        self, channels: int, image_size: int, w_dim: int, base_channels: int, max_channels: int
    ) -> None:
        super().__init__()
        widths = channel_widths(image_size, base_channels, max_channels)
        resolutions = list(widths)  # 4, 8, ..., S
        self.const = nn.Parameter(torch.randn(1, widths[4], 4, 4))
        self.layers = nn.ModuleList([StyledLayer(widths[4], widths[4], w_dim, 4)])
        self.to_rgbs = nn.ModuleList([ToRGB(widths[4], channels, w_dim)])
        for prev, res in itertools.pairwise(resolutions):
            self.layers.append(StyledLayer(widths[prev], widths[res], w_dim, res, up=True))
            self.layers.append(StyledLayer(widths[res], widths[res], w_dim, res))
            self.to_rgbs.append(ToRGB(widths[res], channels, w_dim))
        self.num_ws = 2 * len(resolutions)

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        x = self.layers[0](self.const.expand(ws.shape[0], -1, -1, -1), ws[:, 0], noise_mode)  # (B, c_4, 4, 4)
        rgb = self.to_rgbs[0](x, ws[:, 1])  # (B, channels, 4, 4)
        for j, to_rgb in enumerate(self.to_rgbs[1:]):
            i = 2 * j + 1
            x = self.layers[i](x, ws[:, i], noise_mode)  # (B, c_r/2, r/2, r/2) -> (B, c_r, r, r)
            x = self.layers[i + 1](x, ws[:, i + 1], noise_mode)
            rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + to_rgb(
                x, ws[:, i + 2]
            )
        return rgb  # (B, channels, S, S)


class StyleGAN2Generator(nn.Module):
    """StyleGAN2-style generator: ``(B, latent_dim)`` latents (and ``(B,)`` labels) → ``(B, channels, S, S)`` in [-1, 1].

    Defaults are sized so that one G+D training step at 32 px, batch 16, takes well under a second on one CPU core
    (about 0.4 s; 0.33 M parameters in G, 0.29 M in the matching discriminator): widths 32 at 32×32 and 64 below,
    ``w_dim=128``, and a 2-layer mapping network as in StyleGAN2-ADA's CIFAR-10 configuration. For quality runs on a
    GPU raise the widths (ADA's CIFAR-10 setting is 512 everywhere: ``base_channels=512, max_channels=512``, with
    ``w_dim=512``).

    Args:
        channels: image channels.
        image_size: output side ``S``, a power of two >= 8.
        latent_dim: size of ``z``.
        num_classes: class-conditional when set: the label is embedded into the mapping network's input.
        w_dim: size of the intermediate latent ``w`` (and of the style inputs).
        base_channels: width at ``S×S``; it doubles at every lower resolution, capped at ``max_channels``.
        max_channels: upper bound of the width.
        num_mapping_layers: dense layers of the mapping network (ADA: 8 for FFHQ, 2 for CIFAR-10).
        mapping_lr_mul: learning-rate multiplier of the mapping network (0.01: the paper's).
        mixing_prob: probability, per training batch, of style mixing regularisation (0 disables it; the paper's 0.9,
            though ADA turns it off for CIFAR-10).
        w_avg_beta: decay of the running average of ``w`` that truncation pulls towards.

    Attributes:
        w_avg: running average of ``w`` over training batches (a buffer, so it is saved and EMA-copied with the net).
        num_ws: number of style vectors the synthesis network consumes.
    """

    w_avg: Tensor

    def __init__(
        self,
        channels: int,
        image_size: int,
        latent_dim: int = 128,
        num_classes: int | None = None,
        w_dim: int = 128,
        base_channels: int = 32,
        max_channels: int = 64,
        num_mapping_layers: int = 2,
        mapping_lr_mul: float = 0.01,
        mixing_prob: float = 0.9,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(
            name,
            channels=channels,
            latent_dim=latent_dim,
            num_classes=num_classes,
            w_dim=w_dim,
            base_channels=base_channels,
            max_channels=max_channels,
            num_mapping_layers=num_mapping_layers,
        )
        check_image_size(name, image_size)
        for arg, value in (("mixing_prob", mixing_prob), ("w_avg_beta", w_avg_beta)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: {arg} must be in [0, 1], got {value!r}")
        if mapping_lr_mul <= 0:
            raise ValueError(f"{name}: mapping_lr_mul must be > 0, got {mapping_lr_mul!r}")
        self.channels, self.image_size, self.latent_dim, self.num_classes = (
            channels,
            image_size,
            latent_dim,
            num_classes,
        )
        self.mixing_prob, self.w_avg_beta = mixing_prob, w_avg_beta
        self.mapping = MappingNetwork(latent_dim, w_dim, num_mapping_layers, num_classes, mapping_lr_mul)
        self.synthesis = SynthesisNetwork(channels, image_size, w_dim, base_channels, max_channels)
        self.num_ws = self.synthesis.num_ws
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def styles(self, z: Tensor, labels: Tensor | None = None, truncation_psi: float = 1.0) -> Tensor:
        """``(B, latent_dim)`` → ``(B, num_ws, w_dim)``: mapping, ``w_avg`` update, style mixing, truncation.

        In training mode ``w_avg`` tracks the batch mean of ``w``, and with probability ``mixing_prob`` the styles after
        a random crossover index come from a second latent (same labels). Truncation ``w_avg + psi (w - w_avg)``
        applies whenever ``truncation_psi != 1``; ``psi = 0`` maps every latent to ``w_avg``.
        """
        w = self.mapping(z, labels)  # (B, w_dim)
        if self.training:
            with torch.no_grad():
                self.w_avg.lerp_(w.detach().mean(dim=0).to(self.w_avg.dtype), 1.0 - self.w_avg_beta)
        ws = w[:, None].expand(-1, self.num_ws, -1)  # (B, num_ws, w_dim)
        if self.training and self.mixing_prob > 0 and torch.rand(()).item() < self.mixing_prob:
            cutoff = int(torch.randint(1, self.num_ws, ()).item())
            w2 = self.mapping(torch.randn_like(z), labels)
            ws = torch.cat([ws[:, :cutoff], w2[:, None].expand(-1, self.num_ws - cutoff, -1)], dim=1)
        if truncation_psi != 1:
            ws = self.w_avg.to(ws.dtype).lerp(ws, truncation_psi)  # dtypes differ under autocast
        return ws

    def forward(
        self,
        z: Tensor,
        labels: Tensor | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str | None = None,
    ) -> Tensor:
        """``noise_mode``: ``"random"``, ``"const"`` (the stored noise maps) or ``"none"``; by default ``"random"`` in
        training mode and ``"const"`` in eval mode, so a fixed ``z`` gives the same sample grid at every epoch (as
        StyleGAN2-ADA's ``generate.py``)."""
        name = type(self).__name__
        check_latents(name, z, self.latent_dim)
        check_labels(name, self.num_classes, labels, z.shape[0])
        if noise_mode is None:
            noise_mode = "random" if self.training else "const"
        lookup("noise_mode", noise_mode, dict.fromkeys(NOISE_MODES))
        ws = self.styles(z, labels, truncation_psi)  # (B, latent_dim) -> (B, num_ws, w_dim)
        return torch.tanh(self.synthesis(ws, noise_mode))  # (B, num_ws, w_dim) -> (B, C, S, S)


# ------------------------------------------------------------------------------------------------ discriminator
class ResBlock(nn.Module):
    """Residual discriminator block: (3×3 conv → avg-pool ×½ → 3×3 conv) + (avg-pool ×½ → 1×1 conv), over sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3, activate=True)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3, activate=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.avg_pool2d(self.conv1(x), 2))  # (B, C_in, H, W) -> (B, C_out, H/2, W/2)
        return (y + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2.0)  # sum of two paths, variance kept


class MinibatchStd(nn.Module):
    """Appends the standard deviation across a group of samples as ``num_channels`` extra feature maps.

    Samples ``n`` and ``n + B/G`` (``G`` = group size) fall in the same group. For each group and each of the
    ``num_channels`` channel slices, the per-position (biased) std over the group is averaged over positions and
    channels of the slice and broadcast to every position of every member. Lets D see a lack of variety (mode
    collapse) in a batch. ``G`` is the largest divisor of the batch size that is at most ``group_size``, so any batch
    size works (a batch of one gets a zero-variance channel).
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, b) + 1) if b % d == 0)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # (G, M, F, c/F, H, W), M = B/G groups
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (M, F, c/F, H, W): std over each group
        y = y.mean(dim=(2, 3, 4))  # (M, F)
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # (B, F, H, W): sample n gets group n mod M
        return torch.cat([x, y], dim=1)  # (B, C + F, H, W)


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2-style residual discriminator: ``(B, channels, S, S)`` (and ``(B,)`` labels) → ``(B,)`` raw logits.

    FromRGB (1×1 conv) at ``S×S`` → one :class:`ResBlock` per halving down to 4×4 → minibatch std → 3×3 conv → dense
    → dense to one logit. When conditional, a projection term ``<embed(y), h> / sqrt(dim h)`` is added, ``h`` being the
    penultimate features (the embedding is N(0, 1) and scaled at run time, like the other equalized layers).
    Widths mirror the generator's: ``base_channels`` at ``S×S``, doubling per halving, capped at ``max_channels``.

    Args:
        channels: image channels.
        image_size: input side ``S``, a power of two >= 8.
        num_classes: class-conditional (projection discriminator) when set.
        base_channels, max_channels: widths, as in :class:`StyleGAN2Generator` (same defaults: 32 and 64).
        mbstd_group_size: group size of the minibatch-std layer (4: the paper's).
        mbstd_channels: number of std feature maps (1: the paper's).
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int | None = None,
        base_channels: int = 32,
        max_channels: int = 64,
        mbstd_group_size: int = 4,
        mbstd_channels: int = 1,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(
            name,
            channels=channels,
            num_classes=num_classes,
            base_channels=base_channels,
            max_channels=max_channels,
            mbstd_group_size=mbstd_group_size,
            mbstd_channels=mbstd_channels,
        )
        check_image_size(name, image_size)
        widths = channel_widths(image_size, base_channels, max_channels)
        if widths[4] % mbstd_channels:
            raise ValueError(
                f"{name}: mbstd_channels={mbstd_channels} must divide the 4×4 width {widths[4]} "
                f"(min(max_channels, base_channels * image_size / 4))"
            )
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        resolutions = sorted(widths, reverse=True)  # S, S/2, ..., 4
        self.from_rgb = EqualConv2d(channels, widths[image_size], 1, activate=True)
        self.blocks = nn.Sequential(*(ResBlock(widths[r], widths[r // 2]) for r in resolutions[:-1]))
        c4 = widths[4]
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_channels)
        self.conv = EqualConv2d(c4 + mbstd_channels, c4, 3, activate=True)
        self.fc = EqualLinear(c4 * 4 * 4, c4, activate=True)
        self.out = EqualLinear(c4, 1)
        self.embed = nn.Embedding(num_classes, c4) if num_classes is not None else None  # N(0, 1) init

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        check_images(name, images, self.channels, self.image_size)
        check_labels(name, self.num_classes, labels, images.shape[0])
        x = self.blocks(self.from_rgb(images))  # (B, C, S, S) -> (B, c_4, 4, 4)
        x = self.conv(self.mbstd(x))  # (B, c_4 + F, 4, 4) -> (B, c_4, 4, 4)
        h = self.fc(x.flatten(1))  # (B, c_4)
        logits = self.out(h).squeeze(1)  # (B,)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(dim=1) / math.sqrt(h.shape[1])
        return logits
