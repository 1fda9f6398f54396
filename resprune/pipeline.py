"""Pruned generation on real transformers LVLMs: ``prune``, ``answer``, ``count_visual_tokens``.

The recipe (transformers 5.x, tested on 5.24): compute the image features ONCE with
``model.model.get_image_features``, scatter them into the input embeddings, let a selection method choose K of the
N visual tokens of each image, gather the kept positions, and hand ``inputs_embeds`` + ``attention_mask`` (+
``position_ids`` when the original positions are kept) to the UNMODIFIED ``model.generate``. No hooks, nothing
stored on the model.

Supported classes (``ADAPTERS``, one adapter per family in ``resprune.adapters``): ``LlavaForConditionalGeneration``
(LLaVA-1.5 and the project's offline model), ``LlavaNextForConditionalGeneration`` and
``Qwen2_5_VLForConditionalGeneration`` (original 3-D M-RoPE positions kept). Other classes raise an error listing
them.
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_keep
from .adapters import ADAPTERS, adapter_for, clip_internals, llava_geometry
from .registry import get_method, method_info, register
from .selection import _finish, residual_curve
from .text import extract_keywords
from .types import VIEW_NEWLINE, PruneResult, Selection

__all__ = ["ADAPTERS", "answer", "count_visual_tokens", "llava_geometry", "prune"]

NEWLINE_POLICIES = ("drop", "keep", "prune")


@torch.no_grad()
def cls_attention(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """[CLS]->patch attention `(B, N)` of a LLaVA-1.5 model's feature layer (see ``adapters.clip_internals``)."""
    layer = model.config.vision_feature_layer
    return clip_internals(model.model.vision_tower, pixel_values, layer if isinstance(layer, int) else layer[-1])[0]


def _per_token(values: Any, n: int, name: str, method: str, needs: str) -> torch.Tensor:
    """A method's required per-token score (``cls_attention``, ``llm_attention``) as a float32 `(N,)` CPU tensor."""
    if values is None:
        raise ValueError(f"method {method!r} needs {name} ({needs})")
    a = torch.as_tensor(values).float().flatten().cpu()
    if a.numel() != n:
        raise ValueError(f"{name} has {a.numel()} values but tokens has N={n}")
    return a


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
    from ._checks import check_query, check_tokens

    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    a = _per_token(cls_attention, v.shape[0], "cls_attention", "cls", "a vision tower with a [CLS] token")
    order = torch.sort(a, descending=True, stable=True).indices[:k]
    return _finish(tokens, order, a[order], "cls", {}, v32=v.cpu())


@register(
    "vispruner",
    summary="VisPruner: [CLS]-attention important tokens + diverse tokens by duplicate removal",
    requires=("cls_attention",),
    stage="encoder",
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
    from ._checks import check_query, check_tokens

    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    a = _per_token(cls_attention, v.shape[0], "cls_attention", "vispruner", "a vision tower with a [CLS] token")
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
    return _finish(tokens, order, a[order], "vispruner", {"important_ratio": important_ratio}, v32=v.cpu())


@register(
    "fastv",
    summary="FastV: drop the visual tokens least attended by the last position, inside the LLM after layer 2",
    requires=("llm_attention",),
    stage="llm",
)
@torch.no_grad()
def select_fastv(
    tokens: torch.Tensor,
    keep: int,
    *,
    query: torch.Tensor | None = None,
    llm_attention: torch.Tensor | None = None,
    layer: int = 2,
) -> Selection:
    """FastV (Chen et al., ECCV 2024): the K visual tokens with the highest attention from the last prompt position
    in LLM layer ``layer - 1`` (mean over heads); ``prune`` drops the others from layer ``layer`` on (``fastv``
    module). ``gain`` is that attention. Default ``layer=2`` as in the paper (its ``K``)."""
    from ._checks import check_query, check_tokens

    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    a = _per_token(llm_attention, v.shape[0], "llm_attention", "fastv", "the LLM's attention to the visual tokens")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 1:
        raise ValueError(f"layer must be an int >= 1 (the first LLM layer without the pruned tokens), got {layer!r}")
    order = torch.sort(a, descending=True, stable=True).indices[:k]
    return _finish(tokens, order, a[order], "fastv", {"layer": layer}, v32=v.cpu())


def _split_budget(k: int, sizes: list[int]) -> list[int]:
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
    stage="encoder",
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
    from ._checks import check_query, check_tokens

    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    n = v.shape[0]
    k = check_keep(keep, n)
    if k >= n:  # keep everything: no merge, the tokens as they are
        return _finish(
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
    budgets = _split_budget(k, [m.numel() for m in members])
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
    sel = _finish(tokens, order, a[order], "visionzip", params, v32=v.cpu())
    from dataclasses import replace

    return replace(sel, merged=merged.to(sel.keep_idx.device))


# ---------------------------------------------------------------------------------------------------------------
# prune / answer


def query_embeddings(model: Any, tokenizer: Any, prompt: str | None) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """Words of ``prompt`` (nouns / content words) and the `(Q, D)` LLM input embeddings of their sub-word tokens."""
    if not prompt or tokenizer is None:
        return (), None
    words = extract_keywords(prompt).words
    ids: list[int] = []
    used = []
    special = set(tokenizer.all_special_ids or [])
    for w in words:
        t = [i for i in tokenizer(w, add_special_tokens=False)["input_ids"] if i not in special]
        if t:
            ids += t
            used.append(w)
    if not ids:
        return tuple(used), None
    emb = model.get_input_embeddings()
    q = emb(torch.tensor(ids, device=emb.weight.device)).detach().float().cpu()  # (Q, D)
    return tuple(used), q


def _candidates(view: torch.Tensor, k: int, newlines: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Indices the method chooses among, indices always kept, and how many the method picks (K in all)."""
    n = view.numel()
    is_nl = view == VIEW_NEWLINE
    n_nl = int(is_nl.sum())
    everything = torch.arange(n)
    if k >= n or n_nl == 0 or newlines == "prune":
        return everything, everything[:0], min(k, n)
    content, nl = everything[~is_nl], everything[is_nl]
    if newlines == "keep":
        if k <= n_nl:
            raise ValueError(
                f"keep={k} is not more than the {n_nl} image_newline tokens that newlines='keep' always keeps; "
                "use a larger keep or newlines='drop'"
            )
        return content, nl, k - n_nl
    # "drop": newlines only fill a budget larger than the content tokens (top rows first)
    if k >= content.numel():
        return content, nl[: k - content.numel()], content.numel()
    return content, nl[:0], k


_PER_TOKEN = ("cls_attention", "vision_features", "vision_keys", "crops")  # merge internals indexed like the tokens


def _widen(sel: Selection, tokens: torch.Tensor, cand: torch.Tensor, forced: torch.Tensor, note: str) -> Selection:
    """A selection over the candidates ``cand`` restated over all N tokens (plus the ``forced`` ones)."""
    n = tokens.shape[0]
    order = torch.cat([cand[sel.order.cpu()], forced])
    nan = torch.full((forced.numel(),), float("nan"))
    rel = None
    if sel.relevance is not None:
        rel = torch.zeros(n)
        rel[cand] = sel.relevance.cpu().float()
    return Selection(
        keep_idx=order.sort().values,
        order=order,
        gain=torch.cat([sel.gain.cpu().float(), nan]),
        residual=residual_curve(tokens, order).float(),
        method=sel.method,
        n_tokens=n,
        energy=None if sel.energy is None else torch.cat([sel.energy.cpu().float(), nan]),
        relevance=rel,
        params=sel.params,
        notes=(*sel.notes, note),
        merged=sel.merged,
    )


@torch.no_grad()
def prune(
    model: Any,
    inputs: Any,
    method: str = "resprune",
    keep: int = 64,
    *,
    processor: Any = None,
    prompt: str | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
    positions: str | None = None,
    newlines: str = "drop",
    **hparams: Any,
) -> PruneResult:
    """Select ``keep`` visual tokens per image and return the kwargs for the unmodified ``model.generate``.

    Args:
        model: a supported transformers LVLM (see ``ADAPTERS``).
        inputs: what the model's processor returned (``input_ids``, ``attention_mask``, ``pixel_values``, and
            ``image_sizes`` for LLaVA-NeXT / ``image_grid_thw`` for Qwen2.5-VL).
        method: a registered method name.
        keep: K, the visual tokens per image that reach the LLM (``keep >= N`` keeps all, with a warning).
        processor: the processor, for the query words' tokens and the LLaVA token geometry.
        prompt: the user's instruction (its nouns form the text query); None = no text query.
        image_sizes: ``(width, height)`` of each original image, for the pixel boxes (default: what the inputs
            say: LLaVA-NeXT's ``image_sizes``, else the processed size).
        positions: ``"compact"`` (renumber 0..L'-1) or ``"original"`` (keep the original, gapped positions).
            Default: ``"compact"`` for the LLaVA family; Qwen2.5-VL always keeps its original M-RoPE positions.
        newlines: LLaVA-NeXT ``image_newline`` tokens (one per high-res row, all the same learned vector):
            ``"drop"`` (default: the method chooses among the image tokens only, newlines are removed),
            ``"keep"`` (all kept, counted in K, the method picks K - H'), or ``"prune"`` (candidates like any
            token). Ignored by families without newlines.
        **hparams: the method's hyperparameters.

    Returns:
        A ``PruneResult``; with LLaVA-NeXT its selections and geometry index all N tokens of an image
        (base, high-res and newline), in placeholder order.
    """
    adapter = adapter_for(model)
    info = method_info(method)
    fn = get_method(method)
    if positions is None:
        positions = adapter.positions[0]
    if positions not in adapter.positions:
        allowed = " or ".join(repr(p) for p in adapter.positions)
        raise ValueError(f"positions must be {allowed} for {type(model).__name__}, got {positions!r}")
    if newlines not in NEWLINE_POLICIES:
        raise ValueError(f"newlines must be one of {NEWLINE_POLICIES}, got {newlines!r}")
    if info.requires and "cls_attention" in info.requires and not adapter.has_cls:
        adapter.cls_attention(model, inputs)  # raises: no [CLS]
    if method == "resprune" and hparams.get("seed") == "prior" and "seed_prior" not in hparams and not adapter.has_cls:
        raise ValueError(
            f"seed='prior' needs [CLS] attention, but {type(model).__name__}'s vision tower has no [CLS] token; "
            "use seed='max_norm' or pass seed_prior"
        )
    input_ids, pv = inputs["input_ids"], inputs.get("pixel_values")
    am = inputs.get("attention_mask")
    if am is None:
        am = torch.ones_like(input_ids)
    image_mask = input_ids == model.config.image_token_id  # (B, L)
    n_placeholders = int(image_mask.sum())
    if pv is None:
        if n_placeholders:
            raise ValueError(f"inputs: {n_placeholders} image placeholder tokens but no pixel_values")
        raise ValueError("inputs: no image (no pixel_values and no image placeholder in the prompt)")
    if n_placeholders == 0:
        raise ValueError("inputs: the prompt has no image placeholder token; add the image to the chat message")
    adapter.check_inputs(inputs)
    wants_cls = ("cls_attention" in info.requires and "projector" not in info.requires) or (
        method == "resprune"
        and adapter.has_cls
        and hparams.get("seed", "auto") in ("auto", "prior")
        and "seed_prior" not in hparams
    )
    # vision internals ([CLS] attention, pre-projector features, keys) come from the tower pass that makes the tokens
    vision = {} if adapter.has_cls and (wants_cls or "vision_features" in info.requires) else None
    images = adapter.images(model, processor, inputs, image_sizes, vision)
    hs = vision.get("hidden_states") if vision is not None else None
    b = input_ids.shape[0]
    counts = [im.tokens.shape[0] for im in images]
    if n_placeholders != sum(counts):
        raise ValueError(
            f"inputs: the prompt has {n_placeholders} image placeholder tokens but the images give "
            f"{' + '.join(map(str, counts)) if len(counts) > 1 else counts[0]} = {sum(counts)} features "
            f"({len(counts)} image(s); one placeholder per image?)"
        )
    if len(images) != b:
        raise ValueError(f"inputs: {len(images)} images for a batch of {b}; one image per sample is supported")
    per_row = image_mask.sum(1).tolist()
    if per_row != counts:
        raise ValueError(f"inputs: image placeholders per sample {per_row} do not match the images' tokens {counts}")
    if isinstance(keep, int) and not isinstance(keep, bool) and keep >= max(counts):
        warnings.warn(f"keep={keep} >= N={max(counts)} visual tokens: every token is kept", stacklevel=3)

    dev = model.device
    cls_att = None
    vis_feats = llm_att = None
    if info.stage == "llm":
        if b != 1:
            raise ValueError(f"method {method!r} prunes inside the LLM and supports batch size 1, got {b}")
        from .fastv import last_query_attention

        layer = hparams.get("layer", 2)
        n_layers = len(model.get_decoder().layers)
        if not isinstance(layer, int) or isinstance(layer, bool) or not 1 <= layer < n_layers:
            raise ValueError(f"layer must be an int in [1, {n_layers - 1}] for this model, got {layer!r}")
        t0 = time.perf_counter()
        dev_inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in inputs.items()}
        row = last_query_attention(model, dev_inputs, layer - 1).cpu()
        llm_att = [row[image_mask[0]]]
        t_llm = time.perf_counter() - t0
    merge_kw = None
    if "projector" in info.requires:
        if newlines != "drop" and any(bool((im.view == VIEW_NEWLINE).any()) for im in images):
            raise ValueError(
                f"newlines={newlines!r}: method {method!r} merges tokens per crop and, like its released LLaVA-NeXT "
                "code, sends no image_newline tokens; use newlines='drop'"
            )
        merge_kw = adapter.merge_internals(model, inputs, hs)
    if "vision_features" in inspect.signature(fn).parameters and merge_kw is None:  # VisPruner-style similarity
        internals = adapter.vision_internals(model, inputs, hs)
        cls_att, vis_feats = [a for a, _ in internals], [f for _, f in internals]
    elif wants_cls:
        cls_att = adapter.cls_attention(model, inputs, hs)
    tokenizer = getattr(processor, "tokenizer", processor)
    words, query = query_embeddings(model, tokenizer, prompt)

    embeds = model.get_input_embeddings()(input_ids.to(dev))  # (B, L, D)
    vis_all = torch.cat([im.tokens for im in images]).to(embeds.dtype)
    embeds = embeds.masked_scatter(image_mask.to(dev)[..., None], vis_all)
    selections, keeps, tokens_out, ks = [], [], [], []
    t_sel = 0.0
    for i, im in enumerate(images):
        vis = im.tokens.detach().float().cpu()  # (N, D)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            k = check_keep(keep, vis.shape[0])
        ks.append(k)
        cand, forced, k_sel = _candidates(im.view, k, newlines)
        whole = cand.numel() == vis.shape[0]
        kw = dict(hparams)
        if merge_kw is not None:
            kw.update({key: val[cand] if key in _PER_TOKEN else val for key, val in merge_kw[i].items()})
        elif "cls_attention" in info.requires:
            kw["cls_attention"] = cls_att[i][cand]
        if vis_feats is not None:
            kw["vision_features"] = vis_feats[i][cand]
        if llm_att is not None:
            kw["llm_attention"] = llm_att[i][cand]
        elif method == "resprune" and cls_att is not None:
            kw["seed_prior"] = cls_att[i][cand]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            if not whole:  # "all the image tokens" is the policy here, not a budget mistake
                warnings.simplefilter("ignore")
            sel = fn(vis if whole else vis[cand], k_sel, query=query if info.text_aware else None, **kw)
        if not whole or forced.numel():
            sel = _widen(sel, vis, cand, forced, f"LLaVA-NeXT newlines={newlines!r}: {forced.numel()} forced")
        t_sel += time.perf_counter() - t0
        selections.append(sel)
        tokens_out.append(vis)
        pos = image_mask[i].nonzero().squeeze(-1)  # (N,) positions of the image tokens
        keep_mask = ~image_mask[i].clone()
        if sel.merged is not None:  # merged tokens fill the first K image slots, in their own order
            slots = pos[: sel.merged.shape[0]]
            embeds[i, slots.to(dev)] = sel.merged.to(device=dev, dtype=embeds.dtype)
            keep_mask[slots] = True
        else:
            keep_mask[pos[sel.keep_idx.cpu()]] = True
        keep_mask &= am[i].bool() | image_mask[i]
        keeps.append(keep_mask.nonzero().squeeze(-1))
    # re-pad on the left so that every row has the same length
    lmax = max(x.numel() for x in keeps)
    new_e = embeds.new_zeros(b, lmax, embeds.shape[-1])
    new_am = torch.zeros(b, lmax, dtype=am.dtype)
    for i, kp in enumerate(keeps):
        n = kp.numel()
        new_e[i, lmax - n :] = embeds[i, kp.to(dev)]
        new_am[i, lmax - n :] = 1
    gen = {"inputs_embeds": new_e, "attention_mask": new_am.to(dev)}
    pos_ids = adapter.position_ids(model, inputs, keeps, lmax, positions)
    if pos_ids is not None:
        gen["position_ids"] = pos_ids.to(dev)
    stats = {
        "visual_tokens_before": sum(counts),
        "visual_tokens_after": sum(s.keep for s in selections),
        "seq_len_before": int(am.sum(1).max()),
        "seq_len_after": lmax,
        "selection_seconds": t_sel,
    }
    context = None
    if llm_att is not None:  # FastV: the full prompt goes to generate; hooks drop the tokens from `layer` on
        from .fastv import FastVContext

        gen = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in inputs.items()}
        context = FastVContext(model, keeps[0], int(input_ids.shape[1]), layer)
        n_layers = len(model.get_decoder().layers)
        n, k_kept = counts[0], selections[0].keep
        stats["selection_seconds"] = t_sel + t_llm
        stats["llm_layer"] = layer
        stats["visual_tokens_equivalent"] = (layer * n + (n_layers - layer) * k_kept) / n_layers
    geometry = tuple(im.geometry for im in images if im.geometry is not None)
    return PruneResult(
        gen,
        tuple(selections),
        geometry,
        (words,) * b,
        (query,) * b,
        stats,
        method,
        dict(hparams, keep=ks[0] if len(set(ks)) == 1 else tuple(ks), positions=positions, newlines=newlines),
        tuple(tokens_out),
        context,
    )


def chat_prompt(processor: Any, prompt: str) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def _inputs(processor: Any, image: Any, prompt: str) -> Any:
    from .images import load_image

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty str, got {prompt!r}")
    img = load_image(image).image
    return img, processor(images=img, text=chat_prompt(processor, prompt), return_tensors="pt")


def count_visual_tokens(model: Any, processor: Any, image: Any, prompt: str) -> int:
    """N: the visual tokens the model makes of ``image`` (from the processor's placeholder expansion)."""
    adapter_for(model)
    _, inputs = _inputs(processor, image, prompt)
    return int((inputs["input_ids"] == model.config.image_token_id).sum())


@dataclass(frozen=True)
class Answer:
    """``pruned`` / ``unpruned`` answer texts, the ``PruneResult`` and the efficiency ``stats``."""

    pruned: str
    unpruned: str | None
    result: PruneResult
    stats: dict[str, Any]


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def kv_cache_bytes(cache: Any) -> tuple[int, int]:
    """(bytes, sequence length of the last layer) of a transformers cache object (layers may differ in length
    when pruning happens inside the LLM)."""
    total, length = 0, 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if torch.is_tensor(t):
                    total += t.numel() * t.element_size()
                    length = t.shape[-2]
    return total, length


def prefill_flops(model: Any, seq_len: int, *, full_len: int | None = None, full_layers: int = 0) -> int:
    """Prefill FLOPs of the language model (2 x multiply-adds), from its config.

    Per layer: q/o projections ``2 L d d_q``, k/v ``2 L d d_kv``, SwiGLU MLP ``3 L d f``, attention scores and
    values ``2 L^2 d_q`` (full square, no causal halving); plus the LM head for the last position ``d V``. For
    in-LLM pruning (FastV) the first ``full_layers`` layers run on ``full_len`` tokens, the rest on ``seq_len``.
    """
    c = model.config.text_config
    d, f, nl, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    dq, dkv = c.num_attention_heads * hd, (c.num_key_value_heads or c.num_attention_heads) * hd

    def per_layer(n: int) -> int:
        return 2 * n * d * dq + 2 * n * d * dkv + 3 * n * d * f + 2 * n**2 * dq

    k = min(full_layers, nl) if full_len is not None else 0
    return 2 * (k * per_layer(full_len or 0) + (nl - k) * per_layer(seq_len) + d * v)


@torch.no_grad()
def answer(
    model: Any,
    processor: Any,
    image: Any,
    prompt: str,
    *,
    method: str = "resprune",
    keep: int = 64,
    max_new_tokens: int = 32,
    compare: bool = True,
    **hparams: Any,
) -> Answer:
    """Answer ``prompt`` about ``image`` with the pruned model (and the unpruned one when ``compare``)."""
    img, inputs = _inputs(processor, image, prompt)
    dev = model.device
    inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in inputs.items()}
    result = prune(model, inputs, method, keep, processor=processor, prompt=prompt, image_sizes=[img.size], **hparams)
    tok = processor.tokenizer
    gen_kw = dict(
        max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True, pad_token_id=tok.pad_token_id
    )
    stats = dict(result.stats)
    with result.generation_context():
        t0 = time.perf_counter()
        pre = model(**result.generate_kwargs, use_cache=True)
        stats["prefill_seconds_after"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**result.generate_kwargs, **gen_kw)
        stats["generate_seconds_after"] = time.perf_counter() - t0
    n_prompt = result.generate_kwargs["input_ids"].shape[1] if "input_ids" in result.generate_kwargs else 0
    pruned = tok.decode(out.sequences[0, n_prompt:], skip_special_tokens=True).strip()
    stats["kv_cache_bytes_after"] = kv_cache_bytes(_cache_of(pre))[0]  # the prompt's cache, read after prefill
    stats["prefill_flops_after"] = prefill_flops(
        model, stats["seq_len_after"], full_len=stats["seq_len_before"], full_layers=stats.get("llm_layer", 0)
    )
    stats["prefill_flops_before"] = prefill_flops(model, stats["seq_len_before"])
    unpruned = None
    if compare:
        t0 = time.perf_counter()
        pre = model(**inputs, use_cache=True)
        stats["prefill_seconds_before"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = model.generate(**inputs, **gen_kw)
        stats["generate_seconds_before"] = time.perf_counter() - t0
        n_prompt = inputs["input_ids"].shape[1]
        unpruned = tok.decode(full.sequences[0, n_prompt:], skip_special_tokens=True).strip()
        stats["kv_cache_bytes_before"] = kv_cache_bytes(_cache_of(pre))[0]
    return Answer(pruned, unpruned, result, stats)
