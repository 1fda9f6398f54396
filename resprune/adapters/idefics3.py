"""SmolVLM (``Idefics3ForConditionalGeneration``: SmolVLM-256M / 500M / 2.2B-Instruct): the image's longest edge is
resized (to a multiple of the tile size M), split into R x C tiles of M x M pixels, plus the whole image resized to
one M x M tile (the global image, last); the SigLIP tower sees each tile, the connector's pixel shuffle merges
s x s patches (s = ``scale_factor``) into one token: G x G tokens per tile (SmolVLM: 512 px / 16 px = 32 patches,
s = 4, G = 8, 64 tokens). [CLS]: none (SigLIP); positions: 1-D RoPE, compact (default) or original.

Placeholder order (``Idefics3Processor``): the tiles row by row, each tile's G x G tokens row-major (the text tags
``<row_i_col_j>`` and ``\\n`` between them are not visual tokens), then the global image's G x G tokens. Relies on
``model.model.get_image_features`` (``pixel_attention_mask``) and the processor's tile tags (transformers 5.x).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..types import VIEW_BASE, VIEW_HIRES, TokenGeometry
from .base import Adapter, ImageTokens

_ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")


def tile_grid(processor: Any, input_ids: torch.Tensor) -> tuple[int, int]:
    """``(R, C)`` tiles of the image in one sample's ``input_ids`` `(L,)`, from its ``<row_i_col_j>`` tags
    (``(0, 0)``: the global image only)."""
    tok = getattr(processor, "tokenizer", processor)
    rows = cols = 0
    for i in torch.unique(input_ids).tolist():
        m = _ROW_COL.fullmatch(tok.convert_ids_to_tokens(int(i)) or "")
        if m:
            rows, cols = max(rows, int(m.group(1))), max(cols, int(m.group(2)))
    return rows, cols


def idefics3_geometry(
    tiles: tuple[int, int], g: int, tile_px: int, image_size: tuple[int, int] | None
) -> TokenGeometry:
    """Pixel box, view and grid cell of every visual token of one SmolVLM image.

    Args:
        tiles: ``(R, C)`` tiles (``(0, 0)``: the global image only).
        g: G, tokens per tile side (patches per side / scale factor).
        tile_px: M, the tile size in pixels.
        image_size: ``(width, height)`` of the original image (None: the resized image, C * M x R * M).

    Tiles cover the resized image exactly (the processor stretches the image to R * M x C * M), so a tile token's
    box is its s x s patch block mapped back to the original image; the global image covers the whole image.
    """
    r_t, c_t = tiles
    rw, rh = (c_t * tile_px, r_t * tile_px) if r_t else (tile_px, tile_px)
    w, h = image_size if image_size is not None else (rw, rh)
    t = g * g
    k = torch.arange(t)
    r, c = k // g, k % g
    views, rows, cols, boxes = [], [], [], []
    s = tile_px / g  # resized pixels per token side
    fx, fy = w / rw, h / rh
    for tile in range(r_t * c_t):
        tr, tc = tile // c_t, tile % c_t
        gr, gc = tr * g + r, tc * g + c  # cell in the R*G x C*G grid of all tiles
        views.append(torch.full((t,), VIEW_HIRES))
        rows.append(gr)
        cols.append(gc)
        boxes.append(torch.stack([gc * s * fx, gr * s * fy, (gc + 1) * s * fx, (gr + 1) * s * fy], 1))
    views.append(torch.full((t,), VIEW_BASE))
    rows.append(r)
    cols.append(c)
    boxes.append(torch.stack([c * w / g, r * h / g, (c + 1) * w / g, (r + 1) * h / g], 1))
    grids = {VIEW_BASE: (g, g)}
    if r_t:
        grids[VIEW_HIRES] = (r_t * g, c_t * g)
    return TokenGeometry(torch.cat(views), torch.cat(rows), torch.cat(cols), torch.cat(boxes).float(), (w, h), grids)


class Idefics3Adapter(Adapter):
    """SmolVLM / Idefics3: per image the R x C tiles (view ``VIEW_HIRES``, rows / columns in the grid of all tiles)
    then the global image (``VIEW_BASE``). No internals: SigLIP has no [CLS] token, and the connector's pixel
    shuffle has no per-token pre-projector feature of the LLaVA kind."""

    classes = ("Idefics3ForConditionalGeneration",)
    family = "idefics3"
    image_kwargs_keys = ("pixel_attention_mask",)
    no_internals_reason = "its SigLIP vision tower has no [CLS] token (and no pre-projector feature per token)"
    # no paper value for SmolVLM; like Qwen2.5-VL (no [CLS] prior, merged patch tokens), the paper's 0.3
    defaults = {"alpha": 0.3}

    def images(
        self, model: Any, processor: Any, inputs: Any, image_sizes: list | None, want: frozenset[str] = frozenset()
    ) -> list[ImageTokens]:
        feats, _ = self.features(model, inputs)
        vc = model.config.vision_config
        g = vc.image_size // vc.patch_size // model.config.scale_factor
        out = []
        for i, f in enumerate(feats):
            n_tiles = f.shape[0] // (g * g)
            if n_tiles * g * g != f.shape[0]:
                raise RuntimeError(f"SmolVLM layout: {f.shape[0]} features are not whole tiles of {g * g}")
            geo = None
            if processor is not None:
                tiles = tile_grid(processor, inputs["input_ids"][i])
                if (tiles[0] * tiles[1] + 1 if tiles[0] else 1) != n_tiles:
                    raise ValueError(
                        f"inputs: sample {i} has {n_tiles} image tiles but its prompt tags {tiles[0]} x {tiles[1]} "
                        "tiles + the global image (pass the processor that made the inputs)"
                    )
                size = tuple(image_sizes[i]) if image_sizes else None
                geo = idefics3_geometry(tiles, g, vc.image_size, size)
                view = geo.view
            else:
                view = torch.full((f.shape[0],), VIEW_HIRES)
                view[-g * g :] = VIEW_BASE
            out.append(ImageTokens(f, geo, view))
        return out
