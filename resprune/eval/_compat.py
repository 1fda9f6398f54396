"""The few library helpers the bridge uses, found where they live (the pipeline module is being split up)."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = ("resprune", "resprune.generate", "resprune.pipeline", "resprune.stats", "resprune.images")


def _find(name: str) -> Any:
    for home in _HOMES:
        try:
            mod = importlib.import_module(home)
        except ImportError:
            continue
        fn = getattr(mod, name, None)
        if fn is not None:
            return fn
    raise ImportError(f"resprune.eval: cannot find resprune's {name!r} (looked in {', '.join(_HOMES)})")


def chat_prompt(processor: Any, prompt: str) -> str:
    """The chat text of one user turn: the image, then ``prompt`` (what ``resprune.answer`` sends)."""
    return _find("chat_prompt")(processor, prompt)


def kv_cache_bytes(cache: Any) -> tuple[int, int]:
    return _find("kv_cache_bytes")(cache)


def prefill_flops(model: Any, seq_len: int, **kw: Any) -> int:
    return _find("prefill_flops")(model, seq_len, **kw)


def load_image(source: Any) -> Any:
    return _find("load_image")(source)
