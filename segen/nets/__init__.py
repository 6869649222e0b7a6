"""Plain ``torch.nn`` architectures: no Lightning, no losses, no optimizers."""

from segen.nets.unet import UNet

__all__ = ["UNet"]
