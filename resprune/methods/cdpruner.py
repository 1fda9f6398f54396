"""CDPruner (Zhang et al., NeurIPS 2025, arXiv 2506.10967; github.com/Theia-4869/CDPruner): conditional DPP,
fast greedy MAP inference (Chen et al., NeurIPS 2018). Relevance here comes from the LLM input embeddings of the
query words (our variant; the original uses CLIP's text tower, which LLaVA checkpoints do not ship)."""

from __future__ import annotations

import math

import torch

from .._checks import check_keep, check_query, check_tokens
from ..registry import register
from ..relevance import text_relevance
from ..types import Selection
from ._common import NO_QUERY, finish


@register(
    "cdpruner",
    summary="CDPruner: conditional DPP (relevance x similarity), fast greedy MAP",
    text_aware=True,
    prune_defaults={"query": "instruction", "budget": "per-crop", "newlines": "keep"},  # as its released code
)
@torch.no_grad()
def select_cdpruner(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    negate: bool = False,
    floor: float = 0.0,
) -> Selection:
    """CDPruner (Zhang et al., NeurIPS 2025): MAP of the DPP with kernel ``L = diag(r) S diag(r)``.

    ``S_ij = cos(v_i, v_j)``; ``r`` = mean over query tokens of ``cos(v_i, t_j)`` (negated when ``negate``, as
    the official code does for CLIP relevance), min-max normalised per image (the official code normalises over
    the batch). Greedy MAP as in Chen et al. 2018: one Cholesky column per pick, ``d_i^2 -= e_i^2``. Our
    variant takes ``t_j`` from the LLM input embeddings. Without a query ``r = 1`` (plain DPP on similarity).

    >>> 2 in select_cdpruner(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]), 2).keep_idx.tolist()
    True
    """
    v = check_tokens(tokens)
    q = check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    vc = v.cpu()
    vn = torch.nn.functional.normalize(vc, dim=-1)
    sim = vn @ vn.T  # (N, N)
    n = sim.shape[0]
    notes: tuple[str, ...] = ()
    if q is not None:
        raw = text_relevance(vc, q.cpu(), aggregation="mean")
        raw = -raw if negate else raw
        lo, hi = raw.min(), raw.max()
        rel = (raw - lo) / (hi - lo + 1e-6)
        rel = floor + (1 - floor) * rel
    else:
        rel = None
        notes = (NO_QUERY,)
    r = torch.ones(n) if rel is None else rel
    kernel = (r[:, None] * sim * r[None, :]).double()  # (N, N)
    di2 = kernel.diagonal().clone()  # (N,)
    cis = torch.zeros(k, n, dtype=torch.float64)  # (K, N)
    picked = torch.zeros(n, dtype=torch.bool)
    order = torch.empty(k, dtype=torch.int64)
    gain = torch.empty(k, dtype=torch.float64)
    m = 0
    for t in range(k):
        score = di2.masked_fill(picked, -math.inf)
        s = int(torch.argmax(score))
        if not score[s] > 1e-10:  # kernel rank exhausted: take the most relevant left, then the lower index
            s = int(torch.argmax(r.double().masked_fill(picked, -math.inf)))
        order[t], gain[t] = s, max(float(di2[s]), 0.0)
        if di2[s] > 1e-10:
            e = (kernel[s] - cis[:m, s] @ cis[:m]) / math.sqrt(float(di2[s]))  # (N,)
            cis[m] = e
            m += 1
            di2 -= e.pow(2)
        picked[s] = True
    params = dict(negate=negate, floor=floor)
    return finish(tokens, order, gain, "cdpruner", params, v32=vc, relevance=rel, notes=notes)
