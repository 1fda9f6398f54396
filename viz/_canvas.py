"""The drawing machinery shared by every figure: input checks, palette, layout, and ``TokenCanvas`` (the panels of
one image in one Axes, with image / heat / outline layers aligned with the token boxes of ``viz._grid``).

Nothing here imports pyplot: figures are built as ``Figure()`` and rendered with the Agg canvas (``to_image``).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from resprune.types import PruneResult, Selection, TokenGeometry

from . import _grid

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


def resolve(result: PruneResult, index: int) -> tuple[Selection, TokenGeometry]:
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


def selection_of(x: PruneResult | Selection, index: int) -> Selection:
    if isinstance(x, Selection):
        return x
    if isinstance(x, PruneResult):
        return resolve(x, index)[0] if x.geometry else x.selections[index]
    raise TypeError(f"expected a PruneResult or a Selection, got {type(x).__name__}")


def tokens_of(result: PruneResult | Selection, index: int, tokens: torch.Tensor | None, n: int):  # noqa: ANN202
    """The `(N, D)` token vectors: ``tokens`` if given, else ``result.visual_tokens[index]``, else None."""
    if tokens is None and isinstance(result, PruneResult) and len(result.visual_tokens) > index:
        tokens = result.visual_tokens[index]
    if tokens is None:
        return None
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[0] != n:
        raise ValueError(f"tokens must be a (N={n}, D) tensor, got {getattr(tokens, 'shape', type(tokens).__name__)}")
    return tokens.detach().cpu().float()


def sample_of(result: PruneResult, index: int) -> int | None:
    """The sample (prompt) of image ``index``: one image per sample, or a single sample; else unknown."""
    n_q = len(result.query_tokens)
    if n_q == len(result.selections):
        return index
    return 0 if n_q == 1 else None


def query_words(result: PruneResult, index: int) -> tuple[str, ...]:
    i = sample_of(result, index) if len(result.query_words) == len(result.query_tokens) else None
    if i is None and len(result.query_words) == len(result.selections):
        i = index
    return tuple(result.query_words[i]) if i is not None and i < len(result.query_words) else ()


def kept_mask(sel: Selection, n: int) -> np.ndarray:
    kept = np.zeros(n, dtype=bool)
    kept[sel.keep_idx.detach().cpu().numpy().astype(np.int64)] = True
    return kept


def as_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().double().numpy().reshape(-1)


def percent(x: float) -> str:
    """A share as a percentage that stays informative near 0 (``0.0%`` only for exactly 0)."""
    if x == 0 or x >= 1e-3:
        return f"{100 * x:.1f}%"
    return f"{100 * x:.0e}%"


def short(text: str, width: int = 60) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder="…") or '""'


# ---------------------------------------------------------------------------------------------------------------
# Drawing tokens over the image


def layout_size(geom: TokenGeometry, title_lines: int, width: float = WIDTH_IN, colorbar: bool = False):  # noqa: ANN202
    ps = _grid.panels(geom)
    w = ps[-1].extent[2] + ps[-1].offset - (ps[0].extent[0] + ps[0].offset)
    h = max(p.height for p in ps) * (1.1 if len(ps) > 1 else 1.0)
    plot_w = width - (0.9 if colorbar else 0.1)
    height = plot_w * h / w + 0.2 * title_lines + 0.15
    return (width, float(np.clip(height, 2.6 if colorbar else 1.6, 9.0)))


def new_axes(ax: Axes | None, figsize: tuple[float, float] | None, default: tuple[float, float]):  # noqa: ANN202
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax.figure, ax
    fig = Figure(figsize=figsize or default, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


class TokenCanvas:
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


def newline_note(sel: Selection, geom: TokenGeometry) -> str | None:
    nl = _grid.newline_tokens(geom)
    if not nl.any():
        return None
    k = int((nl & kept_mask(sel, geom.n_tokens)).sum())
    return f"+ {int(nl.sum())} newline tokens (no pixels; {k} kept)"


def panel_counts(canvas: TokenCanvas, kept: np.ndarray) -> None:
    """Add 'kept k/n' to each panel label of a multi-view image."""
    for lab, p in zip(canvas._labels, canvas.panels):
        lab.set_text(f"{p.label}: {int(kept[p.tokens].sum())}/{p.tokens.size} kept")


def budget(sel: Selection) -> str:
    n = max(sel.n_tokens, 1)
    return f"kept {sel.keep} of {sel.n_tokens} tokens ({100 * sel.keep / n:.0f}%)"


def to_image(fig: Figure, *, release: bool = True) -> Image.Image:
    """Render a matplotlib ``Figure`` to a PIL RGB image with the Agg canvas (no pyplot).

    Args:
        fig: the figure (any ``plot_*`` result).
        release: clear the figure afterwards so its artists and rasters can be freed (a server renders many).

    Returns:
        The ``(width, height)`` = figure size x dpi RGB image.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    img = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    if release:
        fig.clear()
    return img
