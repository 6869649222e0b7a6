"""experiments/scripts/defaults_check.py: its procedural data sets are what they claim, and a run of each task family
reports its metrics."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from task_helpers import experiment_script


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return experiment_script("defaults_check")


def test_textures_fill_voronoi_cells_with_four_classes_not_told_apart_by_brightness(check):
    images, masks = check.textures(24, size=32, seed=3).tensors
    assert images.shape == (24, 1, 32, 32) and masks.shape == (24, 32, 32) and masks.dtype == torch.long
    assert set(masks.unique().tolist()) == {0, 1, 2, 3}
    means = [float(images[:, 0][masks == k].mean()) for k in range(4)]
    assert max(means) - min(means) < 0.15  # brightness is random per cell: the class is in the texture
    again = check.textures(24, size=32, seed=3).tensors
    assert torch.equal(images, again[0]) and torch.equal(masks, again[1])  # a pure function of the seed


def test_digits_label_the_ink_of_digits_zero_to_three(check):
    images, masks = check.digits(24, seed=1).tensors
    assert images.shape == (24, 1, 64, 64) and masks.shape == (24, 64, 64)
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3, 4} and len(masks.unique()) >= 4
    ink = masks > 0
    assert float(images[:, 0][ink].min()) > 0.35 - 1e-6  # labelled pixels are the digits' ink
    assert 0.01 < float(ink.float().mean()) < 0.3
    assert not torch.equal(images, check.digits(24, seed=2).tensors[0])


def test_a_run_trains_the_default_task_and_reports_validation_metrics(check):
    metrics = check.run("seg", "textures", None, steps=1, n_train=16, n_val=8, seed=0)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0 and 0.0 <= metrics["val/dice"] <= 1.0
    assert metrics["seconds"] > 0


@pytest.mark.parametrize(("task", "name"), [("vae", "shapes"), ("vqvae", "digits"), ("gan", "digits16")])
def test_generation_runs_report_their_metrics_on_the_data_sets_shape(check, task, name):
    metrics = check.run(task, name, None, steps=1, n_train=8, n_val=4, seed=0)
    assert set(check.TASKS[task].metrics) <= set(metrics)
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in check.TASKS[task].metrics)


def test_image_sets_are_32px_in_range_with_disjoint_splits(check):
    for name, channels in (("textures", 1), ("digits", 1), ("shapes", 3)):
        train, val = check.IMAGE_SETS[name](6, "train"), check.IMAGE_SETS[name](6, "val")
        assert train.shape == val.shape == (6, channels, 32, 32), name
        assert float(train.min()) >= -1 and float(train.max()) <= 1 and float(train.std()) > 0.1, name
        assert not any(torch.equal(a, b) for a in train for b in val), name
    assert len(check.digit_images(5000, "val")) == 297  # the digits held out of training
    small = check.DIGIT_SETS["digits16"](6, "train")
    assert small.shape == (6, 1, 16, 16) and float(small.min()) >= -1 and float(small.max()) <= 1
    assert torch.allclose(small, torch.nn.functional.avg_pool2d(check.digit_images(6, "train"), 2), atol=0.3)


def test_digits10_labels_all_ten_digits(check):
    _, masks = check.digits(200, seed=1, num_digits=10).tensors
    assert set(masks.unique().tolist()) == set(range(11))
    assert check.SETS["digits10"][1] == 11
