"""Model-family adapters: how each transformers LVLM makes its visual tokens, where they sit in the image, which
internals it offers, and how the pruned sequence is positioned (the contract: ``base.Adapter``).

Add a family: one file here with an ``Adapter`` subclass, one entry in ``_FAMILY_ADAPTERS`` below, and one tiny
builder in ``resprune.testing.FAMILIES`` (the test suite is parametrized over that table).
"""

from __future__ import annotations

from typing import Any

from ._clip import clip_internals
from .base import Adapter, ImageTokens
from .llava import LlavaAdapter, llava_geometry
from .llava_next import LlavaNextAdapter
from .qwen2_5_vl import QwenAdapter

_FAMILY_ADAPTERS: tuple[Adapter, ...] = (LlavaAdapter(), LlavaNextAdapter(), QwenAdapter())

ADAPTERS: dict[str, Adapter] = {c: a for a in _FAMILY_ADAPTERS for c in a.classes}
"""HF model class name -> adapter."""

FAMILY_ADAPTERS: dict[str, Adapter] = {a.family: a for a in _FAMILY_ADAPTERS}
"""Family key (as in ``resprune.testing.FAMILIES``) -> adapter."""


def adapter_for(model: Any) -> Adapter:
    """The adapter of ``model``'s class; ``ValueError`` listing the supported classes otherwise."""
    name = type(model).__name__
    if name not in ADAPTERS:
        raise ValueError(f"model: unsupported model class {name!r}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


__all__ = [
    "ADAPTERS",
    "FAMILY_ADAPTERS",
    "Adapter",
    "ImageTokens",
    "adapter_for",
    "clip_internals",
    "llava_geometry",
]
