"""The greedy residual core, once: subspace expansion by (weighted) residual energy, the residual curve of any
pick order, and per-token residual energies along an order (used by the methods and by the figures alike).

``E_S(v_i) = ||v_i - P_S v_i||^2``: the energy of token ``v_i`` left after projecting it on the span of the picked
tokens ``S``. ResPrune (arXiv 2603.21105) picks ``argmax_i g(r_i) E_S(v_i)`` at each step.

Exactness. Picks are decided in float64: they equal a float64 greedy reference wherever float64 can tell the
candidates apart. The fast path keeps float64 estimates of every energy (one float64 Gram GEMM and
pivoted-Cholesky steps, or one `(N, D)` float64 mat-vec per pick against a re-orthogonalised basis); an estimate
plus a margin (``MARGIN * ||v_i||^2``, far above the estimates' rounding) is an upper bound on the true energy, so
a lazy search evaluates exactly (float64 residual vectors against the float64 orthonormal basis of the picks,
re-orthogonalised) only the candidates whose bound can still beat the best exact value: only near-ties at
``MARGIN``, which real tokens rarely have. Tokens whose energy falls below ``FRAGILE * ||v_i||^2``, where the
estimates' cancellation error could matter, are tracked exactly from then on. (A float32 estimate was tried first:
on low-rank-plus-noise tokens its 1e-5 margin left hundreds of near-ties to evaluate exactly, ten times the cost
of the float64 Gram GEMM.) A token counts as spanned (energy 0) only when
its float64 residual is below ``SPAN_RTOL`` times the largest ``||v_j||^2`` of the image, i.e. at float64's noise
level. Because picks are exact, both solvers give the same picks and selections are nested: the first K' picks at
budget K are the picks at budget K'.

Speed. With the Gram solver the loop first runs plain (``_certified_gram``: argmax, one mat-vec and one update per
step, no search inside the loop) and is then certified in one vectorised pass by the rule above (every pick's lower
bound at least every other token's upper bound, every pivot well above rounding); only when that fails (near-ties,
nearly spanned tokens) does the lazy exact loop run, from the start. Same picks either way, tested.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._checks import check_tokens, float64

SPAN_RTOL = 1e-12  # float64 residual below SPAN_RTOL * max_j ||v_j||^2: spanned (float64 noise level)
MARGIN = 1e-9  # bound on the float64 estimates' error, relative to ||v_i||^2 (measured: below 1e-14)
FRAGILE = 1e-8  # energies below FRAGILE * ||v_i||^2 are tracked exactly (10 x the margin)
PIVOT = 1e-4  # a Gram pivot below PIVOT * ||v_s||^2 would amplify rounding: the exact direction is used instead
_BATCH = 16  # candidates evaluated exactly per round of the lazy search
CERTIFIED_GRAM = True  # "gram": try the plain loop with after-the-fact certification first (``_certified_gram``)
_CERTIFY_MAX = 1 << 22  # K * N up to this: the check's (K + 1, N) float64 arrays stay below 32 MiB each


def greedy_residual(
    v: torch.Tensor,
    keep: int,
    weight: torch.Tensor | None,
    seed: int | None,
    *,
    solver: str,
    norm2: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy subspace expansion with exact (float64) picks; the loop runs in NumPy (K small steps).

    Args:
        v: `(N, D)` float32 (or float64) tokens on the CPU.
        keep: K (<= N).
        weight: `(N,)` text weights ``g(r)``, or None for all ones.
        seed: index of the first pick, or None to use the rule from step 0.
        solver: how the float64 estimates are kept: ``"gs"``: the Gram–Schmidt basis of the picks and one
            `(N, D)` mat-vec per pick, O(N K D) as in the paper; ``"gram"``: one `(N, N)` Gram GEMM, then
            pivoted-Cholesky steps of O(N t). The same picks.
        norm2: `(N,)` float64 squared norms of ``v`` when the caller has them.

    Returns:
        order `(K,)` int64, energy at pick `(K,)` (float64; exact where the pick needed an exact decision, else the
        float64 estimate, within ``MARGIN * ||v||^2``), gain at pick `(K,)`, residual curve `(K+1,)` (normalised total
        energy after each pick, from the estimates).
    """
    if solver not in ("gs", "gram"):
        raise ValueError(f"solver must be 'gs', 'gram' or 'auto', got {solver!r}")
    v64 = v.detach().numpy() if v.dtype == torch.float64 else float64(v).numpy()  # (N, D); float32 values: exact
    n, dim = v64.shape
    norm2 = np.einsum("nd,nd->n", v64, v64) if norm2 is None else norm2.double().cpu().numpy().copy()  # (N,)
    total0 = float(norm2.sum())
    span_tol = SPAN_RTOL * float(norm2.max()) if n else 0.0
    w = np.ones(n) if weight is None else weight.double().numpy()
    margin = MARGIN * norm2
    est = norm2.copy()  # (N,) energy estimates (exact where ``exact``; 0 once picked or spanned)
    spanned = norm2 <= span_tol
    est[spanned] = 0.0
    exact = spanned.copy()  # known exactly: tracked residual vectors, or zero
    avail = np.ones(n, dtype=bool)
    # per-token state kept up to date instead of rebuilt at every step:
    live = ~exact  # available and estimated (the estimates that a new direction updates)
    wm = np.where(exact, 0.0, w * margin)  # what the margin adds to a score's upper bound; -inf once picked
    thr = np.where(exact, -np.inf, FRAGILE * norm2)  # estimates at or below thr are evaluated and tracked
    frag = np.empty(0, dtype=np.int64)  # tracked tokens (rows of ``frag_res``)
    frag_res = np.zeros((0, dim))  # (F, D) their float64 residual vectors
    # the exact float64 basis of the picks, built lazily (in blocks, when an exact value is needed)
    q64 = np.zeros((keep, dim))
    m = 0
    pending: list[int] = []
    # the float64 estimates: a Gram matrix and Cholesky rows l_t = V u_t ("gram"), or the exact basis ("gs")
    gram = v64 @ v64.T if solver == "gram" else None  # (N, N); NumPy runs A @ A.T as one SYRK (half a GEMM)
    if gram is not None and CERTIFIED_GRAM and 0 < keep and keep * n <= _CERTIFY_MAX and not spanned.any():
        fast = _certified_gram(gram, norm2, w, keep, seed)
        if fast is not None:
            return fast
    chol = np.zeros((keep, n)) if solver == "gram" else None
    mc = 0
    order = np.empty(keep, dtype=np.int64)
    e_pick = np.empty(keep)
    g_pick = np.empty(keep)
    curve = np.empty(keep + 1)
    curve[0] = 1.0 if total0 > 0 else 0.0

    def project(r: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """``r`` minus its components on ``q64[lo:hi]`` (classical Gram–Schmidt, applied twice)."""
        if hi > lo:
            for _ in range(2):
                r -= (r @ q64[lo:hi].T) @ q64[lo:hi]
        return r

    def flush() -> None:
        """Add the pending picks to the exact basis (one block product, then in pick order within the block) and
        bring the tracked residual vectors up to date (tracked tokens that became spanned drop to 0)."""
        nonlocal m, frag_res
        if not pending:
            return
        m0 = m
        block = project(v64[pending], 0, m)
        for row in block:
            r = project(row.copy(), m0, m)
            e = float(r @ r)
            if e > span_tol:
                q64[m] = r / np.sqrt(e)
                m += 1
        pending.clear()
        if frag.size and m > m0:
            frag_res = project(frag_res, m0, m)
            e = np.einsum("ij,ij->i", frag_res, frag_res)
            gone = e <= span_tol
            spanned[frag[gone]] = True
            est[frag] = np.where(gone | ~avail[frag], 0.0, e)

    def residual(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 residual vectors `(len(idx), D)` of tokens ``idx`` and their energies."""
        flush()
        r = project(v64[idx], 0, m)
        return r, np.einsum("ij,ij->i", r, r)

    def track(idx: np.ndarray, r: np.ndarray, e: np.ndarray) -> None:
        """Exact energies of ``idx`` are known: store them; those below ``FRAGILE * ||v||^2`` are tracked from now
        on (their residual vectors kept exactly), those at float64's noise level count as spanned (0)."""
        nonlocal frag, frag_res
        gone = e <= span_tol
        est[idx] = np.where(gone, 0.0, e)
        spanned[idx[gone]] = True
        new = ~exact[idx] & (e <= FRAGILE * norm2[idx])
        if new.any():
            j = idx[new]
            frag = np.concatenate([frag, j])
            frag_res = np.concatenate([frag_res, r[new]])
            live[j] = False
            exact[j] = True
            wm[j] = 0.0
            thr[j] = -np.inf

    for t in range(keep):
        if t == 0 and seed is not None:
            s = int(seed)
        else:
            bound = w * est + wm  # upper bounds of the scores (exact for exact tokens); -inf once picked
            fresh: np.ndarray | None = None  # evaluated exactly at this step
            batch = 1
            while True:  # lazy search: estimates +- margin bound the true scores
                s = int(bound.argmax())
                if not bound[s] > 0 or exact[s] or (fresh is not None and fresh[s]):
                    break
                best = bound[s]
                bound[s] = -np.inf
                second = bound.max()
                bound[s] = best
                if w[s] * (est[s] - margin[s]) >= second:  # unambiguous: no exact value needed
                    break
                if fresh is None:
                    fresh = np.zeros(n, dtype=bool)
                if batch > 1:
                    cand = np.flatnonzero(live & ~fresh)
                    top = cand[np.argsort(-bound[cand], kind="stable")[:batch]]
                else:
                    top = np.array([s])
                batch = min(2 * batch, _BATCH)
                r, e = residual(top)
                track(top, r, e)
                fresh[top] = True
                bound[top] = w[top] * est[top]  # exact values now
            if not bound[s] > 0:  # everything left is spanned: break ties by weight, then by index
                s = int(np.where(avail, w, -np.inf).argmax())
        e_s = 0.0 if spanned[s] else float(est[s])
        order[t], e_pick[t], g_pick[t] = s, e_s, w[s] * e_s
        avail[s] = live[s] = False
        wm[s] = thr[s] = -np.inf
        est[s] = 0.0
        if e_s > 0:  # a new direction (unless the exact basis finds it spanned): update every estimate
            pending.append(s)
            col = None
            if gram is not None:
                ls = chol[:mc, s]
                d = gram[s, s] - ls @ ls
                if d > PIVOT * norm2[s]:  # the pivot is well above rounding
                    col = (gram[s] - ls @ chol[:mc]) / np.sqrt(d)
            if col is None:  # "gs", or a nearly spanned Gram pivot: the exact direction, if there is one
                m_before = m
                flush()
                if m > m_before:
                    col = v64 @ q64[m - 1]
            if col is not None:
                if chol is not None:
                    chol[mc] = col
                mc += 1
                np.subtract(est, col * col, out=est, where=live)
                if frag.size:  # tracked tokens follow the exact basis
                    flush()
                newly = np.flatnonzero(est <= thr)
                if newly.size:  # evaluate exactly and track from now on
                    r, e = residual(newly)
                    track(newly, r, e)
        curve[t + 1] = max(float(est.sum()), 0.0) / total0 if total0 > 0 else 0.0
    curve = np.minimum.accumulate(curve)
    return (
        torch.from_numpy(order),
        torch.from_numpy(e_pick),
        torch.from_numpy(g_pick),
        torch.from_numpy(curve).float(),
    )


def _certified_gram(
    gram: np.ndarray, norm2: np.ndarray, w: np.ndarray, keep: int, seed: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The "gram" solver's loop when no step needs an exact decision, certified after the fact; None otherwise.

    The plain pivoted-Cholesky greedy (argmax of ``w * est``, one mat-vec and one update per step, nothing else
    inside the loop), then one vectorised check of every step at once, by the rule of the exact loop
    (``greedy_residual``) and of the device path (``greedy_residual_batch``): each pick's lower bound
    ``w (est - MARGIN ||v||^2)`` is positive and at least every available token's upper bound
    ``w (est + MARGIN ||v||^2)``, and every pivot is above ``PIVOT ||v||^2``. Where that holds the exact loop would
    have decided every step from its estimates alone, i.e. made the same picks with the same estimates (the lazy
    search and the tracking of nearly spanned tokens never start), so the result is the exact core's; where it does
    not (near-ties, nearly spanned tokens), the caller runs the exact loop. Tokens with zero energy (spanned at the
    start) go to the exact loop. Same returns as ``greedy_residual``."""
    n = norm2.shape[0]
    chol = np.empty((keep, n))  # Cholesky rows l_t: est after t picks = norm2 - sum of the first t rows squared
    order = np.empty(keep, dtype=np.int64)
    sw = np.sqrt(w)
    score = w * norm2  # w * est, -inf once picked
    for t in range(keep):
        s = int(seed) if t == 0 and seed is not None else int(score.argmax())
        order[t] = s
        col = chol[t]
        if t:
            np.subtract(gram[s], chol[:t, s] @ chol[:t], out=col)
        else:
            col[:] = gram[s]
        d = col[s]
        if not d > PIVOT * norm2[s]:  # a pivot near the span: the exact loop takes the exact direction
            return None
        col *= 1.0 / np.sqrt(d)
        upd = col * sw
        upd *= upd
        score -= upd
        score[s] = -np.inf
    # est[t] = the estimates before step t (t = 0 .. K), as the exact loop keeps them
    est = np.empty((keep + 1, n))
    est[0] = norm2
    np.cumsum(chol * chol, axis=0, out=est[1:])
    np.subtract(norm2, est[1:], out=est[1:])
    picked_at = np.full(n, keep)
    picked_at[order] = np.arange(keep)
    live = picked_at[None, :] > np.arange(keep)[:, None]  # (K, N): still available after step t's pick
    margin = MARGIN * norm2
    steps = np.arange(keep)
    e_pick = est[steps, order]
    lower = w[order] * (e_pick - margin[order])
    upper = np.where(live, w * (est[:keep] + margin), -np.inf)  # step t: every other token still available
    first = 1 if seed is not None else 0
    if not (lower[first:] > 0).all() or not (lower[first:] >= upper[first:].max(axis=1)).all():
        return None
    total0 = float(norm2.sum())
    curve = np.empty(keep + 1)
    curve[0] = 1.0 if total0 > 0 else 0.0
    curve[1:] = np.maximum(np.where(live, est[1:], 0.0).sum(axis=1), 0.0) / total0 if total0 > 0 else 0.0
    curve = np.minimum.accumulate(curve)
    return (
        torch.from_numpy(order),
        torch.from_numpy(e_pick),
        torch.from_numpy(w[order] * e_pick),
        torch.from_numpy(curve).float(),
    )


GRAM_MAX_N = 8192  # the (N, N) float64 Gram matrix stays below 512 MiB
GS_BELOW = 20  # K < N / GS_BELOW: K float64 mat-vecs cost less than one SYRK


def auto_solver(n: int, keep: int, d: int) -> str:
    """The faster solver, from measurements (``python -m resprune.bench select``, 2-core CPU, D = 4096): one SYRK
    (N^2 D / 2 multiply-adds, compute-bound) against K float64 mat-vecs (K N D, memory-bound). Measured in reference
    layers: N = 576: gram 0.23 / 0.35 / 0.39 at K = 64 / 192 / 320, gs 0.45 / 1.53 / 2.59; N = 2880: gram 1.10 /
    1.10 / 1.16, gs 0.71 / 1.65 / 2.84. The crossing lies near K = N / 20 (29 at N = 576, 144 at N = 2880); above
    ``GRAM_MAX_N`` tokens the Gram matrix would be too large."""
    return "gs" if n > GRAM_MAX_N or n > GS_BELOW * keep else "gram"


def _replay(v32: np.ndarray, order: np.ndarray, steps: Sequence[int]) -> np.ndarray:
    """`(len(steps), N)` exact float64 residual energies after ``steps[j]`` picks of ``order`` (picked and spanned
    tokens 0): a float64 orthonormal basis of the picks (re-orthogonalised), then one `(N, K)` product."""
    n = v32.shape[0]
    norm2 = np.einsum("nd,nd->n", v32, v32, dtype=np.float64)
    span_tol = SPAN_RTOL * float(norm2.max()) if n else 0.0
    q, size = _replay_basis(v32, order, span_tol)
    m = q.shape[0]
    proj = np.zeros((n, m + 1))
    if m:
        proj[:, 1:] = np.cumsum((v32.astype(np.float64) @ q[:m].T) ** 2, axis=1)  # (N, m)
    out = np.empty((len(steps), n))
    for j, t in enumerate(steps):
        e = np.maximum(norm2 - proj[:, size[t]], 0.0)
        e[order[:t]] = 0.0
        e[e <= span_tol] = 0.0
        out[j] = e
    return out


def _replay_basis(v32: np.ndarray, order: np.ndarray, span_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """The replay's float64 orthonormal basis `(m, D)` of the picks in ``order`` (a pick whose residual energy is at
    most ``span_tol`` adds no vector) and the basis size after each number of picks `(K + 1,)`.

    Gram-Schmidt with a second pass (CGS2): one pass loses orthogonality as the picks approach dependence (the
    loss grows with the square of their condition number), and a basis that is not orthonormal miscounts every
    later residual; the second pass keeps it orthonormal to rounding."""
    q = np.zeros((order.size, v32.shape[1]))
    size = np.zeros(order.size + 1, dtype=np.int64)
    m = 0
    for t, s in enumerate(order):
        r = v32[s].astype(np.float64)
        for _ in range(2 if m else 0):
            r -= (q[:m] @ r) @ q[:m]
        e = float(r @ r)
        if e > span_tol:
            q[m] = r / np.sqrt(e)
            m += 1
        size[t + 1] = m
    return q[:m], size


def _check_order(order: object, n: int) -> np.ndarray:
    o = np.asarray(torch.as_tensor(order).cpu(), dtype=np.int64).reshape(-1)
    if o.size and (o.min() < 0 or o.max() >= n):
        raise ValueError(f"order has indices outside [0, {n}): {o[:8].tolist()}...")
    if np.unique(o).size != o.size:
        raise ValueError("order must not repeat an index")
    return o


def residual_curve(tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Normalised total residual energy of ALL tokens w.r.t. the span of the first t tokens of ``order``.

    Works for the picks of any method, so methods can be compared on one plot (exact, float64).

    Args:
        tokens: `(N, D)` visual tokens.
        order: `(K,)` indices in pick order (distinct).

    Returns:
        `(K+1,)` float32: 1 at t = 0 (0 if all tokens are zero), non-increasing, 0 once the picks span the tokens.

    >>> [round(x, 4) for x in residual_curve(torch.eye(3), torch.tensor([2, 0])).tolist()]
    [1.0, 0.6667, 0.3333]
    """
    v = check_tokens(tokens).cpu().numpy()
    o = _check_order(order, v.shape[0])
    total = float(np.einsum("nd,nd->", v, v, dtype=np.float64))
    if total <= 0:
        return torch.zeros(o.size + 1)
    curve = _replay(v, o, range(o.size + 1)).sum(1) / total
    return torch.from_numpy(np.minimum.accumulate(curve)).float()


@torch.no_grad()
def residual_energies(
    tokens: torch.Tensor,
    order: torch.Tensor | Sequence[int],
    steps: Sequence[int] | None = None,
) -> torch.Tensor:
    """Residual energy of every token w.r.t. the span of the first ``t`` tokens of ``order``, for each ``t``.

    Args:
        tokens: `(N, D)` visual tokens of one image.
        order: `(K,)` distinct token indices in pick order.
        steps: the numbers of picks ``t`` (each in ``[0, K]``) to report; default ``0..K``.

    Returns:
        `(len(steps), N)` float64, row ``j`` = energies after ``steps[j]`` picks (picked tokens are 0).

    >>> residual_energies(torch.eye(3) * 2, [1]).tolist()
    [[4.0, 4.0, 4.0], [4.0, 0.0, 4.0]]
    """
    v = check_tokens(tokens).cpu().numpy()  # (N, D)
    o = _check_order(order, v.shape[0])
    steps = list(range(o.size + 1)) if steps is None else [int(s) for s in steps]
    if any(not 0 <= s <= o.size for s in steps):
        raise ValueError(f"steps must lie in [0, K={o.size}], got {steps}")
    return torch.from_numpy(_replay(v, o, steps))


@torch.no_grad()
def greedy_residual_batch(
    v: torch.Tensor,
    keep: int,
    weight: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The greedy core for B images in lock-step, on the tokens' device, with no host synchronisation in the loop.

    Float64 Gram matrices (one batched GEMM) and pivoted-Cholesky steps, one batched mat-vec per step; every index
    stays a device tensor (``argmax``/``topk``, ``gather``, ``scatter``; no ``.item()``, no boolean-mask indexing,
    so the loop runs on ``meta`` tensors too, which is how the tests check it). There is no lazy exact search on
    the device: instead each image carries a flag that is cleared at the first step whose pick the float64
    estimates cannot certify (its lower bound ``w (est - MARGIN ||v||^2)`` below the runner-up's upper bound, or a
    pivot below ``PIVOT ||v||^2``, where the exact path would track residual vectors). Where the flag holds the
    picks are exactly the exact core's (``greedy_residual``); the caller recomputes the other images with it.

    Args:
        v: `(B, N, D)` tokens (padded; any float dtype, any device).
        keep: K, at most the number of valid tokens of every image.
        weight: `(B, N)` text weights ``g(r)``, or None for all ones.
        seed: `(B,)` int64 first picks, or None to use the rule from step 0.
        valid: `(B, N)` bool, False for padding; None = all valid.

    Returns:
        order `(B, K)` int64, energy at pick `(B, K)` float64, gain at pick `(B, K)` float64, residual curve
        `(B, K+1)` float32, certified `(B,)` bool; all on ``v.device``.
    """
    dev = v.device
    x = v.to(torch.float64)
    b, n, _ = x.shape
    valid = torch.ones(b, n, dtype=torch.bool, device=dev) if valid is None else valid.to(dev)
    x = x * valid.unsqueeze(-1)
    norm2 = (x * x).sum(-1)  # (B, N)
    total0 = norm2.sum(-1)  # (B,)
    w = torch.ones(b, n, dtype=torch.float64, device=dev) if weight is None else weight.to(dev, torch.float64)
    margin = MARGIN * norm2
    gram = x @ x.transpose(1, 2)  # (B, N, N)
    chol = torch.zeros(b, keep, n, dtype=torch.float64, device=dev)
    est = norm2.clone()
    avail = valid.clone()
    ok = torch.ones(b, dtype=torch.bool, device=dev)
    order = torch.empty(b, keep, dtype=torch.int64, device=dev)
    e_pick = torch.empty(b, keep, dtype=torch.float64, device=dev)
    g_pick = torch.empty(b, keep, dtype=torch.float64, device=dev)
    curve = torch.empty(b, keep + 1, dtype=torch.float64, device=dev)
    curve[:, 0] = (total0 > 0).to(torch.float64)
    safe_total = torch.where(total0 > 0, total0, torch.ones_like(total0))
    rows = torch.arange(b, device=dev)
    neg = torch.tensor(-torch.inf, dtype=torch.float64, device=dev)
    for t in range(keep):
        bound = torch.where(avail, w * (est + margin), neg)
        if t == 0 and seed is not None:
            s = seed.to(dev, torch.int64)
        else:
            top = bound.topk(min(2, n), dim=-1)
            s = top.indices[:, 0]
            if n > 1:  # certified: the pick's lower bound beats every other upper bound
                ok &= w[rows, s] * (est[rows, s] - margin[rows, s]) >= top.values[:, 1]
        e_s = est[rows, s]
        ls = chol[:, :t, :].gather(2, s.view(b, 1, 1).expand(b, t, 1)).squeeze(-1)  # (B, t)
        d = gram[rows, s, s] - (ls * ls).sum(-1)
        ok &= d > PIVOT * norm2[rows, s]  # a well-conditioned pivot (not near the span)
        col = gram[rows, s, :] - (ls.unsqueeze(1) @ chol[:, :t, :]).squeeze(1)  # (B, N)
        col = col / torch.sqrt(torch.clamp(d, min=torch.finfo(torch.float64).tiny)).unsqueeze(-1)
        chol[:, t, :] = col
        order[:, t] = s
        e_pick[:, t] = e_s
        g_pick[:, t] = w[rows, s] * e_s
        avail = avail.scatter(1, s.unsqueeze(1), False)
        est = torch.where(avail, est - col * col, torch.zeros_like(est))
        curve[:, t + 1] = est.sum(-1).clamp(min=0) / safe_total
    curve = torch.cummin(curve, dim=1).values.float()
    return order, e_pick, g_pick, curve, ok
