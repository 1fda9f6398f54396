"""Per-token residual energies along a pick order, for the greedy step-through figure and animation.

``E_S(v_i) = ||v_i - P_S v_i||^2``: the energy of token ``v_i`` left after projecting it on the span of the picked
tokens ``S``. ResPrune (arXiv 2603.21105) picks ``argmax_i g(r_i) E_S(v_i)`` at each step; this module replays any
pick order with an incremental Gram–Schmidt (re-orthogonalised once, "twice is enough") and returns the energy of
every token after each requested number of picks. The selection core returns only the picks' energies and the
total, so the figures compute the per-token view here, from the token vectors, without touching the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

RTOL = 1e-5  # relative residual below which a token counts as spanned (as in resprune.selection)


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
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a 2-D (N, D) tensor, got {getattr(tokens, 'shape', type(tokens))}")
    v = tokens.detach().cpu().float().numpy()  # (N, D)
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
