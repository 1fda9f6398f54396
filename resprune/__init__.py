"""resprune: training-free visual-token pruning for vision-language models, and tools to see what it keeps.

The selection core is model-free: ``select(tokens, keep, method, query=...)`` picks K of the N visual tokens of
one image. Model adapters (``prune``, ``answer``, ``load_model``) plug real transformers LVLMs into it.
"""

from __future__ import annotations

import torch

from . import methods as _methods  # noqa: F401  (registers the methods; no transformers import)
from ._checks import keep_count
from .registry import DEFAULT_METHOD, MethodInfo, get_method, list_methods, method_info, register
from .relevance import map_relevance, text_relevance
from .residual import residual_curve
from .text import Keywords, extract_keywords
from .types import PruneResult, Selection, TokenGeometry

__version__ = "0.1.0"


def select(
    tokens: torch.Tensor,
    keep: int,
    method: str = DEFAULT_METHOD,
    *,
    query: torch.Tensor | None = None,
    **hparams,
) -> Selection:
    """Select ``keep`` of the visual tokens of ONE image with a registered method.

    Args:
        tokens: `(N, D)` visual tokens in the LLM input-embedding space.
        keep: K, the number of tokens to keep (``keep >= N`` keeps all, with a warning).
        method: a name from ``list_methods()``.
        query: `(Q, D)` text-token embeddings for text-aware methods, or None.
        **hparams: the method's keyword arguments (see its docstring).

    Returns:
        A ``Selection``.
    """
    return get_method(method)(tokens, keep, query=query, **hparams)


__all__ = [
    "DEFAULT_METHOD",
    "Keywords",
    "MethodInfo",
    "PruneResult",
    "Selection",
    "TokenGeometry",
    "extract_keywords",
    "get_method",
    "keep_count",
    "list_methods",
    "map_relevance",
    "method_info",
    "register",
    "residual_curve",
    "select",
    "text_relevance",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy: transformers is imported only when a model is used
    if name == "prune":
        from .pipeline import prune

        return prune
    if name in ("answer", "count_visual_tokens", "Answer", "chat_prompt"):
        from . import generate

        return getattr(generate, name)
    if name in ("load_model", "PRESETS", "ModelLoadError"):
        from . import loading

        return getattr(loading, name)
    if name == "scenes":
        import importlib

        return importlib.import_module(".scenes", __name__)
    raise AttributeError(f"module 'resprune' has no attribute {name!r}")
