"""Text relevance of visual tokens to the query, and its mapping to (0, 1] (so that ``r ** alpha`` is defined).

Relevance mapping (the paper leaves it open; see README "Design choices"): ``r_i = agg_j cos(v_i, t_j)`` lies in
[-1, 1]; before the power it is mapped per image by min-max to ``[floor, 1]``. Order-preserving, finite, in (0, 1],
per image only; a constant relevance maps to 1 (no text preference). ``"affine"`` and ``"clamp"`` are ablations.
"""

from __future__ import annotations

import torch


def text_relevance(
    tokens: torch.Tensor, query: torch.Tensor, *, aggregation: str = "max", norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Raw cosine relevance of each visual token to the query.

    Args:
        tokens: `(N, D)` visual tokens.
        query: `(Q, D)` text-token embeddings.
        aggregation: ``"max"`` (``max_j cos(v_i, t_j)``, the paper's Eq. 13), ``"mean"`` (``mean_j cos``) or
            ``"pooled"`` (``cos(v_i, mean_j t_j)``).
        norms: `(N,)` the tokens' norms when the caller has them (one pass over the tokens fewer).

    Returns:
        `(N,)` float64 in [-1, 1] (computed in float64: the ranking ties of float32 cosines are resolved; the cost is
        an `(N, D) x (D, Q)` product with Q a few words).
    """
    v = tokens.double()  # (N, D); no copy when the caller already holds float64 tokens
    if norms is None:
        norms = torch.linalg.vector_norm(v, dim=1)
    inv = 1.0 / norms.double().reshape(-1, 1).clamp_min(1e-12)  # (N, 1), as F.normalize
    if aggregation == "pooled":
        t = torch.nn.functional.normalize(query.double().mean(0, keepdim=True), dim=-1)  # (1, D)
        return (v @ t.T)[:, 0] * inv[:, 0]
    t = torch.nn.functional.normalize(query.double(), dim=-1)  # (Q, D)
    cos = (v @ t.T) * inv  # (N, Q): the tokens are scaled after the small product, not before
    if aggregation == "max":
        return cos.max(dim=1).values
    if aggregation == "mean":
        return cos.mean(dim=1)
    raise ValueError(f"aggregation must be 'max', 'mean' or 'pooled', got {aggregation!r}")


def map_relevance(r: torch.Tensor, *, mapping: str = "minmax", floor: float = 1e-6) -> torch.Tensor:
    """Map raw cosine relevance of ONE image to (0, 1] so that ``r ** alpha`` is defined (order-preserving; float64).

    >>> [round(x, 7) for x in map_relevance(torch.tensor([-0.5, 0.0, 0.5])).tolist()]
    [1e-06, 0.5000005, 1.0]
    """
    if not (0 < floor < 1):
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    r = r.double()
    if mapping == "minmax":
        lo, hi = r.min(), r.max()
        if float(hi - lo) <= 1e-12:
            return torch.ones_like(r)
        return 1.0 - (1.0 - floor) * (hi - r) / float(hi - lo)  # max -> exactly 1
    if mapping == "affine":
        return ((1 + r) / 2).clamp(min=floor, max=1.0)
    if mapping == "clamp":
        return r.clamp(min=floor, max=1.0)
    raise ValueError(f"mapping must be 'minmax', 'affine' or 'clamp', got {mapping!r}")


def mapped_relevance(
    v: torch.Tensor,
    q: torch.Tensor | None,
    aggregation: str = "max",
    mapping: str = "minmax",
    floor: float = 1e-6,
    norms: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``map_relevance(text_relevance(v, q))``, or ``None`` without a query."""
    if q is None:
        return None
    return map_relevance(text_relevance(v, q, aggregation=aggregation, norms=norms), mapping=mapping, floor=floor)
