"""Metrics torchmetrics lacks: feature networks for FID / KID that never download, and builders around them."""

from segen.metrics.features import (
    DigitClassifier,
    FeatureNet,
    InceptionFeatures,
    default_cache_dir,
    digits_feature_network,
    load_digits_images,
    train_digit_classifier,
)
from segen.metrics.fid import (
    FEATURE_NETWORKS,
    SeededKernelInceptionDistance,
    build_feature_network,
    build_fid,
    build_kid,
    real_sample_count,
)

__all__ = [
    "FEATURE_NETWORKS",
    "DigitClassifier",
    "FeatureNet",
    "InceptionFeatures",
    "SeededKernelInceptionDistance",
    "build_feature_network",
    "build_fid",
    "build_kid",
    "default_cache_dir",
    "digits_feature_network",
    "load_digits_images",
    "real_sample_count",
    "train_digit_classifier",
]
