"""The drawing machinery shared by every figure: input checks, palette, layout, and ``TokenCanvas`` (the panels of
one image in one Axes, with image / heat / outline layers aligned with the token boxes of ``viz._grid``).

Nothing here imports pyplot: figures are built as ``Figure()`` and rendered with the Agg canvas (``to_image``).
"""

from __future__ import annotations

import math
import textwrap
import weakref

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text
from PIL import Image

from resprune.relevance import map_relevance, text_relevance
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
TOP_BAND_IN = 0.35  # blank band at the top of a new figure: an app's image label (gradio: top-left) covers nothing
LEGEND_SIZE = 8
CAPTION_SIZE = 8
CAPTION_COLOR = "0.25"
FOOTER_IN = 0.7  # height of a footer: a caption of up to two lines over one row of legend keys
CAPTION_GID = "caption"  # gid of every figure's caption artist (tests and callers find it by this)
CROP_COLOR = "0.35"  # dashed box: the part of the image the processor kept (crop) or padded

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


def layout_size(
    geom: TokenGeometry, title_lines: int, width: float = WIDTH_IN, colorbar: bool = False, footer_in: float = 0.0
):  # noqa: ANN202
    """Default ``(width, height)`` in inches of a one-image figure: the image at ``width``, its title lines, the top
    band and ``footer_in`` inches of legend and caption under it."""
    ps = _grid.panels(geom)
    w = ps[-1].extent[2] + ps[-1].offset - (ps[0].extent[0] + ps[0].offset)
    h = max(p.height for p in ps) * (1.1 if len(ps) > 1 else 1.0)
    plot_w = width - (0.9 if colorbar else 0.1)
    height = plot_w * h / w + 0.21 * title_lines + footer_in + 0.2
    return (width, float(np.clip(height, 2.6 if colorbar else 1.6, 9.0)) + TOP_BAND_IN)


def top_band(fig: Figure) -> float:
    """The height of the blank top band as a share of the figure's height."""
    # + 0.08 in: constrained layout lets a title's ascenders rise a few pixels above the layout rectangle
    return min((TOP_BAND_IN + 0.08) / max(fig.get_figheight(), 1e-6), 0.3)


def new_figure(figsize: tuple[float, float], dpi: int = DPI) -> Figure:
    """A constrained-layout ``Figure`` whose top ``TOP_BAND_IN`` inches stay blank, so that an image label drawn over
    the top-left corner (gradio's) covers no title (Axes titles sit under the band; a ``suptitle`` would not)."""
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(rect=(0.0, 0.0, 1.0, 1.0 - top_band(fig)))
    return fig


def new_axes(ax: Axes | None, figsize: tuple[float, float] | None, default: tuple[float, float]):  # noqa: ANN202
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax.figure, ax
    fig = new_figure(figsize or default)
    return fig, fig.add_subplot()


def wrap(text: str, width_in: float, size: float = CAPTION_SIZE) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at font size ``size``."""
    chars = max(20, int(width_in * 72 / (0.56 * size)))
    return "\n".join(textwrap.wrap(" ".join(text.split()), chars)) or text


def _ncols(handles: list, width_in: float) -> int:
    """Legend columns: as many as fit in one row of ``width_in`` inches, else the fewest rows that fit."""
    em = LEGEND_SIZE / 72  # inches
    widths = [em * (3.0 + 0.54 * len(h.get_label())) for h in handles]
    for rows in range(1, len(handles) + 1):
        cols = math.ceil(len(handles) / rows)
        if sum(sorted(widths, reverse=True)[:cols]) <= width_in:
            return cols
    return 1


def footer(target: Figure | Axes, caption: str, handles: list | None = None) -> Text:
    """The explanation under a plot: a one-line caption over a row of legend keys (one ``Legend``, the caption as its
    title), inside the constrained layout. Returns the caption's ``Text`` (gid ``"caption"``).

    Args:
        target: a ``Figure`` built here (the footer sits in its bottom margin, under every Axes) or the caller's
            ``Axes`` (the footer sits centred under it).
        caption: the caption; wrapped to the target's width.
        handles: legend keys (``Patch`` / ``Line2D`` with labels); none: the caption alone.
    """
    handles = list(handles or [])
    is_fig = isinstance(target, Figure)
    fig = target if is_fig else target.figure
    width = fig.get_figwidth() * (1.0 if is_fig else target.get_position().width)
    text = wrap(caption, max(width, 2.0))
    style = dict(fontsize=CAPTION_SIZE, color=CAPTION_COLOR)
    if handles:
        kw = dict(
            handles=handles,
            ncols=_ncols(handles, 0.95 * max(width, 2.0)),
            frameon=False,
            fontsize=LEGEND_SIZE,
            handlelength=1.3,
            handleheight=1.0,
            columnspacing=1.2,
            title=text,
            title_fontproperties={"size": CAPTION_SIZE},
        )
        if is_fig:
            leg = target.legend(loc="outside lower center", **kw)
        else:
            leg = target.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), borderaxespad=0.2, **kw)
        t = leg.get_title()
        t.set_color(CAPTION_COLOR)
    elif is_fig:
        t = target.supxlabel(text, **style)
    else:
        label = target.xaxis.label  # under the x label of a plot with axes, else right under the Axes
        below = label if target.axison and label.get_visible() and label.get_text() else "axes fraction"
        t = target.annotate(
            text,
            xy=(0.5, 0.0),
            xycoords=below,
            xytext=(0, -3),
            textcoords="offset points",
            ha="center",
            va="top",
            annotation_clip=False,
            **style,
        )
    t.set_gid(CAPTION_GID)
    return t


def caption_of(fig: Figure) -> str | None:
    """The caption text of a figure made by viz (None if it has none)."""
    for a in fig.findobj(Text):
        if a.get_gid() == CAPTION_GID and a.get_text():
            return a.get_text().replace("\n", " ")
    return None


def outline_handle(color: str, label: str, ls: str = "-") -> Patch:
    return Patch(facecolor="none", edgecolor=color, linestyle=ls, linewidth=1.2, label=label)


def swatch_handle(color: str, label: str) -> Patch:
    return Patch(facecolor=color, edgecolor="none", label=label)


CROP_NOTES = {
    "crop": "; the processor cropped the image to the dashed box",
    "pad": "; the processor padded the image to the dashed box (grey)",
    "crop+pad": "; the processor cropped and padded the image to the dashed box",
}


# Axes -> the panels drawn in it, so that ``to_image`` can record where each panel landed in the rendered image
_PANELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class TokenCanvas:
    """The panels of one image in one Axes: an image layer (dimmed where not kept), a heat layer, token outlines."""

    def __init__(self, ax: Axes, image: object, geom: TokenGeometry, *, max_side: int = 640) -> None:
        self.ax, self.geom = ax, geom
        rgb = _grid.fit_image(_grid.to_rgb(image), geom)
        self.rgb = rgb
        self.panels = _grid.panels(geom)
        self.offsets = {p.view: p.offset for p in self.panels}
        _PANELS.setdefault(ax, []).extend(self.panels)
        self.crop_kind: str | None = None  # "crop", "pad" or "crop+pad" once _crop_outlines drew a dashed box
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
        """Dashed grey rectangle around a view's token grid where it does not match the image: the processor cropped
        it (grid inside the image) or padded it (grid past the image)."""
        w, h = (int(x) for x in self.geom.image_size)
        b = _grid.boxes(self.geom)
        kinds = set()
        for p in self.panels:
            if not p.tokens.size:
                continue
            x0, y0 = b[p.tokens, 0].min(), b[p.tokens, 1].min()
            x1, y1 = b[p.tokens, 2].max(), b[p.tokens, 3].max()
            if min(x0, y0, w - x1, h - y1) < -0.5:
                kinds.add("pad")
            if max(x0, y0, w - x1, h - y1) > 0.5:
                kinds.add("crop")
            if max(abs(x0), abs(y0), abs(x1 - w), abs(y1 - h)) > 0.5:
                rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) + [p.offset, 0]
                self.ax.add_collection(
                    PolyCollection(
                        [rect], facecolors="none", edgecolors=CROP_COLOR, linewidths=1.0, linestyles="--", zorder=2
                    ),
                    autolim=False,
                )
        self.crop_kind = "+".join(k for k in ("crop", "pad") if k in kinds) or None

    def crop_handles(self) -> list:
        """The legend entry explaining the dashed crop/pad box (empty when none was drawn)."""
        return [outline_handle(CROP_COLOR, "what the model saw", "--")] if self.crop_kind else []

    def notes(self) -> str:
        """Caption notes on the layout: the two views of a multi-view image, the crop/pad box."""
        out = "; left: base view, right: high-res crops" if len(self.panels) > 1 else ""
        return out + (CROP_NOTES[self.crop_kind] if self.crop_kind else "")

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


def relevance_of(result: PruneResult, sel: Selection, index: int) -> tuple[np.ndarray | None, str]:
    """The `(N,)` relevance to show and where it comes from: ``"method"`` (``Selection.relevance``), ``"computed"``
    (for display, from ``result.query_tokens`` and ``result.visual_tokens``) or ``"none"``."""
    if sel.relevance is not None:
        return as_numpy(sel.relevance), "method"
    tokens = tokens_of(result, index, None, sel.n_tokens)
    i = sample_of(result, index)
    query = result.query_tokens[i] if i is not None and i < len(result.query_tokens) else None
    if tokens is None or query is None or query.numel() == 0:
        return None, "none"
    aggregation = sel.params.get("aggregation", "max") if isinstance(sel.params.get("aggregation"), str) else "max"
    raw = text_relevance(tokens, query.detach().cpu().float().reshape(-1, tokens.shape[1]), aggregation=aggregation)
    return as_numpy(map_relevance(raw)), "computed"


PANELS_KEY = "viz_panels"  # key in ``to_image(fig).info``: where each image panel landed in the rendered pixels


def _panel_pixels(fig: Figure, height: int) -> tuple[dict, ...]:
    """For each token panel drawn in ``fig``: its view, its extent in ORIGINAL image pixels and the rectangle
    ``(left, top, right, bottom)`` it covers in the rendered image's pixels (origin top-left)."""
    out = []
    for ax in fig.axes:
        for p in _PANELS.get(ax, ()):
            left, right, bottom, top = p.data_extent
            (x0, y0), (x1, y1) = ax.transData.transform([(left, top), (right, bottom)])
            box = (float(min(x0, x1)), height - float(max(y0, y1)), float(max(x0, x1)), height - float(min(y0, y1)))
            out.append({"view": p.view, "extent": p.extent, "pixels": box})
    return tuple(out)


def to_image(fig: Figure, *, release: bool = True) -> Image.Image:
    """Render a matplotlib ``Figure`` to a PIL RGB image with the Agg canvas (no pyplot).

    The image's ``info["viz_panels"]`` records where each image panel landed, so that ``viz.token_at(...,
    figure=img)`` can map a click on the rendered figure back to a token.

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
    size = canvas.get_width_height()
    img = Image.frombuffer("RGBA", size, canvas.buffer_rgba()).convert("RGB")
    img.info[PANELS_KEY] = _panel_pixels(fig, size[1])
    if release:
        fig.clear()
    return img
