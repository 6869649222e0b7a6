"""What every task does with its constructor arguments: build a network part from a module, a factory or a default,
keep only real config (not Python objects) in its hyper-parameters, and load another task's checkpoint (a frozen
first stage, an evaluation network) by path or glob."""

from __future__ import annotations

import glob
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

# SegmentationTask and MaskToImageTask check mask values on the host in on_before_batch_transfer, and Lightning warns
# once per run that the task's hook is used although a data module is attached; that is the intent, so this exact
# notice is silenced (once, here, for every task that imports this module).
warnings.filterwarnings(
    "ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule` but"
)

__all__ = ["build_module", "drop_object_hparams", "own_hyperparameters", "resolve_checkpoint"]


def build_module(part: Any, default: Callable[..., nn.Module], role: str, **shape: Any) -> nn.Module:
    """``part`` itself if it is a module, else ``part(**shape)`` (a factory, e.g. a config ``class_path`` without the
    shape arguments), else ``default(**shape)`` when ``part`` is ``None``."""
    if part is None:
        return default(**shape)
    if isinstance(part, nn.Module):
        return part
    if callable(part):
        module = part(**shape)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"the {role} factory {part!r} returned {type(module).__name__}, expected an nn.Module"
            )
        return module
    raise TypeError(f"{role} must be an nn.Module, a factory of one, or None; got {type(part).__name__}")


def drop_object_hparams(
    hparams: Any, keys: Iterable[str], config_types: tuple[type, ...] = (dict, type(None))
) -> None:
    """Remove ``keys`` whose values are Python objects (modules, callables) rather than config.

    From a config (the CLI) such arguments arrive as ``class_path`` dicts, are stored, and ``load_from_checkpoint``
    rebuilds them; objects built in Python are not stored, so checkpoints stay loadable with ``weights_only=True``
    (pass them again to ``load_from_checkpoint``)."""
    for key in keys:
        if key in hparams and not isinstance(hparams[key], config_types):
            del hparams[key]


def resolve_checkpoint(pattern: str, missing: str, hint: str) -> Path:
    """A path, or a glob pattern (``runs/vqvae_digits/**/last.ckpt``) resolved to its newest match, so a second
    stage's config can name the first stage's checkpoint without its run id. No match: ``FileNotFoundError``
    ``"<missing> matches '<pattern>'; <hint>"``."""
    if not any(char in pattern for char in "*?["):
        return Path(pattern)
    matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    if not matches:
        raise FileNotFoundError(f"{missing} matches {pattern!r}; {hint}")
    return max(matches, key=lambda p: p.stat().st_mtime)


@contextmanager
def own_hyperparameters() -> Iterator[None]:
    """Build another task inside a task's ``__init__`` with its own hyper-parameters.

    LightningCLI hands the hyper-parameters it instantiates a task with to ``save_hyperparameters`` through a
    context variable; a task loaded while another is being built would take the *outer* task's hyper-parameters.
    (A private Lightning hook, pinned by the vqvae_prior configs' CLI tests.)"""
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)
