"""Name → object look-up shared by every segen registry (losses, nets, likelihoods, ...).

Configs name things by short strings (``loss: dice_ce``). A typo there should not surface as a bare
``KeyError`` deep inside a training run: :func:`lookup` says which names exist and which one was probably
meant, and never falls back silently to another entry.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["closest_name", "lookup"]

T = TypeVar("T")


def closest_name(name: str, valid: list[str] | tuple[str, ...]) -> str | None:
    """Return the valid name closest to ``name`` (case-insensitive), or ``None`` if nothing is close."""
    by_lower = {v.lower(): v for v in valid}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None


def lookup(kind: str, name: str, table: Mapping[str, T]) -> T:
    """Return ``table[name]``; on a miss raise ``ValueError`` listing the valid names and the closest one.

    ``kind`` is the human word for what is looked up ("loss", "net", ...) and only shapes the message::

        unknown loss 'dice_c'; valid: ce, dice, dice_ce, focal; did you mean 'dice_ce'?
    """
    valid = sorted(table)
    if not isinstance(name, str):
        raise TypeError(
            f"{kind} name must be a string, got {type(name).__name__} {name!r}; valid: {', '.join(valid)}"
        )
    if name in table:
        return table[name]
    message = f"unknown {kind} {name!r}; valid: {', '.join(valid) if valid else '(none registered)'}"
    suggestion = closest_name(name, valid)
    if suggestion is not None:
        message += f"; did you mean {suggestion!r}?"
    raise ValueError(message)
