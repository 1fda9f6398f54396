"""Model-family adapters: how each transformers LVLM makes its visual tokens, where they sit in the image, and how the
pruned sequence is positioned.

One adapter per family, looked up by the model's class name (``adapter_for``):

- ``LlavaForConditionalGeneration``: one square grid per image (LLaVA-1.5: 24 x 24); [CLS]: yes; positions of
  the pruned sequence: compact 0..L'-1 (default) or the original ones.
- ``LlavaNextForConditionalGeneration``: base view + unpadded high-res grid with one ``image_newline`` per hi-res
  row; [CLS]: yes; positions: compact (default) or original.
- ``Qwen2_5_VLForConditionalGeneration``: the merged patch grid (2 x 2 merger), any size; no [CLS]; positions:
  the ORIGINAL 3-D M-RoPE positions, gathered.

Every adapter gives, per image: the `(N, D)` tokens in the LLM's input-embedding space (what reaches the LLM, in
placeholder order), their ``TokenGeometry``, the kind of each token (``types.VIEW_*``), and, where the vision tower
has a [CLS] token, the [CLS] -> token attention of the layer the features come from (recomputed from that layer's
q/k projections, so the tower keeps its SDPA/FlashAttention kernel).

LLaVA-NeXT layout: the adapter does not re-implement the model's reshape/unpad; it runs the model's own
``pack_image_features`` on per-crop coordinate tensors (crop, row, column), on per-crop [CLS] attention and on
VisionZip's per-crop features and keys, so geometry and attention line up with the features token by token whatever
the image size and pinpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE, TokenGeometry


@dataclass(frozen=True)
class ImageTokens:
    """The visual tokens of ONE image as the LLM receives them."""

    tokens: torch.Tensor  # (N, D) on the model's device and dtype
    geometry: TokenGeometry | None  # None when the image size is unknown and cannot be derived
    view: torch.Tensor  # (N,) VIEW_BASE / VIEW_HIRES / VIEW_NEWLINE


def _field(d: Any, key: str) -> Any:
    v = d.get(key) if isinstance(d, dict) else getattr(d, key, None)
    return int(v) if v is not None else None


def _layer_index(cfg: Any) -> int:
    idx = cfg.vision_feature_layer
    return idx if isinstance(idx, int) else idx[-1]


@torch.no_grad()
def clip_internals(
    tower: Any, pixel_values: torch.Tensor, layer_idx: int, hidden_states: tuple | None = None
) -> tuple[torch.Tensor, ...]:
    """The [CLS] -> patch attention `(B, T - 1)` (mean over heads, float32) of the CLIP layer whose output is
    ``hidden_states[layer_idx]``, recomputed from that layer's ``layer_norm1`` / ``q_proj`` / ``k_proj`` on its
    input hidden states (the tower keeps its SDPA kernel); the patch features `(B, T - 1, C)` of that output (the vision
    tower's output that the projector receives, before the projector), the patch keys of that layer averaged over
    heads `(B, T - 1, C / H)` (VisionZip's similarity metric) and the [CLS] feature `(B, C)`.

    ``hidden_states``: the tower's hidden states for these ``pixel_values`` when the caller already has them (the
    pass that made the visual tokens), so the tower does not run twice."""
    hs = hidden_states
    if hs is None:
        hs = tower(pixel_values.to(tower.dtype), output_hidden_states=True).hidden_states
    # (layers + 1) x (B, 1 + N, C); hidden_states[i] is the input of layer i
    n_layers = len(hs) - 1
    produce = (layer_idx % (n_layers + 1)) - 1  # the layer whose output is hidden_states[layer_idx]
    if produce < 0:
        raise ValueError(f"vision_feature_layer={layer_idx} selects the embeddings; there is no attention there")
    encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
    layer = encoder.layers[produce]
    h = layer.layer_norm1(hs[produce])
    attn = layer.self_attn
    b, t, _ = h.shape
    heads = attn.num_heads
    q = attn.q_proj(h).view(b, t, heads, -1).transpose(1, 2)  # (B, H, T, c/H)
    k = attn.k_proj(h).view(b, t, heads, -1).transpose(1, 2)
    scores = (q[:, :, :1] @ k.transpose(-1, -2)) * attn.scale  # (B, H, 1, T)
    probs = scores.float().softmax(-1).mean(1)[:, 0]  # (B, T)
    feats = hs[layer_idx].float()
    return probs[:, 1:], feats[:, 1:], k.float().mean(1)[:, 1:], feats[:, 0]


class Adapter:
    """Base class; one subclass per model family."""

    classes: tuple[str, ...] = ()
    has_cls = True
    positions = ("compact", "original")  # the first is the default

    def image_kwargs(self, inputs: Any) -> dict[str, Any]:
        """Extra arguments of ``get_image_features`` besides ``pixel_values``."""
        return {}

    def check_inputs(self, inputs: Any) -> None:
        for key in self.image_kwargs_keys:
            if inputs.get(key) is None:
                raise ValueError(f"inputs: {key!r} is missing (pass everything the model's processor returned)")

    image_kwargs_keys: tuple[str, ...] = ()

    def features(self, model: Any, inputs: Any, sink: dict | None = None) -> list[torch.Tensor]:
        """`(N_i, D)` visual tokens of each image, in placeholder order; ``sink["hidden_states"]`` receives the
        vision tower's hidden states of that same pass (for [CLS] attention and other internals)."""
        dev = model.device
        kw = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in self.image_kwargs(inputs).items()}
        if sink is not None:  # every layer's hidden states (by default transformers keeps only the selected one)
            kw["output_hidden_states"] = True
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"].to(dev), return_dict=True, **kw)
        if sink is not None and getattr(out, "hidden_states", None) is not None:
            sink["hidden_states"] = out.hidden_states
        feats = out.pooler_output
        return list(feats) if not torch.is_tensor(feats) else list(feats.unbind(0))

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, sink: dict | None = None
    ) -> list[ImageTokens]:
        """The visual tokens of each image with their geometry (``sink``: see ``features``)."""
        raise NotImplementedError

    def cls_attention(self, model: Any, inputs: Any, hidden_states: tuple | None = None) -> list[torch.Tensor]:
        """`(N_i,)` [CLS] attention per image, aligned with ``features`` (0 on newline tokens)."""
        return [a for a, _ in self.vision_internals(model, inputs, hidden_states)]

    def vision_internals(
        self, model: Any, inputs: Any, hidden_states: tuple | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: `(N_i,)` [CLS] attention and `(N_i, C)` vision features before the projector, aligned with
        ``features`` (zeros on newline tokens). ``hidden_states``: the tower's, from ``features`` (else it runs)."""
        raise ValueError(
            f"{type(model).__name__}'s vision tower has no [CLS] token, so there is no [CLS] attention; "
            "use a method that does not need it (e.g. 'resprune' with seed='max_norm')"
        )

    def merge_internals(self, model: Any, inputs: Any, hidden_states: tuple | None = None) -> list[dict[str, Any]]:
        """What token-merging methods (VisionZip) need per image; LLaVA-family towers with a [CLS] token only."""
        raise ValueError(
            "token-merging methods (visionzip) support LlavaForConditionalGeneration and "
            f"LlavaNextForConditionalGeneration only, not {type(model).__name__}"
        )

    def position_ids(
        self, model: Any, inputs: Any, keeps: list[torch.Tensor], lmax: int, positions: str
    ) -> torch.Tensor | None:
        """Position ids of the left-padded pruned batch (``None``: let ``generate`` number 0..L'-1)."""
        if positions == "compact":
            return None
        pos = torch.zeros(len(keeps), lmax, dtype=torch.long)
        for i, kp in enumerate(keeps):
            pos[i, lmax - kp.numel() :] = kp - kp[0]
        return pos


# ---------------------------------------------------------------------------------------------------------------
# LLaVA-1.5


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


class LlavaAdapter(Adapter):
    classes = ("LlavaForConditionalGeneration",)

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, sink: dict | None = None
    ) -> list[ImageTokens]:
        feats = self.features(model, inputs, sink)
        pv = inputs["pixel_values"]
        out = []
        for i, f in enumerate(feats):
            size = tuple(image_sizes[i]) if image_sizes else (int(pv.shape[-1]), int(pv.shape[-2]))
            geo = None
            if processor is not None and hasattr(processor, "image_processor"):
                geo = llava_geometry(processor, size, f.shape[0])
            out.append(ImageTokens(f, geo, torch.full((f.shape[0],), VIEW_BASE)))
        return out

    def vision_internals(
        self, model: Any, inputs: Any, hidden_states: tuple | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        att, feats, _, _ = clip_internals(
            model.model.vision_tower, inputs["pixel_values"].to(model.device), _layer_index(model.config), hidden_states
        )
        return list(zip(att.cpu().unbind(0), feats.cpu().unbind(0)))

    def merge_internals(self, model: Any, inputs: Any, hidden_states: tuple | None = None) -> list[dict[str, Any]]:
        """Per image what VisionZip needs: [CLS] attention, patch features and keys, the [CLS] feature, and the
        projector that maps merged features to the LLM's input space."""
        att, feats, keys, cls = clip_internals(
            model.model.vision_tower, inputs["pixel_values"].to(model.device), _layer_index(model.config), hidden_states
        )
        project = _projector(model)
        return [
            {"cls_attention": a, "vision_features": f, "vision_keys": k, "cls_feature": c, "projector": project}
            for a, f, k, c in zip(att.cpu(), feats.cpu(), keys.cpu(), cls.cpu())
        ]


def _projector(model: Any) -> Any:
    """The model's multimodal projector as a function of pre-projector features (on the model's device/dtype)."""
    proj = model.model.multi_modal_projector

    def project(x: torch.Tensor) -> torch.Tensor:
        return proj(x.to(device=model.device, dtype=proj.linear_1.weight.dtype))

    return project


# ---------------------------------------------------------------------------------------------------------------
# LLaVA-NeXT


class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT (anyres): per image the base view (the whole image resized to one crop, G x G tokens, no newline)
    then the unpadded high-resolution grid H' x W' row by row, each row followed by one ``image_newline`` token.

    Newline tokens are the same learned vector for every row; the pruning policy for them is ``prune``'s
    ``newlines`` argument.
    """

    classes = ("LlavaNextForConditionalGeneration",)
    image_kwargs_keys = ("image_sizes",)

    def image_kwargs(self, inputs: Any) -> dict[str, Any]:
        return {"image_sizes": inputs["image_sizes"]}

    def _crops(self, model: Any, inputs: Any) -> tuple[torch.Tensor, list[int]]:
        """The crops the vision tower sees, concatenated `(sum n_i, 3, S, S)`, and ``n_i`` per image."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = model.config
        pv = inputs["pixel_values"]
        n = [
            image_size_to_num_patches(
                image_size=s, grid_pinpoints=cfg.image_grid_pinpoints, patch_size=cfg.vision_config.image_size
            )
            for s in inputs["image_sizes"]
        ]
        if pv.dim() == 5:
            pv = torch.cat([p[:k] for p, k in zip(pv, n)])
        return pv, n

    def _pack(self, model: Any, inputs: Any, per_crop: torch.Tensor, counts: list[int], newline: torch.Tensor) -> list:
        """Run the model's own ``pack_image_features`` on `(sum n_i, T, C)` per-crop values."""
        parts = list(per_crop.split(counts))
        packed, _ = model.model.pack_image_features(
            parts,
            inputs["image_sizes"],
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            image_newline=newline,
        )
        return list(packed) if isinstance(packed, (list, tuple)) else [packed]

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, sink: dict | None = None
    ) -> list[ImageTokens]:
        from transformers.image_processing_utils import select_best_resolution

        cfg = model.config
        feats = self.features(model, inputs, sink)
        pv, counts = self._crops(model, inputs)
        g = cfg.vision_config.image_size // cfg.vision_config.patch_size  # tokens per crop side
        t = g * g
        crop_id = torch.repeat_interleave(torch.cat([torch.arange(k) for k in counts]), t).float()
        rr = torch.arange(t).repeat(sum(counts)) // g
        cc = torch.arange(t).repeat(sum(counts)) % g
        coords = torch.stack([crop_id, rr.float(), cc.float()], -1).view(sum(counts), t, 3)
        packed = self._pack(model, inputs, coords, counts, torch.tensor([-1.0, -1.0, -1.0]))
        crop_px = cfg.vision_config.image_size
        out = []
        for i, (f, p) in enumerate(zip(feats, packed)):
            if p.shape[0] != f.shape[0]:
                raise RuntimeError(f"LLaVA-NeXT layout: {p.shape[0]} packed positions for {f.shape[0]} features")
            h, w = (int(x) for x in inputs["image_sizes"][i])
            crop, r, c = p[:, 0].long(), p[:, 1].long(), p[:, 2].long()
            view = torch.where(crop == 0, VIEW_BASE, VIEW_HIRES)
            view[crop < 0] = VIEW_NEWLINE
            bh, bw = select_best_resolution((h, w), cfg.image_grid_pinpoints)
            npw = bw // crop_px
            sw, sh = bw / w, bh / h  # get_patch_output_size: fit inside the canvas, then centre-pad
            if sw < sh:
                new_w, new_h = bw, min(math.ceil(h * sw), bh)
            else:
                new_h, new_w = bh, min(math.ceil(w * sh), bw)
            px, py = (bw - new_w) // 2, (bh - new_h) // 2
            s = crop_px / g  # canvas pixels per token
            hi = view == VIEW_HIRES
            cy = (crop[hi] - 1) // npw * g + r[hi]  # row / column in the padded canvas grid
            cx = (crop[hi] - 1) % npw * g + c[hi]
            box = torch.full((f.shape[0], 4), float("nan"))
            fx, fy = w / new_w, h / new_h
            box[hi] = torch.stack(
                [(cx * s - px) * fx, (cy * s - py) * fy, ((cx + 1) * s - px) * fx, ((cy + 1) * s - py) * fy], 1
            ).float()
            base = view == VIEW_BASE
            box[base] = torch.stack(
                [c[base] * w / g, r[base] * h / g, (c[base] + 1) * w / g, (r[base] + 1) * h / g], 1
            ).float()
            # rows / columns: base grid as is; the hi-res grid is renumbered from the unpadded top-left corner
            n_base, n_hi = int(base.sum()), int(hi.sum())
            n_nl = int((view == VIEW_NEWLINE).sum())
            row, col = r.clone(), c.clone()
            grids = {VIEW_BASE: (g, g)}
            if n_hi:
                wp = n_hi // n_nl  # hi-res columns W' (one newline per row)
                k = torch.arange(f.shape[0] - n_base)
                row[n_base:] = k // (wp + 1)
                col[n_base:] = k % (wp + 1)
                grids[VIEW_HIRES] = (n_nl, wp)
            col[view == VIEW_NEWLINE] = -1
            geo = TokenGeometry(view, row, col, box, (w, h), grids)
            out.append(ImageTokens(f, geo, view))
        return out

    def vision_internals(
        self, model: Any, inputs: Any, hidden_states: tuple | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pv, counts = self._crops(model, inputs)
        tower, layer = model.model.vision_tower, _layer_index(model.config)
        att, feats, _, _ = clip_internals(tower, pv.to(model.device), layer, hidden_states)
        both = torch.cat([att.cpu()[..., None], feats.cpu()], -1)  # packed together: one layout
        packed = self._pack(model, inputs, both, counts, torch.zeros(both.shape[-1]))
        return [(p[:, 0], p[:, 1:]) for p in packed]

    def merge_internals(self, model: Any, inputs: Any, hidden_states: tuple | None = None) -> list[dict[str, Any]]:
        """VisionZip's internals per crop, packed into the image's token layout like the features: [CLS]
        attention, patch features and keys, and each token's crop (0 = base view, -1 on newline tokens); plus one
        [CLS] feature per crop and the projector."""
        pv, counts = self._crops(model, inputs)
        tower, layer = model.model.vision_tower, _layer_index(model.config)
        att, feats, keys, cls = clip_internals(tower, pv.to(model.device), layer, hidden_states)
        crop = torch.cat([torch.arange(k) for k in counts]).float()[:, None, None].expand(-1, att.shape[1], 1)
        both = torch.cat([crop, att.cpu()[..., None], feats.cpu(), keys.cpu()], -1)
        newline = torch.zeros(both.shape[-1])
        newline[0] = -1.0
        packed = self._pack(model, inputs, both, counts, newline)
        c = feats.shape[-1]
        project = _projector(model)
        return [
            {
                "crops": p[:, 0].round().long(),
                "cls_attention": p[:, 1],
                "vision_features": p[:, 2 : 2 + c],
                "vision_keys": p[:, 2 + c :],
                "cls_feature": cf,
                "projector": project,
            }
            for p, cf in zip(packed, cls.cpu().split(counts))
        ]


# ---------------------------------------------------------------------------------------------------------------
# Qwen2.5-VL


class QwenAdapter(Adapter):
    """Qwen2.5-VL: the merged patch grid of each image, row-major (the merger's output order). Kept tokens keep their
    original 3-D M-RoPE positions: ``get_rope_index`` on the FULL sequence, gathered at the kept positions (rows
    1-3 of a `(4, B, L')` tensor; row 0 is 0..L'-1, read only for masks)."""

    classes = ("Qwen2_5_VLForConditionalGeneration",)
    has_cls = False
    positions = ("original",)
    image_kwargs_keys = ("image_grid_thw",)

    def image_kwargs(self, inputs: Any) -> dict[str, Any]:
        return {"image_grid_thw": inputs["image_grid_thw"]}

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, sink: dict | None = None
    ) -> list[ImageTokens]:
        feats = self.features(model, inputs, sink)
        vc = model.config.vision_config
        m, patch = vc.spatial_merge_size, vc.patch_size
        out = []
        for i, f in enumerate(feats):
            _, gh, gw = (int(x) for x in inputs["image_grid_thw"][i])
            rows, cols = gh // m, gw // m
            rw, rh = gw * patch, gh * patch  # the processor's resized image
            w, h = tuple(image_sizes[i]) if image_sizes else (rw, rh)
            idx = torch.arange(f.shape[0])
            r, c = idx // cols, idx % cols
            px = m * patch  # resized pixels per merged token
            fx, fy = w / rw, h / rh
            box = torch.stack([c * px * fx, r * px * fy, (c + 1) * px * fx, (r + 1) * px * fy], 1).float()
            view = torch.full((f.shape[0],), VIEW_BASE)
            out.append(ImageTokens(f, TokenGeometry(view, r, c, box, (w, h), {VIEW_BASE: (rows, cols)}), view))
        return out

    def position_ids(
        self, model: Any, inputs: Any, keeps: list[torch.Tensor], lmax: int, positions: str
    ) -> torch.Tensor | None:
        ids = inputs["input_ids"]
        am = inputs.get("attention_mask")
        mm = inputs.get("mm_token_type_ids")
        if mm is None:
            mm = (ids == model.config.image_token_id).int()
        rope, _ = model.model.get_rope_index(
            ids.to(model.device),
            mm_token_type_ids=mm.to(model.device),
            image_grid_thw=inputs["image_grid_thw"].to(model.device),
            attention_mask=None if am is None else am.to(model.device),
        )
        rope = rope.cpu()  # (3, B, L)
        pos = torch.zeros(4, len(keeps), lmax, dtype=torch.long)
        for i, kp in enumerate(keeps):
            n = kp.numel()
            pos[0, i, lmax - n :] = torch.arange(n)
            pos[1:, i, lmax - n :] = rope[:, i, kp]
        return pos


ADAPTERS: dict[str, Adapter] = {c: a for a in (LlavaAdapter(), LlavaNextAdapter(), QwenAdapter()) for c in a.classes}


def adapter_for(model: Any) -> Adapter:
    """The adapter of ``model``'s class; ``ValueError`` listing the supported classes otherwise."""
    name = type(model).__name__
    if name not in ADAPTERS:
        raise ValueError(f"model: unsupported model class {name!r}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]
