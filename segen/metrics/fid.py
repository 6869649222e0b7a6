"""FID and KID as torchmetrics metrics on images in ``[-1, 1]``, with feature networks that never download.

:func:`build_fid` and :func:`build_kid` return torchmetrics' ``FrechetInceptionDistance`` and (a seeded subclass of)
``KernelInceptionDistance`` around a :class:`~segen.metrics.features.FeatureNet`: ``"digits"`` (default; 1-channel
images, a classifier trained on scikit-learn's digits and cached), ``"inception"`` (the standard 2048-d features,
from a local weights file) or any ``nn.Module``. Both take generated images exactly as ``task.sample(n)`` returns
them: ``(B, C, H, W)`` floats in ``[-1, 1]``.

The flow a GAN task uses (real statistics once per run, fakes at every validation)::

    fid = build_fid("digits")                     # reset_real_features=False: reset() keeps the real side
    if real_sample_count(fid) == 0:               # once per run, and again after a resume (see below)
        for images, _ in real_loader:
            fid.update(images, real=True)
    for _ in range(num_batches):                  # each validation: a fixed number of generated samples
        fid.update(task.sample(batch_size), real=False)
    value = fid.compute()                         # syncs across DDP ranks, then restores the local states
    fid.reset()                                   # clears the fake side only

KID is the same with ``kid_mean, kid_std = kid.compute()``; it keeps every feature vector (not sums), and needs
at least ``subset_size`` real and fake samples in total (the default 100 suits a few hundred samples).

Distributed training (DDP): ``update`` is local to each rank; ``compute()`` first syncs across ranks (FID sums its
feature sums, outer products and counts; KID gathers the feature lists), computes the same value on every rank, and
then puts each rank's own states back, so the kept real statistics stay per-rank and the next ``compute()`` syncs
them again. Hence: give each rank a different shard of the real images (a ``DistributedSampler``) and different
sampling noise (e.g. seeded with the rank), and count samples globally: ``world_size × per-rank samples`` are
compared. Every rank must call ``compute()`` (it is a collective). KID's random subsets come from a fixed seed, so
all ranks, and all validations, draw the same subset indices.

Checkpoints: metric states are not saved (torchmetrics' states are non-persistent), nor are the feature weights
(:class:`~segen.metrics.features.FeatureNet` leaves them out), so after a resume ``real_sample_count`` is 0 and the
real statistics are recomputed; the feature network is rebuilt from its file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from segen.metrics.features import (
    INCEPTION_WEIGHTS_NAME,
    FeatureNet,
    InceptionFeatures,
    default_cache_dir,
    digits_feature_network,
)
from segen.registry import lookup

__all__ = [
    "FEATURE_NETWORKS",
    "SeededKernelInceptionDistance",
    "build_feature_network",
    "build_fid",
    "build_kid",
    "real_sample_count",
]


def _digits(weights_path: str | Path | None) -> FeatureNet:
    if weights_path is not None:
        raise ValueError(
            "weights_path is for feature='inception'; the digits classifier is trained once and cached in "
            "$SEGEN_CACHE (default ~/.cache/segen). To use a given cache folder pass "
            "feature=digits_feature_network(cache_dir=...)"
        )
    return digits_feature_network()


def _inception(weights_path: str | Path | None) -> FeatureNet:
    return InceptionFeatures(
        weights_path if weights_path is not None else default_cache_dir() / INCEPTION_WEIGHTS_NAME
    )


FEATURE_NETWORKS: dict[str, Callable[[str | Path | None], FeatureNet]] = {
    "digits": _digits,
    "inception": _inception,
}


def build_feature_network(
    feature: nn.Module | str = "digits", weights_path: str | Path | None = None
) -> FeatureNet:
    """A :class:`FeatureNet` from a name in :data:`FEATURE_NETWORKS` or a module.

    A ``FeatureNet`` is used as is; another module needs an integer ``num_features`` attribute (it is then wrapped,
    i.e. frozen and kept in eval mode). ``"inception"`` without ``weights_path`` looks for
    ``$SEGEN_CACHE/weights-inception-2015-12-05-6726825d.pth``.
    """
    if isinstance(feature, nn.Module):
        if weights_path is not None:
            raise ValueError(
                "weights_path applies to feature='inception' only; load your module's weights yourself"
            )
        if isinstance(feature, FeatureNet):
            return feature
        num_features = getattr(feature, "num_features", None)
        if isinstance(num_features, int):
            return FeatureNet(feature, num_features)
        raise TypeError(
            f"{type(feature).__name__} has no integer `num_features`; wrap it as FeatureNet(module, num_features=d) "
            "where d is the size of the (B, d) features it returns"
        )
    return lookup("feature network", feature, FEATURE_NETWORKS)(weights_path)


def build_fid(
    feature: nn.Module | str = "digits",
    weights_path: str | Path | None = None,
    reset_real_features: bool = False,
    **metric_kwargs: Any,
) -> FrechetInceptionDistance:
    """FID on images in ``[-1, 1]``; ``reset()`` keeps the real statistics unless ``reset_real_features=True``.

    ``metric_kwargs`` go to torchmetrics' ``Metric`` (e.g. ``sync_on_compute``, ``process_group``).
    """
    return FrechetInceptionDistance(
        feature=build_feature_network(feature, weights_path),
        reset_real_features=reset_real_features,
        **metric_kwargs,
    )


class SeededKernelInceptionDistance(KernelInceptionDistance):
    """torchmetrics' KID whose random subsets come from a fixed seed.

    The stock ``compute()`` draws subsets from the global RNG: values then differ between DDP ranks and between
    two calls on the same features, and every validation shifts the training run's random stream (breaking exact
    resumes). Here the subsets come from a forked RNG seeded with ``seed``. Too few samples raise a ``ValueError``
    that gives the counts.
    """

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed

    def compute(self) -> tuple[Tensor, Tensor]:
        n_real, n_fake = _count(self.real_features), _count(self.fake_features)
        if min(n_real, n_fake) < self.subset_size:
            raise ValueError(
                f"KID needs at least subset_size={self.subset_size} real and fake samples (all ranks together); "
                f"got {n_real} real and {n_fake} fake. Update with more samples or build_kid(subset_size=...) "
                "with a smaller subset"
            )
        with torch.random.fork_rng(devices=[]):  # subsets are drawn with torch.randperm on the CPU generator
            torch.manual_seed(self.seed)
            return super().compute()


def _count(features: list[Tensor] | Tensor) -> int:
    if isinstance(features, Tensor):  # a synced list state can come back concatenated
        return features.shape[0] if features.numel() else 0
    return sum(f.shape[0] for f in features)


def build_kid(
    feature: nn.Module | str = "digits",
    weights_path: str | Path | None = None,
    reset_real_features: bool = False,
    subsets: int = 100,
    subset_size: int = 100,
    seed: int = 0,
    **metric_kwargs: Any,
) -> SeededKernelInceptionDistance:
    """KID on images in ``[-1, 1]``: ``compute()`` returns ``(mean, std)`` over ``subsets`` random subsets of
    ``subset_size`` samples from each side (so at least ``subset_size`` real and fake samples are needed).

    ``reset()`` keeps the real features unless ``reset_real_features=True``; ``seed`` fixes the subsets.
    """
    net = build_feature_network(feature, weights_path)
    with warnings.catch_warnings():  # "will save all extracted features in buffer": known, small here
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        return SeededKernelInceptionDistance(
            feature=net,
            subsets=subsets,
            subset_size=subset_size,
            reset_real_features=reset_real_features,
            seed=seed,
            **metric_kwargs,
        )


def real_sample_count(metric: FrechetInceptionDistance | KernelInceptionDistance) -> int:
    """How many real images this rank has added (0 at the start of a run and after a resume)."""
    if isinstance(metric, FrechetInceptionDistance):
        return int(metric.real_features_num_samples)
    if isinstance(metric, KernelInceptionDistance):
        return _count(metric.real_features)
    raise TypeError(
        f"expected a FrechetInceptionDistance or KernelInceptionDistance, got {type(metric).__name__}"
    )
