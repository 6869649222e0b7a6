"""InstanceSegmentationTask: torchvision Mask R-CNN on the shapes data's instance mode (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from segen import ShapesDataModule
from segen.tasks.instance import InstanceSegmentationTask

SMALL = {
    "backbone": "resnet18",
    "input_min_size": 64,
    "input_max_size": 64,
    "anchor_sizes": (8, 16, 32, 64, 128),
}


def data() -> ShapesDataModule:
    return ShapesDataModule(
        image_size=48, num_train=4, num_val=2, batch_size=2, mode="instance", max_shapes=3
    )


def test_fit_logs_loss_parts_and_map(tmp_path):
    task = InstanceSegmentationTask(num_classes=4, **SMALL)
    trainer = Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, data())
    metrics = trainer.callback_metrics
    for name in (
        "loss",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    ):
        assert torch.isfinite(metrics[f"train/{name}"]), name
    for name in ("mAP_mask", "mAP_box", "mAP50_mask", "mAP50_box"):
        assert 0.0 <= metrics[f"val/{name}"] <= 1.0


def test_loss_falls_over_a_few_steps():
    torch.manual_seed(0)
    task = InstanceSegmentationTask(num_classes=4, **SMALL)
    dm = data()
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-4)
    losses = []
    for _ in range(6):
        loss = task.compute_loss(images, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-2:]) < 0.7 * losses[0]


def test_load_from_checkpoint_without_arguments(tmp_path):
    task = InstanceSegmentationTask(num_classes=4, **SMALL)
    trainer = Trainer(
        max_steps=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, data())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = InstanceSegmentationTask.load_from_checkpoint(tmp_path / "m.ckpt")
    images = [torch.rand(3, 48, 48)]
    task.eval(), loaded.eval()
    a, b = task(images)[0], loaded(images)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])


def test_unknown_backbone_and_bad_classes():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet19'.*did you mean 'resnet18'"):
        InstanceSegmentationTask(num_classes=4, backbone="resnet19")
    with pytest.raises(ValueError, match="num_classes must count the background"):
        InstanceSegmentationTask(num_classes=1, backbone="resnet18")


def test_missing_weights_path_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"never downloads"):
        InstanceSegmentationTask(num_classes=4, backbone="resnet18", weights_path=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("source", ["cityscapes", "coco"])
def test_fits_on_real_formats_with_multi_scale_training(source, tmp_path):
    """Cityscapes instance mode and COCO json batches train Mask R-CNN; several input sizes train multi-scale."""
    from fake_trees import write_cityscapes, write_coco

    from segen import CityscapesDataModule, CocoInstanceDataModule

    if source == "cityscapes":
        write_cityscapes(tmp_path / "cs")
        dm = CityscapesDataModule(tmp_path / "cs", target="instance", batch_size=2)
    else:
        images, annotations, _ = write_coco(tmp_path / "coco", num_images=4)
        dm = CocoInstanceDataModule(root=images, annotations=annotations, val_fraction=0.5, batch_size=2)
    task = InstanceSegmentationTask(num_classes=dm.num_classes, **{**SMALL, "input_min_size": (32, 48, 64)})
    assert task.model.transform.min_size == (32, 48, 64)  # torchvision picks one per training batch
    trainer = Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0.0 <= trainer.callback_metrics["val/mAP_mask"] <= 1.0
