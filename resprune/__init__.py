"""resprune: training-free visual-token pruning for vision-language models, and tools to see what it keeps.

The selection core is model-free: ``select(tokens, keep, method, query=...)`` picks K of the N visual tokens of
one image. Model adapters (``prune``, ``answer``, ``load_model``) plug real transformers LVLMs into it.
"""

from __future__ import annotations

import torch

from . import methods as _methods  # noqa: F401  (registers the methods; no transformers import)
from ._checks import keep_count
from .batching import check_workers, run_batch
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


def select_batch(
    tokens: torch.Tensor | list[torch.Tensor],
    keep: int,
    method: str = DEFAULT_METHOD,
    *,
    query: torch.Tensor | list[torch.Tensor | None] | None = None,
    lengths: torch.Tensor | list[int] | None = None,
    workers: int | None = None,
    **hparams,
) -> list[Selection]:
    """Select ``keep`` tokens of each of B images: a list of ``Selection``, each equal to ``select`` on that image.

    On an accelerator, methods with a batched variant (ResPrune, residual, CDPruner, DivPrune) run their greedy
    loops for all images in lock-step on the tokens' device (one batched product per step, no host synchronisation
    inside the loop); the others run image by image. On the CPU the images are shared out to ``workers`` threads,
    one image per core at a time (``resprune.batching``).

    Args:
        tokens: `(B, N, D)` (padded, with ``lengths``) or a list of B `(N_b, D)` tensors.
        keep: K per image (``keep >= N_b`` keeps all of image b, with a warning).
        method: a name from ``list_methods()``.
        query: None, one `(Q, D)` tensor for every image, a `(B, Q, D)` tensor, or a list of B `(Q_b, D)` / None.
        lengths: `(B,)` valid token counts for a padded `(B, N, D)` tensor (the first ``lengths[b]`` rows).
        workers: CPU threads over the images (None: ``torch.get_num_threads()``, at most the cores, for images of
            LLaVA size, one after the other for small ones (``batching.THREAD_MIN_WORK``); 1: one image after the
            other, through the method's batched variant where it has one). Ignored on an accelerator.
        **hparams: the method's keyword arguments, shared by all images; the method's per-token internals (e.g.
            ``seed_prior``) as lists of B values.

    Raises:
        ValueError / TypeError naming the argument (shapes, lengths, lists of the wrong size, unknown keywords).
    """
    info = method_info(method)
    workers = check_workers(workers)
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be (B, N, D) or a list of (N, D) tensors, got shape {tuple(tokens.shape)}")
        if lengths is None:
            items = list(tokens.unbind(0))
        else:
            ln = torch.as_tensor(lengths).flatten().tolist()
            if len(ln) != tokens.shape[0] or any(not 1 <= int(x) <= tokens.shape[1] for x in ln):
                raise ValueError(f"lengths must be {tokens.shape[0]} counts in [1, {tokens.shape[1]}], got {ln}")
            items = [tokens[b, : int(x)] for b, x in enumerate(ln)]
    elif isinstance(tokens, (list, tuple)) and tokens:
        if lengths is not None:
            raise ValueError("lengths is only for a padded (B, N, D) tensor; a list already has one tensor per image")
        items = list(tokens)
    else:
        raise TypeError(f"tokens must be a (B, N, D) tensor or a non-empty list of (N, D) tensors, got {type(tokens)}")
    b = len(items)
    if query is None or (isinstance(query, torch.Tensor) and query.dim() == 2):
        queries = [query] * b
    elif isinstance(query, torch.Tensor) and query.dim() == 3 and query.shape[0] == b:
        queries = list(query.unbind(0))
    elif isinstance(query, (list, tuple)) and len(query) == b:
        queries = list(query)
    else:
        raise ValueError(f"query must be None, (Q, D), (B={b}, Q, D) or a list of {b} entries")
    per_image = set(info.requires) | set(info.optional)
    unknown = set(hparams) - set(info.hparams) - per_image
    if unknown:
        raise TypeError(f"{', '.join(sorted(unknown))}: not a keyword argument of method {method!r}")
    internals: list[dict] = [{} for _ in range(b)]
    for name in per_image & set(hparams):
        values = hparams.pop(name)
        if not isinstance(values, (list, tuple)) or len(values) != b:
            raise ValueError(f"{name} must be a list of {b} values (one per image) for select_batch")
        for extra, value in zip(internals, values):
            if value is not None:
                extra[name] = value
    return run_batch(method, items, keep, queries, internals, hparams, workers=workers)


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
    "select_batch",
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
