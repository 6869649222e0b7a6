"""Corrupt data files (cut short, random bytes) in every file-based data module: the error names the file and what
was expected; ``skip_corrupt=True`` skips them, counts them in ``corrupt_files``, warns once per file and keeps
batches well-formed; an all-corrupt split fails clearly. (Empty splits are in tests/test_bad_input.py.) Everything
runs on the real on-disk formats of ``fake_trees``."""

from __future__ import annotations

import gc
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_gen_trees import idx_bytes, write_cifar10, write_image_folder, write_mnist
from fake_trees import H, W, corrupt_file, write_cityscapes, write_coco, write_mask_folder, write_voc

from segen.data import (
    CIFAR10DataModule,
    CityscapesDataModule,
    CocoInstanceDataModule,
    CorruptFileError,
    ImageFolderDataModule,
    ImageFolderDataset,
    MaskFolderDataModule,
    MNISTDataModule,
    VOCDataModule,
)

N_TRAIN = 6  # training items of every fake tree below; tests corrupt 2 of them, leaving 2 full batches of 2


@dataclass
class Case:
    """One data module on a fake tree: ``make(**kwargs)`` builds it, ``images``/``masks`` are the training split's
    files in item order, ``mask_what`` is how errors call a mask file, ``count(batch)`` checks a training batch's
    format and returns its number of items."""

    make: Callable[..., Any]
    images: list[Path]
    masks: list[Path]
    mask_what: str
    count: Callable[[Any], int]


def _semantic_count(crop: int) -> Callable[[Any], int]:
    def count(batch: Any) -> int:
        images, masks = batch
        assert images.shape[1:] == (3, crop, crop) and images.dtype == torch.float32
        assert masks.shape == (images.shape[0], crop, crop) and masks.dtype == torch.long
        return images.shape[0]

    return count


def _instance_count(batch: Any) -> int:
    images, targets = batch
    assert len(images) == len(targets)
    for image, target in zip(images, targets):
        assert image.shape == (3, H, W) and target["masks"].shape[1:] == (H, W)
        assert target["boxes"].shape == (len(target["labels"]), 4)
    return len(images)


def _voc(tmp: Path) -> Case:
    train = tuple(f"2007_{i:06d}" for i in range(N_TRAIN))
    write_voc(tmp, train=train, val=("2008_000001",))
    base = tmp / "VOCdevkit" / "VOC2012"
    return Case(
        lambda **kw: VOCDataModule(tmp, batch_size=2, crop_size=24, **kw),
        [base / "JPEGImages" / f"{n}.jpg" for n in train],
        [base / "SegmentationClass" / f"{n}.png" for n in train],
        "mask",
        _semantic_count(24),
    )


def _cityscapes(target: str) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        write_cityscapes(tmp, per_city=N_TRAIN)
        images = sorted((tmp / "leftImg8bit" / "train" / "aachen").glob("*_leftImg8bit.png"))
        kind = "labelIds" if target == "semantic" else "instanceIds"
        masks = [
            tmp / "gtFine" / "train" / "aachen" / p.name.replace("leftImg8bit", f"gtFine_{kind}")
            for p in images
        ]
        return Case(
            lambda **kw: CityscapesDataModule(tmp, batch_size=2, crop_size=24, target=target, **kw),
            images,
            masks,
            "mask" if target == "semantic" else "instance map",
            _semantic_count(24) if target == "semantic" else _instance_count,
        )

    return build


def _mask_folder(tmp: Path) -> Case:
    images, masks, ids = write_mask_folder(tmp / "train", n=N_TRAIN)
    val_images, val_masks, _ = write_mask_folder(tmp / "val", n=1)
    return Case(
        lambda **kw: MaskFolderDataModule(
            images, masks, 3, val_images=val_images, val_masks=val_masks, batch_size=2, crop_size=24, **kw
        ),
        [images / f"{s}.png" for s in sorted(ids)],
        [masks / f"{s}.png" for s in sorted(ids)],
        "mask",
        _semantic_count(24),
    )


def _coco(tmp: Path) -> Case:
    images, annotations, per_image = write_coco(tmp, num_images=N_TRAIN, name="train")
    val_images, val_annotations, _ = write_coco(tmp, num_images=2, name="val")
    return Case(
        lambda **kw: CocoInstanceDataModule(
            images, annotations, val_annotations=val_annotations, val_root=val_images, batch_size=2, **kw
        ),
        [images / f"{i:012d}.jpg" for i in range(len(per_image))],
        [],
        "",
        _instance_count,
    )


def _image_folder(tmp: Path) -> Case:
    written = write_image_folder(tmp / "train", classes=("cat", "dog"), per_class=N_TRAIN // 2)
    write_image_folder(tmp / "val", classes=("cat", "dog"), per_class=1)

    def count(batch: Any) -> int:
        images, labels = batch
        assert images.shape[1:] == (3, 16, 16) and labels.shape == (images.shape[0],)
        assert images.min() >= -1.0 and images.max() <= 1.0
        return images.shape[0]

    return Case(
        lambda **kw: ImageFolderDataModule(
            tmp / "train", image_size=16, batch_size=2, val_root=tmp / "val", **kw
        ),
        [tmp / "train" / rel for rel in sorted(written)],
        [],
        "",
        count,
    )


CASES: dict[str, Callable[[Path], Case]] = {
    "voc": _voc,
    "cityscapes": _cityscapes("semantic"),
    "cityscapes_instance": _cityscapes("instance"),
    "mask_folder": _mask_folder,
    "coco": _coco,
    "image_folder": _image_folder,
}
WITH_MASKS = ["voc", "cityscapes", "cityscapes_instance", "mask_folder"]


def _names(path: Path, message: str) -> bool:
    """Whether ``message`` names ``path`` (data modules may resolve their root)."""
    return str(path) in message or os.path.realpath(path) in message


def _read_all(dataset: Any) -> None:
    for i in range(len(dataset)):
        dataset[i]


# ---------------------------------------------------------------------------------------------- default: raise


@pytest.mark.parametrize("how", ["truncate", "random"])
@pytest.mark.parametrize("name", list(CASES))
def test_corrupt_image_raises_naming_the_file(tmp_path, name, how):
    case = CASES[name](tmp_path)
    bad = corrupt_file(case.images[1], how)
    dm = case.make()
    dm.setup("fit")
    with pytest.raises(CorruptFileError) as info:
        _read_all(dm.train_dataset)
    message = str(info.value)
    assert _names(bad, message), message
    assert "could not decode image" in message and "truncated or not an image" in message
    assert "skip_corrupt=True" in message
    assert (
        isinstance(info.value, OSError) and info.value.__cause__ is not None
    )  # the original PIL error is kept
    assert dm.corrupt_files == []


@pytest.mark.parametrize("how", ["truncate", "random"])
@pytest.mark.parametrize("name", WITH_MASKS)
def test_corrupt_mask_raises_naming_the_file(tmp_path, name, how):
    case = CASES[name](tmp_path)
    bad = corrupt_file(case.masks[2], how)
    dm = case.make()
    dm.setup("fit")
    with pytest.raises(CorruptFileError) as info:
        _read_all(dm.train_dataset)
    message = str(info.value)
    assert _names(bad, message), message
    assert f"could not decode {case.mask_what} " in message and "skip_corrupt=True" in message


def test_error_from_a_worker_process_names_the_file(tmp_path, monkeypatch):
    # After a failed batch, torch's worker can take its status-check interval (5 s) to stop; shorten it for this test
    # and stop the worker inside it, so no later test idles.
    monkeypatch.setattr("torch.utils.data._utils.MP_STATUS_CHECK_INTERVAL", 0.1, raising=False)
    monkeypatch.setattr("torch.utils.data._utils.worker.MP_STATUS_CHECK_INTERVAL", 0.1, raising=False)
    write_voc(tmp_path)  # one validation item
    bad = corrupt_file(tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000003.jpg", "random")
    dm = VOCDataModule(tmp_path, batch_size=1, num_workers=1)
    dm.setup("validate")
    loader = dm.val_dataloader()
    message = ""
    try:
        next(iter(loader))
    except (
        CorruptFileError
    ) as error:  # not pytest.raises, whose traceback would keep the worker past the test
        message = str(error)
    del loader
    gc.collect()
    assert _names(bad, message) and "DataLoader worker process" in message, message


# ---------------------------------------------------------------------------------------------- skip_corrupt=True


@pytest.mark.parametrize("name", list(CASES))
def test_skip_corrupt_drops_counts_and_warns_once(tmp_path, name, caplog):
    case = CASES[name](tmp_path)
    bad = [corrupt_file(case.images[0], "truncate")]
    bad.append(corrupt_file(case.masks[3] if case.masks else case.images[3], "random"))
    dm = case.make(skip_corrupt=True)
    assert dm.corrupt_files == []  # nothing is read before setup
    with caplog.at_level(logging.WARNING, logger="segen.data"):
        dm.setup("fit")
        dm.setup("fit")  # a second setup re-uses the scan: no second warning
    assert sorted(os.path.realpath(p) for p in dm.corrupt_files) == sorted(os.path.realpath(p) for p in bad)
    good = N_TRAIN - len(bad)
    assert len(dm.train_dataset) == good
    _read_all(dm.train_dataset)  # every item left decodes
    assert sum(case.count(batch) for batch in dm.train_dataloader()) == good  # 2 full batches
    assert len(dm.val_dataset) >= 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in bad:
        assert sum(_names(path, w) for w in warnings) == 1, warnings
    assert any(f"2 of {N_TRAIN} items of the train split" in w and "corrupt_files" in w for w in warnings)


@pytest.mark.parametrize("name", list(CASES))
def test_skip_corrupt_with_every_file_corrupt_says_so(tmp_path, name):
    case = CASES[name](tmp_path)
    for path in case.images:
        corrupt_file(path, "truncate")
    dm = case.make(skip_corrupt=True)
    with pytest.raises(CorruptFileError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert f"every one of the {N_TRAIN} items of the train split" in message
    assert f"({N_TRAIN} corrupt files" in message and "nothing to load" in message
    assert any(_names(p, message) for p in case.images)


def test_skip_corrupt_keeps_the_same_held_out_split(tmp_path):
    """The train/val split is drawn before corrupt files are dropped: a good file never changes split."""
    images, masks, _ = write_mask_folder(tmp_path, n=N_TRAIN)
    clean = MaskFolderDataModule(images, masks, 3, val_fraction=0.5)
    corrupt_file(clean.train_pairs[0][0], "random")
    dm = MaskFolderDataModule(images, masks, 3, val_fraction=0.5, skip_corrupt=True)
    dm.setup("fit")
    assert dm.train_pairs == clean.train_pairs and dm.val_pairs == clean.val_pairs
    assert [n for n, _ in dm.train_dataset.names] == [str(i) for i, _ in clean.train_pairs[1:]]


def test_mask_folder_infers_channels_from_a_readable_image(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, n=3, image_mode="L")
    bad = corrupt_file(images / "case_0.png", "random")
    with pytest.raises(CorruptFileError, match="could not decode image") as info:
        MaskFolderDataModule(images, masks, 3)
    assert _names(bad, str(info.value))
    assert MaskFolderDataModule(images, masks, 3, skip_corrupt=True).in_channels == 1


def test_predict_dir_corrupt_image(tmp_path):
    write_voc(tmp_path / "voc")
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        shutil.copy(tmp_path / "voc/VOCdevkit/VOC2012/JPEGImages/2007_000001.jpg", photos / f"p{k}.jpg")
    bad = corrupt_file(photos / "p1.jpg", "truncate")
    dm = VOCDataModule(tmp_path / "voc", batch_size=2, predict_dir=photos)
    dm.setup("predict")
    with pytest.raises(CorruptFileError, match="could not decode image") as info:
        _read_all(dm.predict_dataset)
    assert _names(bad, str(info.value))

    dm = VOCDataModule(tmp_path / "voc", batch_size=2, predict_dir=photos, skip_corrupt=True)
    dm.setup("predict")
    assert dm.corrupt_files == [str(bad)] and len(dm.predict_dataset) == 2
    images, info = next(iter(dm.predict_dataloader()))
    assert images.shape == (2, 3, H, W) and info["paths"] == [str(photos / "p0.jpg"), str(photos / "p2.jpg")]

    alone = ImageFolderDataset(photos, [0.5] * 3, [0.5] * 3, skip_corrupt=True)
    assert alone.corrupt_files == [str(bad)] and len(alone) == 2
    for k in (0, 2):
        corrupt_file(photos / f"p{k}.jpg", "random")
    with pytest.raises(CorruptFileError, match=r"every one of the 3 items of predict_dir"):
        ImageFolderDataset(photos, [0.5] * 3, [0.5] * 3, skip_corrupt=True)


# ---------------------------------------------------------------------------------------------- MNIST, CIFAR-10
# One file holds a whole split, so there is nothing to skip: the error names the file and how to get it again.


@pytest.mark.parametrize(
    ("file", "how", "match"),
    [
        (
            "train-images-idx3-ubyte",
            "truncate",
            r"announces 20x28x28 values, a file of 15696 bytes, but it has 7848",
        ),
        ("train-labels-idx1-ubyte", "random", "does not start with the header of an idx file"),
    ],
)
def test_mnist_corrupt_idx_file_is_named(tmp_path, file, how, match):
    write_mnist(tmp_path)
    bad = corrupt_file(tmp_path / "MNIST" / "raw" / file, how)
    dm = MNISTDataModule(tmp_path)
    with pytest.raises(CorruptFileError, match=match) as info:
        dm.setup("fit")
    assert str(bad) in str(info.value) and "download=True" in str(info.value)


def test_mnist_corrupt_archive_and_empty_split_are_named(tmp_path):
    write_mnist(tmp_path, gz=True)
    archive = corrupt_file(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", "truncate")
    with pytest.raises(CorruptFileError, match="cut short or not a gzip file") as info:
        MNISTDataModule(tmp_path).setup("validate")
    assert str(archive) in str(info.value)
    raw = tmp_path / "empty" / "MNIST" / "raw"
    write_mnist(tmp_path / "empty")
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    with pytest.raises(CorruptFileError, match="holds no item") as info:
        MNISTDataModule(tmp_path / "empty").setup("validate")
    assert str(raw / "t10k-images-idx3-ubyte") in str(info.value)


@pytest.mark.parametrize(("file", "how"), [("data_batch_2", "truncate"), ("test_batch", "random")])
def test_cifar_corrupt_batch_is_named(tmp_path, file, how):
    write_cifar10(tmp_path)
    bad = corrupt_file(tmp_path / "cifar-10-batches-py" / file, how)
    dm = CIFAR10DataModule(tmp_path, verify_checksums=False)
    with pytest.raises(CorruptFileError, match="cannot be read") as info:
        dm.setup("fit")
    assert str(bad) in str(info.value) and "cifar-10-python.tar.gz" in str(info.value)
