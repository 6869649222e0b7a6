"""Every YAML in experiments/configs/ runs through the real CLI (fast_dev_run), so no config rots.

Configs for real data sets run on small fake trees written in the exact on-disk format (see fake_trees.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_gen_trees import write_cifar10, write_image_folder, write_mnist
from fake_trees import write_cityscapes, write_coco, write_mask_folder, write_voc
from task_helpers import save_untrained_checkpoint

from segen.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml"))


def data_overrides(stem: str, tmp_path: Path) -> list[str]:
    """Point a config at a fake tree of its data set and shrink it to the fake images (32x48)."""
    if stem.startswith("spade_"):
        return [
            f"--model.segmenter={segmenter_checkpoint(tmp_path)}",
            "--data.num_train=8",
            "--data.num_val=8",
        ]
    if stem.endswith("_voc"):
        write_voc(tmp_path / "voc")
        return [f"--data.root={tmp_path / 'voc'}", "--data.crop_size=32", "--data.batch_size=2"]
    if stem.startswith("maskrcnn_") and not stem.endswith("_shapes"):
        # a small Mask R-CNN at the fake images' size: the configs' ResNet-50 at 800 px is minutes per step on CPU
        small = ["--model.backbone=resnet18", "--model.input_min_size=32", "--model.input_max_size=64"]
        if stem.endswith("_coco"):
            images, annotations, _ = write_coco(tmp_path / "coco", num_images=4)
            return [
                *small,
                f"--data.root={images}",
                f"--data.annotations={annotations}",
                "--data.val_annotations=null",
                "--data.val_root=null",
                "--data.val_fraction=0.5",
                "--data.batch_size=2",
                "--data.num_workers=0",
            ]
        write_cityscapes(tmp_path / "cityscapes")
        return [
            *small,
            f"--data.root={tmp_path / 'cityscapes'}",
            "--data.batch_size=2",
            "--data.num_workers=0",
        ]
    if stem.endswith("_cityscapes"):
        write_cityscapes(tmp_path / "cityscapes")
        return [
            f"--data.root={tmp_path / 'cityscapes'}",
            "--data.crop_size=32",
            "--data.batch_size=2",
            "--model.val_window=32",
        ]
    gan = ["--data.batch_size=8", "--data.num_workers=0"]
    if stem.startswith(("dcgan", "cgan", "stylegan", "vae", "cvae", "vqvae_prior")):
        gan = ["--model.fid_samples=64", *gan]
    if stem.startswith("vqvae_prior_"):
        gan = [f"--model.vqvae={stage_one_checkpoint(stem, tmp_path)}", *gan]
    if stem.endswith("_mnist"):
        write_mnist(tmp_path / "mnist")
        return [*gan, f"--data.root={tmp_path / 'mnist'}"]
    if stem.endswith("_cifar10"):
        write_cifar10(tmp_path / "cifar")
        return [*gan, f"--data.root={tmp_path / 'cifar'}", "--data.verify_checksums=false"]
    if stem.endswith("_imagefolder"):
        write_image_folder(tmp_path / "images", classes=("cats", "dogs"), per_class=6, size=(20, 20))
        return [
            *gan,
            f"--data.root={tmp_path / 'images'}",
            "--data.val_fraction=0.25",
            "--data.image_size=32",
        ]
    if stem.endswith("_digits"):
        return gan
    if stem.endswith("_maskfolder"):
        images, masks, _ = write_mask_folder(tmp_path / "folder", variant="binary")
        return [
            f"--data.images={images}",
            f"--data.masks={masks}",
            "--data.crop_size=32",
            "--data.batch_size=2",
        ]
    return []


def stage_one_checkpoint(stem: str, tmp_path: Path) -> Path:
    """An (untrained) VQ-VAE checkpoint built from the stage-1 config the prior config belongs to."""
    import yaml

    from segen import VQVAETask

    stage_one = yaml.safe_load((CONFIGS[0].parent / f"{stem.replace('_prior', '')}.yaml").read_text())
    channels = 3 if stem.endswith("_cifar10") else 1
    vqvae = VQVAETask(channels=channels, image_size=32, **stage_one["model"]["init_args"])
    return save_untrained_checkpoint(vqvae, tmp_path / "stage1" / "last.ckpt")


def segmenter_checkpoint(tmp_path: Path) -> Path:
    """An (untrained) U-Net checkpoint for the shapes' 4 classes, the segmenter of val/seg_score."""

    from segen import SegmentationTask

    task = SegmentationTask(num_classes=4, in_channels=3)
    return save_untrained_checkpoint(task, tmp_path / "segmenter" / "last.ckpt")


def test_there_are_configs():
    assert any(c.name == "unet_shapes.yaml" for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_with_fast_dev_run(config: Path, tmp_path: Path, capsys):
    main(
        [
            "fit",
            "-c",
            str(config),
            "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}",
            *data_overrides(config.stem, tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "Final validation metrics:" in out
    assert "val/" in out.split("Final validation metrics:")[1]
