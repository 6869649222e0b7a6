"""MaskToImageTask: SPADE GAN on (image, mask) pairs: learning, generate at any size, seg score, resume, errors."""

from __future__ import annotations

import functools

import pytest
import torch
from task_helpers import assert_same_training_state, fit_and_resume, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassJaccardIndex

from segen import MaskToImageTask, SegmentationTask, ShapesDataModule, UNet
from segen.nets import MultiscalePatchDiscriminator, SPADEGenerator

SMALL_G = functools.partial(SPADEGenerator, base_channels=16, max_channels=32, hidden=16)


def small_d(channels: int, image_size: int, num_classes: int) -> MultiscalePatchDiscriminator:
    return MultiscalePatchDiscriminator(num_classes=num_classes, channels=channels, base_channels=16)


def task(**kwargs) -> MaskToImageTask:
    defaults = dict(
        num_classes=3, channels=3, image_size=16, latent_dim=8, generator=SMALL_G, discriminator=small_d
    )
    return MaskToImageTask(**{**defaults, **kwargs})


COLOURS = torch.tensor([[-0.8, -0.8, -0.8], [0.9, -0.6, -0.6], [-0.5, 0.2, 0.9]])  # one colour per class


def toy_pairs(n: int, seed: int) -> TensorDataset:
    """16 px masks of 3 classes (random rectangles) and images that colour each class with a fixed colour, in
    [-1, 1] (so mean = std = 0.5): the image is a function of the mask, and its error can be measured."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        for cls in (1, 2):
            y, x = torch.randint(0, 10, (2,), generator=g).tolist()
            h, w = torch.randint(3, 7, (2,), generator=g).tolist()
            masks[i, y : y + h, x : x + w] = cls
    images = COLOURS[masks].permute(0, 3, 1, 2).contiguous()  # (N, 3, 16, 16)
    return TensorDataset((images + 1) / 2 * 2 - 1, masks)


def test_training_makes_the_generator_paint_the_mask_and_stays_finite(tmp_path):
    """On data where the image is a function of the mask, the generated images' error to it falls sharply."""
    torch.manual_seed(0)
    m2i = task(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), lr_g=2e-3, lr_d=2e-3, betas=(0.5, 0.999))
    train, held_out = toy_pairs(64, 0), toy_pairs(16, 1)
    images, masks = held_out.tensors
    before = (m2i.generate(masks) - images).abs().mean().item()
    fit = quiet_trainer(tmp_path, max_steps=2 * 40, limit_val_batches=0)
    fit.fit(m2i, DataLoader(train, batch_size=8, shuffle=True))
    after = (m2i.generate(masks) - images).abs().mean().item()
    assert after < 0.5 * before, (before, after)
    metrics = fit.callback_metrics
    assert all(torch.isfinite(metrics[k]) for k in ("train/loss_g", "train/loss_d", "train/feature_matching"))
    assert all(torch.isfinite(p).all() for p in m2i.parameters())
    assert m2i.generator_steps == m2i.discriminator_steps == 40


def test_generate_takes_the_masks_size_class_ids_or_one_hot_and_noise_sets_the_style():
    torch.manual_seed(0)
    m2i = task()
    masks = torch.randint(0, 3, (2, 24, 40))
    masks[0, :2] = 255  # ignored pixels are allowed
    out = m2i.generate(masks)
    assert out.shape == (2, 3, 24, 40) and out.min() >= -1 and out.max() <= 1
    noise = torch.randn(2, 8)
    one_hot = torch.nn.functional.one_hot(masks.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    one_hot[0, :, :2] = 0
    assert torch.allclose(m2i.generate(masks, noise), m2i.generate(one_hot, noise))
    assert not torch.allclose(m2i.generate(masks, noise), m2i.generate(masks, torch.randn(2, 8)))
    with pytest.raises(ValueError, match=r"divisible by 2\*\*num_blocks"):
        m2i.generate(torch.zeros(1, 18, 40, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="generate"):
        m2i.sample(2)


def test_segmentation_score_is_the_segmenters_miou_on_generated_and_real_images(tmp_path):
    torch.manual_seed(0)
    dm = ShapesDataModule(image_size=16, num_train=32, num_val=16, batch_size=8)
    segmenter = SegmentationTask(
        num_classes=4, in_channels=3, net=UNet(in_channels=3, num_classes=4, base_channels=8, depth=2)
    )
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(segmenter, dm)
    m2i = task(num_classes=4, segmenter=segmenter)
    fit = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    fit.fit(m2i, dm)
    metrics = fit.callback_metrics
    assert m2i.monitor == ("val/seg_score", "max")
    # the real-image score, recomputed by hand with the same network and torchmetrics
    dm.setup("fit")
    images = torch.stack([dm.val_dataset[i][0] for i in range(16)])
    masks = torch.stack([dm.val_dataset[i][1] for i in range(16)])
    segmenter.eval()
    with torch.no_grad():
        predicted = segmenter(images).argmax(1)
    expected = MulticlassJaccardIndex(4, average="macro")(predicted.flatten(), masks.flatten())
    assert torch.isclose(metrics["val/seg_score_real"], expected, atol=1e-6)
    assert 0 <= metrics["val/seg_score"] <= 1
    assert not any(p.requires_grad for p in segmenter.parameters())  # frozen, and not part of the task
    assert not any(k.startswith("_segmenter") for k in m2i.state_dict())


def test_the_data_modules_normalisation_is_undone(tmp_path):
    dm = ShapesDataModule(image_size=16, num_train=8, num_val=8, batch_size=4)
    m2i = task(num_classes=4)
    # mean and std come from the data module
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(m2i, dm)
    image = dm.val_dataset[0][0][None]
    assert torch.allclose((m2i.to_generator_range(image) + 1) / 2, dm.denormalize(image), atol=1e-6)
    assert torch.allclose(m2i.to_data_range(m2i.to_generator_range(image)), image, atol=1e-5)


def test_resume_from_an_epoch_checkpoint_equals_the_unbroken_run(tmp_path):
    unbroken, resumed, a, b = fit_and_resume(
        lambda: task(num_classes=4),
        lambda: ShapesDataModule(image_size=16, num_train=16, num_val=8, batch_size=8),
        tmp_path,
        limit_val_batches=1,
    )
    assert unbroken.generator_steps == resumed.generator_steps == 4
    assert_same_training_state(unbroken, resumed, a, b)
    assert torch.equal(unbroken.noise_rng.get_state(), resumed.noise_rng.get_state())
    reloaded = MaskToImageTask.load_from_checkpoint(
        tmp_path / "ckpt" / "epoch=1.ckpt", generator=SMALL_G, discriminator=small_d, weights_only=True
    )
    masks, noise = torch.randint(0, 4, (2, 16, 16)), torch.randn(2, 8)
    assert torch.equal(reloaded.generate(masks, noise), unbroken.generate(masks, noise))


def test_bad_batches_and_missing_normalisation_are_named(tmp_path):
    m2i = task(mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match=r"masks of shape \(2, 8, 8\) for images of shape \(2, 3, 16, 16\)"):
        m2i._unpack((torch.zeros(2, 3, 16, 16), torch.zeros(2, 8, 8, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"images of shape \(2, 1, 16, 16\), expected \(B, 3, H, W\)"):
        m2i._unpack((torch.zeros(2, 1, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"mean needs one value per image channel \(3\)"):
        task(mean=(0.5,), std=(0.5,))
    plain = task()
    loader = DataLoader(toy_pairs(8, 0), batch_size=4)
    with pytest.raises(ValueError, match=r"normalisation is unknown; pass mean= and std="):
        quiet_trainer(tmp_path, max_steps=1).fit(plain, loader)


def test_mask_class_ids_are_checked_on_the_host_before_the_batch_moves(tmp_path):
    """Under a Trainer the class ids are checked in on_before_batch_transfer, on the host, and the step's one-hot
    conversion skips its check (no device sync there); a direct call checks them itself, with the same message."""
    m2i = task(mean=(0.5,) * 3, std=(0.5,) * 3)
    images, masks = toy_pairs(2, 0).tensors
    bad = masks.clone()
    bad[0, 0, 0] = 7
    message = (
        r"MaskToImageTask: class ids must be in \[0, 3\) \(num_classes=3\) or equal ignore_index=255, found 7"
    )
    with pytest.raises(ValueError, match=message):
        m2i.on_before_batch_transfer((images, bad), 0)
    m2i.on_before_batch_transfer((images, masks), 0)
    assert m2i._masks_checked_on_host
    m2i._unpack((images, masks))
    assert not m2i._masks_checked_on_host  # used up: the next direct call checks again
    with pytest.raises(ValueError, match=message):
        m2i._unpack((images, bad))
    with pytest.raises(ValueError, match=message) as info:
        quiet_trainer(tmp_path, max_steps=2).fit(m2i, DataLoader(TensorDataset(images, bad), batch_size=2))
    assert "on_before_batch_transfer" in [entry.name for entry in info.traceback]


def test_trains_on_a_file_based_semantic_data_module_with_ignored_pixels(tmp_path):
    """Any semantic data module: a mask folder (with a 255 patch), its ImageNet normalisation, cropped pairs."""
    from fake_trees import write_mask_folder

    from segen import MaskFolderDataModule

    images, masks, _ = write_mask_folder(tmp_path / "folder", variant="index", n=4, num_classes=3)
    dm = MaskFolderDataModule(
        images, masks, num_classes=3, crop_size=16, batch_size=2, val_fraction=0.5, eval_size=16
    )
    torch.manual_seed(0)
    m2i = task(num_classes=3)
    fit = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=1)
    fit.fit(m2i, dm)
    assert m2i.generator_steps == 2
    assert all(torch.isfinite(p).all() for p in m2i.parameters())
    mean, std = m2i._require_normalisation()
    assert torch.allclose(mean.flatten(), torch.tensor(dm.mean)) and torch.allclose(
        std.flatten(), torch.tensor(dm.std)
    )


class _RecordingDiscriminator(torch.nn.Module):
    """A discriminator that keeps what it was shown (and scores it with one conv, so losses are defined)."""

    def __init__(self, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels + num_classes, 1, 3, padding=1)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> list[list[torch.Tensor]]:
        self.seen.append((images.detach(), masks.detach()))
        return [[self.conv(torch.cat([images, masks], 1))]]


@pytest.mark.parametrize("policy", ["translation,cutout", "color,translation,cutout"])
def test_diffaugment_moves_image_and_mask_together_and_colours_only_the_image(policy):
    torch.manual_seed(0)
    gan = task(diffaugment=policy, discriminator=_RecordingDiscriminator, feature_matching=0.0)
    masks = torch.nn.functional.one_hot(torch.randint(0, 3, (4, 16, 16)), 3).permute(0, 3, 1, 2).float()
    images = masks.clone() * 2 - 1  # (4, 3, 16, 16): each image channel is its mask channel, in [-1, 1]
    gan.discriminator.seen.clear()
    gan.discriminator_loss(images, masks)
    shown_images, shown_masks = gan.discriminator.seen[0]  # the real pair, augmented
    assert not torch.equal(shown_masks, masks)  # translation/cutout did act on the mask
    if "color" in policy:
        assert not torch.allclose(shown_images, shown_masks * 2 - 1)  # colour changed the image ...
        assert set(shown_masks.unique().tolist()) <= {0.0, 1.0}  # ... and left the mask one-hot
        # colour is per image: brightness, saturation, contrast keep where the pixels of a mask region are equal
        for b in range(4):
            for k in range(3):
                region = shown_masks[b, k] > 0.5
                if region.sum() > 1:
                    values = shown_images[b, :, region]  # (3, pixels)
                    assert torch.allclose(values, values[:, :1].expand_as(values), atol=1e-5)
    else:  # still aligned pixel for pixel: where the mask is one-hot the image is its copy; padding and cutout
        # blank both (zero image, all-zero mask)
        labelled = shown_masks.sum(1, keepdim=True) == 1  # (4, 1, 16, 16)
        assert labelled.any() and (~labelled).any()
        expected = torch.where(labelled, shown_masks * 2 - 1, torch.zeros_like(shown_images))
        assert torch.equal(shown_images, expected)
