"""Pictures of what pruning keeps: kept-token overlays, residual-energy curves, text-relevance heatmaps, the greedy
step-through (and its GIF) and a method-comparison grid.

Every function takes data (a PIL image and a ``resprune.PruneResult``), never a model, and returns a
``matplotlib.figure.Figure`` built without pyplot (or draws into a given ``ax``). No global matplotlib state is
changed; colour maps are perceptually uniform (viridis, magma) and lines use the Okabe–Ito palette.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from resprune import residual_curve
from resprune.types import VIEW_NEWLINE, PruneResult, Selection, TokenGeometry

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
KEPT_EDGE = "#FFB000"

__all__ = [
    "greedy_animation",
    "plot_greedy_step",
    "plot_kept_tokens",
    "plot_method_grid",
    "plot_relevance",
    "plot_residual_energy",
    "token_energies",
]


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _rgb(image: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return np.asarray(image.convert("RGB"))


def _show(ax: Axes, image: Any) -> tuple[int, int]:
    arr = _rgb(image)
    h, w = arr.shape[:2]
    ax.imshow(arr, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    return w, h


def _boxes(geom: TokenGeometry) -> np.ndarray:
    return geom.box.detach().cpu().float().numpy()


def _grid_values(
    ax: Axes,
    geom: TokenGeometry,
    values: np.ndarray,
    cmap: str,
    alpha: float,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """Paint one value per token over its pixel box; returns a ScalarMappable for a colour bar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    finite = values[np.isfinite(values)]
    norm = Normalize(
        vmin if vmin is not None else (finite.min() if finite.size else 0.0),
        vmax if vmax is not None else (finite.max() if finite.size else 1.0),
    )
    cm = colormaps[cmap]
    for (x0, y0, x1, y1), v, view in zip(_boxes(geom), values, geom.view.tolist()):
        if view == VIEW_NEWLINE or not np.isfinite(v):
            continue
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=cm(norm(v)), alpha=alpha, lw=0))
    return ScalarMappable(norm=norm, cmap=cm)


def _kept_mask(sel: Selection, picks: int | None = None) -> np.ndarray:
    mask = np.zeros(sel.n_tokens, dtype=bool)
    idx = sel.order[:picks] if picks is not None else sel.keep_idx
    mask[idx.cpu().numpy()] = True
    return mask


def _overlay(
    ax: Axes, image: Any, geom: TokenGeometry, kept: np.ndarray, *, dim: float = 0.6, order: torch.Tensor | None = None
) -> None:
    _show(ax, image)
    for (x0, y0, x1, y1), k, view in zip(_boxes(geom), kept, geom.view.tolist()):
        if view == VIEW_NEWLINE:
            continue
        if k:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=KEPT_EDGE, lw=1.2))
        else:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="black", alpha=dim, lw=0))
    if order is not None:
        b = _boxes(geom)
        size = max(5, min(9, 0.35 * float(np.median(b[:, 2] - b[:, 0]))))
        for rank, i in enumerate(order.tolist(), 1):
            x0, y0, x1, y1 = b[i]
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, str(rank), ha="center", va="center", fontsize=size, color="white")


def plot_kept_tokens(
    image: Any,
    result: PruneResult,
    *,
    index: int = 0,
    order_numbers: bool = False,
    answer: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5, 5.4),
    dim: float = 0.6,
) -> Figure:
    """The image with pruned patches dimmed and kept patches outlined, each at its token's pixel box.

    Args:
        image: the ORIGINAL image (PIL or array); token boxes are in its pixels.
        result: a ``PruneResult``; ``index`` picks the image.
        order_numbers: write each kept token's pick rank on it.
        answer: shown in the title.
    """
    fig, ax = _axes(ax, figsize)
    sel, geom = result.selections[index], result.geometry[index]
    _overlay(ax, image, geom, _kept_mask(sel), dim=dim, order=sel.order if order_numbers else None)
    title = f"{sel.method}: kept {sel.keep}/{sel.n_tokens} tokens"
    if answer is not None:
        title += f"\nanswer: {answer}"
    ax.set_title(title, fontsize=10)
    return fig


def plot_residual_energy(
    result: PruneResult,
    others: dict[str, Any] | None = None,
    *,
    index: int = 0,
    figsize: tuple[float, float] = (9, 3.6),
) -> Figure:
    """Normalised residual energy of all tokens vs tokens kept (one line per method, marker at K), and the
    energy each greedy pick added.

    Args:
        result: the main ``PruneResult``.
        others: more methods to compare: name -> ``PruneResult`` or ``Selection``.
    """
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    series = {result.method: result.selections[index]}
    for name, r in (others or {}).items():
        series[name] = r.selections[index] if isinstance(r, PruneResult) else r
    for i, (name, sel) in enumerate(series.items()):
        c = OKABE_ITO[i % len(OKABE_ITO)]
        y = sel.residual.detach().cpu().numpy()
        ax1.plot(np.arange(len(y)), y, color=c, lw=2 if i == 0 else 1.2, label=name)
        ax1.plot([len(y) - 1], [y[-1]], "o", color=c)
    ax1.set(
        xlabel="tokens kept",
        ylabel="residual energy / total",
        title="energy not explained by the kept span",
        ylim=(0, 1.02),
    )
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    main = series[result.method]
    gained = main.energy if main.energy is not None else None
    if gained is not None:
        total = float((result.visual_tokens[index].double() ** 2).sum()) if result.visual_tokens else 1.0
        vals = gained.detach().cpu().numpy() / (total or 1.0)
        label = "residual energy of the pick / total"
    else:
        vals = -np.diff(main.residual.detach().cpu().numpy())
        label = "drop of the residual curve"
    ax2.bar(np.arange(1, len(vals) + 1), vals, color=OKABE_ITO[0], width=1.0)
    ax2.set(xlabel="pick", ylabel=label, title=f"{result.method}: energy gained at each pick")
    ax2.grid(alpha=0.3)
    return fig


def plot_relevance(
    image: Any,
    result: PruneResult,
    *,
    index: int = 0,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.6, 5.2),
) -> Figure:
    """Text relevance of every token over the image, with a labelled colour bar and the words that produced it."""
    from resprune import map_relevance, text_relevance

    fig, ax = _axes(ax, figsize)
    sel, geom = result.selections[index], result.geometry[index]
    words = result.query_words[index] if result.query_words else ()
    rel = sel.relevance
    if rel is None and result.query_tokens and result.query_tokens[index] is not None and result.visual_tokens:
        rel = map_relevance(text_relevance(result.visual_tokens[index], result.query_tokens[index]))
    _show(ax, image)
    if rel is None:
        ax.text(
            0.5,
            0.5,
            "no text query words:\nthe method used no relevance",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=11,
            color="white",
            bbox=dict(facecolor="black", alpha=0.7, boxstyle="round"),
        )
    else:
        sm = _grid_values(ax, geom, rel.detach().cpu().numpy(), "viridis", 0.65, 0.0, 1.0)
        fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, label="text relevance r (min-max per image)")
    ax.set_title("query words: " + (", ".join(words) if words else "(none)"), fontsize=10)
    return fig


def token_energies(tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Residual energy of every token w.r.t. the span of ``tokens[order]`` (Gram–Schmidt), `(N,)` float32."""
    v = tokens.detach().double().cpu()
    energy = (v * v).sum(1)
    basis: list[torch.Tensor] = []
    for s in order.tolist():
        r = v[s].clone()
        for _ in range(2):
            for u in basis:
                r -= (u @ r) * u
        nr = float(r.norm())
        if nr > 1e-9 * max(1.0, float(v[s].norm())):
            u = r / nr
            basis.append(u)
            energy = (energy - (v @ u) ** 2).clamp(min=0)
    energy[order] = 0
    return energy.float()


def plot_greedy_step(
    image: Any,
    result: PruneResult,
    step: int,
    *,
    index: int = 0,
    ax: Axes | None = None,
    figsize: tuple[float, float] = (5.6, 5.2),
) -> Figure:
    """The selection after the first ``step`` picks, with the residual energy of every remaining token."""
    fig, ax = _axes(ax, figsize)
    sel, geom = result.selections[index], result.geometry[index]
    t = int(max(0, min(step, sel.keep)))
    picked = sel.order[:t]
    _show(ax, image)
    if result.visual_tokens:
        e = token_energies(result.visual_tokens[index], picked).numpy()
        total = float(e.max()) or 1.0
        vals = np.where(_kept_mask(sel, t), np.nan, e / total)
        sm = _grid_values(ax, geom, vals, "magma", 0.6, 0.0, 1.0)
        fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, label="residual energy (/ max)")
    b = _boxes(geom)
    for rank, i in enumerate(picked.tolist(), 1):
        x0, y0, x1, y1 = b[i]
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=KEPT_EDGE, lw=2.2 if rank == t else 1.2)
        )
    res = float(sel.residual[t])
    ax.set_title(f"{sel.method}: after {t}/{sel.keep} picks, residual {100 * res:.1f} %", fontsize=10)
    return fig


def greedy_animation(
    image: Any, result: PruneResult, *, index: int = 0, max_frames: int | None = None, duration_ms: int = 250
) -> bytes:
    """An animated GIF with one frame per greedy step (0..K picks, thinned evenly to ``max_frames``)."""
    from PIL import Image

    k = result.selections[index].keep
    steps = list(range(0, k + 1))
    if max_frames and len(steps) > max_frames:
        steps = sorted({round(i * k / (max_frames - 1)) for i in range(max_frames)})
    frames = []
    for t in steps:
        fig = plot_greedy_step(image, result, t, index=index, figsize=(4.2, 3.9))
        canvas = fig.canvas
        canvas.draw()
        frames.append(
            Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
            .convert("RGB")
            .quantize(colors=128)
        )
        fig.clear()
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def plot_method_grid(
    image: Any,
    results: dict[str, PruneResult],
    *,
    answers: dict[str, str] | None = None,
    recall: dict[str, float] | None = None,
    index: int = 0,
    cols: int = 4,
) -> Figure:
    """Overlays of several methods at the same K, each titled with its answer (and relevant-token recall)."""
    n = max(1, len(results))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 3.5 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (name, res) in zip(axes, results.items()):
        sel = res.selections[index]
        _overlay(ax, image, res.geometry[index], _kept_mask(sel))
        title = f"{name} ({sel.keep}/{sel.n_tokens})"
        if answers and name in answers:
            title += f"\n→ {answers[name]}"
        if recall and name in recall and np.isfinite(recall[name]):
            title += f"   recall {100 * recall[name]:.0f} %"
        ax.set_title(title, fontsize=9)
    for ax in axes[len(results) :]:
        ax.set_axis_off()
    return fig
