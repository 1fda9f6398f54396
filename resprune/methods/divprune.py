"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175; github.com/vbdi/divprune): max-min diversity."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_keep, check_query, check_tokens, float64
from ..registry import register, register_batch
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
    on_accelerator = isinstance(tokens, torch.Tensor) and tokens.device.type != "cpu"  # checked in _run
    return _run([tokens], keep, [query], lockstep=on_accelerator)[0]


CERTIFY = 1e-12  # a lock-step pick counts only if it beats the runner-up by this much (distances lie in [0, 2])


def _run(tokens: list, keep: int, queries: list, *, lockstep: bool) -> list[Selection]:
    """DivPrune for each image: lock-step on the device where asked and certified, the float64 NumPy loop else."""
    vs = []
    for t, q in zip(tokens, queries):
        v = check_tokens(t)
        check_query(q, v.shape[1])
        vs.append(v)
    ks = [check_keep(keep, v.shape[0]) for v in vs]
    out: list[Selection | None] = [None] * len(vs)
    if lockstep:
        groups: dict[tuple, list[int]] = {}
        for i, v in enumerate(vs):
            if v.shape[0] >= 2:
                groups.setdefault((ks[i], v.device, v.shape[1]), []).append(i)
        for (k, dev, d), idx in groups.items():
            if len(idx) < 2 and dev.type == "cpu":
                continue  # one CPU image: the NumPy loop is faster
            order, gain, ok = _lockstep([vs[i] for i in idx], k, dev, d)
            for j, i in enumerate(idx):
                if bool(ok[j]):  # after the loop
                    out[i] = finish(tokens[i], order[j], gain[j], "divprune", {})
    for i, v in enumerate(vs):
        if out[i] is None:
            order, gain = _numpy(v.cpu(), ks[i])
            out[i] = finish(tokens[i], order, gain, "divprune", {}, v32=v.cpu())
    return out  # type: ignore[return-value]


@torch.no_grad()
def _lockstep(vs: list[torch.Tensor], k: int, dev: torch.device, d: int) -> tuple[torch.Tensor, ...]:
    """B images at once on ``dev`` (float64, no host synchronisation in the loop; indices stay device tensors):
    order `(B, K)`, gain `(B, K)`, certified `(B,)` (False from the first pick whose margin over the runner-up is
    below ``CERTIFY``: rounding could decide it)."""
    b, nmax = len(vs), max(v.shape[0] for v in vs)
    x = torch.zeros(b, nmax, d, dtype=torch.float64, device=dev)
    valid = torch.zeros(b, nmax, dtype=torch.bool, device=dev)
    for j, v in enumerate(vs):
        x[j, : v.shape[0]] = v.to(dev, torch.float64)
        valid[j, : v.shape[0]] = True
    gram = x @ x.transpose(1, 2)  # (B, N, N)
    inv = 1.0 / gram.diagonal(dim1=1, dim2=2).sqrt().clamp(min=1e-12)  # (B, N), as F.normalize
    dist = (1.0 - gram * inv.unsqueeze(2) * inv.unsqueeze(1)).clamp(min=0.0)  # (B, N, N)
    inf = torch.tensor(torch.inf, dtype=torch.float64, device=dev)
    others = ~torch.eye(nmax, dtype=torch.bool, device=dev) & valid.unsqueeze(1)  # (B, N, N)
    nearest = torch.where(others, dist, inf).amin(dim=2)  # (B, N) distance to the nearest other token
    score = torch.where(valid, nearest, -inf)
    rows = torch.arange(b, device=dev)
    order = torch.empty(b, k, dtype=torch.int64, device=dev)
    gain = torch.empty(b, k, dtype=torch.float64, device=dev)
    ok = torch.ones(b, dtype=torch.bool, device=dev)
    for t in range(k):
        top = score.topk(2, dim=1)
        s = top.indices[:, 0]
        ok &= top.values[:, 0] - top.values[:, 1] > CERTIFY
        order[:, t] = s
        gain[:, t] = top.values[:, 0]
        if t == 0:
            score = torch.where(valid, dist[rows, s], -inf)  # distance to the nearest kept token
        else:
            score = torch.minimum(score, dist[rows, s])
        score = score.scatter(1, s.unsqueeze(1), -torch.inf)
    return order, gain, ok


def _numpy(vc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image on the CPU: float64 distances from one SYRK, the max-min loop in NumPy."""
    v64 = float64(vc).numpy()
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
    return torch.from_numpy(order), torch.from_numpy(gain)


def _batch_divprune(tokens, keep, queries, internals) -> list[Selection]:  # noqa: ANN001
    return _run(tokens, keep, queries, lockstep=True)


register_batch("divprune", _batch_divprune)
