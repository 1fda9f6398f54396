"""ResPrune (Li et al., *ResPrune: Text-Conditioned Subspace Reconstruction for Visual Token Pruning in Large
Vision-Language Models*, arXiv 2603.21105, 2026; no public code) and its two ablations.

Greedy subspace expansion by text-weighted residual energy: keep ``argmax_i g(r_i) * E_S(v_i)`` step by step,
``g(r) = r ** alpha``, ``r`` the mapped cosine relevance to the prompt's noun embeddings (``resprune.relevance``),
``E_S`` the residual energy w.r.t. the span of the kept tokens (``resprune.residual``, the one greedy core).

Decisions (the paper leaves them open; see README "Design choices"):

1. Relevance mapping: per image min-max to ``[floor, 1]`` (``resprune.relevance``).
2. Seed. The first pick ignores the text by default: the ``seed_prior`` (``prune`` passes the vision tower's [CLS]
   attention where the model offers it, declared in the registration) when given, else the max-norm token
   (``seed="auto"``). ``seed="weighted"`` makes the seed step 0 of the weighted rule (argmax ``g(r) * ||v||^2``).
   ``residual`` declares the same prior, so it is exactly ResPrune with ``alpha = 0``.
3. Energies on the raw projected tokens (magnitude matters); picks decided in float64 (``resprune.residual``: exact
   wherever float64 can tell candidates apart, so both solvers agree and selections are nested). A token counts as
   spanned only at float64's noise level (``SPAN_RTOL``). Once every remaining energy is 0, ties are broken by
   ``g(r)``, then by the lower index, so K distinct indices always come back.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_keep, check_query, check_tokens, float64
from ..registry import register, register_batch
from ..relevance import mapped_relevance
from ..residual import auto_solver
from ..types import Selection
from ._common import NO_QUERY, GreedyPlan, _signature_defaults, finish, run_greedy

SEED_PRIOR = {"seed_prior": "cls_attention"}  # the [CLS] seed, wherever the model offers [CLS] attention


@register(
    "resprune",
    summary="ResPrune: greedy text-weighted residual energy (subspace expansion)",
    text_aware=True,
    optional=SEED_PRIOR,
)
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
        solver: ``"gs"``, ``"gram"`` or ``"auto"`` (the same picks; speed differs, see ``residual.auto_solver``).

    Returns:
        A ``Selection`` with ``gain`` = weighted score, ``energy`` = residual energy at each pick, ``residual``,
        and ``relevance`` (the mapped r, when a query was used).

    >>> sel = select_resprune(torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.9, 0.1]]), 2)
    >>> sel.order.tolist(), sel.keep_idx.tolist()
    ([0, 1], [0, 1])
    """
    plan = _plan(tokens, keep, query, alpha, aggregation, mapping, floor, seed, seed_prior, solver)
    return run_greedy([plan], "resprune", lockstep=plan.v64.device.type != "cpu")[0]


def _plan(tokens, keep, query, alpha, aggregation, mapping, floor, seed, seed_prior, solver) -> GreedyPlan:  # noqa: ANN001
    """Checks, relevance, weights and seed of one image (on the tokens' device)."""
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
    v64 = float64(v)  # one float64 copy and one pass for the norms, shared by the relevance, seed and greedy core
    norms = torch.linalg.vector_norm(v64, dim=1)
    norm2 = norms.pow(2)
    rel = mapped_relevance(v64, None if q is None else q.to(v64.device), aggregation, mapping, floor, norms)
    if rel is None and alpha != 0:
        notes.append(NO_QUERY)
    weight = None if (rel is None or alpha == 0) else rel.double().pow(alpha)

    if seed == "weighted":
        seed_rule, first = "weighted", None  # step 0 of the weighted rule
    elif seed == "prior" or (seed == "auto" and seed_prior is not None):
        seed_rule, first = "prior", int(torch.argmax(seed_prior))
    else:
        seed_rule, first = "max_norm", int(torch.argmax(norms))
    chosen = auto_solver(n, k, v.shape[1]) if solver == "auto" else solver
    params = dict(alpha=alpha, aggregation=aggregation, mapping=mapping, floor=floor, seed=seed_rule, solver=chosen)
    return GreedyPlan(tokens, v64, k, weight, first, chosen, params, rel, tuple(notes), norm2)


def _batch_resprune(tokens, keep, queries, internals, **hparams) -> list[Selection]:  # noqa: ANN001
    """ResPrune for a batch: every image planned alone, the greedy loops run in lock-step (``run_greedy``)."""
    hp = {**_signature_defaults(select_resprune), **hparams}
    plans = [
        _plan(
            t,
            keep,
            q,
            hp["alpha"],
            hp["aggregation"],
            hp["mapping"],
            hp["floor"],
            hp["seed"],
            extra.get("seed_prior"),
            hp["solver"],
        )
        for t, q, extra in zip(tokens, queries, internals)
    ]
    return run_greedy(plans, "resprune", lockstep=True)


register_batch("resprune", _batch_resprune)


@register(
    "residual",
    summary="ResPrune without text (alpha = 0): greedy residual energy, pivoted QR",
    optional=SEED_PRIOR,
)
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
    return _as_residual(sel)


def _as_residual(sel: Selection) -> Selection:
    params = {k: sel.params[k] for k in ("seed", "solver")}
    return Selection(
        sel.keep_idx, sel.order, sel.gain, sel._residual, "residual", sel.n_tokens, sel.energy, None, params, ()
    )


def _batch_residual(tokens, keep, queries, internals, **hparams) -> list[Selection]:  # noqa: ANN001
    for t, q in zip(tokens, queries):
        check_query(q, check_tokens(t).shape[1])  # validated, then ignored
    sels = _batch_resprune(tokens, keep, [None] * len(tokens), internals, alpha=0.0, **hparams)
    return [_as_residual(s) for s in sels]


register_batch("residual", _batch_residual)


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
    v64 = float64(vc)  # one float64 copy, shared by the relevance and the greedy core
    rel = mapped_relevance(v64, None if q is None else q.cpu(), aggregation, mapping, floor)
    score = rel.double() if rel is not None else torch.linalg.vector_norm(vc, dim=1, dtype=torch.float64).pow(2)
    # stable sort: equal scores keep index order
    order = torch.sort(score, descending=True, stable=True).indices[:k]
    params = dict(aggregation=aggregation, mapping=mapping, floor=floor)
    notes = () if rel is not None else (NO_QUERY,)
    return finish(tokens, order, score[order], "relevance", params, v32=vc, relevance=rel, notes=notes)
