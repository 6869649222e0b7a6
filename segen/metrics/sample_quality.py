"""FID and KID of a generative task's samples, as every segen generative task computes them at validation.

torchmetrics computes FID/KID from features; what it leaves to the caller is the protocol, which is the same for a
GAN, a VAE and a VQ-VAE prior, so it lives here once:

* the **real** side is the validation split, added during the first validation of a run and kept
  (``reset_real_features=False``); after a resume it is added again (metric states are not checkpointed);
* the **fake** side is a fixed number of samples drawn with a fixed seed per rank (``seed + 2 + rank``), so two
  validations differ only by the model; under DDP each rank draws ``ceil(num_samples / world_size)``;
* KID's subset size shrinks to the sample counts when a split is small (``fast_dev_run``, tiny validation sets).

The metric objects are kept outside the task's module tree, so the feature network never enters a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from segen.metrics.fid import build_fid, build_kid, real_sample_count

__all__ = ["SampleQuality", "resolve_fid_feature"]

# draw(n, generator) -> n images (n, C, S, S) in [-1, 1]; all randomness from `generator` (seeded by SampleQuality)
Draw = Callable[[int, torch.Generator], Tensor]


def resolve_fid_feature(
    owner: str, fid_feature: str | nn.Module | None, channels: int, inception_weights: str | None
) -> str | nn.Module | None:
    """``"auto"``: the digits classifier for 1-channel data, Inception when a weights file is given, else none
    (nothing is ever downloaded)."""
    if fid_feature == "auto":
        if channels == 1:
            return "digits"
        return "inception" if inception_weights else None
    if fid_feature == "inception" and inception_weights is None:
        raise ValueError(
            f"{owner}: fid_feature='inception' needs inception_weights=<local file>; nothing is downloaded"
        )
    return fid_feature


class SampleQuality:
    """``val/fid`` and ``val/kid`` of ``num_samples`` generated images against the validation images.

    Use: ``update_real(images)`` in ``validation_step`` (a no-op once the real side is complete), then
    ``compute(draw, rank, world_size)`` in ``on_validation_epoch_end`` on every rank (it is a collective).
    """

    def __init__(
        self,
        feature: str | nn.Module,
        inception_weights: str | None = None,
        num_samples: int = 2048,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"SampleQuality: num_samples (fid_samples) must be >= 2, got {num_samples}")
        self.num_samples, self.seed, self.batch_size = num_samples, seed, batch_size
        self.fid = build_fid(feature, weights_path=inception_weights, reset_real_features=False)
        self.kid_subset_size = min(100, num_samples)
        self.kid = build_kid(
            feature,
            weights_path=inception_weights,
            reset_real_features=False,
            subset_size=self.kid_subset_size,
        )
        self.real_ready = False

    def to(self, device: torch.device) -> SampleQuality:
        self.fid.to(device)
        self.kid.to(device)
        return self

    def update_real(self, images: Tensor) -> None:
        """Add validation images ``(B, C, S, S)`` in ``[-1, 1]`` until the first ``compute``."""
        if self.real_ready:
            return
        self.fid.update(images, real=True)
        self.kid.update(images, real=True)

    @torch.no_grad()
    def compute(self, draw: Draw, rank: int = 0, world_size: int = 1) -> dict[str, Tensor]:
        """Draw this rank's share of samples with a fixed seed and return ``{"val/fid", "val/kid"}`` (the same on
        every rank: torchmetrics syncs the states)."""
        self.real_ready = True
        n = math.ceil(self.num_samples / world_size)
        rng = torch.Generator().manual_seed(self.seed + 2 + rank)  # the same draws at every validation
        for start in range(0, n, self.batch_size):
            fake = draw(min(self.batch_size, n - start), rng)
            self.fid.update(fake, real=False)
            self.kid.update(fake, real=False)
        self.kid.subset_size = max(2, min(self.kid_subset_size, real_sample_count(self.kid), n))
        kid_mean, _ = self.kid.compute()
        values = {"val/fid": self.fid.compute(), "val/kid": kid_mean}
        self.fid.reset()  # the real statistics stay (reset_real_features=False); only the fakes go
        self.kid.reset()
        return values


class SampleQualityHooks:
    """The Lightning hooks that give a generative task ``val/fid`` and ``val/kid`` (mixed in before
    ``LightningModule``).

    The task provides ``fid_feature``, ``channels``, ``hparams.inception_weights / fid_samples / seed`` and
    ``draw_samples(n, generator)``; its ``validation_step`` calls ``self.add_real_images(images)``.
    """

    _quality: SampleQuality | None = None

    def draw_samples(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        hp = self.hparams  # type: ignore[attr-defined]
        feature = resolve_fid_feature(
            type(self).__name__, self.fid_feature, self.channels, hp.inception_weights
        )  # type: ignore[attr-defined]
        if self._quality is None and feature is not None and stage in ("fit", "validate"):
            self._quality = SampleQuality(feature, hp.inception_weights, hp.fid_samples, hp.seed)

    def on_validation_epoch_start(self) -> None:
        if self._quality is not None:
            self._quality.to(self.device)  # type: ignore[attr-defined]

    def add_real_images(self, images: Tensor) -> None:
        """Validation images ``(B, C, S, S)`` in ``[-1, 1]`` for the real side (first validation of a run only)."""
        if self._quality is not None and not self.trainer.sanity_checking:  # type: ignore[attr-defined]
            self._quality.update_real(images)

    def on_validation_epoch_end(self) -> None:
        if self._quality is not None and not self.trainer.sanity_checking:  # type: ignore[attr-defined]
            values = self._quality.compute(self.draw_samples, self.global_rank, self.trainer.world_size)  # type: ignore[attr-defined]
            self.log_dict(values)  # type: ignore[attr-defined]
