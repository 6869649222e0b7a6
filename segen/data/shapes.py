"""Synthetic shapes: segen's embedded default data set for semantic and instance segmentation.

Every item is drawn on the fly from a textured background and a few filled shapes, so the data set needs no
download, no disk and no network, and the whole segmentation stack (configs, tasks, callbacks, tests) can run
anywhere in seconds. It is a real but fair task: shape colours are random and not tied to the class, so a network
has to learn *shape* (round, cornered, pointed, hollow) rather than colour; every shape differs clearly in colour
from the background under it and from the shapes drawn before it; the background carries a colour gradient,
stripes or a checker pattern and pixel noise, all of lower contrast than the shapes. Shapes are drawn in order, so
later shapes occlude earlier ones; each is placed at the least-overlapping of a few random positions, so overlaps
happen but rarely hide most of a shape. Every shape covers the area of a circle of its random ``size``, so all
classes get about the same number of pixels.

Classes (``SHAPE_NAMES``), in label order::

    0 background   1 circle   2 square   3 triangle   4 ellipse   5 cross   6 ring   7 star

``num_classes=K`` uses the first ``K - 1`` foreground kinds, e.g. the default ``K = 4`` gives background, circle,
square and triangle. Squares, triangles, ellipses, crosses and stars are randomly rotated; a ring shows what lies
under its hole.

Two item formats (``mode``):

- ``"semantic"``: ``(image, mask)``, image float ``[3, H, W]`` normalised with ``ShapesDataset.MEAN`` /
  ``ShapesDataset.STD`` (or in ``[0, 1]`` with ``normalize=False``), mask long ``[H, W]`` holding the class of the
  top-most shape at each pixel (0 = background; the ignore value 255 never occurs).
- ``"instance"``: ``(image, target)`` in torchvision's detection format. The image is in ``[0, 1]`` and is *not*
  normalised by default, because torchvision's Mask R-CNN normalises its inputs itself. ``target`` holds ``boxes``
  float ``[N, 4]`` (``x1, y1, x2, y2`` in pixels, ``x2``/``y2`` exclusive), ``labels`` int64 ``[N]`` and ``masks``
  uint8 ``[N, H, W]``, all computed from the *visible* part of each shape after occlusion; instances with fewer
  than ``min_instance_area`` visible pixels are dropped, so ``N`` may be 0.

Determinism: item ``i`` of split ``s`` with seed ``seed`` is a pure function of ``(seed, s, i)`` and the
constructor arguments. Its random numbers come from a private ``torch.Generator`` seeded with a 64-bit hash of
those three values, so the same index always gives the same bits whatever the number of workers or the order of
reading, and the train, val and test splits never share a generator seed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset

from segen.data.loaders import SplitLoaders
from segen.inference.postprocess import boxes_from_masks

__all__ = ["SHAPE_NAMES", "ShapesDataModule", "ShapesDataset", "collate_instances", "denormalize"]

SHAPE_NAMES: tuple[str, ...] = (
    "background",
    "circle",
    "square",
    "triangle",
    "ellipse",
    "cross",
    "ring",
    "star",
)

_SPLITS = ("train", "val", "test")
_MODES = ("semantic", "instance")
_MASK64 = (1 << 64) - 1

# Random numbers drawn per item: a block for the background and the shape count, then one block per shape slot.
_BG_PARAMS = 16
_COLOUR_CANDIDATES = 8
_POSITION_CANDIDATES = 4
_SHAPE_PARAMS = 4 + 2 * _POSITION_CANDIDATES + 3 * _COLOUR_CANDIDATES

# Shapes must differ from the background colour at their centre and from every shape drawn before them by at
# least these Euclidean RGB distances (colours in [0, 1]), so that every visible edge is a real edge.
_MIN_CONTRAST_BACKGROUND = 0.35
_MIN_CONTRAST_SHAPES = 0.3


def _splitmix64(x: int) -> int:
    """A 64-bit integer mixer (the finaliser of SplitMix64): nearby inputs give unrelated outputs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _item_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of one item: a hash of ``(seed, split, index)``, so splits and seeds never collide."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (_SPLITS.index(split) + 1))
    return _splitmix64(h ^ index)


def denormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Undo ``(x - mean) / std``: ``[B, C, H, W]`` or ``[C, H, W]`` normalised images back to ``[0, 1]``."""
    if images.dim() not in (3, 4) or images.shape[-3] != len(mean):
        raise ValueError(
            f"denormalize expects images of shape [B, {len(mean)}, H, W] or [{len(mean)}, H, W], "
            f"got {tuple(images.shape)}"
        )
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return images * s + m


def collate_instances(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict]]:
    """Collate instance items into torchvision's detection batch: ``(list of images, list of target dicts)``."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def _check_int(name: str, value: Any, minimum: int, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


class ShapesDataset(Dataset):
    """Procedurally generated images of textured backgrounds and filled shapes (see the module docstring).

    Args:
        num_samples: number of items (``len(dataset)``).
        image_size: height and width in pixels (at least 16).
        num_classes: 1 + the number of foreground shape kinds, taken in ``SHAPE_NAMES`` order
            (``2 <= num_classes <= len(SHAPE_NAMES)``).
        min_shapes, max_shapes: each image holds a uniform random number of shapes in this range.
        min_size, max_size: shape size in pixels, drawn uniformly: every shape covers the area of a circle of
            that radius (so all classes get similar pixel counts; a triangle's circumradius is 1.56 times its
            size). Default ``image_size // 8`` and ``image_size // 4``; at most ``image_size // 3``.
        seed: base seed; item ``i`` is a pure function of ``(seed, split, i)``.
        split: ``"train"``, ``"val"`` or ``"test"``; different splits never share items.
        mode: ``"semantic"`` gives ``(image, mask)``, ``"instance"`` gives ``(image, target)`` in torchvision's
            detection format.
        normalize: normalise images with ``MEAN``/``STD``. ``None`` (default) means yes in semantic mode and no
            in instance mode (torchvision's Mask R-CNN normalises its inputs itself).
        min_instance_area: instance mode drops shapes with fewer visible pixels than this.
    """

    #: Per-channel mean and standard deviation of the default images in [0, 1] (measured over 2000 training
    #: images with the default arguments, then rounded); ``normalize`` maps images to ``(x - MEAN) / STD``.
    MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
    STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __init__(
        self,
        num_samples: int,
        image_size: int = 64,
        num_classes: int = 4,
        min_shapes: int = 2,
        max_shapes: int = 5,
        min_size: int | None = None,
        max_size: int | None = None,
        seed: int = 0,
        split: str = "train",
        mode: str = "semantic",
        normalize: bool | None = None,
        min_instance_area: int = 10,
    ) -> None:
        _check_int("num_samples", num_samples, 1, "a positive integer")
        _check_int("image_size", image_size, 16, "an integer >= 16 (pixels)")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
        if not 2 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(
                f"num_classes must be in [2, {len(SHAPE_NAMES)}] (background + 1..{len(SHAPE_NAMES) - 1} of "
                f"{SHAPE_NAMES[1:]}), got {num_classes}"
            )
        _check_int("min_shapes", min_shapes, 0, "a non-negative integer")
        _check_int("max_shapes", max_shapes, 1, "a positive integer")
        if min_shapes > max_shapes:
            raise ValueError(
                f"min_shapes must be <= max_shapes, got min_shapes={min_shapes} > max_shapes={max_shapes}"
            )
        min_size = image_size // 8 if min_size is None else min_size
        max_size = image_size // 4 if max_size is None else max_size
        _check_int("min_size", min_size, 2, "an integer >= 2 (pixels)")
        _check_int("max_size", max_size, min_size, f"an integer in [min_size={min_size}, image_size // 3]")
        if max_size > image_size // 3:
            raise ValueError(
                f"max_size must be <= image_size // 3 = {image_size // 3} so that every shape fits in the image, "
                f"got {max_size}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if normalize is not None and not isinstance(normalize, bool):
            raise ValueError(
                f"normalize must be True, False or None (mode-dependent default), got {normalize!r}"
            )
        _check_int("min_instance_area", min_instance_area, 1, "a positive integer (pixels)")

        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.min_shapes = min_shapes
        self.max_shapes = max_shapes
        self.min_size = min_size
        self.max_size = max_size
        self.seed = seed
        self.split = split
        self.mode = mode
        self.normalize = (mode == "semantic") if normalize is None else normalize
        self.min_instance_area = min_instance_area
        self.class_names: tuple[str, ...] = SHAPE_NAMES[:num_classes]
        # The normalisation applied to the returned images: identity when normalize is off.
        self.mean: tuple[float, ...] = self.MEAN if self.normalize else (0.0, 0.0, 0.0)
        self.std: tuple[float, ...] = self.STD if self.normalize else (1.0, 1.0, 1.0)

        # Pixel-centre coordinates, shared by every item.
        self._line = torch.arange(image_size, dtype=torch.float32) + 0.5
        self._yy, self._xx = torch.meshgrid(self._line, self._line, indexing="ij")
        self._mean_t = torch.tensor(self.mean).view(3, 1, 1)
        self._std_t = torch.tensor(self.std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, image_size={self.image_size}, "
            f"num_classes={self.num_classes}, split={self.split!r}, mode={self.mode!r}, seed={self.seed})"
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | tuple[Tensor, dict[str, Tensor]]:
        index = int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"index {index} is out of range for a {type(self).__name__} of length {self.num_samples}"
            )
        image, ids, class_map, classes = self._render(index)
        if self.normalize:
            image = (image - self._mean_t) / self._std_t
        if self.mode == "semantic":
            return image, class_map
        return image, self._instance_target(ids, classes)

    def denormalize(self, images: Tensor) -> Tensor:
        """Map images returned by this data set (``[B, 3, H, W]`` or ``[3, H, W]``) back to ``[0, 1]``."""
        return denormalize(images, self.mean, self.std)

    # ------------------------------------------------------------------ drawing

    def _render(self, index: int) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Draw item ``index``: image ``[3, H, W]`` in [0, 1], shape-id map ``[H, W]`` (0 = background, k = k-th
        shape drawn; later shapes overwrite earlier ones), class map ``[H, W]`` and the class of each shape.

        Only small or one-dimensional tensor ops and in-place fills are used: on a busy 2-core machine the
        multi-threaded kernels that PyTorch picks for gathers and transcendental functions cost milliseconds each.
        """
        g = torch.Generator().manual_seed(_item_seed(self.seed, self.split, index))
        s = self.image_size
        r = torch.rand(_BG_PARAMS + self.max_shapes * _SHAPE_PARAMS, generator=g).tolist()
        noise = torch.randn(3, s, s, generator=g)
        xx, yy, line = self._xx, self._yy, self._line

        # Background: a colour gradient, a faint texture (none, stripes or checker) and, at the end, pixel noise.
        base = [0.15 + 0.7 * u for u in r[0:3]]
        slope = [0.5 * (u - 0.5) for u in r[3:6]]  # colour change across the image, in [-0.25, 0.25]
        theta = 2 * math.pi * r[6]
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        t = ((xx - s / 2) * cos_t + (yy - s / 2) * sin_t) / s  # in [-0.71, 0.71]
        image = torch.tensor(base).view(3, 1, 1) + torch.tensor(slope).view(3, 1, 1) * t
        texture_kind = int(r[7] * 3)
        amplitude = 0.03 + 0.04 * r[8]
        phi = 2 * math.pi * r[10]
        if texture_kind == 1:  # stripes: sin(a x + b y + phi), expanded into outer products of 1-D terms
            w = 2 * math.pi * (3 + 7 * r[9]) / s
            alpha = 2 * math.pi * r[11]
            ax, by = w * math.cos(alpha) * line + phi, w * math.sin(alpha) * line
            stripes = torch.outer(by.cos(), ax.sin()) + torch.outer(by.sin(), ax.cos())
            image = image + amplitude * stripes
        elif texture_kind == 2:  # checker: the sign of sin(w x + phi) sin(w y + phi)
            w = 2 * math.pi * (2 + 4 * r[9]) / s
            wave = (w * line + phi).sin()
            image = image + amplitude * torch.outer(wave, wave).sign()
        noise_std = 0.01 + 0.02 * r[12]

        span = self.max_shapes - self.min_shapes + 1
        num_shapes = self.min_shapes + min(int(r[13] * span), span - 1)
        ids = torch.zeros(s, s, dtype=torch.long)
        class_map = torch.zeros(s, s, dtype=torch.long)
        classes: list[int] = []
        colours: list[list[float]] = []
        discs: list[tuple[float, float, float]] = []  # (cx, cy, radius) of the shapes drawn so far
        for k in range(num_shapes):
            p = r[_BG_PARAMS + k * _SHAPE_PARAMS : _BG_PARAMS + (k + 1) * _SHAPE_PARAMS]
            cls = 1 + min(int(p[0] * (self.num_classes - 1)), self.num_classes - 2)
            name = SHAPE_NAMES[cls]
            size = self.min_size + (self.max_size - self.min_size) * p[1]
            geometry = _shape_geometry(name, size, p[3])
            radius = geometry[0]
            margin = 0.75 * radius
            positions = p[4 : 4 + 2 * _POSITION_CANDIDATES]
            cx, cy = _pick_position(
                [
                    (margin + (s - 2 * margin) * x, margin + (s - 2 * margin) * y)
                    for x, y in zip(positions[::2], positions[1::2])
                ],
                radius,
                discs,
            )
            discs.append((cx, cy, radius))
            under = [b + d * ((cx - s / 2) * cos_t + (cy - s / 2) * sin_t) / s for b, d in zip(base, slope)]
            colour = _pick_colour(p[4 + 2 * _POSITION_CANDIDATES :], under, colours)
            inside = self._shape_mask(name, cx, cy, geometry, 2 * math.pi * p[2])
            for channel, value in enumerate(colour):
                image[channel].masked_fill_(inside, value)
            ids.masked_fill_(inside, k + 1)
            class_map.masked_fill_(inside, cls)
            colours.append(colour)
            classes.append(cls)

        image = (image + noise_std * noise).clamp_(0.0, 1.0)
        return image, ids, class_map, classes

    def _shape_mask(
        self, name: str, cx: float, cy: float, geometry: tuple[float, float, float], angle: float
    ) -> Tensor:
        """Boolean ``[H, W]`` mask of one shape centred at ``(cx, cy)``, rotated by ``angle``, with the
        ``(extent, a, b)`` proportions from :func:`_shape_geometry`."""
        _, a, b = geometry
        dx, dy = self._xx - cx, self._yy - cy
        if name == "circle":
            return dx * dx + dy * dy <= a * a
        if name == "ring":
            d2 = dx * dx + dy * dy
            return (d2 <= a * a) & (d2 >= b * b)
        c, s = math.cos(angle), math.sin(angle)
        u = dx * c + dy * s  # coordinates in the shape's rotated frame
        v = dy * c - dx * s
        if name == "square":
            return (u.abs() <= a) & (v.abs() <= a)
        if name == "ellipse":
            return (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if name == "cross":
            au, av = u.abs(), v.abs()
            return ((au <= a) & (av <= b)) | ((au <= b) & (av <= a))
        if name == "triangle":
            return _polygon_mask(u, v, [[(2 * math.pi * k / 3, a) for k in range(3)]])
        if name == "star":
            step = math.pi / 5
            kites = [
                [(0.0, 0.0), (2 * k * step - step, b), (2 * k * step, a), (2 * k * step + step, b)]
                for k in range(5)
            ]
            return _polygon_mask(u, v, kites)
        raise AssertionError(f"no drawing rule for shape {name!r}")  # pragma: no cover - SHAPE_NAMES is fixed

    # ------------------------------------------------------------------ instance targets

    def _instance_target(self, ids: Tensor, classes: list[int]) -> dict[str, Tensor]:
        s = self.image_size
        if classes:
            masks = ids.unsqueeze(0) == torch.arange(1, len(classes) + 1).view(-1, 1, 1)  # [n, H, W]
            keep = masks.flatten(1).sum(1) >= self.min_instance_area
            masks = masks[keep]
            labels = torch.tensor(classes, dtype=torch.int64)[keep]
        else:
            masks = torch.zeros(0, s, s, dtype=torch.bool)
            labels = torch.zeros(0, dtype=torch.int64)
        return {"boxes": boxes_from_masks(masks), "labels": labels, "masks": masks.to(torch.uint8)}


def _shape_geometry(name: str, size: float, aux: float) -> tuple[float, float, float]:
    """Proportions ``(extent, a, b)`` of a shape whose area equals that of a circle of radius ``size``, so that
    every class covers about as many pixels (a triangle of the same circumradius as a circle covers 41% of its
    area). ``extent`` is the circumradius; ``aux`` in [0, 1) varies a class-specific proportion.

    circle: a = radius. ring: a, b = outer and inner radius. square: a = half-side. ellipse: a, b = semi-axes.
    cross: a, b = arm half-length and half-width. triangle: a = circumradius. star: a, b = outer and inner radius.
    """
    area = math.pi * size * size
    if name == "circle":
        return size, size, 0.0
    if name == "ring":
        q = 0.45 + 0.15 * aux  # inner / outer radius
        outer = math.sqrt(area / (math.pi * (1 - q * q)))
        return outer, outer, q * outer
    if name == "square":
        half = math.sqrt(area) / 2
        return half * math.sqrt(2), half, 0.0
    if name == "ellipse":
        e = 0.4 + 0.2 * aux  # minor / major axis
        major = math.sqrt(area / (math.pi * e))
        return major, major, e * major
    if name == "cross":
        c = 0.25 + 0.1 * aux  # arm half-width / half-length; area = 4 c (2 - c) L^2
        length = math.sqrt(area / (4 * c * (2 - c)))
        return math.hypot(length, c * length), length, c * length
    if name == "triangle":
        circumradius = math.sqrt(area / (3 * math.sqrt(3) / 4))
        return circumradius, circumradius, 0.0
    if name == "star":
        q = 0.45  # inner / outer radius; area = 5 q sin(pi / 5) R^2
        outer = math.sqrt(area / (5 * q * math.sin(math.pi / 5)))
        return outer, outer, q * outer
    raise AssertionError(f"no geometry for shape {name!r}")  # pragma: no cover - SHAPE_NAMES is fixed


def _pick_position(
    candidates: list[tuple[float, float]], radius: float, discs: list[tuple[float, float, float]]
) -> tuple[float, float]:
    """The candidate centre whose circumscribed disc overlaps the earlier shapes' discs least (measured as the
    deepest penetration, relative to ``radius``). Overlaps still happen, but a shape rarely hides most of another,
    so occluded shapes keep enough of their outline to be recognisable."""
    best, best_depth = candidates[0], math.inf
    for cx, cy in candidates:
        depth = max((r + radius - math.hypot(cx - x, cy - y) for x, y, r in discs), default=0.0) / radius
        if depth <= 0:
            return cx, cy
        if depth < best_depth:
            best, best_depth = (cx, cy), depth
    return best


def _pick_colour(candidates: list[float], under: list[float], previous: list[list[float]]) -> list[float]:
    """The first candidate colour that contrasts with the background under the shape and with every earlier
    shape; if none does, the candidate with the largest margin (deterministic, no extra random numbers)."""
    best, best_margin = None, -math.inf
    for j in range(_COLOUR_CANDIDATES):
        colour = candidates[3 * j : 3 * j + 3]
        margin = math.dist(colour, under) - _MIN_CONTRAST_BACKGROUND
        for other in previous:
            margin = min(margin, math.dist(colour, other) - _MIN_CONTRAST_SHAPES)
        if margin >= 0:
            return colour
        if margin > best_margin:
            best, best_margin = colour, margin
    return best


def _polygon_mask(u: Tensor, v: Tensor, polygons: list[list[tuple[float, float]]]) -> Tensor:
    """Union of convex polygons given as ``(angle, radius)`` vertices in counter-clockwise order: a pixel is
    inside a polygon when it lies left of (or on) every edge (vectorised half-plane tests, one polygon at a time
    so that no tensor grows large enough for PyTorch to split it across threads)."""
    inside = None
    for polygon in polygons:
        pts = torch.tensor([(rad * math.cos(a), rad * math.sin(a)) for a, rad in polygon])  # [V, 2]
        edges = pts.roll(-1, dims=0) - pts
        ax, ay = pts[:, 0, None, None], pts[:, 1, None, None]  # [V, 1, 1]
        ex, ey = edges[:, 0, None, None], edges[:, 1, None, None]
        cross = ex * (v - ay) - ey * (u - ax)  # [V, H, W]
        part = (cross >= 0).all(dim=0)
        inside = part if inside is None else inside.logical_or_(part)
    return inside


class ShapesDataModule(SplitLoaders, LightningDataModule):
    """Lightning data module over :class:`ShapesDataset` with train/val/test splits that never overlap.

    The attributes ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std`` and ``class_names`` exist
    right after ``__init__`` so that LightningCLI can link them to the model. ``mean``/``std`` are the
    normalisation applied to the loaders' images (``ShapesDataset.MEAN``/``STD`` in semantic mode; identity in
    instance mode, whose images stay in [0, 1] for torchvision's Mask R-CNN); ``denormalize`` undoes it.

    Semantic batches are ``(images [B, 3, H, W], masks [B, H, W])``; instance batches are
    ``(list of images, list of target dicts)``. ``predict_dir`` names a folder of unlabelled images for
    ``segen predict`` (:mod:`segen.data.predict`); without it prediction runs on the test split.
    """

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 64,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        min_shapes: int = 2,
        max_shapes: int = 5,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        mode: Literal["semantic", "instance"] = "semantic",
        pin_memory: bool = False,
        min_size: int | None = None,
        max_size: int | None = None,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            _check_int(name, value, 1, "a positive integer (number of items)")
        _check_int("batch_size", batch_size, 1, "a positive integer")
        _check_int("num_workers", num_workers, 0, "a non-negative integer (0 loads in the main process)")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.save_hyperparameters()
        self._dataset_kwargs = dict(
            image_size=image_size,
            num_classes=num_classes,
            min_shapes=min_shapes,
            max_shapes=max_shapes,
            min_size=min_size,
            max_size=max_size,
            seed=seed,
            mode=mode,
        )
        # Building one tiny data set validates every drawing argument now, with the data set's messages.
        probe = ShapesDataset(1, split="train", **self._dataset_kwargs)

        self.num_classes = num_classes
        self.in_channels = 3
        self.image_size = image_size
        self.mean: tuple[float, ...] = probe.mean
        self.std: tuple[float, ...] = probe.std
        self.class_names: tuple[str, ...] = probe.class_names
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mode = mode
        self.pin_memory = pin_memory
        self.train_dataset: ShapesDataset | None = None
        self.val_dataset: ShapesDataset | None = None
        self.test_dataset: ShapesDataset | None = None
        self.predict_dataset: Dataset | None = None
        self.predict_dir = predict_dir

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = ShapesDataset(self.num_train, split="train", **self._dataset_kwargs)
        if stage in (None, "fit", "validate"):
            self.val_dataset = ShapesDataset(self.num_val, split="val", **self._dataset_kwargs)
        if stage in (None, "test", "predict"):
            self.test_dataset = ShapesDataset(self.num_test, split="test", **self._dataset_kwargs)
            self.predict_dataset = self.test_dataset
        self._setup_predict_dir(stage)

    def denormalize(self, images: Tensor) -> Tensor:
        """Map loader images (``[B, 3, H, W]`` or ``[3, H, W]``) back to ``[0, 1]``."""
        return denormalize(images, self.mean, self.std)

    def _collate_fn(self) -> Any:
        return collate_instances if self.mode == "instance" else None
