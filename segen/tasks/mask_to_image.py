"""Mask-to-image synthesis (SPADE, Park et al. 2019): a GAN whose generator paints an image for a semantic mask.

The bridge between segen's two halves: a segmentation data set's ``(image, mask)`` pairs train a generator that
turns a mask (plus noise, for diversity) into an image, so new masks — edited predictions, procedural layouts —
become new labelled training images (``experiments/scripts/synthetic_augmentation.py``).

It is a :class:`~segen.tasks.gan.GANTask` with other nets and losses; manual optimisation, the EMA generator, DDP
gradient averaging, mixed precision and the exact resume are the GAN task's. The generator is a
:class:`~segen.nets.spade.SPADEGenerator`; ``m`` is the one-hot mask. Two discriminators (``discriminator_type``):

``"segmentation"`` (default; OASIS, Schönfeld et al. 2021): a :class:`~segen.nets.spade.SegmentationDiscriminator`
labels each pixel with one of the ``K`` classes or *fake*; ``CE_w`` is the class-balanced cross-entropy
(:func:`~segen.nets.spade.class_balance_weights`)::

    D step:  CE_w(D(x), m) + CE(D(G(z, m)), fake)
    G step:  CE_w(D(G(z, m)), m)

``"patch"`` (SPADE / pix2pixHD): a :class:`~segen.nets.spade.MultiscalePatchDiscriminator` sees the image
concatenated with the mask::

    D step:  hinge(D(x, m), D(G(z, m), m)) averaged over the discriminator's scales
    G step:  hinge_g(D(G(z, m), m)) + feature_matching * sum_scales sum_layers L1(D_l(G(z, m)), D_l(x))

Why the default is the segmentation one: the papers' PatchGAN recipe relies on a VGG perceptual loss, which needs
ImageNet weights (segen never downloads); without it, on shapes whose colour is random and whose outline alone tells
the class, it reached a segmentation score of 0.23-0.27 after 400 generator updates (0.25-0.29 after 1600), the
segmentation discriminator 0.31-0.36 after 400 (one seed each, the synthetic-data script's 32-px nets; on the
64-px config, 1 epoch: 0.217 -> 0.382, and 0.548 with the U-Net's classifier-init fix; README, "Mask-to-image synthesis").

**Images.** Segmentation data modules normalise images with their ``mean``/``std``; the generator works in
``[-1, 1]``. The task maps batches to ``[-1, 1]`` with the data's ``mean``/``std`` (linked by the CLI, or read from
``trainer.datamodule``, or given), and back when a segmentation network looks at generated images.

**Quality: the segmentation score** (pix2pix's "FCN score"). A segmentation network trained on *real* images
(``segmenter``: a :class:`~segen.tasks.segmentation.SegmentationTask` checkpoint) segments images generated from the
validation masks; the mIoU against those masks is ``val/seg_score``, next to the same network's mIoU on the real
validation images, ``val/seg_score_real`` (the ceiling). Without a segmenter only ``val/d_real`` is logged.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex

from segen.nets.diffaugment import DIFFAUGMENT_OPS, parse_policy
from segen.nets.spade import (
    MultiscalePatchDiscriminator,
    SegmentationDiscriminator,
    SPADEGenerator,
    check_class_ids,
    class_balance_weights,
    feature_matching_loss,
    one_hot_masks,
)
from segen.registry import lookup
from segen.tasks._parts import drop_object_hparams, own_hyperparameters, resolve_checkpoint
from segen.tasks.batches import check_image_dtype, describe_batch
from segen.tasks.gan import DiscriminatorFactory, GANTask, GeneratorFactory

__all__ = ["MaskToImageTask"]


def _patch_discriminator(channels: int, image_size: int, num_classes: int | None) -> nn.Module:
    """The ``"patch"`` discriminator factory (the shape every GAN discriminator factory receives)."""
    return MultiscalePatchDiscriminator(num_classes=num_classes, channels=channels)


def _segmentation_discriminator(channels: int, image_size: int, num_classes: int | None) -> nn.Module:
    """The ``"segmentation"`` discriminator factory, its depth set by ``image_size``
    (:meth:`~segen.nets.spade.SegmentationDiscriminator.depth_for`)."""
    depth = SegmentationDiscriminator.depth_for(image_size)
    return SegmentationDiscriminator(num_classes=num_classes, channels=channels, depth=depth)


DISCRIMINATOR_TYPES = {"segmentation": _segmentation_discriminator, "patch": _patch_discriminator}


def _check_discriminator_kind(discriminator: Any, discriminator_type: str) -> None:
    """segen's own discriminators must match ``discriminator_type``: their outputs and losses differ."""
    kinds = {"segmentation": SegmentationDiscriminator, "patch": MultiscalePatchDiscriminator}
    for kind, cls in kinds.items():
        if isinstance(discriminator, cls) and kind != discriminator_type:
            raise ValueError(
                f"MaskToImageTask: a {cls.__name__} was given with discriminator_type={discriminator_type!r}; "
                f"pass discriminator_type={kind!r} for it"
            )


def _load_segmenter(segmenter: str | LightningModule) -> LightningModule:
    if isinstance(segmenter, nn.Module):
        return segmenter
    from segen.tasks.segmentation import SegmentationTask

    hint = "train one on real images first (e.g. `segen fit -c experiments/configs/unet_shapes.yaml`)"
    path = resolve_checkpoint(str(segmenter), "MaskToImageTask: no segmenter checkpoint", hint)
    if not path.is_file():
        raise FileNotFoundError(
            f"MaskToImageTask: the segmenter checkpoint {str(path)!r} does not exist; {hint}"
        )
    with own_hyperparameters():
        return SegmentationTask.load_from_checkpoint(path, map_location="cpu")


class MaskToImageTask(GANTask):
    """SPADE mask-to-image GAN; ``generate(masks)`` returns images in ``[-1, 1]`` of the masks' size.

    Args:
        num_classes: classes ``K`` of the masks (linked from the data module by the CLI).
        channels, image_size: image channels, and the training size (sets the generator's number of upsamplings;
            ``generate`` takes any size divisible by ``2**num_blocks``).
        latent_dim: size of the noise ``z``.
        generator, discriminator: modules or factories (called with ``channels``, ``image_size``, ``latent_dim``,
            ``num_classes`` / ``channels``, ``image_size``, ``num_classes``); default SPADE and the
            ``discriminator_type``'s network.
        discriminator_type: ``"segmentation"`` (default: OASIS's per-pixel ``K + 1``-class discriminator, a
            :class:`~segen.nets.spade.SegmentationDiscriminator`; a given ``discriminator`` must return
            ``(B, K + 1, H, W)`` logits for images) or ``"patch"`` (a mask-conditioned multi-scale PatchGAN with the
            hinge loss and feature matching; a given ``discriminator`` takes ``(images, masks)`` and returns
            :class:`~segen.nets.spade.MultiscalePatchDiscriminator`'s per-scale feature lists).
        feature_matching: weight of pix2pixHD's discriminator feature-matching loss, ``"patch"`` only (default 10,
            the papers'); the segmentation discriminator has no feature maps to match (``None`` or 0 there).
        diffaugment: DiffAugment policy for D's inputs, e.g. ``"color,translation"`` (for small data sets; off by
            default): translation and cutout move the image and its mask together, colour changes the image only.
        ema_decay: decay of the EMA generator used by ``generate`` and the metrics (``None``: no EMA).
        lr_g, lr_d, betas: Adam's settings; 5e-4 for both, betas (0, 0.999). The papers' two time scales (1e-4 for
            G, 4e-4 for D) are tuned for batches of 32 and hundreds of epochs; at segen's CPU-sized budgets (400
            generator updates, shapes, 32 px) 5e-4 gave a higher segmentation score with either discriminator
            (segmentation 0.355 vs 0.307, PatchGAN 0.266 vs 0.226; README).
        optimizer_g, optimizer_d, scheduler_g, scheduler_d: LightningCLI callables replacing the defaults.
        segmenter: a ``SegmentationTask`` checkpoint path or glob (newest match), or a module, for
            ``val/seg_score``; ``None``: no segmentation score.
        mean, std: the normalisation of the data's images (default: the data module's ``mean``/``std``).
        ignore_index: mask value of unlabelled pixels (an all-zero one-hot vector for the generator).
        num_fixed_samples, seed: fixed noise for image grids, and the seed of all noise.
        nan_policy: ``"raise"`` | ``"skip"`` | ``"off"``: what a non-finite training loss does
            (:class:`~segen.tasks.base.SegenTask`).
    """

    default_generator = SPADEGenerator
    default_discriminator = staticmethod(_segmentation_discriminator)

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        image_size: int = 64,
        latent_dim: int = 64,
        generator: GeneratorFactory | nn.Module | None = None,
        discriminator: DiscriminatorFactory | nn.Module | None = None,
        discriminator_type: str = "segmentation",
        feature_matching: float | None = None,
        diffaugment: str | None = None,
        ema_decay: float | None = 0.999,
        lr_g: float = 5e-4,
        lr_d: float = 5e-4,
        betas: tuple[float, float] = (0.0, 0.999),
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        scheduler_g: LRSchedulerCallable | None = None,
        scheduler_d: LRSchedulerCallable | None = None,
        segmenter: str | nn.Module | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        ignore_index: int = 255,
        num_fixed_samples: int = 16,
        seed: int = 0,
        nan_policy: str = "raise",
    ) -> None:
        default_discriminator = lookup("discriminator_type", discriminator_type, DISCRIMINATOR_TYPES)
        if feature_matching is not None and feature_matching < 0:
            raise ValueError(f"MaskToImageTask: feature_matching must be >= 0, got {feature_matching!r}")
        if discriminator_type == "segmentation" and feature_matching:
            raise ValueError(
                f"MaskToImageTask: feature_matching={feature_matching!r} needs discriminator_type='patch'; the "
                "segmentation discriminator has no feature maps to match (leave feature_matching unset)"
            )
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != channels:
                raise ValueError(
                    f"MaskToImageTask: {name} needs one value per image channel ({channels}), got {list(values)}"
                )
        super().__init__(
            channels=channels,
            image_size=image_size,
            latent_dim=latent_dim,
            num_classes=num_classes,
            generator=generator,
            discriminator=discriminator if discriminator is not None else default_discriminator,
            loss="hinge",
            ema_decay=ema_decay,
            optimizer_g=optimizer_g,
            optimizer_d=optimizer_d,
            scheduler_g=scheduler_g,
            scheduler_d=scheduler_d,
            fid_feature=None,
            num_fixed_samples=num_fixed_samples,
            seed=seed,
            nan_policy=nan_policy,
        )
        # The GAN machinery reads its own settings from hparams; LightningCLI stores only this class's arguments,
        # so the fixed ones are filled in (load_from_checkpoint passes on only the arguments this class takes).
        fixed = {"loss": "hinge", "n_critic": 1, "r1_gamma": 0.0, "fid_feature": None}
        for name, parameter in inspect.signature(GANTask.__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty and name not in self.hparams:
                self.hparams[name] = fixed.get(name, parameter.default)
        drop_object_hparams(self.hparams, ("segmenter",), (dict, str, type(None)))
        _check_discriminator_kind(self.discriminator, discriminator_type)  # built from a module or a factory
        self.feature_matching = (10.0 if feature_matching is None else float(feature_matching)) * (
            discriminator_type == "patch"
        )
        self.segmentation_d = discriminator_type == "segmentation"
        self.ignore_index = ignore_index
        self.augment = parse_policy(diffaugment)  # applied by _discriminate, image and mask together
        self._masks_checked_on_host = False  # set by on_before_batch_transfer, used up by the next _unpack
        # evaluation parts live in plain dicts, outside the module tree: not in checkpoints, not optimised
        self._evaluation: dict[str, Any] = {"source": segmenter, "segmenter": None}
        self._seg_metrics: dict[str, MulticlassJaccardIndex] = {}
        self._normalisation: tuple[Tensor, Tensor] | None = None
        if mean is not None and std is not None:
            self._normalisation = (torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1))

    # ------------------------------------------------------------------ images and masks
    def setup(self, stage: str) -> None:
        if self._normalisation is None:
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            if mean is None or std is None:
                raise ValueError(
                    "MaskToImageTask: the images' normalisation is unknown; pass mean= and std= (the values the "
                    f"images were normalised with, one per channel; (0.5,) * {self.channels} each for images in "
                    "[-1, 1]) or use a data module with mean/std attributes"
                )
            self._normalisation = (torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1))
        source = self._evaluation["source"]
        if source is not None and self._segmenter is None and stage in ("fit", "validate"):
            segmenter = _load_segmenter(source)
            classes = getattr(segmenter, "num_classes", self.num_classes)
            if classes != self.num_classes:
                raise ValueError(
                    f"MaskToImageTask: the segmenter predicts {classes} classes, the masks have {self.num_classes}"
                )
            self._evaluation["segmenter"] = segmenter.eval().requires_grad_(False)
            for key in ("fake", "real"):
                self._seg_metrics[key] = MulticlassJaccardIndex(
                    self.num_classes, average="macro", validate_args=False
                )

    @property
    def _segmenter(self) -> nn.Module | None:
        return self._evaluation["segmenter"]

    def to_generator_range(self, images: Tensor) -> Tensor:
        """Data-normalised images -> ``[-1, 1]``."""
        mean, std = (t.to(images.device, images.dtype) for t in self._require_normalisation())
        return (images * std + mean) * 2 - 1

    def to_data_range(self, images: Tensor) -> Tensor:
        """``[-1, 1]`` -> the data's normalisation (what a segmentation network trained on the data expects)."""
        mean, std = (t.to(images.device, images.dtype) for t in self._require_normalisation())
        return ((images + 1) / 2 - mean) / std

    def _require_normalisation(self) -> tuple[Tensor, Tensor]:
        if self._normalisation is None:
            raise RuntimeError(
                "MaskToImageTask: mean/std unknown; pass them or attach a data module (see setup)"
            )
        return self._normalisation

    def _one_hot(self, masks: Tensor, validate: bool = True) -> Tensor:
        if masks.ndim == 4:  # already one-hot (B, K, H, W)
            if masks.shape[1] != self.num_classes:
                raise ValueError(
                    f"MaskToImageTask: one-hot masks with {masks.shape[1]} channels, expected num_classes="
                    f"{self.num_classes}"
                )
            return masks.to(torch.get_default_dtype())  # as one_hot_masks: the weights' dtype inside a step
        ids = masks.long()
        if validate:  # the message of the on_before_batch_transfer check, whichever path finds a bad id
            check_class_ids(ids, self.num_classes, self.ignore_index, owner="MaskToImageTask")
        return one_hot_masks(ids, self.num_classes, self.ignore_index, validate=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Check the masks' class ids while the batch is still on the host, where reading the result costs no sync.

        Lightning calls this hook on every batch it feeds to a step, before moving the batch to the accelerator;
        the step's :func:`~segen.nets.spade.one_hot_masks` then skips its value check, which on a GPU would make the
        host wait for the device every step. A step that did not follow this hook (a direct
        ``task.training_step(batch, 0)``, a data module that overrides the hook) checks the values itself: free on
        CPU, one sync on a GPU. Anything but integer ``(B, H, W)`` masks is left to the step, which names the problem.
        """
        masks = batch[1] if isinstance(batch, (tuple, list)) and len(batch) >= 2 else None
        integer = isinstance(masks, Tensor) and not (
            masks.dtype.is_floating_point or masks.dtype.is_complex or masks.dtype == torch.bool
        )
        predicting = self._trainer is not None and self.trainer.predicting
        if integer and masks.ndim == 3 and not predicting:
            check_class_ids(masks, self.num_classes, self.ignore_index, owner="MaskToImageTask")
            self._masks_checked_on_host = True
        return batch

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(images, masks)`` -> images in ``[-1, 1]`` ``(B, C, H, W)`` and one-hot masks ``(B, K, H, W)``."""
        checked = self._masks_checked_on_host  # this batch's masks were checked on the host
        self._masks_checked_on_host = False  # the mark is used up by this step
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "MaskToImageTask: batches must be (images, masks) pairs from a segmentation data set, got "
                f"{describe_batch(batch)}"
            )
        images, masks = batch[0], batch[1]
        check_image_dtype("MaskToImageTask", images, self.dtype, "in [-1, 1]")
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"MaskToImageTask: images of shape {tuple(images.shape)}, expected (B, {self.channels}, H, W)"
            )
        if masks.ndim != 3 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"MaskToImageTask: masks of shape {tuple(masks.shape)} for images of shape {tuple(images.shape)}; "
                "expected (B, H, W) class ids of the images' size"
            )
        # the weights' dtype, not float32: under Trainer(precision="bf16-true" / "64-true") the nets are bf16 / float64
        return self.to_generator_range(images.to(self.dtype)), self._one_hot(masks, validate=not checked)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, masks: Tensor, noise: Tensor | None = None) -> Tensor:
        """Images ``(B, C, H, W)`` in ``[-1, 1]`` for masks ``(B, H, W)`` (class ids, ``ignore_index`` allowed) or
        one-hot ``(B, K, H, W)``, from the EMA generator in eval mode; ``noise (B, latent_dim)`` fixes the style."""
        one_hot = self._one_hot(masks.to(self.device))
        if noise is None:
            noise = torch.randn(one_hot.shape[0], self.latent_dim)
        net = self._sampler()
        was_training = net.training
        net.eval()
        try:
            return net(noise.to(self.device), one_hot).float().clamp(-1, 1)
        finally:
            net.train(was_training)

    def sample(self, n: int, labels: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        raise NotImplementedError(
            "MaskToImageTask generates images for masks: use generate(masks, noise=None)"
        )

    # ------------------------------------------------------------------ losses
    def adam_settings(self) -> tuple[tuple[float, tuple[float, float]], tuple[float, tuple[float, float]]]:
        hp = self.hparams
        betas = (float(hp.betas[0]), float(hp.betas[1]))
        return (hp.lr_g, betas), (hp.lr_d, betas)

    def discriminator_loss(self, real: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """The discriminator's loss (module docstring); ``labels`` are the one-hot masks ``(B, K, H, W)``."""
        masks = labels
        with torch.no_grad():
            fake = self(self._noise(real.shape[0]), masks)
        if self.segmentation_d:
            return self._segmentation_d_loss(real, fake, masks)
        real_out, fake_out = self._discriminate(real, masks), self._discriminate(fake, masks)
        # the hinge loss (self.loss_fns) on each scale's patch logits, averaged over the scales
        per_scale = [
            self.loss_fns.discriminator(r[-1].float(), f[-1].float()) for r, f in zip(real_out, fake_out)
        ]
        loss_real = sum(parts.real for parts in per_scale) / len(per_scale)
        loss_fake = sum(parts.fake for parts in per_scale) / len(per_scale)
        return {
            "loss": loss_real + loss_fake,
            "loss_d_real": loss_real.detach(),
            "loss_d_fake": loss_fake.detach(),
            "d_real": real_out[0][-1].detach().float().mean(),
            "d_fake": fake_out[0][-1].detach().float().mean(),
        }

    def _segmentation_d_loss(self, real: Tensor, fake: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """OASIS's D loss: class-balanced CE of the real pixels to their classes, CE of the fake pixels to *fake*."""
        real, real_masks = self._augment_pair(real, masks)
        real_logits = self._segment(real)  # (B, K + 1, H, W)
        fake_logits = self._segment(self._augment_pair(fake, masks)[0])
        batch, _, height, width = fake_logits.shape
        fake_ids = torch.full(
            (batch, height, width), self.num_classes, device=real.device
        )  # (B, H, W): *fake*
        loss_real = self._balanced_ce(real_logits, real_masks)
        loss_fake = F.cross_entropy(fake_logits.float(), fake_ids)
        return {
            "loss": loss_real + loss_fake,
            "loss_d_real": loss_real.detach(),
            "loss_d_fake": loss_fake.detach(),
            "d_real": self._real_probability(real_logits).detach(),
            "d_fake": self._real_probability(fake_logits).detach(),
        }

    def _segment(self, images: Tensor) -> Tensor:
        """The segmentation discriminator's ``(B, K + 1, H, W)`` logits for ``images``, shape-checked."""
        logits = self.discriminator(images)
        expected = (images.shape[0], self.num_classes + 1, *images.shape[-2:])
        if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
            found = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"MaskToImageTask: with discriminator_type='segmentation' the discriminator must return logits of "
                f"shape {expected} (K + 1 = {self.num_classes + 1} classes, the last one 'fake'), got {found}; "
                "for a PatchGAN-style discriminator pass discriminator_type='patch'"
            )
        return logits

    @staticmethod
    def _balanced_ce(logits: Tensor, masks: Tensor) -> Tensor:
        """Class-balanced cross-entropy of ``(B, K + 1, H, W)`` logits to one-hot ``(B, K, H, W)`` masks."""
        per_pixel = F.cross_entropy(logits.float(), masks.argmax(dim=1), reduction="none")  # (B, H, W)
        return (per_pixel * class_balance_weights(masks.float())).mean()

    @staticmethod
    def _real_probability(logits: Tensor) -> Tensor:
        """Mean probability of "some real class" (not *fake*) over the pixels: the segmentation D's score."""
        return 1 - logits.float().softmax(dim=1)[:, -1].mean()

    def _augment_pair(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """DiffAugment of ``images (B, C, H, W)`` and one-hot ``masks (B, K, H, W)`` together when ``diffaugment``
        is set. GANTask's DiffAugment sees images alone; here the pair stays aligned: ``translation`` and ``cutout``
        act on both (cut-out pixels become unlabelled), ``color`` on the image channels only."""
        if not self.augment:
            return images, masks
        c = images.shape[1]
        rng = self.per_rank_generator(self.augment_rng)
        pair = torch.cat([images, masks.to(images.dtype)], dim=1)  # (B, C + K, H, W)
        for name in self.augment:
            if name == "color":
                pair = torch.cat([DIFFAUGMENT_OPS["color"](pair[:, :c], rng), pair[:, c:]], dim=1)
            else:
                pair = DIFFAUGMENT_OPS[name](pair, rng)
        return pair[:, :c], pair[:, c:].to(masks.dtype)

    def _discriminate(self, images: Tensor, masks: Tensor) -> Any:
        """The PatchGAN on ``images (B, C, H, W)`` and one-hot ``masks (B, K, H, W)``, through DiffAugment."""
        return self.discriminator(*self._augment_pair(images, masks))

    def generator_loss(
        self, batch_size: int, labels: Tensor | None, real: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Segmentation D: class-balanced CE of the fake pixels to their mask's classes. PatchGAN: the hinge generator
        loss plus ``feature_matching`` times the L1 distance of D's features to the real image's."""
        masks = labels
        fake = self(self._noise(batch_size), masks)
        if self.segmentation_d:
            fake, fake_masks = self._augment_pair(fake, masks)
            segmentation = self._balanced_ce(self._segment(fake), fake_masks)
            return {"loss": segmentation, "adversarial": segmentation.detach()}
        fake_out = self._discriminate(fake, masks)
        adversarial = sum(self.loss_fns.generator(scale[-1].float()) for scale in fake_out) / len(fake_out)
        parts = {"adversarial": adversarial.detach()}
        loss = adversarial
        if self.feature_matching > 0 and real is not None:
            with torch.no_grad():
                real_out = self.discriminator(real, masks)
            # features of the same mask, compared position by position: without the (independent) augmentation
            plain_out = self.discriminator(fake, masks) if self.augment else fake_out
            matching = feature_matching_loss(plain_out, real_out)
            loss = loss + self.feature_matching * matching
            parts["feature_matching"] = matching.detach()
        return {"loss": loss, **parts}

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        if self._segmenter is not None:
            self._segmenter.to(self.device)
            for metric in self._seg_metrics.values():
                metric.to(self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real, masks = self._unpack(batch)
        with torch.no_grad():
            if self.segmentation_d:  # probability of "a real class" rather than *fake*
                score = self._real_probability(self._segment(real))
            else:  # the finest scale's patch logits
                score = self.discriminator(real, masks)[0][-1].float().mean()
        self.log("val/d_real", score, batch_size=real.shape[0], sync_dist=True)
        if self._segmenter is None or self.trainer.sanity_checking:
            return
        rng = torch.Generator().manual_seed(self.hparams.seed + 3 + 100_003 * self.global_rank + batch_idx)
        fake = self.generate(masks, torch.randn(real.shape[0], self.latent_dim, generator=rng))
        truth = batch[1].long()
        valid = truth != self.ignore_index
        with torch.no_grad():
            for key, images in (("fake", self.to_data_range(fake)), ("real", batch[0].float())):
                predicted = self._segmenter(images).argmax(dim=1)  # (B, H, W)
                self._seg_metrics[key].update(predicted[valid], truth[valid])

    def on_validation_epoch_end(self) -> None:
        if self._segmenter is None or self.trainer.sanity_checking:
            return
        fake, real = self._seg_metrics["fake"], self._seg_metrics["real"]
        # identical on every rank after torchmetrics' sync; sync_dist tells Lightning so
        self.log_dict({"val/seg_score": fake.compute(), "val/seg_score_real": real.compute()}, sync_dist=True)
        fake.reset()
        real.reset()

    @property
    def monitor(self) -> tuple[str, str] | None:
        """``val/seg_score`` (maximised) when there is a segmenter, else nothing."""
        return ("val/seg_score", "max") if self._evaluation["source"] is not None else None
