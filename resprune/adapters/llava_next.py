"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, anyres): base view + unpadded high-resolution grid with one
``image_newline`` per hi-res row; [CLS]: yes; positions: compact (default) or original.

The adapter does not re-implement the model's reshape/unpad: it runs the model's own ``pack_image_features`` on
per-crop coordinate tensors (crop, row, column) and on the per-crop CLIP internals, so geometry and internals line
up with the features token by token whatever the image size and pinpoints. Relies on
``transformers.models.llava_next.modeling_llava_next.image_size_to_num_patches``,
``transformers.image_processing_utils.select_best_resolution`` and ``model.model.pack_image_features``
(transformers 5.x).
"""

from __future__ import annotations

from typing import Any

import torch

from ..types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE, TokenGeometry
from ._clip import CLIP_INTERNALS, clip_internals, projector
from .base import Adapter, ImageTokens, anyres_canvas, layer_index


class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT (anyres): per image the base view (the whole image resized to one crop, G x G tokens, no newline)
    then the unpadded high-resolution grid H' x W' row by row, each row followed by one ``image_newline`` token.

    Newline tokens are the same learned vector for every row; the pruning policy for them is ``prune``'s
    ``newlines`` argument.
    """

    classes = ("LlavaNextForConditionalGeneration",)
    family = "llava_next"
    image_kwargs_keys = ("image_sizes",)
    offers = CLIP_INTERNALS
    defaults = {"alpha": 0.75}  # ResPrune's paper: alpha = 0.75 for LLaVA-1.5 and LLaVA-NeXT

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
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, want: frozenset[str] = frozenset()
    ) -> list[ImageTokens]:

        cfg = model.config
        feats, hs = self.features(model, inputs, hidden_states=bool(want))
        pv, counts = self._crops(model, inputs)
        internals = self._internals(model, inputs, pv, counts, hs) if want else [{} for _ in feats]
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
            bh, bw, new_h, new_w, px, py = anyres_canvas(h, w, cfg.image_grid_pinpoints)
            npw = bw // crop_px
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
            out.append(ImageTokens(f, geo, view, {k: v for k, v in internals[i].items() if k in want}))
        return out

    def _internals(
        self, model: Any, inputs: Any, pv: torch.Tensor, counts: list[int], hidden_states: Any
    ) -> list[dict[str, Any]]:
        """Per image, the CLIP internals per crop packed into the image's token layout like the features: [CLS]
        attention, patch features and keys, and each token's crop (0 = base view; -1 and zeros on newline tokens);
        plus one [CLS] feature per crop and the projector."""
        tower, layer = model.model.vision_tower, layer_index(model.config)
        att, feats, keys, cls = clip_internals(tower, pv.to(model.device), layer, hidden_states)
        crop = torch.cat([torch.arange(k) for k in counts]).float()[:, None, None].expand(-1, att.shape[1], 1)
        both = torch.cat([crop, att.cpu()[..., None], feats.cpu(), keys.cpu()], -1)
        newline = torch.zeros(both.shape[-1])
        newline[0] = -1.0
        packed = self._pack(model, inputs, both, counts, newline)
        c = feats.shape[-1]
        project = projector(model)
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
