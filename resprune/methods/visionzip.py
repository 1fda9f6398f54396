"""VisionZip (Yang et al., CVPR 2025; github.com/dvlab-research/VisionZip): [CLS] + dominant tokens by [CLS]
attention, contextual tokens merged by key similarity, on the vision features, then projected."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .._checks import check_keep, check_query, check_tokens
from ..registry import register
from ..types import Selection
from ._common import finish, split_budget


def _zip_view(
    a: torch.Tensor, f: torch.Tensor, keys: torch.Tensor, cls: torch.Tensor, k: int, c: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip on ONE view (a crop the vision tower saw whole), ``k`` tokens of which ``c`` contextual.

    Returns the `(k, C)` pre-projector vectors [CLS, dominant (index order), contextual], the dominant patches by
    attention, the contextual targets, and the contextual vectors' row offset (``k - c``)."""
    n_dom = k - c - 1  # patches; the [CLS] token is the remaining dominant token
    ranked = torch.sort(a, descending=True, stable=True).indices
    dominant = ranked[:n_dom]
    rest = torch.sort(ranked[n_dom:]).values  # remaining patches, index order
    parts = [cls[None], f[torch.sort(dominant).values]]
    targets = rest[:0]
    if c:
        step = max(1, rest.numel() // c)
        local = torch.arange(0, rest.numel(), step)[:c]
        targets = rest[local]
        is_target = torch.zeros(rest.numel(), dtype=torch.bool)
        is_target[local] = True
        others = rest[~is_target]
        kn = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        assign = (kn[others] @ kn[targets].T).argmax(-1) if others.numel() else torch.zeros(0, dtype=torch.long)
        sums = torch.zeros(targets.numel(), f.shape[1]).index_add_(0, assign, f[others])
        counts = torch.bincount(assign, minlength=targets.numel()).clamp_min(1).float()[:, None]
        parts.append(f[targets] + sums / counts)
    return torch.cat(parts), dominant, targets, k - c


@register(
    "visionzip",
    summary="VisionZip: [CLS] + dominant tokens by [CLS] attention, contextual tokens merged by key similarity",
    requires=("cls_attention", "vision_features", "vision_keys", "cls_feature", "projector"),
    optional={"crops": "crops"},
    stage="encoder",
    newlines=("drop",),
)
@torch.no_grad()
def select_visionzip(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    cls_attention: torch.Tensor | None = None,
    vision_features: torch.Tensor | None = None,
    vision_keys: torch.Tensor | None = None,
    cls_feature: torch.Tensor | None = None,
    projector: Any = None,
    contextual: int | None = None,
    crops: torch.Tensor | None = None,
) -> Selection:
    """VisionZip (Yang et al., CVPR 2025), as in its released code, for LLaVA-1.5 and LLaVA-NeXT.

    On one view (LLaVA-1.5's image), of the K tokens ``contextual`` (default ``round(K * 10 / 64)``: the official
    54 + 10 split at K = 64, 108 + 20 at 128, 162 + 30 at 192) are contextual and ``K - contextual`` dominant, the
    [CLS] token included:

    - dominant: the [CLS] feature and the ``K - contextual - 1`` patches with the highest [CLS] attention (its
      ranking is the same summed or averaged over heads), in index order;
    - contextual: the other patches in index order; targets every ``R // contextual``-th of them; every other one
      joins the target with the most similar L2-normalised key (the layer's keys averaged over heads); a
      contextual token is its target's feature plus the mean of the features that joined it.

    LLaVA-NeXT (``crops``: the crop each token comes from, 0 = the base view, ``cls_feature`` one row per crop):
    every crop is compressed on its own as above, with K split evenly over the crops (VisionZip's per-crop
    ``dominant`` / ``contextual``; ``contextual`` then counts per crop), and the LLM receives, as the released
    code's ``restore_image_features_sorted`` assembles them: the base crop's [CLS, dominant, contextual], the
    high-resolution crops' dominant patches in raster order of the whole high-resolution grid, their [CLS] features,
    then their contextual tokens; no ``image_newline`` tokens. One documented difference: the candidates are the
    tokens the stock model shows the LLM, so the padding that LLaVA-NeXT unpads away takes no budget.

    Everything is merged on the vision tower's features (before the projector) and then projected: ``merged`` holds
    the K LLM vectors. ``keep_idx`` lists the dominant patches and the contextual targets, ``order`` the dominant
    patches by attention then the targets (per crop, in crop order).
    """
    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    n = v.shape[0]
    k = check_keep(keep, n)
    if k >= n:  # keep everything: no merge, the tokens as they are
        return finish(
            tokens,
            torch.arange(n),
            torch.zeros(n),
            "visionzip",
            {"contextual": 0},
            v32=v.cpu(),
            notes=("keep >= N: every token kept, nothing merged",),
        )
    for name, val in (
        ("cls_attention", cls_attention),
        ("vision_features", vision_features),
        ("vision_keys", vision_keys),
        ("cls_feature", cls_feature),
        ("projector", projector),
    ):
        if val is None:
            raise ValueError(f"method 'visionzip' needs {name} (a LLaVA vision tower with a [CLS] token)")
    a = torch.as_tensor(cls_attention).float().flatten().cpu()
    f = torch.as_tensor(vision_features).float().cpu()
    keys = torch.as_tensor(vision_keys).float().cpu()
    cls = torch.as_tensor(cls_feature).float().cpu()
    if a.numel() != n or f.shape[0] != n or keys.shape[0] != n:
        raise ValueError(f"cls_attention / vision_features / vision_keys must have N={n} rows")
    crop = torch.zeros(n, dtype=torch.long) if crops is None else torch.as_tensor(crops).long().flatten().cpu()
    if crop.numel() != n or (crop < 0).any():
        raise ValueError(f"crops must be N={n} non-negative crop indices (one per token)")
    n_crops = int(crop.max()) + 1
    cls = cls.reshape(-1, f.shape[1])
    if cls.shape[0] != n_crops:
        raise ValueError(f"cls_feature must have one row per crop ({n_crops}), got {cls.shape[0]}")
    members = [(crop == j).nonzero().squeeze(1) for j in range(n_crops)]
    budgets = split_budget(k, [m.numel() for m in members])
    c_user = contextual
    if c_user is not None and (not isinstance(c_user, int) or isinstance(c_user, bool)):
        raise ValueError(f"contextual must be an int in [0, keep - 1] = [0, {k - 1}], got {contextual!r}")
    # per crop: [CLS, dominant, contextual] vectors, dominant (by attention), targets, where contextual starts
    views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None] = []
    for j, (idx, kj) in enumerate(zip(members, budgets)):
        if kj == 0:
            views.append(None)
            continue
        if kj >= idx.numel():  # a crop smaller than its share: its tokens as they are
            order_j = idx[torch.sort(a[idx], descending=True, stable=True).indices]
            views.append((f[idx], order_j, idx[:0], idx.numel()))
            continue
        cj = round(kj * 10 / 64) if c_user is None else c_user
        if not 0 <= cj < kj:
            per = " per crop" if n_crops > 1 else ""
            raise ValueError(f"contextual must be an int in [0, keep - 1] = [0, {kj - 1}]{per}, got {contextual!r}")
        vec, dom, tgt, split = _zip_view(a[idx], f[idx], keys[idx], cls[j], kj, cj)
        views.append((vec, idx[dom], idx[tgt], split))
    base, hires = views[0], [x for x in views[1:] if x is not None]
    rows = []
    if base is not None:
        rows.append(base[0])
    if hires:
        dom_rows = []  # (token index, vector) of every hi-res dominant patch, for the raster order
        for vec, dom, _, split in hires:
            dom_idx = torch.sort(dom).values
            dom_rows.append((dom_idx, vec[split - dom_idx.numel() : split]))
        idx_all = torch.cat([d for d, _ in dom_rows])
        vec_all = torch.cat([x for _, x in dom_rows])
        rows.append(vec_all[torch.sort(idx_all).indices])
        rows += [vec[:1] for vec, dom, _, split in hires if split > dom.numel()]  # [CLS] rows (not whole crops)
        rows += [vec[split:] for vec, _, _, split in hires]
    merged = projector(torch.cat(rows)).detach().float().cpu()
    order = torch.cat([torch.cat([x[1], x[2]]) for x in views if x is not None])
    cs = [x[0].shape[0] - x[3] for x in views if x is not None]
    params = {"contextual": cs[0] if len(set(cs)) == 1 else tuple(cs)}
    if n_crops > 1:
        params["per_crop"] = tuple(budgets)
    sel = finish(tokens, order, a[order], "visionzip", params, v32=v.cpu())
    return replace(sel, merged=merged.to(sel.keep_idx.device))
