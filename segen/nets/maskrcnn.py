"""Mask R-CNN from torchvision, built without downloading anything and sized for the data at hand.

torchvision's ``maskrcnn_resnet50_fpn`` fixes the backbone and anchor sizes for COCO-sized images. segen adds:
a choice of ResNet backbone (``resnet18`` trains on a CPU in tests), anchor sizes for small images, and local
backbone weights (``weights_path``) instead of a download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from segen.registry import lookup

__all__ = ["MASKRCNN_BACKBONES", "build_maskrcnn"]

MASKRCNN_BACKBONES = {name: name for name in ("resnet18", "resnet34", "resnet50", "resnet101")}


def build_maskrcnn(
    num_classes: int,
    backbone: str = "resnet50",
    min_size: int | tuple[int, ...] = 800,
    max_size: int = 1333,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
    weights_path: str | None = None,
    trainable_backbone_layers: int | None = None,
    detections_per_image: int = 100,
    rois_per_image: int = 512,
) -> MaskRCNN:
    """Mask R-CNN with a ResNet-FPN backbone; ``num_classes`` counts the background (class 0).

    Without ``weights_path`` the backbone is trained from scratch with ordinary BatchNorm and every layer trainable;
    with it (a torchvision ResNet state dict on disk) the norms are frozen and ``trainable_backbone_layers``
    (default 3) stages are fine-tuned, as in torchvision's recipe. Images are resized so their short side is
    ``min_size`` (long side at most ``max_size``); ``anchor_sizes`` gives one anchor size per FPN level.
    ``rois_per_image`` proposals per image train the box head (torchvision's 512 is sized for COCO's many objects;
    images with a handful of objects train as well with 128 at a fraction of the cost).
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"build_maskrcnn: num_classes must count the background and be >= 2, got {num_classes!r}"
        )
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level (5), got {tuple(anchor_sizes)}")
    name = lookup("backbone", backbone, MASKRCNN_BACKBONES)
    pretrained = weights_path is not None
    layers = trainable_backbone_layers if trainable_backbone_layers is not None else (3 if pretrained else 5)
    body = resnet_fpn_backbone(
        backbone_name=name,
        weights=None,
        norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d,
        trainable_layers=layers,
    )
    if pretrained:
        _load_backbone(body.body, weights_path)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        body,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_detections_per_img=detections_per_image,
        box_batch_size_per_image=rois_per_image,
    )


def _load_backbone(body: nn.Module, weights_path: str) -> None:
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights not found at {path}; segen never downloads weights. On a machine with network, "
            "save them with: torch.save(torchvision.models.ResNet50_Weights.DEFAULT.get_state_dict(), 'resnet50.pth')"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not hold a torchvision ResNet state dict for this backbone: missing keys "
            f"{sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}"
        )
