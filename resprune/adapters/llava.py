"""LLaVA-1.5 (``LlavaForConditionalGeneration``, also the project's offline model): one square grid per image
(LLaVA-1.5: 24 x 24 = 576 tokens from CLIP-L/14 at 336 px; LLaVA-Interleave: 27 x 27 = 729 from SigLIP 384/14 with
the "full" strategy); [CLS]: with a CLIP tower only; positions of the pruned sequence: compact 0..L'-1 (default) or
the original ones. Relies on ``model.model.get_image_features`` and the CLIP tower (transformers 5.x)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..types import VIEW_BASE, TokenGeometry
from ._clip import CLIP_INTERNALS, clip_internals, projector
from .base import Adapter, ImageTokens, field_int, layer_index


def has_cls_token(cfg: Any) -> bool:
    """Whether a LLaVA-style config's vision tower is CLIP (a [CLS] token first; SigLIP has none)."""
    return getattr(cfg.vision_config, "model_type", "") == "clip_vision_model"


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
    size = field_int(ip.size, "shortest_edge")
    crop = ip.crop_size if getattr(ip, "do_center_crop", True) else None
    if size is None:  # fixed (height, width) resize
        new_h, new_w = field_int(ip.size, "height"), field_int(ip.size, "width")
    else:
        short, long_ = (w, h) if w <= h else (h, w)
        ns, nl = int(size), int(size * long_ / short)
        new_w, new_h = (ns, nl) if w <= h else (nl, ns)
    if crop is not None and field_int(crop, "height"):
        ch, cw = field_int(crop, "height"), field_int(crop, "width")
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
    family = "llava"
    offers = CLIP_INTERNALS
    defaults = {"alpha": 0.75}  # ResPrune's paper: alpha = 0.75 for LLaVA-1.5 and LLaVA-NeXT
    _siglip: LlavaAdapter | None = None

    def for_model(self, model: Any) -> LlavaAdapter:
        """A SigLIP tower (LLaVA-Interleave) has no [CLS] token: the variant offers no internals and takes the
        no-[CLS] alpha (0.3, as Qwen2.5-VL in ResPrune's paper and the other SigLIP families here)."""
        if has_cls_token(model.config):
            return self
        if self._siglip is None:
            v = copy.copy(self)
            v.offers = frozenset()
            v.no_internals_reason = "its SigLIP vision tower has no [CLS] token"
            v.defaults = {"alpha": 0.3}
            type(self)._siglip = v
        return self._siglip

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, want: frozenset[str] = frozenset()
    ) -> list[ImageTokens]:
        feats, hs = self.features(model, inputs, hidden_states=bool(want))
        pv = inputs["pixel_values"]
        internals: list[dict[str, Any]] = [{} for _ in feats]
        if want:
            att, fe, keys, cls = clip_internals(
                model.model.vision_tower, pv.to(model.device), layer_index(model.config), hs
            )
            project = projector(model)
            internals = [
                {
                    "cls_attention": a,
                    "vision_features": f,
                    "vision_keys": k,
                    "cls_feature": c[None],
                    "crops": torch.zeros(a.shape[0], dtype=torch.long),
                    "projector": project,
                }
                for a, f, k, c in zip(att.cpu(), fe.cpu(), keys.cpu(), cls.cpu())
            ]
        out = []
        for i, f in enumerate(feats):
            size = tuple(image_sizes[i]) if image_sizes else (int(pv.shape[-1]), int(pv.shape[-2]))
            geo = None
            if processor is not None and hasattr(processor, "image_processor"):
                geo = llava_geometry(processor, size, f.shape[0])
            kw = {k: v for k, v in internals[i].items() if k in want}
            out.append(ImageTokens(f, geo, torch.full((f.shape[0],), VIEW_BASE), kw))
        return out
