"""Reading data files so that a bad one is named, and the opt-in ``skip_corrupt`` scan.

Every segen data set decodes its image and mask files through :func:`open_image` (its own readers) or
:func:`read_item` (items of a torchvision data set class, whose file lists name the files). A file that exists but
cannot be decoded (cut short, random bytes, not an image) raises :class:`CorruptFileError` naming the file, what was
expected and the original error, never a bare PIL error deep in a worker process.

``skip_corrupt=True`` on a data module skips such files instead. The design is a one-off scan in ``setup``
(:class:`CorruptFiles`): every file of a split is decoded once, in a few threads, and the items with a bad file are
dropped from the split before any loader exists. Why a scan rather than "return the next good item" at read time:

- the count is exact and lives in the main process (``datamodule.corrupt_files``); a counter kept by the data set in
  DataLoader worker processes would never reach the main process;
- the split's length is the number of good items, so the sampler, ``drop_last``, DDP sharding (every rank scans the
  same files and keeps the same items) and the number of batches per epoch are all right, and no good item is read
  twice in an epoch in place of a bad one;
- nothing changes when ``skip_corrupt=False`` (the default): no extra decode, a bad file raises when it is read.

Its cost is one full decode of the split's files at ``setup`` (a truncated file often has a valid header, so reading
headers alone would miss it); each file is decoded once per data module, however often ``setup`` runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

__all__ = [
    "SKIP_HINT",
    "CorruptFileError",
    "CorruptFiles",
    "SkipsCorruptFiles",
    "image_mode",
    "open_image",
    "read_item",
]

log = logging.getLogger("segen.data")

SKIP_HINT = "pass skip_corrupt=True to skip such files"

# Errors that are about the file system, not the file's content: they name the path already and are not skipped.
_NOT_CONTENT = (FileNotFoundError, PermissionError, IsADirectoryError, Image.DecompressionBombError)


class CorruptFileError(OSError):
    """A data file exists but cannot be decoded (truncated, random bytes, not an image); the message names it."""


def decode_error(path: str | Path, what: str, error: BaseException) -> CorruptFileError:
    """The error for a file that PIL could not decode: the path, what was expected, the original error, the fix."""
    return CorruptFileError(
        f"could not decode {what} {str(path)!r} (truncated or not an image): {type(error).__name__}: {error}; "
        f"{SKIP_HINT}, or replace the file"
    )


def open_image(path: str | Path, mode: str | None = None, what: str = "image") -> Image.Image:
    """The image at ``path``, fully decoded now (and converted to PIL ``mode`` when given).

    Decoding happens here rather than lazily in a transform, so a truncated file fails at this call with a
    :class:`CorruptFileError` naming ``path`` (``what`` says which kind of file, e.g. ``"mask"``). A missing file
    still raises ``FileNotFoundError``.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if mode is not None and image.mode != mode:
                return image.convert(mode)
            return image
    except _NOT_CONTENT:
        raise
    except Exception as error:
        raise decode_error(path, what, error) from error


def image_mode(path: str | Path, what: str = "image") -> str:
    """PIL mode of the image at ``path`` from its header alone (cheap); a file PIL cannot identify raises
    :class:`CorruptFileError` naming it."""
    try:
        with Image.open(path) as image:
            return image.mode
    except _NOT_CONTENT:
        raise
    except Exception as error:
        raise decode_error(path, what, error) from error


def _load_images(item: Any) -> None:
    """Decode every PIL image in ``item`` (nested tuples/lists) now: torchvision opens masks lazily."""
    if isinstance(item, Image.Image):
        item.load()
    elif isinstance(item, (tuple, list)):
        for part in item:
            _load_images(part)


def read_item(source: Any, index: int, files: Sequence[tuple[str | Path, str]]) -> Any:
    """``source[index]`` (e.g. a torchvision data set) with every PIL image in it decoded now.

    ``files`` lists the item's ``(path, what)`` (``what``: ``"image"``, ``"mask"``, ...). When reading fails, each
    file is decoded on its own to find the bad one, which raises :class:`CorruptFileError` naming it; an error that
    no file explains is re-raised unchanged. Nothing extra happens when the item reads fine.
    """
    try:
        item = source[index]
        _load_images(item)
    except (*_NOT_CONTENT, CorruptFileError):
        raise
    except Exception:
        for path, what in files:
            open_image(path, what=what)  # raises CorruptFileError naming the bad file
        raise
    return item


def _problem(path: str) -> str | None:
    """``None`` when the file decodes, else the reason."""
    try:
        open_image(path)
    except CorruptFileError as error:
        cause = error.__cause__
        return f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
    return None


@rank_zero_only
def _warn(message: str) -> None:
    log.warning(message)


class CorruptFiles:
    """The files that a ``skip_corrupt=True`` data module found undecodable, over all of its splits.

    :meth:`keep` decodes each file once (several threads: PIL releases the GIL while decoding), records every bad
    file in :attr:`paths` with its reason in :attr:`reasons`, logs one warning per bad file on the ``segen.data``
    logger (rank 0 only under DDP) and returns the items left. Picklable (plain lists and dicts).
    """

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.paths: list[str] = []
        self.reasons: dict[str, str] = {}
        self._decodes: dict[str, bool] = {}

    def keep(self, files: Sequence[Sequence[str | Path]], where: str) -> list[int]:
        """Indices of the items (``files[i]``: the paths of item ``i``) whose files all decode.

        ``where`` names the split in messages (e.g. ``"the train split (root/images)"``). A split whose every item
        has a bad file raises :class:`CorruptFileError` saying how many files were corrupt.
        """
        unchecked = list(dict.fromkeys(str(p) for item in files for p in item if str(p) not in self._decodes))
        if len(unchecked) > 1:
            with ThreadPoolExecutor(min(8, os.cpu_count() or 1, len(unchecked))) as pool:
                problems = list(pool.map(_problem, unchecked))
        else:
            problems = [_problem(p) for p in unchecked]
        new = 0
        for path, problem in zip(unchecked, problems):
            self._decodes[path] = problem is None
            if problem is not None:
                new += 1
                self.paths.append(path)
                self.reasons[path] = problem
                _warn(
                    f"skip_corrupt: skipping {self.dataset} file {path!r}, which cannot be decoded ({problem})"
                )
        kept = [i for i, item in enumerate(files) if all(self._decodes[str(p)] for p in item)]
        bad = sorted({str(p) for item in files for p in item if not self._decodes[str(p)]})
        if files and not kept:
            raise CorruptFileError(
                f"every one of the {len(files)} items of {where} of {self.dataset} has a file that cannot be decoded "
                f"({len(bad)} corrupt files, e.g. {', '.join(repr(p) for p in bad[:3])}; first reason: "
                f"{self.reasons[bad[0]]}); skip_corrupt=True leaves nothing to load. Replace the files (re-download "
                "or re-export them) or point the data module at another folder"
            )
        if new:
            _warn(
                f"skip_corrupt: {len(files) - len(kept)} of {len(files)} items of {where} of {self.dataset} skipped "
                f"({len(bad)} corrupt files); the paths are in the data module's `corrupt_files`"
            )
        return kept


class SkipsCorruptFiles:
    """Mixin of the data modules that read files: the ``skip_corrupt`` switch and the ``corrupt_files`` it found."""

    skip_corrupt: bool
    _corrupt: CorruptFiles

    def _init_skip_corrupt(self, skip_corrupt: bool) -> None:
        if not isinstance(skip_corrupt, bool):
            raise ValueError(f"skip_corrupt must be True or False, got {skip_corrupt!r}")
        self.skip_corrupt = skip_corrupt
        self._corrupt = CorruptFiles(type(self).__name__)

    @property
    def corrupt_files(self) -> list[str]:
        """Paths of the files skipped because they cannot be decoded (``skip_corrupt=True``), in the order found;
        empty until ``setup`` and always empty with ``skip_corrupt=False`` (a bad file raises instead)."""
        return list(self._corrupt.paths)
