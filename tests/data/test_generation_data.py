"""Generation data modules on the embedded digits and on fake trees in the real on-disk formats (idx files, pickled
CIFAR batches, class folders of PNGs), read by torchvision's own readers: values, labels, splits, binarisation,
shapes and the errors for missing files and bad arguments."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_gen_trees import MNIST_FILES, write_cifar10, write_image_folder, write_mnist
from PIL import Image

from segen.data.generation import (
    CIFAR10_CLASSES,
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)


def _expected(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` -> float ``[C, H, W]`` in [-1, 1]: what a loader must return unresized."""
    t = torch.from_numpy(pixels).float()
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t / 255.0 * 2.0 - 1.0


def _check_item(item, channels: int, size: int) -> None:
    image, label = item
    assert image.shape == (channels, size, size) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert label.dtype == torch.long and label.shape == ()


# ---------------------------------------------------------------------------------------------- digits


def test_digits_attributes_exist_before_setup():
    dm = DigitsDataModule()
    assert (dm.channels, dm.in_channels, dm.image_size, dm.num_classes) == (1, 1, 32, 10)
    assert dm.class_names == tuple("0123456789")
    assert dm.train_dataset is None and dm.val_dataset is None and dm.test_dataset is None


def test_digits_split_is_stratified_disjoint_and_seeded():
    from sklearn.datasets import load_digits

    target = load_digits().target
    dm = DigitsDataModule(seed=3)
    dm.setup()
    train, val = dm.train_dataset.indices, dm.val_dataset.indices
    assert len(train) == 1437 and len(val) == 360 and len(dm.train_dataset) + len(dm.val_dataset) == 1797
    assert sorted(train + val) == list(range(1797)), "the splits must cover every digit exactly once"
    assert dm.test_dataset is dm.val_dataset
    counts = np.bincount(target[val], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38, f"stratified: ~36 per class, got {counts}"
    again = DigitsDataModule(seed=3)
    again.setup("fit")
    assert again.val_dataset.indices == val
    other = DigitsDataModule(seed=4)
    other.setup("validate")
    assert other.val_dataset.indices != val and other.train_dataset is None


def test_digits_values_and_labels_at_native_size():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(image_size=8)
    dm.setup("validate")
    for k in (0, 7, -1):
        image, label = dm.val_dataset[k]
        index = dm.val_dataset.indices[k]
        expected = torch.from_numpy(digits.images[index]).float() / 16.0 * 2.0 - 1.0
        assert torch.allclose(image[0], expected, atol=1e-6), (
            "8x8 keeps the original pixels, scaled to [-1, 1]"
        )
        assert label.item() == digits.target[index]


def test_digits_resized_items_and_loader_batch():
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    _check_item(dm.train_dataset[0], 1, 32)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.long
    assert images.min() == -1.0 and images.max() <= 1.0 and images.max() > 0.9
    assert set(labels.tolist()) <= set(range(10))
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (64, 1, 32, 32)
    small = DigitsDataModule(image_size=16)
    small.setup("validate")
    _check_item(small.val_dataset[3], 1, 16)


def test_digits_binarized():
    dm = DigitsDataModule(binarize=True, image_size=8)
    dm.setup("fit")
    image, _ = dm.train_dataset[5]
    assert set(image.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(dm.val_dataset[5][0], dm.val_dataset[5][0])


def test_denormalize_maps_to_unit_range():
    dm = DigitsDataModule()
    x = torch.tensor([-1.0, 0.0, 1.0, 1.5, -2.0]).view(1, 1, 1, 5)
    assert torch.equal(dm.denormalize(x), torch.tensor([0.0, 0.5, 1.0, 1.0, 0.0]).view(1, 1, 1, 5))
    assert dm.mean == (0.5,) and dm.std == (0.5,)


# ---------------------------------------------------------------------------------------------- MNIST family

MNIST_KINDS = [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]


@pytest.mark.parametrize(("cls", "folder"), MNIST_KINDS)
def test_mnist_attributes_exist_before_setup(tmp_path, cls, folder):
    write_mnist(tmp_path, folder)
    dm = cls(tmp_path)
    assert (dm.channels, dm.in_channels, dm.image_size, dm.num_classes) == (1, 1, 32, 10)
    assert dm.class_names[0] == ("0 - zero" if folder == "MNIST" else "T-shirt/top")
    assert dm.train_dataset is None


@pytest.mark.parametrize(("cls", "folder"), MNIST_KINDS)
def test_mnist_values_labels_and_official_split(tmp_path, cls, folder):
    written = write_mnist(tmp_path, folder, num_train=20, num_test=10)
    dm = cls(tmp_path, batch_size=4)
    dm.setup()
    assert len(dm.train_dataset) == 20 and len(dm.val_dataset) == 10 and dm.test_dataset is dm.val_dataset
    for split, dataset in (("train", dm.train_dataset), ("test", dm.val_dataset)):
        images, labels = written[split]
        for i in (0, 3):
            image, label = dataset[i]
            _check_item((image, label), 1, 32)
            assert torch.allclose(image[:, 2:30, 2:30], _expected(images[i]), atol=1e-6), "28x28 centred"
            border = torch.ones(32, 32, dtype=torch.bool)
            border[2:30, 2:30] = False
            assert (image[0][border] == -1.0).all(), "2 black (-1) pixels of padding on every side"
            assert label.item() == labels[i]
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 1, 32, 32) and torch.equal(labels, torch.tensor([0, 1, 2, 3]))


def test_mnist_native_and_resized_sizes(tmp_path):
    written = write_mnist(tmp_path)
    native = MNISTDataModule(tmp_path, image_size=28)
    native.setup("validate")
    assert torch.allclose(native.val_dataset[2][0], _expected(written["test"][0][2]), atol=1e-6)
    big = MNISTDataModule(tmp_path, image_size=64)
    big.setup("validate")
    _check_item(big.val_dataset[2], 1, 64)
    assert big.val_dataset[2][0][0, :4].eq(-1).all(), "the padding is resized with the digit"


def test_mnist_reads_gz_only_tree(tmp_path):
    written = write_mnist(tmp_path, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    assert not (raw / MNIST_FILES[0]).exists()
    dm = MNISTDataModule(tmp_path, image_size=28)
    dm.setup("fit")
    assert all((raw / name).is_file() for name in MNIST_FILES), (
        "the .gz files are unpacked next to themselves"
    )
    image, label = dm.train_dataset[4]
    assert torch.allclose(image, _expected(written["train"][0][4]), atol=1e-6) and label.item() == 4


def test_mnist_download_true_with_files_present_needs_no_network(tmp_path):
    write_mnist(tmp_path, "FashionMNIST")
    dm = FashionMNISTDataModule(tmp_path, download=True)
    dm.prepare_data()  # torchvision finds every file and downloads nothing
    dm.setup("fit")
    assert len(dm.train_dataset) == 20


def test_mnist_binarized_values(tmp_path):
    written = write_mnist(tmp_path)
    dm = MNISTDataModule(tmp_path, image_size=28, binarize=True, seed=5)
    dm.setup()
    image, _ = dm.train_dataset[0]
    assert set(image.unique().tolist()) == {-1.0, 1.0}
    assert (image[0, 0] == -1).all() and (image[0, 1] == 1).all(), "intensity 0 -> always -1, 255 -> always 1"
    # Each pixel is Bernoulli(intensity): dark pixels are rarely on, bright ones mostly.
    pixels = torch.from_numpy(written["train"][0][:, 2:]).float() / 255  # the noise rows, [N, 26, 28]
    on = torch.stack([dm.train_dataset[i][0][0, 2:] for i in range(20)]) > 0
    assert 0.05 < on[pixels < 0.25].float().mean() < 0.2
    assert 0.8 < on[pixels > 0.75].float().mean() < 0.95
    # Training items are resampled at every read; validation items are fixed by (seed, index).
    assert not torch.equal(dm.train_dataset[0][0], dm.train_dataset[0][0])
    first = dm.val_dataset[3][0]
    assert set(first.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(first, dm.val_dataset[3][0])
    again = MNISTDataModule(tmp_path, image_size=28, binarize=True, seed=5)
    again.setup("validate")
    assert torch.equal(first, again.val_dataset[3][0])
    assert torch.equal(first, next(iter(dm.val_dataloader()))[0][3]), "the loader reads the same fixed images"
    other = MNISTDataModule(tmp_path, image_size=28, binarize=True, seed=6)
    other.setup("validate")
    assert not torch.equal(first, other.val_dataset[3][0])


@pytest.mark.parametrize(("cls", "folder"), MNIST_KINDS)
def test_mnist_missing_files_name_path_layout_and_source(tmp_path, cls, folder):
    with pytest.raises(FileNotFoundError) as info:
        cls(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert f"root/{folder}/raw/train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "download=True" in message and cls.dataset_class.mirrors[0] in message


def test_mnist_one_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks 'MNIST/raw/t10k-labels-idx1-ubyte'\.") as info:
        MNISTDataModule(tmp_path)
    assert str(tmp_path) in str(info.value)


# ---------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar_values_labels_and_split(tmp_path):
    written = write_cifar10(tmp_path, per_batch=3, num_test=6)
    dm = CIFAR10DataModule(tmp_path, verify_checksums=False, batch_size=2)
    assert (dm.channels, dm.in_channels, dm.image_size, dm.num_classes) == (3, 3, 32, 10)
    assert dm.class_names == CIFAR10_CLASSES
    dm.setup()
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 6 and dm.test_dataset is dm.val_dataset
    for split, dataset, indices in (
        ("train", dm.train_dataset, (0, 4, 14)),
        ("test", dm.val_dataset, (1, 5)),
    ):
        images, labels = written[split]
        for i in indices:
            image, label = dataset[i]
            _check_item((image, label), 3, 32)
            assert torch.allclose(image, _expected(images[i]), atol=1e-6)
            assert label.item() == labels[i]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and labels.dtype == torch.long
    small = CIFAR10DataModule(tmp_path, image_size=16, verify_checksums=False)
    small.setup("validate")
    _check_item(small.val_dataset[0], 3, 16)


def test_cifar_checksums_are_verified_by_default(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(tmp_path)  # the files exist: construction succeeds
    with pytest.raises(RuntimeError, match="md5") as info:
        dm.setup("fit")
    message = str(info.value)
    assert "data_batch_1" in message and "verify_checksums=False" in message
    assert str(tmp_path / "cifar-10-batches-py") in message


def test_cifar_download_true_with_files_present_needs_no_network(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(tmp_path, download=True, verify_checksums=False)
    dm.prepare_data()
    dm.setup("validate")
    assert len(dm.val_dataset) == 6


def test_cifar_missing_files_name_path_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CIFAR10DataModule(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "root/cifar-10-batches-py/data_batch_1" in message and "batches.meta" in message
    assert "download=True" in message and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks 'cifar-10-batches-py/test_batch'\."):
        CIFAR10DataModule(tmp_path, verify_checksums=False)


# ---------------------------------------------------------------------------------------------- image folders


def _rel(path: str, root: Path) -> str:
    """The key of ``written`` for an ImageFolder sample path."""
    return Path(path).relative_to(root).as_posix()


def test_folder_attributes_split_values_and_labels(tmp_path):
    written = write_image_folder(tmp_path, classes=("fox", "cat", "dog"), per_class=4, size=(24, 32))
    dm = ImageFolderDataModule(tmp_path, image_size=24, val_fraction=0.25, hflip=False, batch_size=3)
    assert dm.class_names == ("cat", "dog", "fox") and dm.num_classes == 3
    assert (dm.channels, dm.in_channels, dm.image_size) == (3, 3, 24)
    dm.setup()
    assert len(dm.train_dataset) == 9 and len(dm.val_dataset) == 3 and dm.test_dataset is dm.val_dataset
    assert sorted(dm.train_dataset.indices + dm.val_dataset.indices) == list(range(12))
    for dataset in (dm.train_dataset, dm.val_dataset):
        for k in range(len(dataset)):
            image, label = dataset[k]
            _check_item((image, label), 3, 24)
            pixels, expected_label = written[_rel(dataset.source.samples[dataset.indices[k]][0], tmp_path)]
            assert label.item() == expected_label
            # 24x32 (HxW): the short side is already 24, the centre crop keeps columns 4..27
            assert torch.allclose(image, _expected(pixels[:, 4:28]), atol=1e-6)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 24, 24) and labels.shape == (3,) and labels.dtype == torch.long


def test_folder_split_is_seeded(tmp_path):
    write_image_folder(tmp_path)
    splits = []
    for seed in (0, 0, 1):
        dm = ImageFolderDataModule(tmp_path, val_fraction=0.25, seed=seed)
        dm.setup("validate")
        splits.append(dm.val_dataset.indices)
    assert splits[0] == splits[1] and splits[0] != splits[2]


def test_folder_resize_crop_and_greyscale(tmp_path):
    written = write_image_folder(tmp_path, classes=("a", "b"), per_class=2, size=(40, 20))
    dm = ImageFolderDataModule(tmp_path, image_size=16, channels=1, val_fraction=0.5)
    dm.setup("fit")
    _check_item(dm.train_dataset[0], 1, 16)
    _check_item(dm.val_dataset[0], 1, 16)
    same = ImageFolderDataModule(tmp_path, image_size=20, channels=1, val_fraction=0.5, hflip=False)
    same.setup("validate")
    pixels, _ = written[_rel(same.val_dataset.source.samples[same.val_dataset.indices[0]][0], tmp_path)]
    grey = np.array(Image.fromarray(pixels).convert("L"))[10:30]  # 40x20: centre 20 rows
    assert torch.allclose(same.val_dataset[0][0], _expected(grey), atol=1e-6)


def test_folder_hflip_only_in_training(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    dm = ImageFolderDataModule(tmp_path, image_size=24, val_fraction=0.5, hflip=True)
    dm.setup("fit")
    train, val = dm.train_dataset, dm.val_dataset
    plain = val.transform(train.source[train.indices[0]][0]) * 2 - 1  # the unflipped training image
    seen = {
        ("plain" if torch.equal(x, plain) else "flipped" if torch.equal(x, plain.flip(-1)) else "other")
        for x in (train[0][0] for _ in range(30))
    }
    assert seen == {"plain", "flipped"}
    assert all(torch.equal(val[0][0], val[0][0]) for _ in range(5)), "validation is never flipped"


def test_folder_val_root(tmp_path):
    write_image_folder(tmp_path / "train", per_class=3)
    write_image_folder(tmp_path / "val", per_class=1, seed=1)
    dm = ImageFolderDataModule(tmp_path / "train", val_root=tmp_path / "val", image_size=16)
    dm.setup()
    assert len(dm.train_dataset) == 9 and len(dm.val_dataset) == 3
    assert [dm.val_dataset[k][1].item() for k in range(3)] == [0, 1, 2]
    write_image_folder(tmp_path / "other", classes=("cat", "emu"), per_class=1)
    with pytest.raises(ValueError, match="same class folders"):
        ImageFolderDataModule(tmp_path / "train", val_root=tmp_path / "other")


def test_folder_missing_or_empty_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ImageFolderDataModule(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and "root/<class_a>/" in str(info.value)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no class sub-folder") as info:
        ImageFolderDataModule(tmp_path / "flat")
    assert str(tmp_path / "flat") in str(info.value) and "x.png" in str(info.value)
    write_image_folder(tmp_path / "tree")
    (tmp_path / "tree" / "zebra").mkdir()
    dm = ImageFolderDataModule(tmp_path / "tree")
    with pytest.raises(FileNotFoundError, match="zebra") as info:
        dm.setup("fit")
    assert str(tmp_path / "tree") in str(info.value) and "Expected layout" in str(info.value)


# ---------------------------------------------------------------------------------------------- shared


def test_datasets_pickle_for_worker_processes(tmp_path):
    write_mnist(tmp_path)
    write_image_folder(tmp_path / "folder")
    for dm in (MNISTDataModule(tmp_path, binarize=True), ImageFolderDataModule(tmp_path / "folder")):
        dm.setup("fit")
        copy = pickle.loads(pickle.dumps(dm.val_dataset))
        assert torch.equal(copy[0][0], dm.val_dataset[0][0])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: DigitsDataModule(image_size=4), "image_size"),
        (lambda p: DigitsDataModule(image_size=32.0), "image_size"),
        (lambda p: DigitsDataModule(val_fraction=0.0), "val_fraction"),
        (lambda p: DigitsDataModule(val_fraction=1.5), "val_fraction"),
        (lambda p: DigitsDataModule(val_fraction=0.001), "val_fraction"),
        (lambda p: DigitsDataModule(batch_size=0), "batch_size"),
        (lambda p: DigitsDataModule(num_workers=-1), "num_workers"),
        (lambda p: MNISTDataModule(p, image_size=7), "image_size"),
        (lambda p: CIFAR10DataModule(p, batch_size=0), "batch_size"),
        (lambda p: ImageFolderDataModule(p, channels=2), "channels"),
        (lambda p: ImageFolderDataModule(p, val_fraction=1.0), "val_fraction"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, make, match):
    write_image_folder(tmp_path)
    with pytest.raises(ValueError, match=match):
        make(tmp_path)
