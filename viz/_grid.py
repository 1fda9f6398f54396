"""Token-to-pixel drawing geometry: the one place where a token becomes a rectangle on the screen.

Everything here works from a ``TokenGeometry`` (each token's ``(x0, y0, x1, y1)`` box in the ORIGINAL image's
pixels, its view and grid cell), never from a hard-coded grid size. A figure shows each view of the image
(LLaVA's or Qwen's single grid; LLaVA-NeXT's base view and high-res crops) as one *panel*: the image drawn over
the union of the image rectangle and the view's token boxes (boxes can run past the image where the processor
padded it, or cover only part of it where the processor cropped it). Panels sit side by side in one Axes.

To colour tokens, each panel keeps a *token index map*: a raster of the panel in which every pixel holds the
index of the token whose box covers it (``-1``: none). Any per-token value then becomes an image with one
fancy-indexing step, exactly aligned with the boxes, which keeps the animation fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from resprune.recall import mask_coverage, relevant_tokens, token_recall
from resprune.types import VIEW_BASE, VIEW_HIRES, VIEW_NEWLINE, TokenGeometry

VIEW_LABELS = {VIEW_BASE: "base view", VIEW_HIRES: "high-res crops"}
PANEL_GAP = 0.06  # gap between panels, as a share of the first panel's width
BACKGROUND = 0.5  # grey shown where a token box runs past the image (processor padding)


def to_rgb(image: object) -> np.ndarray:
    """Any image (PIL in any mode, or an array) as `(H, W, 3)` float32 RGB in ``[0, 1]``.

    Transparent images (RGBA, LA, P with transparency) are composited over white; grayscale is repeated.

    Args:
        image: a ``PIL.Image.Image``; or an array / tensor `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)`,
            uint8 in ``[0, 255]`` or float in ``[0, 1]``.

    Returns:
        `(H, W, 3)` float32 array.

    >>> to_rgb(Image.new("L", (3, 2), 255)).shape
    (2, 3, 3)
    """
    if isinstance(image, Image.Image):
        im = image
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im)
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit depth grayscale: scale to its own range
            a = np.asarray(im, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
            return np.repeat(a[..., None], 3, axis=2).astype(np.float32)
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or an (H, W[, C]) array, got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0.0, 1.0)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[..., 3:4]
        a = a[..., :3] * alpha + (1.0 - alpha)
    return a


def fit_image(rgb: np.ndarray, geometry: TokenGeometry) -> np.ndarray:
    """Check the image against ``geometry.image_size``; a same-aspect image of another size is resampled.

    Raises:
        ValueError: the aspect ratio differs by more than 2 % (most likely the wrong image).
    """
    h, w = rgb.shape[:2]
    gw, gh = (int(x) for x in geometry.image_size)
    if (w, h) == (gw, gh):
        return rgb
    if abs(math.log((w / h) / (gw / gh))) > 0.02:
        raise ValueError(
            f"image is {w}x{h} but the token geometry was computed for a {gw}x{gh} image; pass the original image"
        )
    im = Image.fromarray((rgb * 255).round().astype(np.uint8)).resize((gw, gh), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def boxes(geometry: TokenGeometry) -> np.ndarray:
    """`(N, 4)` float64 ``(x0, y0, x1, y1)`` token boxes (NaN rows for tokens without a box)."""
    return geometry.box.detach().cpu().double().numpy().reshape(-1, 4)


def drawable(geometry: TokenGeometry) -> np.ndarray:
    """`(N,)` bool: tokens with a finite pixel box (all but LLaVA-NeXT's newline tokens)."""
    view = geometry.view.detach().cpu().numpy()
    return np.isfinite(boxes(geometry)).all(1) & (view != VIEW_NEWLINE)


def newline_tokens(geometry: TokenGeometry) -> np.ndarray:
    """`(N,)` bool: the content-free newline tokens (no pixel box)."""
    return geometry.view.detach().cpu().numpy() == VIEW_NEWLINE


@dataclass(frozen=True)
class Panel:
    """One view of the image, drawn at horizontal data offset ``offset``.

    Attributes:
        view: the view id (``VIEW_BASE`` / ``VIEW_HIRES``).
        label: a short name for the view ("" when the image has one view).
        extent: ``(x0, y0, x1, y1)`` integer pixel bounds (original image pixels) of the image and the view's boxes.
        offset: x offset of the panel in the Axes' data coordinates.
        tokens: `(n,)` indices of the view's tokens.
    """

    view: int
    label: str
    extent: tuple[int, int, int, int]
    offset: float
    tokens: np.ndarray

    @property
    def width(self) -> int:
        return self.extent[2] - self.extent[0]

    @property
    def height(self) -> int:
        return self.extent[3] - self.extent[1]

    @property
    def data_extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` for ``imshow(extent=...)`` (y grows downwards, as in the image)."""
        x0, y0, x1, y1 = self.extent
        return (x0 + self.offset, x1 + self.offset, y1, y0)


def panels(geometry: TokenGeometry) -> list[Panel]:
    """The panels of one image: one per view that has drawable tokens, laid out left to right in view order."""
    w, h = (int(x) for x in geometry.image_size)
    view = geometry.view.detach().cpu().numpy()
    b = boxes(geometry)
    ok = drawable(geometry)
    views = sorted(int(v) for v in np.unique(view[ok]))
    if not views:  # nothing drawable: still show the image
        views = [VIEW_BASE]
    out: list[Panel] = []
    offset = 0.0
    for v in views:
        idx = np.flatnonzero(ok & (view == v))
        x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
        if idx.size:
            x0 = min(x0, float(b[idx, 0].min()))
            y0 = min(y0, float(b[idx, 1].min()))
            x1 = max(x1, float(b[idx, 2].max()))
            y1 = max(y1, float(b[idx, 3].max()))
        ext = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
        label = VIEW_LABELS.get(v, f"view {v}") if len(views) > 1 else ""
        # the panel's left edge (ext[0] + offset) starts where the previous one ended, plus the gap
        if out:
            prev = out[-1]
            offset = prev.extent[2] + prev.offset + PANEL_GAP * out[0].width - ext[0]
        out.append(Panel(v, label, ext, offset, idx))
    return out


def canvas_scale(panel: Panel, max_side: int) -> tuple[int, int]:
    """``(rows, cols)`` of the raster drawn for a panel: its longer side has ``max_side`` pixels."""
    s = max_side / max(panel.width, panel.height, 1)
    return max(1, round(panel.height * s)), max(1, round(panel.width * s))


def _to_canvas(x: np.ndarray, lo: int, span: int, n: int) -> np.ndarray:
    return np.clip(np.round((x - lo) * (n / span)), 0, n).astype(np.int64)


def token_index_map(geometry: TokenGeometry, panel: Panel, shape: tuple[int, int]) -> np.ndarray:
    """`(rows, cols)` int64 raster of the panel: the index of the token covering each pixel, ``-1`` for none.

    Box edges are rounded to raster pixels the same way for every token, so neighbouring boxes tile without gaps.
    """
    rows, cols = shape
    out = np.full(shape, -1, dtype=np.int64)
    if panel.tokens.size == 0:
        return out
    b = boxes(geometry)[panel.tokens]
    x0, y0, x1, y1 = panel.extent
    c0 = _to_canvas(b[:, 0], x0, x1 - x0, cols)
    c1 = _to_canvas(b[:, 2], x0, x1 - x0, cols)
    r0 = _to_canvas(b[:, 1], y0, y1 - y0, rows)
    r1 = _to_canvas(b[:, 3], y0, y1 - y0, rows)
    for i, a, bb, c, d in zip(panel.tokens, r0, r1, c0, c1):
        out[a:bb, c:d] = i
    return out


def image_raster(rgb: np.ndarray, panel: Panel, shape: tuple[int, int]) -> np.ndarray:
    """`(rows, cols, 3)` float32: the image placed on the panel's raster, grey where the panel runs past it."""
    rows, cols = shape
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = panel.extent
    out = np.full((rows, cols, 3), BACKGROUND, dtype=np.float32)
    c0, c1 = _to_canvas(np.array([0.0, w]), x0, x1 - x0, cols)
    r0, r1 = _to_canvas(np.array([0.0, h]), y0, y1 - y0, rows)
    if c1 > c0 and r1 > r0:
        im = Image.fromarray((rgb * 255).round().astype(np.uint8))
        up = (c1 - c0) >= w
        im = im.resize((int(c1 - c0), int(r1 - r0)), Image.Resampling.NEAREST if up else Image.Resampling.BOX)
        out[r0:r1, c0:c1] = np.asarray(im, dtype=np.float32) / 255.0
    return out


def box_vertices(geometry: TokenGeometry, idx: np.ndarray, offsets: dict[int, float]) -> np.ndarray:
    """`(n, 4, 2)` corners of the boxes of tokens ``idx`` in data coordinates (``offsets``: view -> x offset).

    Tokens without a box, or whose view is not drawn, are left out.
    """
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    view = geometry.view.detach().cpu().numpy()
    ok = drawable(geometry)
    idx = idx[ok[idx] & np.isin(view[idx], list(offsets))] if idx.size else idx
    b = boxes(geometry)[idx]
    dx = np.array([offsets[int(v)] for v in view[idx]], dtype=np.float64)
    x0, y0, x1, y1 = b[:, 0] + dx, b[:, 1], b[:, 2] + dx, b[:, 3]
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], 1)


__all__ = [
    "Panel",
    "box_vertices",
    "boxes",
    "canvas_scale",
    "drawable",
    "fit_image",
    "image_raster",
    "mask_coverage",
    "newline_tokens",
    "panels",
    "relevant_tokens",
    "to_rgb",
    "token_index_map",
    "token_recall",
]
