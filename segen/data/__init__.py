"""Datasets, LightningDataModules and joint image/mask transforms."""

from segen.data.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset

__all__ = ["SHAPE_NAMES", "ShapesDataModule", "ShapesDataset"]
