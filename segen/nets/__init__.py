"""Plain ``torch.nn`` architectures: no Lightning, no losses, no optimizers."""

from segen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from segen.nets.deeplab import DeepLabV3, DeepLabV3Plus
from segen.nets.maskrcnn import build_maskrcnn
from segen.nets.pixelcnn import GatedPixelCNN
from segen.nets.spade import MultiscalePatchDiscriminator, SegmentationDiscriminator, SPADEGenerator
from segen.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from segen.nets.unet import UNet
from segen.nets.vae import VAEDecoder, VAEEncoder
from segen.nets.vq import VectorQuantizer, VQDecoder, VQEncoder, VQOutput

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DeepLabV3",
    "DeepLabV3Plus",
    "GatedPixelCNN",
    "MultiscalePatchDiscriminator",
    "SPADEGenerator",
    "SegmentationDiscriminator",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "UNet",
    "VAEDecoder",
    "VAEEncoder",
    "VQDecoder",
    "VQEncoder",
    "VQOutput",
    "VectorQuantizer",
    "build_maskrcnn",
]
