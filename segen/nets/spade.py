"""SPADE (Park et al., 2019, "Semantic Image Synthesis with Spatially-Adaptive Normalization") for mask-to-image
synthesis, with the multi-scale PatchGAN discriminator and feature-matching loss of pix2pixHD (Wang et al., 2018).

**Why SPADE.** A generator that only sees the mask at its input loses it on the way: a normalisation layer maps a
region of uniform class to a uniform, near-zero activation, so the class information is "washed away" after a few
layers. :class:`SPADE` normalises without learned parameters and then re-injects the mask in every normalisation
layer as a *spatially varying* scale and shift, ``norm(x) * (1 + gamma(m)) + beta(m)``, computed from the mask
resized to that layer's resolution. The generator is a stack of :class:`SPADEResBlock` with nearest upsampling.

**Fully convolutional in the mask size.** Nothing depends on a fixed resolution: the generator starts from the mask
downsampled by ``2**num_blocks`` (concatenated with the noise ``z`` tiled over it), so any mask whose sides are
divisible by ``2**num_blocks`` gives an image of the mask's size (``image_size`` only sets the default number of
blocks). The noise ``z`` is the only source of diversity for one mask; pix2pix-style generators are known to learn to
ignore it unless the task counteracts that (e.g. a mode-seeking term), which is the task's business, not the net's.

**Discriminator.** :class:`MultiscalePatchDiscriminator` runs one :class:`PatchDiscriminator` per scale (full, ½, ¼,
...) on ``cat(image, mask)``; each returns its intermediate feature maps and, last, its patch logits, so the task can
compute the hinge loss on the logits and :func:`feature_matching_loss` on the features.

Departures from the reference code, all documented where they happen: the first convolution mixes the tiled noise
with the downsampled mask (SPADE's code has either a noise-fed linear layer or a mask-fed convolution); convolution
biases that would be removed by the next instance normalisation are left out (dead parameters); PyTorch's default
initialisation is kept (spectral normalisation makes the weight scale of the normalised convolutions irrelevant).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from segen.nets.dcgan import check_latents, check_positive
from segen.nets.unet import UNet

__all__ = [
    "SPADE",
    "MultiscalePatchDiscriminator",
    "PatchDiscriminator",
    "SPADEGenerator",
    "SPADEResBlock",
    "SegmentationDiscriminator",
    "check_class_ids",
    "check_masks",
    "class_balance_weights",
    "feature_matching_loss",
    "one_hot_masks",
]

_D_MAX_CHANNELS = 512  # pix2pixHD's cap on the discriminator width


# ------------------------------------------------------------------------------------------------ mask helpers
def check_class_ids(
    masks: Tensor, num_classes: int, ignore_index: int = 255, owner: str = "one_hot_masks"
) -> None:
    """Fail loudly when ``masks`` hold a value outside ``[0, num_classes)`` that is not ``ignore_index``.

    ``bad.any()`` reads the result on the host: free on CPU, one sync on an accelerator (so a training loop checks its
    masks before they move there; see :meth:`~segen.tasks.mask_to_image.MaskToImageTask.on_before_batch_transfer`).
    """
    keep = masks != ignore_index  # (B, H, W)
    bad = keep & ((masks < 0) | (masks >= num_classes))
    if bad.any():
        values = torch.unique(masks[bad]).tolist()
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            f"{owner}: class ids must be in [0, {num_classes}) (num_classes={num_classes}) or equal "
            f"ignore_index={ignore_index}, found {shown}"
        )


def one_hot_masks(masks: Tensor, num_classes: int, ignore_index: int = 255, validate: bool = True) -> Tensor:
    """``(B, H, W)`` integer class ids → ``(B, K, H, W)`` float one-hot maps; ``ignore_index`` pixels get all zeros.

    Shapes and dtypes are always checked (free); ``validate=True`` also checks the values with :func:`check_class_ids`
    (one host sync on an accelerator). ``validate=False`` is for masks checked before, on the host: an id outside the
    classes then fails inside ``F.one_hot`` on CPU and with a device-side assert on a GPU, not with a clear message.
    """
    check_positive("one_hot_masks", num_classes=num_classes)
    integer = not (masks.dtype.is_floating_point or masks.dtype.is_complex or masks.dtype == torch.bool)
    if masks.ndim != 3 or not integer:
        raise ValueError(
            f"one_hot_masks expects class ids: an integer tensor of shape (B, H, W), "
            f"got {masks.dtype} of shape {tuple(masks.shape)}"
        )
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"one_hot_masks: ignore_index={ignore_index} is also a class id in [0, {num_classes}); "
            f"use an index outside the classes (e.g. 255)"
        )
    if validate:
        check_class_ids(masks, num_classes, ignore_index)
    keep = masks != ignore_index  # (B, H, W)
    one_hot = F.one_hot(masks.where(keep, 0), num_classes) * keep[..., None]  # (B, H, W, K)
    return one_hot.permute(0, 3, 1, 2).to(torch.get_default_dtype())  # (B, K, H, W)


def check_masks(owner: str, masks: Tensor, num_classes: int, batch: int | None = None) -> None:
    """Masks must be a float ``(B, num_classes, h, w)`` tensor (one-hot maps, see :func:`one_hot_masks`)."""
    if masks.ndim != 4 or masks.shape[1] != num_classes or not masks.dtype.is_floating_point:
        raise ValueError(
            f"{owner} expects masks as float one-hot maps of shape (B, {num_classes}, H, W) "
            f"(num_classes={num_classes}; one_hot_masks converts (B, H, W) class ids), "
            f"got {masks.dtype} of shape {tuple(masks.shape)}"
        )
    if batch is not None and masks.shape[0] != batch:
        raise ValueError(f"{owner}: masks have batch size {masks.shape[0]}, expected {batch} (the input's)")


def _conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    bias: bool = True,
    spectral_norm: bool = False,
) -> nn.Conv2d:
    """A ``Conv2d`` ("same" padding by default), wrapped in spectral normalisation (Miyato et al., 2018) if asked."""
    padding = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    return parametrizations.spectral_norm(conv) if spectral_norm else conv


# ---------------------------------------------------------------------------------------------------- generator
def _halvings(owner: str, image_size: int) -> int:
    """The default number of SPADE upsamplings for ``image_size``: halve while the side is even and >= 8, so the
    coarsest map is 4×4 for powers of two and 5×5 to 7×7 for sides such as 20, 28 or 48."""
    side, halvings = image_size, 0
    while isinstance(side, int) and side >= 8 and side % 2 == 0:
        side, halvings = side // 2, halvings + 1
    if isinstance(image_size, bool) or not isinstance(image_size, int) or halvings == 0 or side > 7:
        raise ValueError(
            f"{owner}: image_size={image_size!r} sets no number of upsamplings: it needs a side that is 4, 5, 6 or 7 "
            f"times a power of two (e.g. 28, 32, 48, 64); give num_blocks=n for masks whose sides are divisible by 2**n"
        )
    return halvings


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``(B, C, H, W)`` features and ``(B, K, h, w)`` masks → ``(B, C, H, W)``.

    ``out = norm(x) * (1 + gamma(m)) + beta(m)`` with ``norm`` a parameter-free instance normalisation and ``m`` the
    masks resized to ``(H, W)`` (nearest, so they stay one-hot); ``gamma`` and ``beta`` are 3×3 convolutions on a
    shared 3×3 convolution + ReLU of ``m``. ``1 + gamma`` makes a zero ``gamma`` the identity scale.

    Args:
        channels: channels ``C`` of the normalised features.
        num_classes: channels ``K`` of the masks.
        hidden: width of the shared convolution (128 in the paper).
        bias: bias of the ``beta`` convolution (a per-channel constant shift). :class:`SPADEResBlock` turns it off in
            a learned shortcut whose result is instance-normalised next: through the 1×1 convolution a constant stays
            a constant, which the normalisation removes, so the bias would get no gradient.
    """

    def __init__(self, channels: int, num_classes: int, hidden: int = 128, *, bias: bool = True) -> None:
        super().__init__()
        check_positive(type(self).__name__, channels=channels, num_classes=num_classes, hidden=hidden)
        self.channels, self.num_classes, self.hidden = channels, num_classes, hidden
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(_conv(num_classes, hidden, 3), nn.ReLU())
        self.gamma = _conv(hidden, channels, 3)
        self.beta = _conv(hidden, channels, 3, bias=bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_classes={self.num_classes}, hidden={self.hidden}"

    def forward(self, x: Tensor, masks: Tensor) -> Tensor:
        name = type(self).__name__
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"{name} expects features of shape (B, {self.channels}, H, W) (channels={self.channels}), "
                f"got {tuple(x.shape)}"
            )
        check_masks(name, masks, self.num_classes, x.shape[0])
        if masks.shape[-2:] != x.shape[-2:]:
            masks = F.interpolate(masks, size=x.shape[-2:], mode="nearest")  # (B, K, h, w) -> (B, K, H, W)
        # At one pixel x - mean(x) is exactly 0, but torch's instance norm refuses such an input.
        one_pixel = x.shape[-2] * x.shape[-1] == 1
        normalized = x - x.mean(dim=(2, 3), keepdim=True) if one_pixel else self.norm(x)  # (B, C, H, W)
        h = self.shared(masks)  # (B, hidden, H, W)
        return normalized * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    """SPADE residual block: ``(B, in, H, W)`` features and ``(B, K, h, w)`` masks → ``(B, out, H, W)``.

    Residual branch: SPADE → LeakyReLU(0.2) → 3×3 conv to ``min(in, out)`` → SPADE → LeakyReLU(0.2) → 3×3 conv to
    ``out``. Shortcut: the identity when ``in == out``, else SPADE → 1×1 conv without bias (a *learned shortcut*).

    Args:
        in_channels, out_channels: widths of the input and the output.
        num_classes: channels ``K`` of the masks.
        hidden: width of each SPADE's shared convolution.
        spectral_norm: spectral normalisation on the block's convolutions (not on SPADE's), as in the paper's code.
        bias: whether the block may add per-channel constants to its output: the bias of the last convolution and
            the shift bias of the shortcut's SPADE. Pass ``False`` when the output is instance-normalised before any
            other use (as :class:`SPADEGenerator` does when a learned-shortcut block follows): normalisation removes
            per-channel constants, so those biases would get no gradient. The first convolution never has a bias,
            for the same reason (its output is normalised at once).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        hidden: int = 128,
        spectral_norm: bool = True,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_positive(
            type(self).__name__,
            in_channels=in_channels,
            out_channels=out_channels,
            num_classes=num_classes,
            hidden=hidden,
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        middle = min(in_channels, out_channels)
        self.norm_0 = SPADE(in_channels, num_classes, hidden)
        self.conv_0 = _conv(in_channels, middle, 3, bias=False, spectral_norm=spectral_norm)
        self.norm_1 = SPADE(middle, num_classes, hidden)
        self.conv_1 = _conv(middle, out_channels, 3, bias=bias, spectral_norm=spectral_norm)
        self.learned_shortcut = in_channels != out_channels
        if self.learned_shortcut:
            # Its shift bias is dead like conv_1's when bias=False: through a 1×1 convolution a constant stays one.
            self.norm_s = SPADE(in_channels, num_classes, hidden, bias=bias)
            self.conv_s = _conv(in_channels, out_channels, 1, bias=False, spectral_norm=spectral_norm)

    def forward(self, x: Tensor, masks: Tensor) -> Tensor:
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, masks), 0.2))  # (B, in, H, W) -> (B, middle, H, W)
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, masks), 0.2))  # (B, middle, H, W) -> (B, out, H, W)
        shortcut = self.conv_s(self.norm_s(x, masks)) if self.learned_shortcut else x  # (B, out, H, W)
        return shortcut + dx


class SPADEGenerator(nn.Module):
    """SPADE generator: ``(B, latent_dim)`` noise and ``(B, K, H, W)`` one-hot masks → ``(B, channels, H, W)`` in
    ``[-1, 1]``, for any ``H, W`` divisible by ``2**num_blocks``.

    The masks are downsampled (nearest) to ``(H, W) / 2**n`` and concatenated with ``z`` tiled over that grid; a 3×3
    convolution maps them to the first width. Then, per scale, a :class:`SPADEResBlock` and a nearest ×2 upsampling;
    then a last block at full resolution, LeakyReLU(0.2), a 3×3 convolution to ``channels`` and ``tanh``. Widths:
    ``min(max_channels, base_channels * 2**k)`` at ``(H, W) / 2**k``; each block ends at the width of the next (finer)
    resolution, the last keeps ``base_channels`` (64 px, defaults: 512, 512, 256, 128, 64 from 4×4 to 64×64).

    Args:
        num_classes: channels ``K`` of the masks.
        channels: image channels.
        image_size: only sets the default ``num_blocks``: the upsamplings from 4×4 to ``image_size``
            (``log2(image_size) - 2``), or from 5×5, 6×6 or 7×7 for sides such as 20, 28 or 48 (the generator
            upsamples by exactly 2 with nearest neighbours, so its masks need sides divisible by ``2**n``).
        latent_dim: size of ``z``.
        base_channels: width at full resolution; it doubles at each coarser one, capped at ``max_channels``.
        max_channels: upper bound of the width.
        num_blocks: number of upsamplings ``n`` (overrides ``image_size``); masks need sides divisible by ``2**n``.
        spectral_norm: spectral normalisation on the residual blocks' convolutions (the paper's choice).
        hidden: width of every SPADE's shared convolution (128 in the paper; small values for fast tests).
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        image_size: int = 64,
        latent_dim: int = 64,
        base_channels: int = 64,
        max_channels: int = 512,
        num_blocks: int | None = None,
        spectral_norm: bool = True,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(
            name,
            num_classes=num_classes,
            channels=channels,
            latent_dim=latent_dim,
            base_channels=base_channels,
            max_channels=max_channels,
            num_blocks=num_blocks,
            hidden=hidden,
        )
        if num_blocks is None:
            num_blocks = _halvings(name, image_size)
        else:
            check_positive(name, image_size=image_size)
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size
        self.latent_dim, self.num_blocks = latent_dim, num_blocks

        n = num_blocks
        widths = [min(max_channels, base_channels * 2**k) for k in range(n, -1, -1)]  # coarsest ... full res
        pairs = [*itertools.pairwise(widths), (widths[-1], widths[-1])]  # (in, out) of the n + 1 blocks
        # A per-channel constant added before a learned-shortcut block is instance-normalised away on both of its
        # paths (and passes unchanged through identity-shortcut blocks): such a bias would get no gradient.
        identity_after = [all(i == o for i, o in pairs[j + 1 :]) for j in range(-1, n + 1)]
        self.head = _conv(num_classes + latent_dim, widths[0], 3, bias=identity_after[0])
        self.blocks = nn.ModuleList(
            SPADEResBlock(c_in, c_out, num_classes, hidden, spectral_norm, bias=identity_after[j + 1])
            for j, (c_in, c_out) in enumerate(pairs)
        )
        self.to_image = _conv(widths[-1], channels, 3)

    def forward(self, z: Tensor, masks: Tensor) -> Tensor:
        name = type(self).__name__
        check_latents(name, z, self.latent_dim)
        check_masks(name, masks, self.num_classes, z.shape[0])
        factor = 2**self.num_blocks
        h, w = masks.shape[-2:]
        if h % factor or w % factor:
            raise ValueError(
                f"{name}: mask height and width must be divisible by 2**num_blocks = {factor} "
                f"(num_blocks={self.num_blocks}), got {h}×{w}; crop or pad the masks, or build the generator with "
                f"fewer blocks"
            )
        size = (h // factor, w // factor)
        x = torch.cat(
            [F.interpolate(masks, size=size, mode="nearest"), z[:, :, None, None].expand(-1, -1, *size)],
            dim=1,
        )  # (B, K + latent_dim, H/2^n, W/2^n)
        x = self.head(x)  # (B, c_n, H/2^n, W/2^n)
        for block in self.blocks[:-1]:
            x = F.interpolate(
                block(x, masks), scale_factor=2, mode="nearest"
            )  # (B, c_k, r, r') -> (B, c_k-1, 2r, 2r')
        x = self.blocks[-1](x, masks)  # (B, base, H, W)
        return torch.tanh(self.to_image(F.leaky_relu(x, 0.2)))  # (B, channels, H, W)


# ------------------------------------------------------------------------------------------------ discriminator
class PatchDiscriminator(nn.Module):
    """One pix2pixHD PatchGAN: ``(B, in_channels, H, W)`` → its intermediate features and, last, ``(B, 1, h, w)``
    patch logits.

    4×4 convolution stride 2 + LeakyReLU(0.2) → ``num_layers - 2`` 4×4 convolutions (stride 2, the last stride 1)
    each with instance normalisation and LeakyReLU(0.2), widths doubling up to 512 → a 4×4 convolution stride 1 to one
    channel. Padding 2 (pix2pixHD's ``ceil((4 - 1) / 2)``, also SPADE's): a stride-2 layer maps a side ``s`` to
    ``s // 2 + 1`` and a stride-1 layer to ``s + 1``, so even small coarse scales keep several logits (padding 1
    would shrink a 16-px input to 2×2 logits with ``num_layers=4``). ``num_layers`` counts every convolution: the
    papers' defaults (pix2pixHD ``n_layers=3``, SPADE ``n_layers_D=4``) are ``num_layers=5``.
    """

    def __init__(
        self, in_channels: int, base_channels: int = 64, num_layers: int = 4, spectral_norm: bool = True
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, in_channels=in_channels, base_channels=base_channels, num_layers=num_layers)
        if num_layers < 2:
            raise ValueError(
                f"{name}: num_layers counts every convolution, the first and the logit one included, so it must "
                f"be >= 2, got {num_layers}"
            )
        widths = [base_channels]
        for _ in range(num_layers - 2):
            widths.append(min(widths[-1] * 2, _D_MAX_CHANNELS))
        layers = [
            nn.Sequential(
                _conv(in_channels, widths[0], 4, 2, 2, spectral_norm=spectral_norm), nn.LeakyReLU(0.2)
            )
        ]
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths), start=1):
            stride = 1 if i == num_layers - 2 else 2
            layers.append(
                nn.Sequential(
                    # No bias: instance normalisation removes it.
                    _conv(c_in, c_out, 4, stride, 2, bias=False, spectral_norm=spectral_norm),
                    nn.InstanceNorm2d(c_out, affine=False),
                    nn.LeakyReLU(0.2),
                )
            )
        layers.append(nn.Sequential(_conv(widths[-1], 1, 4, 1, 2, spectral_norm=spectral_norm)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)  # (B, c, s, s') -> (B, c', s // 2 + 1 or s + 1, ...)
            features.append(x)
        return features  # the last is (B, 1, h, w)


class MultiscalePatchDiscriminator(nn.Module):
    """pix2pixHD multi-scale discriminator, conditioned on the masks: ``(B, C, H, W)`` images and ``(B, K, H, W)``
    one-hot masks → one list per scale of :class:`PatchDiscriminator` features, the last being the ``(B, 1, h, w)``
    patch logits.

    Scale 0 sees the full resolution; each next scale sees the previous images average-pooled (3×3, stride 2,
    padding 1, ``count_include_pad=False``, so a side ``s`` becomes ``ceil(s / 2)``) and the masks resized to the same
    size with nearest interpolation (so they stay one-hot). The scales have the same architecture but their own
    weights: the coarse ones judge global layout, the full-resolution one fine texture.

    Args:
        num_classes: channels ``K`` of the masks.
        channels: image channels.
        num_scales: number of PatchGANs; the images' sides must be >= ``2**num_scales``, so the coarsest scale sees at
            least 2 pixels per side.
        base_channels, num_layers: of each :class:`PatchDiscriminator`.
        spectral_norm: spectral normalisation on every convolution (the SPADE paper applies it to all layers).
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        num_scales: int = 2,
        base_channels: int = 64,
        num_layers: int = 4,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        check_positive(type(self).__name__, num_classes=num_classes, channels=channels, num_scales=num_scales)
        self.num_classes, self.channels, self.num_scales = num_classes, channels, num_scales
        self.scales = nn.ModuleList(
            PatchDiscriminator(channels + num_classes, base_channels, num_layers, spectral_norm)
            for _ in range(num_scales)
        )

    def forward(self, images: Tensor, masks: Tensor) -> list[list[Tensor]]:
        name = type(self).__name__
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"{name} expects images of shape (B, {self.channels}, H, W) (channels={self.channels}), "
                f"got {tuple(images.shape)}"
            )
        check_masks(name, masks, self.num_classes, images.shape[0])
        if masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"{name}: masks {tuple(masks.shape[-2:])} and images {tuple(images.shape[-2:])} must have the same "
                f"height and width"
            )
        smallest = 2**self.num_scales
        if min(images.shape[-2:]) < smallest:
            raise ValueError(
                f"{name}: with num_scales={self.num_scales} the image sides must be >= {smallest}, got "
                f"{tuple(images.shape[-2:])}"
            )
        outputs = []
        for i, scale in enumerate(self.scales):
            if i > 0:
                images = F.avg_pool2d(
                    images, 3, 2, 1, count_include_pad=False
                )  # (B, C, s, s') -> (B, C, ⌈s/2⌉, ...)
                masks = F.interpolate(masks, size=images.shape[-2:], mode="nearest")
            outputs.append(scale(torch.cat([images, masks], dim=1)))  # input (B, C + K, s, s')
        return outputs


class SegmentationDiscriminator(nn.Module):
    """OASIS discriminator (Schönfeld et al., 2021, "You Only Need Adversarial Supervision for Semantic Image
    Synthesis"): a segmentation network that labels every pixel of ``(B, C, H, W)`` images with one of the ``K``
    classes or with an extra class ``K``, *fake* → ``(B, K + 1, H, W)`` logits.

    **Why.** A PatchGAN that sees ``cat(image, mask)`` only says "real or fake" per patch, and must discover from that
    one bit how a region of class ``k`` should look. This discriminator is trained as a segmenter on real images and
    to call every generated pixel fake; the generator is trained to have its pixels segmented as their mask's class.
    The generator is told per pixel which class its painting fails to show, which is exactly what the segmentation
    score measures. It needs no feature-matching or perceptual (VGG) loss. On segen's shapes, where a shape's colour
    is random and only its outline tells the class, the PatchGAN + feature-matching pair reached a segmentation score
    of 0.23-0.27 after 400 generator updates and this one 0.31-0.36 (README, "Mask-to-image synthesis").

    The network is segen's :class:`~segen.nets.unet.UNet` (group normalisation by default: its statistics do not
    depend on the batch, so real and fake batches, DDP ranks and tiny batches are treated alike). OASIS's own
    discriminator is a deeper residual U-Net with spectral normalisation; LabelMix and 3-D noise are left out.

    Args:
        num_classes: classes ``K`` of the masks (the logits have ``K + 1`` channels, the last is *fake*).
        channels: image channels.
        base_channels, depth, norm: of the U-Net (depth 4 sees a 64-px image at 4×4 in its bottleneck).
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        base_channels: int = 32,
        depth: int = 4,
        norm: str = "group",
    ) -> None:
        super().__init__()
        check_positive(type(self).__name__, num_classes=num_classes, channels=channels)
        self.num_classes, self.channels = num_classes, channels
        self.net = UNet(channels, num_classes + 1, base_channels=base_channels, depth=depth, norm=norm)

    @staticmethod
    def depth_for(image_size: int) -> int:
        """The default U-Net depth for ``image_size``: ``log2(image_size) - 2``, between 1 and 4, so the bottleneck is
        4×4 for 64 px and up and the receptive field covers whole objects."""
        return max(1, min(4, int(image_size).bit_length() - 3))

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {self.channels}, H, W) "
                f"(channels={self.channels}), got {tuple(images.shape)}"
            )
        return self.net(images)  # (B, K + 1, H, W)


# ---------------------------------------------------------------------------------------------------------- loss
def class_balance_weights(masks: Tensor) -> Tensor:
    """OASIS's per-pixel weights of the class-balanced cross-entropy: one-hot ``(B, K, H, W)`` masks → ``(B, H, W)``.

    A pixel of class ``c`` gets ``N / (K' * n_c)``: ``n_c`` pixels of class ``c`` in the batch, ``N`` labelled
    pixels, ``K'`` classes present. Every present class then weighs the same in the mean over pixels, so a small
    class (a thin shape, a pole) matters as much as the background, and the weights average to 1. Unlabelled pixels
    (all-zero one-hot vectors) get 0.
    """
    counts = masks.sum(dim=(0, 2, 3))  # (K,) pixels per class
    present = counts > 0
    weight = counts.sum() / (present.sum().clamp(min=1) * counts.clamp(min=1)) * present  # (K,)
    return (masks * weight.to(masks.dtype)[None, :, None, None]).sum(dim=1)  # (B, H, W)


def feature_matching_loss(fake_features: list[list[Tensor]], real_features: list[list[Tensor]]) -> Tensor:
    """pix2pixHD's feature-matching loss with weight 1: the mean over scales of the sum over the intermediate layers
    (every feature map but the last, the logits) of ``L1(fake, real.detach())`` (mean absolute difference).

    Both arguments are :class:`MultiscalePatchDiscriminator` outputs; the real features are detached, so only the
    generator (through the fake features) is trained by it. The task multiplies it by its weight (10 in the papers).
    """
    if len(fake_features) != len(real_features) or not fake_features:
        raise ValueError(
            f"feature_matching_loss: fake and real features must have the same, nonzero number of scales, got "
            f"{len(fake_features)} and {len(real_features)}"
        )
    total = fake_features[0][0].new_zeros(())
    for s, (fake, real) in enumerate(zip(fake_features, real_features)):
        if len(fake) != len(real):
            raise ValueError(
                f"feature_matching_loss: scale {s} has {len(fake)} fake and {len(real)} real feature maps"
            )
        for layer, (f, r) in enumerate(zip(fake[:-1], real[:-1])):
            if f.shape != r.shape:
                raise ValueError(
                    f"feature_matching_loss: scale {s}, layer {layer}: fake {tuple(f.shape)} and real "
                    f"{tuple(r.shape)} shapes differ"
                )
            total = total + F.l1_loss(f, r.detach())
    return total / len(fake_features)
