"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175; github.com/vbdi/divprune): max-min diversity."""

from __future__ import annotations

import numpy as np
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
    duplicate tokens never make it pick an index twice. ``gain`` is the max-min distance at each pick. Distances
    are float64 (one SYRK Gram; the official code works in float32, whose rounding of ``cos`` decides near-ties):
    the picks equal a float64 reference wherever float64 tells the candidates apart.

    >>> select_divprune(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), 2).keep_idx.tolist()
    [0, 2]
    """
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    vc = v.cpu()
    v64 = vc.double().numpy()
    gram = v64 @ v64.T  # (N, N), one SYRK
    inv = 1.0 / np.maximum(np.sqrt(gram.diagonal()), 1e-12)  # as F.normalize
    dist = gram
    dist *= inv[:, None]
    dist *= inv[None, :]
    np.subtract(1.0, dist, out=dist)
    np.maximum(dist, 0.0, out=dist)  # (N, N) cosine distances
    n = dist.shape[0]
    order = np.empty(k, dtype=np.int64)
    gain = np.empty(k)
    if n > 1:
        np.fill_diagonal(dist, np.inf)
        nearest = dist.min(axis=0)  # (N,) distance to the nearest other token
        np.fill_diagonal(dist, 0.0)
    else:
        nearest = np.zeros(1)
    s = int(nearest.argmax())
    order[0], gain[0] = s, nearest[s]
    mind = dist[s].copy()  # (N,) distance to the nearest kept token
    mind[s] = -np.inf  # picked: masked
    for t in range(1, k):
        s = int(mind.argmax())
        order[t], gain[t] = s, mind[s]
        np.minimum(mind, dist[s], out=mind)
        mind[s] = -np.inf
    return finish(tokens, torch.from_numpy(order), torch.from_numpy(gain), "divprune", {}, v32=vc)
