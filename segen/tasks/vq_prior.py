"""The VQ-VAE's second stage: an autoregressive prior over its code maps, so that new images can be sampled.

A VQ-VAE alone only reconstructs: its "latent" is a grid of code indices with no distribution to draw from. The paper
fits a PixelCNN to the code maps of the training images, with the VQ-VAE frozen, then samples a code map position by
position and decodes it. :class:`VQPriorTask` does exactly that with :class:`~segen.nets.pixelcnn.GatedPixelCNN`:

    training:  indices = vqvae.encode(x)  (frozen, no EMA update)   loss = CE(prior(indices[, y]), indices)
    sampling:  indices ~ prior, raster order                        images = vqvae.decode(indices)

Logged: ``train/nll`` and ``val/nll`` (nats per code, the cross-entropy), ``val/nll_image`` (nats per image's code
map, ``h * w`` codes; the prior's part of the discrete model's likelihood), and ``val/fid`` / ``val/kid`` of sampled
images as for the GAN and the VAE.

The frozen VQ-VAE is a submodule (its weights are in the prior's checkpoint) and always stays in eval mode. The
checkpoint stores the VQ-VAE's hyper-parameters in place of the path it was loaded from, so
``VQPriorTask.load_from_checkpoint(path)`` works after the VQ-VAE's own checkpoint has moved or been deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from segen.metrics.sample_quality import SampleQualityHooks
from segen.nets.pixelcnn import GatedPixelCNN
from segen.tasks._parts import build_module, drop_object_hparams, own_hyperparameters, resolve_checkpoint
from segen.tasks.base import CheckpointMismatchError, SegenTask, check_nan_policy
from segen.tasks.batches import check_image_dtype, generation_batch
from segen.tasks.optim import configure_optimizers
from segen.tasks.vqvae import VQVAETask

__all__ = ["VQPriorTask"]

_TRAIN_FIRST = "train one first (e.g. `segen fit -c experiments/configs/vqvae_digits.yaml`) and pass its .ckpt as model.vqvae"
PriorFactory = Callable[[int, int | None], nn.Module]  # f(num_embeddings=, num_classes=)


def _load_vqvae(vqvae: str | dict[str, Any] | VQVAETask) -> VQVAETask:
    with own_hyperparameters():
        return _build_vqvae(vqvae)


def _build_vqvae(vqvae: str | dict[str, Any] | VQVAETask) -> VQVAETask:
    if isinstance(vqvae, VQVAETask):
        return vqvae
    if isinstance(vqvae, dict):  # hyper-parameters saved by a prior's checkpoint: the weights come with it
        return VQVAETask(**vqvae)
    if isinstance(vqvae, (str, Path)):
        path = resolve_checkpoint(str(vqvae), "VQPriorTask: no VQ-VAE checkpoint", _TRAIN_FIRST)
        if not path.is_file():
            raise FileNotFoundError(
                f"VQPriorTask: the VQ-VAE checkpoint {str(path)!r} does not exist; {_TRAIN_FIRST}"
            )
        try:
            return VQVAETask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        except (KeyError, TypeError, RuntimeError, CheckpointMismatchError) as error:
            raise CheckpointMismatchError(
                f"VQPriorTask: {str(path)!r} is not a VQVAETask checkpoint ({type(error).__name__}: {error})"
            ) from error
    raise TypeError(
        f"VQPriorTask: vqvae must be a VQVAETask checkpoint path, a VQVAETask or its hyper-parameters, "
        f"got {type(vqvae).__name__}"
    )


class VQPriorTask(SampleQualityHooks, SegenTask):
    """A gated PixelCNN prior over a frozen VQ-VAE's code maps; ``sample(n)`` generates images.

    Args:
        vqvae: the trained VQ-VAE: a ``VQVAETask`` checkpoint path or glob pattern (the newest match is used, e.g.
            ``runs/vqvae_digits/**/last.ckpt``), a ``VQVAETask``, or its hyper-parameters (what the prior's own
            checkpoint stores).
        channels, image_size: optional; when given (the CLI links them from the data) they must match the VQ-VAE's.
        num_classes: ``K`` makes a class-conditional prior (``sample(n, labels=...)``); ``None``: unconditional.
        prior: a module or factory (called with ``num_embeddings``, ``num_classes``) replacing the default
            :class:`~segen.nets.pixelcnn.GatedPixelCNN` of ``hidden`` channels and ``num_layers`` layers.
        temperature: softmax temperature of ``sample`` (1: the learned distribution).
        lr, weight_decay, warmup_steps, optimizer, scheduler: segen's default AdamW with warm-up and cosine decay, or
            LightningCLI callables replacing it (only the prior is optimised).
        fid_feature, inception_weights, fid_samples, seed: ``val/fid``/``val/kid`` of sampled images, as for
            :class:`~segen.tasks.gan.GANTask`; ``seed`` also seeds ``sample`` when no generator is given.
        nan_policy: ``"raise"`` | ``"skip"`` | ``"off"``: what a non-finite training loss does
            (:class:`~segen.tasks.base.SegenTask`).
    """

    monitor: tuple[str, str] = ("val/nll", "min")

    def __init__(
        self,
        vqvae: str | dict[str, Any] | VQVAETask,
        channels: int | None = None,
        image_size: int | None = None,
        num_classes: int | None = None,
        prior: PriorFactory | nn.Module | None = None,
        hidden: int = 128,
        num_layers: int = 12,
        temperature: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        fid_feature: str | nn.Module | None = "auto",
        inception_weights: str | None = None,
        fid_samples: int = 1024,
        seed: int = 0,
        nan_policy: str = "raise",
    ) -> None:
        super().__init__()
        check_nan_policy(nan_policy)
        if not temperature > 0:
            raise ValueError(f"VQPriorTask: temperature must be > 0, got {temperature!r}")
        self.save_hyperparameters()
        drop_object_hparams(self.hparams, ("prior", "optimizer", "scheduler"))
        drop_object_hparams(self.hparams, ("fid_feature",), (dict, str, type(None)))
        drop_object_hparams(self.hparams, ("vqvae",), (dict, str))
        self.vqvae = _load_vqvae(vqvae).requires_grad_(False).eval()
        for name, given, actual in (
            ("channels", channels, self.vqvae.channels),
            ("image_size", image_size, self.vqvae.image_size),
        ):
            if given is not None and given != actual:
                raise ValueError(
                    f"VQPriorTask: {name}={given} (from the data) but the VQ-VAE was trained with {name}={actual}; "
                    "use the data the VQ-VAE was trained on"
                )
        self.channels, self.image_size = self.vqvae.channels, self.vqvae.image_size
        self.num_classes = num_classes
        self.num_embeddings = self.vqvae.quantizer.num_embeddings
        default = lambda num_embeddings, num_classes: GatedPixelCNN(  # noqa: E731
            num_embeddings, hidden=hidden, num_layers=num_layers, num_classes=num_classes
        )
        self.prior = build_module(
            prior, default, "prior", num_embeddings=self.num_embeddings, num_classes=num_classes
        )
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.fid_feature = fid_feature

    def train(self, mode: bool = True) -> VQPriorTask:
        """The frozen VQ-VAE stays in eval mode (in train mode its quantiser would update the codebook)."""
        super().train(mode)
        self.vqvae.eval()
        return self

    # ------------------------------------------------------------------ model
    def forward(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits ``(B, K, h, w)`` of each code given the codes before it in raster order."""
        return self.prior(indices, labels) if self.num_classes else self.prior(indices)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` images ``(n, C, S, S)`` in ``[-1, 1]``: a code map drawn from the prior, decoded by the VQ-VAE.
        ``labels (n,)`` choose the classes of a conditional prior (default: cycling 0..K-1)."""
        if labels is not None and not self.num_classes:
            raise ValueError(
                "VQPriorTask.sample: labels given, but the prior is unconditional (num_classes=None)"
            )
        if self.num_classes:
            labels = torch.arange(n) % self.num_classes if labels is None else labels
            labels = labels.to(self.device).long()
        generator = generator if generator is not None else torch.Generator().manual_seed(self.hparams.seed)
        temperature = temperature if temperature is not None else self.hparams.temperature
        was_training = self.prior.training
        self.prior.eval()
        try:
            h, w = self.vqvae.code_shape
            kwargs = {"labels": labels} if self.num_classes else {}
            indices = self.prior.sample(n, h, w, temperature=temperature, generator=generator, **kwargs)
        finally:
            self.prior.train(was_training)
        return self.vqvae.decode(indices)

    # ------------------------------------------------------------------ training
    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        images, labels = generation_batch("VQPriorTask", batch)
        check_image_dtype("VQPriorTask", images, self.vqvae.dtype, "in [-1, 1]")
        if self.num_classes and labels is None:
            raise ValueError(
                "VQPriorTask: num_classes is set (a conditional prior) but the batch has no labels"
            )
        return images, (labels.long() if self.num_classes else None)

    def _nll(self, batch: Any) -> tuple[Tensor, int]:
        images, labels = self._unpack(batch)
        indices = self.vqvae.encode(images)  # (B, h, w) long, frozen
        logits = self(indices, labels)  # (B, K, h, w)
        return F.cross_entropy(logits.float(), indices), images.shape[0]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        nll, batch_size = self._nll(batch)
        self.log("train/nll", nll, prog_bar=True, batch_size=batch_size)
        return nll if self.loss_is_usable({"nll": nll}) else None

    def _evaluate(self, batch: Any, stage: str) -> None:
        nll, batch_size = self._nll(batch)
        h, w = self.vqvae.code_shape
        self.log_dict(
            {f"{stage}/nll": nll, f"{stage}/nll_image": nll * (h * w)}, batch_size=batch_size, sync_dist=True
        )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")
        self.add_real_images(self._unpack(batch)[0])

    def draw_samples(self, n: int, rng: torch.Generator) -> Tensor:
        labels = torch.randint(0, self.num_classes, (n,), generator=rng) if self.num_classes else None
        return self.sample(n, labels=labels, generator=rng)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return configure_optimizers(
            self, self.optimizer_fn, self.scheduler_fn, hp.lr, hp.weight_decay, hp.warmup_steps
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the VQ-VAE's hyper-parameters replace its path: its weights are in this checkpoint already
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None:
            hparams["vqvae"] = dict(self.vqvae.hparams)
