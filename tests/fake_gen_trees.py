"""Write tiny fake data sets in the exact on-disk formats of MNIST / Fashion-MNIST (idx files), CIFAR-10 (pickled
batches) and ImageNet-style class folders (PNGs), for segen's generation data modules.

Each writer returns what it wrote (pixel arrays and labels), so tests can compare loaded items with known values.
Every image has a row of 0 and a row of 255, so the ends of the value range are always present.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

CIFAR10_NAMES: list[str] = [
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
]


def _images(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 noise of ``shape`` (``[N, H, W, ...]``) whose row 0 is 0 and row 1 is 255."""
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    images[:, 0] = 0
    images[:, 1] = 255
    return images


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: magic ``0x00 0x00 0x08 <ndim>``, one big-endian int32 per dimension, the data."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(
    root: Path, name: str = "MNIST", num_train: int = 20, num_test: int = 10, gz: bool = False, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` files instead when ``gz``), the
    layout torchvision's ``MNIST`` / ``FashionMNIST`` read. Images are 28x28 uint8 noise, labels ``i % 10``.
    Returns ``{"train": (images [N, 28, 28], labels [N]), "test": ...}``."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, prefix, n in (("train", "train", num_train), ("test", "t10k", num_test)):
        images = _images(rng, (n, 28, 28))
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            path = raw / f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
                    f.write(data)
            else:
                path.write_bytes(data)
        written[split] = (images, labels.astype(np.int64))
    return written


def write_cifar10(
    root: Path, per_batch: int = 3, num_test: int = 6, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``: pickled dicts as in the official
    release (``data`` uint8 ``[n, 3072]`` in channel-major order, ``labels`` a list of ints, ``filenames``,
    ``batch_label``; the meta holds ``label_names``). These files do not match the official md5 checksums.
    Returns ``{"train": (images [N, 32, 32, 3] HWC, labels [N]), "test": ...}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(name: str, n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        images = _images(rng, (n, 32, 32, 3))  # HWC
        labels = (np.arange(offset, offset + n) % 10).astype(np.int64)
        entry = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(n, 3072),  # CHW, flattened: the release's order
            "filenames": [f"image_{offset + i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        return images, labels

    train = [batch(f"data_batch_{k}", per_batch, (k - 1) * per_batch) for k in range(1, 6)]
    test = batch("test_batch", num_test, 0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, 2)
    return {
        "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
        "test": test,
    }


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 4,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, int]]:
    """``root/<class>/img_<k>.png`` RGB PNGs of ``size`` (H, W), plus a non-image ``notes.txt`` in the first class
    folder (ImageFolder skips it). Returns ``{relative path: (pixels [H, W, 3], label)}`` with labels in sorted
    class order."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, name in enumerate(sorted(classes)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = _images(rng, (1, *size, 3))[0]
            rel = f"{name}/img_{k}.png"
            Image.fromarray(pixels).save(root / rel)
            written[rel] = (pixels, label)
    (root / sorted(classes)[0] / "notes.txt").write_text("not an image")
    return written
