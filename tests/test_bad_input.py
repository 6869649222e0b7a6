"""The bad-input matrix: every mistake a researcher can make in a config, a data folder or a checkpoint must fail in
seconds with an error naming the offending thing and what was expected (never a silent fallback, never a crash deep
inside torch). Each case asserts the exception type and a message pattern.

Sections: batches (masks, images), names (nets, losses, backbones, likelihoods, policies), data folders (every data
module: missing root, missing sub-folder, empty split, corrupt files), checkpoints (another task class, another
configuration; through ``load_from_checkpoint``, the Trainer's ``ckpt_path`` and the CLI), and non-finite losses
(``nan_policy``) for every task family.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_gen_trees import write_cifar10, write_image_folder, write_mnist
from fake_trees import corrupt_file, write_cityscapes, write_coco, write_mask_folder, write_voc
from lightning.pytorch import Callback, LightningModule, Trainer
from task_helpers import quiet_trainer, save_untrained_checkpoint
from tiny_tasks import FAMILIES

from segen import (
    CheckpointMismatchError,
    GANTask,
    InstanceSegmentationTask,
    MaskToImageTask,
    NonFiniteLossError,
    SegmentationTask,
    UNet,
    VAETask,
    VQVAETask,
)
from segen.data import (
    CIFAR10DataModule,
    CityscapesDataModule,
    CocoInstanceDataModule,
    CorruptFileError,
    ImageFolderDataModule,
    MaskFolderDataModule,
    MNISTDataModule,
    VOCDataModule,
)
from segen.losses import build_loss
from segen.losses.segmentation import check_target_values
from segen.nets.deeplab import build_backbone

# ============================================================================================ batches
SEG = functools.partial(
    SegmentationTask, num_classes=4, in_channels=3, net=functools.partial(UNet, base_channels=4)
)


def _seg_step(images: torch.Tensor, masks: torch.Tensor) -> None:
    SEG().training_step((images, masks), 0)


def _m2i_step(images: torch.Tensor, masks: torch.Tensor) -> None:
    task = MaskToImageTask(num_classes=4, channels=3, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    task._unpack((images, masks))


def _long(*shape: int, value: int = 0) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.long)


@pytest.mark.parametrize(
    "masks, message",
    [
        (torch.tensor([[0, 1, 255]]), None),  # ignore_index: past the aminmax shortcut, still valid
        (torch.tensor([[255, 255]]), None),
        (torch.tensor([[0, 2]], dtype=torch.uint8), None),
        (torch.zeros(0, 4, 4, dtype=torch.long), None),
        (torch.tensor([[0, 255, 3]]), r"target holds class 3, but the loss has num_classes=3"),
        (torch.tensor([[254, 255]], dtype=torch.uint8), r"target holds class 254"),
        (torch.tensor([[-2, 0]], dtype=torch.int16), r"target holds class -2"),
    ],
)
def test_mask_value_check_accepts_valid_masks_and_names_bad_values(masks, message):
    if message is None:
        check_target_values(masks, 3, 255)
    else:
        with pytest.raises(ValueError, match=message):
            check_target_values(masks, 3, 255)


BATCH_CASES = {
    # (step, images, masks, exception, message pattern)
    "mask value above K": (
        _seg_step, torch.randn(2, 3, 16, 16), _long(2, 16, 16, value=7), ValueError,
        r"target holds class 7, but the loss has num_classes=4 \(valid: 0\.\.3 and ignore_index=255\)",
    ),
    "negative mask value": (
        _seg_step, torch.randn(2, 3, 16, 16), _long(2, 16, 16, value=-1), ValueError,
        r"class -1.*valid: 0\.\.3 and ignore_index=255",
    ),
    "mask with a channel axis": (
        _seg_step, torch.randn(2, 3, 16, 16), _long(2, 1, 16, 16), ValueError,
        r"mask shape \(2, 1, 16, 16\) does not match image shape \(2, 3, 16, 16\); expected masks \(B, H, W\) = "
        r"\(2, 16, 16\); drop the channel dimension of the masks in the data set \(mask\[0\] per item\)",
    ),
    "uint8 images": (
        _seg_step, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), _long(2, 16, 16), TypeError,
        r"SegmentationTask: images must be floating point \(normalised.*\), got torch\.uint8; convert them in the data "
        r"set, e\.g\. torchvision\.transforms\.v2\.ToDtype\(torch\.float32, scale=True\)",
    ),
    "float64 images": (
        _seg_step, torch.zeros(2, 3, 16, 16, dtype=torch.float64), _long(2, 16, 16), TypeError,
        r"SegmentationTask: images are float64 but the weights are torch\.float32;.*precision='64-true'",
    ),
    "mask-to-image: uint8 images": (
        _m2i_step, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), _long(2, 16, 16), TypeError,
        r"MaskToImageTask: images must be floating point \(in \[-1, 1\]\), got torch\.uint8",
    ),
    "float mask": (
        _seg_step, torch.randn(2, 3, 16, 16), torch.zeros(2, 16, 16), TypeError,
        r"integer class indices, got dtype torch\.float32",
    ),
    "image channels differ from the model": (
        _seg_step, torch.randn(2, 1, 16, 16), _long(2, 16, 16), ValueError,
        r"expects images \(B, 3, H, W\), got \(2, 1, 16, 16\).*in_channels=3",
    ),
    "image and mask of different sizes": (
        _seg_step, torch.randn(2, 3, 16, 16), _long(2, 12, 16), ValueError,
        r"mask shape \(2, 12, 16\) does not match image shape \(2, 3, 16, 16\)",
    ),
    "mask-to-image: mask value above K": (
        _m2i_step, torch.randn(2, 3, 16, 16), _long(2, 16, 16, value=9), ValueError, r"class ids must be in \[0, 4\) \(num_classes=4\) or equal ignore_index=255, found 9",
    ),
    "mask-to-image: image and mask of different sizes": (
        _m2i_step, torch.randn(2, 3, 16, 16), _long(2, 8, 8), ValueError, r"\(2, 8, 8\).*\(2, 3, 16, 16\)",
    ),
    "mask-to-image: image channels differ from the model": (
        _m2i_step, torch.randn(2, 1, 16, 16), _long(2, 16, 16), ValueError, r"channels=3|3 channels|\(B, 3,",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_bad_batches_are_named(case):
    step, images, masks, error, pattern = BATCH_CASES[case]
    with pytest.raises(error, match=pattern):
        step(images, masks)


GENERATION_BATCH_CASES = {
    "gan": (
        torch.randn(2, 3, 16, 16),
        r"GANTask: images of shape \(2, 3, 16, 16\), expected \(B, 1, 16, 16\)",
    ),
    "vae": (torch.randn(2, 1, 8, 8), r"VAETask: images of shape \(2, 1, 8, 8\), expected \(B, 1, 16, 16\)"),
    "vqvae": (
        torch.randn(2, 3, 16, 16),
        r"VQVAETask: images of shape \(2, 3, 16, 16\), expected \(B, 1, 16, 16\)",
    ),
}


@pytest.mark.parametrize("family", list(GENERATION_BATCH_CASES))
def test_generation_tasks_name_the_image_shape_they_expected(family):
    images, pattern = GENERATION_BATCH_CASES[family]
    task = FAMILIES[family]()[0]
    unpack = task._unpack if hasattr(task, "_unpack") else task._images
    with pytest.raises(ValueError, match=pattern + r"; set channels/image_size to the data's"):
        unpack((images, torch.zeros(2, dtype=torch.long)))


def test_one_class_segmentation_points_to_two_classes():
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2, got 1; binary segmentation is "
                       r"num_classes=2 \(background 0 and foreground 1"):  # fmt: skip
        SegmentationTask(num_classes=1, in_channels=3)


def test_a_batch_that_is_not_images_and_masks_is_named():
    images, masks = torch.randn(2, 3, 16, 16), _long(2, 16, 16)
    with pytest.raises(TypeError, match=r"SegmentationTask: a batch must be \(images, masks\), got a dict with keys "
                       r"\['image', 'mask'\]"):  # fmt: skip
        SEG().training_step({"image": images, "mask": masks}, 0)
    with pytest.raises(TypeError, match=r"a batch must be \(images, masks\), got a tuple of 3 \(a torch\.float32 "
                       r"tensor of shape \(2, 3, 16, 16\), a torch\.int64 tensor of shape \(2, 16, 16\), a str\)"):  # fmt: skip
        SEG().training_step((images, masks, "extra"), 0)


@pytest.mark.parametrize("family", list(GENERATION_BATCH_CASES))
def test_generation_tasks_name_integer_images_and_batches_they_cannot_read(family):
    task = FAMILIES[family]()[0]
    unpack = task._unpack if hasattr(task, "_unpack") else task._images
    name = type(task).__name__
    pixels = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(
        TypeError, match=rf"{name}: images must be floating point \(in \[-1, 1\]\), got torch\.uint8"
    ):
        unpack((pixels, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(TypeError, match=rf"{name}: a batch must be \(images, labels\), \(images,\) or an image tensor, "
                       r"got a dict with keys \['image', 'label'\]"):  # fmt: skip
        unpack({"image": pixels.float(), "label": torch.zeros(2)})


@pytest.mark.parametrize("family", ["gan", "vae", "vqvae"])
def test_generation_tasks_train_on_a_tensor_dataset_of_images_alone(family, tmp_path):
    """``TensorDataset(images)`` yields 1-tuples, a bare tensor batch is a tensor: both are unconditional batches."""
    task = FAMILIES[family]()[0]
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    before = [p.detach().clone() for p in task.parameters()]
    fit = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    fit.fit(task, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=4))
    assert fit.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters()))


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
@pytest.mark.parametrize("family", ["segmentation", "gan", "vae", "vqvae", "mask_to_image"])
def test_every_family_trains_with_weights_in_bf16_or_float64(family, precision, tmp_path):
    """Under "bf16-true" / "64-true" Lightning casts the weights and the float inputs and sets torch's default dtype;
    a tensor a step builds as float32 (a one-hot target, images cast with .float()) would meet the other dtype."""
    task, data = FAMILIES[family]()
    fit = quiet_trainer(
        tmp_path, max_steps=2, limit_val_batches=1, precision=precision, num_sanity_val_steps=0
    )
    fit.fit(task, data)
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float64
    assert fit.global_step >= 2
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in task.parameters())


# ============================================================================================ names
NAME_CASES = {
    "net": (lambda: SegmentationTask(num_classes=3, net="unett"), "net 'unett'", "deeplabv3, deeplabv3plus, unet", "unet"),
    "loss": (lambda: build_loss("dice_c"), "loss 'dice_c'", "ce, dice, dice_ce, focal", "dice_ce"),
    "task loss": (lambda: SegmentationTask(num_classes=3, loss="focall"), "loss 'focall'", "ce, dice, dice_ce, focal", "focal"),
    "deeplab backbone": (lambda: build_backbone("resnet5"), "backbone 'resnet5'", "resnet18", "resnet50"),
    "mask r-cnn backbone": (
        lambda: InstanceSegmentationTask(num_classes=3, backbone="resnet3"), "backbone 'resnet3'", "resnet18, resnet34", "resnet34",
    ),
    "likelihood": (lambda: VAETask(likelihood="gausian"), "likelihood 'gausian'", "bernoulli, gaussian, logistic", "gaussian"),
    "adversarial loss": (lambda: GANTask(loss="hing"), "adversarial loss 'hing'", "hinge, ns, wgan-gp", "hinge"),
    "nan_policy": (lambda: VQVAETask(nan_policy="skp"), "nan_policy 'skp'", "off, raise, skip", "skip"),
    "discriminator_type": (
        lambda: MaskToImageTask(num_classes=3, discriminator_type="segmentaton"), "discriminator_type 'segmentaton'", "patch, segmentation", "segmentation",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NAME_CASES))
def test_unknown_names_list_the_valid_ones_and_suggest_the_closest(case):
    build, unknown, valid, closest = NAME_CASES[case]
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert f"unknown {unknown}" in message and valid in message, message
    assert message.endswith(f"did you mean {closest!r}?"), message


# ============================================================================================ data folders
def _voc(root: Path) -> Any:
    write_voc(root)
    return functools.partial(VOCDataModule, root), root / "VOCdevkit" / "VOC2012" / "SegmentationClass"


def _cityscapes(root: Path) -> Any:
    write_cityscapes(root)
    return functools.partial(CityscapesDataModule, root), root / "gtFine"


def _mask_folder(root: Path) -> Any:
    images, masks, _ = write_mask_folder(root)
    return functools.partial(MaskFolderDataModule, images, masks, num_classes=3), masks


def _coco(root: Path) -> Any:
    images, annotations, _ = write_coco(root)
    return functools.partial(CocoInstanceDataModule, images, annotations), annotations


def _mnist(root: Path) -> Any:
    write_mnist(root)
    return functools.partial(MNISTDataModule, root), root / "MNIST"


def _cifar(root: Path) -> Any:
    write_cifar10(root)
    return functools.partial(CIFAR10DataModule, root), root / "cifar-10-batches-py"


def _image_folder(root: Path) -> Any:
    write_image_folder(root / "pets", classes=("cat",))
    return functools.partial(ImageFolderDataModule, root / "pets"), root / "pets" / "cat"


DATA_MODULES = {  # name: (build from a root, write a real tree and return (build, a part to remove))
    "voc": (VOCDataModule, _voc),
    "cityscapes": (CityscapesDataModule, _cityscapes),
    "mask_folder": (
        lambda root: MaskFolderDataModule(root / "images", root / "masks", num_classes=3),
        _mask_folder,
    ),
    "coco": (lambda root: CocoInstanceDataModule(root / "images", root / "instances.json"), _coco),
    "mnist": (MNISTDataModule, _mnist),
    "cifar10": (CIFAR10DataModule, _cifar),
    "image_folder": (ImageFolderDataModule, _image_folder),
}


@pytest.mark.parametrize("name", list(DATA_MODULES))
def test_a_data_root_that_does_not_exist_is_named(name, tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError) as info:
        DATA_MODULES[name][0](missing).setup("fit")
    assert str(missing) in str(info.value), str(info.value)


@pytest.mark.parametrize("name", list(DATA_MODULES))
def test_a_data_root_without_its_expected_part_names_that_part(name, tmp_path):
    built, part = DATA_MODULES[name][1](tmp_path)
    shutil.rmtree(part) if part.is_dir() else part.unlink()
    with pytest.raises(FileNotFoundError) as info:
        built().setup("fit")
    message = str(info.value)
    # the missing part by name; an image folder says it has no class sub-folder (the one there was removed)
    expected = "has no class sub-folder" if name == "image_folder" else part.name
    assert expected in message and re.search(r"[Ee]xpected", message), message


def test_a_corrupt_image_is_named_and_skip_corrupt_skips_it(tmp_path):
    """One case of tests/data/test_corrupt_files.py, which covers every file-based data module."""
    images, masks, _ = write_mask_folder(tmp_path, n=6)
    bad = corrupt_file(sorted(images.iterdir())[0], "truncate")
    data = MaskFolderDataModule(images, masks, num_classes=3)
    data.setup("fit")
    pattern = rf"could not decode image '{re.escape(str(bad))}'.*skip_corrupt=True"
    with pytest.raises(CorruptFileError, match=pattern):
        for split in (data.train_dataset, data.val_dataset):
            [split[i] for i in range(len(split))]
    data = MaskFolderDataModule(images, masks, num_classes=3, skip_corrupt=True)
    data.setup("fit")
    assert data.corrupt_files == [str(bad)]
    assert len(data.train_dataset) + len(data.val_dataset) == 5


# empty splits (missing roots and sub-folders are above, corrupt files in tests/data/test_corrupt_files.py)
def test_voc_empty_image_set(tmp_path):
    write_voc(tmp_path)
    listed = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"
    listed.write_text("")
    dm = VOCDataModule(tmp_path)
    with pytest.raises(FileNotFoundError, match="lists no image id") as info:
        dm.setup("fit")
    assert str(listed) in str(info.value)


def test_cityscapes_empty_split(tmp_path):
    write_cityscapes(tmp_path)
    for path in (tmp_path / "leftImg8bit" / "train" / "aachen").iterdir():
        path.unlink()
    dm = CityscapesDataModule(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no \*_leftImg8bit.png images under") as info:
        dm.setup("fit")
    assert str(tmp_path / "leftImg8bit" / "train") in str(info.value)


def test_mask_folder_missing_mask_folder_and_empty_image_folder(tmp_path):
    images, masks, _ = write_mask_folder(tmp_path, n=2)
    with pytest.raises(FileNotFoundError, match="mask folder") as info:
        MaskFolderDataModule(images, tmp_path / "labels", 3)
    assert str(tmp_path / "labels") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no") as info:
        MaskFolderDataModule(tmp_path / "empty", masks, 3)
    assert str(tmp_path / "empty") in str(info.value)


def test_coco_empty_split(tmp_path):
    images, annotations, _ = write_coco(tmp_path, num_images=2, name="train")
    _, val_annotations, _ = write_coco(tmp_path, num_images=2, name="val")
    data = json.loads(val_annotations.read_text())
    val_annotations.write_text(json.dumps({**data, "images": [], "annotations": []}))
    dm = CocoInstanceDataModule(images, annotations, val_annotations=val_annotations)
    with pytest.raises(ValueError, match="holds no image") as info:
        dm.setup("validate")
    assert str(val_annotations) in str(info.value)


# ============================================================================================ checkpoints
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "seg4": save_untrained_checkpoint(SEG(), root / "seg4.ckpt"),
        "gan": save_untrained_checkpoint(FAMILIES["gan"]()[0], root / "gan.ckpt"),
    }


def test_load_from_checkpoint_of_another_task_names_the_file_and_both_classes(checkpoints):
    with pytest.raises(CheckpointMismatchError) as info:
        SegmentationTask.load_from_checkpoint(checkpoints["gan"])
    message = str(info.value)
    assert str(checkpoints["gan"]) in message, message
    assert "written by segen.tasks.gan.GANTask, not by segen.tasks.segmentation.SegmentationTask" in message
    assert "load it with GANTask.load_from_checkpoint" in message


def test_load_from_checkpoint_with_another_configuration_names_tensors_and_settings(checkpoints):
    net = functools.partial(UNet, base_channels=4)
    with pytest.raises(CheckpointMismatchError) as info:
        SegmentationTask.load_from_checkpoint(checkpoints["seg4"], num_classes=3, net=net)
    message = str(info.value)
    assert str(checkpoints["seg4"]) in message, message
    assert re.search(r"net\.\S+: \(4, 4, 1, 1\) in the checkpoint, \(3, 4, 1, 1\) here", message), message
    assert "num_classes: 4 -> 3" in message, message


def test_a_subclass_loads_its_base_class_checkpoint(checkpoints):
    class MySegmentation(SegmentationTask):
        pass

    task = MySegmentation.load_from_checkpoint(
        checkpoints["seg4"], net=functools.partial(UNet, base_channels=4)
    )
    assert task.num_classes == 4


class _OneBatch(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(3, 16, 16), torch.zeros(16, 16, dtype=torch.long)


@pytest.mark.parametrize(
    ("build", "checkpoint", "pattern"),
    [
        (lambda: SEG(num_classes=3), "seg4", r"does not fit this SegmentationTask: .*num_classes: 4 -> 3"),
        (lambda: FAMILIES["vae"]()[0], "gan", r"written by segen\.tasks\.gan\.GANTask, not by segen\.tasks\.vae\.VAETask"),
    ],
    ids=["other configuration", "other task"],
)  # fmt: skip
def test_trainer_ckpt_path_refuses_a_checkpoint_that_does_not_fit(
    build, checkpoint, pattern, checkpoints, tmp_path
):
    task = build()
    loader = torch.utils.data.DataLoader(_OneBatch(), batch_size=2)
    with pytest.raises(CheckpointMismatchError, match=pattern):
        quiet_trainer(tmp_path, max_steps=1).fit(task, loader, ckpt_path=checkpoints[checkpoint])


def test_cli_ckpt_path_of_another_task_is_refused(checkpoints, tmp_path, monkeypatch):
    from segen.cli import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "unet_shapes.yaml"
    args = [
        "fit", "-c", str(config), f"--ckpt_path={checkpoints['gan']}", "--trainer.logger=false",
        "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}", "--data.num_train=8", "--data.num_val=4",
        "--data.batch_size=4", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    with pytest.raises(
        CheckpointMismatchError, match=r"written by segen\.tasks\.gan\.GANTask, not by .*Segmentation"
    ):
        main(args)


def test_cli_ckpt_path_of_another_configuration_names_the_setting(tmp_path, monkeypatch):
    """A checkpoint written from Python (a default 32-channel U-Net, 4 classes) given to a config with a 16-channel
    U-Net and 3-class data: the error names the tensors and the settings, not a size mismatch inside torch.
    (LightningCLI cannot merge such a checkpoint's hyper-parameters into the config; segen skips that merge.)"""
    from segen.cli import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    checkpoint = save_untrained_checkpoint(
        SegmentationTask(num_classes=4, net="unet"), tmp_path / "seg4.ckpt"
    )
    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "unet_shapes.yaml"
    args = [
        "fit", "-c", str(config), f"--ckpt_path={checkpoint}", "--trainer.logger=false", "--trainer.max_steps=1",
        f"--trainer.default_root_dir={tmp_path}", "--data.num_classes=3", "--data.num_train=8", "--data.num_val=4",
        "--data.batch_size=4", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    with pytest.raises(
        CheckpointMismatchError,
        match=r"net\.stem\.0\.weight: \(32, 3, 3, 3\) in the checkpoint, \(16, 3, 3, 3\) here.*num_classes: 4 -> 3",
    ):
        main(args)


# ============================================================================================ non-finite losses
class PoisonBatches(Callback):
    """Fills the images of the given training batches with NaN before the step sees them (a real data fault)."""

    def __init__(self, batches: set[int]) -> None:
        self.batches = batches

    def on_train_batch_start(
        self, trainer: Trainer, task: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx in self.batches:
            images = batch[0]
            for image in images if isinstance(images, (list, tuple)) else [images]:
                image.fill_(math.nan)


def _fit(
    build: Callable[[], tuple[LightningModule, Any]],
    tmp_path: Path,
    policy: str,
    poison: set[int],
    steps: int,
):
    torch.manual_seed(0)
    task, data = build()
    task.hparams["nan_policy"] = policy
    trainer = quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=0, callbacks=[PoisonBatches(poison)])
    return task, trainer, data


def _all_finite(task: LightningModule, buffers: bool = True) -> bool:
    tensors = [p for p in task.parameters()] + ([b for b in task.buffers()] if buffers else [])
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


STEP_NAMES = {"gan": "discriminator loss", "mask_to_image": "discriminator loss"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_nan_loss_stops_the_run_naming_the_step_and_the_part(family, tmp_path):
    task, trainer, data = _fit(FAMILIES[family], tmp_path, "raise", poison={1}, steps=4)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(task, data)
    message = str(info.value)
    loss = STEP_NAMES.get(family, "loss")
    assert re.search(rf"non-finite {loss} at training step \d+ \(epoch 0, batch 1\): \w+=nan", message), (
        message
    )
    assert "nan_policy='skip'" in message
    # the forward pass may have written NaN into normalisation statistics; the parameters were not updated
    assert _all_finite(task, buffers=False), "the NaN step must not reach the weights"


def test_a_nan_loss_under_gradient_accumulation_stops_before_the_accumulated_update(tmp_path):
    """The "raise" check is read at the optimizer step (after backward): with two batches per step, a NaN in the
    first one is reported with its own batch index and never reaches the weights."""
    torch.manual_seed(0)
    task, data = FAMILIES["segmentation"]()
    trainer = quiet_trainer(
        tmp_path, max_steps=2, limit_val_batches=0, accumulate_grad_batches=2, callbacks=[PoisonBatches({0})]
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at training step 0 \(epoch 0, batch 0\)"):
        trainer.fit(task, data)
    assert trainer.global_step == 0
    assert _all_finite(task, buffers=False)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    "parts, finite",
    [
        (
            [torch.tensor(1.0), torch.tensor(2.0, dtype=torch.float16), torch.tensor(3, dtype=torch.int64)],
            True,
        ),
        ([torch.tensor(1.0), torch.tensor(INF, dtype=torch.float16)], False),
        ([torch.tensor(NAN, dtype=torch.bfloat16), torch.tensor(1.0)], False),
        ([torch.tensor(65504.0, dtype=torch.float16), torch.tensor(-1e38)], True),  # large is still finite
        ([torch.tensor([NAN])], False),  # one element, not 0-d
        ([torch.tensor(1.0), torch.ones(3, 4)], True),
        ([torch.tensor(1.0), torch.tensor([[1.0, NAN], [0.0, 2.0]])], False),  # a part that is not one number
        ([torch.ones(2), torch.tensor([0.0, -INF])], False),
    ],
)
def test_the_guard_checks_every_element_of_every_part(parts, finite):
    """The guard stacks the single-number parts into one check (fewer kernels per step); a part of any shape or
    dtype must still be seen."""
    from segen.tasks.base import _all_finite

    flag = _all_finite(parts)
    assert flag.shape == () and flag.dtype == torch.bool and bool(flag) is finite


@pytest.mark.parametrize("family", list(FAMILIES))
def test_skip_policy_drops_nan_steps_counts_them_and_keeps_weights_finite(family, tmp_path):
    task, trainer, data = _fit(FAMILIES[family], tmp_path, "skip", poison={1}, steps=3)
    trainer.fit(task, data)
    assert task.skipped_steps == 1
    assert trainer.callback_metrics["train/skipped_steps"].item() == 1.0
    assert _all_finite(task)


def test_skip_policy_still_stops_a_diverged_run(tmp_path):
    task, trainer, data = _fit(FAMILIES["segmentation"], tmp_path, "skip", poison={0, 1, 2, 3, 4, 5}, steps=6)
    task.max_consecutive_skips = 2
    with pytest.raises(
        NonFiniteLossError, match=r"not finite for 3 steps in a row \(nan_policy='skip' allows 2\)"
    ):
        trainer.fit(task, data)
    assert _all_finite(task)


def test_skipped_steps_survive_a_checkpoint(tmp_path):
    task, trainer, data = _fit(FAMILIES["vae"], tmp_path, "skip", poison={0}, steps=2)
    trainer.fit(task, data)
    trainer.save_checkpoint(tmp_path / "skip.ckpt")
    again = VAETask.load_from_checkpoint(tmp_path / "skip.ckpt", weights_only=True)
    assert again.skipped_steps == task.skipped_steps == 1


def test_segmentation_task_and_mask_to_image_accept_a_net_name():
    assert type(SegmentationTask(num_classes=3, net="unet").net) is UNet
    assert isinstance(MaskToImageTask(num_classes=3, image_size=16), MaskToImageTask)
