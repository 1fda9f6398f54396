"""Figures of what a pruning method kept: overlays, residual-energy curves, relevance, greedy steps, comparisons.

Every function takes data (an image, a ``PruneResult`` / ``Selection``), never a model, and returns a
``matplotlib.figure.Figure``: it draws into ``ax`` when one is given (returning ``ax.figure``), else into a new
``Figure()`` built directly, never through pyplot (a web server would keep pyplot's figures alive). No global
``rcParams`` change and no file I/O: saving is the caller's job. Colour maps are perceptually uniform (viridis,
magma); lines use the Okabe-Ito colour-blind-safe palette. Token boxes come from ``TokenGeometry`` through
``viz._grid``, so the same code draws LLaVA's square grid, LLaVA-NeXT's base view + high-res crops (two panels;
the newline tokens, which have no pixels, are counted in the title) and Qwen2.5-VL's dynamic merged grid.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from PIL import Image

from resprune.relevance import map_relevance, text_relevance
from resprune.types import PruneResult, Selection, TokenGeometry

from . import _grid
from ._energy import residual_energies

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
KEPT_COLOR = "#E69F00"  # orange: kept-token outlines over the photo
PICK_COLOR = "#D55E00"  # vermillion: greedy picks so far
NEXT_COLOR = "#56B4E9"  # sky blue: the next greedy pick; ground-truth object outline
LINESTYLES = ("-", "--", "-.", ":")
TITLE_SIZE = 10
LOG_FLOOR = 1e-4  # log-scale heat maps and curves show values down to this share of their maximum
WIDTH_IN = 5.0  # default figure width in inches: 500 px at the default dpi of 100
DPI = 100


# ---------------------------------------------------------------------------------------------------------------
# Input handling


def _resolve(result: PruneResult, index: int) -> tuple[Selection, TokenGeometry]:
    if not isinstance(result, PruneResult):
        raise TypeError(f"result must be a resprune.PruneResult, got {type(result).__name__}")
    n = len(result.selections)
    if not -n <= index < n:
        raise IndexError(f"index={index} but the result holds {n} image(s)")
    if len(result.geometry) != n:
        raise ValueError(f"result has {n} selections but {len(result.geometry)} token geometries; need one per image")
    sel, geom = result.selections[index], result.geometry[index]
    if geom.n_tokens != sel.n_tokens:
        raise ValueError(f"selection is over N={sel.n_tokens} tokens but the geometry has {geom.n_tokens} tokens")
    return sel, geom


def _selection_of(x: PruneResult | Selection, index: int) -> Selection:
    if isinstance(x, Selection):
        return x
    if isinstance(x, PruneResult):
        return _resolve(x, index)[0] if x.geometry else x.selections[index]
    raise TypeError(f"expected a PruneResult or a Selection, got {type(x).__name__}")


def _tokens_of(result: PruneResult | Selection, index: int, tokens: torch.Tensor | None, n: int):  # noqa: ANN202
    """The `(N, D)` token vectors: ``tokens`` if given, else ``result.visual_tokens[index]``, else None."""
    if tokens is None and isinstance(result, PruneResult) and len(result.visual_tokens) > index:
        tokens = result.visual_tokens[index]
    if tokens is None:
        return None
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[0] != n:
        raise ValueError(f"tokens must be a (N={n}, D) tensor, got {getattr(tokens, 'shape', type(tokens).__name__)}")
    return tokens.detach().cpu().float()


def _sample_of(result: PruneResult, index: int) -> int | None:
    """The sample (prompt) of image ``index``: one image per sample, or a single sample; else unknown."""
    n_q = len(result.query_tokens)
    if n_q == len(result.selections):
        return index
    return 0 if n_q == 1 else None


def _query_words(result: PruneResult, index: int) -> tuple[str, ...]:
    i = _sample_of(result, index) if len(result.query_words) == len(result.query_tokens) else None
    if i is None and len(result.query_words) == len(result.selections):
        i = index
    return tuple(result.query_words[i]) if i is not None and i < len(result.query_words) else ()


def _kept(sel: Selection, n: int) -> np.ndarray:
    kept = np.zeros(n, dtype=bool)
    kept[sel.keep_idx.detach().cpu().numpy().astype(np.int64)] = True
    return kept


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().double().numpy().reshape(-1)


def _percent(x: float) -> str:
    """A share as a percentage that stays informative near 0 (``0.0%`` only for exactly 0)."""
    if x == 0 or x >= 1e-3:
        return f"{100 * x:.1f}%"
    return f"{100 * x:.0e}%"


def _short(text: str, width: int = 60) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder="…") or '""'


# ---------------------------------------------------------------------------------------------------------------
# Drawing tokens over the image


def _layout_size(geom: TokenGeometry, title_lines: int, width: float = WIDTH_IN, colorbar: bool = False):  # noqa: ANN202
    ps = _grid.panels(geom)
    w = ps[-1].extent[2] + ps[-1].offset - (ps[0].extent[0] + ps[0].offset)
    h = max(p.height for p in ps) * (1.1 if len(ps) > 1 else 1.0)
    plot_w = width - (0.9 if colorbar else 0.1)
    height = plot_w * h / w + 0.2 * title_lines + 0.15
    return (width, float(np.clip(height, 2.6 if colorbar else 1.6, 9.0)))


def _new_axes(ax: Axes | None, figsize: tuple[float, float] | None, default: tuple[float, float]):  # noqa: ANN202
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax.figure, ax
    fig = Figure(figsize=figsize or default, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


class _TokenCanvas:
    """The panels of one image in one Axes: an image layer (dimmed where not kept), a heat layer, token outlines."""

    def __init__(self, ax: Axes, image: object, geom: TokenGeometry, *, max_side: int = 640) -> None:
        self.ax, self.geom = ax, geom
        rgb = _grid.fit_image(_grid.to_rgb(image), geom)
        self.rgb = rgb
        self.panels = _grid.panels(geom)
        self.offsets = {p.view: p.offset for p in self.panels}
        self.shapes = [_grid.canvas_scale(p, max_side) for p in self.panels]
        self.maps = [_grid.token_index_map(geom, p, s) for p, s in zip(self.panels, self.shapes)]
        self.base = [_grid.image_raster(rgb, p, s) for p, s in zip(self.panels, self.shapes)]
        self.image_layers: list = []
        self.heat_layers: list = []
        multi = len(self.panels) > 1
        y0 = min(p.extent[1] for p in self.panels)
        y1 = max(p.extent[3] for p in self.panels)
        head = 0.1 * (y1 - y0) if multi else 0.0  # room for the panel labels
        first, last = self.panels[0], self.panels[-1]
        ax.set_xlim(first.extent[0] + first.offset, last.extent[2] + last.offset)
        ax.set_ylim(y1, y0 - head)  # image rows grow downwards
        ax.set_aspect("equal")
        ax.set_axis_off()
        self._labels = []
        if multi:
            for p in self.panels:
                cx = p.offset + (p.extent[0] + p.extent[2]) / 2
                self._labels.append(ax.text(cx, y0 - 0.15 * head, p.label, ha="center", va="bottom", fontsize=9))
        self._crop_outlines()

    # -- geometry in display units ---------------------------------------------------------------------------------
    def points_per_pixel(self) -> float:
        """Screen points per image pixel (approximate until the layout engine runs)."""
        fig = self.ax.figure
        pos = self.ax.get_position()
        x0, x1 = self.ax.get_xlim()
        y1, y0 = self.ax.get_ylim()
        w_pt = pos.width * fig.get_figwidth() * 72
        h_pt = pos.height * fig.get_figheight() * 72
        return min(w_pt / max(x1 - x0, 1e-9), h_pt / max(y1 - y0, 1e-9))

    def box_points(self) -> float:
        """Median token box side, in points."""
        ok = _grid.drawable(self.geom)
        if not ok.any():
            return 10.0
        b = _grid.boxes(self.geom)[ok]
        side = np.median(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
        return float(side) * self.points_per_pixel()

    def line_width(self) -> float:
        return float(np.clip(0.09 * self.box_points(), 0.3, 1.4))

    # -- layers ------------------------------------------------------------------------------------------------------
    def _dimmed(self, i: int, kept: np.ndarray | None, dim: float) -> np.ndarray:
        if kept is None:
            return self.base[i]
        m = self.maps[i]
        on = np.zeros(m.shape, dtype=bool)
        ok = m >= 0
        on[ok] = kept[m[ok]]
        return self.base[i] * np.where(on, 1.0, dim).astype(np.float32)[..., None]

    def show_image(self, kept: np.ndarray | None = None, dim: float = 0.3) -> None:
        """Draw the image in each panel; pixels not covered by a token in ``kept`` `(N,)` are scaled by ``dim``."""
        for i, p in enumerate(self.panels):
            im = self.ax.imshow(self._dimmed(i, kept, dim), extent=p.data_extent, interpolation="antialiased", zorder=0)
            self.image_layers.append(im)

    def set_kept(self, kept: np.ndarray | None, dim: float) -> None:
        for i, im in enumerate(self.image_layers):
            im.set_data(self._dimmed(i, kept, dim))

    def _values(self, i: int, values: np.ndarray) -> np.ma.MaskedArray:
        m = self.maps[i]
        out = np.full(m.shape, np.nan)
        ok = m >= 0
        out[ok] = values[m[ok]]
        return np.ma.masked_invalid(out)

    def show_values(self, values: np.ndarray, *, cmap: str, norm: Normalize, alpha: float):  # noqa: ANN201
        """A heat layer: token ``i`` painted with ``values[i]`` (NaN: transparent). Returns the first AxesImage."""
        cm = colormaps[cmap].with_extremes(bad=(0, 0, 0, 0))
        for i, p in enumerate(self.panels):
            im = self.ax.imshow(
                self._values(i, values),
                extent=p.data_extent,
                cmap=cm,
                norm=norm,
                alpha=alpha,
                interpolation="nearest",
                zorder=1,
            )
            self.heat_layers.append(im)
        return self.heat_layers[0]

    def set_values(self, values: np.ndarray) -> None:
        for i, im in enumerate(self.heat_layers):
            im.set_data(self._values(i, values))

    def outline(self, idx: np.ndarray, color: str, *, lw: float | None = None, ls: str = "-", zorder: float = 3):  # noqa: ANN201
        """Outline the boxes of tokens ``idx``; returns the PolyCollection (update it with ``set_verts``)."""
        verts = _grid.box_vertices(self.geom, np.asarray(idx), self.offsets)
        pc = PolyCollection(
            list(verts),
            facecolors="none",
            edgecolors=color,
            linewidths=self.line_width() if lw is None else lw,
            linestyles=ls,
            zorder=zorder,
        )
        self.ax.add_collection(pc, autolim=False)
        return pc

    def verts(self, idx: np.ndarray) -> list:
        return list(_grid.box_vertices(self.geom, np.asarray(idx), self.offsets))

    def centre(self, i: int) -> tuple[float, float] | None:
        v = _grid.box_vertices(self.geom, np.array([i]), self.offsets)
        if not len(v):
            return None
        c = v[0].mean(0)
        return float(c[0]), float(c[1])

    def number_size(self) -> float:
        return float(np.clip(0.42 * self.box_points(), 3.0, 10.0))

    def number(self, i: int, label: str, *, color: str = "white", size: float | None = None):  # noqa: ANN201
        c = self.centre(i)
        if c is None:
            return None
        return self.ax.text(
            c[0],
            c[1],
            label,
            ha="center",
            va="center",
            color=color,
            fontsize=size or self.number_size(),
            fontweight="bold",
            zorder=4,
            bbox=dict(boxstyle="round,pad=0.08", facecolor="black", alpha=0.45, linewidth=0),
        )

    def _crop_outlines(self) -> None:
        """Dashed grey rectangle around a view's token grid where it does not match the image (crop or pad)."""
        w, h = (int(x) for x in self.geom.image_size)
        b = _grid.boxes(self.geom)
        for p in self.panels:
            if not p.tokens.size:
                continue
            x0, y0 = b[p.tokens, 0].min(), b[p.tokens, 1].min()
            x1, y1 = b[p.tokens, 2].max(), b[p.tokens, 3].max()
            if max(abs(x0), abs(y0), abs(x1 - w), abs(y1 - h)) > 0.5:
                rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) + [p.offset, 0]
                self.ax.add_collection(
                    PolyCollection(
                        [rect], facecolors="none", edgecolors="0.35", linewidths=0.8, linestyles="--", zorder=2
                    ),
                    autolim=False,
                )

    def contour(self, mask: np.ndarray, color: str = NEXT_COLOR) -> None:
        """Outline a boolean `(H, W)` object mask in every panel."""
        mask = np.asarray(mask, dtype=bool)
        h, w = mask.shape
        step = max(1, math.ceil(max(h, w) / 800))
        sub = mask[::step, ::step].astype(float)
        if not sub.any() or sub.all():
            return
        ys = np.arange(sub.shape[0]) * step + step / 2
        xs = np.arange(sub.shape[1]) * step + step / 2
        for p in self.panels:
            self.ax.contour(xs + p.offset, ys, sub, levels=[0.5], colors=[color], linewidths=1.0, zorder=2.5)


def _newline_note(sel: Selection, geom: TokenGeometry) -> str | None:
    nl = _grid.newline_tokens(geom)
    if not nl.any():
        return None
    k = int((nl & _kept(sel, geom.n_tokens)).sum())
    return f"+ {int(nl.sum())} newline tokens (no pixels; {k} kept)"


def _panel_counts(canvas: _TokenCanvas, kept: np.ndarray) -> None:
    """Add 'kept k/n' to each panel label of a multi-view image."""
    for lab, p in zip(canvas._labels, canvas.panels):
        lab.set_text(f"{p.label}: {int(kept[p.tokens].sum())}/{p.tokens.size} kept")


def _kept_overlay(
    ax: Axes, image: object, sel: Selection, geom: TokenGeometry, *, order_numbers: bool, dim: float, max_side: int
) -> _TokenCanvas:
    canvas = _TokenCanvas(ax, image, geom, max_side=max_side)
    kept = _kept(sel, geom.n_tokens)
    canvas.show_image(kept, dim)
    canvas.outline(sel.keep_idx.cpu().numpy(), KEPT_COLOR)
    _panel_counts(canvas, kept)
    if order_numbers:
        for t, i in enumerate(sel.order.cpu().tolist()):
            canvas.number(int(i), str(t + 1))
    return canvas


def _budget(sel: Selection) -> str:
    n = max(sel.n_tokens, 1)
    return f"kept {sel.keep} of {sel.n_tokens} tokens ({100 * sel.keep / n:.0f}%)"


# ---------------------------------------------------------------------------------------------------------------
# 1. Kept-token overlay


def plot_kept_tokens(
    image: object,
    result: PruneResult,
    *,
    index: int = 0,
    order_numbers: bool = False,
    answer: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    dim: float = 0.3,
    max_side: int = 640,
) -> Figure:
    """The image with pruned tokens dimmed and kept tokens outlined, aligned with each token's pixel box.

    Multi-view images (LLaVA-NeXT) get one panel per view, side by side; newline tokens are counted in the title.

    Args:
        image: the ORIGINAL image the model saw (PIL image in any mode, or an `(H, W[, C])` array).
        result: the ``PruneResult``.
        index: which image of the result (batch order, then image order).
        order_numbers: write each kept token's pick order (1 = first pick) on it.
        answer: the model's answer with the pruned tokens, shown in the title.
        ax: an Axes to draw into (the figure is then ``ax.figure``).
        figsize: ``(width, height)`` in inches of a new figure (default: 5 in wide, height from the image).
        dim: brightness factor of pruned regions, in ``[0, 1]``.
        max_side: resolution of the drawn rasters (pixels on the longer side of a panel).

    Returns:
        The ``Figure``.
    """
    if not 0 <= dim <= 1:
        raise ValueError(f"dim must be in [0, 1], got {dim}")
    sel, geom = _resolve(result, index)
    lines = [f"{sel.method}: {_budget(sel)}"]
    note = _newline_note(sel, geom)
    if note:
        lines.append(note)
    if answer is not None:
        lines.append(f"answer: {_short(answer)}")
    fig, ax = _new_axes(ax, figsize, _layout_size(geom, len(lines)))
    _kept_overlay(ax, image, sel, geom, order_numbers=order_numbers, dim=dim, max_side=max_side)
    ax.set_title("\n".join(lines), fontsize=TITLE_SIZE)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# 2. Residual-energy curves


def _total_energy(tokens: torch.Tensor | None) -> float | None:
    if tokens is None:
        return None
    total = float(tokens.double().pow(2).sum())
    return total if total > 0 else None


def plot_residual_energy(
    result: PruneResult | Selection,
    others: Mapping[str, PruneResult | Selection] | None = None,
    *,
    index: int = 0,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    tokens: torch.Tensor | None = None,
    logy: bool = False,
) -> Figure:
    """Normalised residual energy of all tokens vs the number kept, and the energy gained at each pick.

    Left: ``Selection.residual`` (1 at t = 0, the share of the tokens' total energy outside the span of the first t
    picks) for the method and every entry of ``others``, one line each, a marker at its K. Right: the energy
    gained at each pick: the decrease of the residual curve (solid, comparable across methods) and, for methods
    that record it, ``Selection.energy``, the pick's own residual energy (dotted; a share of the total energy
    when the token vectors are known, else raw units on a right-hand axis).

    Args:
        result: the ``PruneResult`` (or a ``Selection``) of the chosen method.
        others: more methods, ``name -> PruneResult | Selection``, on the same image.
        index: which image of each ``PruneResult``.
        ax: one Axes (the curves only) or two Axes (curves, gains) to draw into.
        figsize: size of a new figure in inches (default ``(9, 3.6)``).
        tokens: `(N, D)` token vectors to normalise ``energy`` by (default ``result.visual_tokens[index]``).
        logy: logarithmic y axes (values below ``1e-4``, exact zeros included, are drawn at ``1e-4``).

    Returns:
        The ``Figure``.
    """
    sel = _selection_of(result, index)
    entries: list[tuple[str, Selection]] = [(sel.method, sel)]
    for name, other in (others or {}).items():
        entries.append((str(name), _selection_of(other, index)))
    n = sel.n_tokens
    total = _total_energy(_tokens_of(result, index, tokens, n))

    if ax is None:
        fig = Figure(figsize=figsize or (9.0, 3.6), dpi=DPI, layout="constrained")
        ax_curve, ax_gain = fig.subplots(1, 2)
    elif isinstance(ax, Axes):
        fig, ax_curve, ax_gain = ax.figure, ax, None
    else:
        axes = list(ax)
        if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
            raise TypeError(f"ax must be an Axes or a pair of Axes, got {len(axes)} items")
        ax_curve, ax_gain = axes
        fig = ax_curve.figure

    kmax = max(1, max(s.keep for _, s in entries))
    for j, (name, s) in enumerate(entries):
        color, ls = OKABE_ITO[j % len(OKABE_ITO)], LINESTYLES[(j // len(OKABE_ITO)) % len(LINESTYLES)]
        r = _np(s.residual)
        x = np.arange(r.size)
        if logy:
            r = np.maximum(r, LOG_FLOOR)
        ax_curve.plot(x, r, color=color, ls=ls, lw=1.6, label=f"{name} (K={s.keep}: {r[-1]:.2f})")
        ax_curve.plot([x[-1]], [r[-1]], marker="o", color=color, ms=6, ls="none")
    ax_curve.set_xlim(0, kmax * 1.02)
    if logy:
        ax_curve.set_yscale("log")
        ax_curve.set_ylim(LOG_FLOOR * 0.8, 1.3)
    else:
        ax_curve.set_ylim(0, 1.03)
    ax_curve.set_xlabel(f"tokens kept t (of N = {n})")
    ax_curve.set_ylabel("residual energy (share of total)")
    ax_curve.set_title("Residual energy of all tokens", fontsize=TITLE_SIZE)
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8, frameon=False)

    if ax_gain is not None:
        _plot_gains(ax_gain, entries, total, logy)
    return fig


def _plot_gains(ax: Axes, entries: list[tuple[str, Selection]], total: float | None, logy: bool) -> None:
    """Solid: the decrease of the residual curve at each pick (the same quantity for every method). Dotted:
    ``Selection.energy``, the pick's own residual energy, for methods that record it (as a share of the total
    energy when the token vectors are known, else in raw units on a right-hand axis)."""
    raw_ax = None
    for j, (name, s) in enumerate(entries):
        color, ls = OKABE_ITO[j % len(OKABE_ITO)], LINESTYLES[(j // len(OKABE_ITO)) % len(LINESTYLES)]
        if s.keep == 0:
            continue
        x = np.arange(1, s.keep + 1)
        marker = "o" if s.keep <= 40 else None
        drop = -np.diff(_np(s.residual))
        if drop.size == s.keep:
            ax.plot(x, drop, color=color, ls=ls, lw=1.4, marker=marker, ms=3, label=f"{name}: decrease of residual")
        energy = _np(s.energy)
        if energy is None or energy.size != s.keep:
            continue
        if total is not None:
            ax.plot(x, energy / total, color=color, ls=":", lw=1.4, label=f"{name}: energy of pick")
        else:
            raw_ax = raw_ax or ax.twinx()
            raw_ax.plot(x, energy, color=color, ls=":", lw=1.4, label=f"{name}: energy of pick (right axis)")
    ax.set_xlabel("pick t")
    ax.set_ylabel("energy gained (share of total)")
    ax.set_title("Energy gained at each pick", fontsize=TITLE_SIZE)
    ax.grid(alpha=0.3)
    if logy:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if raw_ax is not None:
        raw_ax.set_ylabel("residual energy of pick ‖r‖²")
        if logy:
            raw_ax.set_yscale("log")
        h2, l2 = raw_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no picks (K = 0)", transform=ax.transAxes, ha="center", va="center")


# ---------------------------------------------------------------------------------------------------------------
# 3. Text relevance


def _relevance(result: PruneResult, sel: Selection, index: int) -> tuple[np.ndarray | None, str]:
    """The relevance to draw and where it comes from: ``"method"``, ``"computed"`` or ``"none"``."""
    if sel.relevance is not None:
        return _np(sel.relevance), "method"
    tokens = _tokens_of(result, index, None, sel.n_tokens)
    i = _sample_of(result, index)
    query = result.query_tokens[i] if i is not None and i < len(result.query_tokens) else None
    if tokens is None or query is None or query.numel() == 0:
        return None, "none"
    aggregation = sel.params.get("aggregation", "max") if isinstance(sel.params.get("aggregation"), str) else "max"
    raw = text_relevance(tokens, query.detach().cpu().float().reshape(-1, tokens.shape[1]), aggregation=aggregation)
    return _np(map_relevance(raw)), "computed"


def plot_relevance(
    image: object,
    result: PruneResult,
    *,
    index: int = 0,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    cmap: str = "magma",
    alpha: float = 0.65,
    show_kept: bool = True,
    max_side: int = 640,
) -> Figure:
    """``Selection.relevance`` of every token as a heat map over the image, with the words that produced it.

    For a text-free method the relevance is computed for display from ``result.query_tokens`` and
    ``result.visual_tokens`` (``resprune.text_relevance`` + ``map_relevance``), and the figure says so; with
    neither, the figure shows the image and a message instead of a heat map.

    Args:
        image: the original image.
        result: the ``PruneResult``.
        index: which image of the result.
        ax: an Axes to draw into.
        figsize: size of a new figure in inches.
        cmap: a perceptually uniform colour map.
        alpha: opacity of the heat map.
        show_kept: outline the kept tokens.
        max_side: raster resolution (pixels on the longer side of a panel).

    Returns:
        The ``Figure``.
    """
    sel, geom = _resolve(result, index)
    rel, source = _relevance(result, sel, index)
    words = _query_words(result, index)
    lines = [f"text relevance ({sel.method})"]
    lines.append("words: " + (_short(", ".join(words), 55) if words else "(none)"))
    if source == "computed":
        lines.append(f"{sel.method} does not use text: computed for display")
    note = _newline_note(sel, geom)
    if note:
        lines.append(note)
    fig, ax = _new_axes(ax, figsize, _layout_size(geom, len(lines), colorbar=rel is not None))
    canvas = _TokenCanvas(ax, image, geom, max_side=max_side)
    if rel is None:
        canvas.show_image(None)
        ax.text(
            0.5,
            0.5,
            f"No text relevance:\n{sel.method} is text-free and\nno query words were available",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=10,
            zorder=5,
            bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="0.4"),
        )
    else:
        canvas.show_image(None, 1.0)
        im = canvas.show_values(rel, cmap=cmap, norm=Normalize(0.0, 1.0), alpha=alpha)
        if show_kept and sel.keep:
            canvas.outline(sel.keep_idx.cpu().numpy(), NEXT_COLOR, lw=0.6 * canvas.line_width())
        cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
        cb.set_label("text relevance r (mapped to [0, 1])", fontsize=9)
    ax.set_title("\n".join(lines), fontsize=TITLE_SIZE)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# 4. Greedy step-through


class _GreedyView:
    """The greedy state after t picks: picks outlined and numbered, the next pick marked, residual energy as heat."""

    def __init__(
        self,
        ax: Axes,
        image: object,
        sel: Selection,
        geom: TokenGeometry,
        tokens: torch.Tensor | None,
        *,
        cmap: str,
        max_side: int,
        order_numbers: bool,
        colorbar: bool = True,
        log: bool = True,
    ) -> None:
        self.sel, self.geom, self.ax = sel, geom, ax
        self.order = sel.order.detach().cpu().numpy().astype(np.int64)
        self.tokens = tokens
        self.canvas = _TokenCanvas(ax, image, geom, max_side=max_side)
        self.canvas.show_image(np.zeros(geom.n_tokens, dtype=bool), self._dim)
        self.vmax = 1.0
        if tokens is not None:
            e0 = tokens.double().pow(2).sum(1).numpy()
            self.vmax = float(e0.max()) if e0.max() > 0 else 1.0
            self.floor = LOG_FLOOR if log else 0.0
            norm = LogNorm(LOG_FLOOR, 1.0, clip=True) if log else Normalize(0.0, 1.0)
            im = self.canvas.show_values(np.full(geom.n_tokens, np.nan), cmap=cmap, norm=norm, alpha=0.7)
            if colorbar:
                cb = ax.figure.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
                cb.set_label("residual energy / max ‖v‖²" + (" (log)" if log else ""), fontsize=9)
        self.picks = self.canvas.outline(np.zeros(0, dtype=np.int64), PICK_COLOR)
        self.next = self.canvas.outline(
            np.zeros(0, dtype=np.int64), NEXT_COLOR, ls="--", lw=1.5 * self.canvas.line_width(), zorder=3.5
        )
        self.order_numbers = order_numbers
        self.texts: dict[int, object] = {}
        self.title = ax.set_title("", fontsize=TITLE_SIZE)

    @property
    def _dim(self) -> float:
        return 0.55 if self.tokens is not None else 0.3

    def update(self, t: int, energy: np.ndarray | None) -> None:
        k = self.order.size
        picked = self.order[:t]
        kept = np.zeros(self.geom.n_tokens, dtype=bool)
        kept[picked] = True
        self.canvas.set_kept(kept, self._dim)
        if energy is not None and self.canvas.heat_layers:
            values = np.maximum(energy / self.vmax, self.floor)  # spanned tokens: the lowest colour
            values[kept] = np.nan
            self.canvas.set_values(values)
        self.picks.set_verts(self.canvas.verts(picked))
        self.next.set_verts(self.canvas.verts(self.order[t : t + 1]))
        if self.order_numbers:
            for j in range(k):
                if j < t and j not in self.texts:
                    self.texts[j] = self.canvas.number(int(self.order[j]), str(j + 1))
                if j in self.texts and self.texts[j] is not None:
                    self.texts[j].set_visible(j < t)
        res = _np(self.sel.residual)
        if res is not None and t < res.size:
            left = f"residual energy left: {_percent(res[t])}"
        else:
            left = ""
        nxt = f"next pick: token {int(self.order[t])}" if t < k else "all picks made"
        second = " · ".join(x for x in (left, nxt) if x)
        if self.tokens is None:
            second += "\n(no token vectors: pass tokens= for the heat map)"
        self.title.set_text(f"{self.sel.method}: step {t} of {k} (N = {self.sel.n_tokens})\n{second}")


def plot_greedy_step(
    image: object,
    result: PruneResult,
    step: int,
    *,
    index: int = 0,
    tokens: torch.Tensor | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    cmap: str = "viridis",
    order_numbers: bool = True,
    log: bool = True,
    max_side: int = 640,
) -> Figure:
    """The selection after its first ``step`` picks (``Selection.order[:step]``), over the residual energy of the rest.

    The heat map is each remaining token's residual energy ``||v_i - P_S v_i||^2`` w.r.t. the span of the picks so
    far (scaled by the largest ``||v_i||^2``, so frames share one colour scale), computed from the token vectors.
    The next pick is outlined dashed. For text-aware methods the pick maximises ``g(r) * E``, not ``E`` alone.

    Args:
        image: the original image.
        result: the ``PruneResult``.
        step: the number of picks t, in ``[0, K]``.
        index: which image of the result.
        tokens: `(N, D)` token vectors (default ``result.visual_tokens[index]``; without either, no heat map).
        ax: an Axes to draw into.
        figsize: size of a new figure in inches.
        cmap: colour map of the residual energy.
        order_numbers: number the picks in pick order.
        log: logarithmic colour scale (residual energies shrink by orders of magnitude within a few picks);
            tokens below ``1e-4`` of the largest energy, spanned ones included, get the lowest colour.
        max_side: raster resolution.

    Returns:
        The ``Figure``.
    """
    sel, geom = _resolve(result, index)
    k = sel.keep
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= int(step) <= k:
        raise ValueError(f"step must be an int in [0, K={k}], got {step!r}")
    step = int(step)
    vecs = _tokens_of(result, index, tokens, sel.n_tokens)
    fig, ax = _new_axes(ax, figsize, _layout_size(geom, 2 + (vecs is None), colorbar=vecs is not None))
    view = _GreedyView(ax, image, sel, geom, vecs, cmap=cmap, max_side=max_side, order_numbers=order_numbers, log=log)
    energy = None
    if vecs is not None:
        energy = residual_energies(vecs, sel.order.cpu()[:step], steps=[step])[0].numpy()
    view.update(step, energy)
    return fig


def greedy_animation(
    image: object,
    result: PruneResult,
    *,
    index: int = 0,
    max_frames: int | None = None,
    tokens: torch.Tensor | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = DPI,
    duration_ms: int = 250,
    cmap: str = "viridis",
    order_numbers: bool = True,
    log: bool = True,
    max_side: int = 480,
    colors: int = 255,
) -> bytes:
    """An animated GIF of the greedy selection: one frame per pick (t = 1..K), as ``plot_greedy_step`` draws it.

    Args:
        image: the original image.
        result: the ``PruneResult``.
        index: which image of the result.
        max_frames: at most this many frames (steps evenly spaced, the last always included); None: all K.
        tokens: `(N, D)` token vectors (default ``result.visual_tokens[index]``).
        figsize: frame size in inches.
        dpi: frame resolution.
        duration_ms: display time of each frame (the last one is held three times as long).
        cmap: colour map of the residual energy.
        order_numbers: number the picks.
        log: logarithmic colour scale (see ``plot_greedy_step``).
        max_side: raster resolution.
        colors: palette size of each frame (2..256; fewer make a smaller file).

    Returns:
        The GIF file's bytes (a single frame at t = 0 when K = 0).
    """
    sel, geom = _resolve(result, index)
    k = sel.keep
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
    if not 2 <= colors <= 256:
        raise ValueError(f"colors must be in [2, 256], got {colors}")
    steps = list(range(1, k + 1)) or [0]
    if max_frames is not None and len(steps) > max_frames:
        pick = np.unique(np.round(np.linspace(0, len(steps) - 1, max_frames)).astype(int))
        steps = [steps[i] for i in pick]
    vecs = _tokens_of(result, index, tokens, sel.n_tokens)
    energies = None
    if vecs is not None:
        energies = residual_energies(vecs, sel.order.cpu(), steps=steps).numpy()  # (frames, N)
    fig = Figure(
        figsize=figsize or _layout_size(geom, 2 + (vecs is None), colorbar=vecs is not None),
        dpi=dpi,
        layout="constrained",
    )
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    view = _GreedyView(ax, image, sel, geom, vecs, cmap=cmap, max_side=max_side, order_numbers=order_numbers, log=log)
    frames = []
    for j, t in enumerate(steps):
        view.update(t, None if energies is None else energies[j])
        canvas.draw()
        if j == 0:
            fig.set_layout_engine("none")  # freeze the layout: every frame the same size and place
        frames.append(Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy()))
    # One palette for all frames (from the first, middle and last), no dithering: unchanged pixels keep their
    # index from frame to frame, so the GIF encoder only stores what changed (a third of the size).
    probe = [frames[0], frames[len(frames) // 2], frames[-1]]
    mosaic = Image.fromarray(np.concatenate([np.asarray(f) for f in probe], axis=1))
    palette = mosaic.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    frames = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    durations = [duration_ms] * len(frames)
    durations[-1] = 3 * duration_ms
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True
    )
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# 5. Method comparison grid


def plot_method_grid(
    image: object,
    results: Mapping[str, PruneResult],
    *,
    answers: Mapping[str, str] | None = None,
    recall: Mapping[str, float] | None = None,
    objects_mask: np.ndarray | None = None,
    min_overlap: float = 0.25,
    index: int = 0,
    ncols: int | None = None,
    figsize: tuple[float, float] | None = None,
    dim: float = 0.3,
    max_side: int = 480,
) -> Figure:
    """Kept-token overlays of several methods side by side, each titled with its answer and relevant-token recall.

    Args:
        image: the original image.
        results: ``method name -> PruneResult`` (normally at the same K on the same input).
        answers: ``name -> answer`` with the pruned tokens.
        recall: ``name -> relevant-token recall`` in ``[0, 1]``; computed from ``objects_mask`` when not given.
        objects_mask: `(H, W)` bool mask of the objects the question is about, in the original image's pixels:
            a token is relevant when ``min_overlap`` of its box lies on it (``viz._grid.relevant_tokens``); the
            mask is outlined in every panel.
        min_overlap: share of a token's box on the mask for it to count as relevant.
        index: which image of each result.
        ncols: columns of the grid (default up to 3).
        figsize: figure size in inches.
        dim: brightness factor of pruned regions.
        max_side: raster resolution of each overlay.

    Returns:
        The ``Figure``.
    """
    if not results:
        raise ValueError("results is empty: pass at least one method name -> PruneResult")
    names = list(results)
    n = len(names)
    ncols = min(n, 3) if ncols is None else max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    sels = {name: _resolve(results[name], index) for name in names}
    recall = dict(recall or {})
    if objects_mask is not None:
        for name, (sel, geom) in sels.items():
            if name not in recall:
                relevant = _grid.relevant_tokens(geom, objects_mask, min_overlap=min_overlap)
                recall[name] = _grid.token_recall(sel, relevant)
    ks = {sel.keep for sel, _ in sels.values()}
    ns = {sel.n_tokens for sel, _ in sels.values()}
    has_answer = answers is not None
    lines = 1 + has_answer + bool(recall)
    if figsize is None:
        w1, h1 = _layout_size(next(iter(sels.values()))[1], lines, width=3.0)
        figsize = (w1 * ncols, h1 * nrows + 0.4)
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        sel, geom = sels[name]
        canvas = _kept_overlay(ax, image, sel, geom, order_numbers=False, dim=dim, max_side=max_side)
        if objects_mask is not None:
            canvas.contour(objects_mask)
        title = [name if len(ks) == 1 else f"{name} (K = {sel.keep})"]
        if has_answer:
            title.append(f"answer: {_short(answers.get(name, '—'), 28)}")
        if recall:
            r = recall.get(name)
            title.append("recall: n/a" if r is None or not np.isfinite(r) else f"recall: {100 * r:.0f}%")
        ax.set_title("\n".join(title), fontsize=9)
    for ax in axes[n:]:
        ax.set_axis_off()
    head = f"kept {ks.pop()} of {ns.pop()} tokens" if len(ks) == 1 and len(ns) == 1 else "kept tokens"
    if objects_mask is not None:
        head += " · blue outline: objects asked about"
    fig.suptitle(head, fontsize=TITLE_SIZE)
    return fig
