"""The usual baselines: a uniform random subset and evenly spaced tokens."""

from __future__ import annotations

import math

import torch

from .._checks import check_keep, check_query, check_tokens
from ..registry import register
from ..types import Selection
from ._common import finish


@register("random", summary="Random: a uniform random K-subset (explicit torch.Generator)")
@torch.no_grad()
def select_random(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> Selection:
    """Uniform random subset. Deterministic: draws from ``generator`` or a fresh one seeded with ``seed``.

    >>> select_random(torch.ones(10, 4), 3, seed=0).keep.__int__()
    3
    """
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    if generator is None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(v.shape[0], generator=generator)[:k]
    return finish(tokens, order, torch.zeros(k), "random", {"seed": seed}, v32=v.cpu())


@register("uniform", summary="Uniform: K tokens evenly spaced over the token grid")
@torch.no_grad()
def select_uniform(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    grid: tuple[int, int] | None = None,
) -> Selection:
    """Evenly spaced tokens: the centres of K equal runs of the raster order, or a 2-D lattice when ``grid``
    ``(rows, cols)`` with ``rows * cols == N`` is given (lattice points thinned evenly to exactly K).

    >>> select_uniform(torch.ones(10, 2), 3).keep_idx.tolist()
    [1, 5, 8]
    """
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    n = v.shape[0]
    k = check_keep(keep, n)
    if grid is not None:
        rows, cols = (int(x) for x in grid)
        if rows * cols != n:
            raise ValueError(f"grid={grid} has {rows * cols} cells but tokens has N={n}")
        gr = max(1, min(rows, round(math.sqrt(k * rows / cols))))
        gc = max(1, min(cols, math.ceil(k / gr)))
        while gr * gc < k:
            gr, gc = min(rows, gr + 1), min(cols, gc + (gr == rows))
        rr = ((torch.arange(gr) + 0.5) * rows / gr).long()
        cc = ((torch.arange(gc) + 0.5) * cols / gc).long()
        lattice = (rr[:, None] * cols + cc[None, :]).flatten()  # (gr*gc,)
        pick = ((torch.arange(k) + 0.5) * lattice.numel() / k).long()
        order = lattice[pick]
    else:
        order = ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).long()
    return finish(tokens, order, torch.zeros(k), "uniform", {"grid": grid}, v32=v.cpu())
