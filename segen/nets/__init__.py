"""Plain ``torch.nn`` architectures: no Lightning, no losses, no optimizers."""

from segen.nets.deeplab import DeepLabV3, DeepLabV3Plus
from segen.nets.maskrcnn import build_maskrcnn
from segen.nets.unet import UNet

__all__ = ["DeepLabV3", "DeepLabV3Plus", "UNet", "build_maskrcnn"]
