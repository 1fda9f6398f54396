"""What every method shares: building the ``Selection``, per-token internals, the no-query note."""

from __future__ import annotations

from typing import Any

import torch

from ..residual import residual_curve
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


def per_token(values: Any, n: int, name: str, method: str, needs: str) -> torch.Tensor:
    """A method's required per-token score (``cls_attention``, ``llm_attention``) as a float32 `(N,)` CPU tensor."""
    if values is None:
        raise ValueError(f"method {method!r} needs {name} ({needs})")
    a = torch.as_tensor(values).float().flatten().cpu()
    if a.numel() != n:
        raise ValueError(f"{name} has {a.numel()} values but tokens has N={n}")
    return a
