"""Frozen feature networks for FID and KID, all taking images in ``[-1, 1]`` and never downloading anything.

torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` accept any ``nn.Module`` as ``feature=``:
they call ``module(images)`` on exactly what ``update`` receives (no dtype or range conversion for custom modules),
expect ``(B, d)`` back and read ``d`` from an integer ``num_features`` attribute (otherwise FID probes the module
with a random uint8 ``(1, 3, 299, 299)`` image, which a grayscale network would reject). :class:`FeatureNet` gives
any module exactly that contract:

- ``num_features`` is set, so nothing is probed;
- the network is frozen and stays in eval mode even when Lightning calls ``.train()`` on the task that owns the
  metric (BatchNorm or dropout switching to training mode would silently change every FID value);
- it runs in fp32 with autocast off, so ``16-mixed`` / ``bf16-mixed`` training does not round the features;
- its weights are kept out of ``state_dict()``: they come from a file (the digits cache, the Inception weights),
  so a GAN checkpoint does not carry a 95 MB Inception copy, and loading a checkpoint leaves them untouched.

Three networks are provided:

- :func:`digits_feature_network` (default for 1-channel 32×32 generation): a small CNN trained once, in seconds on
  CPU, on scikit-learn's bundled digits and cached; its 128-d penultimate layer is the feature.
- :class:`InceptionFeatures`: the standard FID Inception-v3 (pool3, 2048-d) from torch-fidelity, loaded from a local
  weights file.
- :class:`FeatureNet` around any user module mapping images to ``(B, d)``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DIGITS_CACHE_NAME",
    "INCEPTION_WEIGHTS_NAME",
    "INCEPTION_WEIGHTS_URL",
    "DigitClassifier",
    "FeatureNet",
    "InceptionFeatures",
    "default_cache_dir",
    "digits_feature_network",
    "load_digits_images",
    "train_digit_classifier",
]

log = logging.getLogger(__name__)

DIGITS_CACHE_NAME = (
    "digits_classifier_v1.pt"  # bump the version when the architecture or the training changes
)
MIN_DIGITS_ACCURACY = 0.95
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"
)


def default_cache_dir() -> Path:
    """segen's cache folder: ``$SEGEN_CACHE`` if set, else ``~/.cache/segen``."""
    return Path(os.environ.get("SEGEN_CACHE") or "~/.cache/segen").expanduser()


# ----------------------------------------------------------------------------------------------------------
# the generic wrapper
# ----------------------------------------------------------------------------------------------------------


class FeatureNet(nn.Module):
    """Frozen ``images (B, C, H, W) in [-1, 1] -> features (B, num_features)`` network for torchmetrics.

    Args:
        module: maps the prepared images to ``(B, num_features)``; it receives ``[-1, 1]`` floats unless a
            subclass overrides :meth:`prepare`.
        num_features: feature size ``d``; torchmetrics sizes its states from it.
        in_channels: if set, inputs with another channel count raise ``ValueError`` (say so, never guess).
        image_size: if set, inputs of another size are resized (bilinear, antialiased) to this square size.
    """

    def __init__(
        self,
        module: nn.Module,
        num_features: int,
        in_channels: int | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.module = module
        self.num_features = num_features
        self.in_channels = in_channels
        self.image_size = image_size
        self.info: dict[str, Any] = {}  # provenance (weights file, held-out accuracy) for logs and reports
        self.requires_grad_(False)
        self.eval()
        # Loading a checkpoint: the weights are not in it (see state_dict), so keep the current ones.
        # (the private form: the public register_load_state_dict_pre_hook is missing from older torch releases)
        self._register_load_state_dict_pre_hook(_keep_own_weights, with_module=True)

    def train(self, mode: bool = True) -> FeatureNet:
        """Stay in eval mode whatever is asked: a metric's feature network must never change with training."""
        return super().train(False)

    def state_dict(
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> Any:
        """Nothing: the weights come from a file, not from the checkpoint of the task that owns the metric."""
        return OrderedDict() if destination is None else destination

    def prepare(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` in ``[-1, 1]`` -> what ``module`` takes: resized, in the parameters' dtype."""
        if self.image_size is not None and images.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            images = F.interpolate(
                images.float(), size=size, mode="bilinear", align_corners=False, antialias=True
            )
        param = next(self.module.parameters(), None)
        return images.to(param.dtype if param is not None and param.is_floating_point() else torch.float32)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"expected float images in [-1, 1], got dtype {images.dtype}; "
                "convert uint8 images with images.float() / 127.5 - 1"
            )
        if self.in_channels is not None and images.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} takes {self.in_channels}-channel images, got {images.shape[1]} channels "
                f"(shape {tuple(images.shape)}); use a feature network made for {images.shape[1]} channels "
                "(e.g. InceptionFeatures for RGB, or FeatureNet around your own module)"
            )
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            features = self.module(self.prepare(images))  # (B, C, H, W) -> (B, d)
        if features.dim() != 2 or features.shape != (images.shape[0], self.num_features):
            raise ValueError(
                f"feature module returned shape {tuple(features.shape)}, expected "
                f"({images.shape[0]}, {self.num_features}) = (batch, num_features)"
            )
        return features.float()


def _keep_own_weights(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, strict: bool, *args: Any
) -> None:
    # Fill in (or overwrite) this module's entries with its current tensors, so strict loading finds every key
    # and an older checkpoint that did carry feature weights cannot replace the ones from the weights file.
    for key, value in nn.Module.state_dict(module, prefix=prefix, keep_vars=True).items():
        state_dict[key] = value.detach()


# ----------------------------------------------------------------------------------------------------------
# digits classifier
# ----------------------------------------------------------------------------------------------------------


def load_digits_images(size: int = 32) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 bundled 8×8 digits as ``(N, 1, size, size)`` floats in ``[-1, 1]`` and ``(N,)`` labels.

    Values 0..16 are scaled to ``[0, 1]``, resized bilinearly, then mapped to ``[-1, 1]`` (background is ``-1``):
    the preprocessing the digits classifier is trained with.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (images * 2 - 1).clamp(-1, 1), torch.as_tensor(digits.target, dtype=torch.long)


class DigitClassifier(nn.Module):
    """Small CNN for ``(B, 1, 32, 32)`` digits in ``[-1, 1]``; ``features`` (128-d, penultimate layer) feed FID/KID.

    Three stride-2 conv → BatchNorm → ReLU stages (32, 64, 128 channels; 32 → 16 → 8 → 4, then global average
    pooling), a 128-d fully connected layer with ReLU (the features, like Inception's post-ReLU pool3), and a
    linear head to 10 classes.
    """

    def __init__(self, num_features: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.num_features = num_features

        def stage(cin: int, cout: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *stage(1, 32),  # 32 -> 16
            *stage(32, 64),  # 16 -> 8
            *stage(64, 128),  # 8 -> 4
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, num_features),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, 1, 32, 32) -> (B, d) -> (B, num_classes)


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random shifts (±3 px), scales (0.9-1.1) and rotations (±10°), so generated digits that are slightly off
    the dataset's centring still land on meaningful features. Background (-1) fills the border."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator) * 2 - 1  # (B, 4) in [-1, 1]
    angle, scale, shift = u[:, 0] * (10 * torch.pi / 180), 1 + 0.1 * u[:, 1], u[:, 2:] * (3 / 16)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1  # zero padding of x + 1 is background -1


def train_digit_classifier(
    seed: int = 0, epochs: int = 15, batch_size: int = 64, lr: float = 3e-3
) -> tuple[DigitClassifier, float]:
    """Train :class:`DigitClassifier` on a seeded 80/20 split of scikit-learn's digits; return it and its held-out
    accuracy.

    Runs on CPU in one thread: tiny convolutions gain nothing from more threads, and on a loaded 2-core machine
    intra-op threads that wait on each other made each step ~50× slower; one thread also makes the float
    reductions, hence the weights, independent of the machine's core count. Deterministic for a given seed (own
    generator, forked global RNG left untouched).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_digit_classifier(seed, epochs, batch_size, lr)
    finally:
        torch.set_num_threads(threads)


def _train_digit_classifier(
    seed: int, epochs: int, batch_size: int, lr: float
) -> tuple[DigitClassifier, float]:
    images, labels = load_digits_images(32)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    n_train = int(0.8 * len(images))
    train_idx, test_idx = order[:n_train], order[n_train:]

    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        net = DigitClassifier()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-n_train // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    net.train()
    for _ in range(epochs):
        perm = train_idx[torch.randperm(n_train, generator=generator)]
        for start in range(0, n_train, batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(net(_augment(images[idx], generator)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    return net, accuracy


def _cache_path(directory: Path, seed: int) -> Path:
    return directory / (
        DIGITS_CACHE_NAME if seed == 0 else DIGITS_CACHE_NAME.replace(".pt", f"_seed{seed}.pt")
    )


def _atomic_save(obj: Any, path: Path) -> None:
    # Write to a temporary file in the same folder, then rename: two DDP ranks (or two runs) writing at once
    # each produce a complete file and the last rename wins; a reader never sees a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def digits_feature_network(cache_dir: str | Path | None = None, seed: int = 0) -> FeatureNet:
    """Feature network for 1-channel digit-like images: ``(B, 1, H, W)`` in ``[-1, 1]`` -> ``(B, 128)``.

    The first call trains :class:`DigitClassifier` (a few seconds on CPU), checks its held-out accuracy is at
    least 0.95 and caches the weights in ``cache_dir/digits_classifier_v1.pt`` (default: ``$SEGEN_CACHE`` or
    ``~/.cache/segen``); later calls load that file. Inputs of another size are resized to 32×32; inputs with
    other than one channel raise ``ValueError``. ``net.info`` holds the cache path, the held-out accuracy and the
    training time (0 when loaded).

    FID values are comparable only when computed with the same cached file: copy it along with results.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _cache_path(directory, seed)
    classifier = DigitClassifier()
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            classifier.load_state_dict(saved["state_dict"])
        except Exception as error:  # unreadable, truncated, or another network's weights
            raise RuntimeError(
                f"{path} is not a {DIGITS_CACHE_NAME} digits-classifier cache ({error}); delete it and it is "
                "retrained on the next call"
            ) from error
        accuracy, seconds = float(saved["held_out_accuracy"]), 0.0
    else:
        start = time.perf_counter()
        classifier, accuracy = train_digit_classifier(seed)
        seconds = time.perf_counter() - start
        if accuracy < MIN_DIGITS_ACCURACY:
            raise RuntimeError(
                f"digits classifier reached held-out accuracy {accuracy:.3f} < {MIN_DIGITS_ACCURACY} (seed {seed}); "
                "its features would make a poor FID. Try another seed; nothing was cached."
            )
        _atomic_save(
            {"state_dict": classifier.state_dict(), "held_out_accuracy": accuracy, "seed": seed}, path
        )
        log.info(
            "trained digits classifier in %.1fs: held-out accuracy %.4f, cached at %s",
            seconds,
            accuracy,
            path,
        )
    net = FeatureNet(classifier.features, classifier.num_features, in_channels=1, image_size=32)
    net.info.update(
        name="digits", weights=str(path), held_out_accuracy=accuracy, seed=seed, train_seconds=seconds
    )
    return net


# ----------------------------------------------------------------------------------------------------------
# Inception (torch-fidelity weights, local file only)
# ----------------------------------------------------------------------------------------------------------


def _missing_inception_message(path: Path) -> str:
    return (
        f"Inception weights not found at {path}. segen never downloads weights. On a machine with network, get "
        f"{INCEPTION_WEIGHTS_URL} (e.g. `curl -L -O <url>`, or run "
        f"`python -c \"import torch; torch.hub.load_state_dict_from_url('{INCEPTION_WEIGHTS_URL}')\"`, which "
        f"saves it under ~/.cache/torch/hub/checkpoints/), copy it to {path} (or to $SEGEN_CACHE/"
        f"{INCEPTION_WEIGHTS_NAME}) and pass that path"
    )


class InceptionFeatures(FeatureNet):
    """FID's standard Inception-v3 pool3 features, ``(B, 1 or 3, H, W)`` in ``[-1, 1]`` -> ``(B, 2048)``.

    The network is torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's TensorFlow-compatible port), built
    from the local weights file ``weights_path`` (``weights-inception-2015-12-05-6726825d.pth``). Images are
    quantised to ``uint8`` as the network expects (it resizes to 299×299 itself); 1-channel images are repeated
    to RGB. A missing file raises ``FileNotFoundError``, a missing torch-fidelity ``ModuleNotFoundError``; nothing
    is ever downloaded.
    """

    def __init__(self, weights_path: str | Path) -> None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(_missing_inception_message(path))
        try:
            import torch_fidelity  # noqa: F401  (torchmetrics' Inception is torch-fidelity's)
        except ImportError as error:
            raise ModuleNotFoundError(
                "InceptionFeatures needs torch-fidelity: `pip install torch-fidelity` (or "
                f"`pip install 'torchmetrics[image]'`). The weights file {path} is already in place."
            ) from error
        from torchmetrics.image.fid import NoTrainInceptionV3

        # With a weights path torch-fidelity calls torch.load(path) and never touches the network.
        inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )
        super().__init__(inception, num_features=2048)
        self.info.update(name="inception", weights=str(path))

    def prepare(self, images: Tensor) -> Tensor:
        """``(B, 1|3, H, W)`` in ``[-1, 1]`` -> ``(B, 3, H, W)`` uint8 in ``[0, 255]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] != 3:
            raise ValueError(
                f"InceptionFeatures takes 1- or 3-channel images, got shape {tuple(images.shape)}"
            )
        return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
