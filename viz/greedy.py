"""The greedy selection step by step: ``plot_greedy_step`` (the state after t picks over the residual energy of the
rest) and ``greedy_animation`` (one GIF frame per pick, rendered with ``to_image``)."""

from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from PIL import Image

from resprune.residual import residual_energies
from resprune.types import PruneResult, Selection, TokenGeometry

from ._canvas import (
    DPI,
    FOOTER_IN,
    LOG_FLOOR,
    NEXT_COLOR,
    PICK_COLOR,
    TITLE_SIZE,
    TokenCanvas,
    as_numpy,
    footer,
    layout_size,
    new_axes,
    new_figure,
    outline_handle,
    percent,
    resolve,
    to_image,
    tokens_of,
)


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
        explain: bool = True,
        own_figure: bool = True,
    ) -> None:
        self.sel, self.geom, self.ax = sel, geom, ax
        self.order = sel.order.detach().cpu().numpy().astype(np.int64)
        self.tokens = tokens
        self.canvas = TokenCanvas(ax, image, geom, max_side=max_side)
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
                cb.set_label("energy left / largest ‖v‖²" + (" (log)" if log else ""), fontsize=9)
        self.picks = self.canvas.outline(np.zeros(0, dtype=np.int64), PICK_COLOR)
        self.next = self.canvas.outline(
            np.zeros(0, dtype=np.int64), NEXT_COLOR, ls="--", lw=1.5 * self.canvas.line_width(), zorder=3.5
        )
        self.order_numbers = order_numbers
        self.texts: dict[int, object] = {}
        # the token the title names as the next pick carries its index, so the reader can find it
        self.next_label = ax.text(
            0,
            0,
            "",
            ha="center",
            va="center",
            color=NEXT_COLOR,
            fontsize=self.canvas.number_size(),
            fontweight="bold",
            zorder=4.5,
            visible=False,
            bbox=dict(boxstyle="round,pad=0.08", facecolor="black", alpha=0.6, linewidth=0),
        )
        self.next_label.set_gid("next-pick")
        self.title = ax.set_title("", fontsize=TITLE_SIZE)
        if explain:
            numbers = " (number: pick order)" if order_numbers else ""
            handles = [
                outline_handle(PICK_COLOR, f"picked so far{numbers}"),
                outline_handle(NEXT_COLOR, "next pick (#: its token index)", "--"),
            ]
            if tokens is None:
                text = "Pass tokens= (the (N, D) visual tokens) to colour the unpicked tokens by residual energy"
            else:
                text = "Colour: the energy each unpicked token has left outside the span of the picks so far"
            footer(
                ax.figure if own_figure else ax, text + self.canvas.notes() + ".", handles + self.canvas.crop_handles()
            )

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
        res = as_numpy(self.sel.residual)
        if res is not None and t < res.size:
            left = f"residual energy left: {percent(res[t])}"
        else:
            left = ""
        nxt = f"next pick: token #{int(self.order[t])}" if t < k else "all picks made"
        centre = self.canvas.centre(int(self.order[t])) if t < k else None
        if t < k and centre is None:
            nxt += " (a newline token: no pixels)"
        self.next_label.set_visible(centre is not None)
        if centre is not None:
            self.next_label.set_position(centre)
            self.next_label.set_text(f"#{int(self.order[t])}")
        second = " · ".join(x for x in (left, nxt) if x)
        if self.tokens is None:
            second += "\n(no token vectors: pass tokens= for the heat map)"
        self.title.set_text(f"{self.sel.method}: step {t} of {k} (N = {self.sel.n_tokens})\n{second}")


def _default_size(geom: TokenGeometry, vecs: torch.Tensor | None, explain: bool) -> tuple[float, float]:
    """Two title lines (a third without token vectors), a colour bar when there is a heat map, the footer."""
    return layout_size(geom, 2 + (vecs is None), colorbar=vecs is not None, footer_in=FOOTER_IN * explain)


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
    explain: bool = True,
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
        explain: a legend (picks, the next pick) and a one-line caption under the image.

    Returns:
        The ``Figure``.
    """
    sel, geom = resolve(result, index)
    k = sel.keep
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= int(step) <= k:
        raise ValueError(f"step must be an int in [0, K={k}], got {step!r}")
    step = int(step)
    vecs = tokens_of(result, index, tokens, sel.n_tokens)
    size = _default_size(geom, vecs, explain)
    own = ax is None
    fig, ax = new_axes(ax, figsize, size)
    view = _GreedyView(
        ax,
        image,
        sel,
        geom,
        vecs,
        cmap=cmap,
        max_side=max_side,
        order_numbers=order_numbers,
        log=log,
        explain=explain,
        own_figure=own,
    )
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
    explain: bool = True,
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
        explain: the legend and caption of ``plot_greedy_step`` on every frame.

    Returns:
        The GIF file's bytes (a single frame at t = 0 when K = 0).
    """
    sel, geom = resolve(result, index)
    k = sel.keep
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
    if not 2 <= colors <= 256:
        raise ValueError(f"colors must be in [2, 256], got {colors}")
    steps = list(range(1, k + 1)) or [0]
    if max_frames is not None and len(steps) > max_frames:
        pick = np.unique(np.round(np.linspace(0, len(steps) - 1, max_frames)).astype(int))
        steps = [steps[i] for i in pick]
    vecs = tokens_of(result, index, tokens, sel.n_tokens)
    energies = None
    if vecs is not None:
        energies = residual_energies(vecs, sel.order.cpu(), steps=steps).numpy()  # (frames, N)
    size = _default_size(geom, vecs, explain)
    fig = new_figure(figsize or size, dpi=dpi)
    ax = fig.add_subplot()
    view = _GreedyView(
        ax, image, sel, geom, vecs, cmap=cmap, max_side=max_side, order_numbers=order_numbers, log=log, explain=explain
    )
    frames = []
    for j, t in enumerate(steps):
        view.update(t, None if energies is None else energies[j])
        frames.append(to_image(fig, release=j == len(steps) - 1))
        if j == 0:
            fig.set_layout_engine("none")  # freeze the layout: every frame the same size and place
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
