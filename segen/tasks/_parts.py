"""What every task does with its constructor arguments: build a network part from a module, a factory or a default,
and keep only real config (not Python objects) in its hyper-parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

__all__ = ["build_module", "drop_object_hparams"]


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
