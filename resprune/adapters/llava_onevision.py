"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``: llava-onevision-qwen2-0.5b/7b-ov): base view + the
unpadded any-resolution grid, bilinearly downsampled when it exceeds ``anyres_max_9`` (more than 9 crops' worth of
tokens by a factor 1.1), one ``image_newline`` after each grid row; [CLS]: none (SigLIP); positions: 1-D RoPE,
compact (default) or original.

Per image (one image per sample): 1. the base view, the whole image resized to one crop (OV-0.5B: SigLIP 384/14,
27 x 27 = 729 tokens, strategy "full"), row-major, no newline; 2. the hi-res grid H' x W' (after unpadding and the
``anyres_max`` interpolation), row by row, each row followed by the newline token. A sample with several images
gets the base view of each plus one newline (no crops). The adapter runs the model's own ``pack_image_features`` on
per-crop canvas coordinates (without the interpolation) to find the unpadded region, so the geometry follows the
model's unpadding whatever the image size and pinpoints. Relies on ``model.model.get_image_features`` /
``pack_image_features`` and ``transformers.image_processing_utils.select_best_resolution`` (transformers 5.x).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE, TokenGeometry
from .base import Adapter, ImageTokens, anyres_canvas


def anyres_grid(cur_h: int, cur_w: int, g: int, aspect: str) -> tuple[int, int]:
    """The hi-res grid ``(H', W')`` after OneVision's ``anyres_max_M`` rule: an unpadded ``cur_h x cur_w`` grid is
    interpolated down by ``ratio = sqrt(cur_h * cur_w / (M * g * g))`` when ``ratio > 1.1``."""
    max_crops = int(aspect.removeprefix("anyres_max_"))
    ratio = math.sqrt(cur_h * cur_w / (max_crops * g * g))
    if ratio > 1.1:
        return int(cur_h // ratio), int(cur_w // ratio)
    return cur_h, cur_w


class LlavaOnevisionAdapter(Adapter):
    """LLaVA-OneVision: the base view (``VIEW_BASE``, G x G), then the hi-res grid (``VIEW_HIRES``, rows / columns of
    the downsampled grid) with one ``VIEW_NEWLINE`` per row. Each hi-res token's box is the region of the unpadded
    canvas it was interpolated from, mapped back to the original image. No internals: SigLIP has no [CLS] token."""

    classes = ("LlavaOnevisionForConditionalGeneration",)
    family = "llava_onevision"
    image_kwargs_keys = ("image_sizes",)
    no_internals_reason = "its SigLIP vision tower has no [CLS] token"
    defaults = {"alpha": 0.3}  # no paper value for OneVision; no [CLS] prior, like Qwen2.5-VL: the paper's 0.3

    def load_processor(self, target: str, **kw: Any) -> Any:
        """Images-only processor: ``AutoProcessor`` needs torchvision for OneVision's video processor."""
        from ..processors import OnevisionImageProcessor

        return OnevisionImageProcessor.from_pretrained(target, **kw)

    def image_kwargs(self, inputs: Any) -> dict[str, Any]:
        kw = {"image_sizes": inputs["image_sizes"]}
        if inputs.get("batch_num_images") is not None:
            kw["batch_num_images"] = inputs["batch_num_images"]
        return kw

    def _counts(self, model: Any, inputs: Any) -> list[int]:
        """Crops per image (base view included): 1 for images of a multi-image sample."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        cfg = model.config
        sizes = inputs["image_sizes"]
        per_sample = inputs.get("batch_num_images")
        single = [True] * len(sizes) if per_sample is None else [int(n) == 1 for n in per_sample for _ in range(n)]
        return [
            image_size_to_num_patches(
                image_size=s, grid_pinpoints=cfg.image_grid_pinpoints, patch_size=cfg.vision_config.image_size
            )
            if one
            else 1
            for s, one in zip(sizes, single)
        ]

    def _canvas_region(self, model: Any, size: Any, n_crops: int, g: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` in canvas tokens of the unpadded hi-res region of one image: the model's
        ``pack_image_features`` on per-crop canvas coordinates, with the interpolation switched off."""
        cfg = model.config
        from transformers.image_processing_utils import select_best_resolution

        h, w = (int(x) for x in size)
        _, bw = select_best_resolution((h, w), cfg.image_grid_pinpoints)
        npw = bw // cfg.vision_config.image_size
        t = g * g
        crop = torch.arange(1, n_crops).repeat_interleave(t)
        k = torch.arange(t).repeat(n_crops - 1)
        rows = ((crop - 1) // npw * g + k // g).float()
        cols = ((crop - 1) % npw * g + k % g).float()
        coords = torch.stack([rows, cols], -1).view(n_crops - 1, t, 2)
        coords = torch.cat([torch.zeros(1, t, 2), coords])  # the base view
        packed, _ = model.model.pack_image_features(
            [coords], [size], image_newline=torch.tensor([-1.0, -1.0]), vision_aspect_ratio="anyres_max_1000000"
        )
        hi = packed[0][t:]
        hi = hi[hi[:, 0] >= 0]
        top, left = int(hi[:, 0].min()), int(hi[:, 1].min())
        return top, left, int(hi[:, 0].max()) - top + 1, int(hi[:, 1].max()) - left + 1

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, want: frozenset[str] = frozenset()
    ) -> list[ImageTokens]:

        cfg = model.config
        feats, _ = self.features(model, inputs)
        counts = self._counts(model, inputs)
        crop_px = cfg.vision_config.image_size
        g = crop_px // cfg.vision_config.patch_size  # tokens per crop side
        aspect = getattr(cfg, "vision_aspect_ratio", None) or "anyres_max_9"
        out = []
        for i, (f, n_crops) in enumerate(zip(feats, counts)):
            h, w = (int(x) for x in inputs["image_sizes"][i])
            n = f.shape[0]
            base = torch.arange(g * g)
            if n_crops == 1:  # an image of a multi-image sample: the base view + one newline
                view = torch.cat([torch.full((g * g,), VIEW_BASE), torch.tensor([VIEW_NEWLINE])])
                row = torch.cat([base // g, torch.tensor([0])])
                col = torch.cat([base % g, torch.tensor([-1])])
                hp = wp = 0
            else:
                top, left, cur_h, cur_w = self._canvas_region(model, inputs["image_sizes"][i], n_crops, g)
                hp, wp = anyres_grid(cur_h, cur_w, g, aspect)
                k = torch.arange(hp * (wp + 1))
                r, c = k // (wp + 1), k % (wp + 1)
                nl = c == wp
                view = torch.cat([torch.full((g * g,), VIEW_BASE), torch.where(nl, VIEW_NEWLINE, VIEW_HIRES)])
                row = torch.cat([base // g, r])
                col = torch.cat([base % g, torch.where(nl, -1, c)])
            if view.numel() != n:
                raise RuntimeError(f"LLaVA-OneVision layout: {view.numel()} positions for {n} features")
            box = torch.full((n, 4), float("nan"))
            b = view == VIEW_BASE
            box[b] = torch.stack(
                [col[b] * w / g, row[b] * h / g, (col[b] + 1) * w / g, (row[b] + 1) * h / g], 1
            ).float()
            grids = {VIEW_BASE: (g, g)}
            if hp:
                bh, bw, new_h, new_w, px, py = anyres_canvas(h, w, cfg.image_grid_pinpoints)
                s = crop_px / g  # canvas pixels per canvas token
                hi = view == VIEW_HIRES
                y0 = (top + row[hi] * cur_h / hp) * s - py  # the canvas rows this downsampled token covers
                y1 = (top + (row[hi] + 1) * cur_h / hp) * s - py
                x0 = (left + col[hi] * cur_w / wp) * s - px
                x1 = (left + (col[hi] + 1) * cur_w / wp) * s - px
                fx, fy = w / new_w, h / new_h
                box[hi] = torch.stack([x0 * fx, y0 * fy, x1 * fx, y1 * fy], 1).float()
                grids[VIEW_HIRES] = (hp, wp)
            geo = TokenGeometry(view, row, col, box, (w, h), grids)
            out.append(ImageTokens(f, geo, view))
        return out
