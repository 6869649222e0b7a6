"""Prediction output: palette PNGs that read back as class ids, predict_dir loaders, the data set's palette."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_trees import write_voc
from lightning.pytorch import Trainer
from PIL import Image

from segen import MaskWriter, SegmentationTask, VOCDataModule
from segen.callbacks import palette_image
from segen.data.predict import ImageFolderDataset, collate_predict
from segen.data.voc import VOC_PALETTE


def test_palette_image_reads_back_as_class_ids_with_the_given_colours(tmp_path):
    ids = torch.tensor([[0, 1, 2], [2, 255, 1]])
    palette = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    path = tmp_path / "m.png"
    palette_image(ids, palette).save(path)
    image = Image.open(path)
    assert image.mode == "P"
    assert np.array_equal(np.array(image), ids.numpy())
    rgb = np.array(image.convert("RGB"))
    assert rgb[0, 1].tolist() == [40, 50, 60] and rgb[1, 1].tolist() == [255, 255, 255]  # 255 = ignore, white


def test_palette_image_refuses_ids_without_a_colour():
    with pytest.raises(ValueError, match=r"class ids \[5\] have no colour: the palette has 3 entries"):
        palette_image(torch.tensor([[0, 5]]), [(0, 0, 0)] * 3)


def test_image_folder_dataset_normalises_and_pads_batches(tmp_path):
    Image.fromarray(np.full((4, 6, 3), 255, dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((5, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, mean=[0.5] * 3, std=[0.5] * 3)
    assert [p.name for p in dataset.files] == ["a.png", "b.png"]
    images, info = collate_predict([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 5, 6)
    assert info["sizes"] == [(5, 3), (4, 6)]
    assert torch.all(images[0, :, :5, :3] == -1.0) and torch.all(images[1, :, :4, :6] == 1.0)
    assert torch.all(images[0, :, :, 3:] == 0)  # padding


def test_predict_dir_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "absent", [0.5] * 3, [0.5] * 3)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"holds no image file .*x\.txt"):
        ImageFolderDataset(tmp_path, [0.5] * 3, [0.5] * 3)


def test_writer_uses_the_data_modules_palette(tmp_path):
    write_voc(tmp_path / "voc")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, size in (("one.jpg", (20, 30)), ("two.png", (24, 24))):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            photos / name
        )
    dm = VOCDataModule(root=tmp_path / "voc", batch_size=2, predict_dir=str(photos))
    task = SegmentationTask(num_classes=21, in_channels=3, net=lambda in_channels, num_classes: _Constant(7))
    writer = MaskWriter(output_dir=tmp_path / "out")
    trainer = Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(task, datamodule=dm, return_predictions=False)
    assert sorted(p.name for p in writer.written) == ["one.png", "two.png"]
    mask = Image.open(tmp_path / "out" / "one.png")
    assert mask.size == (30, 20)
    assert np.all(np.array(mask) == 7)
    assert np.array(mask.convert("RGB"))[0, 0].tolist() == list(
        VOC_PALETTE[7]
    )  # VOC's colour of class 7 (car)


class _Constant(torch.nn.Module):
    """Predicts class ``k`` everywhere (a learnable bias keeps the task's optimizer happy)."""

    def __init__(self, k: int, num_classes: int = 21) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:]) + self.bias
        logits[:, self.k] = 1.0
        return logits
