"""Plain ``torch.nn`` architectures: no Lightning, no losses, no optimizers."""

from segen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from segen.nets.deeplab import DeepLabV3, DeepLabV3Plus
from segen.nets.maskrcnn import build_maskrcnn
from segen.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from segen.nets.unet import UNet

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DeepLabV3",
    "DeepLabV3Plus",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "UNet",
    "build_maskrcnn",
]
