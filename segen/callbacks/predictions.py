"""Write ``segen predict`` results to disk: one colourised class-map PNG per input image.

The files are palette (``P`` mode) PNGs, as Pascal VOC stores its labels: a viewer shows the data set's colours, and
``np.array(Image.open(f))`` gives back the class ids exactly (255 = ignore), so the files are both pictures and
labels. Lightning's ``BasePredictionWriter`` decides *when* to write; this class says *what*.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor

from segen.callbacks.images import _PALETTE, run_dir

__all__ = ["MaskWriter", "palette_image"]

_IGNORE_RGB = (255, 255, 255)


def palette_image(mask: Tensor | np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A ``P`` mode PIL image of the class map ``mask [H, W]`` (values ``0..len(palette)-1`` or 255) whose palette
    entry ``k`` is ``palette[k]`` and entry 255 is white (ignore)."""
    ids = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask)
    if ids.ndim != 2:
        raise ValueError(f"palette_image expects a class map [H, W], got shape {ids.shape}")
    bad = np.unique(ids[(ids != 255) & ((ids < 0) | (ids >= len(palette)))])
    if bad.size:
        raise ValueError(
            f"class ids {bad[:10].tolist()} have no colour: the palette has {len(palette)} entries"
        )
    entries = np.zeros((256, 3), dtype=np.uint8)
    entries[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    entries[255] = _IGNORE_RGB
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(entries.flatten().tolist())
    return image


class MaskWriter(BasePredictionWriter):
    """Save each predicted class map ``[H, W]`` as ``<output_dir>/<image stem>.png`` (a palette PNG).

    Args:
        output_dir: where to write; default ``<run folder>/predictions``.
        palette: one ``(r, g, b)`` per class; default the data module's ``palette`` attribute (VOC's and
            Cityscapes' official colours, a mask folder's palette) and else segen's image-logging palette.

    Batches from a ``predict_dir`` carry file paths and original sizes (:func:`segen.data.predict.collate_predict`):
    the padding is cropped off and each file keeps its image's name. Other batches are named by their index
    (``000000.png``, ...).
    """

    def __init__(
        self, output_dir: str | Path | None = None, palette: Sequence[Sequence[int]] | None = None
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.palette = [tuple(c) for c in palette] if palette is not None else None
        self.written: list[Path] = []

    def _palette(self, trainer: Trainer, num_classes: int) -> list[tuple[int, ...]]:
        palette = self.palette or getattr(trainer.datamodule, "palette", None)
        if palette is None:
            default = (_PALETTE * 255).round().to(torch.uint8).tolist()
            palette = [default[k % len(default)] for k in range(num_classes)]
        return [tuple(c) for c in palette]

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.written = []
        if self.output_dir is None:
            self.output_dir = run_dir(trainer) / "predictions"

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, Tensor) or prediction.ndim != 3:
            raise TypeError(
                f"MaskWriter writes class maps [B, H, W]; {type(pl_module).__name__}.predict_step returned "
                f"{type(prediction).__name__} {tuple(getattr(prediction, 'shape', ()))}"
            )
        info = batch[1] if isinstance(batch, (tuple, list)) and isinstance(batch[1], dict) else {}
        paths, sizes = info.get("paths"), info.get("sizes")
        palette = self._palette(
            trainer, int(getattr(pl_module, "num_classes", 0)) or int(prediction.max()) + 1
        )
        assert self.output_dir is not None  # set in on_predict_start
        os.makedirs(self.output_dir, exist_ok=True)
        masks = prediction.cpu()
        for i, mask in enumerate(masks):
            if sizes is not None:
                height, width = sizes[i]
                mask = mask[:height, :width]
            if paths is not None:
                name = Path(paths[i]).stem
            else:
                index = batch_indices[i] if batch_indices is not None else batch_idx * len(masks) + i
                name = f"{index:06d}"
            path = self.output_dir / f"{name}.png"
            palette_image(mask, palette).save(path)
            self.written.append(path)
