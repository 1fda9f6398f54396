"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): the merged patch grid (2 x 2 merger), any size; no [CLS];
positions: the ORIGINAL 3-D M-RoPE positions, gathered. Relies on ``model.model.get_image_features`` and
``model.model.get_rope_index`` (transformers 5.x)."""

from __future__ import annotations

from typing import Any

import torch

from ..types import VIEW_BASE, TokenGeometry
from .base import Adapter, ImageTokens


class QwenAdapter(Adapter):
    """Qwen2.5-VL: the merged patch grid of each image, row-major (the merger's output order). Kept tokens keep their
    original 3-D M-RoPE positions: ``get_rope_index`` on the FULL sequence, gathered at the kept positions (rows
    1-3 of a `(4, B, L')` tensor; row 0 is 0..L'-1, read only for masks)."""

    classes = ("Qwen2_5_VLForConditionalGeneration",)
    family = "qwen2_5_vl"
    positions = ("original",)
    image_kwargs_keys = ("image_grid_thw",)
    no_internals_reason = "its vision tower has no [CLS] token (and no pre-merger feature hook)"
    defaults = {"alpha": 0.3}  # ResPrune's paper: alpha = 0.3 for Qwen2.5-VL

    def load_processor(self, target: str, **kw: Any) -> Any:
        """Images-only processor: ``AutoProcessor`` needs torchvision for Qwen's video processor."""
        from ..processors import QwenImageProcessor

        return QwenImageProcessor.from_pretrained(target, **kw)

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, want: frozenset[str] = frozenset()
    ) -> list[ImageTokens]:
        feats, _ = self.features(model, inputs)
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
