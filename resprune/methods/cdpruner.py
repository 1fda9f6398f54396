"""CDPruner (Zhang et al., NeurIPS 2025, arXiv 2506.10967; github.com/Theia-4869/CDPruner): conditional DPP,
fast greedy MAP inference (Chen et al., NeurIPS 2018). Relevance here comes from the LLM input embeddings of the
query words (our variant; the original uses CLIP's text tower, which LLaVA checkpoints do not ship)."""

from __future__ import annotations

import torch

from .._checks import check_keep, check_query, check_tokens, float64
from ..registry import register, register_batch
from ..relevance import text_relevance
from ..residual import auto_solver
from ..types import Selection
from ._common import NO_QUERY, GreedyPlan, run_greedy

CONSTANT = "constant text relevance (no preference): the plain DPP (r = 1)"


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
    the official code does for CLIP relevance), min-max normalised per image to [0, 1] as the official code does
    (it normalises over the batch), then lifted to ``[floor, 1]``. A constant relevance (no preference) is the plain
    DPP, ``r = 1``, as is a missing query; our variant takes ``t_j`` from the LLM input embeddings.

    Greedy MAP picks ``argmax_i`` of the conditional variance ``d_i^2 = L_ii - L_iS L_SS^-1 L_Si`` (Chen et al.
    2018). Since ``L`` is the Gram matrix of ``x_i = r_i v_i / ||v_i||``, ``d_i^2`` is the residual energy of
    ``x_i`` against the picks: the same exact (float64) greedy core as ResPrune, with the per-token weight
    ``r_i^2 / ||v_i||^2`` on the energy of ``v_i``. So picks equal a float64 reference (the official float32 code
    agrees wherever float32 tells the candidates apart). Tokens with ``r = 0`` come last, by index.

    >>> 2 in select_cdpruner(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]), 2).keep_idx.tolist()
    True
    """
    plan = _plan(tokens, keep, query, negate, floor)
    return run_greedy([plan], "cdpruner", lockstep=plan.v64.device.type != "cpu")[0]


def _plan(tokens, keep, query, negate, floor) -> GreedyPlan:  # noqa: ANN001
    """Checks, relevance and the DPP's weights ``r_i^2 / ||v_i||^2`` of one image (on the tokens' device)."""
    v = check_tokens(tokens)
    q = check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    if not (isinstance(floor, (int, float)) and 0.0 <= floor < 1.0):
        raise ValueError(f"floor must be in [0, 1), got {floor!r}")
    v64 = float64(v)
    norms = torch.linalg.vector_norm(v64, dim=1)
    norm2 = norms.pow(2)
    notes: tuple[str, ...] = ()
    rel = None
    if q is None:
        notes = (NO_QUERY,)
    else:
        raw = text_relevance(v64, q.to(v64.device), aggregation="mean", norms=norms)
        raw = -raw if negate else raw
        lo, hi = raw.min(), raw.max()
        if float(hi - lo) > 1e-12:
            rel = floor + (1 - floor) * (raw - lo) / (hi - lo)
        else:
            notes = (CONSTANT,)
    r2 = torch.ones_like(norm2) if rel is None else rel.pow(2)
    weight = torch.where(norm2 > 0, r2 / norm2.clamp_min(1e-300), torch.zeros_like(norm2))
    solver = auto_solver(v.shape[0], k, v.shape[1])
    return GreedyPlan(tokens, v64, k, weight, None, solver, dict(negate=negate, floor=floor), rel, notes, norm2)


def _batch_cdpruner(tokens, keep, queries, internals, *, negate: bool = False, floor: float = 0.0) -> list[Selection]:  # noqa: ANN001
    plans = [_plan(t, keep, q, negate, floor) for t, q in zip(tokens, queries)]
    return run_greedy(plans, "cdpruner", lockstep=True)


register_batch("cdpruner", _batch_cdpruner)
