"""Token-selection methods that act on the projected visual tokens of one image (pre-LLM).

ResPrune: Li et al., *ResPrune: Text-Conditioned Subspace Reconstruction for Visual Token Pruning in Large
Vision-Language Models*, arXiv 2603.21105 (2026). No public code; this implementation follows the method as
summarised in the project's SPEC (greedy subspace expansion by text-weighted residual energy, incremental
Gram–Schmidt). Peers, re-implemented from their papers with their official code read as a reference:

- DivPrune: Alvar et al., CVPR 2025, arXiv 2503.02175 (github.com/vbdi/divprune): max-min diversity.
- CDPruner: Zhang et al., NeurIPS 2025, arXiv 2506.10967 (github.com/Theia-4869/CDPruner): conditional DPP,
  fast greedy MAP inference (Chen et al., NeurIPS 2018). Relevance here comes from the LLM input embeddings of the
  query words (our variant; the original uses CLIP's text tower, which LLaVA checkpoints do not ship).
- random, uniform: the usual baselines.

Decisions this module makes (the paper leaves them open; see README "Design choices"):

1. Relevance mapping. ``r_i = agg_j cos(v_i, t_j)`` lies in [-1, 1]; before the power ``r^alpha`` it is mapped
   per image by min-max to ``[floor, 1]``: ``floor + (1 - floor) * (r - min r) / (max r - min r)``, with
   ``floor = 1e-6`` by default (SPEC A.8-1 option a). Order-preserving, finite, in (0, 1], per image only. A
   constant relevance maps to 1 (no text preference). ``mapping="affine"`` ((1 + r) / 2, floored) and
   ``"clamp"`` (max(r, floor)) are offered for ablations.
2. Seed. The first pick ignores the text by default: the caller's ``seed_prior`` (the adapters pass CLS attention
   for CLIP towers) when given, else the max-norm token (``seed="auto"``). ``seed="weighted"`` makes the seed
   step 0 of the weighted rule (argmax ``g(r) * ||v||^2``).
3. Energies on the raw projected tokens (magnitude matters), computed in float32 with float64 bookkeeping. A token
   whose residual falls below ``rtol * ||v||^2`` counts as spanned (energy 0). Once every remaining energy is 0,
   ties are broken by ``g(r)``, then by the lower index, so K distinct indices always come back.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_keep, check_query, check_tokens
from .registry import register
from .relevance import map_relevance, mapped_relevance, text_relevance
from .residual import auto_solver, greedy_residual, residual_curve
from .types import Selection

__all__ = ["map_relevance", "residual_curve", "text_relevance"]


def _finish(
    tokens: torch.Tensor,
    order: torch.Tensor,
    gain: torch.Tensor,
    method: str,
    params: dict,
    *,
    residual: torch.Tensor | None = None,
    v32: torch.Tensor | None = None,
    energy: torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
    notes: tuple[str, ...] = (),
) -> Selection:
    dev = tokens.device
    order = order.to(torch.int64)
    if residual is None:
        residual = residual_curve(v32 if v32 is not None else tokens, order)
    return Selection(
        keep_idx=order.sort().values.to(dev),
        order=order.to(dev),
        gain=gain.float().to(dev),
        residual=residual.float().to(dev),
        method=method,
        n_tokens=int(tokens.shape[0]),
        energy=None if energy is None else energy.float().to(dev),
        relevance=None if relevance is None else relevance.float().to(dev),
        params=params,
        notes=notes,
    )


_NO_QUERY = "no query words: text relevance unused, text-free score"

# ---------------------------------------------------------------------------------------------------------------
# Registered methods


@register("resprune", summary="ResPrune: greedy text-weighted residual energy (subspace expansion)", text_aware=True)
@torch.no_grad()
def select_resprune(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    alpha: float = 0.75,
    aggregation: str = "max",
    mapping: str = "minmax",
    floor: float = 1e-6,
    seed: str = "auto",
    seed_prior: torch.Tensor | None = None,
    solver: str = "auto",
) -> Selection:
    """ResPrune: keep ``argmax_i g(r_i) * E_S(v_i)`` step by step, ``g(r) = r ** alpha``.

    Args:
        tokens: `(N, D)` visual tokens of one image in the LLM input-embedding space (any float dtype).
        keep: K, number of tokens to keep.
        query: `(Q, D)` input embeddings of the prompt's nouns, or None (text-free residual energy).
        alpha: textual guidance strength (0.75 for LLaVA, 0.3 for Qwen2.5-VL in the paper); 0 = no text.
        aggregation: relevance over query tokens: ``"max"`` (paper), ``"mean"``, ``"pooled"``.
        mapping: cosine to (0, 1]: ``"minmax"`` (default, per image), ``"affine"``, ``"clamp"``.
        floor: the smallest mapped relevance (keeps the least relevant token eligible at weight floor**alpha).
        seed: ``"auto"`` (``seed_prior`` if given else max-norm), ``"max_norm"``, ``"prior"`` or ``"weighted"``.
        seed_prior: `(N,)` per-token prior (e.g. CLS attention), argmax is the seed.
        solver: ``"gs"``, ``"gram"`` or ``"auto"`` (the same picks; speed differs, see ``_auto_solver``).

    Returns:
        A ``Selection`` with ``gain`` = weighted score, ``energy`` = residual energy at each pick, ``residual``,
        and ``relevance`` (the mapped r, when a query was used).

    >>> sel = select_resprune(torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.9, 0.1]]), 2)
    >>> sel.order.tolist(), sel.keep_idx.tolist()
    ([0, 1], [0, 1])
    """
    v = check_tokens(tokens)
    q = check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if seed not in ("auto", "max_norm", "prior", "weighted"):
        raise ValueError(f"seed must be 'auto', 'max_norm', 'prior' or 'weighted', got {seed!r}")
    if solver not in ("auto", "gs", "gram"):
        raise ValueError(f"solver must be 'auto', 'gs' or 'gram', got {solver!r}")
    n = v.shape[0]
    if seed_prior is not None:
        seed_prior = torch.as_tensor(seed_prior).detach().float().flatten().cpu()
        if seed_prior.numel() != n or not torch.isfinite(seed_prior).all():
            raise ValueError(
                f"seed_prior must be {n} finite values (one per token), got shape {tuple(seed_prior.shape)}"
            )
    elif seed == "prior":
        raise ValueError("seed='prior' needs seed_prior (a per-token prior such as CLS attention)")

    notes: list[str] = []
    vc = v.cpu()
    rel = mapped_relevance(vc, None if q is None else q.cpu(), aggregation, mapping, floor)
    if rel is None and alpha != 0:
        notes.append(_NO_QUERY)
    weight = None if (rel is None or alpha == 0) else rel.double().pow(alpha)

    if seed == "weighted":
        seed_rule, first = "weighted", None  # step 0 of the weighted rule
    elif seed == "prior" or (seed == "auto" and seed_prior is not None):
        seed_rule, first = "prior", int(torch.argmax(seed_prior))
    else:
        seed_rule, first = "max_norm", int(torch.argmax(torch.linalg.vector_norm(vc, dim=1)))
    chosen = auto_solver(n, k, v.shape[1]) if solver == "auto" else solver
    order, e, g, curve = greedy_residual(vc, k, weight, first, solver=chosen)
    params = dict(alpha=alpha, aggregation=aggregation, mapping=mapping, floor=floor, seed=seed_rule, solver=chosen)
    return _finish(tokens, order, g, "resprune", params, residual=curve, energy=e, relevance=rel, notes=tuple(notes))


@register("residual", summary="ResPrune without text (alpha = 0): greedy residual energy, pivoted QR")
@torch.no_grad()
def select_residual(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    seed: str = "auto",
    seed_prior: torch.Tensor | None = None,
    solver: str = "auto",
) -> Selection:
    """Ablation: ResPrune with alpha = 0 (the query is ignored), i.e. greedy column-pivoted QR on ``V^T``.

    >>> select_residual(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.5]]), 2).keep_idx.tolist()
    [0, 2]
    """
    check_query(query, check_tokens(tokens).shape[1])  # validated, then ignored
    sel = select_resprune(tokens, keep, query=None, alpha=0.0, seed=seed, seed_prior=seed_prior, solver=solver)
    params = {k: sel.params[k] for k in ("seed", "solver")}
    return Selection(
        sel.keep_idx, sel.order, sel.gain, sel.residual, "residual", sel.n_tokens, sel.energy, None, params, ()
    )


@register("relevance", summary="Text relevance alone: one-pass top-K by r (ResPrune ablation)", text_aware=True)
@torch.no_grad()
def select_relevance(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    aggregation: str = "max",
    mapping: str = "minmax",
    floor: float = 1e-6,
) -> Selection:
    """Ablation (ResPrune Table IV, Setting-3): top-K tokens by mapped relevance; ties by lower index.

    Without a usable query the text-free score ``||v||^2`` (ResPrune's step-0 energy) ranks the tokens.

    >>> q = torch.tensor([[0.0, 1.0]])
    >>> select_relevance(torch.tensor([[1.0, 0.0], [0.1, 1.0], [1.0, 1.0]]), 2, query=q).order.tolist()
    [1, 2]
    """
    v = check_tokens(tokens)
    q = check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    vc = v.cpu()
    rel = mapped_relevance(vc, None if q is None else q.cpu(), aggregation, mapping, floor)
    score = rel.double() if rel is not None else torch.linalg.vector_norm(vc, dim=1).double().pow(2)
    # stable sort: equal scores keep index order
    order = torch.sort(score, descending=True, stable=True).indices[:k]
    params = dict(aggregation=aggregation, mapping=mapping, floor=floor)
    notes = () if rel is not None else (_NO_QUERY,)
    return _finish(tokens, order, score[order], "relevance", params, v32=vc, relevance=rel, notes=notes)


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
    return _finish(tokens, order, gain, "divprune", {}, v32=vc)


@register("cdpruner", summary="CDPruner: conditional DPP (relevance x similarity), fast greedy MAP", text_aware=True)
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
        notes = (_NO_QUERY,)
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
    return _finish(tokens, order, gain, "cdpruner", params, v32=vc, relevance=rel, notes=notes)


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
    return _finish(tokens, order, torch.zeros(k), "random", {"seed": seed}, v32=v.cpu())


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
    return _finish(tokens, order, torch.zeros(k), "uniform", {"grid": grid}, v32=v.cpu())
