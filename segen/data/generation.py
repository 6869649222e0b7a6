"""Data modules for image generation (GANs, VAEs): scikit-learn digits (embedded), MNIST, Fashion-MNIST, CIFAR-10
and ImageNet-style class folders.

Every module yields ``(images, labels)`` batches: ``images`` float ``[B, C, S, S]`` in ``[-1, 1]`` (a tanh
generator's range; ``denormalize`` maps back to ``[0, 1]``), ``labels`` long ``[B]`` (for class-conditional models;
unconditional ones ignore them). The shape attributes ``channels`` (also as ``in_channels``), ``image_size``,
``num_classes`` and ``class_names`` exist right after ``__init__``, without reading any data, so LightningCLI can
link them to the model; ``setup()`` builds ``train_dataset``, ``val_dataset`` and ``test_dataset`` (the test split
is the validation split: generative models have no separate test protocol here).

- :class:`DigitsDataModule`: scikit-learn's bundled 8x8 digits, the embedded default: it never downloads anything.
- :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`, :class:`CIFAR10DataModule`: torchvision's readers of the
  official files; validation is the official test split. Nothing is downloaded unless ``download=True``.
- :class:`ImageFolderDataModule`: torchvision's ``ImageFolder`` (``root/<class>/<image>``), resized and centre-cropped.

``binarize=True`` (digits, MNIST, Fashion-MNIST) gives *dynamically binarised* images for Bernoulli-likelihood VAEs:
each pixel is 1 with probability equal to its intensity in ``[0, 1]`` and mapped to ``{-1, 1}``. Training items are
resampled every time they are read (torch's global generator, which Lightning seeds per worker), as in
Salakhutdinov & Murray (2008), so the model cannot overfit one binarisation; validation items use a generator seeded
with ``(seed, index)``, so the validation ELBO is measured on the same binary images at every epoch.

Corrupt files: an image of an :class:`ImageFolderDataModule` that cannot be decoded raises
:class:`~segen.data._files.CorruptFileError` naming it, or is skipped with ``skip_corrupt=True`` (listed in
``corrupt_files``). MNIST-style idx files and CIFAR-10 batches hold a whole split each, so there is nothing to skip:
one that is cut short or not in the expected format raises ``CorruptFileError`` naming it and how to get it again.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.error import URLError

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import v2

from segen.data._common import require_layout
from segen.data._files import CorruptFileError, SkipsCorruptFiles, open_image
from segen.data.loaders import SplitLoaders

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "GenerationDataset",
    "ImageFolderDataModule",
    "MNISTDataModule",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_MIN_IMAGE_SIZE = 8
_MASK64 = (1 << 64) - 1


def _check_int(name: str, value: Any, minimum: int, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def _splitmix64(x: int) -> int:
    """A 64-bit integer mixer (SplitMix64's finaliser): nearby inputs give unrelated outputs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _item_seed(seed: int, index: int) -> int:
    """Generator seed of one item's fixed binarisation. Hashed, because torch's CPU generator keeps only the low
    32 bits of a seed: ``(seed << 32) + index`` would give every seed the same draws."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ index)


def _problem(dataset: str, root: Path, missing: Sequence[str]) -> str:
    """First line of a missing-files error: the root does not exist, or which files it lacks."""
    if not root.is_dir():
        return f"the {dataset} root {str(root)!r} does not exist or is not a folder"
    return f"the {dataset} root {str(root)!r} lacks {', '.join(repr(m) for m in missing)}"


class GenerationDataset(Dataset):
    """``(image float [C, S, S] in [-1, 1], label long [])`` items from any source of ``(image, label)`` pairs.

    Args:
        source: indexable; ``source[i]`` returns ``(image, label)`` (a torchvision data set, a ``TensorDataset``).
        transform: maps a source image to float ``[C, S, S]`` in ``[0, 1]``; ``None`` when the source already
            gives that.
        indices: the source items this data set shows, in order (a split); ``None`` for all of them.
        binarize: ``None``, ``"resample"`` (a fresh Bernoulli draw at every read: training) or ``"fixed"`` (a draw
            seeded with ``(seed, index)``: the same binary image at every read: validation).
        seed: seeds the fixed binarisation.
    """

    def __init__(
        self,
        source: Any,
        transform: Callable[[Any], Tensor] | None = None,
        indices: Sequence[int] | None = None,
        binarize: str | None = None,
        seed: int = 0,
    ) -> None:
        if binarize not in (None, "resample", "fixed"):
            raise ValueError(f"binarize must be None, 'resample' or 'fixed', got {binarize!r}")
        self.source, self.transform, self.binarize, self.seed = source, transform, binarize, seed
        self.indices: list[int] = list(range(len(source))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if index < 0:
            index += len(self.indices)
        image, label = self.source[self.indices[index]]
        if self.transform is not None:
            image = self.transform(image)  # (C, S, S) in [0, 1]
        if self.binarize == "resample":
            image = (torch.rand(image.shape) < image).to(image.dtype)
        elif self.binarize == "fixed":
            g = torch.Generator().manual_seed(_item_seed(self.seed, index))
            image = (torch.rand(image.shape, generator=g) < image).to(image.dtype)
        return image * 2.0 - 1.0, torch.tensor(int(label), dtype=torch.long)


class _GenerationDataModule(SplitLoaders, LightningDataModule):
    """Shared part of the generation data modules: argument checks, shape attributes, ``setup`` and
    ``denormalize``. A subclass implements ``_make_dataset(split)`` for ``"train"`` and ``"val"``.

    ``conditional=True`` asks for a class-conditional model: the CLI then links ``num_classes`` to the task (else
    the task gets ``num_classes=None``). Batches carry labels either way."""

    def __init__(
        self,
        *,
        channels: int,
        image_size: int,
        class_names: Sequence[str],
        batch_size: int,
        seed: int,
        num_workers: int,
        pin_memory: bool,
        conditional: bool = False,
    ) -> None:
        super().__init__()
        _check_int("image_size", image_size, _MIN_IMAGE_SIZE, f"an integer >= {_MIN_IMAGE_SIZE} (pixels)")
        _check_int("batch_size", batch_size, 1, "a positive integer")
        _check_int("num_workers", num_workers, 0, "a non-negative integer (0 loads in the main process)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
        self.channels = channels
        self.in_channels = channels  # the name the CLI links to the model
        self.image_size = image_size
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.num_classes = len(self.class_names)
        # Whether a task should condition on the labels: the CLI links num_classes to the model only when True, so
        # `segen fit -c dcgan_digits.yaml --data.conditional true` turns the same config into a conditional GAN.
        self.conditional = conditional
        # [-1, 1] is normalisation with mean 0.5 and std 0.5, stated for callbacks that read mean/std
        self.mean: tuple[float, ...] = (0.5,) * channels
        self.std: tuple[float, ...] = (0.5,) * channels
        self.batch_size, self.seed, self.num_workers, self.pin_memory = (
            batch_size,
            seed,
            num_workers,
            pin_memory,
        )
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None

    def _make_dataset(self, split: str) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = self._make_dataset("train")
        if stage in (None, "fit", "validate", "test", "predict"):
            self.val_dataset = self._make_dataset("val")
            self.test_dataset = self.predict_dataset = self.val_dataset

    def denormalize(self, images: Tensor) -> Tensor:
        """Map images in ``[-1, 1]`` (``[B, C, H, W]`` or ``[C, H, W]``, e.g. samples) to ``[0, 1]``, clamped."""
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- digits


class DigitsDataModule(_GenerationDataModule):
    """scikit-learn's bundled digits (1797 greyscale 8x8 images, values 0..16, labels 0..9): the embedded default
    for GANs and VAEs, read from scikit-learn's package files, so it never downloads anything.

    Images are scaled to ``[0, 1]`` (``/ 16``), resized once in ``setup`` to ``image_size`` x ``image_size`` with
    bilinear interpolation (antialiased, which only matters when shrinking; ``image_size=8`` keeps the original
    pixels) and mapped to ``[-1, 1]``. The train/val split is stratified by label and seeded by ``seed``
    (scikit-learn's ``train_test_split``): ``ceil(val_fraction * 1797)`` validation images (360 by default);
    ``test_dataset`` is the validation split. ``binarize=True`` gives dynamically binarised images (module
    docstring).
    """

    def __init__(
        self,
        image_size: int = 32,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        conditional: bool = False,
        binarize: bool = False,
    ) -> None:
        super().__init__(
            channels=1,
            image_size=image_size,
            class_names=[str(d) for d in range(10)],
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            pin_memory=pin_memory,
            conditional=conditional,
        )
        _check_fraction("val_fraction", val_fraction)
        num_val = math.ceil(val_fraction * 1797)  # the size train_test_split would pick
        if not 10 <= num_val <= 1797 - 10:
            raise ValueError(
                f"val_fraction={val_fraction} gives {num_val} of 1797 digits to validation; a stratified split "
                "needs at least 10 in each split (one per class): use a value in [0.006, 0.994]"
            )
        self.save_hyperparameters()
        self.val_fraction, self.binarize, self.num_val = val_fraction, binarize, num_val
        self._source: torch.utils.data.TensorDataset | None = None
        self.train_indices: list[int] | None = None
        self.val_indices: list[int] | None = None

    def _load(self) -> torch.utils.data.TensorDataset:
        """All 1797 digits, resized: images float ``[N, 1, S, S]`` in ``[0, 1]``, labels long ``[N]``."""
        if self._source is None:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            digits = load_digits()
            images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
            if self.image_size != 8:
                size = [self.image_size, self.image_size]
                images = v2.functional.resize(images, size, antialias=True).clamp_(0.0, 1.0)  # (N, 1, S, S)
            labels = torch.from_numpy(digits.target).long()  # (N,)
            train, val = train_test_split(
                np.arange(len(labels)), test_size=self.num_val, random_state=self.seed, stratify=digits.target
            )
            self.train_indices, self.val_indices = sorted(train.tolist()), sorted(val.tolist())
            self._source = torch.utils.data.TensorDataset(images, labels)
        return self._source

    def _make_dataset(self, split: str) -> GenerationDataset:
        source = self._load()
        indices = self.train_indices if split == "train" else self.val_indices
        binarize = ("resample" if split == "train" else "fixed") if self.binarize else None
        return GenerationDataset(source, None, indices, binarize, self.seed)


# ---------------------------------------------------------------------------------------------------- MNIST


class _MNISTLike(_GenerationDataModule):
    """MNIST-format data (idx files under ``root/<Name>/raw``) through a torchvision reader."""

    dataset_class: ClassVar[type[datasets.MNIST]] = datasets.MNIST
    display_name: ClassVar[str] = "MNIST"
    class_labels: ClassVar[tuple[str, ...]] = tuple(datasets.MNIST.classes)
    raw_files: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def __init__(
        self,
        root: str | Path,
        image_size: int = 32,
        batch_size: int = 64,
        download: bool = False,
        binarize: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        conditional: bool = False,
    ) -> None:
        super().__init__(
            channels=1,
            image_size=image_size,
            class_names=self.class_labels,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            pin_memory=pin_memory,
            conditional=conditional,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.download, self.binarize = download, binarize
        if not download:  # fail now, with the layout, rather than after the model was built
            self._check_files()
        steps: list[Any] = [v2.PILToTensor()]  # (1, 28, 28) uint8
        if image_size != 28:
            steps.append(v2.Pad(2, fill=0))  # (1, 32, 32): the digit keeps its 20x20 box inside a 32 frame
            if image_size != 32:
                steps.append(v2.Resize([image_size, image_size], antialias=True))  # (1, S, S)
        steps += [v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
        self.transform = v2.Compose(steps)

    @property
    def raw_folder(self) -> Path:
        """Where torchvision reads the idx files: ``root/<Name>/raw``."""
        return self.root / self.dataset_class.__name__ / "raw"

    def _how_to_get(self) -> str:
        mirror = self.dataset_class.mirrors[0]
        return (
            f"Get the files with {type(self).__name__}(root={str(self.root)!r}, download=True) once on a machine "
            f"with network access (torchvision downloads and unpacks them there), or download "
            f"{', '.join(f + '.gz' for f in self.raw_files)} from {mirror} into {str(self.raw_folder)!r} "
            "(the .gz files are unpacked on first use)."
        )

    def _missing_error(self, missing: Sequence[str], detail: str = "") -> FileNotFoundError:
        sub = f"{self.dataset_class.__name__}/raw"
        layout = "\n".join(f"    root/{sub}/{name}   (or {name}.gz)" for name in self.raw_files)
        return FileNotFoundError(
            f"{_problem(self.display_name, self.root, [f'{sub}/{m}' for m in missing])}.{detail}\n"
            f"Expected layout:\n{layout}\n{self._how_to_get()}"
        )

    def _check_files(self) -> None:
        """Raise ``FileNotFoundError`` unless every idx file exists, unpacked or as ``.gz``."""
        missing = [
            f
            for f in self.raw_files
            if not (self.raw_folder / f).is_file() and not (self.raw_folder / f"{f}.gz").is_file()
        ]
        if missing:
            raise self._missing_error(missing)

    def _unpack(self) -> None:
        """Unpack ``<file>.gz`` next to itself where only the archive exists (torchvision reads unpacked files).
        The file is written under a temporary name and renamed, so concurrent processes never read half a file."""
        for name in self.raw_files:
            target, archive = self.raw_folder / name, self.raw_folder / f"{name}.gz"
            if target.is_file() or not archive.is_file():
                continue
            partial = target.with_name(f"{name}.{os.getpid()}.partial")
            try:
                with gzip.open(archive, "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(partial, target)
            except (gzip.BadGzipFile, EOFError, zlib.error) as error:
                partial.unlink(missing_ok=True)
                raise CorruptFileError(
                    f"could not unpack {str(archive)!r}: it is cut short or not a gzip file ({type(error).__name__}: "
                    f"{error}). Delete it and get it again. {self._how_to_get()}"
                ) from error
            except OSError as error:
                partial.unlink(missing_ok=True)
                raise OSError(
                    f"could not unpack {str(archive)!r} to {str(target)!r} ({error}); unpack it yourself "
                    f"(gunzip -k {str(archive)!r}) or make the folder writable"
                ) from error

    def _check_contents(self, train: bool) -> None:
        """Read the headers of the split's idx files (cheap) and raise ``CorruptFileError`` naming a file whose
        header or size is not that of an unsigned-byte idx file, or whose item count differs from its partner's."""
        prefix = "train" if train else "t10k"
        counts = {}
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            path = self.raw_folder / f"{prefix}-{kind}-ubyte"
            if not path.is_file():
                return  # torchvision is about to download it, or reports it missing
            size = path.stat().st_size
            with open(path, "rb") as f:
                header = f.read(4 + 4 * ndim)
            problem = None
            if len(header) < 4 + 4 * ndim or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
                problem = (
                    f"it does not start with the header of an idx file of unsigned bytes with {ndim} dimension(s) "
                    f"(magic 0x0000080{ndim}; found {header[:4].hex() or 'nothing'})"
                )
            else:
                dims = struct.unpack(f">{ndim}I", header[4:])
                expected = len(header) + math.prod(dims)
                if size != expected:
                    problem = (
                        f"its header announces {'x'.join(map(str, dims))} values, a file of {expected} bytes, but it "
                        f"has {size} bytes (cut short or damaged)"
                    )
                elif dims[0] == 0:
                    problem = "it holds no item (its first dimension is 0)"
                counts[kind] = dims[0]
            if problem:
                raise CorruptFileError(
                    f"the {self.display_name} file {str(path)!r} cannot be read: {problem}. Delete it (and any "
                    f"{path.name}.gz beside it) and get it again. {self._how_to_get()}"
                )
        if len(set(counts.values())) > 1:
            raise CorruptFileError(
                f"the {self.display_name} files {prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte in "
                f"{str(self.raw_folder)!r} hold {counts['images-idx3']} images but {counts['labels-idx1']} labels; "
                f"expected one label per image. {self._how_to_get()}"
            )

    def _open(self, train: bool, download: bool) -> datasets.MNIST:
        if not download:
            self._check_files()
        self._unpack()
        self._check_contents(train)
        try:
            return self.dataset_class(str(self.root), train=train, download=download)
        except (RuntimeError, URLError) as error:
            missing = [f for f in self.raw_files if not (self.raw_folder / f).is_file()] or list(
                self.raw_files
            )
            raise self._missing_error(missing, f" torchvision said: {error}") from error

    def prepare_data(self) -> None:
        """Download (``download=True``) or unpack ``.gz`` files, once per node before ``setup``."""
        for train in (True, False):
            self._open(train, self.download)

    def _make_dataset(self, split: str) -> GenerationDataset:
        source = self._open(split == "train", self.download)
        binarize = ("resample" if split == "train" else "fixed") if self.binarize else None
        return GenerationDataset(source, self.transform, None, binarize, self.seed)


class MNISTDataModule(_MNISTLike):
    """MNIST (60000 train / 10000 test greyscale 28x28 digits) on torchvision's ``datasets.MNIST``.

    Expected layout (torchvision's)::

        root/MNIST/raw/train-images-idx3-ubyte   (or .gz: unpacked on first use)
        root/MNIST/raw/train-labels-idx1-ubyte
        root/MNIST/raw/t10k-images-idx3-ubyte
        root/MNIST/raw/t10k-labels-idx1-ubyte

    Missing files raise ``FileNotFoundError`` at construction, naming the files and how to get them;
    ``download=True`` lets torchvision fetch them (in ``prepare_data``) instead. Validation (and ``test_dataset``)
    is the official test split.

    Resizing: ``image_size=28`` keeps the native images; any other size first pads 2 black pixels on every side
    (the standard 32x32 framing of LeNet and DCGAN, so power-of-two networks fit), then, when ``image_size != 32``,
    resizes bilinearly (antialiased) to ``image_size``, so the digit fills the same fraction of the frame at every
    size. ``binarize=True`` gives dynamically binarised images (module docstring).

    An idx file whose header or size is wrong (cut short, random bytes, a ``.gz`` that does not unpack) raises
    :class:`~segen.data._files.CorruptFileError` naming it; there is no ``skip_corrupt``, as one file holds a split.
    """


class FashionMNISTDataModule(_MNISTLike):
    """Fashion-MNIST (60000 / 10000 greyscale 28x28 clothing images, 10 classes) on torchvision's
    ``datasets.FashionMNIST``: the same arguments, resizing and binarisation as :class:`MNISTDataModule`, with the
    files under ``root/FashionMNIST/raw/`` (same file names)."""

    dataset_class = datasets.FashionMNIST
    display_name = "Fashion-MNIST"
    class_labels = tuple(datasets.FashionMNIST.classes)


# ---------------------------------------------------------------------------------------------------- CIFAR-10


class _CIFAR10AnyContent(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader with its md5 checks reduced to "the file exists" (``verify_checksums=False``):
    for a modified copy (a subset, re-pickled files, the fake trees of segen's tests). Reading is unchanged."""

    train_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta: ClassVar[dict[str, Any]] = {**datasets.CIFAR10.meta, "md5": None}


class CIFAR10DataModule(_GenerationDataModule):
    """CIFAR-10 (50000 train / 10000 test 32x32 RGB images, 10 classes) on torchvision's ``datasets.CIFAR10``.

    Expected layout (the unpacked ``cifar-10-python.tar.gz``)::

        root/cifar-10-batches-py/data_batch_1 ... data_batch_5
        root/cifar-10-batches-py/test_batch
        root/cifar-10-batches-py/batches.meta

    Missing files raise ``FileNotFoundError`` at construction, naming the files and how to get them;
    ``download=True`` lets torchvision fetch them (in ``prepare_data``) instead. Validation (and ``test_dataset``)
    is the official test split. ``image_size != 32`` resizes bilinearly (antialiased).

    torchvision checks every file against the md5 of the official release; a mismatch raises ``RuntimeError``
    naming the files. ``verify_checksums=False`` only checks that the files exist (a subclass of torchvision's
    reader with the md5 entries set to ``None``), for a deliberately modified copy such as a subset; a batch file
    that then cannot be unpickled raises :class:`~segen.data._files.CorruptFileError` naming it (no ``skip_corrupt``:
    one file holds 10000 images).
    """

    base_folder = datasets.CIFAR10.base_folder
    files: tuple[str, ...] = (
        *(name for name, _ in datasets.CIFAR10.train_list),
        *(name for name, _ in datasets.CIFAR10.test_list),
        datasets.CIFAR10.meta["filename"],
    )

    def __init__(
        self,
        root: str | Path,
        image_size: int = 32,
        batch_size: int = 64,
        download: bool = False,
        verify_checksums: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        conditional: bool = False,
    ) -> None:
        super().__init__(
            channels=3,
            image_size=image_size,
            class_names=CIFAR10_CLASSES,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            pin_memory=pin_memory,
            conditional=conditional,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.download, self.verify_checksums = download, verify_checksums
        if not download:
            self._check_files()
        steps: list[Any] = [v2.PILToTensor()]  # (3, 32, 32) uint8
        if image_size != 32:
            steps.append(v2.Resize([image_size, image_size], antialias=True))  # (3, S, S)
        steps += [v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
        self.transform = v2.Compose(steps)

    def _missing_error(self, missing: Sequence[str], detail: str = "") -> FileNotFoundError:
        layout = "\n".join(f"    root/{self.base_folder}/{name}" for name in self.files)
        return FileNotFoundError(
            f"{_problem('CIFAR-10', self.root, [f'{self.base_folder}/{m}' for m in missing])}.{detail}\n"
            f"Expected layout:\n{layout}\n"
            f"Get the files with CIFAR10DataModule(root={str(self.root)!r}, download=True) once on a machine with "
            f"network access (torchvision downloads and unpacks them there), or download {datasets.CIFAR10.url} "
            f"and unpack it into {str(self.root)!r} (tar -xzf cifar-10-python.tar.gz -C {str(self.root)!r})."
        )

    def _check_files(self) -> None:
        missing = [f for f in self.files if not (self.root / self.base_folder / f).is_file()]
        if missing:
            raise self._missing_error(missing)

    def _open(self, train: bool, download: bool) -> datasets.CIFAR10:
        if not download:
            self._check_files()
        reader = datasets.CIFAR10 if self.verify_checksums else _CIFAR10AnyContent
        try:
            data = reader(str(self.root), train=train, download=download)
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError) as error:
            self._raise_corrupt(train, error)
            raise
        except (RuntimeError, URLError) as error:
            official = dict(datasets.CIFAR10.train_list + datasets.CIFAR10.test_list)
            official[datasets.CIFAR10.meta["filename"]] = datasets.CIFAR10.meta["md5"]
            folder = self.root / self.base_folder
            present = [f for f in self.files if (folder / f).is_file()]
            if len(present) == len(self.files) and not download:
                bad = [f for f in self.files if not check_integrity(str(folder / f), official[f])]
                raise RuntimeError(
                    f"CIFAR-10 files in {str(folder)!r} do not match the official release's md5 checksums: "
                    f"{', '.join(bad)}. Re-download {datasets.CIFAR10.url} and unpack it into {str(self.root)!r}, "
                    "or pass verify_checksums=False to read a deliberately modified copy (e.g. a subset)."
                ) from error
            missing = [f for f in self.files if f not in present] or list(self.files)
            raise self._missing_error(missing, f" torchvision said: {error}") from error
        if tuple(data.classes) != CIFAR10_CLASSES:
            raise ValueError(
                f"{str(self.root / self.base_folder / 'batches.meta')!r} names the classes {data.classes}, "
                f"expected CIFAR-10's {list(CIFAR10_CLASSES)}"
            )
        return data

    def _raise_corrupt(self, train: bool, error: BaseException) -> None:
        """Find which of the split's pickled batches (or ``batches.meta``) torchvision could not read and raise
        ``CorruptFileError`` naming it; return when every file looks right (the error has another cause)."""
        names = [name for name, _ in (datasets.CIFAR10.train_list if train else datasets.CIFAR10.test_list)]
        for name in (*names, datasets.CIFAR10.meta["filename"]):
            path = self.root / self.base_folder / name
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                if name == datasets.CIFAR10.meta["filename"]:
                    problem = (
                        None
                        if isinstance(entry, dict) and "label_names" in entry
                        else "no 'label_names' list"
                    )
                else:
                    rows = np.asarray(entry["data"])
                    problem = (
                        None
                        if rows.ndim == 2 and rows.shape[1] == 3072 and len(entry["labels"]) == rows.shape[0]
                        else f"'data' of shape {rows.shape} with {len(entry['labels'])} labels, expected [n, 3072] "
                        "with n labels"
                    )
            except Exception as bad:  # any failure to read the pickle means a damaged file
                problem = f"{type(bad).__name__}: {bad}"
            if problem is not None:
                raise CorruptFileError(
                    f"the CIFAR-10 file {str(path)!r} cannot be read (cut short, or not a pickled CIFAR-10 batch): "
                    f"{problem}. Re-download {datasets.CIFAR10.url} and unpack it into {str(self.root)!r}."
                ) from error

    def prepare_data(self) -> None:
        """Download (``download=True``) once per node before ``setup``; checks the files otherwise."""
        for train in (True, False):
            self._open(train, self.download)

    def _make_dataset(self, split: str) -> GenerationDataset:
        return GenerationDataset(self._open(split == "train", self.download), self.transform, seed=self.seed)


# ---------------------------------------------------------------------------------------------------- folders


def _load_rgb(path: str) -> Image.Image:
    return open_image(path, "RGB")  # a bad file raises CorruptFileError naming it


def _load_grey(path: str) -> Image.Image:
    return open_image(path, "L")


_FOLDER_LAYOUT = """    root/<class_a>/<any name>.png   (or .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .ppm, .pgm)
    root/<class_a>/...
    root/<class_b>/...
  one folder per class (labels are the sorted folder names); a single folder for unlabelled data"""
_FOLDER_HOW_TO_GET = (
    "Put the images into one sub-folder per class (ImageNet's train/ folder has this layout; for unlabelled "
    "images use one sub-folder, e.g. root/all/)."
)


class ImageFolderDataModule(SkipsCorruptFiles, _GenerationDataModule):
    """ImageNet-style class folders (``root/<class>/<image>``) on torchvision's ``ImageFolder``.

    Labels are the indices of the sorted class folder names (``class_names``), which are listed in ``__init__`` (no
    image is read there). Every image is converted to RGB (``channels=3``) or greyscale (``channels=1``), its short
    side resized to ``image_size`` (bilinear, antialiased) and centre-cropped to ``image_size`` x ``image_size``;
    training images are flipped horizontally with probability 0.5 when ``hflip``.

    Validation is ``val_root`` (same class folders) when given, else a seeded random ``val_fraction`` of the images
    of ``root`` (at least one, and at least one left for training); ``test_dataset`` is the validation split.
    A missing or empty folder raises ``FileNotFoundError`` naming the path and the expected layout.

    An image that cannot be decoded raises :class:`~segen.data._files.CorruptFileError` naming it when read.
    ``skip_corrupt=True`` instead decodes every image of a split once in ``setup`` and drops the bad ones (after the
    train/val split is drawn, so a good image stays in its split); their paths are in ``corrupt_files`` and each is
    logged once as a warning.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 64,
        channels: int = 3,
        batch_size: int = 64,
        val_fraction: float = 0.05,
        hflip: bool = True,
        val_root: str | Path | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        conditional: bool = False,
        skip_corrupt: bool = False,
    ) -> None:
        _check_fraction("val_fraction", val_fraction)
        self._init_skip_corrupt(skip_corrupt)  # checked before the folder
        root_path = require_layout(root, [], "image folder", _FOLDER_LAYOUT, _FOLDER_HOW_TO_GET)
        class_names = self._class_folders(root_path)
        val_path = None
        if val_root is not None:
            val_path = require_layout(val_root, [], "image folder", _FOLDER_LAYOUT, _FOLDER_HOW_TO_GET)
            val_names = self._class_folders(val_path)
            if val_names != class_names:
                raise ValueError(
                    f"val_root {str(val_path)!r} has the class folders {list(val_names[:10])}, but root "
                    f"{str(root_path)!r} has {list(class_names[:10])}; both need the same class folders"
                )
        super().__init__(
            channels=channels,
            image_size=image_size,
            class_names=class_names,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            pin_memory=pin_memory,
            conditional=conditional,
        )
        self.save_hyperparameters()
        self.root, self.val_root = root_path, val_path
        self.val_fraction, self.hflip = val_fraction, hflip
        resize = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]  # PIL, short side -> S
        to_float = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]  # (C, S, S)
        flip = [v2.RandomHorizontalFlip(0.5)] if hflip else []
        self.train_transform = v2.Compose([*resize, *flip, *to_float])
        self.val_transform = v2.Compose([*resize, *to_float])
        self._folders: dict[Path, datasets.ImageFolder] = {}
        self.train_indices: list[int] | None = None
        self.val_indices: list[int] | None = None

    def _readable(
        self, folder: datasets.ImageFolder, indices: Sequence[int] | None, split: str, root: Path
    ) -> list[int] | None:
        """``indices`` (``None``: all of ``folder``) without the images that cannot be decoded, when
        ``skip_corrupt``; unchanged otherwise (no image is read)."""
        if not self.skip_corrupt:
            return None if indices is None else list(indices)
        indices = list(range(len(folder))) if indices is None else list(indices)
        kept = self._corrupt.keep(
            [(folder.samples[i][0],) for i in indices], f"the {split} split ({str(root)!r})"
        )
        return [indices[k] for k in kept]

    @staticmethod
    def _class_folders(root: Path) -> tuple[str, ...]:
        names = tuple(sorted(entry.name for entry in os.scandir(root) if entry.is_dir()))
        if not names:
            found = sorted(p.name for p in root.iterdir())[:5]
            raise FileNotFoundError(
                f"the image folder {str(root)!r} has no class sub-folder (found {found or 'nothing'}).\n"
                f"Expected layout:\n{_FOLDER_LAYOUT}\n{_FOLDER_HOW_TO_GET}"
            )
        return names

    def _folder(self, root: Path) -> datasets.ImageFolder:
        """torchvision's ImageFolder over ``root`` (one directory walk, shared by the train and val splits)."""
        if root not in self._folders:
            loader = _load_grey if self.channels == 1 else _load_rgb
            try:
                folder = datasets.ImageFolder(str(root), loader=loader)
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"the image folder {str(root)!r} cannot be read: {error}\nExpected layout:\n{_FOLDER_LAYOUT}\n"
                    f"{_FOLDER_HOW_TO_GET}"
                ) from error
            if tuple(folder.classes) != self.class_names:
                raise RuntimeError(
                    f"the class folders of {str(root)!r} changed since the data module was built: now "
                    f"{folder.classes[:10]}, then {list(self.class_names[:10])}"
                )
            self._folders[root] = folder
        return self._folders[root]

    def _make_dataset(self, split: str) -> GenerationDataset:
        transform = self.train_transform if split == "train" else self.val_transform
        if self.val_root is not None:
            root = self.root if split == "train" else self.val_root
            folder = self._folder(root)
            return GenerationDataset(folder, transform, self._readable(folder, None, split, root))
        folder = self._folder(self.root)
        if self.train_indices is None:
            n = len(folder)
            if n < 2:
                raise ValueError(
                    f"the image folder {str(self.root)!r} holds {n} image; a train/val split needs at least 2 "
                    "(add images or give val_root)"
                )
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
            num_val = min(max(1, round(self.val_fraction * n)), n - 1)
            self.train_indices, self.val_indices = sorted(order[num_val:]), sorted(order[:num_val])
        indices = self.train_indices if split == "train" else self.val_indices
        return GenerationDataset(folder, transform, self._readable(folder, indices, split, self.root))
