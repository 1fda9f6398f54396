"""``prune``: select K visual tokens per image of a real transformers LVLM and hand the pruned sequence to the
UNMODIFIED ``model.generate``.

The recipe (transformers 5.x): compute the image features ONCE with the family adapter (``resprune.adapters``),
together with exactly the internals the method declared in its registration; scatter the features into the input
embeddings; let the method choose K of the N visual tokens of each image; gather the kept positions and hand
``inputs_embeds`` + ``attention_mask`` (+ ``position_ids``) to ``generate``. Methods that act inside the LLM
(``stage="llm"``) get the LLM's attention instead and return a context whose hooks must be active around
``generate``. Nothing is stored on the model. Generation, answers and cost accounting: ``resprune.generate``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from ._checks import check_keep
from .adapters import ADAPTERS, Adapter, ImageTokens, adapter_for
from .batching import run_batch
from .methods._common import split_budget
from .registry import DEFAULT_METHOD, MethodInfo, batch_variant, method_info
from .text import query_embeddings
from .timing import synchronize
from .types import PER_TOKEN_INTERNALS, PRUNE_OPTIONS, VIEW_NEWLINE, PruneResult, Selection

__all__ = ["ADAPTERS", "prune"]


@torch.no_grad()
def prune(
    model: Any,
    inputs: Any,
    method: str = DEFAULT_METHOD,
    keep: int = 64,
    *,
    processor: Any = None,
    prompt: str | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
    positions: str | None = None,
    newlines: str | None = None,
    query: str | None = None,
    budget: str | None = None,
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
            ``"drop"`` (the method chooses among the image tokens only, newlines are removed), ``"keep"`` (all
            kept, counted in K, the method picks K - H') or ``"prune"`` (candidates like any token). Default: the
            method's declared default (``method_info(m).prune_defaults``; peers whose released code keeps the
            newlines declare ``"keep"``), else ``"drop"``. Ignored by families without newlines.
        query: which words of ``prompt`` form the text query: ``"nouns"`` (the paper), ``"keywords"`` (all content
            words) or ``"instruction"`` (every token: the paper's Setting-1 ablation). Default: the method's
            declared default (CDPruner: the whole instruction, the nearest to its CLIP-text query), else nouns.
        budget: ``"global"`` (one selection over the image's tokens) or ``"per-crop"`` (K split evenly over the
            crops the vision tower saw, one selection per crop, as VisPruner's and CDPruner's released LLaVA-NeXT
            code does); the same for single-view families. Default: the method's declared default, else global.
        **hparams: the method's hyperparameters.

    Returns:
        A ``PruneResult``; with LLaVA-NeXT its selections and geometry index all N tokens of an image
        (base, high-res and newline), in placeholder order.
    """
    adapter = adapter_for(model)
    info = method_info(method)
    positions = _check_positions(model, adapter, positions)
    opts = _options(info, newlines=newlines, query=query, budget=budget)
    hparams = {**{k: v for k, v in adapter.defaults.items() if k in info.hparams}, **hparams}
    want = _internals_wanted(model, adapter, info, hparams, opts)
    image_mask = _check_inputs(model, adapter, inputs)
    images = adapter.images(model, processor, inputs, image_sizes, want)  # the one vision-tower pass
    counts = _check_images(images, image_mask, info, opts["newlines"])
    if isinstance(keep, int) and not isinstance(keep, bool) and keep >= max(counts):
        warnings.warn(f"keep={keep} >= N={max(counts)} visual tokens: every token is kept", stacklevel=3)
    llm_scores, t_llm = _in_llm_scores(model, info, inputs, image_mask, hparams)
    tokenizer = getattr(processor, "tokenizer", processor)
    words, text_query = query_embeddings(model, tokenizer, prompt, opts["query"])
    embeds = _embed(model, inputs["input_ids"], image_mask, images)

    t0 = time.perf_counter()
    selections = _select_batch(info, images, keep, text_query, opts, hparams)
    if selections is not None:
        ks = [sel.keep for sel in selections]
    else:  # image by image (per-crop budgets, newline policies, methods without a batch variant)
        selections, ks = [], []
        for i, im in enumerate(images):
            internals = dict(im.internals)
            if llm_scores is not None:
                internals["llm_attention"] = llm_scores[i]
            sel, k = _select_image(model, adapter, info, im, keep, text_query, internals, opts, hparams)
            selections.append(sel)
            ks.append(k)
    synchronize(model.device)
    t_sel = time.perf_counter() - t0
    keeps = [_kept_positions(embeds, i, sel, image_mask, _attention_mask(inputs)) for i, sel in enumerate(selections)]

    gen, lmax = _assemble(model, adapter, inputs, embeds, keeps, positions)
    stats = {
        "visual_tokens_before": sum(counts),
        "visual_tokens_after": sum(s.keep for s in selections),
        "seq_len_before": int(_attention_mask(inputs).sum(1).max()),
        "seq_len_after": lmax,
        "selection_seconds": t_sel + t_llm,
    }
    context = None
    if info.in_llm is not None:  # the full prompt goes to generate; the method's hooks drop tokens inside the LLM
        gen = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        context = info.in_llm.context(model, keeps[0], int(inputs["input_ids"].shape[1]), hparams)
        stats.update(info.in_llm.stats(model, counts[0], selections[0].keep, hparams))
    return PruneResult(
        generate_kwargs=gen,
        selections=tuple(selections),
        geometry=tuple(im.geometry for im in images if im.geometry is not None),
        query_words=(words.words,) * len(images),
        query_tokens=(text_query,) * len(images),
        stats=stats,
        method=method,
        params=dict(
            hparams,
            keep=ks[0] if len(set(ks)) == 1 else tuple(ks),
            positions=positions,
            **opts,
            extractor=words.extractor,
        ),
        visual_tokens=tuple(im.tokens.detach().float().cpu() for im in images),
        context=context,
    )


# ---------------------------------------------------------------------------------------------------------------
# The steps of prune


def _check_positions(model: Any, adapter: Adapter, positions: str | None) -> str:
    """The position mode (the family's default when None); ``ValueError`` for one the family lacks."""
    if positions is None:
        positions = adapter.positions[0]
    if positions not in adapter.positions:
        allowed = " or ".join(repr(p) for p in adapter.positions)
        raise ValueError(f"positions must be {allowed} for {type(model).__name__}, got {positions!r}")
    return positions


def _options(info: MethodInfo, **given: str | None) -> dict[str, str]:
    """``prune``'s options: what the caller gave, else the method's declared default, else the global default."""
    opts = {}
    for name, values in PRUNE_OPTIONS.items():
        value = given.get(name)
        if value is None:
            value = info.prune_defaults.get(name, values[0])
        if value not in values:
            raise ValueError(f"{name} must be one of {values}, got {value!r}")
        opts[name] = value
    return opts


def _internals_wanted(
    model: Any, adapter: Adapter, info: MethodInfo, hparams: dict[str, Any], opts: dict[str, str]
) -> frozenset[str]:
    """The internals to compute for ``info``: all it requires (``ValueError`` if the family does not offer one), the
    optional ones the family offers and the caller did not pass, and each token's crop for ``budget="per-crop"``.
    ``llm_attention`` comes from the LLM."""
    offered = adapter.offers | ({"llm_attention"} if info.in_llm is not None else set())
    missing = [i for i in info.requires if i not in offered]
    if missing:
        raise ValueError(f"method {info.name!r} needs {', '.join(missing)}, but {adapter.missing(model, missing[0])}")
    optional = {i for kw, i in info.optional.items() if kw not in hparams and i in offered}
    if opts["budget"] == "per-crop" and "crops" in offered:
        optional.add("crops")
    return frozenset((set(info.requires) | optional) - {"llm_attention"})


def _attention_mask(inputs: Any) -> torch.Tensor:
    am = inputs.get("attention_mask")
    return torch.ones_like(inputs["input_ids"]) if am is None else am


def _check_inputs(model: Any, adapter: Adapter, inputs: Any) -> torch.Tensor:
    """The `(B, L)` image-placeholder mask; ``ValueError`` for inputs without an image or its processor outputs."""
    input_ids, pv = inputs["input_ids"], inputs.get("pixel_values")
    image_mask = input_ids == model.config.image_token_id  # (B, L)
    n_placeholders = int(image_mask.sum())
    if pv is None:
        if n_placeholders:
            raise ValueError(f"inputs: {n_placeholders} image placeholder tokens but no pixel_values")
        raise ValueError("inputs: no image (no pixel_values and no image placeholder in the prompt)")
    if n_placeholders == 0:
        raise ValueError("inputs: the prompt has no image placeholder token; add the image to the chat message")
    adapter.check_inputs(inputs)
    return image_mask


def _check_images(images: list[ImageTokens], image_mask: torch.Tensor, info: MethodInfo, newlines: str) -> list[int]:
    """N per image; ``ValueError`` when placeholders and features disagree or the method cannot take ``newlines``."""
    counts = [im.tokens.shape[0] for im in images]
    n_placeholders = int(image_mask.sum())
    if n_placeholders != sum(counts):
        raise ValueError(
            f"inputs: the prompt has {n_placeholders} image placeholder tokens but the images give "
            f"{' + '.join(map(str, counts)) if len(counts) > 1 else counts[0]} = {sum(counts)} features "
            f"({len(counts)} image(s); one placeholder per image?)"
        )
    if len(images) != image_mask.shape[0]:
        raise ValueError(
            f"inputs: {len(images)} images for a batch of {image_mask.shape[0]}; one image per sample is supported"
        )
    per_row = image_mask.sum(1).tolist()
    if per_row != counts:
        raise ValueError(f"inputs: image placeholders per sample {per_row} do not match the images' tokens {counts}")
    if newlines not in info.newlines and any(bool((im.view == VIEW_NEWLINE).any()) for im in images):
        only = " or ".join(f"newlines={p!r}" for p in info.newlines)
        why = " (like its released code, it sends no image_newline tokens)" if info.newlines == ("drop",) else ""
        raise ValueError(f"newlines={newlines!r}: method {info.name!r} supports {only} only{why}")
    return counts


def _in_llm_scores(
    model: Any, info: MethodInfo, inputs: Any, image_mask: torch.Tensor, hparams: dict[str, Any]
) -> tuple[list[torch.Tensor] | None, float]:
    """For in-LLM methods: per image the `(N,)` LLM attention to its visual tokens, and the seconds it took."""
    if info.in_llm is None:
        return None, 0.0
    b = inputs["input_ids"].shape[0]
    if b != 1:
        raise ValueError(f"method {info.name!r} prunes inside the LLM and supports batch size 1, got {b}")
    t0 = time.perf_counter()
    dev_inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    row = info.in_llm.attention(model, dev_inputs, hparams).float().cpu()  # (L,)
    synchronize(model.device)
    return [row[image_mask[0]]], time.perf_counter() - t0


def _embed(model: Any, input_ids: torch.Tensor, image_mask: torch.Tensor, images: list[ImageTokens]) -> torch.Tensor:
    """`(B, L, D)` input embeddings with the visual tokens in the image placeholders."""
    dev = model.device
    embeds = model.get_input_embeddings()(input_ids.to(dev))
    vis_all = torch.cat([im.tokens for im in images]).to(embeds.dtype)
    return embeds.masked_scatter(image_mask.to(dev)[..., None], vis_all)


def _select_batch(
    info: MethodInfo,
    images: list[ImageTokens],
    keep: int,
    query: torch.Tensor | None,
    opts: dict[str, str],
    hparams: dict[str, Any],
) -> list[Selection] | None:
    """All images at once (``batching.run_batch``: lock-step on an accelerator, one image per core on the CPU),
    for methods with a batched variant and where every image is one whole selection (no forced newlines, no
    per-crop split); None otherwise."""
    if batch_variant(info.name) is None or len(images) < 2:
        return None
    items, extras = [], []
    for im in images:
        n = im.tokens.shape[0]
        cand, forced, _ = _candidates(im.view, min(keep, n), opts["newlines"])
        if cand.numel() != n or forced.numel() or (opts["budget"] == "per-crop" and "crops" in im.internals):
            return None
        items.append(im.tokens.detach().float())
        extras.append(_declared(info, im.internals, hparams))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prune already warned about keep >= N
        return run_batch(info.name, items, keep, [query if info.text_aware else None] * len(items), extras, hparams)


def _declared(
    info: MethodInfo, internals: dict[str, Any], hparams: dict[str, Any], narrow: Any = None
) -> dict[str, Any]:
    """The keyword arguments a method receives from the model: every required internal, and each optional one the
    model offers unless the caller passed that keyword (``narrow(internal, value)`` restricts per-token values to
    a subset of the tokens)."""
    narrow = narrow or (lambda _name, value: value)
    kw = {name: narrow(name, internals[name]) for name in info.requires}
    for name, internal in info.optional.items():
        if name not in hparams and internal in internals:
            kw[name] = narrow(internal, internals[internal])
    return kw


def _select_image(
    model: Any,
    adapter: Adapter,
    info: MethodInfo,
    im: ImageTokens,
    keep: int,
    query: torch.Tensor | None,
    internals: dict[str, Any],
    opts: dict[str, str],
    hparams: dict[str, Any],
) -> tuple[Selection, int]:
    """Run the method on one image's candidates (the newline policy), passing exactly its declared internals; with
    ``budget="per-crop"`` once per crop the tower saw, K split evenly over the crops (``split_budget``)."""
    vis = im.tokens.detach().float().cpu()  # (N, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = check_keep(keep, vis.shape[0])
    newlines = opts["newlines"]
    cand, forced, k_sel = _candidates(im.view, k, newlines)
    groups = [cand]
    if opts["budget"] == "per-crop" and "crops" in internals:
        crop = torch.as_tensor(internals["crops"]).long().cpu()[cand]
        groups = [cand[crop == c] for c in torch.unique(crop).tolist()]  # crop order (newlines: -1, first)
        groups = groups[1:] + groups[:1] if len(groups) > 1 and int(crop.min()) < 0 else groups
    budgets = split_budget(k_sel, [g.numel() for g in groups]) if len(groups) > 1 else [k_sel]
    parts = []
    for idx, kg in zip(groups, budgets):
        if kg:
            parts.append((idx, _run(model, adapter, info, vis, idx, kg, query, internals, hparams)))
    whole = len(parts) == 1 and parts[0][0].numel() == vis.shape[0]
    if whole and not forced.numel():
        return parts[0][1], k
    extra = {"per_crop": tuple(budgets)} if len(groups) > 1 else {}
    note = f"LLaVA-NeXT newlines={newlines!r}: {forced.numel()} forced"
    if len(groups) > 1:
        note += f"; per-crop budget {tuple(budgets)}"
    return _restate(parts, vis, forced, note, extra), k


def _run(
    model: Any,
    adapter: Adapter,
    info: MethodInfo,
    vis: torch.Tensor,
    idx: torch.Tensor,
    k: int,
    query: torch.Tensor | None,
    internals: dict[str, Any],
    hparams: dict[str, Any],
) -> Selection:
    """The method on the tokens ``idx`` of one image, with the declared internals narrowed to them."""
    whole = idx.numel() == vis.shape[0]

    def narrow(name: str, value: Any) -> Any:
        return value if whole or name not in PER_TOKEN_INTERNALS else value[idx]

    kw = dict(hparams, **_declared(info, internals, hparams, narrow))
    with warnings.catch_warnings():
        if not whole:  # "all the tokens of this part" is the policy here, not a budget mistake
            warnings.simplefilter("ignore")
        try:
            return info.fn(vis if whole else vis[idx], k, query=query if info.text_aware else None, **kw)
        except ValueError as e:  # a setting that needs an internal this family lacks: say so
            lacking = [i for n, i in info.optional.items() if n in str(e) and i not in internals]
            if lacking:
                raise ValueError(f"{e}; {adapter.missing(model, lacking[0])}") from None
            raise


def _kept_positions(
    embeds: torch.Tensor, i: int, sel: Selection, image_mask: torch.Tensor, am: torch.Tensor
) -> torch.Tensor:
    """The positions of sample ``i`` that stay (text + kept image tokens); merged tokens (``sel.merged``) are
    written into the first K image slots of ``embeds`` in their own order."""
    pos = image_mask[i].nonzero().squeeze(-1)  # (N,) positions of the image tokens
    keep_mask = ~image_mask[i].clone()
    if sel.merged is not None:
        slots = pos[: sel.merged.shape[0]]
        embeds[i, slots.to(embeds.device)] = sel.merged.to(device=embeds.device, dtype=embeds.dtype)
        keep_mask[slots] = True
    else:
        keep_mask[pos[sel.keep_idx.cpu()]] = True
    keep_mask &= am[i].bool() | image_mask[i]
    return keep_mask.nonzero().squeeze(-1)


def _assemble(
    model: Any, adapter: Adapter, inputs: Any, embeds: torch.Tensor, keeps: list[torch.Tensor], positions: str
) -> tuple[dict[str, Any], int]:
    """The kwargs for ``generate``: the kept embeddings re-padded on the left, their mask and positions."""
    dev = model.device
    b = embeds.shape[0]
    am = _attention_mask(inputs)
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
    return gen, lmax


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


def _restate(
    parts: list[tuple[torch.Tensor, Selection]], tokens: torch.Tensor, forced: torch.Tensor, note: str, params: dict
) -> Selection:
    """Selections over subsets of the tokens (``(indices, selection)`` per part, in part order) restated as one
    selection over all N tokens, plus the ``forced`` ones; the residual curve is left to compute on access."""
    n = tokens.shape[0]
    order = torch.cat([idx[sel.order.cpu()] for idx, sel in parts] + [forced])
    nan = torch.full((forced.numel(),), float("nan"))
    rel = None
    if all(sel.relevance is not None for _, sel in parts):
        rel = torch.zeros(n)
        for idx, sel in parts:
            rel[idx] = sel.relevance.cpu().float()
    energy = None
    if all(sel.energy is not None for _, sel in parts):
        energy = torch.cat([sel.energy.cpu().float() for _, sel in parts] + [nan])
    first = parts[0][1]
    notes = tuple(dict.fromkeys(x for _, sel in parts for x in sel.notes))
    return Selection(
        keep_idx=order.sort().values,
        order=order,
        gain=torch.cat([sel.gain.cpu().float() for _, sel in parts] + [nan]),
        _residual=None,
        method=first.method,
        n_tokens=n,
        energy=energy,
        relevance=rel,
        params={**first.params, **params},
        notes=(*notes, note),
        merged=first.merged,
        _tokens=tokens,
    )
