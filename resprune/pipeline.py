"""Pruned generation on real transformers LVLMs: ``prune``, ``answer``, ``count_visual_tokens``.

The recipe (transformers 5.x, tested on 5.24): compute the image features ONCE with
``model.model.get_image_features``, scatter them into the input embeddings, let a selection method choose K of the
N visual tokens of each image, gather the kept positions, and hand ``inputs_embeds`` + ``attention_mask`` (+
``position_ids`` when the original positions are kept) to the UNMODIFIED ``model.generate``. No hooks, nothing
stored on the model.

Supported classes (``ADAPTERS``): ``LlavaForConditionalGeneration`` (LLaVA-1.5 and the project's offline model).
LLaVA-NeXT and Qwen2.5-VL are not wired yet; they raise the unsupported-model error listing what is supported.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_keep
from .registry import get_method, method_info, register
from .selection import _finish
from .text import extract_keywords
from .types import VIEW_BASE, PruneResult, Selection, TokenGeometry

ADAPTERS = ("LlavaForConditionalGeneration",)


def _check_model(model: Any) -> None:
    name = type(model).__name__
    if name not in ADAPTERS:
        raise ValueError(f"model: unsupported model class {name!r}; supported: {', '.join(ADAPTERS)}")


# ---------------------------------------------------------------------------------------------------------------
# Model internals offered to the selection methods


@torch.no_grad()
def cls_attention(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """[CLS]→patch attention (mean over heads) in the CLIP layer whose output LLaVA takes (``vision_feature_layer``).

    Recomputed from that layer's ``layer_norm1`` / ``q_proj`` / ``k_proj`` on its input hidden states, so the
    vision tower runs with whatever attention kernel it has (SDPA stays on).

    Returns:
        `(B, N)` float32, one row per image, over the patch tokens (CLS excluded).
    """
    tower = model.model.vision_tower
    cfg = model.config
    layer_idx = cfg.vision_feature_layer
    if not isinstance(layer_idx, int):
        layer_idx = layer_idx[-1]
    out = tower(pixel_values.to(tower.dtype), output_hidden_states=True)
    hs = out.hidden_states  # (layers + 1) x (B, 1 + N, C); hidden_states[i] is the input of layer i
    n_layers = len(hs) - 1
    produce = (layer_idx % (n_layers + 1)) - 1  # the layer whose output is hidden_states[layer_idx]
    if produce < 0:
        raise ValueError(f"vision_feature_layer={layer_idx} selects the embeddings; there is no attention there")
    encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
    layer = encoder.layers[produce]
    h = layer.layer_norm1(hs[produce])
    attn = layer.self_attn
    b, t, c = h.shape
    heads = attn.num_heads
    q = attn.q_proj(h).view(b, t, heads, -1).transpose(1, 2)  # (B, H, T, c/H)
    k = attn.k_proj(h).view(b, t, heads, -1).transpose(1, 2)
    scores = (q[:, :, :1] @ k.transpose(-1, -2)) * attn.scale  # (B, H, 1, T)
    probs = scores.float().softmax(-1).mean(1)[:, 0]  # (B, T)
    return probs[:, 1:]


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
    """Top-K tokens by [CLS]→patch attention (FasterVLM-style; VisPruner's "important" tokens); ties by index."""
    from ._checks import check_query, check_tokens

    v = check_tokens(tokens)
    check_query(query, v.shape[1])
    k = check_keep(keep, v.shape[0])
    if cls_attention is None:
        raise ValueError("method 'cls' needs cls_attention (a vision tower with a [CLS] token)")
    a = torch.as_tensor(cls_attention).float().flatten().cpu()
    if a.numel() != v.shape[0]:
        raise ValueError(f"cls_attention has {a.numel()} values but tokens has N={v.shape[0]}")
    order = torch.sort(a, descending=True, stable=True).indices[:k]
    return _finish(tokens, order, a[order], "cls", {}, v32=v.cpu())


# ---------------------------------------------------------------------------------------------------------------
# Geometry


def _field(d: Any, key: str) -> Any:
    v = d.get(key) if isinstance(d, dict) else getattr(d, key, None)
    return int(v) if v is not None else None


def llava_geometry(processor: Any, image_size: tuple[int, int], n_tokens: int) -> TokenGeometry:
    """Pixel box of every visual token of a CLIP-processed image (shortest-edge resize, centre crop, no pad).

    Args:
        processor: the ``LlavaProcessor`` (its image processor's ``size``/``crop_size``).
        image_size: ``(width, height)`` of the original image.
        n_tokens: N visual tokens (a square grid).
    """
    ip = processor.image_processor
    w, h = image_size
    side = int(round(n_tokens**0.5))
    if side * side != n_tokens:
        raise ValueError(f"LLaVA expects a square token grid, got N={n_tokens}")
    size = _field(ip.size, "shortest_edge")
    crop = ip.crop_size if getattr(ip, "do_center_crop", True) else None
    if size is None:  # fixed (height, width) resize
        new_h, new_w = _field(ip.size, "height"), _field(ip.size, "width")
    else:
        short, long_ = (w, h) if w <= h else (h, w)
        ns, nl = int(size), int(size * long_ / short)
        new_w, new_h = (ns, nl) if w <= h else (nl, ns)
    if crop is not None and _field(crop, "height"):
        ch, cw = _field(crop, "height"), _field(crop, "width")
        top, left = (new_h - ch) // 2, (new_w - cw) // 2
    else:
        ch, cw, top, left = new_h, new_w, 0, 0
    sx, sy = w / new_w, h / new_h
    idx = torch.arange(n_tokens)
    row, col = idx // side, idx % side
    ph, pw = ch / side, cw / side
    box = torch.stack(
        [(left + col * pw) * sx, (top + row * ph) * sy, (left + (col + 1) * pw) * sx, (top + (row + 1) * ph) * sy],
        dim=1,
    ).float()
    return TokenGeometry(torch.full((n_tokens,), VIEW_BASE), row, col, box, (w, h), {VIEW_BASE: (side, side)})


# ---------------------------------------------------------------------------------------------------------------
# prune / answer


def query_embeddings(model: Any, tokenizer: Any, prompt: str | None) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """Words of ``prompt`` (nouns / content words) and the `(Q, D)` LLM input embeddings of their sub-word tokens."""
    if not prompt or tokenizer is None:
        return (), None
    words = extract_keywords(prompt).words
    ids: list[int] = []
    used = []
    for w in words:
        t = tokenizer(w, add_special_tokens=False)["input_ids"]
        t = [i for i in t if i not in (tokenizer.all_special_ids or [])]
        if t:
            ids += t
            used.append(w)
    if not ids:
        return tuple(used), None
    emb = model.get_input_embeddings()
    q = emb(torch.tensor(ids, device=emb.weight.device)).detach().float().cpu()  # (Q, D)
    return tuple(used), q


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
    positions: str = "compact",
    **hparams: Any,
) -> PruneResult:
    """Select ``keep`` visual tokens per image and return the kwargs for the unmodified ``model.generate``.

    Args:
        model: a supported transformers LVLM (see ``ADAPTERS``).
        inputs: what the model's processor returned (``input_ids``, ``attention_mask``, ``pixel_values``).
        method: a registered method name.
        keep: K visual tokens per image (``keep >= N`` keeps all, with a warning).
        processor: the processor, for the query words' tokens and the token geometry.
        prompt: the user's instruction (its nouns form the text query); None = no text query.
        image_sizes: ``(width, height)`` of each original image, for the pixel boxes (default: the processed size).
        positions: ``"compact"`` (renumber 0..L'-1, the default) or ``"original"`` (keep the gapped positions).
        **hparams: the method's hyperparameters.

    Returns:
        A ``PruneResult``.
    """
    _check_model(model)
    info = method_info(method)
    fn = get_method(method)
    if positions not in ("compact", "original"):
        raise ValueError(f"positions must be 'compact' or 'original', got {positions!r}")
    input_ids, pv = inputs["input_ids"], inputs.get("pixel_values")
    am = inputs.get("attention_mask")
    if am is None:
        am = torch.ones_like(input_ids)
    image_token = model.config.image_token_id
    image_mask = input_ids == image_token  # (B, L)
    n_placeholders = int(image_mask.sum())
    if pv is None:
        if n_placeholders:
            raise ValueError(f"inputs: {n_placeholders} image placeholder tokens but no pixel_values")
        raise ValueError("inputs: no image (no pixel_values and no image placeholder in the prompt)")
    if n_placeholders == 0:
        raise ValueError("inputs: the prompt has no image placeholder token; add the image to the chat message")
    dev = model.device
    feats = model.model.get_image_features(pixel_values=pv.to(dev), return_dict=True).pooler_output
    feats = list(feats) if not torch.is_tensor(feats) else list(feats.unbind(0))
    b = input_ids.shape[0]
    n_img = len(feats)
    per_img = feats[0].shape[0]
    if n_placeholders != n_img * per_img:
        raise ValueError(
            f"inputs: the prompt has {n_placeholders} image placeholder tokens but the images give "
            f"{n_img} x {per_img} = {n_img * per_img} features (one placeholder per image?)"
        )
    if n_img != b:
        raise ValueError(f"inputs: {n_img} images for a batch of {b}; one image per sample is supported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = check_keep(keep, per_img)
    if isinstance(keep, int) and not isinstance(keep, bool) and keep >= per_img:
        warnings.warn(f"keep={keep} >= N={per_img} visual tokens: every token is kept", stacklevel=2)

    cls_att = None
    wants_cls = "cls_attention" in info.requires or (
        method == "resprune" and hparams.get("seed", "auto") in ("auto", "prior") and "seed_prior" not in hparams
    )
    if wants_cls:
        cls_att = cls_attention(model, pv.to(dev)).cpu()  # (B, N)
    tokenizer = getattr(processor, "tokenizer", processor)
    words, query = query_embeddings(model, tokenizer, prompt)

    embeds = model.get_input_embeddings()(input_ids.to(dev))  # (B, L, D)
    vis_all = torch.cat(feats).to(embeds.dtype)
    embeds = embeds.masked_scatter(image_mask.to(dev)[..., None], vis_all)
    selections, geometry, keeps, tokens_out = [], [], [], []
    t_sel = 0.0
    for i in range(b):
        vis = feats[i].detach().float().cpu()  # (N, D)
        kw = dict(hparams)
        if "cls_attention" in info.requires:
            kw["cls_attention"] = cls_att[i]
        elif method == "resprune" and cls_att is not None:
            kw["seed_prior"] = cls_att[i]
        t0 = time.perf_counter()
        sel = fn(vis, k, query=query if info.text_aware else None, **kw)
        t_sel += time.perf_counter() - t0
        selections.append(sel)
        tokens_out.append(vis)
        pos = image_mask[i].nonzero().squeeze(-1)  # (N,) positions of the image tokens
        keep_mask = ~image_mask[i].clone()
        keep_mask[pos[sel.keep_idx.cpu()]] = True
        keep_mask &= am[i].bool() | image_mask[i]
        keeps.append(keep_mask.nonzero().squeeze(-1))
        size = image_sizes[i] if image_sizes else (pv.shape[-1], pv.shape[-2])
        if processor is not None and hasattr(processor, "image_processor"):
            geometry.append(llava_geometry(processor, size, per_img))
    # re-pad on the left so that every row has the same length
    lmax = max(x.numel() for x in keeps)
    new_e = embeds.new_zeros(b, lmax, embeds.shape[-1])
    new_am = torch.zeros(b, lmax, dtype=am.dtype)
    new_pos = torch.zeros(b, lmax, dtype=torch.long)
    for i, kp in enumerate(keeps):
        n = kp.numel()
        new_e[i, lmax - n :] = embeds[i, kp.to(dev)]
        new_am[i, lmax - n :] = 1
        new_pos[i, lmax - n :] = kp - kp[0] if positions == "original" else torch.arange(n)
    gen = {"inputs_embeds": new_e, "attention_mask": new_am.to(dev)}
    if positions == "original":
        gen["position_ids"] = new_pos.to(dev)
    stats = {
        "visual_tokens_before": per_img * b,
        "visual_tokens_after": sum(s.keep for s in selections),
        "seq_len_before": int(am.sum(1).max()),
        "seq_len_after": lmax,
        "selection_seconds": t_sel,
    }
    return PruneResult(
        gen,
        tuple(selections),
        tuple(geometry),
        (words,) * b,
        (query,) * b,
        stats,
        method,
        dict(hparams, keep=k, positions=positions),
        tuple(tokens_out),
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
    _check_model(model)
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
    """(bytes, sequence length) of a transformers cache object."""
    total, length = 0, 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if torch.is_tensor(t):
                    total += t.numel() * t.element_size()
                    length = t.shape[-2]
    return total, length


def prefill_flops(model: Any, seq_len: int) -> int:
    """Prefill FLOPs of the language model (2 x multiply-adds), from its config.

    Per layer: q/o projections ``2 L d d_q``, k/v ``2 L d d_kv``, SwiGLU MLP ``3 L d f``, attention scores and
    values ``2 L^2 d_q`` (full square, no causal halving); plus the LM head for the last position ``d V``.
    """
    c = model.config.text_config
    d, f, nl, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    dq, dkv = c.num_attention_heads * hd, (c.num_key_value_heads or c.num_attention_heads) * hd
    per_layer = 2 * seq_len * d * dq + 2 * seq_len * d * dkv + 3 * seq_len * d * f + 2 * seq_len**2 * dq
    return 2 * (nl * per_layer + d * v)


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
    t0 = time.perf_counter()
    model(**result.generate_kwargs, use_cache=True)
    stats["prefill_seconds_after"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(**result.generate_kwargs, **gen_kw)
    stats["generate_seconds_after"] = time.perf_counter() - t0
    pruned = tok.decode(out.sequences[0], skip_special_tokens=True).strip()
    nbytes, length = kv_cache_bytes(_cache_of(out))
    if length:
        stats["kv_cache_bytes_after"] = nbytes * stats["seq_len_after"] // length
    stats["prefill_flops_after"] = prefill_flops(model, stats["seq_len_after"])
    stats["prefill_flops_before"] = prefill_flops(model, stats["seq_len_before"])
    unpruned = None
    if compare:
        t0 = time.perf_counter()
        model(**inputs, use_cache=True)
        stats["prefill_seconds_before"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = model.generate(**inputs, **gen_kw)
        stats["generate_seconds_before"] = time.perf_counter() - t0
        n_prompt = inputs["input_ids"].shape[1]
        unpruned = tok.decode(full.sequences[0, n_prompt:], skip_special_tokens=True).strip()
        nbytes, length = kv_cache_bytes(_cache_of(full))
        if length:
            stats["kv_cache_bytes_before"] = nbytes * stats["seq_len_before"] // length
    return Answer(pruned, unpruned, result, stats)
