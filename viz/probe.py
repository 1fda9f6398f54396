"""Which token is under a pixel, and what the selection did with it: ``token_at`` (for an app's click handler).

Two coordinate systems are accepted:

- the ORIGINAL image's pixels (the default): ``(x, y)`` = (column, row), origin at the top-left corner, as
  ``PIL`` indexes the image the model saw and as gradio's ``SelectData.index`` reports a click on a ``gr.Image``
  that shows that image (gradio maps the click to the image's natural size, whatever size it is displayed at);
- a rendered figure's pixels: pass ``figure=`` the PIL image that ``viz.to_image`` made from an overlay figure
  (kept tokens, relevance, greedy step, method grid); its ``info["viz_panels"]`` says where each image panel
  landed, and ``(x, y)`` are that image's (column, row).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from resprune.residual import residual_energies
from resprune.types import PruneResult

from . import _grid
from ._canvas import PANELS_KEY, relevance_of, resolve, tokens_of


def _coord(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number (a pixel column/row), got {type(v).__name__}")
    if not math.isfinite(float(v)):
        raise ValueError(f"{name} must be finite, got {v}")
    return float(v)


def _from_figure(figure: Image.Image, x: float, y: float) -> tuple[float, float, int] | None:
    """Figure-image pixel (centre) -> ``(x, y, view)`` in original image pixels, or None off every panel."""
    if not isinstance(figure, Image.Image):
        raise TypeError(f"figure must be the PIL image returned by viz.to_image, got {type(figure).__name__}")
    panels = figure.info.get(PANELS_KEY)
    if not panels:
        raise ValueError(
            "figure has no token panels: pass the image viz.to_image made from plot_kept_tokens, plot_relevance, "
            "plot_greedy_step or plot_method_grid (kept as returned: a re-encoded copy loses this record)"
        )
    for p in panels:
        left, top, right, bottom = p["pixels"]
        if left <= x < right and top <= y < bottom:
            x0, y0, x1, y1 = p["extent"]
            return x0 + (x - left) / (right - left) * (x1 - x0), y0 + (y - top) / (bottom - top) * (y1 - y0), p["view"]
    return None


def token_at(
    result: PruneResult,
    x: float,
    y: float,
    *,
    index: int = 0,
    view: int | None = None,
    figure: Image.Image | None = None,
) -> dict[str, Any] | None:
    """The token whose pixel box holds pixel ``(x, y)``, and its facts; None where no token covers it.

    Args:
        result: the ``PruneResult``.
        x: pixel column (the pixel's centre ``x + 0.5`` is looked up), in the coordinate system chosen by ``figure``.
        y: pixel row.
        index: which image of the result.
        view: only tokens of this view (``resprune.types.VIEW_BASE`` / ``VIEW_HIRES``); None: the smallest box
            that holds the pixel (on LLaVA-NeXT the high-res token, not the coarse base-view one). With ``figure``,
            the view of the panel clicked.
        figure: None: ``(x, y)`` are ORIGINAL image pixels; else the PIL image ``viz.to_image`` returned for an
            overlay figure of this result, and ``(x, y)`` are pixels of that image.

    Returns:
        ``{"index", "view", "row", "col", "box", "kept", "pick", "relevance", "energy_at_pick", "energy_left"}``:
        the token index in the image's `(N,)` order, its view's name, grid cell and ``(x0, y0, x1, y1)`` box in
        original pixels; whether it was kept and its pick order (1 = first, None if pruned); its text relevance
        in [0, 1] (None without text); its residual energy ``||v - P_S v||^2`` when it was picked (None if pruned
        or unknown); and the share of its own energy ``||v||^2`` left outside the span of all K picks (0 when
        kept; None without the token vectors).
    """
    sel, geom = resolve(result, index)
    px, py = _coord("x", x) + 0.5, _coord("y", y) + 0.5
    if figure is not None:
        mapped = _from_figure(figure, px, py)
        if mapped is None:
            return None
        px, py, clicked = mapped
        if view is not None and view != clicked:
            return None
        view = clicked
    views = geom.view.detach().cpu().numpy()
    if view is not None and not (isinstance(view, (int, np.integer)) and view in set(views.tolist())):
        raise ValueError(f"view must be one of the image's views {sorted(set(views.tolist()))} or None, got {view!r}")
    b = _grid.boxes(geom)
    ok = _grid.drawable(geom)
    with np.errstate(invalid="ignore"):
        inside = ok & (b[:, 0] <= px) & (px < b[:, 2]) & (b[:, 1] <= py) & (py < b[:, 3])
    if view is not None:
        inside &= views == view
    cand = np.flatnonzero(inside)
    if cand.size == 0:
        return None
    area = (b[cand, 2] - b[cand, 0]) * (b[cand, 3] - b[cand, 1])
    i = int(cand[np.argmin(area)])  # argmin: the first (lowest index) of equal areas

    order = sel.order.detach().cpu().numpy().astype(np.int64)
    where = np.flatnonzero(order == i)
    t = int(where[0]) if where.size else None
    kept = bool(np.isin(i, sel.keep_idx.detach().cpu().numpy()))
    rel, _ = relevance_of(result, sel, index)
    vecs = tokens_of(result, index, None, sel.n_tokens)
    energy_at_pick = energy_left = None
    if t is not None and sel.energy is not None and sel.energy.numel() == order.size:
        energy_at_pick = float(sel.energy[t])
    if vecs is not None:
        steps = [order.size] if t is None else [t, order.size]
        e = residual_energies(vecs, torch.from_numpy(order), steps=steps)[:, i].numpy()
        if t is not None and energy_at_pick is None:
            energy_at_pick = float(e[0])
        norm2 = float(vecs[i].double().pow(2).sum())
        energy_left = float(e[-1] / norm2) if norm2 > 0 else 0.0
    return {
        "index": i,
        "view": _grid.VIEW_LABELS.get(int(views[i]), f"view {int(views[i])}"),
        "row": int(geom.row[i]),
        "col": int(geom.col[i]),
        "box": tuple(float(v) for v in b[i]),
        "kept": kept,
        "pick": None if t is None else t + 1,
        "relevance": None if rel is None else float(rel[i]),
        "energy_at_pick": energy_at_pick,
        "energy_left": energy_left,
    }


__all__ = ["token_at"]
