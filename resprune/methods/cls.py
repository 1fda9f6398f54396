"""Methods on the vision tower's [CLS] attention: ``cls`` (FasterVLM-style top-K) and VisPruner (Zhang et al.,
ICCV 2025: important tokens by [CLS] attention + diverse tokens by duplicate removal)."""

from __future__ import annotations

import torch

from .._checks import check_keep, check_query, check_tokens
from ..registry import register
from ..types import Selection
from ._common import finish, per_token


@register(
    "cls",
    summary="[CLS] attention: top-K patches by the vision tower's CLS attention",
    requires=("cls_attention",),
    stage="encoder",
)
@torch.no_grad()
def select_cls(
    tokens: torch.Tensor, keep: int, *, query: torch.Tensor | None = None, cls_attention: torch.Tensor | None = None
) -> Selection:
    """Top-K tokens by [CLS]->patch attention (FasterVLM-style; VisPruner's "important" tokens); ties by index."""
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    a = per_token(cls_attention, v.shape[0], "cls_attention", "cls", "a vision tower with a [CLS] token")
    order = torch.sort(a, descending=True, stable=True).indices[:k]
    return finish(tokens, order, a[order], "cls", {}, v32=v.cpu())


@register(
    "vispruner",
    summary="VisPruner: [CLS]-attention important tokens + diverse tokens by duplicate removal",
    requires=("cls_attention",),
    optional={"vision_features": "vision_features"},
    stage="encoder",
    prune_defaults={"budget": "per-crop", "newlines": "keep"},  # its released LLaVA-NeXT code
)
@torch.no_grad()
def select_vispruner(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    cls_attention: torch.Tensor | None = None,
    vision_features: torch.Tensor | None = None,
    important_ratio: float = 0.5,
) -> Selection:
    """VisPruner (Zhang et al., ICCV 2025), as in its released LLaVA code.

    ``int(K * important_ratio)`` important tokens with the highest [CLS] attention (mean over heads); the diverse
    rest from the remaining tokens (in descending-attention order) by iterative duplicate removal: split them into
    even / odd positions, score each even token by its highest cosine similarity to an odd one, drop the (up to) 8
    most duplicated, repeat until ``K - important`` remain. Similarities are computed on ``vision_features`` (the
    vision tower's features before the projector, as the paper does; ``prune`` passes them) or, without them, on
    ``tokens``.

    ``order`` lists the important tokens by attention, then the diverse ones in their final order; ``gain`` is the
    [CLS] attention of each kept token.
    """
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    a = per_token(cls_attention, v.shape[0], "cls_attention", "vispruner", "a vision tower with a [CLS] token")
    if not isinstance(important_ratio, (int, float)) or not 0 <= important_ratio <= 1:
        raise ValueError(f"important_ratio must be a number in [0, 1], got {important_ratio!r}")
    f = v.cpu() if vision_features is None else torch.as_tensor(vision_features).float().cpu()
    if f.dim() != 2 or f.shape[0] != v.shape[0]:
        raise ValueError(f"vision_features must be (N={v.shape[0]}, C), got shape {tuple(f.shape)}")
    n_imp = int(k * important_ratio)
    ranked = torch.sort(a, descending=True, stable=True).indices
    important, residual = ranked[:n_imp], ranked[n_imp:]
    n_div = k - n_imp
    fn = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    while True:
        r = min(8, residual.numel() - n_div)
        if r <= 0:
            break
        even, odd = residual[::2], residual[1::2]
        scores = (fn[even] @ fn[odd].T).max(-1).values if odd.numel() else torch.zeros(even.numel())
        distinct = torch.sort(scores, descending=True, stable=True).indices[r:]
        residual = torch.cat([even[distinct], odd])
    order = torch.cat([important, residual])
    return finish(tokens, order, a[order], "vispruner", {"important_ratio": important_ratio}, v32=v.cpu())
