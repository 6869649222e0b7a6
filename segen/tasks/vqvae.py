"""VQ-VAE (van den Oord et al. 2017) as a LightningModule: encoder -> EMA vector quantiser -> decoder.

The loss is ``MSE(reconstruction, x) + commitment * ||z_e - sg(e)||^2`` on images in ``[-1, 1]``; the codebook learns
by exponential moving averages inside :class:`~segen.nets.vq.VectorQuantizer` (all-reduced under DDP), not by the
optimizer. Logged: ``train/loss``, ``train/recon``, ``train/commitment``, ``train/perplexity``, ``train/usage``,
and ``val/recon`` (MSE), ``val/perplexity`` (exp of the entropy of code usage: how many codes are effectively used),
``val/usage`` (fraction of codes used in a batch). ``reconstruct(images)`` returns images in ``[-1, 1]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from segen.nets.vq import VectorQuantizer, VQDecoder, VQEncoder, VQOutput
from segen.tasks._parts import drop_object_hparams
from segen.tasks.base import SegenTask, check_nan_policy
from segen.tasks.batches import check_image_dtype, generation_batch
from segen.tasks.optim import configure_optimizers

__all__ = ["VQVAETask"]


class VQVAETask(SegenTask):
    """A VQ-VAE with an EMA codebook.

    Args:
        channels, image_size: image shape (linked from the data module by the CLI).
        num_embeddings, embedding_dim: codebook size ``K`` and code dimension ``D``.
        commitment: weight of the commitment loss (0.25 in the paper).
        decay: EMA decay of the codebook statistics.
        hidden, num_downsamples, num_res_blocks: the encoder/decoder (2 downsamplings: 32 px -> an 8x8 code map).
        lr, weight_decay, warmup_steps, optimizer, scheduler: segen's default AdamW with warm-up and cosine decay, or
            LightningCLI callables replacing it. The default lr 1e-3 is five times the paper's 2e-4 (tuned for
            250k steps): it reconstructed better on three data sets at 800 steps, and on shapes at 2400 (measured with
            ``experiments/scripts/defaults_check.py --task vqvae``).
        seed: seed of the quantiser's dead-code restarts (their generator is checkpointed: exact resume).
        nan_policy: ``"raise"`` | ``"skip"`` | ``"off"``: what a non-finite training loss does
            (:class:`~segen.tasks.base.SegenTask`); the codebook's EMA update also ignores a non-finite batch.
    """

    monitor: tuple[str, str] = ("val/recon", "min")

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        num_embeddings: int = 512,
        embedding_dim: int = 64,
        commitment: float = 0.25,
        decay: float = 0.99,
        hidden: int = 128,
        num_downsamples: int = 2,
        num_res_blocks: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        seed: int = 0,
        nan_policy: str = "raise",
    ) -> None:
        super().__init__()
        check_nan_policy(nan_policy)
        if image_size % 2**num_downsamples:
            raise ValueError(
                f"VQVAETask: image_size {image_size} is not divisible by 2**num_downsamples = {2**num_downsamples}"
            )
        self.save_hyperparameters()
        drop_object_hparams(self.hparams, ("optimizer", "scheduler"))
        self.channels, self.image_size = channels, image_size
        self.encoder = VQEncoder(channels, embedding_dim, hidden, num_downsamples, num_res_blocks)
        self.quantizer = VectorQuantizer(num_embeddings, embedding_dim, commitment, decay, seed=seed)
        self.decoder = VQDecoder(channels, embedding_dim, hidden, num_downsamples, num_res_blocks)
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler

    def forward(self, images: Tensor) -> tuple[Tensor, VQOutput]:
        """``(B, C, S, S) -> (reconstruction (B, C, S, S), quantiser output)``."""
        vq = self.quantizer(self.encoder(images))  # (B, D, S/4, S/4) with the defaults
        return self.decoder(vq.quantized), vq

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """Reconstructions in ``[-1, 1]`` (eval mode: the codebook does not move)."""
        was_training = self.training
        self.eval()
        try:
            return self(images.to(self.device))[0].float().clamp(-1, 1)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Code indices ``(B, C, S, S) -> (B, S / 2**num_downsamples, ...)`` long (no EMA update)."""
        return self.quantizer.nearest(self.encoder(self._images(images.to(self.device))))

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Images in ``[-1, 1]`` from a code map ``(B, h, w)`` long, e.g. sampled by a prior: ``-> (B, C, S, S)``."""
        codes = self.quantizer.lookup(indices.to(self.device))  # (B, D, h, w) fp32
        return self.decoder(codes.to(next(self.decoder.parameters()).dtype)).float().clamp(-1, 1)

    @property
    def code_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the code map of one image."""
        side = self.image_size // 2**self.hparams.num_downsamples
        return side, side

    def _images(self, batch: Any) -> Tensor:
        images = generation_batch("VQVAETask", batch)[0]
        check_image_dtype("VQVAETask", images, self.dtype, "in [-1, 1]")
        if images.ndim != 4 or images.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"VQVAETask: images of shape {tuple(images.shape)}, expected (B, {self.channels}, "
                f"{self.image_size}, {self.image_size}); set channels/image_size to the data's"
            )
        return images

    def _step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        images = self._images(batch)
        recon, vq = self(images)
        mse = F.mse_loss(recon.float(), images.float())
        loss = mse + vq.commitment_loss
        train = stage == "train"
        logs = {
            f"{stage}/recon": mse.detach(),
            f"{stage}/perplexity": vq.perplexity.detach(),
            f"{stage}/usage": vq.usage.detach(),
        }
        if train:
            logs.update({"train/loss": loss.detach(), "train/commitment": vq.commitment_loss.detach()})
            self.log_train(logs, images.shape[0])
        else:
            self.log_dict(logs, batch_size=images.shape[0], sync_dist=True)
        return {"loss": loss, "recon": mse, "commitment": vq.commitment_loss}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        parts = self._step(batch, "train")
        return parts["loss"] if self.loss_is_usable(parts) else None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return configure_optimizers(
            self, self.optimizer_fn, self.scheduler_fn, hp.lr, hp.weight_decay, hp.warmup_steps
        )
