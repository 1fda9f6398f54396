"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175; github.com/vbdi/divprune): max-min diversity."""

from __future__ import annotations

import math

import torch

from .._checks import check_keep, check_query, check_tokens
from ..registry import register
from ..types import Selection
from ._common import finish


@register("divprune", summary="DivPrune: max-min diversity (farthest point, cosine distance)")
@torch.no_grad()
def select_divprune(tokens: torch.Tensor, keep: int, *, query: torch.Tensor | None = None) -> Selection:
    """DivPrune (Alvar et al., CVPR 2025): greedy max-min diversity on ``d_ij = 1 - cos(v_i, v_j)``.

    As in the official code the first pick maximises the distance to its nearest neighbour, then each step picks
    ``argmax_i min_{j in S} d_ij``. Picked tokens are masked (the official code relies on ``d_ii = 0``), so
    duplicate tokens never make it pick an index twice. ``gain`` is the max-min distance at each pick.

    >>> select_divprune(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), 2).keep_idx.tolist()
    [0, 2]
    """
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    vc = v.cpu()
    vn = torch.nn.functional.normalize(vc, dim=-1)
    dist = (1.0 - vn @ vn.T).clamp_(min=0.0)  # (N, N)
    n = dist.shape[0]
    picked = torch.zeros(n, dtype=torch.bool)
    order = torch.empty(k, dtype=torch.int64)
    gain = torch.empty(k)
    if n > 1:
        nearest = dist.masked_fill(torch.eye(n, dtype=torch.bool), math.inf).min(dim=0).values  # (N,)
    else:
        nearest = torch.zeros(1)
    s = int(torch.argmax(nearest))
    order[0], gain[0] = s, nearest[s]
    picked[s] = True
    mind = dist[s].clone()  # (N,) distance to the nearest kept token
    for t in range(1, k):
        score = mind.masked_fill(picked, -math.inf)
        s = int(torch.argmax(score))
        order[t], gain[t] = s, score[s]
        picked[s] = True
        mind = torch.minimum(mind, dist[s])
    return finish(tokens, order, gain, "divprune", {}, v32=vc)
