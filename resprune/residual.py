"""The greedy residual core, once: subspace expansion by (weighted) residual energy, the residual curve of any
pick order, and per-token residual energies along an order (used by the methods and by the figures alike).

``E_S(v_i) = ||v_i - P_S v_i||^2``: the energy of token ``v_i`` left after projecting it on the span of the picked
tokens ``S``. ResPrune (arXiv 2603.21105) picks ``argmax_i g(r_i) E_S(v_i)`` at each step. A token whose residual
falls below ``RTOL * ||v_i||^2`` counts as spanned (energy 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._checks import check_tokens

RTOL = 1e-5  # relative residual below which a token counts as spanned


def greedy_residual(
    v: torch.Tensor,
    keep: int,
    weight: torch.Tensor | None,
    seed: int | None,
    *,
    solver: str,
    fixed_order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy subspace expansion (the loop runs in NumPy: K small steps, where torch's per-op overhead dominates).

    Args:
        v: `(N, D)` float32 tokens on the CPU.
        keep: K (<= N).
        weight: `(N,)` text weights ``g(r)``, or None for all ones.
        seed: index of the first pick, or None to use the rule from step 0.
        solver: ``"gs"``: explicit Gram–Schmidt basis ``U``, re-orthogonalised once ("twice is enough"), one
            `(N, D)` mat-vec per step, O(N K D) as in the paper; ``"gram"``: one `(N, N)` Gram GEMM, then
            pivoted-Cholesky steps of O(N t). Both give the same picks; ``l_t = V u_t`` is the shared quantity.
        fixed_order: `(K,)` pick order to replay instead of choosing (used by ``residual_curve``).

    Returns:
        order `(K,)` int64, energy at pick `(K,)`, gain at pick `(K,)`, residual curve `(K+1,)` (normalised).
    """
    vn = v.numpy()
    n = vn.shape[0]
    norm2 = torch.linalg.vector_norm(v, dim=1).double().pow(2).numpy()  # (N,) energy w.r.t. the empty set
    energy = norm2.copy()
    total0 = float(norm2.sum())
    w = np.ones(n) if weight is None else weight.double().numpy()
    tol = RTOL * norm2
    avail = np.ones(n, dtype=bool)
    order = np.empty(keep, dtype=np.int64)
    e_pick = np.empty(keep)
    g_pick = np.empty(keep)
    curve = np.empty(keep + 1)
    curve[0] = 1.0 if total0 > 0 else 0.0
    if solver == "gram":
        gram = (v @ v.T).double().numpy()  # (N, N) one GEMM in float32, bookkeeping in float64
    elif solver == "cols":  # fixed order: only the K Gram columns of the picks are needed, one (N, K) GEMM
        if fixed_order is None:
            raise ValueError("solver='cols' needs fixed_order")
        gram = (v[fixed_order] @ v.T).double().numpy()  # (K, N): row t is column order[t] of the Gram matrix
    elif solver != "gs":
        raise ValueError(f"solver must be 'gs', 'gram' or 'auto', got {solver!r}")
    chol = np.zeros((keep, n))  # (K, N) rows l_t = V u_t
    basis = np.zeros((keep, vn.shape[1]), dtype=np.float32)  # (K, D) orthonormal rows u_t (gs only)
    m = 0  # basis size (< t when picks were linearly dependent)
    fixed = None if fixed_order is None else fixed_order.numpy()
    for t in range(keep):
        if fixed is not None:
            s = int(fixed[t])
        elif t == 0 and seed is not None:
            s = int(seed)
        else:
            score = np.where(avail, w * energy, -np.inf)
            s = int(score.argmax())
            if not score[s] > 0:  # everything left is spanned: break ties by weight, then by index
                s = int(np.where(avail, w, -np.inf).argmax())
        order[t], e_pick[t], g_pick[t] = s, energy[s], w[s] * energy[s]
        if energy[s] > 0:
            if solver in ("gram", "cols"):
                g_s = gram[s] if solver == "gram" else gram[t]  # (N,) Gram column of the pick
                ls = chol[:m, s]
                d = g_s[s] - ls @ ls
                if d > tol[s]:
                    col = (g_s - ls @ chol[:m]) / np.sqrt(d)  # (N,)
                    chol[m] = col
                    m += 1
                    energy -= col * col
            else:
                rho = vn[s].copy()
                for _ in range(2 if m else 0):
                    rho -= (basis[:m] @ rho) @ basis[:m]
                nr2 = float(np.dot(rho.astype(np.float64), rho))
                if nr2 > tol[s]:
                    basis[m] = rho / np.sqrt(nr2)
                    col = (vn @ basis[m]).astype(np.float64)  # (N,)
                    m += 1
                    energy -= col * col
        avail[s] = False
        energy[~avail] = 0.0
        energy[energy <= tol] = 0.0
        curve[t + 1] = energy.sum() / total0 if total0 > 0 else 0.0
    curve = np.minimum.accumulate(curve)
    return (
        torch.from_numpy(order),
        torch.from_numpy(e_pick).float(),
        torch.from_numpy(g_pick).float(),
        torch.from_numpy(curve).float(),
    )


def auto_solver(n: int, keep: int, d: int) -> str:
    # One Gram GEMM (N^2 D, compute-bound) against K mat-vecs (K N D, memory-bound). Measured on a 2-core CPU
    # (python -m resprune.bench select): the Gram form wins while N stays below ~4 K.
    return "gram" if n <= 4 * keep else "gs"


def residual_curve(tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Normalised total residual energy of ALL tokens w.r.t. the span of the first t tokens of ``order``.

    Works for the picks of any method, so methods can be compared on one plot.

    Args:
        tokens: `(N, D)` visual tokens.
        order: `(K,)` indices in pick order (distinct).

    Returns:
        `(K+1,)` float32: 1 at t = 0 (0 if all tokens are zero), non-increasing, 0 once the picks span the tokens.

    >>> [round(x, 4) for x in residual_curve(torch.eye(3), torch.tensor([2, 0])).tolist()]
    [1.0, 0.6667, 0.3333]
    """
    v = check_tokens(tokens)
    order = torch.as_tensor(order, dtype=torch.int64).flatten().cpu()
    if order.numel() and (order.min() < 0 or order.max() >= v.shape[0]):
        raise ValueError(f"order has indices outside [0, {v.shape[0]}): {order.tolist()[:8]}...")
    if order.unique().numel() != order.numel():
        raise ValueError("order must not repeat an index")
    k = order.numel()
    if k == 0:
        return torch.ones(1) if float(v.pow(2).sum()) > 0 else torch.zeros(1)
    return greedy_residual(v.cpu(), k, None, None, solver="cols", fixed_order=order)[3]


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
    n = v.shape[0]
    order = np.asarray(torch.as_tensor(order).cpu(), dtype=np.int64).reshape(-1)
    k = order.size
    if k and (order.min() < 0 or order.max() >= n):
        raise ValueError(f"order has indices outside [0, {n}): {order[:8].tolist()}...")
    if np.unique(order).size != k:
        raise ValueError("order must not repeat an index")
    steps = list(range(k + 1)) if steps is None else [int(s) for s in steps]
    if any(not 0 <= s <= k for s in steps):
        raise ValueError(f"steps must lie in [0, K={k}], got {steps}")
    want: dict[int, list[int]] = {}
    for j, s in enumerate(steps):
        want.setdefault(s, []).append(j)
    out = np.zeros((len(steps), n))
    norm2 = np.einsum("nd,nd->n", v, v, dtype=np.float64)  # (N,)
    tol = RTOL * norm2
    energy = norm2.copy()
    for j in want.get(0, []):
        out[j] = energy
    basis = np.zeros((k, v.shape[1]), dtype=np.float32)  # (K, D) orthonormal rows
    m = 0
    for t in range(k):
        s = int(order[t])
        rho = v[s].copy()
        for _ in range(2 if m else 0):
            rho -= (basis[:m] @ rho) @ basis[:m]
        nr2 = float(np.dot(rho.astype(np.float64), rho))
        if nr2 > tol[s] and nr2 > 0:
            basis[m] = rho / np.sqrt(nr2)
            col = (v @ basis[m]).astype(np.float64)  # (N,)
            m += 1
            energy -= col * col
        energy[order[: t + 1]] = 0.0
        energy[energy <= tol] = 0.0
        for j in want.get(t + 1, []):
            out[j] = energy
    return torch.from_numpy(out)
