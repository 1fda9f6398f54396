"""What every method shares: building the ``Selection``, per-token internals, the no-query note."""

from __future__ import annotations

from typing import Any

import torch

from ..types import Selection

NO_QUERY = "no query words: text relevance unused, text-free score"


def finish(
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
    """The ``Selection`` of ``order`` (pick order); the residual curve is left to compute on first access
    (from ``v32``, the float32 tokens, when given) unless the method passes it."""
    dev = tokens.device
    order = order.to(torch.int64)
    return Selection(
        keep_idx=order.sort().values.to(dev),
        order=order.to(dev),
        gain=gain.float().to(dev),
        _residual=None if residual is None else residual.float().to(dev),
        _tokens=v32 if v32 is not None else tokens.detach(),
        method=method,
        n_tokens=int(tokens.shape[0]),
        energy=None if energy is None else energy.float().to(dev),
        relevance=None if relevance is None else relevance.float().to(dev),
        params=params,
        notes=notes,
    )


def per_token(values: Any, n: int, name: str, method: str, needs: str) -> torch.Tensor:
    """A method's required per-token score (``cls_attention``, ``llm_attention``) as a float32 `(N,)` CPU tensor."""
    if values is None:
        raise ValueError(f"method {method!r} needs {name} ({needs})")
    a = torch.as_tensor(values).float().flatten().cpu()
    if a.numel() != n:
        raise ValueError(f"{name} has {a.numel()} values but tokens has N={n}")
    return a


def split_budget(k: int, sizes: list[int]) -> list[int]:
    """``k`` split as evenly as possible over views of ``sizes`` tokens (earlier views get the remainder), no view
    getting more than it has; what a small view cannot take goes to the others."""
    out = [0] * len(sizes)
    left = k
    open_ = [j for j, n in enumerate(sizes) if n > 0]
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        for r, j in enumerate(open_):
            add = min(share + (r < extra), sizes[j] - out[j])
            out[j] += add
            left -= add
        open_ = [j for j in open_ if out[j] < sizes[j]]
    return out
