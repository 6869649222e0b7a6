"""Unlabelled images for ``segen predict``: every image file of a folder, normalised like the training data.

Every semantic data module takes ``predict_dir=``; with it, ``predict_dataloader`` yields
``(images [B, C, H, W], info)`` where ``info = {"paths": [...], "sizes": [(H, W), ...]}``. Images of different sizes
are padded at the bottom/right to the largest in the batch; ``sizes`` says how much of each prediction to keep.
An image file that cannot be decoded raises :class:`~segen.data._files.CorruptFileError` naming it, unless the data
module (or the data set) has ``skip_corrupt=True``, which drops it at ``setup`` and lists it in ``corrupt_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from segen.data._files import CorruptFiles, open_image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "collate_predict", "list_images"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; raises ``FileNotFoundError`` naming the folder when
    it does not exist or holds no image."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"predict_dir {str(path)!r} does not exist or is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        found = sorted(p.name for p in path.iterdir())[:5]
        raise FileNotFoundError(
            f"predict_dir {str(path)!r} holds no image file (expected extensions {', '.join(extensions)}; "
            f"found {found or 'nothing'})"
        )
    return files


class ImageFolderDataset(Dataset):
    """Items ``(image float [C, H, W] normalised with mean/std, path)`` for every image in ``folder``.

    ``in_channels`` picks the PIL mode (1: ``L``, 3: ``RGB``), so grey scans and colour photos both match the model.
    ``skip_corrupt=True`` decodes every file once here and drops those that cannot be decoded (their paths are in
    ``corrupt_files``); otherwise such a file raises :class:`~segen.data._files.CorruptFileError` naming it when read.
    """

    def __init__(
        self,
        folder: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        in_channels: int = 3,
        skip_corrupt: bool = False,
    ) -> None:
        if in_channels not in (1, 3):
            raise ValueError(
                f"ImageFolderDataset reads 1- or 3-channel images, got in_channels={in_channels}"
            )
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} values, got mean={mean!r}, std={std!r}")
        self.folder = Path(folder).expanduser()
        self.files = list_images(folder)
        self.mean, self.std = list(mean), list(std)
        self.mode = "L" if in_channels == 1 else "RGB"
        self.corrupt_files: list[str] = []
        if skip_corrupt:
            self.drop_corrupt(CorruptFiles(type(self).__name__))

    def drop_corrupt(self, corrupt: CorruptFiles) -> None:
        """Drop the files that cannot be decoded, recording them in ``corrupt`` (a data module's record) and in
        ``corrupt_files``; a folder of only such files raises :class:`~segen.data._files.CorruptFileError`."""
        kept = corrupt.keep([(f,) for f in self.files], f"predict_dir {str(self.folder)!r}")
        dropped = set(range(len(self.files))) - set(kept)
        self.corrupt_files += [str(self.files[i]) for i in sorted(dropped)]
        self.files = [self.files[i] for i in kept]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        path = self.files[index]
        image = open_image(path, self.mode)
        pixels = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)  # (C, H, W) in [0, 1]
        return F.normalize(pixels, self.mean, self.std), str(path)


def collate_predict(batch: Sequence[tuple[Tensor, str]]) -> tuple[Tensor, dict[str, Any]]:
    """Pad ``(image [C, H, W], path)`` items to one ``[B, C, H, W]`` batch (zeros at the bottom/right) and return
    ``{"paths": [...], "sizes": [(H, W), ...]}`` beside it."""
    if not batch:
        raise ValueError("collate_predict got an empty batch")
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
    for i, (image, _) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
    info = {"paths": [path for _, path in batch], "sizes": [tuple(image.shape[-2:]) for image, _ in batch]}
    return images, info
