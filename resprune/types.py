"""Data records shared by the selection core, the model adapters, viz and the app.

Shape letters: ``N`` visual tokens of one image, ``K`` kept, ``D`` LLM hidden size, ``Q`` query (text) tokens,
``B`` batch, ``L`` LM sequence length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

# Token kinds in a TokenGeometry.view vector.
VIEW_BASE = 0  # the base (global) view: LLaVA's only grid, LLaVA-NeXT's low-res view, Qwen's merged grid
VIEW_HIRES = 1  # LLaVA-NeXT high-resolution crops (unpadded grid)
VIEW_NEWLINE = 2  # LLaVA-NeXT image_newline tokens (content-free; no pixel box)

NEWLINE_POLICIES = ("drop", "keep", "prune")
"""What ``prune`` does with LLaVA-NeXT's ``image_newline`` tokens (see ``prune``'s ``newlines``)."""

PRUNE_OPTIONS = {
    "query": ("nouns", "keywords", "instruction"),  # which words of the prompt form the text query
    "newlines": NEWLINE_POLICIES,
    "budget": ("global", "per-crop"),  # one selection per image, or K split evenly over the crops the tower saw
}
"""``prune``'s options and their values; the first value is the global default (a method may declare its own)."""

Stage = Literal["pre-llm", "encoder", "llm"]
"""Where a method acts: on the projected visual tokens, on the vision tower's internals, or inside the LLM."""

INTERNALS = (
    "cls_attention",  # (N,) the vision tower's [CLS] -> token attention (mean over heads)
    "vision_features",  # (N, C) the vision tower's features before the projector
    "vision_keys",  # (N, C / H) the feature layer's keys, averaged over heads
    "cls_feature",  # (crops, C) the [CLS] feature of each crop the tower saw
    "crops",  # (N,) the crop each token comes from (0 = base view)
    "projector",  # callable: pre-projector features -> LLM input embeddings
    "llm_attention",  # (N,) attention of the last prompt position in an early LLM layer
)
"""Model internals a method may declare (``register(requires=..., optional=...)``); adapters offer a subset."""

PER_TOKEN_INTERNALS = ("cls_attention", "vision_features", "vision_keys", "crops", "llm_attention")
"""The internals with one row per visual token (indexed like the tokens when ``prune`` narrows the candidates)."""


@dataclass(frozen=True)
class Selection:
    """What one selection method kept from the visual tokens of ONE image.

    Attributes:
        keep_idx: `(K,)` int64, kept token indices, sorted ascending.
        order: `(K,)` int64, the same indices in pick order.
        gain: `(K,)` float32, the score of each pick when it was picked (for ResPrune the text-weighted
            residual energy ``g(r) * E``; for DivPrune the min-distance; for CDPruner the marginal gain).
        energy: `(K,)` float32, the unweighted residual energy ``E_S(v)`` of each pick when it was picked
            (residual methods only, else ``None``).
        residual: `(K+1,)` float32, normalised total residual energy of ALL N tokens w.r.t. the span of the first
            t picks, t = 0..K: 1 at t = 0, non-increasing, 0 once the picks span the tokens. Computed on first
            access (an exact float64 replay of ``order``, ``resprune.residual_curve``) unless the method already had
            it: the hot path of ``select`` / ``prune`` never pays for it.
        relevance: `(N,)` float32, the text relevance used (after the documented mapping to ``[0, 1]``), for
            text-aware methods; ``None`` otherwise.
        method: registry name of the method that produced it.
        params: the hyperparameters used (after defaults were applied).
        n_tokens: ``N``.
        notes: human-readable remarks (fallbacks taken, e.g. "no query: text-free score").
        merged: for token-MERGING methods (VisionZip) only: the `(K, D)` vectors the LLM receives for this image,
            in sequence order; they fill the first K placeholder slots of the image. ``keep_idx`` then lists the
            patches they represent (which may be fewer than K: VisionZip also feeds the [CLS] token). ``None``
            for selection methods, whose LLM tokens are exactly ``tokens[keep_idx]``.
    """

    keep_idx: torch.Tensor
    order: torch.Tensor
    gain: torch.Tensor
    _residual: torch.Tensor | None  # the curve when known; else computed from ``_tokens`` on first access
    method: str
    n_tokens: int
    energy: torch.Tensor | None = None
    relevance: torch.Tensor | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    merged: torch.Tensor | None = None
    _tokens: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (N, D), for the lazy curve

    @property
    def residual(self) -> torch.Tensor:
        """`(K+1,)` float32 residual curve (see the class docstring); computed once, on first access."""
        if self._residual is None:
            if self._tokens is None:
                raise ValueError("this Selection has neither a residual curve nor the tokens to compute it")
            from .residual import residual_curve

            curve = residual_curve(self._tokens, self.order.cpu()).to(self.keep_idx.device)
            object.__setattr__(self, "_residual", curve)
        return self._residual

    @property
    def residual_computed(self) -> bool:
        """Whether the residual curve exists yet (it is computed on first access of ``residual``)."""
        return self._residual is not None

    @property
    def keep(self) -> int:
        """``K``, the number of visual tokens that reach the LLM for this image."""
        return int(self.merged.shape[0]) if self.merged is not None else int(self.keep_idx.numel())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record (lists of plain numbers) of the selection."""

        def lst(t: torch.Tensor | None) -> list | None:
            return None if t is None else t.detach().cpu().tolist()

        return {
            "method": self.method,
            "n_tokens": self.n_tokens,
            "keep": self.keep,
            "keep_idx": lst(self.keep_idx),
            "order": lst(self.order),
            "gain": lst(self.gain),
            "energy": lst(self.energy),
            "residual": lst(self.residual),
            "relevance": lst(self.relevance),
            "params": {
                k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                for k, v in self.params.items()
            },
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class TokenGeometry:
    """Where each visual token of ONE image comes from, in the ORIGINAL image's pixels.

    Attributes:
        view: `(N,)` int64, ``VIEW_BASE`` / ``VIEW_HIRES`` / ``VIEW_NEWLINE``.
        row: `(N,)` int64, row of the token in its view's grid (newline: the row it ends).
        col: `(N,)` int64, column in its view's grid (newline: -1).
        box: `(N, 4)` float32, ``(x0, y0, x1, y1)`` pixel box in the original image covered by the token
            (NaN for newline tokens). Boxes may extend past the image where the processor padded it.
        image_size: ``(width, height)`` of the original image.
        grids: ``{view: (rows, cols)}`` for each view present.
    """

    view: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    box: torch.Tensor
    image_size: tuple[int, int]
    grids: Mapping[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.view.numel())


@dataclass(frozen=True)
class PruneResult:
    """Everything ``resprune.prune`` decided, and the inputs for the UNMODIFIED ``model.generate``.

    Attributes:
        generate_kwargs: kwargs for ``model.generate(**generate_kwargs, max_new_tokens=...)``.
        selections: one ``Selection`` per image (batch order, then image order).
        geometry: one ``TokenGeometry`` per image, aligned with ``selections``.
        query_words: per image (aligned with ``selections``), the words whose embeddings formed the text query.
        query_tokens: per image, the `(Q, D)` query embeddings (``None`` when no usable word).
        stats: efficiency numbers (visual tokens / sequence length before and after, ...).
        method: the method's registry name.
        params: the hyperparameters passed.
        visual_tokens: per image, the `(N, D)` visual tokens the method selected from (CPU, float32), so figures
            such as the greedy step-through can be drawn without re-running the model.
        context: for methods that prune inside the LLM (FastV), a context manager whose hooks must be active
            around ``model.generate(**generate_kwargs)``; ``None`` otherwise. Use ``generation_context()``.
    """

    generate_kwargs: dict[str, Any]
    selections: tuple[Selection, ...]
    geometry: tuple[TokenGeometry, ...]
    query_words: tuple[tuple[str, ...], ...]
    query_tokens: tuple[torch.Tensor | None, ...]
    stats: dict[str, Any]
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    visual_tokens: tuple[torch.Tensor, ...] = ()
    context: Any = None

    def generation_context(self) -> Any:
        """The context to generate in: ``with result.generation_context(): model.generate(**result.generate_kwargs)``
        (a no-op for the pre-LLM methods)."""
        import contextlib

        return self.context if self.context is not None else contextlib.nullcontext()
