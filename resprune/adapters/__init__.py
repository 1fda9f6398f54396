"""Model-family adapters: how each transformers LVLM makes its visual tokens, where they sit in the image, which
internals it offers, and how the pruned sequence is positioned (the contract: ``base.Adapter``).

Add a family: one module here with an ``Adapter`` subclass (found by import: every public module of this package
is loaded), and one tiny builder in ``resprune.testing.FAMILIES`` under the adapter's ``family`` key (the test
suite is parametrized over that table).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ._clip import clip_internals
from .base import Adapter, ImageTokens
from .llava import llava_geometry


def _discover() -> tuple[Adapter, ...]:
    found = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod.startswith("_") or mod == "base":
            continue
        module = importlib.import_module(f"{__name__}.{mod}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Adapter) and obj.__module__ == module.__name__:
                found.append(obj())
    return tuple(found)


_ALL = _discover()

ADAPTERS: dict[str, Adapter] = {c: a for a in _ALL for c in a.classes}
"""HF model class name -> adapter."""

FAMILY_ADAPTERS: dict[str, Adapter] = {a.family: a for a in _ALL}
"""Family key (as in ``resprune.testing.FAMILIES``) -> adapter."""


def adapter_for(model: Any) -> Adapter:
    """The adapter of ``model``'s class (its variant for this checkpoint, ``Adapter.for_model``); ``ValueError``
    listing the supported classes otherwise."""
    name = type(model).__name__
    if name not in ADAPTERS:
        raise ValueError(f"model: unsupported model class {name!r}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[name].for_model(model)


__all__ = [
    "ADAPTERS",
    "FAMILY_ADAPTERS",
    "Adapter",
    "ImageTokens",
    "adapter_for",
    "clip_internals",
    "llava_geometry",
]
