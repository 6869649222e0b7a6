"""SegmentationImageLogger: the same grid reaches every logger and the run's folder."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from segen import SegmentationImageLogger, SegmentationTask, ShapesDataModule, UNet
from segen.callbacks.images import colorize


def test_colorize_palette_and_ignore():
    masks = torch.tensor([[[0, 1], [255, 1]]])
    rgb = colorize(masks)
    assert rgb.shape == (1, 3, 2, 2)
    assert torch.equal(rgb[0, :, 0, 0], torch.zeros(3))  # background black
    assert torch.equal(rgb[0, :, 1, 0], torch.ones(3))  # ignore white
    assert torch.equal(rgb[0, :, 0, 1], rgb[0, :, 1, 1]) and rgb[0, :, 0, 1].sum() > 0


@pytest.mark.parametrize("logger_cls", [TensorBoardLogger, CSVLogger])
def test_grid_png_and_logger_images(tmp_path, logger_cls):
    data = ShapesDataModule(image_size=32, num_train=16, num_val=8, batch_size=8)
    task = SegmentationTask(num_classes=4, net=functools.partial(UNet, base_channels=4, depth=2))
    callback = SegmentationImageLogger(num_images=3)
    trainer = Trainer(
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=1,
        logger=logger_cls(tmp_path),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(task, data)
    assert callback.last_path is not None and callback.last_path.is_file()
    assert callback.last_path.parent.name == "images"
    with Image.open(callback.last_path) as png:
        # 3 columns (image | truth | prediction) and 3 rows of 32 px with 2 px padding
        assert png.size == (3 * 34 + 2, 3 * 34 + 2)
    events = list(tmp_path.glob("**/events.out.tfevents.*"))
    if logger_cls is TensorBoardLogger:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
        acc.Reload()
        assert "val/predictions" in acc.Tags()["images"]
    else:
        assert events == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        SegmentationImageLogger(num_images=0)
