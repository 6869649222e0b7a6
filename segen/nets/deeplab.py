"""DeepLabV3 (Chen et al., 2017) and DeepLabV3+ (Chen et al., 2018) as plain ``nn.Module`` networks.

Both put Atrous Spatial Pyramid Pooling (ASPP) on a dilated backbone whose deepest features sit at 1/8 or 1/16 of
the input resolution (the *output stride*). DeepLabV3 classifies the ASPP features and upsamples the logits
bilinearly; DeepLabV3+ first upsamples the ASPP features to stride 4 and refines them with the backbone's stride-4
("low-level") features, which sharpens object boundaries.

Backbones come from torchvision, built with ``weights=None``: segen never downloads weights. Pretrained backbone
weights load from a local file (``weights_path``) in torchvision's own state-dict format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from segen.nets.unet import init_classifier
from segen.registry import lookup

__all__ = ["BACKBONES", "DeepLabV3", "DeepLabV3Plus", "build_backbone"]

OUTPUT_STRIDES = (8, 16)


# ---------------------------------------------------------------------------------------------------- backbones
class Backbone(nn.Module):
    """A feature extractor returning ``(low, high)``: stride-4 features and stride-``output_stride`` features.

    Its parameter names are exactly torchvision's (``conv1.weight``, ``layer1.0.bn1.bias``, ``features.0.0.weight``
    ...), minus the classifier, so a torchvision state dict loads into it unchanged.

    Attributes:
        low_channels, high_channels: channel counts of the two outputs.
        output_stride: spatial stride of ``high``.
        first_conv: dotted name of the input convolution (replaced when ``in_channels != 3``).
        classifier_prefixes: key prefixes of a torchvision state dict that belong to the dropped classifier.
        weights_hint: Python expression that gives this backbone's pretrained torchvision weights.
    """

    low_channels: int
    high_channels: int
    output_stride: int
    first_conv: str
    classifier_prefixes: tuple[str, ...]
    weights_hint: str


class ResNetBackbone(Backbone):
    """torchvision ResNet without ``avgpool``/``fc``: low = ``layer1`` (stride 4), high = ``layer4``."""

    classifier_prefixes = ("fc.",)
    first_conv = "conv1"

    def __init__(self, net: ResNet, output_stride: int, weights_hint: str) -> None:
        super().__init__()
        # Same attribute names as torchvision's ResNet, so the state-dict keys match.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.high_channels = net.fc.in_features  # 512 * block.expansion
        self.low_channels = self.high_channels // 8  # layer1 has 64 * block.expansion channels
        self.output_stride = output_stride
        self.weights_hint = weights_hint

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, C, H, W) -> (B, 64, H/4, W/4)
        low = self.layer1(x)  # (B, 64 e, H/4, W/4), e = block expansion (1 or 4)
        x = self.layer3(self.layer2(low))  # (B, 256 e, H/os', W/os'), os' = min(16, output_stride)
        high = self.layer4(x)  # (B, 512 e, H/os, W/os)
        return low, high


class MobileNetV3Backbone(Backbone):
    """torchvision MobileNetV3-Large ``features`` with its last stage dilated: low = stride 4 (24 channels),
    high = stride 16 (960 channels)."""

    classifier_prefixes = ("classifier.",)
    first_conv = "features.0.0"
    weights_hint = "torchvision.models.MobileNet_V3_Large_Weights.DEFAULT"

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features  # same name as in torchvision, so the state-dict keys match
        # Blocks flagged _is_cn halve the resolution; the second of them (stride 4 -> 8) ends the low-level part.
        halving = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
        self.split = halving[1]
        self.low_channels = features[self.split - 1].out_channels
        self.high_channels = features[-1].out_channels
        self.output_stride = 16

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.features[: self.split](x)  # (B, C, H, W) -> (B, 24, H/4, W/4)
        high = self.features[self.split :](low)  # (B, 24, H/4, W/4) -> (B, 960, H/16, W/16)
        return low, high


def _dilate_basic_blocks(layer: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a stride-2 layer of BasicBlocks into a stride-1 dilated one, in place.

    torchvision refuses ``replace_stride_with_dilation`` for BasicBlock (ResNet-18/34), so the convolutions are
    edited after construction, following torchvision's Bottleneck convention: the first 3×3 convolution of the
    layer (the one that had stride 2) keeps the previous dilation, every later 3×3 convolution uses ``dilation``;
    the shortcut's 1×1 convolution loses its stride. The parameters are unchanged, so pretrained weights still load.
    """
    for i, block in enumerate(layer):
        assert isinstance(block, BasicBlock), f"expected BasicBlock, found {type(block).__name__}"
        for conv, d in ((block.conv1, previous_dilation if i == 0 else dilation), (block.conv2, dilation)):
            conv.stride, conv.dilation, conv.padding = (
                (1, 1),
                (d, d),
                (d, d),
            )  # 3×3: padding = dilation keeps size
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _resnet(name: str, weights_enum: str) -> Callable[[int], Backbone]:
    def build(output_stride: int) -> Backbone:
        # output stride 16: layer4 dilated; 8: layer3 and layer4 dilated.
        replace = [False, output_stride == 8, True]
        factory = getattr(torchvision.models, name)
        if name in ("resnet18", "resnet34"):  # BasicBlock: torchvision cannot dilate it, do it by hand
            net = factory(weights=None)
            dilation = 1
            for layer, dilate in zip((net.layer2, net.layer3, net.layer4), replace):
                if dilate:
                    _dilate_basic_blocks(layer, dilation * 2, dilation)
                    dilation *= 2
        else:
            net = factory(weights=None, replace_stride_with_dilation=replace)
        return ResNetBackbone(net, output_stride, f"torchvision.models.{weights_enum}.DEFAULT")

    return build


def _mobilenet_v3_large(output_stride: int) -> Backbone:
    if output_stride != 16:
        raise ValueError(
            f"backbone 'mobilenet_v3_large' supports only output_stride=16 (its last stage is dilated), "
            f"got output_stride={output_stride}; use a ResNet backbone for output_stride=8"
        )
    return MobileNetV3Backbone(torchvision.models.mobilenet_v3_large(weights=None, dilated=True).features)


BACKBONES: dict[str, Callable[[int], Backbone]] = {
    "resnet18": _resnet("resnet18", "ResNet18_Weights"),
    "resnet34": _resnet("resnet34", "ResNet34_Weights"),
    "resnet50": _resnet("resnet50", "ResNet50_Weights"),
    "resnet101": _resnet("resnet101", "ResNet101_Weights"),
    "mobilenet_v3_large": _mobilenet_v3_large,
}


def _replace_first_conv(backbone: Backbone, in_channels: int) -> None:
    """Swap the 3-channel input convolution for an ``in_channels`` one with the same hyper-parameters."""
    parent_name, _, attr = backbone.first_conv.rpartition(".")
    parent = backbone.get_submodule(parent_name) if parent_name else backbone
    old = getattr(parent, attr)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own conv init
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    setattr(parent, attr, new)


def _load_backbone_weights(backbone: Backbone, path: str | Path, name: str, in_channels: int) -> None:
    """Load a torchvision-format state dict from ``path`` into ``backbone`` (strict, classifier keys ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file not found: {str(path)!r}. segen never downloads weights; on a machine with "
            f"network, save torchvision's weights for {name!r} with\n"
            f'    python -c "import torch, torchvision; '
            f"torch.save({backbone.weights_hint}.get_state_dict(), '{name}.pth')\"\n"
            f"then copy {name}.pth here and pass its path as weights_path"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled modules, corrupt files: say which file and what is expected
        raise ValueError(
            f"could not read backbone weights from {str(path)!r} with torch.load(weights_only=True): {err}. "
            f"Expected a state dict (name -> tensor) as saved by torch.save(model.state_dict(), path)"
        ) from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"backbone weights {str(path)!r} hold a {type(state).__name__}, expected a state dict mapping "
            f"parameter names to tensors (torchvision format, e.g. {backbone.weights_hint}.get_state_dict())"
        )
    state = {k: v for k, v in state.items() if not k.startswith(backbone.classifier_prefixes)}
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]  # in the backbone's order, so the first layers come first
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "") or "none"

        first = next(iter(own))
        prefixes = {k[: -len(first)] for k in unexpected if k.endswith("." + first)}
        hint = (
            f"the file's keys carry the prefix {min(prefixes, key=len)!r}: save the state dict without it"
            if prefixes
            else "is this file for another architecture?"
        )
        raise ValueError(
            f"backbone weights {str(path)!r} do not match backbone {name!r}: missing keys: {few(missing)}; "
            f"unexpected keys: {few(unexpected)}. Expected torchvision's key names for {name!r} "
            f"(e.g. {first!r}); {hint}"
        )
    key = f"{backbone.first_conv}.weight"
    weight = state[key]  # (out, 3, k, k) in torchvision files
    if weight.shape[1] != in_channels:
        if weight.shape[1] != 3:
            raise ValueError(
                f"backbone weights {str(path)!r}: {key} has {weight.shape[1]} input channels, expected 3 "
                f"(torchvision RGB weights) or in_channels={in_channels}"
            )
        # RGB filters -> grey-level filters: the mean over RGB, copied to every input channel.
        state[key] = weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs net {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(
            f"backbone weights {str(path)!r} have shapes that do not fit backbone {name!r}: "
            + "; ".join(wrong[:5])
            + (f"; ... ({len(wrong)} in all)" if len(wrong) > 5 else "")
        )
    backbone.load_state_dict(state, strict=True)


def build_backbone(
    name: str, in_channels: int = 3, output_stride: int = 16, weights_path: str | Path | None = None
) -> Backbone:
    """Build backbone ``name`` (see :data:`BACKBONES`) with ``weights=None``, then adapt and load weights."""
    factory = lookup("backbone", name, BACKBONES)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride!r} "
            f"(16: faster, 8: finer features at several times the backbone cost)"
        )
    backbone = factory(output_stride)
    if in_channels != 3:
        _replace_first_conv(backbone, in_channels)
    if weights_path is not None:
        _load_backbone_weights(backbone, weights_path, name, in_channels)
    return backbone


# ---------------------------------------------------------------------------------------------------- heads
def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)  # keeps the spatial size
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's global-context branch: average over the whole image, 1×1 conv, ReLU, broadcast back.

    No normalisation: after pooling there is one value per channel and image, so BatchNorm would fail in training
    with a batch of one (and be noisy with a few). The conv keeps its bias instead.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pooled = F.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))  # (B, C_in, h, w) -> (B, C, 1, 1)
        return pooled.expand(-1, -1, h, w)  # (B, C, h, w); the same as bilinear upsampling of a 1×1 map


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling: a 1×1 conv, one 3×3 conv per dilation, image pooling; concatenated and
    projected by a 1×1 conv. Dilations (6, 12, 18) at output stride 16 see context at several scales."""

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, out_channels, 1)]
            + [_conv_bn_relu(in_channels, out_channels, 3, dilation=d) for d in dilations]
            + [ImagePooling(in_channels, out_channels)]
        )
        self.project = nn.Sequential(
            *_conv_bn_relu(len(self.branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([branch(x) for branch in self.branches], dim=1)  # (B, C_in, h, w) -> (B, n C, h, w)
        return self.project(x)  # (B, C, h, w)


def _init_new_layers(modules: Sequence[nn.Module], classifier: nn.Conv2d) -> None:
    """He init for the ReLU convolutions of the head; the classifier by :func:`~segen.nets.unet.init_classifier`."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    init_classifier(classifier)


# ---------------------------------------------------------------------------------------------------- networks
class _DeepLab(nn.Module):
    """Shared argument checks, backbone and ASPP of :class:`DeepLabV3` and :class:`DeepLabV3Plus`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str,
        output_stride: int,
        weights_path: str | Path | None,
        aspp_channels: int,
        aspp_dilations: Sequence[int] | None,
        dropout: float,
        **widths: int,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        for name, value in {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "aspp_channels": aspp_channels,
            **widths,
        }.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{cls}: {name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{cls}: dropout must be in [0, 1), got {dropout!r}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.backbone = build_backbone(
            backbone, in_channels, output_stride, weights_path
        )  # checks output_stride
        if aspp_dilations is None:  # doubled at stride 8: the same field of view in pixels of the image
            aspp_dilations = tuple(d * 16 // output_stride for d in (6, 12, 18))
        aspp_dilations = tuple(aspp_dilations)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in aspp_dilations):
            raise ValueError(f"{cls}: aspp_dilations must be integers >= 1, got {aspp_dilations!r}")
        self.aspp = ASPP(self.backbone.high_channels, aspp_channels, aspp_dilations, dropout)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}; in_channels={self.in_channels} must match the data's channel count"
            )


class DeepLabV3(_DeepLab):
    """DeepLabV3: dilated backbone → ASPP → 1×1 classifier → bilinear upsampling to the input size.

    Maps ``(B, in_channels, H, W)`` images to ``(B, num_classes, H, W)`` logits, for any ``H, W >= 1``. (With
    BatchNorm in the backbone, training needs more than one value per channel: a batch of 1 with inputs so small
    that the deepest features are 1×1 fails in train mode, as in any BatchNorm network.)

    Args:
        in_channels: image channels. Other than 3, the backbone's first convolution is replaced by one with the
            same kernel, stride and padding; with ``weights_path`` it starts from the pretrained RGB filters
            averaged over R, G, B and repeated for every input channel (so grey-level medical images work).
        num_classes: output classes (logit channels).
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` (default), ``resnet101`` or ``mobilenet_v3_large``
            (output stride 16 only), built from torchvision with ``weights=None``.
        output_stride: resolution of the ASPP input relative to the image: 16 (default) or 8 (finer, slower).
        weights_path: local torchvision state dict for the backbone (e.g. torchvision's ``resnet50-*.pth``);
            ``fc.*``/``classifier.*`` keys are ignored, every other key must match. segen never downloads.
        aspp_channels: width of every ASPP branch and of its output.
        aspp_dilations: dilations of the 3×3 ASPP branches; default (6, 12, 18) at output stride 16, doubled at 8.
        dropout: dropout after the ASPP projection. 0.1 rather than the 0.5 of older DeepLab heads: the BatchNorm
            head is already regularised, and the small datasets segen targets train faster with light dropout.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet50",
        output_stride: int = 16,
        weights_path: str | Path | None = None,
        aspp_channels: int = 256,
        aspp_dilations: Sequence[int] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            backbone,
            output_stride,
            weights_path,
            aspp_channels,
            aspp_dilations,
            dropout,
        )
        self.classifier = nn.Conv2d(aspp_channels, num_classes, kernel_size=1)
        _init_new_layers([self.aspp], self.classifier)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        size = x.shape[-2:]
        _, high = self.backbone(x)  # (B, C, H, W) -> (B, C_high, H/os, W/os)
        logits = self.classifier(self.aspp(high))  # (B, K, H/os, W/os)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, K, H, W)


class DeepLabV3Plus(_DeepLab):
    """DeepLabV3+: DeepLabV3's encoder plus a decoder that fuses the backbone's stride-4 features.

    The ASPP output is upsampled to stride 4, concatenated with the low-level features (projected to
    ``low_level_channels`` so they do not outweigh the semantic ones), refined by two 3×3 convolutions,
    classified, and upsampled to the input size: ``(B, in_channels, H, W) -> (B, num_classes, H, W)``.

    Args: as :class:`DeepLabV3`, plus
        decoder_channels: width of the two 3×3 decoder convolutions.
        low_level_channels: width of the projected stride-4 features (48 in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        backbone: str = "resnet50",
        output_stride: int = 16,
        weights_path: str | Path | None = None,
        aspp_channels: int = 256,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        aspp_dilations: Sequence[int] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            backbone,
            output_stride,
            weights_path,
            aspp_channels,
            aspp_dilations,
            dropout,
            decoder_channels=decoder_channels,
            low_level_channels=low_level_channels,
        )
        self.low_level = _conv_bn_relu(self.backbone.low_channels, low_level_channels, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(aspp_channels + low_level_channels, decoder_channels, 3),
            _conv_bn_relu(decoder_channels, decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        _init_new_layers([self.aspp, self.low_level, self.decoder], self.classifier)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        size = x.shape[-2:]
        low, high = self.backbone(x)  # (B, C_low, H/4, W/4), (B, C_high, H/os, W/os)
        low = self.low_level(low)  # (B, L, H/4, W/4)
        y = self.aspp(high)  # (B, A, H/os, W/os)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)  # (B, A, H/4, W/4)
        y = self.decoder(torch.cat([y, low], dim=1))  # (B, A + L, H/4, W/4) -> (B, D, H/4, W/4)
        logits = self.classifier(y)  # (B, K, H/4, W/4)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, K, H, W)
